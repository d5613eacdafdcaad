"""IconQA (choose_txt) accuracy of likelihood ranking; predictions and references are choice indices.

Both modes are exact match: the modes differ in the ranking, not in the rule. The harness ranks each choice
followed by "\\n" in paper mode (the original's fallback end symbol) and by "###" in standard mode, with
per-sample losses in both (the original's batch-mean loss is only right at batch size 1).
"""

import datasets

from tinygptv_hf.evaluation.metric_base import BenchmarkMetric


class Iconqa(BenchmarkMetric):
    """IconQA accuracy: the lowest-loss choice is the answer."""

    prediction_feature = datasets.Value("int64")
    reference_feature = datasets.Value("int64")

    @staticmethod
    def paper_score(prediction, reference):
        return prediction == reference

    standard_score = paper_score
