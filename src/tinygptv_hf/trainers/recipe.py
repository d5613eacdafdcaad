"""Recipes: a YAML of TrainingArguments plus `stage`, `model` and `data` sections, run by `tinygptv train`.

```yaml
stage: 2
model: {path: runs/stage-1/final}          # a folder or Hub id; other keys go to from_pretrained (revision, ...)
stage_overrides: {}                         # e.g. {extra_trainable: ['\\.vision_model\\.']}, {lora: {r: 16}}
data:
  max_bad_samples: 100                      # bad records the run may skip (all sources together) before it stops
  seed: 42
  shuffle_buffer: 1000                      # samples shuffled in a buffer, as the original's webdataset
  datasets:                                 # `reader` names tinygptv_hf.data.read_<reader>; other keys are its args
    - {reader: webdataset_captions, ratio: 115, shards: "${laion}/{00000..05244}.tar", source: laion}
training: {output_dir: runs/stage-2, max_steps: 20000, per_device_train_batch_size: 64}
push: {repo: me/tinygptv, update_main: false}   # optional
```
`${name}` anywhere is replaced by variables given on the command line (`--set laion=/data/laion`).
"""

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from transformers import TrainingArguments, set_seed

from .. import data as data_readers
from ..data import DataHealth, TrainingStream, mix_datasets
from ..stages import TRAINING_STAGES, StageSpec

logger = logging.getLogger(__name__)

VARIABLE = re.compile(r"\$\{(\w+)\}")


@dataclass
class Recipe:
    stage: int
    model: dict
    data: dict
    training: dict
    stage_overrides: dict = field(default_factory=dict)
    push: dict | None = None
    source: str = "<dict>"

    @classmethod
    def load(cls, path, variables: dict | None = None) -> "Recipe":
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"Recipe not found: {path}")
        return cls.from_dict(yaml.safe_load(path.read_text()), variables, source=str(path))

    @classmethod
    def from_dict(cls, raw: dict, variables: dict | None = None, source: str = "<dict>") -> "Recipe":
        raw = substitute(raw, variables or {}, source)
        unknown = set(raw) - {"stage", "model", "data", "training", "stage_overrides", "push"}
        if unknown:
            raise ValueError(f"{source}: unknown recipe section(s) {sorted(unknown)}")
        for section in ("stage", "model", "data", "training"):
            if section not in raw:
                raise ValueError(f"{source}: the recipe needs a '{section}' section")
        if raw["stage"] not in TRAINING_STAGES:
            raise ValueError(
                f"{source}: stage must be one of {sorted(TRAINING_STAGES)}, got {raw['stage']!r}"
            )
        return cls(
            stage=raw["stage"],
            model=raw["model"],
            data=raw["data"],
            training=raw["training"],
            stage_overrides=raw.get("stage_overrides") or {},
            push=raw.get("push"),
            source=source,
        )

    @property
    def spec(self) -> StageSpec:
        return TRAINING_STAGES[self.stage].with_overrides(**self.stage_overrides)

    def training_arguments(self) -> TrainingArguments:
        """The stage's optimizer and schedule (AdamW, linear warm-up from the warm-up rate, cosine to the floor)
        under whatever the recipe sets explicitly."""
        spec = self.spec
        learning_rate = float(self.training.get("learning_rate", spec.learning_rate))
        defaults = dict(
            learning_rate=learning_rate,
            weight_decay=spec.weight_decay,
            lr_scheduler_type="cosine_warmup_with_min_lr",
            # as rates of the learning rate: DeepSpeed's optimizers have no `defaults` to read it from
            lr_scheduler_kwargs={
                "min_lr_rate": spec.min_learning_rate / learning_rate,
                "warmup_lr_rate": spec.warmup_learning_rate / learning_rate,
            },
            adam_beta1=0.9,
            adam_beta2=0.999,
            report_to=[],
            save_strategy="steps",
            dataloader_num_workers=0,
            dataloader_pin_memory=torch.accelerator.is_available(),  # pinned memory only helps a copy to a device
        )
        return TrainingArguments(**{**defaults, **self.training})

    def datasets(self):
        """The recipe's datasets, each a stream of uniform rows, mixed by their ratios."""
        entries = self.data.get("datasets") or []
        if not entries:
            raise ValueError(f"{self.source}: data.datasets is empty")
        seed = int(self.data.get("seed", 42))
        streams = []
        for entry in entries:
            entry = dict(entry)
            reader_name, ratio = entry.pop("reader", None), entry.pop("ratio", 1)
            reader = getattr(data_readers, f"read_{reader_name}", None)
            if reader is None:
                raise ValueError(f"{self.source}: unknown reader {reader_name!r}")
            streams.append((reader(**entry, seed=seed), ratio))
        return mix_datasets(streams, seed=seed)

    def training_stream(self) -> TrainingStream:
        """The mixed datasets as the trainer reads them: shuffled in a buffer, counted against the error budget."""
        return TrainingStream(
            self.datasets(),
            health=DataHealth(int(self.data.get("max_bad_samples", 100))),
            shuffle_buffer=int(self.data.get("shuffle_buffer", 1000)),
            seed=int(self.data.get("seed", 42)),
        )


def substitute(value, variables: dict, source: str):
    """Replace `${name}` in every string of a nested structure; an unknown name is an error naming it."""
    if isinstance(value, dict):
        return {key: substitute(item, variables, source) for key, item in value.items()}
    if isinstance(value, list):
        return [substitute(item, variables, source) for item in value]
    if isinstance(value, str):
        missing = [name for name in VARIABLE.findall(value) if name not in variables]
        if missing:
            raise ValueError(f"{source}: the recipe uses ${{{missing[0]}}} but no value was given (--set)")
        return VARIABLE.sub(lambda match: str(variables[match.group(1)]), value)
    return value


@dataclass
class StageResult:
    final: Path
    log_history: list[dict]
    data_health: dict
    main_process: bool = True  # False on the other ranks of a distributed run, which must not write or push

    def summary(self) -> str:
        """One line: how far the stage trained, what its data gave and where the model is."""
        losses = [entry["loss"] for entry in self.log_history if "loss" in entry]
        steps = max((entry.get("step", 0) for entry in self.log_history), default=0)
        health = self.data_health
        data = (
            f"{health['total_samples']} samples read, {health['total_bad']} bad and {health['total_dropped']} "
            f"dropped records"
        )
        if health["sources_without_samples"]:
            data += f" (no samples from {', '.join(health['sources_without_samples'])})"
        trained = f"{steps} steps" + (f", last logged loss {losses[-1]:.4f}" if losses else "")
        return f"{trained}; {data}; model in {self.final}"


def run_recipe(recipe: Recipe, resume: bool | str = False, trainer_callbacks=None) -> StageResult:
    """Train one stage end to end; `final` is the stage's complete (merged) checkpoint folder. The card and the
    recipe's `push` are the caller's (`tinygptv train`, the demo): see `cards.recipe_card`.

    `resume=True` continues from the newest complete `checkpoint-*` in the output folder, a path from that
    checkpoint. The log history and the data report (`data_health.json`) are written to the output folder.
    """
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from .trainer import TinyGPTVStageTrainer, prepare_for_stage

    train_stream = recipe.training_stream()  # missing data paths fail here, before any model is loaded
    spec = recipe.spec
    model_kwargs = dict(recipe.model)
    path = model_kwargs.pop("path")
    # Loaded whole before the TrainingArguments exist: under DeepSpeed ZeRO-3 they would make transformers load it
    # already partitioned, and preparing the stage resizes whole tensors; ZeRO-3 partitions it when training starts.
    model = AutoModelForImageTextToText.from_pretrained(path, trust_remote_code=True, **model_kwargs)
    processor = AutoProcessor.from_pretrained(
        path, revision=model_kwargs.get("revision"), trust_remote_code=True
    )
    args = recipe.training_arguments()
    set_seed(args.seed)  # LoRA's random initialisation
    model = prepare_for_stage(model, processor, spec)
    trainer = TinyGPTVStageTrainer(
        model,
        args,
        processor=processor,
        train_dataset=train_stream,
        stage_spec=spec,
        callbacks=trainer_callbacks,
    )
    trainer.train(resume_from_checkpoint=resume or None)
    final = trainer.finish_stage()
    result = StageResult(
        final=final,
        log_history=list(trainer.state.log_history),
        data_health=trainer.data_health(),
        main_process=trainer.is_world_process_zero(),
    )
    if not result.main_process:
        return result
    for source in result.data_health["sources_without_samples"]:
        logger.warning("%s gave no sample in this whole run: check its paths (data_health.json)", source)
    output = Path(args.output_dir)
    (output / "data_health.json").write_text(json.dumps(result.data_health, indent=2))
    (output / "log_history.json").write_text(json.dumps(result.log_history, indent=2))
    return result
