"""RefCOCO / RefCOCO+ / RefCOCOg referring-expression accuracy (IoU > 0.5).

References hold the COCO box `[x, y, w, h]` in pixels and the image `width` and `height`; the generated box is in
the 0-100 convention `{<x1><y1><x2><y2>}`. paper: the answer with spaces removed must start with such a box and
contain exactly four numbers (any more made the original's unpacking fail); IoU counts pixels inclusively (+1).
standard: the first box at the start of the cleaned answer, plain IoU.
"""

import re

import datasets

from tinygptv_hf.evaluation.answers import BOX_PATTERN, box_iou, harness_answer, original_cleanup
from tinygptv_hf.evaluation.metric_base import BenchmarkMetric
from tinygptv_hf.grounding import corners_to_box, xywh_to_box


class Refcoco(BenchmarkMetric):
    """Referring-expression box accuracy (paper: inclusive-pixel IoU; standard: plain IoU)."""

    reference_feature = {
        "bbox": datasets.Sequence(datasets.Value("float64")),
        "width": datasets.Value("int64"),
        "height": datasets.Value("int64"),
    }

    @staticmethod
    def paper_score(prediction, reference):
        answer = original_cleanup(prediction).replace("<unk>", "").replace(" ", "").strip()
        numbers = [int(number) for number in re.findall(r"\d+", answer)]
        if not BOX_PATTERN.match(answer) or len(numbers) != 4:
            return False
        box = corners_to_box(numbers, reference["width"], reference["height"])
        return box_iou(box, xywh_to_box(reference["bbox"]), inclusive=True) > 0.5

    @staticmethod
    def standard_score(prediction, reference):
        match = BOX_PATTERN.match(harness_answer(prediction).replace(" ", ""))
        if match is None:
            return False
        box = corners_to_box(
            [int(number) for number in match.groups()], reference["width"], reference["height"]
        )
        return box_iou(box, xywh_to_box(reference["bbox"])) > 0.5
