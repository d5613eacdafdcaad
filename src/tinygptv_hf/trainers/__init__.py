"""The four training stages as `transformers.Trainer` subclasses, their declarations, collator and recipes."""

from ..stages import (
    INSTRUCTION,
    MULTITASK,
    PRETRAINING,
    STAGES,
    WARMUP,
    LoraSpec,
    StageSpec,
    prepare_model_for_stage,
)
from .collator import TinyGPTVCollator, compose_sequence, pad_sequences
from .trainer import (
    InstructionTrainer,
    MultitaskTrainer,
    PretrainingTrainer,
    TinyGPTVStageTrainer,
    WarmupTrainer,
    prepare_for_stage,
)

__all__ = [
    "INSTRUCTION",
    "MULTITASK",
    "PRETRAINING",
    "STAGES",
    "WARMUP",
    "InstructionTrainer",
    "LoraSpec",
    "MultitaskTrainer",
    "PretrainingTrainer",
    "StageSpec",
    "TinyGPTVCollator",
    "TinyGPTVStageTrainer",
    "WarmupTrainer",
    "compose_sequence",
    "pad_sequences",
    "prepare_for_stage",
    "prepare_model_for_stage",
]
