"""Conversions between the box formats of annotation and result files and the project's
``xyxy``, in numpy only (the data readers and writers stay free of torch, so `rcnn data` starts fast).

The ``xyxy`` convention (continuous pixel coordinates, so VOC's inclusive ``xmin..xmax`` becomes
``[xmin - 1, xmax]``) is described in :mod:`detector.data.boxes`.
"""
from __future__ import annotations

import numpy as np


def voc_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """1-based inclusive pixel boxes (VOC/ILSVRC XML) [N, 4] -> continuous xyxy float32."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    return boxes - np.array([1, 1, 0, 0], dtype=np.float32)


def xyxy_to_voc(boxes: np.ndarray) -> np.ndarray:
    """Continuous xyxy [N, 4] -> 1-based inclusive pixel boxes (the devkits' convention)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return boxes + np.array([1, 1, 0, 0], dtype=np.float64)


def xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """COCO [x, y, w, h] [N, 4] -> xyxy float32."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)


def xyxy_to_xywh(boxes: np.ndarray) -> np.ndarray:
    """xyxy [N, 4] -> COCO [x, y, w, h]."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)


def yolo_to_xyxy(boxes: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Normalised YOLO [cx, cy, w, h] [N, 4] -> xyxy pixels float64; `sizes` [N, 4] or [4] holds
    (width, height, width, height) of each box's image in pixels."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    centres, half = boxes[:, :2], boxes[:, 2:] / 2
    return np.concatenate([centres - half, centres + half], axis=1) * sizes


def xyxy_to_yolo(boxes: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """xyxy pixels [N, 4] -> normalised YOLO [cx, cy, w, h] float64 (the inverse of yolo_to_xyxy)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) / sizes
    return np.concatenate([(boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]], axis=1)
