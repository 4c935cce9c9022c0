"""Drawn detections: captions inside the image, sized with it, one colour per class."""
from __future__ import annotations

import numpy as np
import pytest

from eval.draw import caption_rect, class_colour, draw_detections, font_size, text_colour

WIDTH, HEIGHT = 200, 100


@pytest.mark.parametrize("box", [[0, 0, 50, 50], [170, 0, 200, 40], [0, 90, 30, 100], [150, 60, 200, 100],
                                 [195, 95, 200, 100], [0, 0, 200, 100]])
def test_captions_of_boxes_touching_the_edges_stay_inside(box):
    x0, y0, x1, y1 = caption_rect(np.array(box, np.float32), (60, 16), (WIDTH, HEIGHT))
    assert (x1 - x0, y1 - y0) == (60, 16)
    assert 0 <= x0 and x1 <= WIDTH and 0 <= y0 and y1 <= HEIGHT


def test_caption_goes_above_the_box_when_there_is_room_else_inside():
    assert caption_rect(np.array([50, 40, 100, 90]), (60, 16), (WIDTH, HEIGHT)) == (50, 24, 110, 40)
    assert caption_rect(np.array([50, 10, 100, 90]), (60, 16), (WIDTH, HEIGHT)) == (50, 10, 110, 26)
    assert caption_rect(np.array([20, 40, 100, 90]), (300, 16), (WIDTH, HEIGHT))[0] == 0  # wider than the image


def test_font_size_scales_with_the_shorter_side():
    assert font_size((451, 300)) == 12 and font_size((100, 60)) == 12
    assert font_size((1500, 1000)) == 40 and font_size((1000, 1500)) == 40


def test_each_class_has_its_own_colour_and_a_legible_text_colour():
    colours = [class_colour(label) for label in range(20)]
    assert len(set(colours)) == 20 and class_colour(3) == colours[3]
    assert text_colour((255, 255, 0)) == (0, 0, 0) and text_colour((20, 20, 200)) == (255, 255, 255)


def test_drawn_captions_are_filled_in_their_class_colour_inside_the_image():
    grey = 128
    image = np.full((HEIGHT * 4, WIDTH * 4, 3), grey, np.uint8)
    boxes = np.array([[700, 0, 800, 400], [0, 300, 100, 400]], np.float32)  # touching the right / bottom-left edges
    drawn = np.asarray(draw_detections(image, boxes, np.array([0.9, 0.6]), np.array([0, 1]), ["raccoon", "kangaroo"]))
    assert drawn.shape == image.shape
    size = font_size((WIDTH * 4, HEIGHT * 4))
    inside_right = drawn[:size, 800 - 3 * size:]  # inside the box's top, shifted to end at the right edge
    above_left = drawn[300 - size:300, :3 * size]  # above the box's top-left corner
    for region, label in ((inside_right, 0), (above_left, 1)):
        assert (region != grey).any(axis=-1).all(), f"class {label}: the image shows through its caption"
        assert (region == class_colour(label)).all(axis=-1).mean() > 0.3, f"class {label}: caption not in its colour"
