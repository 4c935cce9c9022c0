"""Test-time post-processing: per-proposal class scores and refined boxes -> final detections.

Pure tensor functions (no model, no I/O). K models (an ensemble, :mod:`detector.inference.ensemble`;
a test-time flip counts as one more model) score the same N proposals over C foreground classes.
Three fusions:

- ``nms``: per-class greedy NMS (R-CNN, Girshick et al. 2014, used IoU 0.3).
- ``vote``: NMS, then box voting (Gidaris & Komodakis 2015, "Object detection via a multi-region
  & semantic segmentation-aware CNN model", ICCV).
- ``wbf``: weighted boxes fusion (Solovyev et al. 2021, "Weighted boxes fusion: ensembling boxes
  from different object detection models") via the ``ensemble_boxes`` package.

Boxes are float ``xyxy`` in continuous pixels (see :mod:`detector.data.boxes`).
"""
from __future__ import annotations

import torch
from torchvision import ops

from detector.data.boxes import clip_boxes
from detector.inference.ensemble import FUSIONS, ScoredBoxes, box_voting, fuse_wbf, mean_candidates, member_candidates


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
) -> ScoredBoxes:
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
        fused = fuse_wbf(scores, boxes, image_size, score_threshold, wbf_iou)
        return _finalize(*fused, image_size, max_detections, device)
    candidates = mean_candidates(scores, boxes, image_size, score_threshold)
    keep = ops.batched_nms(*candidates, nms_iou)[:max_detections]  # sorted by score
    kept_boxes, kept_scores, kept_labels = (t[keep] for t in candidates)
    if fusion == "vote":
        pool = member_candidates(scores, boxes, image_size, score_threshold, kept_labels)
        kept_boxes = box_voting(kept_boxes, kept_labels, *pool, vote_iou)
    return _finalize(kept_boxes, kept_scores, kept_labels, image_size, max_detections, device)


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


def _finalize(boxes, scores, labels, image_size, max_detections, device) -> ScoredBoxes:
    """Sort by descending score, keep max_detections, clip, and cast to the output dtypes."""
    order = torch.sort(scores, descending=True, stable=True).indices[:max_detections]
    boxes = clip_boxes(boxes[order].float(), *image_size)
    return (
        boxes.to(device),
        scores[order].float().to(device),
        labels[order].long().to(device),
    )
