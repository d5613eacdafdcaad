"""OK-VQA accuracy; references are the ten annotators' answers.

paper: the script lower-cases before cutting after "Assistant:" (so that cut never happens), then the VQA
evaluation it calls normalises only when the annotators disagree and compares case-insensitively.
standard: the VQA accuracy with the prediction and every reference always normalised.
"""

import datasets

from tinygptv_hf.evaluation.answers import harness_answer, original_cleanup
from tinygptv_hf.evaluation.metric_base import BenchmarkMetric
from tinygptv_hf.evaluation.vqa_normalization import normalize_answer, strip_whitespace, vqa_accuracy


class Okvqa(BenchmarkMetric):
    """OK-VQA accuracy (paper: the original script with its VQA evaluation; standard: normalised VQA accuracy)."""

    reference_feature = datasets.Sequence(datasets.Value("string"))

    @staticmethod
    def paper_score(prediction, reference):
        answer = original_cleanup(prediction).lower().replace("<unk>", "").strip()
        answer = strip_whitespace(answer.split("###")[0].split("Assistant:")[-1])
        truths = [strip_whitespace(truth) for truth in reference]
        if len(set(truths)) > 1:
            truths = [normalize_answer(truth) for truth in truths]
            answer = normalize_answer(answer)
        return vqa_accuracy(answer.lower(), [truth.lower() for truth in truths])

    @staticmethod
    def standard_score(prediction, reference):
        return vqa_accuracy(
            normalize_answer(harness_answer(prediction)), [normalize_answer(r) for r in reference]
        )
