"""One Trainer for every stage; the four stage trainers differ only in the `StageSpec` they declare.

The trainer freezes what the stage freezes, adds LoRA through peft, builds the original's sequences with
`TinyGPTVCollator`, decays only matrices and ends by writing a merged, complete checkpoint folder plus the stage's
adapter. It reads its data as a `TrainingStream` and checkpoints the trainable tensors (all that changes) with the
optimizer, scheduler and RNG states and the stream's position, so that a resumed run continues exactly where the
checkpoint was taken, at any step, in any pass over the data, without re-reading what came before. A checkpoint
is marked complete only once every file is written; resuming takes the newest complete one.
"""

import copy
import json
import logging
import os
import re
from pathlib import Path

import torch
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor, distribute_tensor
from torch.utils.data import DataLoader
from transformers import Trainer, set_seed
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_callback import PrinterCallback, ProgressCallback, TrainerCallback, TrainerState
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, TrainOutput, rotate_checkpoints

from ..checkpoint import save_checkpoint, set_processor_stage
from ..data import DataHealth, TrainingStream
from ..modeling.cpu_plan_tinygptv import this_cpu_dtypes
from ..processors.templates import IGNORE_INDEX
from ..stages import INSTRUCTION, MULTITASK, PRETRAINING, WARMUP, StageSpec, prepare_model_for_stage
from .collator import TinyGPTVCollator
from .inputs import training_samples

logger = logging.getLogger(__name__)

TRAINABLE_WEIGHTS = "trainable.safetensors"
COMPLETE_MARK = "checkpoint_complete.json"
_CHECKPOINT = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


def checkpoint_is_complete(folder) -> bool:
    return (Path(folder) / COMPLETE_MARK).is_file()


def resolve_checkpoint(output_dir, resume: bool | str) -> Path:
    """The checkpoint to resume from: the given folder, which must be complete, or for ``resume=True`` the
    newest complete ``checkpoint-N`` in ``output_dir`` (newer ones without the mark were cut off while being
    written, by a kill or a crash, and are passed over with a warning)."""
    if resume is not True:
        folder = Path(resume)
        if not checkpoint_is_complete(folder):
            raise ValueError(
                f"{folder} is not a complete checkpoint (it has no {COMPLETE_MARK}: its writing was interrupted, "
                f"or it is not a checkpoint of this trainer)"
            )
        return folder
    output_dir = Path(output_dir)
    found = sorted(
        (int(match.group(1)), path)
        for path in (output_dir.iterdir() if output_dir.is_dir() else ())
        if (match := _CHECKPOINT.match(path.name)) and path.is_dir()
    )
    incomplete = []
    for _, folder in reversed(found):
        if checkpoint_is_complete(folder):
            if incomplete:
                logger.warning(
                    "Resuming from %s; passed over incomplete %s", folder.name, ", ".join(incomplete)
                )
            return folder
        incomplete.append(folder.name)
    detail = f" (incomplete: {', '.join(incomplete)})" if incomplete else ""
    raise FileNotFoundError(f"--resume: no complete checkpoint-* folder in {output_dir}{detail}")


def prepare_for_stage(model, processor, spec: StageSpec):
    """Make a loaded model and its processor the stage's, and return the model to train (a `PeftModel` when the
    stage has LoRA): both at the stage's image size, the stage's number, chat template and end symbol on the
    processor, then `prepare_model_for_stage` (freeze, LoRA, unfreeze what the stage declares).

    Done before any engine wraps the model: DDP, FSDP and DeepSpeed shard or replicate what they find, and FSDP
    groups frozen and trainable parameters by what is frozen at that moment. Seed first (`set_seed`) for a
    reproducible LoRA initialisation."""
    model.set_image_size(spec.image_size)
    processor.image_processor.size = {"height": spec.image_size, "width": spec.image_size}
    model.config.stage = spec.stage
    set_processor_stage(processor, spec.stage, spec.end_symbol)
    return prepare_model_for_stage(model, spec)


def is_prepared_for(model, spec: StageSpec) -> bool:
    """Whether `prepare_for_stage(model, ..., spec)` has been applied: LoRA present exactly when the stage has
    it, at the stage's image size, and exactly the stage's parameters (and the LoRA ones) trainable."""
    if isinstance(model, PeftModel) != (spec.lora is not None):
        return False
    if model.config.vision_config.image_size != spec.image_size or model.config.stage != spec.stage:
        return False
    return all(
        parameter.requires_grad == (spec.is_trainable(name) or ".lora_" in name)
        for name, parameter in model.named_parameters()
    )


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX-512 bf16 or AMX) and torch may use it, by the CPU kernel
    plan's one rule: an `ATEN_CPU_CAPABILITY=avx2` (or an AVX2-only CPU) leaves bf16 emulated, slower than float32."""
    return this_cpu_dtypes()["many_rows_dtype"] == torch.bfloat16


def check_engine_setup(model, args, fsdp_plugin=None, deepspeed_plugin=None) -> None:
    """Refuse, in one line that says what to change, a setup that the engines would fail on late (after loading
    and reading data, once per process) or that would run far slower than intended."""
    if args.bf16 and args.device.type == "cpu" and not cpu_has_fast_bf16():
        raise ValueError(
            f"bf16 mixed precision on a CPU without fast bf16 (torch uses {torch.backends.cpu.get_cpu_capability()}, "
            "no AVX-512 bf16 or AMX): it would be emulated, slower than float32; set bf16: false"
        )
    wrap = (fsdp_plugin and fsdp_plugin.transformer_cls_names_to_wrap) or ()
    present = {type(module).__name__ for module in model.modules()}
    unmatched = [name for name in wrap if name not in present]
    if unmatched:
        raise ValueError(
            f"FSDP wrap class(es) {', '.join(unmatched)} (fsdp_transformer_layer_cls_to_wrap) match no module of "
            f"this model; its layer classes are {','.join(sorted(n for n in present if n.endswith('Layer')))} "
            "(see configs/accelerate/fsdp2.yaml)"
        )
    if (
        deepspeed_plugin is not None
        and deepspeed_plugin.zero_stage == 3
        and getattr(model, "is_loaded_in_4bit", False)
    ):
        raise ValueError(
            "DeepSpeed ZeRO-3 cannot partition bitsandbytes 4-bit weights: train this 4-bit (QLoRA) model with "
            "ZeRO-2 (configs/accelerate/deepspeed_zero2.yaml) or without DeepSpeed"
        )


class EpochFromSteps(TrainerCallback):
    """Over one endless stream Trainer's `epoch` is the share of `max_steps` done; a resumed Trainer would count it
    from the resume point, so logs before and after a resume would disagree."""

    def on_step_end(self, args, state, control, **kwargs):
        state.epoch = state.global_step / state.max_steps


class CompleteCheckpoints(TrainerCallback):
    """After Trainer has written a checkpoint: the stream's position, then the completion mark, and only then the
    rotation of old checkpoints (Trainer's own rotation is off), so a kill at any moment leaves a complete checkpoint
    to resume from."""

    def __init__(self, trainer: "TinyGPTVStageTrainer", save_total_limit: int | None):
        self.trainer = trainer
        self.save_total_limit = save_total_limit

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        folder.mkdir(parents=True, exist_ok=True)
        self.trainer.train_stream.save(folder, self.trainer.stream_file)
        self.trainer.accelerator.wait_for_everyone()
        if args.should_save:
            mark = folder / f"{COMPLETE_MARK}.tmp"
            mark.write_text(json.dumps({"global_step": state.global_step, "world_size": args.world_size}))
            os.replace(mark, folder / COMPLETE_MARK)
            rotate_checkpoints(
                output_dir=args.output_dir,
                save_total_limit=self.save_total_limit,
                best_model_checkpoint=state.best_model_checkpoint,
                use_mtime=True,
            )


def trainable_state(model) -> dict[str, torch.Tensor]:
    """The trainable tensors, whole: under FSDP each process holds a shard of each, gathered here (so every process
    must call this, in the same order)."""
    return {
        name: whole(parameter.detach()).cpu().contiguous()
        for name, parameter in model.named_parameters()
        if parameter.requires_grad
    }


def whole(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def unsharded_copy(model, state: dict[str, torch.Tensor], spec: StageSpec):
    """A plain model of `model`'s structure (LoRA included) holding the gathered full `state`: what FSDP and ZeRO-3
    leave in `model` are shards. Built on the meta device and given the state's tensors, so nothing is initialised
    twice; the buffers outside the state dict (the engines replicate buffers) are taken from `model` itself."""
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    # FSDP2 swaps a wrapped module's class for an `FSDPModule` subclass of it
    plain_class = next(cls for cls in type(base).__mro__ if not issubclass(cls, FSDPModule))
    with torch.device("meta"):
        plain = plain_class(copy.deepcopy(base.config))
        if isinstance(model, PeftModel):
            plain = get_peft_model(plain, spec.lora.peft_config())
    plain.load_state_dict(state, strict=True, assign=True)
    buffers = dict(model.named_buffers())
    for name, buffer in list(plain.named_buffers()):
        if buffer.is_meta:
            owner, _, attribute = name.rpartition(".")
            plain.get_submodule(owner).register_buffer(
                attribute, buffers[name].cpu().clone(), persistent=False
            )
    return plain


class TinyGPTVStageTrainer(Trainer):
    """`transformers.Trainer` for one TinyGPT-V stage, named by its `StageSpec` (``stage_spec=``); the four stage
    trainers below only set it. A model not yet prepared for the stage is prepared here (`prepare_for_stage`).

    ``train_dataset`` is a `TrainingStream`, or a reader's (or `mix_datasets`') stream, which is then read
    without a shuffle buffer, or a Hub-style `messages` + `images` dataset, read through `read_messages` (see
    `training_samples`). Under torchrun every rank reads its own part of it.
    """

    stage_spec: StageSpec

    def __init__(
        self, model, args, *, processor, train_dataset, stage_spec: StageSpec | None = None, **kwargs
    ):
        if args.dataloader_num_workers:
            raise ValueError(
                "dataloader_num_workers must be 0: the data stream's position and its bad-sample counts live in "
                "the process that reads it, so that checkpoints can store them"
            )
        self.stage_spec = stage_spec or getattr(self, "stage_spec", None)
        if self.stage_spec is None:
            raise TypeError(
                "TinyGPTVStageTrainer needs stage_spec= (e.g. tinygptv_hf.stages.STAGES[2]), or use one of the "
                "stage trainers (WarmupTrainer, PretrainingTrainer, InstructionTrainer, MultitaskTrainer)"
            )
        train_dataset = training_samples(train_dataset)
        stream = train_dataset if isinstance(train_dataset, TrainingStream) else TrainingStream(train_dataset)
        self.train_stream = stream.for_rank(args.process_index, args.world_size)
        if not is_prepared_for(model, self.stage_spec):
            set_seed(args.seed)  # LoRA's random init happens here, before Trainer would seed
            model = prepare_for_stage(model, processor, self.stage_spec)
        # The collator needs the raw samples; the stream restores its own position, where Trainer would replay;
        # old checkpoints are rotated out by `CompleteCheckpoints`, once the new one is complete. Set on a copy: the
        # caller's arguments stay as they gave them.
        save_total_limit = args.save_total_limit
        args = copy.copy(args)
        args.remove_unused_columns = False
        args.ignore_data_skip = True
        args.save_total_limit = None
        collator = TinyGPTVCollator(
            processor,
            prompt_template=self.stage_spec.prompt_template,
            end_symbol=self.stage_spec.end_symbol,
            max_text_length=self.stage_spec.max_text_length,
        )
        # Ahead of the caller's callbacks, so that their `on_save` sees a complete checkpoint.
        own = [CompleteCheckpoints(self, save_total_limit), EpochFromSteps()]
        callbacks = own + list(kwargs.pop("callbacks", None) or ())
        super().__init__(
            model=model,
            args=args,
            data_collator=collator,
            train_dataset=self.train_stream,
            processing_class=processor,
            callbacks=callbacks,
            **kwargs,
        )
        state = self.accelerator.state
        check_engine_setup(
            model, args, getattr(state, "fsdp_plugin", None), getattr(state, "deepspeed_plugin", None)
        )
        # A caller's own progress display replaces Trainer's (its bar, and the log dicts it prints between redraws).
        if any(isinstance(callback, ProgressCallback) for callback in callbacks):
            for callback in list(self.callback_handler.callbacks):
                if type(callback) in (ProgressCallback, PrinterCallback):
                    self.remove_callback(callback)

    def get_train_dataloader(self) -> DataLoader:
        """The stream read in this process without look-ahead, so that between two steps its state is exactly
        the position after the last batch; its own generator, so that starting it draws nothing from the RNG
        state a resume restores. (Each rank already holds its own part: accelerate is not asked to split it.)"""
        return DataLoader(
            self.train_stream,
            batch_size=self._train_batch_size,
            collate_fn=self.data_collator,
            pin_memory=self.args.dataloader_pin_memory,
            generator=torch.Generator(),
        )

    def train(self, resume_from_checkpoint: bool | str | None = None, **kwargs):
        """As `Trainer.train`, resuming from the newest complete checkpoint for ``True``, with the stream where
        the checkpoint left it; a checkpoint already at ``max_steps`` is loaded, not trained one step further."""
        checkpoint = None
        if resume_from_checkpoint:
            checkpoint = resolve_checkpoint(self.args.output_dir, resume_from_checkpoint)
            written_by = json.loads((checkpoint / COMPLETE_MARK).read_text())["world_size"]
            if written_by != self.args.world_size:
                raise ValueError(
                    f"{checkpoint} was written by {written_by} process(es); resume it with the same number, not "
                    f"{self.args.world_size}"
                )
            self.train_stream.load(checkpoint, self.stream_file)
            state = TrainerState.load_from_json(str(checkpoint / TRAINER_STATE_NAME))
            if state.global_step >= self.args.max_steps and not self.is_deepspeed_enabled:
                self._load_from_checkpoint(str(checkpoint))
                self.state = state
                return TrainOutput(state.global_step, 0.0, {})
        try:
            return super().train(resume_from_checkpoint=checkpoint and str(checkpoint), **kwargs)
        except BaseException:
            progress = self.callback_handler.pop_callback(ProgressCallback)
            if progress is not None:  # close the bar, so that the error is the last thing on the terminal
                progress.on_train_end(self.args, self.state, self.control)
            raise

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Trainer's loss, with the LM head applied only where some row of the batch has a label to predict.

        The loss is the same per-token mean (the ignored positions add nothing to it), but the head and the
        cross-entropy over the whole vocabulary, a large part of a step, run only on those positions: a stage
        labels just the answer, a few tokens of each sequence. Evaluation (`return_outputs`) gets full logits."""
        if return_outputs or "labels" not in inputs:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        inputs = dict(inputs)
        next_labels = torch.nn.functional.pad(inputs.pop("labels")[:, 1:], (0, 1), value=IGNORE_INDEX)
        keep = next_labels.ne(IGNORE_INDEX).any(dim=0).nonzero().squeeze(1)
        inputs.update(logits_to_keep=keep, shift_labels=next_labels[:, keep])
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    @property
    def stream_file(self) -> str:
        return f"stream-rank{self.args.process_index}"

    def data_health(self) -> dict:
        """The run's bad-sample report, summed over all ranks."""
        states = [self.train_stream.health.state_dict()]
        if self.args.world_size > 1:
            states = [None] * self.args.world_size
            torch.distributed.all_gather_object(states, self.train_stream.health.state_dict())
        health = DataHealth(self.train_stream.health.max_bad_samples)
        for state in states:
            health.merge(state)
        return health.summary()

    def get_decay_parameter_names(self, model) -> list[str]:
        """Weight decay on matrices only (projector and LoRA weights), never on norms or biases, as the original."""
        return [name for name, parameter in model.named_parameters() if parameter.ndim >= 2]

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
        """Trainer's own checkpoints (`_internal_call`) hold only the trainable tensors, for an exact resume (their
        completion mark is removed first, in case a finished save of this step is being replaced); a caller's
        `save_model()` gets a complete folder that loads with `from_pretrained`: LoRA merged into a copy (the model
        in training is left as it is, at the cost of a second copy in memory while saving)."""
        output_dir = Path(output_dir or self.args.output_dir)
        if _internal_call:
            # DeepSpeed checkpoints the weights itself, with its optimizer state (ZeRO-3 leaves no whole tensor here)
            state = None if self.is_deepspeed_enabled else trainable_state(self.model)
            if self.args.should_save:
                output_dir.mkdir(parents=True, exist_ok=True)
                (output_dir / COMPLETE_MARK).unlink(missing_ok=True)
                if state is not None:
                    save_file(state, output_dir / TRAINABLE_WEIGHTS)
                (output_dir / "stage.json").write_text(
                    json.dumps({"stage": self.stage_spec.stage, "name": self.stage_spec.name})
                )
            return
        model = self.whole_model()
        if self.is_world_process_zero():
            if isinstance(model, PeftModel):
                model = (model if self.is_sharded else copy.deepcopy(model)).merge_and_unload()
            save_checkpoint(model, self.processing_class, output_dir)
        self.accelerator.wait_for_everyone()

    @property
    def is_sharded(self) -> bool:
        """Whether each process holds only shards of the weights (FSDP, DeepSpeed ZeRO-3)."""
        return self.is_fsdp_enabled or (
            self.is_deepspeed_enabled and self.accelerator.state.deepspeed_plugin.zero_stage == 3
        )

    def whole_model(self):
        """The model with whole weights, for a folder: the model itself, or when it is sharded a plain copy on the
        main process built from the weights gathered there (`None` on the others; every process must call this,
        the gathering is collective). The sharded model goes on training untouched."""
        # Not yet sharded either when a resume at max_steps trains nothing.
        wrapped = isinstance(self.model, FSDPModule) or self.model_wrapped is not self.model
        if not (self.is_sharded and wrapped):
            return self.model
        if self.is_fsdp_enabled:
            options = StateDictOptions(full_state_dict=True, cpu_offload=True)
            state = get_model_state_dict(self.model, options=options)
        else:
            state = self.accelerator.get_state_dict(self.model_wrapped)  # ZeRO-3's own gathering
        return unsharded_copy(self.model, state, self.stage_spec) if self.is_world_process_zero() else None

    # Private on purpose (transformers 5.24): `Trainer.train` loads the weights of a checkpoint it resumes through
    # this method only, and its own version expects a full state dict or a peft adapter, loaded non-strictly. No
    # public hook loads a checkpoint of the trainable tensors alone (projector, norms and LoRA together), strictly.
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
                tensor = saved[name].to(parameter.dtype)
                if isinstance(parameter, DTensor):  # FSDP: this process keeps its shard of the whole tensor
                    tensor = distribute_tensor(tensor, parameter.device_mesh, parameter.placements)
                parameter.copy_(tensor)

    def finish_stage(self, output_dir=None) -> Path:
        """Write `<output_dir>/adapter` (LoRA against the stage's starting weights) and `<output_dir>/final`
        (merged, complete, loadable with the Auto classes and `trust_remote_code=True`)."""
        output_dir = Path(output_dir or self.args.output_dir)
        model = self.whole_model()
        if isinstance(model, PeftModel):
            if self.is_world_process_zero():
                model.save_pretrained(output_dir / "adapter")
            model = model.merge_and_unload()
            if model is not None and not self.is_sharded:
                self.model = model
        final = output_dir / "final"
        if model is not None:
            model.requires_grad_(False)
        if self.is_world_process_zero():
            save_checkpoint(model.eval(), self.processing_class, final)
        self.accelerator.wait_for_everyone()
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
