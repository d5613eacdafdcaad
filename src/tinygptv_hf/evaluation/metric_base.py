"""The shared shape of the benchmark metrics shipped in `tinygptv_hf/metrics/`, and their offline loading.

Every metric is an `evaluate` module with two configurations: `paper` applies the original harness's rule,
quirks included, and `standard` the benchmark's official rule. Each returns the accuracy in percent and the
per-sample scores, so a results file can show why every answer counted.
"""

from abc import ABCMeta, abstractmethod
from pathlib import Path

import datasets
import evaluate

MODES = ("paper", "standard")
METRICS_DIR = Path(__file__).resolve().parent.parent / "metrics"

_INPUTS = """
Args:
    predictions: raw generations (or, for likelihood ranking, the chosen choice index).
    references: the benchmark's ground truth for each prediction.
    yes_probabilities: (Hateful Memes, standard mode only) each item's P(yes) / (P(yes) + P(no)).
Returns:
    accuracy: mean per-sample score in percent (a paper-mode VSR sample can score 2, so it can exceed 100).
    scores: the per-sample scores.
    roc_auc: (Hateful Memes, given yes_probabilities) the area under the ROC curve, 0 to 1.
"""


class BenchmarkMetric(evaluate.Metric, metaclass=ABCMeta):
    """Accuracy over per-sample scores; `config_name` chooses `paper_score` or `standard_score`.

    Abstract, so that `evaluate.load`, which takes the first concrete metric class in a module's namespace,
    finds the benchmark's own subclass and not this imported base."""

    prediction_feature = datasets.Value("string")
    reference_feature = datasets.Value("string")

    def _info(self):
        if self.config_name not in MODES:
            raise ValueError(
                f"{type(self).__name__} needs config_name 'paper' or 'standard', got {self.config_name!r}; "
                "the two scoring modes are never mixed."
            )
        return evaluate.MetricInfo(
            description=type(self).__doc__,
            citation="",
            inputs_description=_INPUTS,
            features=datasets.Features(
                {"predictions": self.prediction_feature, "references": self.reference_feature}
            ),
        )

    def _compute(self, predictions, references):
        rule = self.paper_score if self.config_name == "paper" else self.standard_score
        pairs = zip(predictions, references, strict=True)
        scores = [float(rule(prediction, reference)) for prediction, reference in pairs]
        accuracy = 100.0 * sum(scores) / len(scores) if scores else 0.0
        return {"accuracy": accuracy, "scores": scores}

    @staticmethod
    @abstractmethod
    def paper_score(prediction, reference) -> float:
        """The original harness's rule for one sample."""

    @staticmethod
    @abstractmethod
    def standard_score(prediction, reference) -> float:
        """The benchmark's official rule for one sample."""


def load_metric(name: str, mode: str) -> evaluate.EvaluationModule:
    """Load a shipped metric from its local folder (works offline; the Hub is never asked)."""
    if mode not in MODES:
        raise ValueError(f"Unknown scoring mode {mode!r}; choose from {', '.join(MODES)}.")
    path = METRICS_DIR / name
    if not (path / f"{name}.py").is_file():
        raise FileNotFoundError(f"No metric module {name!r} in {METRICS_DIR}.")
    return evaluate.load(str(path), config_name=mode, keep_in_memory=True)
