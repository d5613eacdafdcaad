"""Every `docs/<page>.md#<anchor>` the code and the tests cite names a page of docs/ and a heading on it."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CITATION = re.compile(r"docs/([\w.-]+\.md)#([\w-]+)")


def heading_anchors(page: Path) -> set[str]:
    """GitHub's anchors: the heading lower-cased, punctuation other than hyphens dropped, spaces made hyphens."""
    headings = re.findall(r"^#+ (.+)$", page.read_text(), flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-") for heading in headings}


def citations() -> list[tuple[str, str, str]]:
    found = []
    for path in sorted([*(REPO / "src").rglob("*.py"), *(REPO / "tests").glob("*.py")]):
        for page, anchor in CITATION.findall(path.read_text()):
            found.append((str(path.relative_to(REPO)), page, anchor))
    return found


def test_heading_anchors_follow_github():
    anchors = heading_anchors(REPO / "docs" / "original-differences.md")
    assert {"fused-qkv", "stage-4-learning-rate", "task-identifiers-and-boxes"} <= anchors
    assert "fused-q/k/v" not in anchors and "Stages" not in anchors


def test_every_cited_anchor_exists():
    cited = citations()
    # The comments that explain the original's behaviours point at its page, not at a document outside the repository.
    assert len({(page, anchor) for _, page, anchor in cited if page == "original-differences.md"}) >= 10
    broken = [
        f"{where}: docs/{page}#{anchor}"
        for where, page, anchor in cited
        if not (REPO / "docs" / page).is_file() or anchor not in heading_anchors(REPO / "docs" / page)
    ]
    assert not broken, broken
