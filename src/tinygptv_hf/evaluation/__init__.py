"""The evaluation harness: the paper's benchmarks read from their released files, prompted and decoded as the
original harness did, and scored twice, by the original's rules (`paper`) and by the official ones (`standard`).

Running and scoring need `evaluate` and `datasets`; they are imported on first use so that the `tinygptv` command
line stays quick for every other subcommand.
"""

import importlib

from .answers import harness_answer, original_cleanup
from .auroc import roc_auc
from .benchmarks import BENCHMARKS, PAPER_BENCHMARKS, Benchmark, parse_benchmarks, result_key
from .prediction_log import PredictionLog
from .preflight import load_benchmarks
from .prompts import generation_prompt, ranking_prompt
from .samples import Sample

_LAZY = {
    "METRICS_DIR": "metric_base",
    "MODES": "metric_base",
    "BenchmarkMetric": "metric_base",
    "load_metric": "metric_base",
    "eval_results": "results",
    "model_index": "results",
    "write_results": "results",
    "RANKING_END_SYMBOLS": "runner",
    "benchmark_result": "runner",
    "choice_losses": "runner",
    "evaluate_benchmark": "runner",
    "generate_answers": "runner",
    "mode_images": "runner",
    "predict": "runner",
    "predict_batches": "runner",
    "score": "runner",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BENCHMARKS",
    "PAPER_BENCHMARKS",
    "Benchmark",
    "PredictionLog",
    "Sample",
    "harness_answer",
    "generation_prompt",
    "load_benchmarks",
    "original_cleanup",
    "parse_benchmarks",
    "ranking_prompt",
    "result_key",
    "roc_auc",
    *_LAZY,
]
