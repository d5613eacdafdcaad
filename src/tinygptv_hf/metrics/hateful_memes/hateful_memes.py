"""Hateful Memes accuracy, and AUROC in standard mode; references are the labels, 1 = hateful.

paper: "yes" anywhere in the lower-cased answer means hateful, else "no" anywhere means not hateful (so "not",
"know" or "nothing" read as "no"), else the sample is wrong. standard: the first word must be yes or no; given
`yes_probabilities` (each item's P(yes) / (P(yes) + P(no)) at the answer position), the result also holds
`roc_auc`, the challenge's main metric (None when the labels are all one class).
"""

import datasets

from tinygptv_hf.evaluation.answers import first_word, harness_answer, parse_binary
from tinygptv_hf.evaluation.auroc import roc_auc
from tinygptv_hf.evaluation.metric_base import BenchmarkMetric


class HatefulMemes(BenchmarkMetric):
    """Hateful Memes accuracy (paper: yes/no substrings; standard: first word yes/no, and AUROC)."""

    reference_feature = datasets.Value("int64")

    def _compute(self, predictions, references, yes_probabilities=None):
        result = super()._compute(predictions, references)
        if yes_probabilities is None:
            return result
        if self.config_name != "standard":
            raise ValueError("AUROC is scored in standard mode only; the original harness reports accuracy.")
        if len(yes_probabilities) != len(references):
            raise ValueError(f"{len(yes_probabilities)} yes_probabilities for {len(references)} references.")
        both_classes = len(set(references)) == 2
        result["roc_auc"] = roc_auc(references, yes_probabilities) if both_classes else None
        return result

    @staticmethod
    def paper_score(prediction, reference):
        answer = harness_answer(prediction).lower()
        label = 1 if "yes" in answer else 0 if "no" in answer else None
        return label == reference

    @staticmethod
    def standard_score(prediction, reference):
        return parse_binary(first_word(harness_answer(prediction)), ("yes",), ("no",)) == reference
