"""Publishing a checkpoint folder as one stage of a Hub repository.

Each stage is the branch `stage-N` (started from `stage-(N-1)`, else from `main`), and every distinct content
pushed there also gets the immutable tag `stage-N-<first 8 hex of the commit>`, so a stage that is later
overwritten with `force` stays reachable. The folder goes up as ONE `create_commit` with `parent_commit` set:
the Hub applies it whole or not at all, so a push that fails midway leaves the branch as it was, and a
concurrent push is refused instead of silently overwritten. `main` moves to a stage only when asked, by a commit
that gives `main` the stage's exact files.
"""

import logging
import os
from pathlib import Path

from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, get_token
from huggingface_hub.hf_api import RepoFile

from .cards import render_model_card
from .stages import TRAINING_STAGES
from .weights import file_digest

logger = logging.getLogger(__name__)

# Managed by the Hub (LFS rules); never part of a checkpoint, never deleted.
HUB_FILES = {".gitattributes"}


class PushError(ValueError):
    """A push that cannot authenticate, or that would replace a stage's different content without `force`."""


def stage_branch(stage: int) -> str:
    return f"stage-{stage}"


def stage_tag(stage: int, commit: str) -> str:
    return f"stage-{stage}-{commit[:8]}"


def checkpoint_files(folder: Path) -> dict[str, Path]:
    """Every file of the folder by its path in the repository; hidden files and `__pycache__` are not checkpoint."""
    files = {}
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if path.is_file() and not any(
            part.startswith(".") or part == "__pycache__" for part in relative.parts
        ):
            files[relative.as_posix()] = path
    return files


def _git_blob_id(path: Path) -> str:
    """git's blob id: `sha1` of "blob <size>\\0" + content (the LFS id is the plain `sha256` of the content)."""
    return file_digest(path, "sha1", b"blob %d\0" % path.stat().st_size)


def _operations(api: HfApi, repo_id: str, commit: str, files: dict[str, Path]) -> list:
    """What turns the tree at `commit` into exactly `files`; empty when it already is."""
    remote = {
        entry.path: entry
        for entry in api.list_repo_tree(repo_id, recursive=True, revision=commit)
        if isinstance(entry, RepoFile) and entry.path not in HUB_FILES
    }
    operations = [CommitOperationDelete(path) for path in sorted(set(remote) - set(files))]
    for path, local in files.items():
        entry = remote.get(path)
        unchanged = entry is not None and (
            entry.lfs.sha256 == file_digest(local) if entry.lfs else entry.blob_id == _git_blob_id(local)
        )
        if not unchanged:
            operations.append(CommitOperationAdd(path_in_repo=path, path_or_fileobj=str(local)))
    return operations


def _commit(api: HfApi, repo_id: str, branch: str, head: str, operations: list, message: str) -> str:
    """One atomic commit on `branch`, refused by the Hub if the branch moved since `head`; returns the new head."""
    if not operations:
        return head
    return api.create_commit(
        repo_id, operations, commit_message=message, revision=branch, parent_commit=head
    ).oid


def push_stage(
    checkpoint_dir: str | os.PathLike,
    repo_id: str,
    stage: int,
    *,
    force: bool = False,
    update_main: bool = False,
    token: str | None = None,
    commit_message: str | None = None,
) -> dict:
    """Upload the complete checkpoint folder to branch `stage-N` of `repo_id`, tag it, and optionally move `main`.

    The token is `token`, else whatever huggingface_hub finds (`HF_TOKEN`, `hf auth login`). A folder without a
    README.md gets the stage's model card first. Pushing the same files again makes no commit; pushing different
    files over a stage that already has its own commit needs `force=True`.

    Returns {"repo_id", "stage", "branch", "commit", "tag", "new_commit", "main"} (`main` is the commit `main`
    points to after an `update_main` push, else None).
    """
    if stage not in TRAINING_STAGES:
        raise ValueError(f"Stage must be one of {sorted(TRAINING_STAGES)}, got {stage}.")
    folder = Path(checkpoint_dir)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} is not a checkpoint folder (no config.json).")
    token = token or get_token()
    if not token:
        raise PushError(
            "No Hugging Face token found. Log in with `hf auth login` or set the HF_TOKEN environment variable."
        )
    api = HfApi(token=token)
    api.create_repo(repo_id, exist_ok=True)
    branches = {ref.name: ref.target_commit for ref in api.list_repo_refs(repo_id).branches}

    branch, previous = stage_branch(stage), stage_branch(stage - 1)
    start = branches.get(previous, branches["main"])
    if not (folder / "README.md").exists():
        previous_ref = f"{repo_id}@{branches[previous]}" if previous in branches else None
        card = render_model_card(folder, stage=stage, repo_id=repo_id, previous_stage_ref=previous_ref)
        card.save(folder / "README.md")
    files = checkpoint_files(folder)

    if branch not in branches:
        api.create_branch(repo_id, branch=branch, revision=start)
    head = branches.get(branch, start)
    operations = _operations(api, repo_id, head, files)
    # A branch still at its starting point holds nothing of this stage yet (e.g. an earlier push failed).
    if operations and head != start and not force:
        raise PushError(
            f"{repo_id}@{branch} already holds a different stage-{stage} checkpoint (commit {head[:8]}); "
            "push with force=True (--force) to replace it. The replaced commit stays reachable by its tag."
        )
    message = commit_message or f"Stage {stage} checkpoint"
    commit = _commit(api, repo_id, branch, head, operations, message)
    tag = stage_tag(stage, commit)
    api.create_tag(repo_id, tag=tag, revision=commit, tag_message=message, exist_ok=True)
    main = None
    if update_main:
        main_operations = _operations(api, repo_id, branches["main"], files)
        main = _commit(
            api, repo_id, "main", branches["main"], main_operations, f"Point main at stage {stage}"
        )
    logger.info("pushed %s to %s@%s (commit %s, tag %s)", folder, repo_id, branch, commit[:8], tag)
    return {
        "repo_id": repo_id,
        "stage": stage,
        "branch": branch,
        "commit": commit,
        "tag": tag,
        "new_commit": commit != head,
        "main": main,
    }
