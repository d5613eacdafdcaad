"""IconQA (choose_txt) accuracy of likelihood ranking; predictions and references are choice indices.

Both modes are exact match: the quirk of the original lies in the ranking (a batch-mean loss), not in the rule,
and the harness ranks with per-sample losses in both modes.
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
