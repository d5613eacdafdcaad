"""What an evaluation run leaves behind: a results file with every prediction, and the `model-index` metadata a
model card carries. Both modes are reported side by side, each labelled, never merged into one number."""

import json
from pathlib import Path

from huggingface_hub import EvalResult
from huggingface_hub.repocard_data import eval_results_to_model_index

from .benchmarks import BENCHMARKS
from .metric_base import MODES

MODE_TITLES = {"paper": "paper scoring (original harness)", "standard": "standard scoring (official rule)"}


def eval_results(summaries: dict[str, dict]) -> list[EvalResult]:
    """One `EvalResult` per benchmark split and scoring mode; the mode is the metric's `config`."""
    results = []
    for summary in summaries.values():
        benchmark = BENCHMARKS[summary["benchmark"]]
        for mode in MODES:
            results.append(
                EvalResult(
                    task_type=benchmark.task_type,
                    task_name=benchmark.task_name,
                    dataset_type=benchmark.dataset_type,
                    dataset_name=benchmark.title,
                    dataset_split=summary["split"],
                    metric_type="accuracy",
                    metric_value=round(summary[mode]["accuracy"], 2),
                    metric_name=f"Accuracy, {MODE_TITLES[mode]}",
                    metric_config=mode,
                )
            )
    return results


def model_index(model_name: str, summaries: dict[str, dict]) -> list[dict]:
    """The `model-index` block for a model card's metadata."""
    return eval_results_to_model_index(model_name, eval_results(summaries))


def write_results(path, model_name: str, settings: dict, runs: list[dict]) -> dict:
    """Write (and return) the results file: settings, per-benchmark summaries, model-index and every prediction."""
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
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return document
