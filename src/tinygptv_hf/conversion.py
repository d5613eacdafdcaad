"""Exact conversion of the original TinyGPT-V release into this model's weights.

Sources, in original names: the full wrapper state dict, a stage checkpoint (`TinyGPT-V_for_StageN.pth`: trainable
tensors only, peft-0.2.0 LoRA names, stage 1 unwrapped), LAVIS `eva_vit_g.pth` and `blip2_pretrained_flant5xxl.pth`;
plus a Phi folder in transformers format (fused 4.36 or separate q/k/v). Every source tensor is accounted for:
an unknown key, a missing weight, a shape mismatch or a LoRA tensor without its base is an error naming the key
(the original's `strict=False` loading is what gave its users silently uninitialised weights).
"""

import re
from dataclasses import dataclass, field

import torch

from .modeling import TinyGPTVConfig
from .weights import WeightsError, split_fused_qkv

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

    def update(self, other: "ConvertedWeights") -> "ConvertedWeights":
        self.tensors.update(other.tensors)
        self.lora.update(other.lora)
        self.ignored.update(other.ignored)
        return self


def eva_vit_to_original(state: dict[str, torch.Tensor], depth: int) -> dict[str, torch.Tensor]:
    """LAVIS `eva_vit_g.pth` under the wrapper's `visual_encoder.` prefix, without the blocks past `depth`.

    The EVA-CLIP-g checkpoint has one block more than BLIP-2 uses: features are the penultimate layer's output.
    """
    kept = {}
    for key, tensor in state.items():
        block = re.match(r"^blocks\.(\d+)\.", key)
        if block and int(block.group(1)) >= depth:
            continue
        if key.startswith(("norm.", "head.", "fc_norm.", "lm_head.", "rel_pos_bias.")):
            continue
        kept["visual_encoder." + key] = tensor
    return kept


def convert_original(state: dict[str, torch.Tensor], num_heads: int) -> ConvertedWeights:
    """Rename original wrapper keys; fused Phi q/k/v is split per head, LoRA tensors are collected, not merged."""
    result = ConvertedWeights()
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
            _convert_llm_key(key[len(llm_prefix) :], tensor, num_heads, result, key)
            continue
        for pattern, target in _VISION_RULES:
            if pattern.search(key):
                result.tensors[pattern.sub(target, key)] = tensor
                break
        else:
            raise WeightsError(f"Unknown key in the original weights: {key!r}")
    for layer, parts in qv_bias.items():
        if set(parts) != {"q", "v"}:
            raise WeightsError(
                f"visual_encoder.blocks.{layer}.attn needs both q_bias and v_bias, got {sorted(parts)}"
            )
        # EVA's key projection has no bias: the fused bias is (q_bias, 0, v_bias).
        fused = torch.cat([parts["q"], torch.zeros_like(parts["q"]), parts["v"]])
        result.tensors[f"model.vision_model.encoder.layers.{layer}.self_attn.qkv.bias"] = fused
    return result


def _convert_llm_key(name: str, tensor, num_heads: int, result: ConvertedWeights, original_key: str):
    lora = _LORA.match(name)
    if lora:
        base = _llm_target(lora.group("base"))
        pair = result.lora.setdefault(base, LoraPair())
        setattr(pair, lora.group("part"), tensor)
        return
    target = _llm_target(name)
    if target is None:
        raise WeightsError(f"Unknown language-model key in the original weights: {original_key!r}")
    if target.endswith(".self_attn.query_key_value.weight") or target.endswith(
        ".self_attn.query_key_value.bias"
    ):
        suffix = target.rsplit(".", 1)[1]
        module = target[: -len(".query_key_value." + suffix)]
        for proj, part in zip(
            ("q_proj", "k_proj", "v_proj"), split_fused_qkv(tensor, num_heads), strict=True
        ):
            result.tensors[f"{module}.{proj}.{suffix}"] = part
    else:
        result.tensors[target] = tensor


def _llm_target(name: str) -> str | None:
    if name.startswith("model."):
        return "model.language_model." + name[len("model.") :]
    if name.startswith("lm_head."):
        return name
    return None


def merge_lora(tensors: dict[str, torch.Tensor], lora: dict[str, LoraPair], scaling: float, num_heads: int):
    """Fold `scaling * B @ A` into the base weights in float32; fused q/k/v adapters split B per head (A shared)."""
    for module, pair in lora.items():
        if pair.A is None or pair.B is None:
            missing = "lora_A" if pair.A is None else "lora_B"
            raise WeightsError(f"LoRA adapter on {module} has no {missing}.weight.")
        A, B = pair.A.float(), pair.B.float()
        if module.endswith(".query_key_value"):
            prefix = module[: -len(".query_key_value")]
            targets = [
                (f"{prefix}.{proj}.weight", part)
                for proj, part in zip(
                    ("q_proj", "k_proj", "v_proj"), split_fused_qkv(B, num_heads), strict=True
                )
            ]
        else:
            targets = [(f"{module}.weight", B)]
        for weight_key, b in targets:
            if weight_key not in tensors:
                raise WeightsError(
                    f"LoRA adapter on {module} has no base weight {weight_key!r} in the sources."
                )
            tensors[weight_key] = tensors[weight_key].float() + scaling * (b @ A)


def interpolate_position_embedding(
    position_embedding: torch.Tensor, image_size: int, patch_size: int
) -> torch.Tensor:
    """Resize the patch grid bicubically (align_corners=False) in float32, keeping the CLS row: done once, stored."""
    cls_row, grid = position_embedding[:, :1], position_embedding[:, 1:].float()
    old = int(round(grid.shape[1] ** 0.5))
    new = image_size // patch_size
    if old * old != grid.shape[1]:
        raise WeightsError(f"position_embedding has {grid.shape[1]} patch rows, not a square grid.")
    if old == new:
        return position_embedding
    width = grid.shape[-1]
    grid = grid.reshape(1, old, old, width).permute(0, 3, 1, 2)
    grid = torch.nn.functional.interpolate(grid, size=(new, new), mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new * new, width)
    return torch.cat([cls_row.float(), grid], dim=1).to(position_embedding.dtype)


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


def check_against_model(tensors: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]):
    """Every expected weight present with its shape, nothing extra: errors name the keys."""
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    mismatched = [
        f"{key}: source {tuple(tensors[key].shape)} vs model {tuple(expected[key].shape)}"
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
    from pathlib import Path

    from .weights import blip2_to_tinygptv, load_phi_language_model, read_state_dict

    weights = ConvertedWeights()
    if phi is not None:
        weights.tensors.update(load_phi_language_model(phi)[0])
    if eva_vit is not None:
        weights.update(
            convert_original(eva_vit_to_original(read_state_dict(eva_vit), vision_depth), num_heads)
        )
    if blip2 is not None:
        if Path(blip2).is_dir():
            weights.tensors.update(blip2_to_tinygptv(read_state_dict(blip2)))
        else:
            weights.update(convert_original(_model_entry(read_state_dict(blip2)), num_heads))
    if full_state_dict is not None:
        weights.update(convert_original(_model_entry(read_state_dict(full_state_dict)), num_heads))
    if stage_checkpoint is not None:
        weights.update(convert_original(_model_entry(read_state_dict(stage_checkpoint)), num_heads))
    return weights


def _model_entry(state: dict) -> dict[str, torch.Tensor]:
    """Training checkpoints hold {"model", "optimizer", "scaler", "config", "epoch"}: only "model" is weights."""
    if "model" in state and isinstance(state["model"], dict):
        return state["model"]
    return state


def convert_to_model(weights: ConvertedWeights, config: TinyGPTVConfig, lora_scaling: float):
    """A float32 model holding exactly the converted weights (strict: every key checked)."""
    from .modeling import TinyGPTVForConditionalGeneration

    model = TinyGPTVForConditionalGeneration(config)
    tensors = {
        key: value.float() if value.is_floating_point() else value
        for key, value in finalize(weights, config, lora_scaling).items()
    }
    check_against_model(tensors, model.state_dict())
    model.load_state_dict(tensors, strict=True)
    return model.eval()
