"""Caption scores for the demo's world, where every caption names its shapes' colour-shape pairs."""

import re

from ..data.scenes import named_pairs


def word_f1(prediction: str, reference: str) -> float:
    """F1 of the words two captions share (SQuAD's token F1, lower-cased)."""
    predicted, expected = re.findall(r"\w+", prediction.lower()), re.findall(r"\w+", reference.lower())
    common = sum(min(predicted.count(word), expected.count(word)) for word in set(expected))
    if not common:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


def pair_f1(prediction: str, reference: str) -> float:
    """F1 of the colour-shape pairs a caption names against the reference's: where word F1 scores "a blue circle
    and a red square" as perfect for "a red circle and a blue square", this scores it 0."""
    predicted, expected = named_pairs(prediction), named_pairs(reference)
    named = len(predicted) + len(expected)
    return 2 * len(predicted & expected) / named if named else 1.0
