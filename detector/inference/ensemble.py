"""Ensembles: K models scoring the same inputs, averaged.

GoogLeNet (Szegedy et al. 2014, Sect. 6-7) averaged the softmax of 7 classifiers over crops;
its detection entry scored the same proposals with several R-CNN models and pooled them. Here:

- members: each model, and each again on mirrored regions with test-time flip (K = models x flips);
- detection fusion of the K members' scores [K, N, C] and boxes [K, N, C, 4] (pixels), used by
  :func:`detector.inference.postprocess.detect_from_scores`: mean scores and mean boxes (nms),
  box voting over every member's boxes (Gidaris & Komodakis 2015, ICCV), or weighted boxes
  fusion (Solovyev et al. 2021) via the ``ensemble_boxes`` package;
- classification: exported classifiers whose softmax is averaged over crops and models.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from ensemble_boxes import weighted_boxes_fusion
from torch import nn

from detector.common.errors import UserError
from detector.common.precision import Precision, prepare_model
from detector.data.boxes import box_iou, clip_boxes
from detector.inference.scorers import RegionScorer
from detector.modeling.build import load_classifier
from detector.modeling.regions import normalise

#: The allowed values of ``test.fusion``.
FUSIONS = ("nms", "vote", "wbf")
#: Boxes narrower or shorter than this (pixels, after clipping) are dropped (as torchvision does).
MIN_BOX_SIZE = 1e-2
#: Box voting computes its [D, P] IoU matrix in chunks of at most this many elements.
_VOTE_CHUNK_ELEMENTS = 1 << 22

#: boxes [D, 4] float32 xyxy pixels, scores [D] float32, labels [D] int64 (0-based foreground)
ScoredBoxes = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


# --------------------------------------------------------------------------- members


def check_members(scorers: list[RegionScorer]) -> None:
    """UserError unless every member predicts the same classes in the same order."""
    first = scorers[0]
    for other in scorers[1:]:
        if other.classes != first.classes:
            raise UserError(f"ensemble members disagree on classes: {first.name} has {len(first.classes)}, "
                            f"{other.name} has {len(other.classes)} (or another order)")


def ensemble_members(scorers: list[RegionScorer], flip: bool) -> list[tuple[RegionScorer, bool]]:
    """(scorer, flipped) pairs: each model, and each again on mirrored regions when `flip`."""
    flips = (False, True) if flip else (False,)
    return [(scorer, flipped) for scorer in scorers for flipped in flips]


# --------------------------------------------------------------------------- detection fusion


def _valid_boxes(boxes: torch.Tensor) -> torch.Tensor:
    """[...] bool mask of boxes [..., 4] at least MIN_BOX_SIZE wide and high (False for NaN)."""
    sizes = boxes[..., 2:] - boxes[..., :2]
    return (sizes >= MIN_BOX_SIZE).all(-1)


def _clip(boxes: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """Boxes [..., 4] clipped to the image."""
    return clip_boxes(boxes.reshape(-1, 4), *image_size).reshape(boxes.shape)


def mean_candidates(scores, boxes, image_size, threshold) -> ScoredBoxes:
    """(proposal, class) pairs whose K-model mean score passes the threshold.

    From scores [K, N, C] and boxes [K, N, C, 4]: the mean of the K clipped boxes [M, 4], the
    mean scores [M] and the labels [M]; too-small (or NaN) mean boxes are dropped.
    """
    mean_scores = scores.mean(0)  # [N, C]
    proposal, label = (mean_scores >= threshold).nonzero(as_tuple=True)
    mean_boxes = _clip(boxes[:, proposal, label], image_size).mean(0)  # [M, 4]
    valid = _valid_boxes(mean_boxes)
    return mean_boxes[valid], mean_scores[proposal, label][valid], label[valid]


def member_candidates(scores, boxes, image_size, threshold, classes=None) -> ScoredBoxes:
    """Every model's own candidates: entries of scores [..., C] passing the threshold.

    Returns their clipped boxes [P, 4] (from boxes [..., C, 4]), scores [P] and labels [P];
    `classes` optionally restricts them to those labels; too-small (or NaN) boxes are dropped.
    """
    mask = scores >= threshold
    if classes is not None:
        wanted = torch.zeros(scores.shape[-1], dtype=torch.bool, device=scores.device)
        wanted[classes] = True
        mask &= wanted
    index = mask.nonzero(as_tuple=True)
    found_boxes = _clip(boxes[index], image_size)
    valid = _valid_boxes(found_boxes)
    return found_boxes[valid], scores[index][valid], index[-1][valid]


def fuse_wbf(scores, boxes, image_size, threshold, iou) -> ScoredBoxes:
    """Weighted boxes fusion of K models' scores [K, N, C] and boxes [K, N, C, 4] (pixels)."""
    height, width = image_size
    scale = torch.tensor([width, height, width, height], dtype=torch.float64)
    boxes_list, scores_list, labels_list = [], [], []
    for model_boxes, model_scores in zip(boxes.cpu(), scores.cpu()):  # one list per model
        found = member_candidates(model_scores, model_boxes, image_size, threshold)
        found_boxes, found_scores, found_labels = found
        boxes_list.append((found_boxes.double() / scale).clamp(0, 1).numpy())
        scores_list.append(found_scores.double().numpy())
        labels_list.append(found_labels.numpy())
    if sum(len(s) for s in scores_list) == 0:
        return _no_boxes()
    fused_boxes, fused_scores, fused_labels = weighted_boxes_fusion(
        boxes_list, scores_list, labels_list, iou_thr=iou, skip_box_thr=threshold
    )
    return (
        (torch.from_numpy(np.asarray(fused_boxes, dtype=np.float64)) * scale).float(),
        torch.from_numpy(np.asarray(fused_scores, dtype=np.float32)),
        torch.from_numpy(np.asarray(fused_labels).astype(np.int64)),
    )


def box_voting(
    kept_boxes: torch.Tensor,
    kept_labels: torch.Tensor,
    pool_boxes: torch.Tensor,
    pool_scores: torch.Tensor,
    pool_labels: torch.Tensor,
    vote_iou: float = 0.5,
) -> torch.Tensor:
    """Box voting (Gidaris & Komodakis 2015): each kept box -> score-weighted mean of its voters.

    Args:
        kept_boxes: [D, 4] boxes kept by NMS; kept_labels: [D] their classes.
        pool_boxes: [P, 4] candidate voters (all models' boxes), pool_scores: [P] their weights
            (negative scores count as 0), pool_labels: [P] their classes.
        vote_iou: pool boxes of the same class with IoU >= this to a kept box vote for it.

    Returns:
        [D, 4] voted boxes; a kept box without any voter (total weight 0) is left unchanged.
    """
    weighted_sum = kept_boxes.new_zeros(kept_boxes.shape, dtype=torch.float64)  # [D, 4]
    total = kept_boxes.new_zeros((len(kept_boxes), 1), dtype=torch.float64)  # [D, 1]
    chunk = max(1, _VOTE_CHUNK_ELEMENTS // max(1, len(kept_boxes)))  # bounds the [D, chunk] matrix
    for start in range(0, len(pool_boxes), chunk):  # one IoU matrix per chunk of voters
        part = slice(start, start + chunk)
        boxes, scores, labels = pool_boxes[part], pool_scores[part], pool_labels[part]
        votes = (box_iou(kept_boxes, boxes) >= vote_iou) & (kept_labels[:, None] == labels[None, :])
        votes = votes * scores.clamp(min=0).double()  # [D, chunk]
        weighted_sum += votes @ boxes.double()
        total += votes.sum(1, keepdim=True)
    mean = weighted_sum / total.clamp(min=torch.finfo(total.dtype).tiny)
    return torch.where(total > 0, mean.to(kept_boxes.dtype), kept_boxes)


def _no_boxes(device: torch.device | str = "cpu") -> ScoredBoxes:
    """No detections: boxes [0, 4] float32, scores [0] float32, labels [0] int64."""
    return (
        torch.zeros((0, 4), dtype=torch.float32, device=device),
        torch.zeros((0,), dtype=torch.float32, device=device),
        torch.zeros((0,), dtype=torch.int64, device=device),
    )


# --------------------------------------------------------------------------- classification


@dataclass
class Ensemble:
    """Classifiers that agree on classes and input size, and their shared metadata."""

    models: list[nn.Module]
    classes: list[str]
    display_names: list[str]
    input_size: int
    paths: list[Path]


def load_ensemble(paths: list[str | Path], precision: Precision) -> Ensemble:
    """Load exported classifiers; UserError when their classes or input sizes differ."""
    if not paths:
        raise UserError("give at least one classifier weights file (--weights)")
    models, first = [], None
    for path in paths:
        model, metadata = load_classifier(path)
        if first is None:
            first = metadata
        elif (metadata["classes"], metadata["input_size"]) != (first["classes"], first["input_size"]):
            raise UserError(f"{path}: classes or input size differ from {paths[0]}'s; an ensemble needs the same")
        models.append(prepare_model(model, precision))
    return Ensemble(models, list(first["classes"]), list(first.get("display_names", first["classes"])),
                    int(first["input_size"]), [Path(p) for p in paths])


@torch.no_grad()
def crop_probabilities(ensemble: Ensemble, crops: torch.Tensor, precision: Precision) -> torch.Tensor:
    """Softmax averaged over crops and models: crops uint8 [B, K, 3, S, S] -> probabilities [B, C]."""
    batch, per_image = crops.shape[:2]
    inputs = normalise(crops.flatten(0, 1), precision)
    total = 0
    for model in ensemble.models:
        with precision.autocast():
            logits = model(inputs).float()
        total = total + logits.softmax(1).view(batch, per_image, -1).mean(1)
    return total / len(ensemble.models)
