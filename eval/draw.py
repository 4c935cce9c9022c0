"""Drawing detections on images (labelled boxes), for `detect --out`."""
from __future__ import annotations

import colorsys

import numpy as np
from PIL import Image, ImageDraw, ImageFont

Rect = tuple[int, int, int, int]  #: x0, y0, x1, y1 in pixels


def class_colour(label: int) -> tuple[int, int, int]:
    """A distinct, stable RGB colour per class (golden-ratio hue steps)."""
    red, green, blue = colorsys.hsv_to_rgb((label * 0.618033988749895) % 1.0, 0.85, 0.95)
    return int(red * 255), int(green * 255), int(blue * 255)


def text_colour(background: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black on light backgrounds, white on dark ones (ITU-R BT.601 luma)."""
    red, green, blue = background
    return (0, 0, 0) if 0.299 * red + 0.587 * green + 0.114 * blue >= 128 else (255, 255, 255)


def font_size(image_size: tuple[int, int]) -> int:
    """Caption font size in pixels for an image of (width, height) pixels: 1/25 of the shorter side, at least 12."""
    return max(12, round(min(image_size) / 25))


def caption_rect(box: np.ndarray, caption_size: tuple[int, int], image_size: tuple[int, int]) -> Rect:
    """Where the caption of (width, height) px goes for a box [4] xyxy px in an image of (width,
    height) px: above the box's top-left corner, or just inside the box when there is no room above;
    shifted to lie inside the image (from its left / top edge when the caption is larger)."""
    width, height = caption_size
    x0 = _clamp(int(box[0]), 0, image_size[0] - width)
    y0 = _clamp(int(box[1]) - height if box[1] >= height else int(box[1]), 0, image_size[1] - height)
    return x0, y0, x0 + width, y0 + height


def _clamp(value: int, low: int, high: int) -> int:
    return max(low, min(value, high))


def draw_detections(image: np.ndarray, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray,
                    names: list[str]) -> Image.Image:
    """The RGB image [H, W, 3] with each box [D, 4] xyxy px outlined in its class colour and captioned
    "name score" on a filled label inside the image; higher scores are drawn on top."""
    canvas = Image.fromarray(image)
    draw = ImageDraw.Draw(canvas)
    size = font_size(canvas.size)
    font = ImageFont.load_default(size=size)
    line = max(2, round(min(canvas.size) / 200))
    order = np.argsort(scores, kind="stable")
    for index in order:
        draw.rectangle([float(v) for v in boxes[index]], outline=class_colour(int(labels[index])), width=line)
    for index in order:
        caption = f"{names[index]} {scores[index]:.2f}"
        _caption(draw, font, size // 5, boxes[index], caption, class_colour(int(labels[index])), canvas.size)
    return canvas


def _caption(draw: ImageDraw.ImageDraw, font: ImageFont.FreeTypeFont, pad: int, box: np.ndarray, text: str,
             colour: tuple[int, int, int], image_size: tuple[int, int]) -> None:
    """`text` on a filled `colour` label with `pad` px margins at caption_rect(box)."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    rect = caption_rect(box, (right - left + 2 * pad, bottom - top + 2 * pad), image_size)
    draw.rectangle([rect[0], rect[1], rect[2] - 1, rect[3] - 1], fill=colour)
    draw.text((rect[0] + pad - left, rect[1] + pad - top), text, fill=text_colour(colour), font=font)
