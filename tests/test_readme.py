"""The README's snippets run as written, and its links lead somewhere.

Every fenced `python` and `bash` block of the README is run in a fresh process, in a folder laid out as the README
assumes (a checkpoint at `demo-output/stage-4/final`, written by the package, and a real `photo.jpg`), unless the
line before it says `<!-- readme-test: skip (REASON) -->`; a block that cannot run here must say why.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_docs_links import heading_anchors

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
BLOCK = re.compile(
    r"(?:<!-- readme-test: skip \((?P<reason>[^)]*)\) -->\n)?```(?P<language>\w*)\n(?P<code>.*?)```", re.S
)
LINK = re.compile(r"\]\(((?:docs/)?[\w./-]+\.md)(?:#([\w-]+))?\)")


def blocks(text: str) -> list[dict]:
    return [match.groupdict() for match in BLOCK.finditer(text)]


README_BLOCKS = blocks(README.read_text())
RUNNABLE = [block for block in README_BLOCKS if block["reason"] is None]


def test_every_block_runs_here_or_says_why_not():
    assert {block["language"] for block in README_BLOCKS} <= {"python", "bash"}
    skipped = [block for block in README_BLOCKS if block["reason"] is not None]
    assert all(len(block["reason"]) > 10 for block in skipped), [block["reason"] for block in skipped]
    languages = [block["language"] for block in RUNNABLE]
    assert languages.count("python") >= 3 and "bash" in languages, "the README's own examples must be tested"


@pytest.fixture(scope="module")
def workspace(tiny_checkpoint, image_files, tmp_path_factory):
    folder = tmp_path_factory.mktemp("readme")
    shutil.copytree(tiny_checkpoint, folder / "demo-output" / "stage-4" / "final")
    shutil.copy(image_files[1], folder / "photo.jpg")
    return folder


@pytest.mark.parametrize(
    "block", RUNNABLE, ids=[f"{block['language']}-{index}" for index, block in enumerate(RUNNABLE)]
)
def test_readme_block_runs(block, workspace):
    environment = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    environment["HF_HUB_OFFLINE"] = "1"
    if block["language"] == "python":
        command = [sys.executable, "-c", block["code"]]
    else:
        command = ["bash", "-euo", "pipefail", "-c", block["code"]]
    result = subprocess.run(
        command, cwd=workspace, env=environment, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, f"{block['code']}\n{result.stderr[-3000:]}"


def test_every_link_of_the_readme_and_the_docs_resolves():
    pages = [README, *sorted((REPO / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        for target, anchor in LINK.findall(page.read_text()):
            path = (page.parent / target).resolve()
            if not path.is_file():
                broken.append(f"{page.name}: {target}")
            elif anchor and anchor not in heading_anchors(path):
                broken.append(f"{page.name}: {target}#{anchor}")
    assert not broken, broken
