"""The stages of TinyGPT-V as data, stage 0 (a fresh checkpoint) included: the one registry of what a stage trains,
its template, end symbol, image size, name and description, from which every other module derives them.

What the original trains (docs/original-differences.md#stages), its prompts and end symbols
(docs/original-differences.md#prompt-formats) and its schedules (docs/original-differences.md#learning-rates).
A stage never differs from another by code, only by these fields.
"""

import re
from dataclasses import dataclass, field, fields, replace

from .modeling.modeling_tinygptv import LANGUAGE_MODEL, PROJECTOR
from .modeling.modeling_tinygptv_phi import ADDED_NORMS
from .processors.templates import END_SYMBOL, INSTRUCTION_TEMPLATE, MULTITASK_TEMPLATE

# Regexes searched in parameter names (`base_model.model.` in front under peft).
DECODER_LAYER = rf"{LANGUAGE_MODEL}\.layers\.\d+\."
_ADDED_NORMS = "|".join(map(re.escape, ADDED_NORMS))
PROJECTOR_PARAMETERS = rf"{PROJECTOR}\."
ADDED_NORM_PARAMETERS = rf"{DECODER_LAYER}({_ADDED_NORMS})\."
# Stage 1 trains the projector and the weights (not the biases) of every norm the paper adds or re-trains.
NORM_WEIGHTS = (
    rf"{DECODER_LAYER}(input_layernorm|{_ADDED_NORMS})\.weight$",
    rf"{LANGUAGE_MODEL}\.final_layernorm\.weight$",
)
# LoRA sits on the language model's attention projections only (the original's query_key_value and dense).
LORA_TARGETS = rf".*{DECODER_LAYER}self_attn\.(q_proj|k_proj|v_proj|dense)"


@dataclass(frozen=True)
class LoraSpec:
    """The original's LoRA by default: rank 64, alpha 16 (scaling 0.25), dropout 0.05, no bias."""

    r: int = 64
    alpha: int = 16
    dropout: float = 0.05
    target_modules: str = LORA_TARGETS

    def peft_config(self, **extra):
        """This LoRA as a peft `LoraConfig`; `extra` adds other `LoraConfig` fields."""
        from peft import LoraConfig  # here, so that the commands' parsers load without peft

        return LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=self.target_modules,
            bias="none",
            **extra,
        )


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
    chat_template: str = "conversation"  # the family of `processors.templates.CHAT_TEMPLATES` used by default
    description: str = ""  # for the model card

    def is_trainable(self, parameter_name: str) -> bool:
        patterns = self.trainable + self.extra_trainable
        return any(re.search(pattern, parameter_name) for pattern in patterns)

    def with_overrides(self, **overrides) -> "StageSpec":
        """A copy with recipe overrides, e.g. more trainable patterns in `extra_trainable`."""
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


# Stage 0 trains nothing: it is the checkpoint `tinygptv init` writes, answering in the conversation format.
INITIAL = StageSpec(
    stage=0,
    name="initial",
    trainable=(),
    lora=None,
    prompt_template=None,
    end_symbol=END_SYMBOL,
    image_size=224,
    max_text_length=0,
    learning_rate=0.0,
    min_learning_rate=0.0,
    description="Initial: the pretrained Phi-2 and BLIP-2 parts with a fresh projector and fresh added norms; "
    "nothing has been trained together yet.",
)
# Stages 1-2 end captions with a newline (docs/original-differences.md#prompt-formats).
WARMUP = replace(
    INITIAL,
    stage=1,
    name="warm-up",
    trainable=(PROJECTOR_PARAMETERS, *NORM_WEIGHTS),
    end_symbol="\n",
    max_text_length=32,
    learning_rate=1e-4,
    min_learning_rate=8e-5,
    description="Warm-up: image-caption pairs align the projector with the frozen language model. Only the "
    "projector and the weights of the language model's norms train; there is no LoRA in this stage.",
)
PRETRAINING = replace(
    WARMUP,
    stage=2,
    name="pre-training",
    lora=LoraSpec(),
    description="Pre-training: more image-caption pairs, now with LoRA on the language model's attention "
    "projections next to the projector and norm weights. The LoRA weights are merged into the saved weights.",
)
INSTRUCTION = replace(
    PRETRAINING,
    stage=3,
    name="instruction tuning",
    prompt_template=INSTRUCTION_TEMPLATE,
    end_symbol=END_SYMBOL,
    max_text_length=160,
    learning_rate=3e-5,
    min_learning_rate=1e-5,
    description="Instruction tuning: a small set of image-instruction conversations teaches the chat format, with "
    "the same trainable set as stage 2 (LoRA merged).",
)
# The original's stage-4 "minimum" (8e-5) is above its initial rate (1e-5), so its cosine raises the rate; the
# paper repeats these numbers. They are kept here to reproduce the run
# (docs/original-differences.md#stage-4-learning-rate); recipes may change them.
MULTITASK = replace(
    PRETRAINING,
    stage=4,
    name="multi-task learning",
    prompt_template=MULTITASK_TEMPLATE,
    end_symbol=END_SYMBOL,
    image_size=448,
    max_text_length=1024,
    learning_rate=1e-5,
    min_learning_rate=8e-5,
    chat_template="multitask",
    description="Multi-task learning: VQA, captioning, grounding and conversation data at 448 px with task "
    "identifiers, with the same trainable set as stage 2 (LoRA merged).",
)

STAGES = {spec.stage: spec for spec in (INITIAL, WARMUP, PRETRAINING, INSTRUCTION, MULTITASK)}
TRAINING_STAGES = {stage: spec for stage, spec in STAGES.items() if stage}


def prepare_model_for_stage(model, spec: StageSpec):
    """Freeze everything, add the stage's LoRA (peft), then unfreeze exactly the stage's declared parameters."""
    from peft import get_peft_model  # here, so that the commands' parsers load without peft

    model.requires_grad_(False)
    if spec.lora is not None:
        model = get_peft_model(model, spec.lora.peft_config())
    for name, parameter in model.named_parameters():
        if spec.is_trainable(name):
            parameter.requires_grad_(True)
    return model
