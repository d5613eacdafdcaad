"""Stages on several processes with the launcher configs users copy (configs/accelerate/), on CPU over gloo: FSDP2
and DeepSpeed ZeRO-2/3 against one process, FSDP2 killed -9 and resumed, the final folder loaded and generating,
bad setups refused in one line. Each run is the documented `accelerate launch --config_file CONFIG -m
tinygptv_hf.cli train RECIPE` with 2 processes and no mixed precision; FSDP runs `tests/fsdp_on_cpu.py` in place of
`-m tinygptv_hf.cli` (accelerate keeps FSDP for accelerator devices; that file says what it overrides)."""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from accelerate.utils import DeepSpeedPlugin
from test_training import stage_log, variables, write_recipe
from transformers import AutoModelForImageTextToText, AutoProcessor, BitsAndBytesConfig, TrainingArguments

from tinygptv_hf.cli import main
from tinygptv_hf.data.synthetic import write_synthetic_world
from tinygptv_hf.data.webdataset import read_tar_samples
from tinygptv_hf.stages import STAGES
from tinygptv_hf.trainers.trainer import COMPLETE_MARK, check_engine_setup, cpu_has_fast_bf16

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "accelerate"
STEPS = {1: 4, 3: 6}
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def launch(config: str, arguments: list[str], *options: str, env=None) -> subprocess.CompletedProcess:
    entry = [str(REPO / "tests" / "fsdp_on_cpu.py")] if config == "fsdp2.yaml" else ["-m", "tinygptv_hf.cli"]
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / config)]
    command += ["--num_processes", "2", *options, *entry, "train", *arguments]
    return subprocess.run(
        command, cwd=REPO, env={**ENV, **(env or {})}, capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def same_data(tmp_path_factory):
    """32 copies of one sample in 2 shards: every batch is the same, whichever process reads which part."""
    import io
    import tarfile

    root = tmp_path_factory.mktemp("same")
    single = write_synthetic_world(root / "scene", seed=5, n_train=1, n_eval=1, num_shards=1)
    _, record = next(read_tar_samples(single["webdataset"].replace("{00000..00000}", "00000")))
    for shard in range(2):
        with tarfile.open(root / f"{shard:05d}.tar", "w") as tar:
            for index in range(16):
                for extension in ("jpg", "json"):
                    info = tarfile.TarInfo(f"{shard}{index:04d}.{extension}")
                    info.size = len(record[extension])
                    tar.addfile(info, io.BytesIO(record[extension]))
    return {"webdataset": str(root / "{00000..00001}.tar")}


def recipe(folder: Path, stage: int, checkpoint: Path, batch: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    saves = {"save_steps": 2} if stage == 3 else {}
    captions = [
        {"reader": "webdataset_captions", "shards": "${webdataset}"}
    ]  # stage 3's own reader, same data
    return write_recipe(
        folder, stage, checkpoint, STEPS[stage], datasets=captions, per_device_train_batch_size=batch, **saves
    )


def weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


def losses(output: Path) -> list[float]:
    return [entry["loss"] for entry in stage_log(output) if "loss" in entry]


@pytest.fixture(scope="module")
def runs(tiny_checkpoint, same_data, tmp_path_factory):
    """Stages 1 and 3 in one process (batch 4) and with FSDP2 on two (batch 2 each): their output folders."""
    root = tmp_path_factory.mktemp("runs")
    outputs = {}
    for stage in (1, 3):
        one = recipe(root / "one", stage, tiny_checkpoint, batch=4)
        assert main(["train", str(one), *variables(same_data)]) == 0
        two = recipe(root / "fsdp2", stage, tiny_checkpoint, batch=2)
        result = launch("fsdp2.yaml", [str(two), *variables(same_data)], "--mixed_precision", "no")
        assert result.returncode == 0, result.stderr[-4000:]
        outputs[stage] = {name: root / name / f"stage-{stage}" for name in ("one", "fsdp2")}
    return outputs


def assert_equal_to_one_process(output: Path, one: Path, stage: int, start: Path):
    """Per-step losses within 1e-5 relative, trainable weights within 1e-5, frozen weights bitwise unchanged."""
    assert losses(output) == pytest.approx(losses(one), rel=1e-5) and len(losses(one)) == STEPS[stage]
    ours, reference, initial = weights(output / "final"), weights(one / "final"), weights(start)
    assert ours.keys() == reference.keys()
    spec = STAGES[stage]
    trained = 0
    for name, tensor in ours.items():
        lora_target = (
            spec.lora is not None and ".self_attn." in name and name.endswith(("proj.weight", "dense.weight"))
        )
        if spec.is_trainable(name) or lora_target:
            torch.testing.assert_close(tensor, reference[name], rtol=0, atol=1e-5, msg=name)
            trained += not torch.equal(tensor, initial[name])
        else:
            assert torch.equal(tensor, reference[name]), name
            if initial[name].shape == tensor.shape:  # the vision position table is resized for the stage
                assert torch.equal(tensor, initial[name]), name
    assert trained > 0


@pytest.mark.parametrize("stage", [1, 3])
def test_fsdp2_two_processes_equal_one(runs, stage, tiny_checkpoint):
    folders = runs[stage]
    assert_equal_to_one_process(folders["fsdp2"], folders["one"], stage, tiny_checkpoint)


def test_fsdp2_killed_after_a_checkpoint_resumes_to_the_uninterrupted_weights(
    runs, tiny_checkpoint, same_data, tmp_path, capsys
):
    """kill -9 after checkpoint-4 of 6, checkpoint-4 then cut off mid-write (no mark, a shard of its sharded
    optimizer state missing), --resume: checkpoint-2 is taken, and the final weights are bitwise the uninterrupted
    FSDP2 run's."""
    arguments = [str(recipe(tmp_path, 3, tiny_checkpoint, batch=2)), *variables(same_data)]
    killed = launch("fsdp2.yaml", arguments, "--mixed_precision", "no", env={"KILL_AT_CHECKPOINT": "4"})
    assert killed.returncode != 0
    output = tmp_path / "stage-3"
    assert (output / "checkpoint-4" / COMPLETE_MARK).is_file() and not (output / "final").exists()
    shards = sorted((output / "checkpoint-4" / "optimizer_0").glob("*.distcp"))
    assert len(shards) == 2  # one per process: the optimizer state is sharded
    for path in (output / "checkpoint-4" / COMPLETE_MARK, shards[1]):
        path.unlink()

    assert main(["train", *arguments, "--resume", str(output / "checkpoint-4")]) == 2
    assert "checkpoint-4 is not a complete checkpoint" in capsys.readouterr().err
    resumed = launch("fsdp2.yaml", [*arguments, "--resume"], "--mixed_precision", "no")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "Resuming from checkpoint-2; passed over incomplete checkpoint-4" in resumed.stderr
    expected, ours = weights(runs[3]["fsdp2"] / "final"), weights(output / "final")
    assert expected.keys() == ours.keys()
    for name in expected:
        assert torch.equal(expected[name], ours[name]), name
    assert losses(output) == losses(runs[3]["fsdp2"])


@pytest.mark.skipif(not cpu_has_fast_bf16(), reason="bf16 is emulated on this CPU (no AVX-512 bf16 or AMX)")
def test_fsdp2_bf16_keeps_the_qformer_and_query_tokens_float32(runs, tiny_checkpoint, same_data, tmp_path):
    """The config's own mixed precision (bf16): every unit computes in bf16, the stored (sharded) weights and the
    final folder stay float32, Q-Former and query tokens included, and the losses stay near float32's."""
    path = recipe(tmp_path, 3, tiny_checkpoint, batch=2)
    raw = yaml.safe_load(path.read_text())
    raw["training"].update(bf16=True, max_steps=2)
    path.write_text(yaml.safe_dump(raw))
    result = launch("fsdp2.yaml", [str(path), *variables(same_data)])
    assert result.returncode == 0, result.stderr[-4000:]
    folder = weights(tmp_path / "stage-3" / "final")
    assert {tensor.dtype for tensor in folder.values()} == {torch.float32}
    assert any(".qformer." in name for name in folder) and "model.query_tokens" in folder
    assert losses(tmp_path / "stage-3") == pytest.approx(losses(runs[3]["one"])[:2], rel=2e-3)


REMOTE_GENERATE = textwrap.dedent(
    """
    import json, sys

    sys.modules["tinygptv_hf"] = None  # the package must not be importable: everything comes from the folder
    import torch
    from transformers import AutoModelForImageTextToText

    folder, inputs = sys.argv[1:3]
    model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True)
    tokens = model.generate(**torch.load(inputs), max_new_tokens=8, do_sample=False, min_new_tokens=8)
    print(json.dumps({"class": type(model).__module__, "tokens": tokens.tolist()}))
    """
)


def test_fsdp2_final_folder_loads_and_generates_as_the_one_process_model(runs, tmp_path):
    from core_support import random_image

    folders = runs[3]
    processor = AutoProcessor.from_pretrained(folders["fsdp2"] / "final")
    message = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}]
    prompt = processor.apply_chat_template(message, add_generation_prompt=True)
    inputs = processor(images=random_image(1), text=prompt, return_tensors="pt")
    tokens = {}
    for name, output in folders.items():
        model = AutoModelForImageTextToText.from_pretrained(output / "final", trust_remote_code=True)
        assert type(model).__module__.startswith("tinygptv_hf.")
        tokens[name] = model.generate(**inputs, max_new_tokens=8, min_new_tokens=8, do_sample=False).tolist()
    assert tokens["fsdp2"] == tokens["one"]

    torch.save(dict(inputs), tmp_path / "inputs.pt")
    (tmp_path / "generate.py").write_text(REMOTE_GENERATE)
    env = {key: value for key, value in ENV.items() if key != "PYTHONPATH"}
    env.update(HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    result = subprocess.run(
        [sys.executable, "generate.py", str(folders["fsdp2"] / "final"), "inputs.pt"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    remote = json.loads(result.stdout.splitlines()[-1])
    assert remote["class"].startswith("transformers_modules.") and remote["tokens"] == tokens["one"]


@pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None,
    reason="DeepSpeed is not installed (pip install -e '.[deepspeed]'; it also needs g++ for its CPU "
    "communication op): it prints a warning on stdout when imported on a machine without GPU, so the test "
    "environment leaves it out",
)
@pytest.mark.parametrize(("config", "stage"), [("deepspeed_zero2.yaml", 1), ("deepspeed_zero3.yaml", 3)])
def test_deepspeed_two_processes_equal_one(runs, config, stage, tiny_checkpoint, same_data, tmp_path):
    """ZeRO-2 and ZeRO-3 through the same Trainer path (DeepSpeed's CPU accelerator, gloo and its shared-memory
    op here; CUDA and NCCL on GPUs); ZeRO-3's final folder is gathered from the partitions."""
    result = launch(config, [str(recipe(tmp_path, stage, tiny_checkpoint, batch=2)), *variables(same_data)])
    assert result.returncode == 0, result.stderr[-4000:]
    assert_equal_to_one_process(tmp_path / f"stage-{stage}", runs[stage]["one"], stage, tiny_checkpoint)


def test_an_fsdp_wrap_class_matching_nothing_is_one_clear_line(tiny_checkpoint, same_data, tmp_path):
    arguments = [str(recipe(tmp_path, 1, tiny_checkpoint, batch=2)), *variables(same_data)]
    options = (
        "--mixed_precision",
        "no",
        "--fsdp_transformer_layer_cls_to_wrap",
        "PhiDecoderLayer,Blip2EncoderLayer",
    )
    result = launch("fsdp2.yaml", arguments, *options)
    assert result.returncode != 0
    # one line from each process (written to one pipe, the two lines may interleave)
    errors = [part.splitlines()[0] for part in result.stderr.split("tinygptv train: error: ")[1:]]
    assert errors == 2 * [
        "FSDP wrap class(es) PhiDecoderLayer (fsdp_transformer_layer_cls_to_wrap) match no module of this model; "
        "its layer classes are Blip2EncoderLayer,Blip2QFormerLayer,TinyGPTVDecoderLayer "
        "(see configs/accelerate/fsdp2.yaml)"
    ]
    assert not (tmp_path / "stage-1" / "final").exists()


def test_bf16_on_a_cpu_without_fast_bf16_is_one_clear_line(tiny_checkpoint, same_data, tmp_path):
    """An AVX2-only CPU, emulated: torch's kernels capped at AVX2 (the flags the project uses to emulate one)."""
    path = recipe(tmp_path, 1, tiny_checkpoint, batch=2)
    raw = yaml.safe_load(path.read_text())
    raw["training"]["bf16"] = True
    path.write_text(yaml.safe_dump(raw))
    avx2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
    result = subprocess.run(
        [sys.executable, "-m", "tinygptv_hf.cli", "train", str(path), *variables(same_data)],
        cwd=REPO,
        env={**ENV, **avx2},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "tinygptv train: error: bf16 mixed precision on a CPU without fast bf16 (torch uses AVX2, no AVX-512 bf16 "
        "or AMX): it would be emulated, slower than float32; set bf16: false"
    )


def test_zero3_with_a_4bit_model_is_refused_and_zero2_is_not(tiny_checkpoint, tmp_path):
    """The check the trainer makes once DeepSpeed's plugin exists, on a real bitsandbytes 4-bit model and the plugins
    built from the shipped DeepSpeed JSON files."""
    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float32)
    model = AutoModelForImageTextToText.from_pretrained(tiny_checkpoint, quantization_config=quantization)
    args = TrainingArguments(tmp_path, use_cpu=True, report_to=[])
    plugins = {
        stage: DeepSpeedPlugin(hf_ds_config=str(REPO / "configs" / "deepspeed" / f"zero{stage}.json"))
        for stage in (2, 3)
    }
    check_engine_setup(model, args, deepspeed_plugin=plugins[2])
    with pytest.raises(ValueError, match=r"^DeepSpeed ZeRO-3 cannot partition bitsandbytes 4-bit weights"):
        check_engine_setup(model, args, deepspeed_plugin=plugins[3])
