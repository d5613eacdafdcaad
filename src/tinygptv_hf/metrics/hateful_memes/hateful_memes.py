"""Hateful Memes accuracy; references are the labels, 1 = hateful.

paper: "yes" anywhere in the lower-cased answer means hateful, else "no" anywhere means not hateful (so "not",
"know" or "nothing" read as "no"), else the sample is wrong. standard: the first word must be yes or no.
"""

import datasets

from tinygptv_hf.evaluation.answers import clean_answer, first_word, parse_binary
from tinygptv_hf.evaluation.metric_base import BenchmarkMetric


class HatefulMemes(BenchmarkMetric):
    """Hateful Memes accuracy (paper: yes/no substrings; standard: first word yes/no)."""

    reference_feature = datasets.Value("int64")

    @staticmethod
    def paper_score(prediction, reference):
        answer = clean_answer(prediction).lower()
        label = 1 if "yes" in answer else 0 if "no" in answer else None
        return label == reference

    @staticmethod
    def standard_score(prediction, reference):
        return parse_binary(first_word(clean_answer(prediction)), ("yes",), ("no",)) == reference
