"""An in-memory Hugging Face Hub over real HTTP, for pointing the real client at it through `HF_ENDPOINT`.

It speaks the part of the protocol huggingface_hub and transformers use to push and load models: repositories,
commits (NDJSON, with the `parentCommit` check), branches, tags, refs, preupload, tree, repo info and resolve.
Preupload answers `uploadMode: "regular"`, so every file travels inside the commit and no LFS or Xet endpoint is
needed. Object ids are git blob sha1s, so the client's "file unchanged" checks behave as against the Hub.
"""

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"


def git_blob_oid(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


class HubError(Exception):
    """An error reply: the status plus the `X-Error-Code` the client maps to its exception classes."""

    def __init__(self, status: int, message: str, code: str | None = None):
        super().__init__(message)
        self.status, self.code = status, code


@dataclass(frozen=True)
class Commit:
    oid: str
    parent: str | None
    title: str
    files: dict[str, bytes]


@dataclass
class Repo:
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    def resolve(self, revision: str) -> Commit:
        oid = self.branches.get(revision) or self.tags.get(revision) or revision
        if oid not in self.commits:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return self.commits[oid]

    def add_commit(self, branch: str, title: str, files: dict[str, bytes]) -> Commit:
        parent = self.branches.get(branch)
        listing = json.dumps(
            [parent, title, sorted((path, git_blob_oid(data)) for path, data in files.items())]
        )
        commit = Commit(hashlib.sha1(listing.encode()).hexdigest(), parent, title, dict(files))
        self.commits[commit.oid] = commit
        self.branches[branch] = commit.oid
        return commit


class Hub:
    """Repositories and their git objects; every method is one endpoint's behaviour, thread-safe under one lock."""

    def __init__(self):
        self.repos: dict[str, Repo] = {}
        self.lock = threading.Lock()
        self.drop_commits = 0
        self.tokens: set[str] = set()

    def repo(self, repo_id: str) -> Repo:
        if repo_id not in self.repos:
            raise HubError(404, f"Repository not found: {repo_id}", "RepoNotFound")
        return self.repos[repo_id]

    def create_repo(self, body: dict) -> dict:
        repo_id = f"{body.get('organization') or 'user'}/{body['name']}"
        if repo_id in self.repos:
            raise HubError(409, "You already created this model repo", None)
        self.repos[repo_id] = Repo()
        self.repos[repo_id].add_commit("main", "initial commit", {".gitattributes": GITATTRIBUTES})
        return {"name": repo_id, "id": repo_id}

    def info(self, repo_id: str, revision: str) -> dict:
        commit = self.repo(repo_id).resolve(revision)
        siblings = [{"rfilename": path} for path in sorted(commit.files)]
        return {"id": repo_id, "modelId": repo_id, "sha": commit.oid, "private": False, "siblings": siblings}

    def refs(self, repo_id: str) -> dict:
        repo = self.repo(repo_id)

        def listing(kind: str, refs: dict[str, str]) -> list[dict]:
            return [
                {"name": name, "ref": f"refs/{kind}/{name}", "targetCommit": oid}
                for name, oid in refs.items()
            ]

        return {
            "branches": listing("heads", repo.branches),
            "tags": listing("tags", repo.tags),
            "converts": [],
            "pullRequests": [],
        }

    def tree(self, repo_id: str, revision: str, folder: str, recursive: bool) -> list[dict]:
        files = self.repo(repo_id).resolve(revision).files
        prefix = f"{folder}/" if folder else ""
        entries, folders = [], set()
        for path in sorted(path for path in files if path.startswith(prefix)):
            parts = path[len(prefix) :].split("/")
            for depth in range(1, len(parts) if recursive else min(len(parts), 2)):
                folders.add(prefix + "/".join(parts[:depth]))
            if recursive or len(parts) == 1:
                entries.append(
                    {"type": "file", "path": path, "size": len(files[path]), "oid": git_blob_oid(files[path])}
                )
        if folder and not entries and not folders:
            raise HubError(404, f"Entry not found: {folder}", "EntryNotFound")
        oids = {name: hashlib.sha1(name.encode()).hexdigest() for name in folders}
        return [{"type": "directory", "path": name, "oid": oids[name]} for name in sorted(folders)] + entries

    def preupload(self, repo_id: str, revision: str, body: dict) -> dict:
        files = self.repo(repo_id).resolve(revision).files
        answers = []
        for entry in body["files"]:
            oid = git_blob_oid(files[entry["path"]]) if entry["path"] in files else None
            answers.append(
                {"path": entry["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": oid}
            )
        return {"files": answers}

    def commit(self, repo_id: str, branch: str, lines: list[dict], base_url: str) -> dict:
        repo = self.repo(repo_id)
        if branch not in repo.branches:
            raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
        header = lines[0]["value"]
        if header.get("parentCommit") not in (None, repo.branches[branch]):
            raise HubError(412, "A commit has happened since. Please refresh and try again.")
        files = dict(repo.commits[repo.branches[branch]].files)
        for line in lines[1:]:
            key, value = line["key"], line["value"]
            if key == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif key == "deletedFile":
                if files.pop(value["path"], None) is None:
                    raise HubError(404, "A file with this name doesn't exist", "EntryNotFound")
            elif key == "deletedFolder":
                files = {
                    path: data for path, data in files.items() if not path.startswith(value["path"] + "/")
                }
            else:
                raise HubError(400, f"This test Hub stores regular files only, not {key!r}.")
        commit = repo.add_commit(branch, header["summary"], files)
        return {
            "commitUrl": f"{base_url}/{repo_id}/commit/{commit.oid}",
            "commitOid": commit.oid,
            "pullRequestUrl": None,
        }

    def create_branch(self, repo_id: str, branch: str, body: dict) -> dict:
        repo = self.repo(repo_id)
        if branch in repo.branches:
            raise HubError(409, f"Reference already exists: refs/heads/{branch}")
        repo.branches[branch] = repo.resolve(body.get("startingPoint") or "main").oid
        return {}

    def delete_branch(self, repo_id: str, branch: str) -> dict:
        if self.repo(repo_id).branches.pop(branch, None) is None:
            raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
        return {}

    def create_tag(self, repo_id: str, revision: str, body: dict) -> dict:
        repo = self.repo(repo_id)
        if body["tag"] in repo.tags:
            raise HubError(409, f"Reference already exists: refs/tags/{body['tag']}")
        repo.tags[body["tag"]] = repo.resolve(revision).oid
        return {}

    def file(self, repo_id: str, revision: str, path: str) -> tuple[Commit, bytes]:
        commit = self.repo(repo_id).resolve(revision)
        if path not in commit.files:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound")
        return commit, commit.files[path]


REPO = r"(?P<repo>[^/]+/[^/]+)"
ROUTES = [
    ("POST", r"/api/repos/create", "create_repo"),
    ("POST", r"/api/validate-yaml", "validate_yaml"),
    ("GET", rf"/api/models/{REPO}(?:/revision/(?P<rev>[^/]+))?", "info"),
    ("GET", rf"/api/models/{REPO}/refs", "refs"),
    ("GET", rf"/api/models/{REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.+))?", "tree"),
    ("POST", rf"/api/models/{REPO}/preupload/(?P<rev>[^/]+)", "preupload"),
    ("POST", rf"/api/models/{REPO}/commit/(?P<rev>[^/]+)", "commit"),
    ("POST", rf"/api/models/{REPO}/branch/(?P<rev>[^/]+)", "create_branch"),
    ("DELETE", rf"/api/models/{REPO}/branch/(?P<rev>[^/]+)", "delete_branch"),
    ("POST", rf"/api/models/{REPO}/tag/(?P<rev>[^/]+)", "create_tag"),
    ("GET", rf"/{REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
    ("HEAD", rf"/{REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
]


def route(method: str, path: str) -> tuple[str, dict[str, str]] | None:
    """The endpoint a request is for, with its unquoted path arguments; None when there is none."""
    for verb, pattern, name in ROUTES:
        match = re.fullmatch(pattern, path)
        if verb == method and match:
            return name, {
                key: unquote(value) for key, value in match.groupdict().items() if value is not None
            }
    return None


WRITES = {"create_repo", "preupload", "commit", "create_branch", "delete_branch", "create_tag"}


class HubRequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self.dispatch("GET")

    def do_HEAD(self):
        self.dispatch("HEAD")

    def do_POST(self):
        self.dispatch("POST")

    def do_DELETE(self):
        self.dispatch("DELETE")

    def log_message(self, format, *args):
        pass

    def dispatch(self, method: str):
        # With keep-alive the body must be read even when the reply is an error.
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        url = urlsplit(self.path)
        hub: Hub = self.server.hub
        found = route(method, url.path)
        if found is None:
            return self.reply(404, {"error": f"no route {method} {url.path}"})
        name, args = found
        authorization = self.headers.get("Authorization", "")
        if authorization.startswith("Bearer "):
            hub.tokens.add(authorization.removeprefix("Bearer "))
        try:
            if name in WRITES and not authorization.startswith("Bearer "):
                raise HubError(401, "Invalid credentials in Authorization header", "RepoNotFound")
            with hub.lock:
                if name == "commit" and hub.drop_commits:
                    hub.drop_commits -= 1
                    self.close_connection = True
                    return
                getattr(self, f"handle_{name}")(hub, body, parse_qs(url.query), **args)
        except HubError as error:
            headers = {"X-Error-Message": str(error)} | ({"X-Error-Code": error.code} if error.code else {})
            self.reply(error.status, {"error": str(error)}, headers)

    def reply(self, status: int, payload=None, headers=None, raw: bytes | None = None):
        data = raw if raw is not None else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header(
            "Content-Type", "application/octet-stream" if raw is not None else "application/json"
        )
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    @property
    def base_url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def handle_create_repo(self, hub, body, query):
        request = json.loads(body)
        url = f"{self.base_url}/{request.get('organization') or 'user'}/{request['name']}"
        try:
            self.reply(200, hub.create_repo(request) | {"url": url})
        except HubError as error:
            self.reply(error.status, {"error": str(error), "url": url})

    def handle_validate_yaml(self, hub, body, query):
        self.reply(200, {"errors": [], "warnings": []})

    def handle_info(self, hub, body, query, repo, rev="main"):
        self.reply(200, hub.info(repo, rev))

    def handle_refs(self, hub, body, query, repo):
        self.reply(200, hub.refs(repo))

    def handle_tree(self, hub, body, query, repo, rev, path=""):
        recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
        self.reply(200, hub.tree(repo, rev, path.strip("/"), recursive))

    def handle_preupload(self, hub, body, query, repo, rev):
        self.reply(200, hub.preupload(repo, rev, json.loads(body)))

    def handle_commit(self, hub, body, query, repo, rev):
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        self.reply(200, hub.commit(repo, rev, lines, self.base_url))

    def handle_create_branch(self, hub, body, query, repo, rev):
        self.reply(200, hub.create_branch(repo, rev, json.loads(body or b"{}")))

    def handle_delete_branch(self, hub, body, query, repo, rev):
        self.reply(200, hub.delete_branch(repo, rev))

    def handle_create_tag(self, hub, body, query, repo, rev):
        self.reply(200, hub.create_tag(repo, rev, json.loads(body)))

    def handle_resolve(self, hub, body, query, repo, rev, path):
        commit, data = hub.file(repo, rev, path)
        headers = {"X-Repo-Commit": commit.oid, "ETag": f'"{git_blob_oid(data)}"'}
        self.reply(200, raw=data, headers=headers)


class HubServer(ThreadingHTTPServer):
    """`with HubServer() as server:` serves on a free local port until the block ends; `server.url` is the endpoint."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), HubRequestHandler)
        self.hub = Hub()
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def drop_next_commits(self, count: int = 1):
        """The next `count` commit requests lose their connection before the commit is applied (a network failure)."""
        self.hub.drop_commits = count

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc_info):
        self.shutdown()
        self.server_close()
