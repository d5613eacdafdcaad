"""VSR (zero-shot split) accuracy; references are the dataset's labels, 1 = the caption is true.

paper (eval_scripts/eval_vqa.py): one point when "true"/"false" is a substring of the lower-cased, untruncated
generation and one more when "yes"/"no" is, so a sample can score 2 and the accuracy can exceed 100.
standard: the answer's first word must be true/yes or false/no and agree with the label.
"""

import datasets

from tinygptv_hf.evaluation.answers import first_word, harness_answer, original_cleanup, parse_binary
from tinygptv_hf.evaluation.metric_base import BenchmarkMetric


class Vsr(BenchmarkMetric):
    """VSR accuracy (paper: true/false and yes/no substrings, double counting; standard: first word)."""

    reference_feature = datasets.Value("int64")

    @staticmethod
    def paper_score(prediction, reference):
        text = original_cleanup(prediction).lower()
        word, synonym = ("true", "yes") if reference == 1 else ("false", "no")
        return (word in text) + (synonym in text)

    @staticmethod
    def standard_score(prediction, reference):
        return (
            parse_binary(first_word(harness_answer(prediction)), ("true", "yes"), ("false", "no"))
            == reference
        )
