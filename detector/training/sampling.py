"""R-CNN fine-tuning targets: label proposals by overlap and sample foreground/background.

R-CNN (Girshick et al. 2014, sec. 2.3): a proposal is foreground for the class of the
ground-truth box it overlaps most when IoU >= 0.5, background when the IoU is in [0.1, 0.5);
minibatches of 128 hold 32 foreground and 96 background regions. Box-regression targets are
taken from proposals with IoU >= 0.6 (appendix C).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from detector.data.boxes import box_iou
from detector.modeling.box_regression import REGRESSION_IOU, regression_targets


@dataclass
class RegionTargets:
    """Training targets of R sampled regions: boxes [R, 4] (proposal boxes), labels [R] (0 =
    background, k + 1 = class k), box_targets [R, 4] normalised deltas, box_mask [R] bool."""

    boxes: torch.Tensor
    labels: torch.Tensor
    box_targets: torch.Tensor
    box_mask: torch.Tensor


def match_proposals(proposals: torch.Tensor, gt_boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Best IoU [P] of each proposal [P, 4] with any ground truth [G, 4], and that box's index [P]."""
    if len(gt_boxes) == 0:
        return proposals.new_zeros(len(proposals)), torch.zeros(len(proposals), dtype=torch.long)
    best_iou, best_gt = box_iou(proposals, gt_boxes).max(dim=1)
    return best_iou, best_gt


def sample_regions(
    proposals: torch.Tensor,
    gt_boxes: torch.Tensor,
    gt_labels: torch.Tensor,
    num_regions: int,
    rng: np.random.Generator,
    fg_fraction: float = 0.25,
    fg_iou: float = 0.5,
    bg_iou: tuple[float, float] = (0.1, 0.5),
    bbox_iou: float = REGRESSION_IOU,
) -> RegionTargets:
    """Sample up to `num_regions` regions of one image; `gt_labels` [G] are 0-based classes.

    The ground-truth boxes join the proposals (as in R-CNN). Foreground fills at most
    `fg_fraction` of the sample; background fills the rest (fewer if the image has too few).
    """
    candidates = torch.cat([gt_boxes.float(), proposals.float()])
    best_iou, best_gt = match_proposals(candidates, gt_boxes.float())
    fg = torch.nonzero(best_iou >= fg_iou).flatten().numpy()
    bg = torch.nonzero((best_iou >= bg_iou[0]) & (best_iou < bg_iou[1])).flatten().numpy()
    fg = rng.permutation(fg)[: int(round(num_regions * fg_fraction))]
    bg = rng.permutation(bg)[: num_regions - len(fg)]
    keep = torch.from_numpy(np.concatenate([fg, bg]).astype(np.int64))
    boxes, iou, matched = candidates[keep], best_iou[keep], best_gt[keep]
    labels = torch.zeros(len(keep), dtype=torch.long)
    labels[: len(fg)] = gt_labels[matched[: len(fg)]] + 1
    box_mask = (iou >= bbox_iou) & (labels > 0)
    box_targets = regression_targets(boxes, gt_boxes.float()[matched], box_mask)
    return RegionTargets(boxes, labels, box_targets, box_mask)
