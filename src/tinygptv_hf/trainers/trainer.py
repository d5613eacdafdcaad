"""One Trainer for every stage; the four stage trainers differ only in the `StageSpec` they declare.

The trainer freezes what the stage freezes, adds LoRA through peft, builds the original's sequences with
`TinyGPTVCollator`, decays only matrices, checkpoints the trainable tensors (all that changes, so resuming is
exact and cheap) and ends by writing a merged, complete checkpoint folder plus the stage's adapter.
"""

import json
import logging
from pathlib import Path

import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file
from transformers import Trainer, set_seed

from ..checkpoint import save_checkpoint, set_processor_stage
from ..stages import INSTRUCTION, MULTITASK, PRETRAINING, WARMUP, StageSpec, prepare_model_for_stage
from .collator import TinyGPTVCollator
from .inputs import training_samples

logger = logging.getLogger(__name__)

TRAINABLE_WEIGHTS = "trainable.safetensors"


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {
        name: parameter.detach().cpu().contiguous()
        for name, parameter in model.named_parameters()
        if parameter.requires_grad
    }


class TinyGPTVStageTrainer(Trainer):
    """`transformers.Trainer` for one TinyGPT-V stage; subclasses only set `stage_spec`.

    `train_dataset` holds uniform samples (the `tinygptv_hf.data` readers) or is a Hub-style `messages` + `images`
    dataset, read through `read_messages` (see `training_samples`).
    """

    stage_spec: StageSpec

    def __init__(
        self, model, args, *, processor, train_dataset, stage_spec: StageSpec | None = None, **kwargs
    ):
        self.stage_spec = stage_spec or self.stage_spec
        train_dataset = training_samples(train_dataset)
        set_seed(args.seed)  # LoRA's random init happens here, before Trainer would seed
        image_size = self.stage_spec.image_size
        model.set_image_size(image_size)
        processor.image_processor.size = {"height": image_size, "width": image_size}
        model.config.stage = self.stage_spec.stage
        set_processor_stage(processor, self.stage_spec.stage, self.stage_spec.end_symbol)
        model = prepare_model_for_stage(model, self.stage_spec)
        # The collator needs the raw samples, and under DDP every rank reads its own shards of the stream.
        args.remove_unused_columns = False
        args.accelerator_config.dispatch_batches = False
        collator = TinyGPTVCollator(
            processor,
            prompt_template=self.stage_spec.prompt_template,
            end_symbol=self.stage_spec.end_symbol,
            max_text_length=self.stage_spec.max_text_length,
        )
        super().__init__(
            model=model,
            args=args,
            data_collator=collator,
            train_dataset=train_dataset,
            processing_class=processor,
            **kwargs,
        )

    def get_decay_parameter_names(self, model) -> list[str]:
        """Weight decay on matrices only (projector and LoRA weights), never on norms or biases, as the original."""
        return [name for name, parameter in model.named_parameters() if parameter.ndim >= 2]

    def _save(self, output_dir: str | None = None, state_dict=None):
        output_dir = Path(output_dir or self.args.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        save_file(trainable_state(self.model), output_dir / TRAINABLE_WEIGHTS)
        (output_dir / "stage.json").write_text(
            json.dumps({"stage": self.stage_spec.stage, "name": self.stage_spec.name})
        )

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None):
        model = model or self.model
        path = Path(resume_from_checkpoint) / TRAINABLE_WEIGHTS
        if not path.exists():
            raise FileNotFoundError(
                f"{resume_from_checkpoint} has no {TRAINABLE_WEIGHTS}: not a checkpoint of this trainer."
            )
        saved = load_file(path)
        parameters = {
            name: parameter for name, parameter in model.named_parameters() if parameter.requires_grad
        }
        if saved.keys() != parameters.keys():
            missing, extra = (
                sorted(parameters.keys() - saved.keys()),
                sorted(saved.keys() - parameters.keys()),
            )
            raise ValueError(
                f"Checkpoint {resume_from_checkpoint} does not match stage {self.stage_spec.stage}'s trainable "
                f"parameters: missing {missing[:5]}, unexpected {extra[:5]}."
            )
        with torch.no_grad():
            for name, parameter in parameters.items():
                parameter.copy_(saved[name])

    def finish_stage(self, output_dir=None) -> Path:
        """Write `<output_dir>/adapter` (LoRA against the stage's starting weights) and `<output_dir>/final`
        (merged, complete, loadable with the Auto classes and `trust_remote_code=True`)."""
        output_dir = Path(output_dir or self.args.output_dir)
        model = self.model
        if isinstance(model, PeftModel):
            if self.is_world_process_zero():
                model.save_pretrained(output_dir / "adapter")
            model = model.merge_and_unload()
            self.model = model
        model.requires_grad_(False)
        final = output_dir / "final"
        if self.is_world_process_zero():
            save_checkpoint(model.eval(), self.processing_class, final)
        logger.info("stage %s finished: %s", self.stage_spec.stage, final)
        return final


class WarmupTrainer(TinyGPTVStageTrainer):
    stage_spec = WARMUP


class PretrainingTrainer(TinyGPTVStageTrainer):
    stage_spec = PRETRAINING


class InstructionTrainer(TinyGPTVStageTrainer):
    stage_spec = INSTRUCTION


class MultitaskTrainer(TinyGPTVStageTrainer):
    stage_spec = MULTITASK


STAGE_TRAINERS = {
    cls.stage_spec.stage: cls
    for cls in (WarmupTrainer, PretrainingTrainer, InstructionTrainer, MultitaskTrainer)
}
