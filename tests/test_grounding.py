"""The box helper on every answer form the original produces, on malformed text, and on images of any shape."""

import pytest
from PIL import Image

from tinygptv_hf.grounding import (
    PALETTE,
    GroundedBox,
    box_colours,
    box_to_corners,
    boxes_to_text,
    corners_to_box,
    corners_to_text,
    draw_boxes,
    parse_grounded_text,
    phrase_with_boxes,
    xywh_to_box,
    xywh_to_corners,
    xywh_to_text,
)

SIZES = [(100, 100), (640, 480), (480, 640), (1000, 50), (37, 911), (1, 1)]


def corners(text, width=100, height=100):
    return [(item.phrase, item.normalized) for item in parse_grounded_text(text, width, height)]


def test_refer_answer_single_box():
    assert corners("{<12><34><56><78>}") == [(None, (12, 34, 56, 78))]


def test_phrase_and_box():
    assert corners("<p>a red square</p> {<10><20><30><40>}") == [("a red square", (10, 20, 30, 40))]


def test_several_boxes_of_one_phrase_share_it():
    text = "<p>two cups</p> {<0><0><10><10><delim><50><60><70><80><delim><90><90><100><100>}"
    assert corners(text) == [
        ("two cups", (0, 0, 10, 10)),
        ("two cups", (50, 60, 70, 80)),
        ("two cups", (90, 90, 100, 100)),
    ]


def test_grounded_caption_with_several_phrases():
    text = (
        "<p>A man</p> {<5><10><40><95>} is walking <p>a dog</p> {<45><60><70><95>} past "
        "<p>two trees</p> {<75><0><85><50><delim><88><0><99><55>}."
    )
    assert corners(text) == [
        ("A man", (5, 10, 40, 95)),
        ("a dog", (45, 60, 70, 95)),
        ("two trees", (75, 0, 85, 50)),
        ("two trees", (88, 0, 99, 55)),
    ]


def test_a_phrase_belongs_only_to_the_next_brace_group():
    assert corners("<p>cat</p> {<1><2><3><4>} and {<5><6><7><8>}") == [
        ("cat", (1, 2, 3, 4)),
        (None, (5, 6, 7, 8)),
    ]


def test_whitespace_inside_a_box_and_the_end_symbol_after_it():
    assert corners("<p> cat </p>{ <1> <2><3> <4> }###") == [("cat", (1, 2, 3, 4))]


def test_pixels_scale_with_width_and_height():
    (item,) = parse_grounded_text("<p>x</p> {<10><20><50><100>}", 640, 480)
    assert item == GroundedBox("x", (64.0, 96.0, 320.0, 480.0), (10, 20, 50, 100))


@pytest.mark.parametrize(
    "text",
    [
        "",
        "no boxes here",
        "<10><20><30><40>",  # no braces
        "{<10><20><30><40>",  # brace not closed
        "<10><20><30><40>}",  # brace not opened
        "{10 20 30 40}",  # no angle brackets
        "{<10><20><30>}",  # three numbers
        "{<10><20><30><40><50>}",  # five numbers
        "{<10><20><30><101>}",  # over 100
        "{<10><20><30><1000>}",
        "{<-5><20><30><40>}",  # negative
        "{<1.5><20><30><40>}",  # not an integer
        "{<50><20><30><40>}",  # x1 > x2
        "{<10><50><30><40>}",  # y1 > y2
        "{<a><b><c><d>}",
        "<p>dangling phrase</p>",
        "{}",
        "{<delim>}",
    ],
)
def test_malformed_text_gives_no_box(text):
    assert parse_grounded_text(text, 320, 240) == []


def test_malformed_parts_are_skipped_and_good_ones_kept():
    text = "<p>a</p> {<1><2><3>} <p>b</p> {<10><10><20><20><delim><1><2><300><4><delim><30><30><40><40>} {<9><9><9><9>"
    assert corners(text) == [("b", (10, 10, 20, 20)), ("b", (30, 30, 40, 40))]


def test_invalid_image_size_is_an_error():
    with pytest.raises(ValueError, match="positive"):
        parse_grounded_text("{<1><2><3><4>}", 0, 10)


@pytest.mark.parametrize("width,height", SIZES)
def test_text_and_pixels_round_trip_for_every_aspect_ratio(width, height):
    for normalized in [(0, 0, 100, 100), (7, 13, 29, 71), (33, 1, 67, 99), (50, 50, 50, 50)]:
        text = boxes_to_text([_pixels(normalized, width, height)], width, height, "it")
        (item,) = parse_grounded_text(text, width, height)
        assert item.normalized == normalized
        assert item.box == pytest.approx(_pixels(normalized, width, height))


def _pixels(normalized, width, height):
    x1, y1, x2, y2 = normalized
    return (x1 * width / 100, y1 * height / 100, x2 * width / 100, y2 * height / 100)


def test_box_text_forms():
    assert boxes_to_text([(64, 48, 320, 480)], 640, 480) == "{<10><10><50><100>}"
    assert boxes_to_text([(0, 0, 10, 10), (50, 50, 100, 100)], 100, 100, "two") == (
        "<p>two</p> {<0><0><10><10><delim><50><50><100><100>}"
    )
    assert corners_to_text([(1, 2, 3, 4), (5, 6, 7, 8)]) == "{<1><2><3><4><delim><5><6><7><8>}"
    assert phrase_with_boxes("a dog", [(1, 2, 3, 4)]) == "<p>a dog</p> {<1><2><3><4>}"
    with pytest.raises(ValueError, match="at least one box"):
        boxes_to_text([], 100, 100)
    with pytest.raises(ValueError, match="at least one box"):
        corners_to_text([])


def test_box_to_corners_truncates_like_the_training_data_and_clamps():
    assert box_to_corners((19.9, 0.99, 99.9, 100), 100, 100) == (19, 0, 99, 100)
    assert box_to_corners((-20, -1, 700, 120), 640, 100) == (0, 0, 100, 100)


def test_xywh_text_truncates_on_the_0_100_grid_of_the_original_size():
    assert xywh_to_text([10, 20, 30, 40], 200, 100) == "{<5><20><20><60>}"
    # 199/200*100 = 99.5 and 199.9/200*100 = 99.95: truncated, never rounded
    assert xywh_to_corners([199, 0.9, 0.9, 98.9], 200, 100) == (99, 0, 99, 99)
    assert xywh_to_text([0, 0, 640, 480], 640, 480) == "{<0><0><100><100>}"
    # The original's order, x / W * 100: 0.29 * 100 is 28.999999999999996, so 29 px of 100 is box 28.
    assert xywh_to_corners([29, 0, 0, 0], 100, 1) == (28, 0, 28, 0)


def test_pixel_box_forms():
    assert xywh_to_box([10, 20, 30, 40]) == (10, 20, 40, 60)
    assert corners_to_box((10, 20, 50, 100), 640, 480) == (64.0, 96.0, 320.0, 480.0)


def test_colours_per_phrase():
    boxes = parse_grounded_text(
        "<p>a</p> {<1><1><2><2><delim><3><3><4><4>} <p>b</p> {<5><5><6><6>} {<7><7><8><8>}", 10, 10
    )
    colours = box_colours(boxes)
    assert colours[0] == colours[1]
    assert len({colours[1], colours[2], colours[3]}) == 3


@pytest.mark.parametrize("width,height", [(640, 480), (480, 640), (1000, 120), (64, 64)])
def test_drawn_boxes_are_where_the_text_says(width, height):
    grey = (128, 128, 128)
    image = Image.new("RGB", (width, height), grey)
    boxes = parse_grounded_text(
        "<p>left</p> {<10><20><40><80>} <p>right</p> {<55><10><95><90>}", width, height
    )
    drawn = draw_boxes(image, boxes)
    assert drawn.size == image.size and image.getpixel((0, 0)) == grey  # the input is left alone
    for item, colour in zip(boxes, box_colours(boxes), strict=True):
        x1, y1, x2, y2 = (round(value) for value in item.box)
        middle_x, middle_y = (x1 + x2) // 2, (y1 + y2) // 2
        assert drawn.getpixel((x1, middle_y)) == colour  # left edge
        assert drawn.getpixel((x2 - 1, middle_y)) == colour  # right edge
        assert drawn.getpixel((middle_x, y2 - 1)) == colour  # bottom edge
        assert drawn.getpixel((middle_x, middle_y)) == grey  # an outline, not a fill
        assert drawn.getpixel((x1 - 1, middle_y)) == (255, 255, 255)  # the rim that keeps it visible
    assert len(set(box_colours(boxes))) == 2 and set(box_colours(boxes)) <= set(PALETTE)


def test_drawing_accepts_any_mode_and_no_boxes():
    image = Image.new("L", (30, 20), 7)
    assert draw_boxes(image, []).mode == "RGB"
    corner = parse_grounded_text("<p>a label far wider than the box</p>{<90><90><100><100>}", 50, 40)
    assert draw_boxes(Image.new("RGBA", (50, 40)), corner).size == (50, 40)
