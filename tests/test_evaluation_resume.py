"""A finished item is never lost: `tinygptv eval` saves each item as it is produced, and a run stopped by Ctrl-C,
killed with SIGKILL or cut off in the middle of a line resumes to the very results file (and predictions file) an
uninterrupted run writes. Also the refusals that keep a predictions file from mixing runs, and a missing file
stopping a run before anything starts."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from eval_fixtures import files

from tinygptv_hf import cli

REPO = Path(__file__).resolve().parents[1]
# GQA's 3 questions plus these, then IconQA's 2: a run that is still going (for half a second or more) when the test
# stops it after two saved items.
EXTRA_GQA_QUESTIONS = 40
ITEMS = 3 + EXTRA_GQA_QUESTIONS + 2


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("benchmarks")
    files.write_gqa(root, extra_questions=EXTRA_GQA_QUESTIONS)
    files.write_iconqa(root)
    return root


def eval_args(checkpoint, data_dir, output, *extra) -> list[str]:
    return [
        "eval", str(checkpoint), "--benchmark", "gqa,iconqa", "--data-dir", str(data_dir), "--batch-size", "1",
        "--max-new-tokens", "4", "--output", str(output), *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def uninterrupted(tiny_checkpoint, data_dir, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("uninterrupted") / "results.json"
    assert cli.main(eval_args(tiny_checkpoint, data_dir, output)) == 0
    return output


def predictions_of(output: Path) -> Path:
    return output.with_name("results.predictions.jsonl")


def saved_items(predictions: Path) -> int:
    """Complete item lines in a predictions file (the first line is its header)."""
    return max(predictions.read_bytes().count(b"\n") - 1, 0) if predictions.exists() else 0


def stop_mid_run(command: list[str], predictions: Path, log: Path, how: signal.Signals) -> int:
    """Start `tinygptv eval` in its own process, send it `how` once two items are saved, return its exit code."""
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    with open(log, "w") as stderr:
        # Ctrl-C's default action in the child even when this process was started with SIGINT ignored (as a
        # background job of a shell is), which the child would inherit and then never see the signal.
        process = subprocess.Popen(
            [sys.executable, "-m", "tinygptv_hf.cli", *command], cwd=REPO, env=environment,
            stdout=subprocess.DEVNULL, stderr=stderr,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 300
            start = saved_items(predictions)
            while saved_items(predictions) < start + 2:
                assert process.poll() is None, log.read_text()[-3000:]
                assert time.monotonic() < deadline, "no item saved within 300 s"
                time.sleep(0.02)
            process.send_signal(how)
            return process.wait(timeout=120)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()


def test_a_run_stopped_by_ctrl_c_and_by_sigkill_resumes_to_the_same_files(
    tiny_checkpoint, data_dir, uninterrupted, tmp_path
):
    output = tmp_path / "results.json"
    predictions = predictions_of(output)
    command = eval_args(tiny_checkpoint, data_dir, output)

    status = stop_mid_run(command, predictions, tmp_path / "first.log", signal.SIGINT)
    assert status == 130
    assert "--resume to continue" in (tmp_path / "first.log").read_text()
    after_ctrl_c = saved_items(predictions)
    status = stop_mid_run([*command, "--resume"], predictions, tmp_path / "second.log", signal.SIGKILL)
    assert status == -signal.SIGKILL
    after_kill = saved_items(predictions)
    assert 2 <= after_ctrl_c < after_kill < ITEMS  # both stopped before the last item
    assert not output.exists()

    assert cli.main([*command, "--resume"]) == 0
    assert output.read_bytes() == uninterrupted.read_bytes()
    assert predictions.read_bytes() == predictions_of(uninterrupted).read_bytes()


def test_a_line_cut_short_is_dropped_and_its_item_redone(tiny_checkpoint, data_dir, uninterrupted, tmp_path):
    whole = predictions_of(uninterrupted).read_bytes()
    lines = whole.split(b"\n")  # header, the items, ""
    assert len(lines) == ITEMS + 2
    output = tmp_path / "results.json"
    # The header and five items saved, the sixth item's line cut off by the kill.
    predictions_of(output).write_bytes(b"\n".join(lines[:6]) + b"\n" + lines[6][: len(lines[6]) // 2])
    assert cli.main(eval_args(tiny_checkpoint, data_dir, output, "--resume")) == 0
    assert output.read_bytes() == uninterrupted.read_bytes()
    assert predictions_of(output).read_bytes() == whole


def test_resuming_a_finished_run_only_scores_it_again(tiny_checkpoint, data_dir, uninterrupted, tmp_path):
    output = tmp_path / "results.json"
    shutil.copy(predictions_of(uninterrupted), predictions_of(output))
    assert cli.main(eval_args(tiny_checkpoint, data_dir, output, "--resume")) == 0
    assert output.read_bytes() == uninterrupted.read_bytes()


def test_a_predictions_file_is_never_overwritten_or_mixed(
    tiny_checkpoint, data_dir, uninterrupted, tmp_path, capsys
):
    output = tmp_path / "results.json"
    predictions = predictions_of(output)
    whole = predictions_of(uninterrupted).read_bytes()
    predictions.write_bytes(whole)

    assert cli.main(eval_args(tiny_checkpoint, data_dir, output)) == 2
    assert "holds the predictions of an earlier run: add --resume" in capsys.readouterr().err

    other = eval_args(tiny_checkpoint, data_dir, output, "--resume")
    other[other.index("--batch-size") + 1] = "2"
    assert cli.main(other) == 2
    assert "batch_size=1 (now 2)" in capsys.readouterr().err

    changed = tmp_path / "changed"
    shutil.copytree(data_dir, changed)
    question_file = changed / "gqa" / "testdev_balanced_questions.json"
    question_file.write_text(
        question_file.read_text().replace("What color is the cat?", "What colour is the cat?")
    )
    assert cli.main(eval_args(tiny_checkpoint, changed, output, "--resume")) == 2
    assert "holds gqa item 201307251 with another prompt or references" in capsys.readouterr().err

    lines = whole.split(b"\n")
    predictions.write_bytes(b"\n".join([*lines[:2], b'{"benchmark": "gq', *lines[3:]]))
    assert cli.main(eval_args(tiny_checkpoint, data_dir, output, "--resume")) == 2
    assert "line 3, is damaged" in capsys.readouterr().err
    assert not output.exists()


def test_a_missing_image_stops_the_run_before_anything_starts(tiny_checkpoint, data_dir, tmp_path, capsys):
    broken = tmp_path / "data"
    shutil.copytree(data_dir, broken)
    (broken / "iconqa" / "iconqa_data" / "iconqa" / "val" / "choose_txt" / "1002" / "image.png").unlink()
    output = tmp_path / "results.json"
    assert cli.main(eval_args(tiny_checkpoint, broken, output)) == 2
    assert "iconqa: 1 of 2 images are missing: " in capsys.readouterr().err
    assert not predictions_of(output).exists() and not output.exists()
