"""The command line's one error contract: a user error ends every command with one line on stderr and exit 2."""

import io
import json
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

from tinygptv_hf.cli import main

REPO = Path(__file__).resolve().parents[1]
MISSING_HUB_ID = "no-such-owner/no-such-tinygptv"


def assert_one_line_error(stderr: str, command: str, *fragments: str):
    """One error line, no traceback (an unfinished progress bar and logged warnings may come before it)."""
    marker = f"tinygptv {command}: error: "
    lines = [line[line.index(marker) :] for line in re.split(r"[\r\n]", stderr) if marker in line]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-2000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def run_cli(*arguments: str) -> subprocess.CompletedProcess:
    """The installed entry point in a fresh process, offline, so no library logging or traceback can hide."""
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO / "src")}
    return subprocess.run(
        [sys.executable, "-m", "tinygptv_hf.cli", *arguments],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


@pytest.mark.parametrize("command", ["chat", "serve"])
def test_a_missing_hub_id_is_one_line_and_exit_2(command):
    result = run_cli(command, MISSING_HUB_ID)
    assert result.returncode == 2, result.stderr[-2000:]
    assert_one_line_error(result.stderr, command, MISSING_HUB_ID)


def test_a_broken_data_budget_ends_training_with_one_line_and_exit_2(tiny_checkpoint, tmp_path, capsys):
    """`DataBudgetExceeded` is a RuntimeError: it used to end `tinygptv train` in a traceback."""
    shard = tmp_path / "00000.tar"
    with tarfile.open(shard, "w") as tar:
        for key in ("a", "b", "c"):
            for extension, payload in (
                ("jpg", b"not a jpeg"),
                ("json", json.dumps({"caption": key}).encode()),
            ):
                info = tarfile.TarInfo(f"{key}.{extension}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    recipe = {
        "stage": 1,
        "model": {"path": str(tiny_checkpoint)},
        "data": {
            "max_bad_samples": 1,
            "shuffle_buffer": 1,
            "datasets": [{"reader": "webdataset_captions", "shards": str(shard)}],
        },
        "training": {
            "output_dir": str(tmp_path / "stage-1"),
            "max_steps": 1,
            "per_device_train_batch_size": 1,
            "use_cpu": True,
            "report_to": [],
        },
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["train", str(path)]) == 2
    assert_one_line_error(capsys.readouterr().err, "train", "max_bad_samples=1")
