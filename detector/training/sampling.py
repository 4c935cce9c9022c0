"""R-CNN fine-tuning targets: label proposals by overlap and sample foreground/background.

R-CNN (Girshick et al. 2014, sec. 2.3): a proposal is foreground for the class of the
ground-truth box it overlaps most when IoU >= 0.5, background when the IoU is in [0.1, 0.5);
minibatches of 128 hold 32 foreground and 96 background regions. Box-regression targets are
taken from proposals with IoU >= 0.6 (appendix C).

For long-tailed data two balancing options: foreground slots spread over objects rather than
proposals (``per_object``), and LVIS repeat-factor sampling of images (Gupta et al., LVIS,
CVPR 2019, sec. 3.3).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from detector.data.boxes import box_iou
from detector.modeling.box_regression import REGRESSION_IOU, regression_targets

FG_SAMPLING = ("uniform", "per_object")


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
    fg_sampling: str = "uniform",
) -> RegionTargets:
    """Sample up to `num_regions` regions of one image; `gt_labels` [G] are 0-based classes.

    The ground-truth boxes join the proposals (as in R-CNN). Foreground fills at most
    `fg_fraction` of the sample, drawn uniformly from the foreground candidates (``uniform``) or
    evenly over the ground-truth objects (``per_object``, see `per_object_foreground`);
    background fills the rest (fewer if the image has too few).
    """
    candidates = torch.cat([gt_boxes.float(), proposals.float()])
    best_iou, best_gt = match_proposals(candidates, gt_boxes.float())
    fg = torch.nonzero(best_iou >= fg_iou).flatten().numpy()
    bg = torch.nonzero((best_iou >= bg_iou[0]) & (best_iou < bg_iou[1])).flatten().numpy()
    num_fg = int(round(num_regions * fg_fraction))
    if fg_sampling == "per_object":
        fg = per_object_foreground(fg, best_gt[fg].numpy(), num_fg, rng)
    else:
        fg = rng.permutation(fg)[:num_fg]
    bg = rng.permutation(bg)[: num_regions - len(fg)]
    keep = torch.from_numpy(np.concatenate([fg, bg]).astype(np.int64))
    boxes, iou, matched = candidates[keep], best_iou[keep], best_gt[keep]
    labels = torch.zeros(len(keep), dtype=torch.long)
    labels[: len(fg)] = gt_labels[matched[: len(fg)]] + 1
    box_mask = (iou >= bbox_iou) & (labels > 0)
    box_targets = regression_targets(boxes, gt_boxes.float()[matched], box_mask)
    return RegionTargets(boxes, labels, box_targets, box_mask)


def per_object_foreground(fg: np.ndarray, fg_gt: np.ndarray, num_fg: int, rng: np.random.Generator) -> np.ndarray:
    """`num_fg` of the foreground candidates `fg` [F] (all of them when F <= num_fg), drawn without
    replacement, each with weight 1 / (number of candidates matched to its ground-truth box, `fg_gt` [F]):
    every object is equally likely whatever its number of proposals, until its candidates run out."""
    if len(fg) <= num_fg:
        return fg
    weights = 1.0 / np.bincount(fg_gt)[fg_gt]
    return fg[rng.choice(len(fg), size=num_fg, replace=False, p=weights / weights.sum())]


def class_repeat_factors(image_classes: list[np.ndarray], num_classes: int, threshold: float) -> np.ndarray:
    """LVIS repeat factors r(c) = max(1, sqrt(threshold / f(c))) [C], f(c) being the fraction of the N
    images whose classes (`image_classes`: N arrays of 0-based labels, repeats allowed) include c;
    1 for a class in no image."""
    images_with = np.zeros(num_classes)
    for classes in image_classes:
        images_with[np.unique(classes)] += 1
    frequency = images_with / max(len(image_classes), 1)
    with np.errstate(divide="ignore"):
        factors = np.sqrt(threshold / frequency)
    return np.where(frequency > 0, np.maximum(1.0, factors), 1.0)


def image_repeat_factors(image_classes: list[np.ndarray], class_factors: np.ndarray) -> np.ndarray:
    """r(I) [N]: the largest class factor (`class_factors` [C]) among each image's (non-empty) classes."""
    return np.array([class_factors[classes].max() for classes in image_classes])
