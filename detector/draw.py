"""Drawing detections on images (labelled boxes), for `detect --out`."""
from __future__ import annotations

import colorsys

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def _colour(label: int) -> tuple[int, int, int]:
    """A distinct, stable colour per class (golden-ratio hue steps)."""
    red, green, blue = colorsys.hsv_to_rgb((label * 0.618033988749895) % 1.0, 0.85, 0.95)
    return int(red * 255), int(green * 255), int(blue * 255)


def draw_detections(image: np.ndarray, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray,
                    names: list[str]) -> Image.Image:
    """The RGB image [H, W, 3] with each box [D, 4] outlined and captioned "name score"."""
    canvas = Image.fromarray(image)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    width = max(2, round(max(canvas.size) / 250))
    for box, score, label, name in sorted(zip(boxes, scores, labels, names), key=lambda d: d[1]):
        colour = _colour(int(label))
        x1, y1, x2, y2 = (float(v) for v in box)
        draw.rectangle([x1, y1, x2, y2], outline=colour, width=width)
        caption = f"{name} {score:.2f}"
        left, top, right, bottom = draw.textbbox((x1, y1), caption, font=font)
        lift = bottom - top + 4 if y1 - (bottom - top) - 4 >= 0 else 0
        draw.rectangle([left, top - lift, right + 4, bottom - lift + 4], fill=colour)
        draw.text((x1 + 2, y1 - lift + 2), caption, fill=(0, 0, 0), font=font)
    return canvas
