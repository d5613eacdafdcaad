"""`tinygptv convert` and `tinygptv init` on synthetic releases: every input layout converts to the exact truth."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conversion_support import LORA_ALPHA, LORA_R, STAGE_NORMS, SyntheticRelease, tiny_config, write_weights
from safetensors.torch import load_file, save_file

from tinygptv_hf.cli import main
from tinygptv_hf.stages import LORA_TARGETS
from tinygptv_hf.tokenization import build_tiny_tokenizer
from tinygptv_hf.weights import file_digest

LOADER = """
import sys, torch
from pathlib import Path
from safetensors.torch import save_file
from transformers import AutoModelForImageTextToText

folder, out = Path(sys.argv[1]), sys.argv[2]
model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True).eval()
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
tensors = {"weights." + key: value for key, value in model.state_dict().items()}
if (folder / "adapter").exists():
    from peft import PeftModel
    config = model.config
    size = config.vision_config.image_size
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 1000, (2, 12), generator=generator)
    image = torch.full((2, config.num_query_tokens), config.image_token_id)
    batch = dict(input_ids=torch.cat([ids[:, :4], image, ids[:, 4:]], 1), pixel_values=torch.randn(2, 3, size, size, generator=generator))
    base = AutoModelForImageTextToText.from_pretrained(folder / "base", trust_remote_code=True).eval()
    with torch.no_grad():
        tensors["logits.base"] = base(**batch).logits
        tensors["logits.adapter"] = PeftModel.from_pretrained(base, folder / "adapter").eval()(**batch).logits
        tensors["logits.merged"] = model(**batch).logits
save_file({key: value.contiguous() for key, value in tensors.items()}, out)
"""


def load_in_subprocess(folder: Path) -> dict[str, torch.Tensor]:
    """The folder as a user without this package loads it: Auto class + the remote code saved next to it."""
    out = folder.parent / f"{folder.name}.loaded.safetensors"
    env = {"HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(folder.parent / "modules"), "PATH": ""}
    result = subprocess.run(
        [sys.executable, "-c", LOADER, str(folder), str(out)],
        env=env,
        capture_output=True,
        text=True,
        cwd=folder,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return load_file(out)


def assert_weights(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]):
    assert sorted(actual) == sorted(expected)
    for key, value in expected.items():
        assert actual[key].dtype == torch.float32, key
        assert torch.equal(actual[key], value), key


@pytest.fixture(scope="module")
def release():
    tokenizer = build_tiny_tokenizer()
    return SyntheticRelease(tiny_config(tokenizer)), tokenizer


@pytest.fixture(scope="module")
def files(release, tmp_path_factory):
    """The release files most tests share: LAVIS vision files, a fused Phi folder, the architecture json."""
    synthetic, tokenizer = release
    root = tmp_path_factory.mktemp("release")
    config = root / "tinygptv_config.json"
    synthetic.config.to_json_file(config)
    return dict(
        root=root,
        config=config,
        eva_vit=synthetic.write_eva_vit(root / "eva_vit_g.pth"),
        blip2=synthetic.write_blip2_lavis(root / "blip2_pretrained_flant5xxl.pth"),
        phi=synthetic.write_phi(root / "phi-2", tokenizer, fused=True, modified=False, suffix=".bin"),
        stage2=synthetic.write_stage(root / "TinyGPT-V_for_Stage2.pth", 2),
    )


def convert(output, stage, *, lora=True, **sources) -> int:
    argv = ["convert", "--stage", str(stage), "--output", str(output)]
    if lora:
        argv += ["--lora-r", str(LORA_R), "--lora-alpha", str(LORA_ALPHA)]
    for option, value in sources.items():
        argv += [f"--{option.replace('_', '-')}"] + ([] if value is True else [str(value)])
    return main(argv)


def lavis_sources(files, **overrides):
    sources = dict(eva_vit=files["eva_vit"], blip2=files["blip2"], config=files["config"], phi=files["phi"])
    return {**sources, **overrides}


@pytest.mark.parametrize(
    "fused, modified, suffix, shards",
    [(True, False, ".safetensors", 2), (False, False, ".safetensors", 3), (False, True, ".bin", 2)],
    ids=["fused-plain-safetensors-sharded", "split-plain-safetensors-sharded", "split-modified-bin-sharded"],
)
def test_phi_formats_convert_identically(release, files, stage2, tmp_path, fused, modified, suffix, shards):
    """4.36 fused query_key_value and today's q/k/v_proj, plain or with TinyGPT-V's norms, .bin or .safetensors."""
    synthetic, tokenizer = release
    phi = synthetic.write_phi(
        tmp_path / "phi", tokenizer, fused=fused, modified=modified, suffix=suffix, shards=shards
    )
    assert (
        convert(tmp_path / "out", 2, **lavis_sources(files, phi=phi, stage_checkpoint=files["stage2"])) == 0
    )
    reference = load_file(stage2 / "model.safetensors")
    converted = load_file(tmp_path / "out" / "model.safetensors")
    assert converted.keys() == reference.keys()
    for key, value in reference.items():
        assert torch.equal(converted[key], value), key


@pytest.fixture(scope="module")
def stage2(files):
    """Stage 2 from the LAVIS files, the stage file and a fused plain Phi-2 `.bin` folder."""
    output = files["root"] / "stage2-converted"
    assert convert(output, 2, **lavis_sources(files, stage_checkpoint=files["stage2"])) == 0
    return output


def test_stage2_from_lavis_files_loads_with_remote_code(release, files, stage2):
    synthetic, _ = release
    loaded = load_in_subprocess(stage2)
    assert_weights({k[len("weights.") :]: v for k, v in loaded.items()}, synthetic.merged())
    config = json.loads((stage2 / "config.json").read_text())
    assert config["stage"] == 2 and config["vision_config"]["image_size"] == 224

    record = json.loads((stage2 / "conversion.json").read_text())
    listed = {Path(entry["path"]).name: entry["sha256"] for entry in record["source_files"]}
    for path in (files["eva_vit"], files["blip2"], files["stage2"], files["phi"] / "pytorch_model.bin"):
        assert listed[path.name] == file_digest(path)
    card = (stage2 / "README.md").read_text()
    assert file_digest(files["stage2"]) in card
    ignored = record["ignored_source_keys"]
    depth = synthetic.config.vision_config.num_hidden_layers
    assert f"{files['eva_vit']}: blocks.{depth}.attn.qkv.weight" in ignored
    assert "Qformer.cls.predictions.decoder.weight" in ignored and "t5_proj.weight" in ignored


def test_stage1_file_with_unwrapped_prefix(release, files, tmp_path):
    """Stage 1 trains no LoRA and saves its norms under `llama_model.model.`: nothing is merged."""
    synthetic, tokenizer = release
    stage1 = synthetic.write_stage(tmp_path / "TinyGPT-V_for_Stage1.pth", 1)
    assert any(key.startswith("llama_model.model.layers.") for key in torch.load(stage1)["model"])
    phi = synthetic.write_phi(tmp_path / "phi", tokenizer, fused=True, modified=True, suffix=".bin", shards=2)
    assert convert(tmp_path / "out", 1, **lavis_sources(files, phi=phi, stage_checkpoint=stage1)) == 0
    assert_weights(load_file(tmp_path / "out" / "model.safetensors"), synthetic.weights)


def test_stage4_first_upload_with_qformer_from_blip2_folder(release, files, tmp_path):
    """The Dec-28 stage-4 file also carries the trained Q-Former; default config; 448 px table interpolated."""
    synthetic, _ = release
    blip2 = synthetic.write_blip2_folder(tmp_path / "blip2", qformer_weights=synthetic.pretrained)
    stage4 = synthetic.write_stage(tmp_path / "TinyGPT-V_for_Stage4.pth", 4, with_qformer=True)
    assert convert(tmp_path / "out", 4, phi=files["phi"], blip2=blip2, stage_checkpoint=stage4) == 0
    expected = synthetic.merged()
    table = expected["model.vision_model.embeddings.position_embedding"]
    side = synthetic.config.vision_config.image_size // synthetic.config.vision_config.patch_size
    grid = table[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
    grid = torch.nn.functional.interpolate(
        grid, size=(2 * side, 2 * side), mode="bicubic", align_corners=False
    )
    expected["model.vision_model.embeddings.position_embedding"] = torch.cat(
        [table[:, :1], grid.permute(0, 2, 3, 1).reshape(1, 4 * side * side, -1)], dim=1
    )
    loaded = load_in_subprocess(tmp_path / "out")
    assert_weights({k[len("weights.") :]: v for k, v in loaded.items()}, expected)
    assert json.loads((tmp_path / "out" / "config.json").read_text())["vision_config"]["image_size"] == 448
    processor = json.loads((tmp_path / "out" / "processor_config.json").read_text())
    assert processor["image_processor"]["size"] == {"height": 448, "width": 448}


def test_full_state_dict_with_original_names(release, files, tmp_path):
    synthetic, _ = release
    full = tmp_path / "model.safetensors"
    write_weights(tmp_path, synthetic.original_state(), ".safetensors", shards=1)
    tokenizer_folder = tmp_path / "tokenizer"
    release[1].save_pretrained(tokenizer_folder)
    assert (
        convert(tmp_path / "out", 3, full_state_dict=full, tokenizer=tokenizer_folder, config=files["config"])
        == 0
    )
    assert_weights(load_file(tmp_path / "out" / "model.safetensors"), synthetic.merged())
    listed = json.loads((tmp_path / "out" / "conversion.json").read_text())["source_files"]
    assert {entry["role"] for entry in listed} == {"full_state_dict", "tokenizer", "config"}


def test_keep_adapter_gives_the_merged_model(release, files, tmp_path):
    synthetic, _ = release
    sources = lavis_sources(files, stage_checkpoint=files["stage2"], keep_adapter=True)
    assert convert(tmp_path / "out", 3, **sources) == 0
    adapter = json.loads((tmp_path / "out" / "adapter" / "adapter_config.json").read_text())
    assert adapter["peft_type"] == "LORA" and (adapter["r"], adapter["lora_alpha"]) == (LORA_R, LORA_ALPHA)
    assert adapter["target_modules"] == LORA_TARGETS  # the trainers' targets: one definition
    assert_weights(load_file(tmp_path / "out" / "base" / "model.safetensors"), synthetic.weights)
    loaded = load_in_subprocess(tmp_path / "out")
    assert not torch.allclose(loaded["logits.base"], loaded["logits.merged"], atol=1e-2)
    torch.testing.assert_close(loaded["logits.adapter"], loaded["logits.merged"], atol=1e-4, rtol=1e-4)


def _drop(key):
    return lambda model: model.pop(key)


def _add(key, shape):
    return lambda model: model.__setitem__(key, torch.zeros(shape))


def _resize(key):
    return lambda model: model.__setitem__(key, model[key][:-1])


@pytest.mark.parametrize(
    "edit, message",
    [
        (_drop("llama_proj2.bias"), "model.multi_modal_projector.linear_2.bias"),
        (
            _add("llama_model.base_model.model.model.layers.0.self_attn.rotary_emb.inv_freq", (8,)),
            "llama_model.base_model.model.model.layers.0.self_attn.rotary_emb.inv_freq",
        ),
        (_resize("llama_proj.weight"), "llama_proj.weight"),
        (
            _add("llama_model.base_model.model.model.layers.9.self_attn.dense.lora_A.weight", (LORA_R, 128)),
            "model.language_model.layers.9.self_attn.dense",
        ),
        (
            _drop("llama_model.base_model.model.model.layers.1.self_attn.dense.lora_B.weight"),
            "no lora_B.weight",
        ),
        (
            _add("visual_encoder.blocks.0.attn.relative_position_bias_table", (8,)),
            "relative_position_bias_table",
        ),
    ],
    ids=["missing", "unexpected", "shape", "lora-without-base", "lora-half", "unknown"],
)
def test_errors_name_the_key(release, files, tmp_path, capsys, edit, message):
    synthetic, _ = release
    stage = synthetic.write_stage(tmp_path / "stage.pth", 2, edit=edit)
    assert convert(tmp_path / "out", 2, **lavis_sources(files, stage_checkpoint=stage)) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


def test_malicious_pickle_is_refused_without_running(release, files, tmp_path, capsys):
    synthetic, _ = release
    marker = tmp_path / "payload-ran"
    evil = tmp_path / "TinyGPT-V_for_Stage2.pth"
    model = synthetic.stage_model(2)
    torch.save({"model": model, "config": Payload(marker)}, evil)

    assert convert(tmp_path / "out", 2, **lavis_sources(files, stage_checkpoint=evil)) == 2
    err = capsys.readouterr().err
    assert "Refusing to load" in err and str(evil) in err
    assert not marker.exists()
    assert not (tmp_path / "out").exists()
    # The payload is live: an unsafe load would have run it.
    torch.load(evil, weights_only=False)
    assert marker.exists()


def test_init_assembles_stage0_from_transformers_folders(release, tmp_path):
    """`tinygptv init --llm PHI --vision BLIP2`: pretrained parts taken over exactly, projections and norms fresh."""
    synthetic, tokenizer = release
    phi = synthetic.write_phi(tmp_path / "phi", tokenizer, fused=False, modified=False, suffix=".safetensors")
    blip2 = synthetic.write_blip2_folder(tmp_path / "blip2")
    outputs = []
    for seed in (0, 1):
        out = tmp_path / f"stage0-{seed}"
        args = ["init", "--preset", "tiny", "--llm", str(phi), "--vision", str(blip2), "--output", str(out)]
        assert main(args + ["--seed", str(seed)]) == 0
        outputs.append(load_file(out / "model.safetensors"))
    first, second = outputs
    assert first.keys() == synthetic.weights.keys()
    fresh_norms = re.compile(r"^model\.language_model\..*(q_layernorm|k_layernorm|post_layernorm)\.")
    for key, truth in synthetic.weights.items():
        weight = first[key]
        if key.startswith("model.multi_modal_projector."):
            if key.endswith(".weight"):
                assert not torch.equal(weight, second[key]), key  # fresh: drawn from the seed
            else:
                assert torch.equal(weight, torch.zeros_like(weight)), key
        elif fresh_norms.match(key):
            assert torch.equal(weight, torch.full_like(weight, 1.0 if key.endswith("weight") else 0.0)), key
        else:  # Phi's own norm weights are the Phi folder's (pretrained) values
            assert torch.equal(weight, synthetic.pretrained[key] if STAGE_NORMS.match(key) else truth), key
    assert json.loads((tmp_path / "stage0-0" / "config.json").read_text())["stage"] == 0


def test_init_refuses_a_vision_folder_without_ln_vision(release, tmp_path, capsys):
    """Only the projector and the norms TinyGPT-V adds may start fresh: a BLIP-2 folder missing its
    `post_layernorm` (the original's ln_vision) is an error naming the key, not a silent random init."""
    synthetic, tokenizer = release
    phi = synthetic.write_phi(tmp_path / "phi", tokenizer, fused=False, modified=False, suffix=".safetensors")
    blip2 = synthetic.write_blip2_folder(tmp_path / "blip2")
    for shard in blip2.glob("*.safetensors"):
        tensors = load_file(shard)
        save_file({k: v for k, v in tensors.items() if "post_layernorm" not in k}, shard)
    index = blip2 / "model.safetensors.index.json"
    if index.exists():
        data = json.loads(index.read_text())
        data["weight_map"] = {k: v for k, v in data["weight_map"].items() if "post_layernorm" not in k}
        index.write_text(json.dumps(data))
    out = tmp_path / "stage0"
    assert (
        main(["init", "--preset", "tiny", "--llm", str(phi), "--vision", str(blip2), "--output", str(out)])
        == 2
    )
    assert "model.vision_model.post_layernorm" in capsys.readouterr().err
    assert not (out / "model.safetensors").exists()
