"""GQA accuracy.

paper: hit when the ground-truth answer is a substring of the lower-cased generation, which is not cut at the
end symbol ("no" in "not sure###Human: no" counts). standard: exact match of the normalised answer (GQA's rule).
"""

from tinygptv_hf.evaluation.answers import harness_answer, original_cleanup
from tinygptv_hf.evaluation.metric_base import BenchmarkMetric
from tinygptv_hf.evaluation.vqa_normalization import normalize_answer


class Gqa(BenchmarkMetric):
    """GQA accuracy (paper: substring of the untruncated output; standard: normalised exact match)."""

    @staticmethod
    def paper_score(prediction, reference):
        return reference in original_cleanup(prediction).lower()

    @staticmethod
    def standard_score(prediction, reference):
        return normalize_answer(harness_answer(prediction)) == normalize_answer(reference)
