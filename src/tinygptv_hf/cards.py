"""Model cards for stage checkpoints: the metadata the Hub indexes, and what the stage trained, counted from the model.

Cards render from the Jinja templates in `hub_cards/` through huggingface_hub's `ModelCard.from_template`, so the
metadata is a `ModelCardData` (evaluation results become `model-index`) rather than hand-written YAML.
"""

import json
import os
from pathlib import Path

import torch
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .modeling import TinyGPTVConfig, TinyGPTVForConditionalGeneration
from .modeling.configuration_tinygptv import TRANSFORMERS_REQUIREMENT
from .modeling.modeling_tinygptv import (
    LANGUAGE_MODEL,
    LM_HEAD,
    PROJECTOR,
    QFORMER,
    QUERY_TOKENS,
    VISION_TOWER,
)
from .stages import STAGES, TRAINING_STAGES, StageSpec, prepare_model_for_stage
from .trainers.recipe import Recipe

TEMPLATE = Path(__file__).with_name("hub_cards") / "stage.md"
LICENSE = "bsd-3-clause"
BASE_MODELS = ["microsoft/phi-2", "Salesforce/blip2-flan-t5-xxl"]
TAGS = ["tinygptv", "vision-language", "multimodal", "phi-2", "blip-2", "custom_code"]

# Name prefix in the model -> how the card names the component.
COMPONENTS = {
    f"model.{VISION_TOWER}.": "Vision tower (EVA ViT-g, ln_vision)",
    f"model.{QFORMER}.": "Q-Former and query tokens",
    f"model.{QUERY_TOKENS}": "Q-Former and query tokens",
    f"model.{PROJECTOR}.": "Projector (two linear layers)",
    f"model.{LANGUAGE_MODEL}.": "Language model (Phi-2)",
    f"{LM_HEAD}.": "LM head",
}


def _model_skeleton(checkpoint_dir) -> TinyGPTVForConditionalGeneration:
    """The checkpoint's model built on the meta device: its exact parameters without reading any weights."""
    config = TinyGPTVConfig.from_pretrained(checkpoint_dir)
    with torch.device("meta"):
        return TinyGPTVForConditionalGeneration(config)


def component_parameters(model) -> dict[str, int]:
    counts = dict.fromkeys(COMPONENTS.values(), 0)
    for name, parameter in model.named_parameters():
        counts[_component(name)] += parameter.numel()
    return counts


def stage_trainable_parameters(model, spec: StageSpec) -> dict[str, int]:
    """What the stage trains, counted by applying the stage's own declaration (`prepare_model_for_stage`) to the
    model: the card cannot drift from what the trainer does."""
    prepared = prepare_model_for_stage(model, spec)
    counts: dict[str, int] = {}
    for name, parameter in prepared.named_parameters():
        if parameter.requires_grad:
            part = f"LoRA r={spec.lora.r} (merged into the weights)" if ".lora_" in name else _component(name)
            counts[part] = counts.get(part, 0) + parameter.numel()
    return counts


def _component(name: str) -> str:
    name = name.removeprefix("base_model.model.")
    prefix = next((prefix for prefix in COMPONENTS if name.startswith(prefix)), None)
    if prefix is None:
        raise ValueError(f"Parameter {name} belongs to no component the card knows; update COMPONENTS.")
    return COMPONENTS[prefix]


def _component_status(components: dict[str, int], trainable: dict[str, int]) -> dict[str, str]:
    status = {}
    for name, total in components.items():
        trained = trainable.get(name, 0)
        status[name] = "frozen" if not trained else "trained" if trained == total else f"{trained:,} trained"
    return status


def _flatten(settings: dict, prefix: str = "") -> list[tuple[str, str]]:
    rows = []
    for key, value in settings.items():
        if isinstance(value, dict):
            rows += _flatten(value, f"{prefix}{key}.")
        else:
            rows.append((f"{prefix}{key}", str(value)))
    return rows


def _data_mix(datasets) -> list[tuple[str, str]]:
    """A recipe's `datasets`: {name: ratio or settings}, or a list of names or entries named by "name", "source"
    or "reader" (the recipe format of `tinygptv train`)."""
    if isinstance(datasets, dict):
        entries = datasets.items()
    else:
        entries = [
            (_entry_name(entry), {k: v for k, v in entry.items() if k != "name"})
            if isinstance(entry, dict)
            else (entry, "")
            for entry in datasets
        ]
    return [
        (name, ", ".join(f"{k}={v}" for k, v in _flatten(value)) if isinstance(value, dict) else str(value))
        for name, value in entries
    ]


def _entry_name(entry: dict) -> str:
    return str(entry.get("name") or entry.get("source") or entry.get("reader"))


def _eval_result(result) -> EvalResult:
    if isinstance(result, EvalResult):
        return result
    return EvalResult(
        task_type=result["task"],
        dataset_type=result["dataset"],
        dataset_name=result["dataset"],
        metric_type=result["metric"],
        metric_value=result["value"],
    )


def render_model_card(
    checkpoint_dir: str | os.PathLike,
    *,
    stage: int,
    repo_id: str | None = None,
    recipe: dict | None = None,
    eval_results: list | None = None,
    previous_stage_ref: str | None = None,
    source_files: list[dict] | None = None,
    spec: StageSpec | None = None,
) -> ModelCard:
    """The card of one stage's checkpoint.

    `recipe` is the stage's recipe as a dict (its `datasets` entry becomes the data mix, everything else the
    hyperparameter table); `eval_results` are `EvalResult`s or dicts {task, dataset, metric, value};
    `previous_stage_ref` is "owner/name@revision" of the checkpoint this stage started from; `source_files` are the
    {path, sha256} of the original files a converted checkpoint came from; `spec` is the stage as trained (the
    paper's declaration of `stage` by default).
    """
    if stage not in TRAINING_STAGES:
        raise ValueError(f"Stage must be one of {sorted(TRAINING_STAGES)}, got {stage}.")
    model = _model_skeleton(checkpoint_dir)
    components = component_parameters(model)
    trainable = stage_trainable_parameters(model, spec or STAGES[stage])
    status = _component_status(components, trainable)
    recipe = dict(recipe or {})
    data_mix = _data_mix(recipe.pop("datasets", []))
    name = repo_id.split("/")[-1] if repo_id else Path(checkpoint_dir).resolve().name
    results = [_eval_result(result) for result in eval_results or []]

    # `base_model` takes Hub ids only; the previous stage's exact revision goes in `previous_stage`.
    previous_repo = previous_stage_ref.split("@")[0] if previous_stage_ref else None
    base_model = BASE_MODELS + ([previous_repo] if previous_repo not in (None, repo_id) else [])
    card_data = ModelCardData(
        license=LICENSE,
        library_name="transformers",
        pipeline_tag="image-text-to-text",
        base_model=base_model,
        datasets=[name for name, _ in data_mix if "/" in name] or None,
        tags=TAGS + [f"stage-{stage}"],
        model_name=name,
        eval_results=results or None,
        stage=stage,
        previous_stage=previous_stage_ref,
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE),
        title=name,
        repo_id=repo_id or "OWNER/NAME",
        stage_name=STAGES[stage].name,
        stage_description=STAGES[stage].description,
        previous_stage_ref=previous_stage_ref,
        components=[
            {"name": name, "parameters": count, "status": status[name]} for name, count in components.items()
        ],
        total_parameters=sum(components.values()),
        trainable=[{"name": name, "parameters": count} for name, count in trainable.items()],
        trainable_total=sum(trainable.values()),
        hyperparameters=_flatten(recipe),
        data_mix=data_mix,
        results=results,
        source_files=source_files,
        transformers_requirement=TRANSFORMERS_REQUIREMENT,
        written_with=model.config.transformers_version,
    )


def recipe_card(recipe: Recipe, final: str | os.PathLike) -> ModelCard:
    """The card of a trained stage: what trained, the recipe, the data mix and, for a Hub start, its lineage."""
    previous_path, previous_revision = recipe.model["path"], recipe.model.get("revision")
    from_hub = not Path(previous_path).exists()
    return render_model_card(
        final,
        stage=recipe.stage,
        repo_id=(recipe.push or {}).get("repo"),
        recipe={
            "model": recipe.model,
            "stage_overrides": recipe.stage_overrides,
            "training": recipe.training,
            "datasets": recipe.data.get("datasets", []),
        },
        previous_stage_ref=f"{previous_path}@{previous_revision or 'main'}" if from_hub else None,
        spec=recipe.spec,
    )


def release_card(checkpoint_dir: str | os.PathLike) -> ModelCard:
    """The card of a folder `convert_release` wrote, listing the original files it came from (conversion.json)."""
    record = json.loads((Path(checkpoint_dir) / "conversion.json").read_text())
    files = [{"path": Path(file["path"]).name, "sha256": file["sha256"]} for file in record["source_files"]]
    return render_model_card(checkpoint_dir, stage=record["stage"], source_files=files)
