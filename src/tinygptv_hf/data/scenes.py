"""A tiny visual world for the demo: one to three big coloured shapes on a pale background, and the language
about it (captions, descriptions, questions, referring expressions, grounded captions).

Every image holds distinct colours and distinct shapes, so "the red circle", "what colour is the square?" and
"what shape is the blue object?" always have exactly one answer; VQA answers come from a closed set of 14 words.
Shapes sit in the cells of a 3x3 grid, so "top left" names exactly one place and a box is one of nine, and they
cover whole squares of an 8x8 grid: the demo model's 28-px patches at 224 px.
"""

import io
import random
import re
from dataclasses import dataclass

from PIL import Image, ImageDraw

from ..grounding import phrase_with_boxes, xywh_to_corners

COLOURS = {"red": (215, 40, 40), "green": (35, 160, 60), "blue": (40, 80, 215), "yellow": (235, 200, 25)}
SHAPES = ("circle", "square", "triangle")
BACKGROUNDS = {
    "white": (250, 250, 250),
    "grey": (200, 200, 200),
    "cream": (245, 230, 200),
    "pale pink": (250, 215, 225),
}
COUNT_WORDS = {1: "1", 2: "2", 3: "3"}
GRID = 3
# The image is divided into SQUARES x SQUARES squares (the demo model's patches at 224 px: 28 px); a shape covers
# SHAPE_SQUARES x SHAPE_SQUARES of them and the grid's cells start every CELL_SQUARES squares.
SQUARES = 8
SHAPE_SQUARES = 2
CELL_SQUARES = 3
QUESTION_TYPES = ("colour", "shape", "count", "exist", "position")
VQA_ANSWERS = (*COLOURS, *SHAPES, *COUNT_WORDS.values(), "yes", "no", "left", "right")


@dataclass(frozen=True)
class Shape:
    colour: str
    kind: str
    box: tuple[int, int, int, int]  # x, y, width, height in pixels

    @property
    def name(self) -> str:
        return f"{self.colour} {self.kind}"

    @property
    def centre(self) -> tuple[float, float]:
        x, y, w, h = self.box
        return x + w / 2, y + h / 2


@dataclass(frozen=True)
class Scene:
    image_id: int
    size: int
    background: str
    shapes: tuple[Shape, ...]


def make_scene(rng: random.Random, image_id: int, size: int = 224) -> Scene:
    """A random scene: each shape a quarter of the side wide, in its own cell of a 3x3 grid, its edges on the
    lines of the 8x8 squares.

    Fixed places make every box coordinate one of three numbers: with free placement each was a 101-way guess
    that the demo's two-layer model never learned in its minutes (12% of boxes at IoU >= 0.5). Edges on the
    patch lines make a shape look the same to the patch embedding in every cell: centred in the cells instead
    (28% of the side), each cell cut the shapes differently, and stage 1 named the right colour-shape pairs of
    held-out scenes only 71% of the time (100% aligned; docs/demo-model.md).
    """
    count = rng.randint(1, 3)
    colours = rng.sample(list(COLOURS), count)
    kinds = rng.sample(SHAPES, count)
    square = size / SQUARES
    side = round(SHAPE_SQUARES * square)
    boxes = []
    for cell in rng.sample(range(GRID * GRID), count):
        column, row = cell % GRID, cell // GRID
        boxes.append((round(column * CELL_SQUARES * square), round(row * CELL_SQUARES * square), side, side))
    shapes = tuple(Shape(c, k, b) for c, k, b in zip(colours, kinds, boxes, strict=True))
    return Scene(image_id, size, rng.choice(list(BACKGROUNDS)), shapes)


def render(scene: Scene) -> bytes:
    """The scene as JPEG bytes (deterministic for a given scene)."""
    image = Image.new("RGB", (scene.size, scene.size), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(image)
    for shape in scene.shapes:
        x, y, w, h = shape.box
        fill = COLOURS[shape.colour]
        if shape.kind == "circle":
            draw.ellipse((x, y, x + w - 1, y + h - 1), fill=fill)
        elif shape.kind == "square":
            draw.rectangle((x, y, x + w - 1, y + h - 1), fill=fill)
        else:
            draw.polygon([(x + w / 2, y), (x + w - 1, y + h - 1), (x, y + h - 1)], fill=fill)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _place(shape: Shape, size: int) -> str:
    cx, cy = shape.centre
    row = ("top", "middle", "bottom")[min(2, int(3 * cy / size))]
    column = ("left", "centre", "right")[min(2, int(3 * cx / size))]
    return "centre" if row == "middle" and column == "centre" else f"{row} {column}".replace("middle ", "")


def _join(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def left_to_right(scene: Scene) -> list[Shape]:
    """Shapes in reading order, so a caption's word order follows from the image alone (every word learnable)."""
    return sorted(scene.shapes, key=lambda shape: shape.centre)


def caption(scene: Scene) -> str:
    """``a red circle in the top left and a blue square in the centre on a white background``: the places teach
    the vision side, in the stages that train it, where each shape is (later stages freeze it)."""
    shapes = [f"a {s.name} in the {_place(s, scene.size)}" for s in left_to_right(scene)]
    return f"{_join(shapes)} on a {scene.background} background"


NAMED_PAIR = re.compile(rf"\b({'|'.join(COLOURS)}) ({'|'.join(SHAPES)})\b")


def named_pairs(text: str) -> set[tuple[str, str]]:
    """The (colour, shape) pairs a text names, e.g. ``{("red", "circle")}`` for "a red circle in the centre"."""
    return set(NAMED_PAIR.findall(text.lower()))


def description(scene: Scene) -> str:
    number = ("one shape", "two shapes", "three shapes")[len(scene.shapes) - 1]
    parts = [f"The image shows {number} on a {scene.background} background."]
    parts += [f"A {s.name} is in the {_place(s, scene.size)}." for s in left_to_right(scene)]
    return " ".join(parts)


def referring_sentences(shape: Shape, scene: Scene) -> list[str]:
    return [f"the {shape.name}", f"{shape.name}", f"the {shape.name} in the {_place(shape, scene.size)}"]


def corners(shape: Shape, scene: Scene) -> tuple[int, int, int, int]:
    return xywh_to_corners(shape.box, scene.size, scene.size)


def grounded_caption(scene: Scene) -> str:
    """``<p>red circle</p> {<x1><y1><x2><y2>}`` for each shape, in the Flickr grounded-caption style."""
    phrases = [phrase_with_boxes(f"a {s.name}", [corners(s, scene)]) for s in left_to_right(scene)]
    return f"{_join(phrases)} on a {scene.background} background"


def questions(scene: Scene, rng: random.Random, every_lookup: bool = False) -> list[tuple[str, str, str]]:
    """``(question_type, question, answer)``: one of each type the scene allows (held-out sets).

    `every_lookup` (training sets) asks the colour of every shape, the shape of every colour and whether a
    present and an absent colour-shape pair is there. Looking a colour up by its shape is the one thing no caption
    teaches (they name colours first): with one such question per scene, the demo's stage 4 answered 57% of
    held-out colour questions; with these, 74% (seed 2, same steps; docs/demo-model.md).
    """
    asked = scene.shapes if every_lookup else (rng.choice(scene.shapes),)
    out = [("colour", f"What colour is the {shape.kind}?", shape.colour) for shape in asked]
    out += [("shape", f"What shape is the {shape.colour} object?", shape.kind) for shape in asked]
    out.append(("count", "How many shapes are there?", COUNT_WORDS[len(scene.shapes)]))
    for present in (True, False) if every_lookup else (rng.random() < 0.5,):
        if present:
            name = rng.choice(scene.shapes).name
        else:
            names = {s.name for s in scene.shapes}
            name = rng.choice([f"{c} {k}" for c in COLOURS for k in SHAPES if f"{c} {k}" not in names])
        out.append(("exist", f"Is there a {name}?", "yes" if present else "no"))
    if len(scene.shapes) > 1:
        a, b = rng.sample(scene.shapes, 2)
        if abs(a.centre[0] - b.centre[0]) >= a.box[2] / 2:
            side = "left" if a.centre[0] < b.centre[0] else "right"
            out.append(("position", f"Is the {a.name} left or right of the {b.name}?", side))
    return out
