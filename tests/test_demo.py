"""`tinygptv demo --quick` end to end in a fresh folder, and the evaluation harness on the demo's held-out sets."""

import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import ModelCard
from PIL import Image

from tinygptv_hf.data import scenes
from tinygptv_hf.demo import QUICK
from tinygptv_hf.evaluation.captions import pair_f1, word_f1

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    output = tmp_path_factory.mktemp("demo") / "out"
    result = subprocess.run(
        [sys.executable, "-m", "tinygptv_hf.cli", "demo", "--quick", "--output", str(output)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return output, result.stdout, result.stderr


@pytest.mark.slow
def test_quick_demo_writes_every_stage_with_cards_plots_and_summary(demo):
    output, stdout, _ = demo
    summary = json.loads((output / "summary.json").read_text())
    assert [row["stage"] for row in summary["stages"]] == [0, 1, 2, 3, 4]
    rows = summary["stages"]
    for row in rows:
        # Scores count held-out items that the harness's metrics scored right.
        for key, count in (("vqa_accuracy", QUICK.eval_questions), ("refer_iou50", QUICK.eval_refs)):
            assert row[key] * count == pytest.approx(round(row[key] * count))
        assert row["seconds"] > 0
    assert rows[0]["loss"] is None and all(row["loss"] is not None for row in rows[1:])
    # Training learns across the stages: stage 4 ends below where stage 1 began (a random model's loss).
    assert rows[4]["loss"] < rows[1]["first_loss"]
    for stage in range(1, 5):
        final = output / f"stage-{stage}" / "final"
        assert (final / "model.safetensors").exists() and (final / "modeling_tinygptv.py").exists()
        card = ModelCard.load(final / "README.md")
        assert card.data.pipeline_tag == "image-text-to-text" and card.data.stage == stage
    for plot in ("loss.png", "accuracy.png"):
        with Image.open(output / plot) as image:
            assert image.format == "PNG" and image.width > 200
    assert "stage  seconds" in stdout and "demo finished" in stdout


@pytest.mark.slow
def test_console_has_one_bar_per_stage_the_scores_and_answers_and_the_raw_log_goes_to_a_file(demo):
    output, stdout, stderr = demo
    console = stdout + stderr
    assert [f"stage {stage}:" in stderr for stage in range(1, 5)] == [True] * 4  # the stage bars
    for noise in ("{'loss'", "Loading weights", "Writing model shards", "Warning", "warn(", "kernels"):
        assert noise not in console, noise
    lines = stdout.splitlines()
    assert lines[1].startswith("stage  seconds") and "answers of" in stdout
    log = (output / "demo.log").read_text()
    assert re.search(r"stage 4 step 4 \{\"loss\": [0-9.]+", log), log[-2000:]


@pytest.mark.slow
def test_final_model_answers_from_its_own_files_without_the_package(demo):
    """The reloaded stage-4 folder answers a held-out question in a process where tinygptv_hf cannot be imported."""
    output, stdout, _ = demo
    final = output / "stage-4" / "final"
    question = json.loads((output / "data" / "gqa" / "testdev_balanced_questions.json").read_text())[0]
    image = output / "data" / "gqa" / "images" / question["image"]
    script = f"""
import sys
sys.modules["tinygptv_hf"] = None
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor
model = AutoModelForImageTextToText.from_pretrained({str(final)!r}, trust_remote_code=True)
processor = AutoProcessor.from_pretrained({str(final)!r}, trust_remote_code=True)
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
messages = [{{"role": "user", "content": [{{"type": "image"}}, {{"type": "text", "text": "[vqa] " + {question["question"]!r}}}]}}]
inputs = processor(images=[Image.open({str(image)!r})], text=[processor.apply_chat_template(messages, add_generation_prompt=True)], return_tensors="pt")
output = model.generate(**inputs, max_new_tokens=4, do_sample=False)
print("ANSWER", repr(processor.post_process_image_text_to_text(output[:, inputs["input_ids"].shape[1]:])[0]))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ANSWER" in result.stdout
    assert "(reloaded with AutoModelForImageTextToText, trust_remote_code=True)" in stdout


@pytest.mark.slow
def test_eval_harness_runs_on_the_demo_held_out_sets(demo, tmp_path):
    output, _, _ = demo
    results = tmp_path / "results.json"
    command = [
        sys.executable, "-m", "tinygptv_hf.cli", "eval", str(output / "stage-4" / "final"),
        "--benchmark", "gqa,refcoco:val", "--data-dir", str(output / "data"), "--limit", "6", "--output", str(results),
    ]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(results.read_text())
    assert sorted(report["results"]) == ["gqa", "refcoco:val"]
    assert len(report["predictions"]) == 12
    assert report["model_index"][0]["results"]


def test_caption_pairs_score_which_colour_goes_with_which_shape():
    """Word F1 cannot see a colour given to the wrong shape; the pair score can. Every caption of the world names
    each of its shapes' pairs."""
    scene = scenes.Scene(
        1,
        224,
        "white",
        (
            scenes.Shape("red", "circle", (0, 0, 56, 56)),
            scenes.Shape("blue", "square", (168, 168, 56, 56)),
        ),
    )
    reference = scenes.caption(scene)
    assert (
        reference
        == "a red circle in the top left and a blue square in the bottom right on a white background"
    )
    swapped = "a blue circle in the top left and a red square in the bottom right on a white background"
    assert word_f1(swapped, reference) == 1.0 and pair_f1(swapped, reference) == 0.0
    assert pair_f1(reference, reference) == 1.0
    assert pair_f1("a red circle on a white background", reference) == pytest.approx(
        2 / 3
    )  # one of two, nothing wrong
    assert pair_f1("a red circle and a green triangle", reference) == pytest.approx(
        0.5
    )  # one right, one invented
    assert pair_f1("", reference) == 0.0
    rng = random.Random(0)
    for image_id in range(50):
        scene = scenes.make_scene(rng, image_id)
        assert scenes.named_pairs(scenes.caption(scene)) == {(s.colour, s.kind) for s in scene.shapes}


def test_demo_refuses_a_folder_that_already_holds_files(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    command = [sys.executable, "-m", "tinygptv_hf.cli", "demo", "--quick", "--output", str(tmp_path)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert f"demo output folder {tmp_path} is not empty" in result.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["notes.txt"]
