"""The four stages of TinyGPT-V as data: what trains, which template and end symbol, which sizes.

Reference sections 2.2, 3.4 and 5.2. A stage never differs from another by code, only by these fields.
"""

import re
from dataclasses import dataclass, field, fields, replace

from peft import LoraConfig, get_peft_model

from ..processors.templates import INSTRUCTION_TEMPLATE, MULTITASK_TEMPLATE, STAGE_END_SYMBOL

# Stage 1 trains the projector and the weights (not the biases) of every norm the paper adds or re-trains.
NORM_WEIGHTS = (
    r"language_model\.layers\.\d+\.(input_layernorm|post_layernorm|self_attn\.q_layernorm|self_attn\.k_layernorm)\.weight$",
    r"language_model\.final_layernorm\.weight$",
)
PROJECTOR = (r"multi_modal_projector\.",)
VISION_SIDE = (r"\.vision_model\.", r"\.qformer\.", r"\.query_tokens$")
# LoRA sits on the language model's attention projections only (the original's query_key_value and dense).
LORA_TARGETS = r".*language_model\.layers\.\d+\.self_attn\.(q_proj|k_proj|v_proj|dense)"


@dataclass(frozen=True)
class LoraSpec:
    r: int = 64
    alpha: int = 16
    dropout: float = 0.05
    target_modules: str = LORA_TARGETS


@dataclass(frozen=True)
class StageSpec:
    """One stage. `trainable` are regexes searched in parameter names; LoRA parameters train when `lora` is set."""

    stage: int
    name: str
    trainable: tuple[str, ...]
    lora: LoraSpec | None
    prompt_template: str | None
    end_symbol: str
    image_size: int
    max_text_length: int
    learning_rate: float
    min_learning_rate: float
    warmup_learning_rate: float = 1e-6
    weight_decay: float = 0.05
    extra_trainable: tuple[str, ...] = field(default=())

    def is_trainable(self, parameter_name: str) -> bool:
        patterns = self.trainable + self.extra_trainable
        return any(re.search(pattern, parameter_name) for pattern in patterns)

    def with_overrides(self, **overrides) -> "StageSpec":
        """A copy with recipe overrides, e.g. `extra_trainable=VISION_SIDE` for the demo's untrained vision tower."""
        unknown = set(overrides) - {spec_field.name for spec_field in fields(self)}
        if unknown:
            raise ValueError(
                f"Unknown stage override(s) {sorted(unknown)}; StageSpec has {[f.name for f in fields(self)]}."
            )
        if isinstance(overrides.get("lora"), dict):
            overrides["lora"] = LoraSpec(**overrides["lora"])
        if "extra_trainable" in overrides:
            overrides["extra_trainable"] = tuple(overrides["extra_trainable"])
        return replace(self, **overrides)


WARMUP = StageSpec(
    stage=1,
    name="warm-up",
    trainable=PROJECTOR + NORM_WEIGHTS,
    lora=None,
    prompt_template=None,
    end_symbol=STAGE_END_SYMBOL[1],
    image_size=224,
    max_text_length=32,
    learning_rate=1e-4,
    min_learning_rate=8e-5,
)
PRETRAINING = replace(WARMUP, stage=2, name="pre-training", lora=LoraSpec())
INSTRUCTION = replace(
    PRETRAINING,
    stage=3,
    name="instruction tuning",
    prompt_template=INSTRUCTION_TEMPLATE,
    end_symbol=STAGE_END_SYMBOL[3],
    max_text_length=160,
    learning_rate=3e-5,
    min_learning_rate=1e-5,
)
# The original's stage-4 "minimum" (8e-5) is above its initial rate (1e-5), so its cosine raises the rate; the
# paper repeats these numbers. They are kept here to reproduce the run (reference 8.10); recipes may change them.
MULTITASK = replace(
    PRETRAINING,
    stage=4,
    name="multi-task",
    prompt_template=MULTITASK_TEMPLATE,
    end_symbol=STAGE_END_SYMBOL[4],
    image_size=448,
    max_text_length=1024,
    learning_rate=1e-5,
    min_learning_rate=8e-5,
)

STAGES = {spec.stage: spec for spec in (WARMUP, PRETRAINING, INSTRUCTION, MULTITASK)}


def prepare_model_for_stage(model, spec: StageSpec):
    """Freeze everything, add the stage's LoRA (peft), then unfreeze exactly the stage's declared parameters."""
    model.requires_grad_(False)
    if spec.lora is not None:
        lora_config = LoraConfig(
            r=spec.lora.r,
            lora_alpha=spec.lora.alpha,
            lora_dropout=spec.lora.dropout,
            target_modules=spec.lora.target_modules,
            bias="none",
        )
        model = get_peft_model(model, lora_config)
    for name, parameter in model.named_parameters():
        if spec.is_trainable(name):
            parameter.requires_grad_(True)
    return model
