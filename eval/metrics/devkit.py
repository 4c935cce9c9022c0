"""PASCAL VOC (2007, 2010+) and ILSVRC DET scoring, reproducing the devkits' arithmetic.

Overlaps use the devkits' 1-based inclusive pixel convention: boxes are converted with
:func:`detector.data.box_formats.xyxy_to_voc` and widths counted as ``x2 - x1 + 1``. For our continuous ``xyxy``
boxes this is the same number as the plain continuous IoU (``x2 - (x1 + 1) + 1 == x2 - x1``), but
computing it the devkits' way reproduces their floating-point results bit for bit.

Matching rules (per image, detections in descending score order; ties keep input order):

- VOC (py-faster-rcnn ``voc_eval.py``, VOCdevkit ``VOCevaldet.m``): a detection goes to the
  ground-truth box of its class it overlaps most; IoU > 0.5 (strictly) and that box not yet taken
  -> true positive; taken -> false positive (duplicate); a ``difficult`` box -> neither.
- ILSVRC DET (devkit ``eval_detection.m``): ground-truth box of width w, height h (inclusive
  pixels) needs IoU >= min(0.5, w*h / ((w+10)*(h+10))); a detection takes the best-overlapping
  box among those still free and above their threshold (greedy). Boxes flagged ``ignore`` (not
  present in ILSVRC itself) make a detection matched to them neither true nor false positive.

AP: VOC2007 11-point interpolated; VOC2010+ and ILSVRC area under the monotone precision envelope.
Images without objects count: their detections are false positives.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from detector.common.errors import UserError
from detector.data.box_formats import xyxy_to_voc
from detector.data.datasets import Dataset, ImageRecord
from eval.detections import ImageDetections, check_detections
from eval.metrics.result import EvalResult, count_by_class, mean_ap

VOC_IOU = 0.5  #: VOC: a true positive needs IoU strictly above this
ILSVRC_MAX_IOU = 0.5  #: ILSVRC: the threshold for large boxes
ILSVRC_PIXEL_TOLERANCE = 10.0  #: ILSVRC: pixels added to w and h for small-box thresholds
#: VOC2007's 11 recall points, built as voc_eval.py builds them (0.30000000000000004 included).
VOC07_RECALL_POINTS = np.arange(0.0, 1.1, 0.1)
DEVKIT_METRICS = ("voc07", "voc10", "ilsvrc")


# --------------------------------------------------------------------------- overlaps and matching


def devkit_iou(dets: np.ndarray, gts: np.ndarray) -> np.ndarray:
    """IoU [K, G] float64 of inclusive-pixel boxes [K, 4] and [G, 4], as the devkits compute it."""
    ixmin = np.maximum(dets[:, None, 0], gts[None, :, 0])
    iymin = np.maximum(dets[:, None, 1], gts[None, :, 1])
    ixmax = np.minimum(dets[:, None, 2], gts[None, :, 2])
    iymax = np.minimum(dets[:, None, 3], gts[None, :, 3])
    inters = np.maximum(ixmax - ixmin + 1.0, 0.0) * np.maximum(iymax - iymin + 1.0, 0.0)
    union = inclusive_area(dets)[:, None] + inclusive_area(gts)[None, :] - inters
    return inters / union


def inclusive_area(boxes: np.ndarray) -> np.ndarray:
    """Areas [N] in pixels of inclusive-pixel boxes [N, 4]: (x2 - x1 + 1) * (y2 - y1 + 1)."""
    return (boxes[:, 2] - boxes[:, 0] + 1.0) * (boxes[:, 3] - boxes[:, 1] + 1.0)


def ilsvrc_thresholds(gts: np.ndarray) -> np.ndarray:
    """Per-box IoU thresholds [G] of inclusive-pixel boxes [G, 4]: min(0.5, wh / ((w+10)(h+10)))."""
    w = gts[:, 2] - gts[:, 0] + 1.0
    h = gts[:, 3] - gts[:, 1] + 1.0
    return np.minimum(ILSVRC_MAX_IOU, (w * h) / ((w + ILSVRC_PIXEL_TOLERANCE) * (h + ILSVRC_PIXEL_TOLERANCE)))


def voc_match(iou: np.ndarray, gt_ignore: np.ndarray, threshold: float = VOC_IOU) -> tuple[np.ndarray, np.ndarray]:
    """VOC matching. `iou` [K, G]: detections in descending score order vs ground truth, -inf
    where the classes differ; `gt_ignore` bool [G]. Returns (true positive [K], ignored [K]).

    A detection's box is its arg-max box even when that one is taken, so "first detection to
    reach each box" decides it: no sequential loop is needed.
    """
    tp = np.zeros(len(iou), dtype=bool)
    if iou.shape[1] == 0:
        return tp, tp.copy()
    best = iou.argmax(axis=1)
    hit = iou[np.arange(len(iou)), best] > threshold
    ignored = hit & gt_ignore[best]
    candidates = np.flatnonzero(hit & ~ignored)
    _, first = np.unique(best[candidates], return_index=True)
    tp[candidates[first]] = True
    return tp, ignored


def ilsvrc_match(iou: np.ndarray, thresholds: np.ndarray, gt_ignore: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ILSVRC greedy matching. `iou` [K, G] as for voc_match, `thresholds` [G], `gt_ignore` [G].
    Returns (true positive [K], ignored [K]).

    Each round finds the first detection with a free box above its threshold and gives it the
    best such box: at most G rounds of vectorised work, since a detection that finds no free box
    never will (boxes only get taken).
    """
    if iou.shape[1] == 0:
        none = np.zeros(len(iou), dtype=bool)
        return none, none.copy()
    eligible = iou >= thresholds[None, :]
    free = np.ones(iou.shape[1], dtype=bool)
    matched = np.full(len(iou), -1)
    start = 0
    while free.any():
        open_rows = eligible[start:] & free
        rows = np.flatnonzero(open_rows.any(axis=1))
        if rows.size == 0:
            break
        i = start + int(rows[0])
        j = int(np.argmax(np.where(open_rows[rows[0]], iou[i], -np.inf)))
        matched[i], free[j], start = j, False, i + 1
    found = matched >= 0
    ignored = found & gt_ignore[np.maximum(matched, 0)]
    return found & ~ignored, ignored


# --------------------------------------------------------------------------- average precision


def precision_envelope(precision: np.ndarray) -> np.ndarray:
    """Monotone (non-increasing) envelope [N]: at each point the best precision at this or higher recall."""
    return np.maximum.accumulate(precision[::-1])[::-1]


def voc07_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC2007 11-point AP: mean over t in {0, 0.1, .., 1} of max precision at recall >= t (0 if none)."""
    if recall.size == 0:
        return 0.0
    first = np.searchsorted(recall, VOC07_RECALL_POINTS, side="left")
    envelope = precision_envelope(precision)
    best = np.where(first < recall.size, envelope[np.minimum(first, recall.size - 1)], 0.0)
    return float(np.sum(best / 11.0))


def voc10_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC2010+ AP: area under the monotone precision envelope, recall from 0 to 1 (all points)."""
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = precision_envelope(np.concatenate(([0.0], precision, [0.0])))
    steps = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def pr_curve(tp: np.ndarray, num_gt: int) -> tuple[np.ndarray, np.ndarray]:
    """(recall, precision) float64 [N] from true-positive flags [N] in descending score order."""
    tps = np.cumsum(tp, dtype=np.float64)
    fps = np.cumsum(~tp, dtype=np.float64)
    return tps / float(num_gt), tps / np.maximum(tps + fps, np.finfo(np.float64).eps)


# --------------------------------------------------------------------------- evaluator


@dataclass
class _ImageTruth:
    """Ground truth of one image: inclusive-pixel boxes float64 [G, 4], labels [G], ignore [G],
    ILSVRC thresholds [G]."""

    boxes: np.ndarray
    labels: np.ndarray
    ignore: np.ndarray
    thresholds: np.ndarray

    @classmethod
    def of(cls, record: ImageRecord) -> _ImageTruth:
        boxes = xyxy_to_voc(record.boxes)
        return cls(boxes, record.labels, record.ignore.astype(bool), ilsvrc_thresholds(boxes))


class DevkitEvaluator:
    """voc07 / voc10 / ilsvrc scoring of one split: ``process`` each image, then ``evaluate``.

    Matching happens in ``process`` (per image, vectorised); ``evaluate`` sorts all detections by
    class and score once and computes the curves. Detections of images outside the split, labels
    out of range or non-finite boxes raise UserError; an image given twice raises UserError.
    """

    def __init__(self, metric: str, dataset: Dataset) -> None:
        if metric not in DEVKIT_METRICS:
            raise UserError(f"metric {metric!r}: expected one of {', '.join(DEVKIT_METRICS)}")
        self.metric = metric
        self.dataset = dataset
        self._truth = {record.image_id: _ImageTruth.of(record) for record in dataset.records}
        self._num_gt = count_by_class([r.labels[~r.ignore.astype(bool)] for r in dataset.records], dataset.classes)
        self._seen: set[str] = set()
        self._parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []

    def process(self, image_id: str, dets: ImageDetections) -> None:
        """Match the detections of one image against its ground truth."""
        where = f"detections for {self.dataset.name}"
        check_detections([(image_id, dets)], self._truth, len(self.dataset.classes), where)
        if image_id in self._seen:
            raise UserError(f"{where}: image {image_id!r} given twice")
        self._seen.add(image_id)
        order = np.argsort(-dets.scores, kind="stable")
        labels = dets.labels[order]
        truth = self._truth[image_id]
        iou = devkit_iou(xyxy_to_voc(dets.boxes[order]), truth.boxes)
        iou[labels[:, None] != truth.labels[None, :]] = -np.inf
        if self.metric == "ilsvrc":
            tp, ignored = ilsvrc_match(iou, truth.thresholds, truth.ignore)
        else:
            tp, ignored = voc_match(iou, truth.ignore)
        self._parts.append((dets.scores[order], labels, tp, ignored))

    def evaluate(self) -> EvalResult:
        """Per-class AP and curves over everything processed so far."""
        scores, labels, tp, ignored = (np.concatenate(arrays) for arrays in zip(*self._parts or [_NO_PARTS]))
        classes = self.dataset.classes
        num_dets = count_by_class([labels], classes)
        keep = ~ignored
        scores, labels, tp = scores[keep], labels[keep], tp[keep]
        order = np.lexsort((-scores, labels))  # by class, then descending score; stable
        labels, tp = labels[order], tp[order]
        bounds = np.searchsorted(labels, np.arange(len(classes) + 1))
        ap_of = voc07_ap if self.metric == "voc07" else voc10_ap
        ap, precision, recall = {}, {}, {}
        for c, name in enumerate(classes):
            if self._num_gt[name] == 0:
                ap[name], recall[name], precision[name] = np.nan, np.zeros(0), np.zeros(0)
                continue
            recall[name], precision[name] = pr_curve(tp[bounds[c]:bounds[c + 1]], self._num_gt[name])
            ap[name] = ap_of(recall[name], precision[name])
        return EvalResult(
            metric=self.metric,
            classes=list(classes),
            display_names=list(self.dataset.display_names),
            ap=ap,
            mAP=mean_ap(ap),
            precision=precision,
            recall=recall,
            num_gt=dict(self._num_gt),
            num_detections=num_dets,
        )


_NO_PARTS = (np.zeros(0, np.float32), np.zeros(0, np.int64), np.zeros(0, bool), np.zeros(0, bool))
