"""Exact conversion of the original TinyGPT-V release into this model's weights.

Sources, in original names: the full wrapper state dict, a stage checkpoint (`TinyGPT-V_for_StageN.pth`: trainable
tensors only, peft-0.2.0 LoRA names, stage 1 unwrapped), LAVIS `eva_vit_g.pth` and `blip2_pretrained_flant5xxl.pth`;
plus a Phi folder in transformers format (fused 4.36 or separate q/k/v). Every source tensor is accounted for:
an unknown key, a missing weight, a shape mismatch or a LoRA tensor without its base is an error naming the key
(the original's `strict=False` loading is what gave its users silently uninitialised weights).
"""

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers.initialization import no_init_weights

from .checkpoint import build_processor, fit_tokenizer, resize_for_stage, save_checkpoint
from .modeling import TinyGPTVConfig, TinyGPTVForConditionalGeneration
from .modeling.modeling_tinygptv import interpolate_position_embedding
from .presets import preset_config
from .stages import TRAINING_STAGES, LoraSpec
from .tokenization import load_llm_tokenizer
from .weights import (
    WeightsError,
    blip2_to_tinygptv,
    file_digest,
    is_blip2_vision_side,
    load_blip2_config,
    load_phi_language_model,
    phi_text_config,
    read_state_dict,
    split_fused_qkv,
    weight_files,
)

# `--keep-adapter` layout: the peft adapter and the un-merged model it applies to, inside the output folder.
ADAPTER_FOLDER, BASE_FOLDER = "adapter", "base"

TOKENIZER_FILES = ("tokenizer", "vocab", "merges", "special_tokens_map", "added_tokens")

LLM_PREFIXES = ("llama_model.base_model.model.", "llama_model.")

# Keys the original carries that have no counterpart here, with the reason.
IGNORED_KEYS = {
    re.compile(r"^Qformer\.bert\.embeddings\.position_ids$"): "unused buffer of the text path",
    re.compile(r"^Qformer\.cls\."): "BLIP-2 MLM head, deleted by the original",
    re.compile(
        r"^Qformer\.bert\.embeddings\.(word|position)_embeddings\."
    ): "text embeddings, deleted by the original",
    re.compile(
        r"^Qformer\.bert\.encoder\.layer\.\d+\.(intermediate|output)\."
    ): "text FFN, deleted by the original",
    re.compile(
        r"^(t5_proj|t5_model|opt_proj|opt_model|vision_proj|text_proj|itm_head)\."
    ): "BLIP-2's own heads",
    re.compile(r"^temp$"): "BLIP-2 contrastive temperature",
}

_VISION_RULES = [
    (r"^visual_encoder\.patch_embed\.proj\.", "model.vision_model.embeddings.patch_embedding."),
    (r"^visual_encoder\.cls_token$", "model.vision_model.embeddings.class_embedding"),
    (r"^visual_encoder\.pos_embed$", "model.vision_model.embeddings.position_embedding"),
    (r"^visual_encoder\.blocks\.(\d+)\.norm1\.", r"model.vision_model.encoder.layers.\1.layer_norm1."),
    (r"^visual_encoder\.blocks\.(\d+)\.norm2\.", r"model.vision_model.encoder.layers.\1.layer_norm2."),
    (
        r"^visual_encoder\.blocks\.(\d+)\.attn\.qkv\.weight$",
        r"model.vision_model.encoder.layers.\1.self_attn.qkv.weight",
    ),
    (
        r"^visual_encoder\.blocks\.(\d+)\.attn\.proj\.",
        r"model.vision_model.encoder.layers.\1.self_attn.projection.",
    ),
    (r"^visual_encoder\.blocks\.(\d+)\.mlp\.", r"model.vision_model.encoder.layers.\1.mlp."),
    (r"^ln_vision\.", "model.vision_model.post_layernorm."),
    (r"^Qformer\.bert\.embeddings\.LayerNorm\.", "model.qformer.layernorm."),
    (
        r"^Qformer\.bert\.encoder\.layer\.(\d+)\.(attention|crossattention)\.self\.",
        r"model.qformer.encoder.layer.\1.\2.attention.",
    ),
    (
        r"^Qformer\.bert\.encoder\.layer\.(\d+)\.(attention|crossattention)\.output\.",
        r"model.qformer.encoder.layer.\1.\2.output.",
    ),
    (
        r"^Qformer\.bert\.encoder\.layer\.(\d+)\.(intermediate_query|output_query)\.",
        r"model.qformer.encoder.layer.\1.\2.",
    ),
    (r"^query_tokens$", "model.query_tokens"),
    (r"^llama_proj\.", "model.multi_modal_projector.linear_1."),
    (r"^llama_proj2\.", "model.multi_modal_projector.linear_2."),
]
_VISION_RULES = [(re.compile(pattern), target) for pattern, target in _VISION_RULES]
_QV_BIAS = re.compile(r"^visual_encoder\.blocks\.(\d+)\.attn\.(q|v)_bias$")
_LORA = re.compile(r"^(?P<base>.+)\.lora_(?P<part>[AB])(?:\.default)?\.weight$")


@dataclass
class LoraPair:
    A: torch.Tensor | None = None
    B: torch.Tensor | None = None


@dataclass
class ConvertedWeights:
    """Weights in this model's names, LoRA adapters by (our) base module name, and what was dropped and why."""

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    lora: dict[str, LoraPair] = field(default_factory=dict)
    ignored: dict[str, str] = field(default_factory=dict)
    # Our name -> the source key it came from, so errors can name what the user's file holds.
    origin: dict[str, str] = field(default_factory=dict)

    def update(self, other: "ConvertedWeights") -> "ConvertedWeights":
        self.tensors.update(other.tensors)
        self.lora.update(other.lora)
        self.ignored.update(other.ignored)
        self.origin.update(other.origin)
        return self


EVA_IGNORED_PREFIXES = {
    "norm.": "EVA-CLIP's final norm, unused by BLIP-2",
    "fc_norm.": "EVA-CLIP's pooling norm, unused by BLIP-2",
    "head.": "EVA-CLIP's head, unused by BLIP-2",
    "rel_pos_bias.": "relative position bias, disabled in BLIP-2's ViT",
}


def eva_vit_to_original(
    state: dict[str, torch.Tensor], depth: int
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """LAVIS `eva_vit_g.pth` under the wrapper's `visual_encoder.` prefix, and the keys dropped with the reason.

    The EVA-CLIP-g checkpoint has one block more than BLIP-2 uses (features are the penultimate layer's output):
    block `depth` is dropped; a block past it means the file does not belong to this configuration.
    """
    kept, ignored = {}, {}
    for key, tensor in state.items():
        block = re.match(r"^blocks\.(\d+)\.", key)
        if block and int(block.group(1)) > depth:
            raise WeightsError(
                f"EVA ViT key {key!r} is past block {depth}: the file has more blocks than the configured "
                f"depth {depth} + 1 (BLIP-2 drops only the last one)."
            )
        if block and int(block.group(1)) == depth:
            ignored[key] = "EVA-CLIP-g's last block: BLIP-2 takes the penultimate layer's features"
            continue
        reason = next((why for prefix, why in EVA_IGNORED_PREFIXES.items() if key.startswith(prefix)), None)
        if reason:
            ignored[key] = reason
            continue
        kept["visual_encoder." + key] = tensor
    return kept, ignored


def convert_original(state: dict[str, torch.Tensor], num_heads: int, source: str = "") -> ConvertedWeights:
    """Rename original wrapper keys; fused Phi q/k/v is split per head, LoRA tensors are collected, not merged."""
    result = ConvertedWeights()
    where = f" in {source}" if source else ""
    qv_bias: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        reason = next((why for pattern, why in IGNORED_KEYS.items() if pattern.search(key)), None)
        if reason:
            result.ignored[key] = reason
            continue
        bias = _QV_BIAS.match(key)
        if bias:
            qv_bias.setdefault(bias.group(1), {})[bias.group(2)] = tensor
            continue
        llm_prefix = next((prefix for prefix in LLM_PREFIXES if key.startswith(prefix)), None)
        if llm_prefix is not None:
            _convert_llm_key(key[len(llm_prefix) :], tensor, num_heads, result, key + where)
            continue
        for pattern, target in _VISION_RULES:
            if pattern.search(key):
                result.tensors[pattern.sub(target, key)] = tensor
                result.origin[pattern.sub(target, key)] = key + where
                break
        else:
            raise WeightsError(f"Unknown key in the original weights: {key!r}{where}")
    for layer, parts in qv_bias.items():
        if set(parts) != {"q", "v"}:
            raise WeightsError(
                f"visual_encoder.blocks.{layer}.attn needs both q_bias and v_bias, got {sorted(parts)}"
            )
        # EVA's key projection has no bias: the fused bias is (q_bias, 0, v_bias).
        fused = torch.cat([parts["q"], torch.zeros_like(parts["q"]), parts["v"]])
        result.tensors[f"model.vision_model.encoder.layers.{layer}.self_attn.qkv.bias"] = fused
        result.origin[f"model.vision_model.encoder.layers.{layer}.self_attn.qkv.bias"] = (
            f"visual_encoder.blocks.{layer}.attn.q_bias/v_bias{where}"
        )
    return result


def _convert_llm_key(name: str, tensor, num_heads: int, result: ConvertedWeights, original_key: str):
    lora = _LORA.match(name)
    if lora:
        base = _llm_target(lora.group("base"))
        if base is None:
            raise WeightsError(f"Unknown language-model key in the original weights: {original_key}")
        pair = result.lora.setdefault(base, LoraPair())
        setattr(pair, lora.group("part"), tensor)
        return
    target = _llm_target(name)
    if target is None:
        raise WeightsError(f"Unknown language-model key in the original weights: {original_key}")
    if target.endswith(".self_attn.query_key_value.weight") or target.endswith(
        ".self_attn.query_key_value.bias"
    ):
        suffix = target.rsplit(".", 1)[1]
        module = target[: -len(".query_key_value." + suffix)]
        for proj, part in zip(
            ("q_proj", "k_proj", "v_proj"), split_fused_qkv(tensor, num_heads), strict=True
        ):
            result.tensors[f"{module}.{proj}.{suffix}"] = part
            result.origin[f"{module}.{proj}.{suffix}"] = original_key
    else:
        result.tensors[target] = tensor
        result.origin[target] = original_key


def _llm_target(name: str) -> str | None:
    if name.startswith("model."):
        return "model.language_model." + name[len("model.") :]
    if name.startswith("lm_head."):
        return name
    return None


def split_lora(lora: dict[str, LoraPair], num_heads: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(A, B) per module of this model: a fused q/k/v adapter becomes three sharing A, B split per head."""
    adapters = {}
    for module, pair in lora.items():
        if pair.A is None or pair.B is None:
            missing = "lora_A" if pair.A is None else "lora_B"
            raise WeightsError(f"LoRA adapter on {module} has no {missing}.weight.")
        if pair.B.shape[1] != pair.A.shape[0]:
            raise WeightsError(
                f"LoRA adapter on {module}: lora_B {tuple(pair.B.shape)} does not fit lora_A {tuple(pair.A.shape)}."
            )
        if module.endswith(".query_key_value"):
            prefix = module[: -len(".query_key_value")]
            for proj, part in zip(
                ("q_proj", "k_proj", "v_proj"), split_fused_qkv(pair.B, num_heads), strict=True
            ):
                adapters[f"{prefix}.{proj}"] = (pair.A, part)
        else:
            adapters[module] = (pair.A, pair.B)
    return adapters


def merge_lora(tensors: dict[str, torch.Tensor], lora: dict[str, LoraPair], scaling: float, num_heads: int):
    """Fold `scaling * B @ A` into the base weights in float32."""
    for module, (A, B) in split_lora(lora, num_heads).items():
        weight_key = f"{module}.weight"
        if weight_key not in tensors:
            raise WeightsError(f"LoRA adapter on {module} has no base weight {weight_key!r} in the sources.")
        tensors[weight_key] = tensors[weight_key].float() + scaling * (B.float() @ A.float())


def finalize(
    weights: ConvertedWeights, config: TinyGPTVConfig, lora_scaling: float
) -> dict[str, torch.Tensor]:
    """Merge LoRA, fit the position table to the configured image size, and fill the always-zero q/k-LN biases."""
    tensors = dict(weights.tensors)
    num_heads = config.text_config.num_attention_heads
    merge_lora(tensors, weights.lora, lora_scaling, num_heads)
    key = "model.vision_model.embeddings.position_embedding"
    if key in tensors:
        tensors[key] = interpolate_position_embedding(
            tensors[key], config.vision_config.image_size, config.vision_config.patch_size
        )
    head_dim = config.text_config.hidden_size // num_heads
    for layer in range(config.text_config.num_hidden_layers):
        for norm in ("q_layernorm", "k_layernorm"):
            # The original never stores these biases: they are created as zeros and never trained.
            tensors.setdefault(
                f"model.language_model.layers.{layer}.self_attn.{norm}.bias", torch.zeros(head_dim)
            )
    return tensors


def check_against_model(
    tensors: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], origin: dict[str, str] | None = None
):
    """Every expected weight present with its shape, nothing extra: errors name the keys (and their source key)."""
    origin = origin or {}

    def named(key):
        return f"{key} (from {origin[key]})" if key in origin else key

    missing = sorted(set(expected) - set(tensors))
    unexpected = [named(key) for key in sorted(set(tensors) - set(expected))]
    mismatched = [
        f"{named(key)}: source {tuple(tensors[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in sorted(set(tensors) & set(expected))
        if tuple(tensors[key].shape) != tuple(expected[key].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} weight(s): {missing[:10]}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} weight(s): {unexpected[:10]}")
    if mismatched:
        problems.append(f"shape mismatch: {mismatched[:10]}")
    if problems:
        raise WeightsError("The converted weights do not fit the model: " + "; ".join(problems))


def read_original_sources(
    *,
    num_heads: int,
    vision_depth: int,
    phi=None,
    eva_vit=None,
    blip2=None,
    full_state_dict=None,
    stage_checkpoint=None,
) -> ConvertedWeights:
    """Gather every source into this model's names; later sources override earlier ones (stage file last)."""
    weights = ConvertedWeights()
    if phi is not None:
        weights.update(_labelled(load_phi_language_model(phi)[0], f"--phi {phi}"))
    if eva_vit is not None:
        kept, ignored = eva_vit_to_original(read_state_dict(eva_vit), vision_depth)
        weights.update(convert_original(kept, num_heads, str(eva_vit)))
        weights.ignored.update({f"{eva_vit}: {key}": why for key, why in ignored.items()})
    if blip2 is not None:
        if Path(blip2).is_dir():
            state = blip2_to_tinygptv(read_state_dict(blip2, select=is_blip2_vision_side))
            weights.update(_labelled(state, f"--blip2 {blip2}"))
        else:
            weights.update(convert_original(_model_entry(read_state_dict(blip2)), num_heads, str(blip2)))
    for path in (full_state_dict, stage_checkpoint):
        if path is not None:
            weights.update(convert_original(_model_entry(read_state_dict(path)), num_heads, str(path)))
    return weights


def _labelled(tensors: dict[str, torch.Tensor], source: str) -> ConvertedWeights:
    return ConvertedWeights(tensors=dict(tensors), origin=dict.fromkeys(tensors, source))


def _model_entry(state: dict) -> dict[str, torch.Tensor]:
    """Training checkpoints hold {"model", "optimizer", "scaler", "config", "epoch"}: only "model" is weights."""
    if "model" in state and isinstance(state["model"], dict):
        return state["model"]
    return state


def convert_to_model(weights: ConvertedWeights, config: TinyGPTVConfig, lora_scaling: float):
    """A float32 model holding exactly the converted weights (strict: every key checked)."""
    with no_init_weights():  # every parameter is overwritten: skip the random init (minutes at full size)
        model = TinyGPTVForConditionalGeneration(config)
    tensors = {
        key: value.float() if value.is_floating_point() else value
        for key, value in finalize(weights, config, lora_scaling).items()
    }
    check_against_model(tensors, model.state_dict(), weights.origin)
    model.load_state_dict(tensors, strict=True)
    return model.eval()


def default_config(phi=None, blip2=None) -> TinyGPTVConfig:
    """The paper's architecture, with the Phi folder's text config and a BLIP-2 folder's vision and Q-Former."""
    overrides = {}
    if phi is not None:
        overrides["text_config"] = phi_text_config(json.loads((Path(phi) / "config.json").read_text()))
    if blip2 is not None and Path(blip2).is_dir():
        _, overrides["vision_config"], overrides["qformer_config"] = load_blip2_config(blip2)
    return preset_config("phi2", **overrides)


def lora_rank(lora: dict[str, LoraPair]) -> int | None:
    """The one rank all adapters share (the scaling alpha/r depends on it), or None without LoRA."""
    ranks = {module: pair.A.shape[0] for module, pair in lora.items() if pair.A is not None}
    if len(set(ranks.values())) > 1:
        raise WeightsError(f"LoRA adapters of different ranks in the sources: {ranks}")
    return next(iter(ranks.values()), None)


def save_adapter(
    base_model, weights: ConvertedWeights, config: TinyGPTVConfig, lora_r: int, lora_alpha: int, path
):
    """A peft adapter (q/k/v/dense of every decoder layer, as the original's query_key_value + dense) on `base_model`.

    `base_model` is wrapped in place: save it first.
    """
    from peft import get_peft_model

    adapters = split_lora(weights.lora, config.text_config.num_attention_heads)
    lora_config = LoraSpec(r=lora_r, alpha=lora_alpha).peft_config(
        base_model_name_or_path=str(Path(path).resolve().parent / BASE_FOLDER)
    )
    peft_model = get_peft_model(base_model, lora_config)
    targeted = {
        name
        for name, module in base_model.named_modules()
        if hasattr(module, "lora_A") and "default" in module.lora_A
    }
    if targeted != set(adapters):
        raise WeightsError(
            "The sources' LoRA adapters do not cover exactly the attention projections of every layer: "
            f"without an adapter {sorted(targeted - set(adapters))[:10]}, "
            f"not an attention projection {sorted(set(adapters) - targeted)[:10]}."
        )
    with torch.no_grad():
        for name, (A, B) in adapters.items():
            module = base_model.get_submodule(name)
            module.lora_A["default"].weight.copy_(A)
            module.lora_B["default"].weight.copy_(B)
    peft_model.save_pretrained(path)
    return path


def source_files(sources: dict[str, str | os.PathLike | None]) -> list[dict]:
    """{"role", "path", "sha256"} of every file the conversion reads: weight files, shards, folder configs."""
    files = []
    for role, path in sources.items():
        if path is None:
            continue
        path = Path(path)
        if role == "tokenizer":
            read = sorted(file for file in path.iterdir() if file.name.startswith(TOKENIZER_FILES))
        elif role == "config":
            read = [path]
        else:
            read = [path / "config.json", *weight_files(path)] if path.is_dir() else weight_files(path)
        files += [{"role": role, "path": str(file), "sha256": file_digest(file)} for file in read]
    return files


def convert_release(
    output_dir,
    *,
    stage: int,
    phi=None,
    eva_vit=None,
    blip2=None,
    full_state_dict=None,
    stage_checkpoint=None,
    tokenizer=None,
    config=None,
    lora_r: int = LoraSpec.r,
    lora_alpha: int = LoraSpec.alpha,
    keep_adapter: bool = False,
) -> Path:
    """Write the checkpoint folder of one stage from the original release's files (see `tinygptv convert`)."""
    if stage not in TRAINING_STAGES:
        raise ValueError(f"--stage must be 1, 2, 3 or 4 (a released stage), got {stage}.")
    if eva_vit is not None and (blip2 is None or Path(blip2).is_dir()):
        raise ValueError(
            "--eva-vit needs --blip2 blip2_pretrained_flant5xxl.pth (it carries ln_vision and the Q-Former); "
            "a transformers BLIP-2 folder already holds the ViT."
        )
    if tokenizer is None and phi is None:
        raise ValueError("Give --tokenizer (or --phi, whose folder holds the tokenizer).")
    model_config = TinyGPTVConfig.from_json_file(config) if config else default_config(phi, blip2)
    model_config = resize_for_stage(model_config, stage)
    text_tokenizer = load_llm_tokenizer(str(tokenizer or phi))
    model_config = fit_tokenizer(model_config, text_tokenizer)

    sources = dict(
        phi=phi,
        eva_vit=eva_vit,
        blip2=blip2,
        full_state_dict=full_state_dict,
        stage_checkpoint=stage_checkpoint,
    )
    weights = read_original_sources(
        num_heads=model_config.text_config.num_attention_heads,
        vision_depth=model_config.vision_config.num_hidden_layers,
        **sources,
    )
    rank = lora_rank(weights.lora)
    if rank is not None and rank != lora_r:
        raise ValueError(
            f"The sources' LoRA rank is {rank} but --lora-r is {lora_r}: the scaling alpha/r needs both."
        )
    if keep_adapter and not weights.lora:
        raise ValueError("--keep-adapter: the sources hold no LoRA tensors (stage 1 trains none).")

    output_dir = Path(output_dir)
    processor = build_processor(text_tokenizer, model_config)
    save_checkpoint(convert_to_model(weights, model_config, lora_alpha / lora_r), processor, output_dir)
    if keep_adapter:
        base = convert_to_model(ConvertedWeights(weights.tensors, origin=weights.origin), model_config, 0.0)
        save_checkpoint(base, processor, output_dir / BASE_FOLDER)
        save_adapter(base, weights, model_config, lora_r, lora_alpha, output_dir / ADAPTER_FOLDER)

    files = source_files({**sources, "tokenizer": tokenizer or phi, "config": config})
    record = {
        "stage": stage,
        "lora": {"r": lora_r, "alpha": lora_alpha, "merged": bool(weights.lora), "adapter": keep_adapter},
        "source_files": files,
        "ignored_source_keys": weights.ignored,
    }
    (output_dir / "conversion.json").write_text(json.dumps(record, indent=2) + "\n")
    return output_dir
