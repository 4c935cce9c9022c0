"""Per-image matching and error types behind the error analysis (:mod:`eval.analysis`).

Written apart from the metric code (:mod:`eval.metrics`), so that nothing here can change an AP,
but with the same rules, so that the analysis's own AP equals the metric's (tests/test_analysis.py):

- ``voc07`` / ``voc10``: a detection goes to the box of its class it overlaps most; IoU > 0.5 and
  that box free -> true positive, taken -> false positive; an ``ignore`` box -> neither.
- ``ilsvrc``: IoU >= min(0.5, wh / ((w+10)(h+10))) of the box; greedy, the best free box.
- ``coco``: IoU >= t; greedy, the best free regular box, else an ignored (crowd) box (crowd IoU =
  intersection / detection area) -> neither; only the 100 best detections of a class per image.

With a size range (COCO's small / medium / large, box area in pixels), boxes outside it count as
ignored, and so do unmatched detections outside it, as COCOeval does for APs / APm / APl.

Each false positive then gets one TIDE error type (Bolya et al., ECCV 2020), tested in this order
(foreground rule: the metric's; background IoU t_b = 0.1; only regular boxes count):

- ``loc``: its best box of the same class has IoU >= t_b but fails the foreground rule;
- ``cls``: its best box of another class passes the foreground rule;
- ``dupe``: its best same-class box already matched by a higher-scoring detection passes;
- ``bkg``: IoU <= t_b with every box;
- ``both``: anything else (wrong class and poorly localised).

and one Hoiem type (R-CNN Fig. 5): ``loc`` (TIDE loc or dupe), ``sim`` (IoU >= 0.1 with a box of
a similar class), ``oth`` (IoU >= 0.1 with a box of another class), ``bg`` (the rest).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from detector.data.box_formats import xyxy_to_voc, xyxy_to_xywh
from detector.data.datasets import ImageRecord
from eval.detections import ImageDetections
from eval.metrics.devkit import devkit_iou, ilsvrc_thresholds

#: Detection kinds: a true positive, then the five TIDE false-positive types; IGNORED: neither.
TP, CLS, LOC, BOTH, DUPE, BKG, IGNORED = 0, 1, 2, 3, 4, 5, -1
KIND_NAMES = ("tp", "cls", "loc", "both", "dupe", "bkg")
#: Hoiem false-positive types (R-CNN Fig. 5); NO_HOIEM for detections that are not false positives.
HOIEM_TYPES = ("loc", "sim", "oth", "bg")
H_LOC, H_SIM, H_OTH, H_BG, NO_HOIEM = 0, 1, 2, 3, -1
BACKGROUND_IOU = 0.1  #: TIDE's t_b and Hoiem's overlap for "confused with an object"
VOC_IOU = 0.5
COCO_MAX_DETS = 100  #: COCOeval's maxDets: detections of one class per image that count
#: COCOeval's area ranges in square pixels (both ends inclusive, as COCOeval tests them).
SIZE_RANGES = {"all": (0.0, 1e10), "small": (0.0, 32.0 ** 2), "medium": (32.0 ** 2, 96.0 ** 2),
               "large": (96.0 ** 2, 1e10)}
#: COCO's IoU thresholds, built as COCOeval builds them.
COCO_IOUS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1)


@dataclass
class ImageCase:
    """One image ready for matching; detections in descending score order (stable).

    ``index`` [K] positions in the image's ImageDetections; ``labels`` [K] int64; ``scores`` [K]
    float32; ``det_area`` [K] px^2; ``iou`` [K, G] float64 for every pair of classes;
    ``gt_labels`` [G]; ``gt_ignore`` [G] bool; ``gt_area`` [G] px^2; ``thresholds`` [G] the
    ILSVRC IoU a box needs; ``same`` [K, G] bool: detection and box of one class.
    """

    index: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    det_area: np.ndarray
    iou: np.ndarray
    gt_labels: np.ndarray
    gt_ignore: np.ndarray
    gt_area: np.ndarray
    thresholds: np.ndarray
    same: np.ndarray


@dataclass
class ImageErrors:
    """Outcome of one image under one (IoU threshold, size range).

    Per detection [K] (ImageCase order): ``kind`` (TP, a TIDE type or IGNORED); ``fix_class``
    the class it becomes a true positive of when its error type is fixed (-1: it is removed
    instead); ``target`` the box its error refers to (-1: none); ``hoiem`` its Hoiem type (None
    when not asked for).
    Per box [G]: ``regular`` (counted), ``used`` (matched), ``missed`` (TIDE's missed
    ground truth: unmatched and no cls / loc error could take it).
    """

    kind: np.ndarray
    fix_class: np.ndarray
    target: np.ndarray
    hoiem: np.ndarray
    regular: np.ndarray
    used: np.ndarray
    missed: np.ndarray


# --------------------------------------------------------------------------- preparing an image


def prepare_image(record: ImageRecord, dets: ImageDetections, metric: str) -> ImageCase:
    """The ImageCase of one image's detections and ground truth under `metric`."""
    order = np.argsort(-dets.scores, kind="stable")
    if metric == "coco":
        order = _cap_per_class(order, dets.labels, COCO_MAX_DETS)
    boxes, gt = dets.boxes[order], record.boxes
    ignore = record.ignore.astype(bool)
    if metric == "coco":
        iou, det_area, gt_area = _coco_iou(boxes, gt, ignore)
        thresholds = np.zeros(len(gt))
    else:
        iou = devkit_iou(xyxy_to_voc(boxes), xyxy_to_voc(gt))
        det_area, gt_area = _box_area(boxes), _box_area(gt)
        thresholds = ilsvrc_thresholds(xyxy_to_voc(gt))
    labels = dets.labels[order]
    return ImageCase(order, labels, dets.scores[order], det_area, iou, record.labels, ignore, gt_area, thresholds,
                     labels[:, None] == record.labels[None, :])


def _cap_per_class(order: np.ndarray, labels: np.ndarray, cap: int) -> np.ndarray:
    """`order` [K] without the detections after the first `cap` of their class."""
    ranked = labels[order]
    rank = np.zeros(len(order), dtype=np.int64)
    for label in np.unique(ranked):
        at = np.flatnonzero(ranked == label)
        rank[at] = np.arange(len(at))
    return order[rank < cap]


def _box_area(boxes: np.ndarray) -> np.ndarray:
    """Areas [N] px^2 of xyxy boxes [N, 4] (float64)."""
    boxes = boxes.astype(np.float64)
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def _coco_iou(boxes: np.ndarray, gt: np.ndarray, crowd: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(IoU [K, G], detection areas [K], box areas [G]) as pycocotools computes them from the
    [x, y, w, h] of the results JSON; crowd boxes' columns are intersection / detection area."""
    d, g = xyxy_to_xywh(boxes).astype(np.float64), xyxy_to_xywh(gt).astype(np.float64)
    det_area, gt_area = d[:, 2] * d[:, 3], g[:, 2] * g[:, 3]
    iw = np.minimum(d[:, None, 0] + d[:, None, 2], g[None, :, 0] + g[None, :, 2]) - np.maximum(d[:, None, 0], g[None, :, 0])
    ih = np.minimum(d[:, None, 1] + d[:, None, 3], g[None, :, 1] + g[None, :, 3]) - np.maximum(d[:, None, 1], g[None, :, 1])
    inter = np.maximum(iw, 0.0) * np.maximum(ih, 0.0)
    union = np.where(crowd[None, :], det_area[:, None], det_area[:, None] + gt_area[None, :] - inter)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, inter / union, 0.0)
    return iou, det_area, gt_area


# --------------------------------------------------------------------------- matching


def passes(case: ImageCase, metric: str, threshold: float) -> np.ndarray:
    """bool [K, G]: the pair's IoU meets the metric's foreground rule (classes not compared)."""
    if metric in ("voc07", "voc10"):
        return case.iou > VOC_IOU
    if metric == "ilsvrc":
        return case.iou >= case.thresholds[None, :]
    return case.iou >= min(threshold, 1 - 1e-10)


def match(case: ImageCase, metric: str, fg: np.ndarray, gt_ignore: np.ndarray) -> np.ndarray:
    """Matched box [K] of every detection (-1: none) under `metric`, given the foreground pairs
    `fg` [K, G] (passes() and the same class) and the boxes that count as ignored [G]."""
    if case.iou.shape[1] == 0 or len(case.labels) == 0:
        return np.full(len(case.labels), -1)
    if metric in ("voc07", "voc10"):
        return _match_voc(case, fg, gt_ignore)
    if metric == "ilsvrc":
        return greedy(case.iou, fg)
    matched = greedy(case.iou, fg & ~gt_ignore[None, :], last_best=True)
    rest = fg & gt_ignore[None, :] & (matched < 0)[:, None]
    if rest.any():
        reusable = case.gt_ignore  # crowd boxes take any number of detections
        found = greedy(case.iou, rest, reusable, last_best=True)
        matched = np.where(matched < 0, found, matched)
    return matched


def _match_voc(case: ImageCase, fg: np.ndarray, gt_ignore: np.ndarray) -> np.ndarray:
    """VOC: each detection's best same-class box; the first detection to reach a regular box
    takes it (later ones are unmatched); every detection reaching an ignored box keeps it."""
    same = case.labels[:, None] == case.gt_labels[None, :]
    best = np.where(same, case.iou, -np.inf).argmax(axis=1)
    rows = np.arange(len(best))
    hit = fg[rows, best]
    matched = np.where(hit & gt_ignore[best], best, -1)
    candidates = np.flatnonzero(hit & ~gt_ignore[best])
    _, first = np.unique(best[candidates], return_index=True)
    matched[candidates[first]] = best[candidates[first]]
    return matched


def greedy(iou: np.ndarray, eligible: np.ndarray, reusable: np.ndarray | None = None,
           last_best: bool = False) -> np.ndarray:
    """Greedy matching [K] (-1: none): in order, each detection takes the eligible box [K, G] of
    highest IoU still free; `reusable` [G] boxes stay free. `last_best` breaks IoU ties towards
    the last box, as COCOeval does. A detection that finds no free box never will, so each round
    starts after the last match: at most one round per match.
    """
    matched = np.full(len(iou), -1)
    if reusable is not None and reusable[eligible.any(axis=0)].all():  # all crowd: no competition
        rows = np.flatnonzero(eligible.any(axis=1))
        matched[rows] = _best(np.where(eligible[rows], iou[rows], -np.inf), last_best)
        return matched
    free = np.ones(iou.shape[1], dtype=bool)
    start = 0
    while start < len(iou):
        open_rows = eligible[start:] & free
        found = np.flatnonzero(open_rows.any(axis=1))
        if found.size == 0:
            break
        i = start + int(found[0])
        j = int(_best(np.where(open_rows[found[0]], iou[i], -np.inf)[None, :], last_best)[0])
        matched[i] = j
        free[j] = bool(reusable is not None and reusable[j])
        start = i + 1
    return matched


def _best(values: np.ndarray, last: bool) -> np.ndarray:
    """Column of each row's maximum [K] of `values` [K, G]: the first one, or the last one."""
    if not last:
        return values.argmax(axis=1)
    return values.shape[1] - 1 - values[:, ::-1].argmax(axis=1)


# --------------------------------------------------------------------------- error types


def image_errors(case: ImageCase, metric: str, threshold: float, size: str, ok: np.ndarray,
                 similar: np.ndarray | None = None) -> ImageErrors:
    """Match one image under (`threshold`, `size`) and type its errors; `ok` is passes() at
    `threshold`; with `similar` [C, C] bool (which classes are similar), the Hoiem types too."""
    low, high = SIZE_RANGES[size]
    gt_ignore = case.gt_ignore | (case.gt_area < low) | (case.gt_area > high) if size != "all" else case.gt_ignore
    same = case.same
    matched = match(case, metric, ok & same, gt_ignore)
    found = matched >= 0
    ignored = found & gt_ignore[np.maximum(matched, 0)] if gt_ignore.size else np.zeros(len(found), bool)
    if size != "all":
        ignored |= ~found & ((case.det_area < low) | (case.det_area > high))
    tp = found & ~ignored
    used = np.zeros(len(case.gt_labels), dtype=bool)
    used[matched[tp]] = True
    kind, target = _false_positive_types(case, ok, same, ~gt_ignore, used, ~tp & ~ignored)
    kind[tp], kind[ignored] = TP, IGNORED
    fix_class, targeted = _fixes(case, kind, target, used)
    regular = ~gt_ignore
    hoiem = _hoiem_types(case, kind, same, regular, similar) if similar is not None else None
    return ImageErrors(kind, fix_class, target, hoiem, regular, used, regular & ~used & ~targeted)


def _best_of(iou: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(column [K], value [K]) of each row's highest IoU among `mask` [K, G]; value -1 when none."""
    masked = np.where(mask, iou, -1.0)
    best = masked.argmax(axis=1)
    return best, masked[np.arange(len(best)), best]


def _false_positive_types(case: ImageCase, ok: np.ndarray, same: np.ndarray, regular: np.ndarray,
                          used: np.ndarray, fp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(kind [K], target box [K]) of the false positives `fp` [K], in TIDE's order of tests."""
    kind = np.full(len(fp), TP, dtype=np.int8)
    target = np.full(len(fp), -1)
    if not regular.any():
        kind[fp] = BKG
        return kind, target
    rows, iou, other = np.arange(len(fp)), case.iou, ~same & regular[None, :]
    best_same, iou_same = _best_of(iou, same & regular[None, :])
    loc = fp & (iou_same >= BACKGROUND_IOU) & ~ok[rows, best_same]
    best_other, _ = _best_of(iou, other)
    cls = fp & ~loc & (ok & other)[rows, best_other]
    taken = same & (regular & used)[None, :]
    best_taken, _ = _best_of(iou, taken)
    dupe = fp & ~loc & ~cls & (ok & taken)[rows, best_taken]
    best_any, iou_any = _best_of(iou, np.broadcast_to(regular[None, :], iou.shape))
    rest = fp & ~loc & ~cls & ~dupe
    bkg = rest & (iou_any <= BACKGROUND_IOU)
    for mask, code, box in ((loc, LOC, best_same), (cls, CLS, best_other), (dupe, DUPE, best_taken),
                            (rest & ~bkg, BOTH, best_any), (bkg, BKG, None)):
        kind[mask] = code
        if box is not None:
            target[mask] = box[mask]
    return kind, target


def _fixes(case: ImageCase, kind: np.ndarray, target: np.ndarray, used: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fix_class [K], targeted [G]). TIDE's rule: a cls or loc error whose box is unmatched
    becomes a true positive when its type is fixed (of the box's class), but only the
    highest-scoring such error per box; every other error is removed when fixed."""
    fix_class = np.full(len(kind), -1)
    targeted = np.zeros(len(used), dtype=bool)
    candidates = np.flatnonzero(((kind == CLS) | (kind == LOC)) & (target >= 0))
    candidates = candidates[~used[target[candidates]]]
    if candidates.size:
        targeted[target[candidates]] = True
        _, first = np.unique(target[candidates], return_index=True)
        fixers = candidates[first]
        fix_class[fixers] = case.gt_labels[target[fixers]]
    return fix_class, targeted


def _hoiem_types(case: ImageCase, kind: np.ndarray, same: np.ndarray, regular: np.ndarray,
                 similar: np.ndarray) -> np.ndarray:
    """Hoiem type [K] of every false positive (NO_HOIEM for the rest)."""
    hoiem = np.full(len(kind), NO_HOIEM, dtype=np.int8)
    fp = kind > TP
    hoiem[(kind == LOC) | (kind == DUPE)] = H_LOC
    rest = fp & (hoiem == NO_HOIEM)
    if not rest.any() or not regular.any():
        hoiem[rest] = H_BG
        return hoiem
    other = ~same & regular[None, :]
    similar_pair = other & similar[case.labels][:, case.gt_labels]
    _, iou_sim = _best_of(case.iou, similar_pair)
    _, iou_oth = _best_of(case.iou, other & ~similar_pair)
    sim = rest & (iou_sim >= BACKGROUND_IOU)
    oth = rest & ~sim & (iou_oth >= BACKGROUND_IOU)
    hoiem[sim], hoiem[oth], hoiem[rest & ~sim & ~oth] = H_SIM, H_OTH, H_BG
    return hoiem
