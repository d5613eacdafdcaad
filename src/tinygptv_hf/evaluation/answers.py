"""From a raw generation to the text each scoring rule compares.

`original_cleanup` is what the original's `generate()` already did to every output (LLaMA leftovers included);
the paper rules start from it. `harness_answer` adds the benchmark scripts' cut at the end symbol and after
`Assistant:`; the standard rules and the saved `answer` start from that. (The processor's `clean_answer` is the
chat's rule instead: cut at the checkpoint's own end symbol, which is a newline in stages 1-2, and strip.)
"""

import re

from ..processors.templates import END_SYMBOL
from .vqa_normalization import normalize_answer

# The original harness's box rule: one brace group of four numbers, nothing else inside.
BOX_PATTERN = re.compile(r"\{<(\d{1,3})><(\d{1,3})><(\d{1,3})><(\d{1,3})>\}")


def original_cleanup(text: str) -> str:
    """Cut at `</s>`, drop `<s>`, keep what follows the last `[/INST]`, strip."""
    return text.split("</s>")[0].replace("<s>", "").split("[/INST]")[-1].strip()


def harness_answer(text: str) -> str:
    """The answer as the original's benchmark scripts cut it: after `original_cleanup`, before `###` and after any
    echoed `Assistant:`."""
    return original_cleanup(text).split(END_SYMBOL)[0].split("Assistant:")[-1].strip()


def first_word(text: str) -> str:
    """First word of the normalised answer ("" when there is none)."""
    words = normalize_answer(text).split()
    return words[0] if words else ""


def parse_binary(word: str, positive: tuple[str, ...], negative: tuple[str, ...]) -> int | None:
    """1 or 0 when the word is one of the accepted forms, None otherwise (counted wrong)."""
    if word in positive:
        return 1
    if word in negative:
        return 0
    return None


def box_iou(first, second, inclusive: bool = False) -> float:
    """Intersection over union of two corner boxes; `inclusive` adds 1 to every side as pixel counts do."""
    extra = 1 if inclusive else 0
    inter_w = max(0, min(first[2], second[2]) - max(first[0], second[0]) + extra)
    inter_h = max(0, min(first[3], second[3]) - max(first[1], second[1]) + extra)
    intersection = inter_w * inter_h
    area_first = (first[2] - first[0] + extra) * (first[3] - first[1] + extra)
    area_second = (second[2] - second[0] + extra) * (second[3] - second[1] + extra)
    union = area_first + area_second - intersection
    return intersection / union if union > 0 else 0.0
