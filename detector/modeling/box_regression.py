"""Bounding-box regression (R-CNN appendix C), in one place: the (dx, dy, dw, dh) encoding, its
targets for sampled regions, the fine-tuned head's loss, and R-CNN's ridge regressors on features.

A proposal P regresses towards the ground-truth box G it overlaps most when IoU >= 0.6:
dx = (gx - px) / pw, dy = (gy - py) / ph, dw = log(gw / pw), dh = log(gh / ph) (centres and
sizes in pixels), scaled by Fast R-CNN's weights (10, 10, 5, 5). Deltas are class-specific:
a head outputs [R, 4C], columns 4k..4k+3 for foreground class k.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import Ridge

#: Proposals overlapping their ground-truth box by at least this IoU are regression samples (R-CNN).
REGRESSION_IOU = 0.6
#: Fewer regression samples than this: the class gets no ridge regressor (its boxes stay as proposed).
MIN_RIDGE_SAMPLES = 8
#: Fast R-CNN's delta normalisation: deltas are divided by (0.1, 0.1, 0.2, 0.2).
DEFAULT_DELTA_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
#: Largest log-scale change applied when decoding, as in torchvision (avoids exp overflow).
MAX_LOG_SCALE = math.log(1000.0 / 16)


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


def regression_targets(boxes: torch.Tensor, matched_gt: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Targets [R, 4] of regions boxes [R, 4] towards their ground truth matched_gt [R, 4]
    where mask [R] is set (regression samples), zeros elsewhere."""
    targets = torch.zeros((len(boxes), 4))
    if mask.any():
        targets[mask] = encode_deltas(boxes[mask], matched_gt[mask])
    return targets


def box_regression_loss(box_deltas: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor,
                        targets: torch.Tensor) -> torch.Tensor:
    """Smooth-L1 (beta 1) between the true class's predicted deltas and the targets over the
    regression samples, summed and divided by the number of regions (Fast R-CNN).

    box_deltas [R, 4C] class-specific predictions, labels [R] (0 background, k + 1 class k),
    mask [R] bool regression samples, targets [R, 4]."""
    mask = mask.to(labels.device)
    deltas = box_deltas.float().view(len(labels), -1, 4)
    chosen = deltas[mask, labels[mask] - 1]
    return F.smooth_l1_loss(chosen, targets.to(labels.device)[mask], beta=1.0, reduction="sum") / max(1, len(labels))


def fit_ridge(features: np.ndarray, deltas: np.ndarray, ridge_lambda: float) -> tuple[np.ndarray, np.ndarray]:
    """R-CNN's ridge regressor of one class (lambda = 1000 in the paper): features [M, D] ->
    target deltas [M, 4]; returns (weights [4, D], bias [4])."""
    ridge = Ridge(alpha=ridge_lambda).fit(features, deltas)
    return ridge.coef_, ridge.intercept_
