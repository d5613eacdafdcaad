"""What vLLM's and SGLang's Transformers backends need of the model and processor, proven without the engines.

Both engines build the backbone with `AutoModel.from_config`, switch the TEXT config's attention to their own
function (registered through `AttentionInterface`), call the backbone with packed sequences, drop checkpoint weights
that match its ignore patterns, shard by its `tp_plan` and split pipeline stages by its `_pp_plan`
(docs/serving.md lists each requirement with its upstream source).
"""

import ast
import json
import logging
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from conversion_support import SyntheticRelease, tiny_config
from core_support import DISTINCT_WIDTHS, random_image
from safetensors.torch import load_file
from torch import nn
from transformers import AttentionInterface, AutoModel, AutoModelForImageTextToText, AutoProcessor
from transformers.distributed.tensor_parallel import verify_tp_plan
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.models.blip_2.modeling_blip_2 import Blip2Attention, Blip2QFormerMultiHeadAttention
from transformers.models.phi.modeling_phi import PhiAttention

import tinygptv_hf
from tinygptv_hf import TinyGPTVConfig, TinyGPTVForConditionalGeneration, TinyGPTVModel
from tinygptv_hf.checkpoint import build_processor, save_checkpoint
from tinygptv_hf.cli import main
from tinygptv_hf.tokenization import build_tiny_tokenizer

ATTENTION_CLASSES = (PhiAttention, Blip2Attention, Blip2QFormerMultiHeadAttention)
CALLS = []


def counting_attention(module, query, key, value, attention_mask, **kwargs):
    """An engine's attention function in miniature: records who called it with what, then computes SDPA."""
    CALLS.append((module, kwargs))
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


AttentionInterface.register("counting", counting_attention)


@pytest.fixture(autouse=True)
def _fresh_calls(one_thread):
    CALLS.clear()


def distinct_config(**overrides) -> TinyGPTVConfig:
    return TinyGPTVConfig(**{**DISTINCT_WIDTHS, **overrides})


def prompt(num_images: int, config: TinyGPTVConfig, seed: int = 0):
    """Input ids with `num_query_tokens` placeholders per image between text tokens, and the images' pixels."""
    generator = torch.Generator().manual_seed(seed)
    placeholders = [config.image_token_id] * config.num_query_tokens
    ids = [5, 6] + [token for _ in range(num_images) for token in placeholders + [7]] + [8, 9]
    size = config.vision_config.image_size
    return torch.tensor([ids]), torch.randn(num_images, 3, size, size, generator=generator)


def test_the_backbone_is_backend_compatible():
    """vLLM's registry and SGLang's `TransformersBase` refuse a model whose AutoModel class says otherwise."""
    assert TinyGPTVModel.is_backend_compatible()
    assert TinyGPTVForConditionalGeneration.is_backend_compatible()


def test_an_attention_function_set_on_the_whole_model_reaches_every_attention_module():
    torch.manual_seed(0)
    model = TinyGPTVModel(distinct_config()).eval()
    model.set_attn_implementation("counting")
    input_ids, pixel_values = prompt(1, model.config)
    with torch.no_grad():
        model(input_ids=input_ids, pixel_values=pixel_values)
    modules = [module for module in model.modules() if isinstance(module, ATTENTION_CLASSES)]
    # Phi's layers, the vision tower's, and the Q-Former's self- and cross-attention (every layer has both here).
    assert Counter(type(module) for module in modules) == {
        PhiAttention: 2,
        Blip2Attention: 2,
        Blip2QFormerMultiHeadAttention: 4,
    }
    assert Counter(id(module) for module, _ in CALLS) == {id(module): 1 for module in modules}


def test_an_engine_attention_on_the_text_config_reaches_the_decoder_layers_only_with_the_callers_keywords():
    """The engines set `text_config._attn_implementation` and build `AutoModel.from_config`; their attention
    function finds its cache through a keyword (`attention_instances`, `forward_batch`) passed to the backbone."""
    torch.manual_seed(0)
    reference = TinyGPTVModel(distinct_config()).eval()
    config = distinct_config()
    config.text_config._attn_implementation = "counting"
    engine_model = AutoModel.from_config(config).eval()
    assert type(engine_model) is TinyGPTVModel
    engine_model.load_state_dict(reference.state_dict())
    assert (config.vision_config._attn_implementation, config.qformer_config._attn_implementation) == (
        "sdpa",
        "sdpa",
    )

    marker = {"cache": object()}
    input_ids, pixel_values = prompt(2, config)
    with torch.no_grad():
        expected = reference(input_ids=input_ids, pixel_values=pixel_values).last_hidden_state
        actual = engine_model(
            input_ids=input_ids, pixel_values=pixel_values, attention_instances=marker, forward_batch=marker
        ).last_hidden_state
    torch.testing.assert_close(actual, expected)
    layers = engine_model.language_model.layers
    assert [module for module, _ in CALLS] == [layer.self_attn for layer in layers]
    assert [module.layer_idx for module, _ in CALLS] == list(range(config.text_config.num_hidden_layers))
    assert all(
        kwargs["attention_instances"] is marker and kwargs["forward_batch"] is marker for _, kwargs in CALLS
    )


def test_the_engines_packed_call_equals_the_normal_path():
    """vLLM's `Base.forward`: the embeddings of several sequences in one row, positions restarting per sequence,
    no cache, tuples. The image embeddings come from `get_image_features(...).pooler_output`, as vLLM gets them."""
    torch.manual_seed(0)
    model = TinyGPTVModel(distinct_config()).eval()
    sequences = [prompt(1, model.config, seed=1), prompt(2, model.config, seed=2)]
    with torch.no_grad():
        expected = torch.cat(
            [model(input_ids=ids, pixel_values=pixels).last_hidden_state[0] for ids, pixels in sequences]
        )
        embeddings = []
        for ids, pixels in sequences:
            embedded = model.get_input_embeddings()(ids)[0]
            features = model.get_image_features(pixels).pooler_output
            embedded[ids[0] == model.config.image_token_id] = features.flatten(0, 1)
            embeddings.append(embedded)
        packed = torch.cat(embeddings)[None]
        positions = torch.cat([torch.arange(ids.shape[1]) for ids, _ in sequences])[None]
        outputs = model(inputs_embeds=packed, position_ids=positions, use_cache=False, return_dict=False)
    assert isinstance(outputs, tuple) and outputs[0].shape == (1, positions.shape[1], 32)
    torch.testing.assert_close(outputs[0][0], expected, atol=1e-5, rtol=1e-5)


def test_no_checkpoint_weight_matches_the_backbones_ignore_patterns(tiny_checkpoint):
    """The engines drop every checkpoint weight that matches one (vLLM: `Base._create_hf_to_vllm_mapper`)."""
    keys = load_file(Path(tiny_checkpoint) / "model.safetensors").keys()
    assert "lm_head.weight" in keys and "lm_head.bias" in keys
    backbone = AutoModel.from_config(TinyGPTVConfig.from_pretrained(tiny_checkpoint))
    patterns = [re.compile(pattern) for pattern in backbone._keys_to_ignore_on_load_unexpected or ()]
    assert [(key, p.pattern) for key in keys for p in patterns if p.search(key)] == []


def test_the_backbone_alone_loads_from_a_full_checkpoint(tiny_checkpoint, tiny_model):
    backbone = AutoModel.from_pretrained(tiny_checkpoint)
    assert type(backbone) is TinyGPTVModel
    expected = tiny_model.model.state_dict()
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, expected[key]), key


def plan_pattern(rule: str) -> re.Pattern:
    """A plan's rule as transformers reads it: `*` stands for a layer number."""
    return re.compile(re.escape(rule).replace(r"\*", r"\d+") + "$")


def test_tensor_parallel_plan_covers_every_decoder_linear_and_the_lm_head():
    model = TinyGPTVForConditionalGeneration(distinct_config())
    names = [name for name, _ in model.named_modules()]
    plan = model.tp_plan
    assert plan and plan["lm_head"] == "colwise_gather_output"
    for rule in plan:
        assert any(plan_pattern(rule).match(name) for name in names), f"rule {rule!r} matches no module"
    to_shard = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and (name == "lm_head" or ".language_model.layers." in name)
    ]
    assert len(to_shard) == 1 + 6 * model.config.text_config.num_hidden_layers
    uncovered = [name for name in to_shard if not any(plan_pattern(rule).match(name) for rule in plan)]
    assert uncovered == []
    # The engines read the backbone's plan, prefixed by nothing (vLLM adds "model." itself).
    assert {f"model.{rule}" for rule in model.model.tp_plan} == set(plan) - {"lm_head"}


def test_verify_tp_plan_finds_no_unused_rule_and_leaves_only_replicated_parts(tiny_checkpoint):
    """transformers' own check at load time. What it reports unsharded is the image path, the norms and the biases of
    row-wise layers (added once after the all-reduce), never a decoder Linear's weight or the head, with one upstream
    exception: it turns every number of a name into `*` (`mlp.fc1` -> `mlp.fc*`), so it cannot match Phi's `fc1`
    and `fc2` rules and calls them unused. The two-process test shows both are sharded."""
    model = AutoModelForImageTextToText.from_pretrained(tiny_checkpoint)
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    tp_logger = logging.getLogger("transformers.distributed.tensor_parallel")
    tp_logger.addHandler(handler)
    try:
        verify_tp_plan(list(load_file(Path(tiny_checkpoint) / "model.safetensors")), model._tp_plan)
    finally:
        tp_logger.removeHandler(handler)
    messages = [record.getMessage() for record in records]
    blind = {rule for rule in model._tp_plan if re.search(r"[^.*\d]\d", rule)}
    assert blind == {"model.language_model.layers.*.mlp.fc1", "model.language_model.layers.*.mlp.fc2"}
    unused = [message for message in messages if "were not applied" in message]
    unused_rules = {rule: style for rule, style in model._tp_plan.items() if rule in blind}
    assert unused == [f"The following TP rules were not applied on any of the layers: {unused_rules}"]
    unsharded = {
        name
        for message in messages
        if "were not sharded: " in message
        for name in message.split("were not sharded: ", 1)[1].split(", ")
    }
    parts = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.dense")
    sharded_weights = {f"model.language_model.layers.*.{part}.weight" for part in parts}
    sharded_weights |= {"lm_head.weight", "model.language_model.embed_tokens.weight"}
    assert unsharded and not unsharded & sharded_weights
    replicated = (
        "model.vision_model.",
        "model.qformer.",
        "model.query_tokens",
        "model.multi_modal_projector.",
    )
    assert all(
        name.startswith(replicated)
        or name.startswith(tuple(rule + "." for rule in blind))
        or re.search(r"(norm\.(weight|bias)|(dense|fc2)\.bias)$", name)
        for name in unsharded
    ), sorted(unsharded)


def test_pipeline_parallel_plan_has_one_layer_list_and_real_modules():
    """vLLM and SGLang split the backbone's `_pp_plan` around its only `ModuleList`; the rest stays on every rank."""
    model = TinyGPTVForConditionalGeneration(distinct_config())
    assert model._pp_plan["lm_head"] == (["hidden_states"], ["logits"])
    backbone = model.model
    assert backbone.supports_pp_plan
    modules = {name: backbone.get_submodule(name) for name in backbone._pp_plan}
    lists = [name for name, module in modules.items() if isinstance(module, nn.ModuleList)]
    assert lists == ["language_model.layers"]
    assert len(modules["language_model.layers"]) == model.config.text_config.num_hidden_layers
    assert list(modules)[-1] == "language_model.final_layernorm"


TP_WORKER = """
import os, sys, torch
from transformers import AutoModelForImageTextToText
from transformers.distributed import DistributedConfig
folder, output, image_token_id, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
distributed = {"distributed_config": DistributedConfig(tp_size=2)} if mode == "parallel" else {}
model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True, **distributed).eval()
size = model.config.vision_config.image_size
pixel_values = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
input_ids = torch.tensor([[5, 6] + [image_token_id] * model.config.num_query_tokens + [7, 8, 9]])
with torch.no_grad():
    logits = model(input_ids=input_ids, pixel_values=pixel_values).logits
local = lambda weight: tuple((weight.to_local() if hasattr(weight, "to_local") else weight).shape)
if os.environ.get("RANK", "0") == "0":
    layer = model.model.language_model.layers[0]
    linears = {"q_proj": layer.self_attn.q_proj, "dense": layer.self_attn.dense, "fc1": layer.mlp.fc1,
               "fc2": layer.mlp.fc2, "lm_head": model.lm_head}
    shards = {name: local(linear.weight) for name, linear in linears.items()}
    torch.save({"logits": logits, "shards": shards}, output)
"""


@pytest.mark.slow
def test_tensor_parallel_on_two_cpu_processes_gives_the_single_process_logits(tiny_checkpoint, tmp_path):
    """transformers' own tensor parallelism (`distributed_config`) under torchrun, gloo on CPU, with the checkpoint's
    remote code: each rank holds half of every sharded weight, and the logits are the single process's."""
    worker = tmp_path / "tp_worker.py"
    worker.write_text(TP_WORKER)
    image_token_id = str(TinyGPTVConfig.from_pretrained(tiny_checkpoint).image_token_id)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    for command, mode in (([sys.executable], "single"), (torchrun, "parallel")):
        run = subprocess.run(
            [*command, str(worker), str(tiny_checkpoint), str(tmp_path / f"{mode}.pt"), image_token_id, mode],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert run.returncode == 0, run.stderr[-3000:]
    single, parallel = (torch.load(tmp_path / name) for name in ("single.pt", "parallel.pt"))
    torch.testing.assert_close(parallel["logits"], single["logits"], atol=1e-5, rtol=0)
    # Column-wise layers split their outputs (weight rows), row-wise layers their inputs (weight columns).
    for name, (rows, columns) in single["shards"].items():
        split = (rows, columns // 2) if name in ("dense", "fc2") else (rows // 2, columns)
        assert parallel["shards"][name] == split, name


def test_two_images_give_two_replacements_of_32_image_tokens(tiny_processor):
    """vLLM places each image's embeddings at the processor's replacement offsets and counts its tokens by type."""
    text = "###Human: <Img><ImageHere></Img> and <Img><ImageHere></Img> differ how?###Assistant: "
    outputs = tiny_processor(
        images=[random_image(0), random_image(1, width=20, height=90)],
        text=[text],
        return_text_replacement_offsets=True,
        return_mm_token_type_ids=True,
    )
    (offsets,) = outputs["text_replacement_offsets"]
    assert [offset["type"] for offset in offsets] == ["image", "image"]
    image_token_id = tiny_processor.image_token_id
    for offset in offsets:
        start, end = offset["new_span"]
        ids = tiny_processor.tokenizer(offset["replacement"], add_special_tokens=False).input_ids
        assert ids == [image_token_id] * 32 and end - start == len(offset["replacement"])
    (type_ids,) = outputs["mm_token_type_ids"]
    assert sum(type_ids) == 64 and set(type_ids) == {0, 1}
    assert [index for index, kind in enumerate(type_ids) if kind] == [
        index for index, token in enumerate(outputs["input_ids"][0]) if token == image_token_id
    ]


@pytest.mark.parametrize("size", [(1, 1), (14, 14), (224, 224), (448, 448), (3, 5000), (4000, 2), (777, 333)])
def test_num_multimodal_tokens_match_the_processor_for_any_image_size(tiny_processor, size):
    height, width = size
    expected = tiny_processor._get_num_multimodal_tokens(image_sizes=[size])
    outputs = tiny_processor(images=[random_image(0, width=width, height=height)], text=["<ImageHere> what?"])
    assert expected.num_image_tokens == [outputs["input_ids"][0].count(tiny_processor.image_token_id)] == [32]
    assert expected.num_image_patches == [len(outputs["pixel_values"])] == [1]


def processor_and_config_ids(folder) -> tuple[int, int, int]:
    processor = AutoProcessor.from_pretrained(folder)
    config = json.loads((Path(folder) / "config.json").read_text())
    return (
        processor.image_token_id,
        config["image_token_id"],
        processor.tokenizer.convert_tokens_to_ids("<ImageHere>"),
    )


def test_init_writes_one_image_token_id(tiny_checkpoint):
    processor_id, config_id, tokenizer_id = processor_and_config_ids(tiny_checkpoint)
    assert processor_id == config_id == tokenizer_id


def test_convert_writes_one_image_token_id(tmp_path):
    tokenizer = build_tiny_tokenizer()
    release = SyntheticRelease(tiny_config(tokenizer))
    release.config.to_json_file(tmp_path / "tinygptv_config.json")
    argv = [
        "convert", "--stage", "1", "--output", str(tmp_path / "out"),
        "--config", str(tmp_path / "tinygptv_config.json"),
        "--eva-vit", str(release.write_eva_vit(tmp_path / "eva_vit_g.pth")),
        "--blip2", str(release.write_blip2_lavis(tmp_path / "blip2.pth")),
        "--phi", str(release.write_phi(tmp_path / "phi-2", tokenizer, fused=False, modified=False, suffix=".safetensors")),
        "--stage-checkpoint", str(release.write_stage(tmp_path / "stage1.pth", 1)),
    ]  # fmt: skip
    assert main(argv) == 0
    processor_id, config_id, tokenizer_id = processor_and_config_ids(tmp_path / "out")
    assert processor_id == config_id == tokenizer_id


def test_a_checkpoint_whose_processor_disagrees_with_the_config_is_not_written(tmp_path):
    """The tokenizer's `<ImageHere>` is 1024 where the config says 3; the config asks for 32 queries per image
    where the processor writes 3 placeholders."""
    tokenizer = build_tiny_tokenizer()
    config = distinct_config(text_config={**DISTINCT_WIDTHS["text_config"], "vocab_size": len(tokenizer)})
    processor = build_processor(tokenizer, config)
    config.num_query_tokens = 32
    model = TinyGPTVForConditionalGeneration(config)
    expected = (
        r"image_token_id is 1024 in the processor but 3 in the config; "
        r"num_query_tokens is 3 in the processor but 32 in the config"
    )
    with pytest.raises(ValueError, match=expected):
        save_checkpoint(model, processor, tmp_path)
    assert not any(tmp_path.iterdir())


def test_every_checkpoint_writer_goes_through_save_checkpoint():
    """Training (every stage's Trainer, hence `tinygptv train` and `tinygptv demo`), `convert` and `init` write
    folders through `checkpoint.save_checkpoint`, which refuses a processor that disagrees with the config: the only
    other `save_pretrained` calls in the package write adapters or LoRA-only folders."""
    package = Path(tinygptv_hf.__file__).parent
    writers = Counter()
    for path in package.rglob("*.py"):
        if path.parent.name in ("modeling", "processors"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                if node.func.attr == "save_pretrained":
                    writers[(path.relative_to(package).as_posix(), ast.unparse(node.func.value))] += 1
    assert set(writers) == {
        ("checkpoint.py", "model"),
        ("checkpoint.py", "processor"),
        ("conversion.py", "peft_model"),
        ("trainers/trainer.py", "model"),
    }, writers
