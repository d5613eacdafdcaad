"""Recipes: a YAML of TrainingArguments plus `stage`, `model` and `data` sections, run by `tinygptv train`.

```yaml
stage: 2
model: {path: runs/stage-1/final}          # a folder or Hub id; other keys go to from_pretrained (revision, ...)
stage_overrides: {}                         # e.g. {extra_trainable: ['\\.vision_model\\.']}, {lora: {r: 16}}
data:
  max_bad_samples: 100                      # skipped bad samples allowed before the run stops
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
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from transformers import TrainingArguments

from .. import data as data_readers
from ..data import DataHealth, mix_datasets
from ..stages import TRAINING_STAGES, StageSpec

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
            raise ValueError(f"{source}: stage must be one of {sorted(TRAINING_STAGES)}, got {raw['stage']!r}")
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
            lr_scheduler_kwargs={
                "min_lr": spec.min_learning_rate,
                "warmup_lr_rate": spec.warmup_learning_rate / learning_rate,
            },
            adam_beta1=0.9,
            adam_beta2=0.999,
            report_to=[],
            save_strategy="steps",
            dataloader_num_workers=0,
        )
        return TrainingArguments(**{**defaults, **self.training})

    def datasets(self, health: DataHealth):
        """The recipe's datasets, each a stream of uniform samples, mixed by their ratios."""
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
            streams.append((reader(**entry, health=health, seed=seed), ratio))
        mixed = mix_datasets(streams, seed=seed)
        buffer = int(self.data.get("shuffle_buffer", 1000))
        return mixed.shuffle(seed=seed, buffer_size=buffer) if buffer > 1 else mixed


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


def run_recipe(recipe: Recipe, resume: bool | str = False, trainer_callbacks=None) -> StageResult:
    """Train one stage end to end; `final` is the stage's complete (merged) checkpoint folder. The card and the
    recipe's `push` are the caller's (`tinygptv train`, the demo): see `cards.recipe_card`.

    `resume=True` continues from the newest `checkpoint-*` in the output folder, a path from that checkpoint.
    """
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from transformers.trainer_utils import get_last_checkpoint

    from .trainer import STAGE_TRAINERS

    health = DataHealth(int(recipe.data.get("max_bad_samples", 100)))
    train_dataset = recipe.datasets(health)  # missing data paths fail here, before any model is loaded
    args = recipe.training_arguments()
    model_kwargs = dict(recipe.model)
    path = model_kwargs.pop("path")
    model = AutoModelForImageTextToText.from_pretrained(path, trust_remote_code=True, **model_kwargs)
    processor = AutoProcessor.from_pretrained(
        path, revision=model_kwargs.get("revision"), trust_remote_code=True
    )
    trainer = STAGE_TRAINERS[recipe.stage](
        model,
        args,
        processor=processor,
        train_dataset=train_dataset,
        stage_spec=recipe.spec,
        callbacks=trainer_callbacks,
    )
    checkpoint = resume
    if resume is True:
        checkpoint = get_last_checkpoint(args.output_dir)
        if checkpoint is None:
            raise FileNotFoundError(f"--resume: no checkpoint-* folder in {args.output_dir}")
    trainer.train(resume_from_checkpoint=checkpoint or None)
    final = trainer.finish_stage()
    result = StageResult(
        final=final,
        log_history=list(trainer.state.log_history),
        data_health=health.summary(),
        main_process=trainer.is_world_process_zero(),
    )
    if not result.main_process:
        return result
    output = Path(args.output_dir)
    (output / "data_health.json").write_text(json.dumps(result.data_health, indent=2))
    (output / "log_history.json").write_text(json.dumps(result.log_history, indent=2))
    return result
