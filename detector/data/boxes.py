"""Box operations on tensors, built on torchvision.ops (file-format conversions: detector.data.box_formats).

Convention: float ``xyxy`` boxes in pixels with continuous coordinates (torchvision's), so a box
covering VOC's 1-based inclusive pixels ``xmin..xmax`` is ``[xmin - 1, xmax]`` and its width is
``xmax - xmin + 1`` exactly as the devkits count it.
"""
from __future__ import annotations

import numpy as np
import torch
from torchvision import ops


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
