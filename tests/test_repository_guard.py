"""The suite runs from a clone alone: the guard in conftest.py refuses reads beside the repository."""

import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT, _folders_beside_repository, _refuse_reads_outside_repository


def test_guard_refuses_reads_in_a_forbidden_folder_and_allows_others(tmp_path):
    forbidden = tmp_path / "shared"
    forbidden.mkdir()
    hook = _refuse_reads_outside_repository([forbidden])
    for event in ("open", "os.listdir", "os.scandir"):
        with pytest.raises(PermissionError, match="outside the repository"):
            hook(event, (str(forbidden / "parity" / "case_a" / "config.json"), "r", 0))
    with pytest.raises(PermissionError):
        hook("open", (forbidden, "r", 0))
    hook("open", (str(tmp_path / "shared-not" / "x"), "r", 0))
    hook("open", (str(REPO_ROOT / "README.md"), "r", 0))
    hook("open", (3, "r", 0))


def test_guard_never_forbids_the_repository_or_the_interpreter():
    folders = _folders_beside_repository()
    assert REPO_ROOT not in folders
    assert all(f not in REPO_ROOT.parents for f in folders)
    assert all(f not in Path(sys.prefix).resolve().parents for f in folders)


def test_parity_fixtures_are_read_from_inside_the_repository(monkeypatch):
    import parity_support

    monkeypatch.delenv("TINYGPTV_PARITY_FIXTURES", raising=False)
    root = parity_support.fixture_root()
    assert REPO_ROOT in root.resolve().parents
    assert parity_support.case_dirs()
