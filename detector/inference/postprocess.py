"""Test-time post-processing: per-proposal class scores and refined boxes -> final detections.

Pure tensor functions (no model, no I/O). K models (an ensemble; a test-time flip counts as one
more model) score the same N proposals over C foreground classes. Three fusions:

- ``nms``: per-class greedy NMS (R-CNN, Girshick et al. 2014, used IoU 0.3).
- ``vote``: NMS, then box voting (Gidaris & Komodakis 2015, "Object detection via a multi-region
  & semantic segmentation-aware CNN model", ICCV).
- ``wbf``: weighted boxes fusion (Solovyev et al. 2021, "Weighted boxes fusion: ensembling boxes
  from different object detection models") via the ``ensemble_boxes`` package.

Boxes are float ``xyxy`` in continuous pixels (see :mod:`detector.data.boxes`).
"""
from __future__ import annotations

import numpy as np
import torch
from ensemble_boxes import weighted_boxes_fusion
from torchvision import ops

from detector.data.boxes import box_iou, clip_boxes

#: The allowed values of ``fusion``.
FUSIONS = ("nms", "vote", "wbf")
#: Boxes narrower or shorter than this (pixels, after clipping) are dropped (as torchvision does).
MIN_BOX_SIZE = 1e-2
#: Box voting computes its [D, P] IoU matrix in chunks of at most this many elements.
_VOTE_CHUNK_ELEMENTS = 1 << 22

Detections = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def detect_from_scores(
    scores: torch.Tensor,
    boxes: torch.Tensor,
    image_size: tuple[int, int],
    *,
    score_threshold: float = 0.05,
    nms_iou: float = 0.3,
    max_detections: int = 100,
    fusion: str = "nms",
    vote_iou: float = 0.5,
    wbf_iou: float = 0.55,
) -> Detections:
    """Final detections of one image from K models' scores on the same N proposals.

    Args:
        scores: [K, N, C+1] class probabilities or SVM scores; column 0 is background.
        boxes: [K, N, C, 4] each model's class-specific refined boxes (xyxy pixels, decoded).
        image_size: (height, width) in pixels; every box is first clipped to the image.
        score_threshold: candidates need a (model-averaged, for nms/vote) score >= this.
        nms_iou: per-class greedy NMS IoU threshold (nms and vote).
        max_detections: at most this many detections are returned.
        fusion: "nms" | "vote" | "wbf" (see the module docstring).
        vote_iou: box voting neighbourhood: pool boxes with IoU >= this to a kept box.
        wbf_iou: weighted boxes fusion cluster IoU threshold.

    Returns:
        boxes [D, 4] float32 (clipped to the image), scores [D] float32 sorted descending, and
        labels [D] int64 as 0-based foreground classes (score column k+1 -> label k); D <=
        max_detections, and D = 0 when nothing passes the threshold.

    nms/vote: the ensemble averages the K models' class scores and, per proposal and class, the
    K clipped refined boxes; box voting then pools every model's own boxes and scores. wbf: each
    model's own candidates go to ``weighted_boxes_fusion`` (its score is the cluster's mean score
    scaled by min(K, cluster size) / K). Boxes under MIN_BOX_SIZE after clipping never count.
    """
    _check_inputs(scores, boxes, image_size, fusion, max_detections)
    device = scores.device
    scores, boxes = scores[:, :, 1:].float(), boxes.float()  # foreground only: [K, N, C]
    if fusion == "wbf":
        fused = _fuse_wbf(scores, boxes, image_size, score_threshold, wbf_iou)
        return _finalize(*fused, image_size, max_detections, device)
    candidates = _ensemble_candidates(scores, boxes, image_size, score_threshold)
    keep = ops.batched_nms(*candidates, nms_iou)[:max_detections]  # sorted by score
    kept_boxes, kept_scores, kept_labels = (t[keep] for t in candidates)
    if fusion == "vote":
        pool = _model_candidates(scores, boxes, image_size, score_threshold, kept_labels)
        kept_boxes = box_voting(kept_boxes, kept_labels, *pool, vote_iou)
    return _finalize(kept_boxes, kept_scores, kept_labels, image_size, max_detections, device)


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


def empty_detections(device: torch.device | str = "cpu") -> Detections:
    """No detections: boxes [0, 4] float32, scores [0] float32, labels [0] int64."""
    return (
        torch.zeros((0, 4), dtype=torch.float32, device=device),
        torch.zeros((0,), dtype=torch.float32, device=device),
        torch.zeros((0,), dtype=torch.int64, device=device),
    )


# --------------------------------------------------------------------------- helpers


def _check_inputs(scores, boxes, image_size, fusion, max_detections) -> None:
    """ValueError with the expected shapes / allowed values when the inputs do not fit."""
    if fusion not in FUSIONS:
        raise ValueError(f"fusion must be one of {', '.join(FUSIONS)}; got {fusion!r}")
    if scores.dim() != 3 or scores.shape[0] < 1 or scores.shape[2] < 1:
        shape = list(scores.shape)
        raise ValueError(f"scores must have shape [K, N, C+1] with K >= 1; got {shape}")
    k, n, c1 = scores.shape
    if tuple(boxes.shape) != (k, n, c1 - 1, 4):
        raise ValueError(
            f"boxes must have shape [K, N, C, 4] = {[k, n, c1 - 1, 4]} to match scores "
            f"[K, N, C+1] = {list(scores.shape)}; got {list(boxes.shape)}"
        )
    if len(image_size) != 2 or min(image_size) <= 0:
        raise ValueError(f"image_size must be (height, width) > 0; got {image_size!r}")
    if max_detections < 0:
        raise ValueError(f"max_detections must be >= 0; got {max_detections}")


def _valid_boxes(boxes: torch.Tensor) -> torch.Tensor:
    """[...] bool mask of boxes [..., 4] at least MIN_BOX_SIZE wide and high (False for NaN)."""
    sizes = boxes[..., 2:] - boxes[..., :2]
    return (sizes >= MIN_BOX_SIZE).all(-1)


def _clip(boxes: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """Boxes [..., 4] clipped to the image."""
    return clip_boxes(boxes.reshape(-1, 4), *image_size).reshape(boxes.shape)


def _ensemble_candidates(scores, boxes, image_size, threshold) -> Detections:
    """(proposal, class) pairs whose K-model mean score passes the threshold.

    From scores [K, N, C] and boxes [K, N, C, 4]: the mean of the K clipped boxes [M, 4], the
    mean scores [M] and the labels [M]; too-small (or NaN) mean boxes are dropped.
    """
    mean_scores = scores.mean(0)  # [N, C]
    proposal, label = (mean_scores >= threshold).nonzero(as_tuple=True)
    mean_boxes = _clip(boxes[:, proposal, label], image_size).mean(0)  # [M, 4]
    valid = _valid_boxes(mean_boxes)
    return mean_boxes[valid], mean_scores[proposal, label][valid], label[valid]


def _model_candidates(scores, boxes, image_size, threshold, classes=None) -> Detections:
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


def _fuse_wbf(scores, boxes, image_size, threshold, iou) -> Detections:
    """Weighted boxes fusion of K models' scores [K, N, C] and boxes [K, N, C, 4] (pixels)."""
    height, width = image_size
    scale = torch.tensor([width, height, width, height], dtype=torch.float64)
    boxes_list, scores_list, labels_list = [], [], []
    for model_boxes, model_scores in zip(boxes.cpu(), scores.cpu()):  # one list per model
        found = _model_candidates(model_scores, model_boxes, image_size, threshold)
        found_boxes, found_scores, found_labels = found
        boxes_list.append((found_boxes.double() / scale).clamp(0, 1).numpy())
        scores_list.append(found_scores.double().numpy())
        labels_list.append(found_labels.numpy())
    if sum(len(s) for s in scores_list) == 0:
        return empty_detections()
    fused_boxes, fused_scores, fused_labels = weighted_boxes_fusion(
        boxes_list, scores_list, labels_list, iou_thr=iou, skip_box_thr=threshold
    )
    return (
        (torch.from_numpy(np.asarray(fused_boxes, dtype=np.float64)) * scale).float(),
        torch.from_numpy(np.asarray(fused_scores, dtype=np.float32)),
        torch.from_numpy(np.asarray(fused_labels).astype(np.int64)),
    )


def _finalize(boxes, scores, labels, image_size, max_detections, device) -> Detections:
    """Sort by descending score, keep max_detections, clip, and cast to the output dtypes."""
    order = torch.sort(scores, descending=True, stable=True).indices[:max_detections]
    boxes = clip_boxes(boxes[order].float(), *image_size)
    return (
        boxes.to(device),
        scores[order].float().to(device),
        labels[order].long().to(device),
    )
