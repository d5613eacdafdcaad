"""VizWiz VQA accuracy; references are the ten annotators' answers.

paper: the answers are joined with "_" and split again, then each counts when it equals the answer or either
contains the other (case-insensitive); min(count / 3, 1). An empty answer is a substring of every reference
and so scores 1. standard: the VQA accuracy on normalised answers (VizWiz's official rule).
"""

import datasets

from tinygptv_hf.evaluation.answers import clean_answer
from tinygptv_hf.evaluation.metric_base import BenchmarkMetric
from tinygptv_hf.evaluation.vqa_normalization import normalize_answer, vqa_accuracy


class Vizwiz(BenchmarkMetric):
    """VizWiz accuracy (paper: lenient substring count; standard: VQA accuracy)."""

    reference_feature = datasets.Sequence(datasets.Value("string"))

    @staticmethod
    def paper_score(prediction, reference):
        answer = clean_answer(prediction).lower()
        truths = [truth.lower() for truth in "_".join(reference).split("_")]
        count = sum(truth == answer or truth in answer or answer in truth for truth in truths)
        return min(count / 3.0, 1.0)

    @staticmethod
    def standard_score(prediction, reference):
        return vqa_accuracy(
            normalize_answer(clean_answer(prediction)), [normalize_answer(r) for r in reference]
        )
