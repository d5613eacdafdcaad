"""VizWiz VQA accuracy; references are the ten annotators' answers.

paper: the answers are joined with "_" and split again, then each counts when it equals the answer or either
contains the other (case-insensitive); min(count / 3, 1). An empty answer is a substring of every reference
and so scores 1. standard: what `VQAEval.evaluate` of the VizWiz API's `vqaEval.py` does. Only the answer is
normalised (VQA punctuation rule, number words, articles, the official contraction table with its "don’t");
the references are compared exactly as written, so "Coca-Cola" or "Coke" never match any answer; the accuracy is
min(1, matches / 3) over the ten leave-one-out subsets, averaged.
"""

import datasets

from tinygptv_hf.evaluation.answers import harness_answer
from tinygptv_hf.evaluation.metric_base import BenchmarkMetric
from tinygptv_hf.evaluation.vqa_normalization import OFFICIAL_CONTRACTIONS, normalize_answer, vqa_accuracy


class Vizwiz(BenchmarkMetric):
    """VizWiz accuracy (paper: lenient substring count; standard: the VizWiz evaluation script's rule)."""

    reference_feature = datasets.Sequence(datasets.Value("string"))

    @staticmethod
    def paper_score(prediction, reference):
        answer = harness_answer(prediction).lower()
        truths = [truth.lower() for truth in "_".join(reference).split("_")]
        count = sum(truth == answer or truth in answer or answer in truth for truth in truths)
        return min(count / 3.0, 1.0)

    @staticmethod
    def standard_score(prediction, reference):
        return vqa_accuracy(
            normalize_answer(harness_answer(prediction), OFFICIAL_CONTRACTIONS), list(reference)
        )
