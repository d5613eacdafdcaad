"""What an evaluation run leaves behind: a results file with every prediction, and the `model-index` metadata a
model card carries. Both modes are reported side by side, each labelled, never merged into one number."""

import json
import os
from pathlib import Path

from huggingface_hub import EvalResult
from huggingface_hub.repocard_data import eval_results_to_model_index

from .benchmarks import BENCHMARKS
from .metric_base import MODES

MODE_TITLES = {"paper": "paper scoring (original harness)", "standard": "standard scoring (official rule)"}


def eval_results(summaries: dict[str, dict]) -> list[EvalResult]:
    """One `EvalResult` per benchmark split, scoring mode and metric; the mode is the metric's `config`."""
    results = []
    for summary in summaries.values():
        benchmark = BENCHMARKS[summary["benchmark"]]
        metrics = [(mode, "accuracy", "Accuracy", 2) for mode in MODES]
        if summary["standard"].get("roc_auc") is not None:
            metrics.append(("standard", "roc_auc", "AUROC", 4))
        for mode, metric, title, digits in metrics:
            results.append(
                EvalResult(
                    task_type=benchmark.task_type,
                    task_name=benchmark.task_name,
                    dataset_type=benchmark.dataset_type,
                    dataset_name=benchmark.title,
                    dataset_split=summary["split"],
                    metric_type=metric,
                    metric_value=round(summary[mode][metric], digits),
                    metric_name=f"{title}, {MODE_TITLES[mode]}",
                    metric_config=mode,
                )
            )
    return results


def model_index(model_name: str, summaries: dict[str, dict]) -> list[dict]:
    """The `model-index` block for a model card's metadata."""
    return eval_results_to_model_index(model_name, eval_results(summaries))


def write_results(path, model_name: str, settings: dict, runs: list[dict]) -> dict:
    """Write (and return) the results file: settings, per-benchmark summaries, model-index and every prediction.
    It is written beside its final name and then renamed, so an interrupted write never leaves half a file."""
    summaries = {run["key"]: run["summary"] for run in runs}
    document = {
        "model": model_name,
        "settings": settings,
        "results": summaries,
        "model_index": model_index(model_name, summaries),
        "predictions": [prediction for run in runs for prediction in run["predictions"]],
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(partial, path)
    return document
