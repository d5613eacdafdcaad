"""Boxes in the original's answer text: their geometry, parsing them into pixels, writing them back, drawing them.

The stage-4 format (MiniGPT-v2's convention, docs/original-differences.md#task-identifiers-and-boxes) puts
integer corners normalised to 0-100 of the image's width and height in braces, ``{<x1><y1><x2><y2>}``,
optionally after a phrase, ``<p>a dog</p> {<..><..><..><..>}``; several boxes of one phrase share the braces,
separated by ``<delim>``. The chat, the web demo and the evaluation harness all read answers through
`parse_grounded_text`, so a box means the same thing everywhere.

Names say the box format: a `box` is pixel corners ``(x1, y1, x2, y2)``, an `xywh` is pixels ``[x, y, w, h]`` (the
COCO and Visual Genome annotations), and `corners` are the integers of the text form on the 0-100 grid.

A model's text is not trusted: a part that does not follow the format exactly is skipped, never repaired, so the
parser never reports a box the model did not write.
"""

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

BOX_SCALE = 100
DELIMITER = "<delim>"

# One phrase or one brace group, in reading order. Braces must enclose no other brace to count as a group.
_TOKEN = re.compile(r"<p>(?P<phrase>.*?)</p>|\{(?P<boxes>[^{}]*)\}", re.DOTALL)
_BOX = re.compile(r"\s*<(\d{1,3})>\s*<(\d{1,3})>\s*<(\d{1,3})>\s*<(\d{1,3})>\s*")

# Saturated colours far apart in hue, readable on photos; cycled when there are more labels than colours.
PALETTE = (
    (230, 25, 75),
    (60, 180, 75),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (255, 225, 25),
    (128, 0, 0),
    (0, 0, 128),
)
WHITE = (255, 255, 255)


@dataclass(frozen=True)
class GroundedBox:
    """One box of an answer: the phrase it belongs to (None for a bare box), pixel corners and the 0-100 corners."""

    phrase: str | None
    box: tuple[float, float, float, float]
    normalized: tuple[int, int, int, int]


def parse_grounded_text(text: str, width: int, height: int) -> list[GroundedBox]:
    """Every well-formed box in `text`, in order, in pixels of a `width` x `height` image.

    A box takes the phrase written since the previous brace group. Skipped: braces that are not closed, a part
    without exactly four numbers in angle brackets, values over 100, and corners in the wrong order.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"Image size must be positive, got {width}x{height}.")
    boxes = []
    phrase = None
    for match in _TOKEN.finditer(text):
        if match.group("boxes") is None:
            phrase = match.group("phrase").strip() or None
            continue
        for part in match.group("boxes").split(DELIMITER):
            corners = _parse_corners(part)
            if corners is not None:
                boxes.append(GroundedBox(phrase, corners_to_box(corners, width, height), corners))
        phrase = None
    return boxes


def _parse_corners(part: str) -> tuple[int, int, int, int] | None:
    found = _BOX.fullmatch(part)
    if found is None:
        return None
    x1, y1, x2, y2 = (int(value) for value in found.groups())
    if max(x1, y1, x2, y2) > BOX_SCALE or x1 > x2 or y1 > y2:
        return None
    return x1, y1, x2, y2


def corners_to_box(corners: Sequence[int], width: float, height: float) -> tuple[float, float, float, float]:
    """0-100 corners to a pixel box of a `width` x `height` image (``x / 100 * W``, the original harness's order)."""
    x1, y1, x2, y2 = corners
    return (x1 / BOX_SCALE * width, y1 / BOX_SCALE * height, x2 / BOX_SCALE * width, y2 / BOX_SCALE * height)


def box_to_corners(box: Sequence[float], width: int, height: int) -> tuple[int, int, int, int]:
    """A pixel box to 0-100 corners, truncated like the training data, clamped to the image.

    The tiny epsilon keeps `parse_grounded_text` and this function exact inverses despite float rounding.
    """
    x1, y1, x2, y2 = box
    return tuple(  # type: ignore[return-value]
        min(BOX_SCALE, max(0, int(value * BOX_SCALE / size + 1e-6)))
        for value, size in ((x1, width), (y1, height), (x2, width), (y2, height))
    )


def xywh_to_corners(xywh: Sequence[float], width: float, height: float) -> tuple[int, int, int, int]:
    """A pixel ``[x, y, w, h]`` to 0-100 corners exactly as the original's training data: ``int(x / W * 100)``.

    The arithmetic order is the original's, so float rounding matches it too; nothing is clamped. (`box_to_corners`
    differs on purpose: it inverts `parse_grounded_text` exactly and clamps what a drawing tool may overshoot.)
    """
    x, y, w, h = (float(value) for value in xywh)
    return (
        int(x / width * BOX_SCALE),
        int(y / height * BOX_SCALE),
        int((x + w) / width * BOX_SCALE),
        int((y + h) / height * BOX_SCALE),
    )


def xywh_to_box(xywh: Sequence[float]) -> tuple[float, float, float, float]:
    x, y, w, h = xywh
    return (x, y, x + w, y + h)


def corners_to_text(corners: Iterable[Sequence[int]]) -> str:
    """Box text for one or more 0-100 corner tuples; several boxes of one phrase are joined by ``<delim>``."""
    inner = DELIMITER.join("<{}><{}><{}><{}>".format(*box) for box in corners)
    if not inner:
        raise ValueError("Box text needs at least one box.")
    return f"{{{inner}}}"


def phrase_with_boxes(phrase: str, corners: Iterable[Sequence[int]]) -> str:
    """A grounded phrase, ``<p>phrase</p> {<..><..><..><..>}``, from 0-100 corners."""
    return f"<p>{phrase}</p> {corners_to_text(corners)}"


def boxes_to_text(
    boxes: Iterable[Sequence[float]], width: int, height: int, phrase: str | None = None
) -> str:
    """Several pixel boxes of one object in one brace group, ``<p>phrase</p> `` in front when a phrase is given."""
    corners = [box_to_corners(box, width, height) for box in boxes]
    return corners_to_text(corners) if phrase is None else phrase_with_boxes(phrase, corners)


def xywh_to_text(xywh: Sequence[float], width: float, height: float) -> str:
    """``{<x1><y1><x2><y2>}`` for one pixel ``[x, y, w, h]``, as the original's `[refer]` answers and `[identify]`
    questions write it."""
    return corners_to_text([xywh_to_corners(xywh, width, height)])


def box_colours(boxes: Sequence[GroundedBox]) -> list[tuple[int, int, int]]:
    """Boxes of one phrase share a colour; every other phrase, and every bare box, gets the next one."""
    slots: dict[object, int] = {}
    keys = [item.phrase if item.phrase is not None else position for position, item in enumerate(boxes)]
    return [PALETTE[slots.setdefault(key, len(slots)) % len(PALETTE)] for key in keys]


def draw_boxes(image: Image.Image, boxes: Sequence[GroundedBox]) -> Image.Image:
    """A copy of `image` with each box outlined and labelled with its phrase, sized to the image."""
    canvas = image.convert("RGB")
    draw = ImageDraw.Draw(canvas)
    line = max(2, round(min(canvas.size) / 100))
    font = ImageFont.load_default(size=max(10, round(min(canvas.size) / 25)))
    for item, colour in zip(boxes, box_colours(boxes), strict=True):
        x1, y1, x2, y2 = item.box
        # White rims on both sides keep the outline visible on an object whose own edge has a similar colour.
        draw.rectangle((x1 - 1, y1 - 1, x2 + 1, y2 + 1), outline=WHITE, width=1)
        if x2 - x1 > 2 * line and y2 - y1 > 2 * line:
            draw.rectangle((x1 + line, y1 + line, x2 - line, y2 - line), outline=WHITE, width=1)
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=line)
        if item.phrase:
            _draw_label(draw, item.phrase, (x1, y1), colour, font, canvas.size)
    return canvas


def _draw_label(draw, text, corner, colour, font, size):
    """The label sits on the box's top edge, outside the box when there is room, always inside the image."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    label_width, label_height = right - left + 4, bottom - top + 4
    x = min(max(0, corner[0]), max(0, size[0] - label_width))
    y = corner[1] - label_height if corner[1] >= label_height else corner[1]
    y = min(y, max(0, size[1] - label_height))
    draw.rectangle((x, y, x + label_width, y + label_height), fill=colour)
    text_colour = (0, 0, 0) if sum(colour) > 450 else (255, 255, 255)
    draw.text((x + 2 - left, y + 2 - top), text, fill=text_colour, font=font)


__all__ = [
    "BOX_SCALE",
    "GroundedBox",
    "PALETTE",
    "box_colours",
    "box_to_corners",
    "boxes_to_text",
    "corners_to_box",
    "corners_to_text",
    "draw_boxes",
    "parse_grounded_text",
    "phrase_with_boxes",
    "xywh_to_box",
    "xywh_to_corners",
    "xywh_to_text",
]
