"""The four stages through `tinygptv train` on a tiny model and small data in the original's real formats."""

import io
import json
import logging
import os
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoProcessor, TrainerCallback

from tinygptv_hf.cli import main
from tinygptv_hf.data import image_instruction
from tinygptv_hf.data.synthetic import write_synthetic_world
from tinygptv_hf.stages import STAGES
from tinygptv_hf.trainers import TinyGPTVCollator
from tinygptv_hf.trainers.recipe import Recipe, run_recipe
from tinygptv_hf.trainers.trainer import COMPLETE_MARK

REPO = Path(__file__).resolve().parents[1]

# One dataset per stage, in the format that stage reads (docs/original-differences.md#data-formats).
STAGE_DATA = {
    1: [{"reader": "webdataset_captions", "shards": "${webdataset}"}],
    2: [{"reader": "webdataset_captions", "shards": "${webdataset}"}],
    3: [{"reader": "cc_sbu_align", "root": "${cc_sbu_align}"}],
    4: [
        {"reader": "coco_vqa", "ratio": 2, "ann_paths": "${coco_vqa}", "image_root": "${coco_images}"},
        {"reader": "refcoco", "ratio": 1, "data_root": "${refer_root}", "image_root": "${coco_images}"},
    ],
}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    return {
        k: v
        for k, v in write_synthetic_world(root, seed=3, n_train=32, n_eval=4, num_shards=2).items()
        if isinstance(v, str)
    }


def write_recipe(
    folder: Path, stage: int, model: Path, steps: int, datasets=None, data=None, overrides=None, **training
) -> Path:
    recipe = {
        "stage": stage,
        "model": {"path": str(model), "attn_implementation": "eager"},
        "stage_overrides": {
            "image_size": 56 if stage < 4 else 112,
            "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
            **(overrides or {}),
        },
        "data": {
            "seed": 0,
            "shuffle_buffer": 8,
            "max_bad_samples": 0,
            "datasets": datasets or STAGE_DATA[stage],
            **(data or {}),
        },
        "training": {
            "output_dir": str(folder / f"stage-{stage}"),
            "max_steps": steps,
            "per_device_train_batch_size": 4,
            "learning_rate": 3e-3,
            "warmup_steps": 1,
            "logging_steps": 1,
            "save_steps": 1000,
            "seed": 0,
            "use_cpu": True,
            **training,
        },
    }
    if stage == 1:
        recipe["stage_overrides"].pop("lora")
    path = folder / f"stage{stage}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def variables(world: dict) -> list[str]:
    return [argument for key, value in world.items() for argument in ("--set", f"{key}={value}")]


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


@pytest.mark.parametrize("stage", [1, 2, 3, 4])
def test_stage_trains_declared_parameters_only(stage, tiny_checkpoint, world, tmp_path):
    recipe = write_recipe(tmp_path, stage, tiny_checkpoint, steps=6)
    assert main(["train", str(recipe), *variables(world)]) == 0
    output = tmp_path / f"stage-{stage}"
    final = output / "final"

    before, after = weights(tiny_checkpoint), weights(final)
    spec = STAGES[stage]
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    position_table = "model.vision_model.embeddings.position_embedding"
    assert changed - {position_table}, "nothing trained"
    for name in changed - {position_table}:  # the position table is resized for the stage's image size
        lora_target = (
            spec.lora is not None and ".self_attn." in name and name.endswith(("proj.weight", "dense.weight"))
        )
        assert spec.is_trainable(name) or lora_target, f"{name} changed but stage {stage} freezes it"
    declared = {name for name in before if spec.is_trainable(name)}
    assert declared <= changed, f"declared but unchanged: {sorted(declared - changed)[:5]}"

    losses = [entry["loss"] for entry in stage_log(output) if "loss" in entry]
    assert len(losses) == 6 and sum(losses[-2:]) < sum(losses[:2]), losses
    processor = AutoProcessor.from_pretrained(final)
    assert processor.end_symbol == spec.end_symbol
    message = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "[vqa] hi"}]}]
    prompt = processor.apply_chat_template(message, add_generation_prompt=True)
    assert prompt.startswith("[INST] ") if stage == 4 else prompt.endswith("###Assistant: ")
    card = (final / "README.md").read_text()
    assert f"stage {stage}" in card and "pipeline_tag: image-text-to-text" in card
    if spec.lora is not None:
        assert (output / "adapter" / "adapter_config.json").exists()


def test_callers_on_save_sees_a_complete_checkpoint_and_old_ones_rotate_out_after_it(
    tiny_checkpoint, world, tmp_path
):
    seen = []

    class Watch(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            output = Path(args.output_dir)
            complete = (output / f"checkpoint-{state.global_step}" / COMPLETE_MARK).is_file()
            seen.append((complete, sorted(path.name for path in output.glob("checkpoint-*"))))

    recipe = write_recipe(tmp_path, 1, tiny_checkpoint, steps=3, save_steps=1, save_total_limit=1)
    run_recipe(Recipe.load(recipe, dict(world)), trainer_callbacks=[Watch()])
    assert seen == [(True, ["checkpoint-1"]), (True, ["checkpoint-2"]), (True, ["checkpoint-3"])]


def stage_log(output: Path) -> list[dict]:
    return json.loads((output / "log_history.json").read_text())


def run_cli(arguments: list[str], **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "tinygptv_hf.cli", *arguments], env=env, cwd=REPO, **kwargs
    )


# Stage 2's mix as the paper recipe declares it: every source read until all are exhausted, so the small cc_sbu
# ends a pass after a few steps and laion is read again within it.
PAPER_STAGE2_MIX = [
    {"reader": "webdataset_captions", "ratio": 115, "shards": "${laion}", "source": "laion"},
    {"reader": "webdataset_captions", "ratio": 14, "shards": "${cc_sbu}", "source": "cc_sbu"},
]


@pytest.fixture(scope="module")
def small_world(tmp_path_factory):
    root = tmp_path_factory.mktemp("small")
    world = write_synthetic_world(root, seed=3, n_train=12, n_eval=1, image_size=56, num_shards=6)
    shards = world["webdataset"].replace("{00000..00005}", "{}")
    return {"laion": shards.format("{00000..00004}"), "cc_sbu": shards.format("00005")}


def stop_at_checkpoint(step: int, arguments: list[str], stderr: Path) -> None:
    """Run training until it has completed checkpoint-`step`, then kill -9 it there."""
    with stderr.open("w") as errors:
        process = subprocess.Popen(
            [sys.executable, str(REPO / "tests" / "stop_at_checkpoint.py"), str(step), *arguments],
            cwd=REPO,
            stderr=errors,
        )
        _, status = os.waitpid(process.pid, os.WUNTRACED)
        assert os.WIFSTOPPED(status), f"the run ended before checkpoint-{step}: {stderr.read_text()[-3000:]}"
        process.send_signal(signal.SIGKILL)
        process.wait()


def test_kill_in_a_later_pass_and_at_the_last_checkpoint_resumes_to_the_uninterrupted_weights(
    tiny_checkpoint, small_world, tmp_path, capsys
):
    """kill -9 after checkpoint-8, a write of checkpoint-8 cut off midway, --resume (from checkpoint-6, after the
    first pass over the mix), kill -9 after the last checkpoint, --resume: the final weights are bitwise those of
    an uninterrupted run, with no step more and no sample counted twice."""
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    for folder in (straight, killed):
        folder.mkdir()

    def arguments(folder):
        recipe = write_recipe(
            folder,
            2,
            tiny_checkpoint,
            steps=10,
            datasets=PAPER_STAGE2_MIX,
            overrides={"lora": {"r": 4, "alpha": 8, "dropout": 0.05}},  # resume must restore the dropout RNG
            save_steps=2,
        )
        return ["train", str(recipe), *variables(small_world)]

    assert run_cli(arguments(straight)).wait(timeout=600) == 0
    output = killed / "stage-2"
    stop_at_checkpoint(8, arguments(killed), tmp_path / "first.err")
    position = json.loads((output / "checkpoint-6" / "stream-rank0.json").read_text())
    assert position["pass"] >= 1  # after the first pass over the mix
    # What a kill while checkpoint-8 was being written leaves: no trainer state, no completion mark.
    for name in (COMPLETE_MARK, "trainer_state.json"):
        (output / "checkpoint-8" / name).unlink()

    assert main([*arguments(killed), "--resume", str(output / "checkpoint-8")]) == 2
    assert "checkpoint-8 is not a complete checkpoint" in capsys.readouterr().err
    stop_at_checkpoint(10, [*arguments(killed), "--resume"], tmp_path / "second.err")
    resumed_from = (tmp_path / "second.err").read_text()
    assert "Resuming from checkpoint-6; passed over incomplete checkpoint-8" in resumed_from
    assert not (output / "final").exists()
    last = run_cli([*arguments(killed), "--resume"], stdout=subprocess.PIPE, text=True)
    stdout, _ = last.communicate(timeout=600)
    assert last.returncode == 0
    assert stdout.splitlines()[-1].startswith("stage 2 finished: 10 steps, last logged loss ")

    expected, resumed = weights(straight / "stage-2" / "final"), weights(output / "final")
    assert expected.keys() == resumed.keys()
    for name in expected:
        assert torch.equal(expected[name], resumed[name]), name
    steps = [entry for entry in stage_log(output) if "loss" in entry]
    assert [entry["step"] for entry in steps] == list(range(1, 11))
    assert steps == [entry for entry in stage_log(straight / "stage-2") if "loss" in entry]
    health = json.loads((output / "data_health.json").read_text())
    assert health == json.loads((straight / "stage-2" / "data_health.json").read_text())
    assert set(health["samples"]) == {"laion", "cc_sbu"}


def write_caption_shard(path: Path, keys: list[str], corrupt=()) -> None:
    """A webdataset shard of real JPEGs and captions; the JPEGs of `corrupt` keys are cut to a third."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for index, key in enumerate(keys):
            buffer = io.BytesIO()
            Image.new("RGB", (56, 56), (40 * index % 256, 120, 200)).save(buffer, format="JPEG")
            image = buffer.getvalue()[: buffer.tell() // 3] if key in corrupt else buffer.getvalue()
            caption = json.dumps({"caption": f"a square of shade {index}"}).encode()
            for extension, payload in (("jpg", image), ("json", caption)):
                info = tarfile.TarInfo(f"{key}.{extension}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))


def test_bad_records_of_all_mixed_sources_count_in_one_report_and_one_budget(
    tiny_checkpoint, tmp_path, capsys, caplog
):
    """Stage 2's two webdataset sources mixed by ratio, with bad records in both: the report counts all three, the
    log counts them 1/5, 2/5, 3/5 across sources, and a budget of 2 stops the run in one line with status 2."""
    write_caption_shard(tmp_path / "laion" / "00000.tar", [f"l{i}" for i in range(6)], corrupt={"l1", "l4"})
    write_caption_shard(tmp_path / "cc_sbu" / "00000.tar", [f"c{i}" for i in range(4)], corrupt={"c2"})
    mix = [{**entry, "ratio": ratio} for entry, ratio in zip(PAPER_STAGE2_MIX, (2, 1), strict=True)]
    # laion as a folder of shards, cc_sbu as a brace range
    data = ["--set", f"laion={tmp_path}/laion", "--set", f"cc_sbu={tmp_path}/cc_sbu/{{00000..00000}}.tar"]

    (tmp_path / "ok").mkdir()
    recipe = write_recipe(tmp_path / "ok", 2, tiny_checkpoint, 4, datasets=mix, data={"max_bad_samples": 5})
    with caplog.at_level(logging.WARNING, logger="tinygptv_hf.data.health"):
        assert main(["train", str(recipe), *data]) == 0
    health = json.loads((tmp_path / "ok" / "stage-2" / "data_health.json").read_text())
    assert health["bad"] == {"laion": 2, "cc_sbu": 1} and health["total_bad"] == 3
    assert health["samples"]["laion"] > 0 and health["samples"]["cc_sbu"] > 0
    assert health["total_samples"] == sum(health["samples"].values()) >= 4 * 4
    assert [line.split(":")[0] for line in caplog.messages] == [
        f"Skipped bad sample {i}/5" for i in (1, 2, 3)
    ]
    last_line = capsys.readouterr().out.splitlines()[-1]
    assert last_line.startswith("stage 2 finished: 4 steps, last logged loss ")
    assert f"{health['total_samples']} samples read, 3 bad and 0 dropped records; model in " in last_line
    assert "log_history" not in last_line and "{" not in last_line

    (tmp_path / "stop").mkdir()
    recipe = write_recipe(tmp_path / "stop", 2, tiny_checkpoint, 4, datasets=mix, data={"max_bad_samples": 2})
    assert main(["train", str(recipe), *data]) == 2
    (error,) = capsys.readouterr().err.strip().splitlines()[-1:]
    assert error.startswith("tinygptv train: error: 3 bad samples exceed the error budget max_bad_samples=2;")
    assert not (tmp_path / "stop" / "stage-2" / "final").exists()


def test_an_over_long_sample_is_cut_to_the_context_instead_of_stopping_the_run(tiny_checkpoint):
    """A LLaVA answer and a question longer than the tiny model's 512-token context, with stage 4's 1024-token
    answer cap: the answer is cut to what the context leaves, the question's text to the context (its image
    tokens stay), and the model trains on both."""
    processor = AutoProcessor.from_pretrained(tiny_checkpoint)
    spec = STAGES[4]
    collator = TinyGPTVCollator(
        processor, prompt_template=spec.prompt_template, end_symbol=spec.end_symbol, max_text_length=1024
    )
    image = Image.new("RGB", (64, 48), (200, 30, 30))
    answer = "The red square sits left of a blue circle, and both rest on a grey floor. " * 40
    question = "Look closely at every shape and its colour in this picture and then " * 80
    batch = collator(
        [
            {"image": image, "turns": [{"instruction": image_instruction(q), "answer": a}], "source": "llava"}
            for q, a in (("Describe it.", answer), (question, "Yes."))
        ]
    )
    context = processor.context_length
    assert batch["attention_mask"].sum(dim=1).tolist() == [context, context] and context < 1024
    image_tokens = (batch["input_ids"] == processor.image_token_id).sum(dim=1)
    assert image_tokens.tolist() == [processor.num_query_tokens] * 2
    labelled = (batch["labels"] != -100).sum(dim=1).tolist()
    assert labelled[0] > context - 100 and labelled[1] == 1
    model = AutoModelForImageTextToText.from_pretrained(tiny_checkpoint)
    assert torch.isfinite(model(**batch).loss)


@pytest.mark.slow
def test_torchrun_two_processes_match_one(tiny_checkpoint, tmp_path):
    """Every sample identical, so one process with batch 4 and two with batch 2 each see the same global batch:
    the loss trajectories must agree, and must not be scaled by the world size."""
    root = tmp_path / "same"
    (root / "shards").mkdir(parents=True)
    single = write_synthetic_world(tmp_path / "scene", seed=5, n_train=1, n_eval=1, num_shards=1)
    from tinygptv_hf.data.webdataset import read_tar_samples

    key, record = next(read_tar_samples(single["webdataset"].replace("{00000..00000}", "00000")))
    import io
    import tarfile

    for shard in range(2):
        with tarfile.open(root / "shards" / f"{shard:05d}.tar", "w") as tar:
            for index in range(16):
                for extension in ("jpg", "json"):
                    info = tarfile.TarInfo(f"{shard}{index:04d}.{extension}")
                    info.size = len(record[extension])
                    tar.addfile(info, io.BytesIO(record[extension]))
    data = {"webdataset": str(root / "shards" / "{00000..00001}.tar")}
    runs = {}
    for name, launcher, batch, distributed in (
        ("one", [sys.executable, "-m", "tinygptv_hf.cli"], 4, {}),
        (
            "two",
            [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "tinygptv_hf.cli"],
            2,
            {"ddp_backend": "gloo"},
        ),
    ):
        folder = tmp_path / name
        folder.mkdir()
        recipe = write_recipe(
            folder, 2, tiny_checkpoint, steps=4, per_device_train_batch_size=batch, **distributed
        )
        result = subprocess.run(
            [*launcher, "train", str(recipe), *variables(data)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        runs[name] = [entry["loss"] for entry in stage_log(folder / "stage-2") if "loss" in entry]
    assert len(runs["one"]) == len(runs["two"]) == 4
    assert runs["two"] == pytest.approx(runs["one"], rel=2e-3)


@pytest.mark.parametrize("stage", [1, 2, 3, 4])
def test_paper_recipes_declare_valid_readers_and_arguments(stage, tmp_path):
    """The shipped paper recipes name real readers with arguments they accept, and valid TrainingArguments."""
    import inspect
    from importlib import resources

    from tinygptv_hf import data
    from tinygptv_hf.trainers.recipe import VARIABLE, Recipe

    path = resources.files("tinygptv_hf").joinpath(f"recipes/paper_stage{stage}.yaml")
    names = set(VARIABLE.findall(Path(path).read_text()))
    recipe = Recipe.load(path, {name: str(tmp_path / name) for name in names})
    assert recipe.stage == stage and recipe.spec == STAGES[stage]
    for entry in recipe.data["datasets"]:
        arguments = {key: value for key, value in entry.items() if key not in ("reader", "ratio")}
        reader = getattr(data, f"read_{entry['reader']}")
        inspect.signature(reader).bind(**arguments)
    assert recipe.training["bf16"] is True  # GPU recipes; this CPU machine builds them without bf16
    recipe.training.update(bf16=False, use_cpu=True)
    arguments = recipe.training_arguments()
    assert arguments.lr_scheduler_type == "cosine_warmup_with_min_lr"
    rates = arguments.lr_scheduler_kwargs
    assert rates["min_lr_rate"] * arguments.learning_rate == pytest.approx(STAGES[stage].min_learning_rate)


def test_recipe_problems_fail_before_training_with_a_clear_error(tiny_checkpoint, world, tmp_path, capsys):
    recipe = write_recipe(tmp_path, 2, tiny_checkpoint, steps=2)
    assert main(["train", str(recipe), "--set", "webdataset=/no/such/shards/{00000..00001}.tar"]) == 2
    assert "/no/such/shards" in capsys.readouterr().err
    assert not (tmp_path / "stage-2").exists()

    assert main(["train", str(recipe)]) == 2
    assert "${webdataset}" in capsys.readouterr().err

    broken = yaml.safe_load(recipe.read_text())
    broken["stage_overrides"]["lora_rank"] = 8
    recipe.write_text(yaml.safe_dump(broken))
    assert main(["train", str(recipe), *variables(world)]) == 2
    assert "lora_rank" in capsys.readouterr().err

    broken["stage_overrides"].pop("lora_rank")
    broken["training"]["dataloader_num_workers"] = (
        2  # the stream's position must stay in the training process
    )
    recipe.write_text(yaml.safe_dump(broken))
    assert main(["train", str(recipe), *variables(world)]) == 2
    assert "dataloader_num_workers must be 0" in capsys.readouterr().err
    assert not (tmp_path / "stage-2" / "final").exists()


def test_trainer_loss_on_labelled_positions_equals_the_full_models_loss_and_gradients(
    tiny_checkpoint, world, tmp_path
):
    """The stage trainer applies the LM head only where a label follows; loss and every gradient must be the
    model's own full-logits loss, for rows whose answers sit at different positions, with and without
    `num_items_in_batch` (gradient accumulation)."""
    from tinygptv_hf.trainers import TinyGPTVStageTrainer

    recipe = Recipe.load(write_recipe(tmp_path, 4, tiny_checkpoint, 1), world)
    trainer = TinyGPTVStageTrainer(
        AutoModelForImageTextToText.from_pretrained(tiny_checkpoint),
        recipe.training_arguments(),
        processor=AutoProcessor.from_pretrained(tiny_checkpoint),
        train_dataset=recipe.training_stream(),
        stage_spec=recipe.spec,
    )
    batch = next(iter(trainer.get_train_dataloader()))
    labelled = batch["labels"].ne(-100)
    assert len(set(labelled.float().argmax(dim=1).tolist())) > 1  # the answers start at different positions
    trainable = [p for p in trainer.model.parameters() if p.requires_grad]
    head_rows = []
    trainer.model.get_output_embeddings().register_forward_hook(
        lambda _, args, __: head_rows.append(args[0].shape[1])
    )
    for items in (None, torch.tensor(int(labelled[:, 1:].sum()) + 5)):
        full = trainer.model(**batch, **({} if items is None else {"num_items_in_batch": items})).loss
        full_grads = torch.autograd.grad(full, trainable)
        ours = trainer.compute_loss(trainer.model, dict(batch), num_items_in_batch=items)
        our_grads = torch.autograd.grad(ours, trainable)
        torch.testing.assert_close(ours, full)
        for mine, theirs in zip(our_grads, full_grads, strict=True):
            torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-6)
    positions_with_a_next_label = int(labelled[:, 1:].any(dim=0).sum())
    assert head_rows == [batch["labels"].shape[1], positions_with_a_next_label] * 2
    assert positions_with_a_next_label < batch["labels"].shape[1] / 2
    assert "labels" in batch  # the caller's batch is left as it was
