"""Box operations on tensors, built on torchvision.ops (file-format conversions: detector.data.box_formats).

Convention: float ``xyxy`` boxes in pixels with continuous coordinates (torchvision's), so a box
covering VOC's 1-based inclusive pixels ``xmin..xmax`` is ``[xmin - 1, xmax]`` and its width is
``xmax - xmin + 1`` exactly as the devkits count it.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torchvision import ops

#: Fast R-CNN's delta normalisation: deltas are divided by (0.1, 0.1, 0.2, 0.2).
DEFAULT_DELTA_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
#: Largest log-scale change applied when decoding, as in torchvision (avoids exp overflow).
MAX_LOG_SCALE = math.log(1000.0 / 16)


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """IoU matrix [N, M] between boxes [N, 4] and [M, 4] (xyxy)."""
    return ops.box_iou(boxes1, boxes2)


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """Areas [N] in square pixels of boxes [N, 4]."""
    return ops.box_area(boxes)


def clip_boxes(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Boxes [N, 4] clipped to the image rectangle [0, width] x [0, height]."""
    return ops.clip_boxes_to_image(boxes, (height, width))


def remove_small_boxes(boxes: torch.Tensor, min_size: float) -> torch.Tensor:
    """Indices [K] of boxes whose width and height are both >= min_size pixels."""
    return ops.remove_small_boxes(boxes, min_size)


def hflip_boxes(boxes, width: float):
    """Boxes [N, 4] (numpy array or tensor) of the image mirrored horizontally (width in px)."""
    stack = torch.stack if isinstance(boxes, torch.Tensor) else np.stack
    return stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], 1)


def _centre_size(boxes: torch.Tensor) -> tuple[torch.Tensor, ...]:
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    return boxes[:, 0] + 0.5 * widths, boxes[:, 1] + 0.5 * heights, widths, heights


def encode_deltas(
    proposals: torch.Tensor, targets: torch.Tensor, weights=DEFAULT_DELTA_WEIGHTS
) -> torch.Tensor:
    """R-CNN regression targets [N, 4] (dx, dy, dw, dh) taking proposals [N, 4] to targets [N, 4].

    dx = wx * (gx - px) / pw, dw = ww * log(gw / pw), likewise for y/h (R-CNN appendix C),
    scaled by `weights` (Fast R-CNN's normalisation).
    """
    px, py, pw, ph = _centre_size(proposals.float())
    gx, gy, gw, gh = _centre_size(targets.float())
    wx, wy, ww, wh = weights
    return torch.stack(
        [wx * (gx - px) / pw, wy * (gy - py) / ph, ww * torch.log(gw / pw), wh * torch.log(gh / ph)],
        dim=1,
    )


def decode_deltas(
    proposals: torch.Tensor, deltas: torch.Tensor, weights=DEFAULT_DELTA_WEIGHTS
) -> torch.Tensor:
    """Apply deltas [N, 4k] to proposals [N, 4]: refined boxes [N, 4k] (inverse of encode_deltas)."""
    px, py, pw, ph = (t[:, None] for t in _centre_size(proposals.to(deltas.dtype)))
    wx, wy, ww, wh = weights
    dx, dy = deltas[:, 0::4] / wx, deltas[:, 1::4] / wy
    dw = torch.clamp(deltas[:, 2::4] / ww, max=MAX_LOG_SCALE)
    dh = torch.clamp(deltas[:, 3::4] / wh, max=MAX_LOG_SCALE)
    cx, cy = dx * pw + px, dy * ph + py
    half_w, half_h = 0.5 * torch.exp(dw) * pw, 0.5 * torch.exp(dh) * ph
    boxes = torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], dim=2)
    return boxes.reshape(deltas.shape)
