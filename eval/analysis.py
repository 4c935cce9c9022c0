"""Where the AP goes: TIDE error breakdown and Hoiem false-positive analysis of one split.

::

    analysis = analyse(dets, dataset, "voc10", AnalysisOptions(similar_classes={"pets": ["cat", "dog"]}))
    analysis.summary   # JSON-safe dict, stored under "analysis" in metrics.json
    analysis.errors    # per-detection and per-box detail, for the galleries (eval.gallery)

Matching and error types are in :mod:`eval.analysis_match`. TIDE's oracles (Bolya et al., ECCV
2020), each the AP with one thing fixed, and the *gain* of each the oracle's AP minus the
AP (clipped at 0, as TIDE does; fixing never lowers these APs, so only rounding is clipped):

- ``cls`` / ``loc``: those errors become true positives of the box they refer to, when that box is
  unmatched and the error is the highest-scoring one referring to it; the others are removed;
- ``both`` / ``dupe`` / ``bkg``: those false positives are removed;
- ``miss``: missed boxes (unmatched, and no cls / loc error could take them) leave the ground truth;
- ``fp``: every false positive removed; ``fn``: every unmatched box leaves the ground truth;
- ``all``: the six main types fixed at once, which leaves only true positives and the boxes they
  match, so its AP is 1 for every class with ground truth (a check of the bookkeeping).

A class whose ground truth an oracle empties has AP 1 when no detection of it is left and 0
otherwise; classes without ground truth are n/a and left out of means, as in the metrics.
AP is the metric's own (voc07 11-point, voc10 / ilsvrc all-point, coco 101-point averaged
over IoU 0.5:0.95, one breakdown per threshold), so the breakdown's AP equals the metric's AP;
the per-size numbers use COCO's small / medium / large ranges of box area for every metric.

Hoiem et al.'s analysis (R-CNN Fig. 5): of the top-ranked false positives of a class, the first
k = m * N (N its ground-truth boxes, m in HOIEM_MULTIPLES), how many are loc / sim / oth / bg.
Similar classes come from ``eval.similar_classes`` (group name -> classes; two classes are
similar when a group holds both). The shipped WordNet class maps (configs/classes/*.json) record
each class's synsets and ImageNet classes but not their hypernyms, so no siblings are derived
from them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from detector.common.errors import UserError
from detector.data.coco_json import coco_ids
from detector.data.datasets import Dataset
from eval.analysis_match import (
    BKG,
    BOTH,
    CLS,
    COCO_IOUS,
    DUPE,
    HOIEM_TYPES,
    KIND_NAMES,
    LOC,
    SIZE_RANGES,
    TP,
    VOC_IOU,
    image_errors,
    passes,
    prepare_image,
)
from eval.detections import Detections, ImageDetections
from eval.metrics.devkit import pr_curve, voc07_ap, voc10_ap

ANALYSIS_VERSION = 1  #: bumped when the numbers' definitions change (enters `rcnn run`'s keys)
MAIN_ERRORS = ("cls", "loc", "both", "dupe", "bkg", "miss")
SPECIAL_ERRORS = ("fp", "fn")
ORACLES = MAIN_ERRORS + SPECIAL_ERRORS + ("all",)
HOIEM_MULTIPLES = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
#: COCO's 101 recall points, built as COCOeval builds them.
COCO_RECALLS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1)
_EMPTY = ImageDetections.empty()


@dataclass
class AnalysisOptions:
    """What the analysis and galleries do (``eval.analysis``, ``eval.similar_classes``,
    ``eval.gallery_per_class``, ``eval.gallery_total`` of the config)."""

    enabled: bool = True
    similar_classes: dict[str, list[str]] = field(default_factory=dict)  #: group -> class ids or names
    gallery_per_class: int = 12  #: pictures per class and kind (false positives, misses); 0: none
    gallery_total: int = 1200  #: at most this many pictures in all (fewer per class when many classes)

    @classmethod
    def from_config(cls, config: Any) -> AnalysisOptions:
        """Options from an object with attributes analysis, similar_classes, gallery_per_class and
        gallery_total (the config's EvalConfig)."""
        return cls(bool(config.analysis), dict(config.similar_classes), int(config.gallery_per_class),
                   int(config.gallery_total))

    def key(self) -> dict:
        """The settings that change the analysis, for cache keys."""
        return {"version": ANALYSIS_VERSION, "enabled": self.enabled, "similar": self.similar_classes,
                "gallery": [self.gallery_per_class, self.gallery_total]}


@dataclass
class AnalysisInput:
    """What write_reports needs to add the analysis: the scored detections and their split."""

    dets: Detections
    dataset: Dataset
    options: AnalysisOptions


@dataclass
class Outcome:
    """The split under one (IoU threshold, size range): per detection [N] (SplitErrors order)
    ``kind`` and ``fix_class`` (see ImageErrors); per class [C] ``num_gt`` (regular boxes),
    ``num_used`` (matched) and ``num_missed`` (TIDE's missed ground truth)."""

    kind: np.ndarray
    fix_class: np.ndarray
    num_gt: np.ndarray
    num_used: np.ndarray
    num_missed: np.ndarray


@dataclass
class SplitErrors:
    """Every detection of a split that the metric sees, in the metric's concatenation order.

    Per detection [N]: ``scores`` float32, ``labels`` int64, ``image`` (record index),
    ``position`` (index in its ImageDetections), and for the base case (first IoU threshold, all
    sizes) ``target`` (box index in its image, -1: none) and ``hoiem`` (Hoiem type, -1: not a false
    positive). Per regular box of the base case [M]: ``gt_image``, ``gt_index``, ``gt_label``,
    ``gt_area`` px^2, ``gt_used``, ``gt_missed``, ``gt_near`` (the detection, index into the
    per-detection arrays, overlapping it most; -1: none) and ``gt_near_iou``.
    ``outcomes`` maps (threshold index, size name) to its Outcome; ``order`` [N] sorts the
    detections by class, then descending score, ties in concatenation order (the metrics' sort).
    """

    thresholds: list[float]
    scores: np.ndarray
    labels: np.ndarray
    image: np.ndarray
    position: np.ndarray
    target: np.ndarray
    hoiem: np.ndarray
    gt: dict[str, np.ndarray]
    outcomes: dict[tuple[int, str], Outcome]
    order: np.ndarray


@dataclass
class Analysis:
    """The analysis of one split under one metric: ``summary`` (JSON-safe) and ``errors`` (detail)."""

    summary: dict
    errors: SplitErrors


# --------------------------------------------------------------------------- entry point


def analyse(dets: Detections, dataset: Dataset, metric: str, options: AnalysisOptions | None = None) -> Analysis:
    """TIDE breakdown and Hoiem analysis of `dets` (checked, as for scoring) on `dataset` under `metric`."""
    options = options or AnalysisOptions()
    similar = similar_matrix(dataset, options.similar_classes)
    errors = collect_errors(dets, dataset, metric, similar)
    aps = {combo: oracle_aps(errors, outcome, metric) for combo, outcome in errors.outcomes.items()}
    summary = {
        "metric": metric,
        "iou_thresholds": errors.thresholds,
        "background_iou": 0.1,
        "oracles": list(ORACLES),
        **breakdown(aps, errors, dataset),
        "hoiem": hoiem_summary(errors, dataset, similar, options.similar_classes),
    }
    return Analysis(json_safe(summary), errors)


# --------------------------------------------------------------------------- similar classes


def similar_matrix(dataset: Dataset, groups: dict[str, list[str]]) -> np.ndarray:
    """bool [C, C]: classes in a common group of `groups` (names: class ids or display names),
    False on the diagonal. Unknown names raise UserError."""
    index = {name: i for i, name in enumerate(dataset.display_names)} | {c: i for i, c in enumerate(dataset.classes)}
    similar = np.zeros((len(dataset.classes), len(dataset.classes)), dtype=bool)
    for group, names in groups.items():
        unknown = [name for name in names if name not in index]
        if unknown:
            raise UserError(f"eval.similar_classes.{group}: {', '.join(map(repr, unknown))} not among the classes "
                            f"of {dataset.name} ({', '.join(dataset.classes[:8])}{', ...' if len(dataset.classes) > 8 else ''})")
        members = [index[name] for name in names]
        similar[np.ix_(members, members)] = True
    np.fill_diagonal(similar, False)
    return similar


# --------------------------------------------------------------------------- per image -> split


def _image_order(dets: Detections, dataset: Dataset, metric: str) -> list[int]:
    """Record indices in the order the metric concatenates detections: COCOeval's sorted image
    ids; the devkits' order of `dets`, then the images without an entry."""
    if metric == "coco":
        image_ids, _ = coco_ids(dataset)
        return sorted(range(len(dataset.records)), key=lambda i: image_ids[i])
    where = {record.image_id: i for i, record in enumerate(dataset.records)}
    listed = [where[image_id] for image_id in dets]
    return listed + sorted(set(range(len(dataset.records))) - set(listed))


def collect_errors(dets: Detections, dataset: Dataset, metric: str, similar: np.ndarray) -> SplitErrors:
    """Match and type every image under each (threshold, size range); see SplitErrors."""
    thresholds = [float(t) for t in COCO_IOUS] if metric == "coco" else [VOC_IOU]
    combos = [(t, size) for t in range(len(thresholds)) for size in SIZE_RANGES]
    parts: dict[str, list] = {name: [] for name in ("scores", "labels", "image", "position", "target", "hoiem")}
    kinds: dict = {combo: ([], [], []) for combo in combos}  # kind, fix_class, (gt arrays)
    gt_parts: list = []
    offset = 0  # detections so far
    for i in _image_order(dets, dataset, metric):
        record = dataset.records[i]
        case = prepare_image(record, dets.get(record.image_id, _EMPTY), metric)
        ok = [passes(case, metric, t) for t in thresholds]
        for combo in combos:
            errs = image_errors(case, metric, thresholds[combo[0]], combo[1], ok[combo[0]],
                                similar if combo == combos[0] else None)
            kinds[combo][0].append(errs.kind)
            kinds[combo][1].append(errs.fix_class)
            kinds[combo][2].append((record.labels[errs.regular], errs.used[errs.regular], errs.missed[errs.regular]))
            if combo == combos[0]:
                base = errs
        for name, values in (("scores", case.scores), ("labels", case.labels), ("image", np.full(len(case.labels), i)),
                             ("position", case.index), ("target", base.target), ("hoiem", base.hoiem)):
            parts[name].append(values)
        gt_parts.append(_box_detail(i, case, base, offset))
        offset += len(case.labels)
    arrays = {name: _concat(values) for name, values in parts.items()}
    num_classes = len(dataset.classes)
    outcomes = {combo: _outcome(*kinds[combo], num_classes) for combo in combos}
    gt = {key: _concat([part[key] for part in gt_parts]) for key in gt_parts[0]} if gt_parts else {}
    scores, labels = arrays["scores"].astype(np.float32), arrays["labels"].astype(np.int64)
    return SplitErrors(thresholds, scores, labels, arrays["image"].astype(np.int64), arrays["position"].astype(np.int64),
                       arrays["target"].astype(np.int64), arrays["hoiem"].astype(np.int8), gt, outcomes,
                       np.lexsort((-scores, labels)))


def _concat(arrays: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(arrays) if arrays else np.zeros(0)


def _box_detail(image: int, case, base, offset: int) -> dict[str, np.ndarray]:
    """Per regular box of one image (base case): see SplitErrors.gt."""
    boxes = np.flatnonzero(base.regular)
    near = np.full(len(boxes), -1)
    near_iou = np.zeros(len(boxes))
    if len(case.labels) and len(boxes):
        columns = case.iou[:, boxes]
        near = columns.argmax(axis=0)
        near_iou = columns[near, np.arange(len(boxes))]
        near = np.where(near_iou > 0, near + offset, -1)
    return {"gt_image": np.full(len(boxes), image), "gt_index": boxes, "gt_label": case.gt_labels[boxes],
            "gt_area": case.gt_area[boxes], "gt_used": base.used[boxes], "gt_missed": base.missed[boxes],
            "gt_near": near, "gt_near_iou": near_iou}


def _outcome(kind: list, fix_class: list, gt: list, num_classes: int) -> Outcome:
    """One (threshold, size)'s Outcome from the per-image pieces."""
    labels = _concat([g[0] for g in gt]).astype(np.int64)
    count = lambda mask: np.bincount(labels[mask], minlength=num_classes)  # noqa: E731
    used = _concat([g[1] for g in gt]).astype(bool)
    missed = _concat([g[2] for g in gt]).astype(bool)
    return Outcome(_concat(kind).astype(np.int8), _concat(fix_class).astype(np.int64),
                   np.bincount(labels, minlength=num_classes), count(used), count(missed))


# --------------------------------------------------------------------------- oracle APs


def ap_function(metric: str) -> Callable[[np.ndarray, int], float]:
    """AP of true-positive flags [n] in descending score order against `num_gt` boxes, as `metric`
    computes it: voc07 11-point, voc10 / ilsvrc all-point, coco COCOeval's 101-point."""
    if metric == "coco":
        return coco_ap
    ap_of = voc07_ap if metric == "voc07" else voc10_ap
    return lambda tp, num_gt: ap_of(*pr_curve(tp, num_gt))


def coco_ap(tp: np.ndarray, num_gt: int) -> float:
    """COCOeval's AP of one class at one IoU: the precision envelope read at the 101 recall
    points (0 past the highest recall), averaged."""
    if not len(tp):
        return 0.0
    tps = np.cumsum(tp, dtype=np.float64)
    fps = np.cumsum(~tp, dtype=np.float64)
    envelope = np.maximum.accumulate((tps / (fps + tps + np.spacing(1)))[::-1])[::-1]
    at = np.searchsorted(tps / num_gt, COCO_RECALLS, side="left")
    return float(np.where(at < len(tp), envelope[np.minimum(at, len(tp) - 1)], 0.0).mean())


def oracle_aps(errors: SplitErrors, outcome: Outcome, metric: str) -> dict[str, np.ndarray]:
    """Per-class AP [C] of the metric ("ap") and of every oracle (ORACLES) under one Outcome."""
    order = errors.order
    labels, kind, fix = errors.labels[order], outcome.kind[order], outcome.fix_class[order]
    scores = errors.scores[order]
    ap_of = ap_function(metric)
    found = (kind == TP)
    gt, missed = outcome.num_gt, outcome.num_gt - outcome.num_missed
    aps = {"ap": _class_aps(labels, found, kind >= 0, gt, gt, ap_of)}
    for name, code in (("cls", CLS), ("loc", LOC)):
        fixed = kind == code
        keep = (kind >= 0) & (~fixed | (fix >= 0))
        aps[name] = _moved_aps(scores, np.where(fixed, fix, labels), found | fixed, keep, gt, gt, ap_of)
    for name, code in (("both", BOTH), ("dupe", DUPE), ("bkg", BKG)):
        aps[name] = _class_aps(labels, found, (kind >= 0) & (kind != code), gt, gt, ap_of)
    aps["miss"] = _class_aps(labels, found, kind >= 0, missed, gt, ap_of)
    aps["fp"] = _class_aps(labels, found, found, gt, gt, ap_of)
    aps["fn"] = _class_aps(labels, found, kind >= 0, outcome.num_used, gt, ap_of)
    fixable = ((kind == CLS) | (kind == LOC)) & (fix >= 0)
    aps["all"] = _moved_aps(scores, np.where(found, labels, fix), found | fixable, found | fixable, missed, gt, ap_of)
    return aps


def _moved_aps(scores, labels, tp, keep, num_gt, original_gt, ap_of) -> np.ndarray:
    """_class_aps after some detections changed class: the kept ones re-sorted (stable)."""
    scores, labels, tp = scores[keep], labels[keep], tp[keep]
    order = np.lexsort((-scores, labels))
    return _class_aps(labels[order], tp[order], np.ones(len(order), bool), num_gt, original_gt, ap_of)


def _class_aps(labels: np.ndarray, tp: np.ndarray, keep: np.ndarray, num_gt: np.ndarray, original_gt: np.ndarray,
               ap_of: Callable[[np.ndarray, int], float]) -> np.ndarray:
    """AP [C] per class of the kept detections (sorted by class, then score) against `num_gt` [C]
    boxes; NaN where `original_gt` is 0; 1 / 0 where `num_gt` is 0 with no / some detections."""
    labels, tp = labels[keep], tp[keep]
    bounds = np.searchsorted(labels, np.arange(len(num_gt) + 1))
    aps = np.full(len(num_gt), np.nan)
    for c in np.flatnonzero(original_gt):
        segment = tp[bounds[c]:bounds[c + 1]]
        aps[c] = ap_of(segment, int(num_gt[c])) if num_gt[c] else float(segment.size == 0)
    return aps


# --------------------------------------------------------------------------- summary


def _mean(values: np.ndarray) -> float:
    defined = values[~np.isnan(values)]
    return float(defined.mean()) if defined.size else math.nan


def _gains(aps: dict[str, np.ndarray]) -> tuple[float, dict[str, float], float]:
    """(mean AP, gain of each oracle but all, mean AP with all fixed) of per-class APs."""
    base = _mean(aps["ap"])
    gains = {name: max(_mean(aps[name]) - base, 0.0) if not math.isnan(base) else math.nan
             for name in MAIN_ERRORS + SPECIAL_ERRORS}
    return base, gains, _mean(aps["all"])


def _average(per_threshold: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per-class APs averaged over IoU thresholds (COCO's AP@[.5:.95])."""
    return {name: np.mean([aps[name] for aps in per_threshold], axis=0) for name in per_threshold[0]}


def breakdown(aps: dict[tuple[int, str], dict[str, np.ndarray]], errors: SplitErrors, dataset: Dataset) -> dict:
    """The TIDE part of the summary: overall, per size range, per IoU threshold (COCO) and per class."""
    count = len(errors.thresholds)
    by_size = {size: _average([aps[(t, size)] for t in range(count)]) for size in SIZE_RANGES}
    return {
        "overall": _overall(by_size["all"], errors.outcomes[(0, "all")]),
        "sizes": {size: _overall(by_size[size], errors.outcomes[(0, size)]) for size in SIZE_RANGES if size != "all"},
        "thresholds": [{"iou": t, **_overall(aps[(i, "all")])} for i, t in enumerate(errors.thresholds)] if count > 1 else [],
        "classes": _per_class(by_size["all"], errors, dataset),
    }


def _overall(aps: dict[str, np.ndarray], outcome: Outcome | None = None) -> dict:
    """Mean AP, gains and AP with all fixed of per-class APs; with `outcome`, its counts too."""
    base, gains, fixed = _gains(aps)
    out = {"ap": base, "gain": gains, "fixed_all": fixed}
    if outcome is not None:
        counts = _class_counts(outcome, None, 1)[0]
        out |= {"num_gt": int(outcome.num_gt.sum()), "counts": counts}
    return out


def _class_counts(outcome: Outcome, labels: np.ndarray | None, num_classes: int) -> list[dict[str, int]]:
    """Per class (or, without `labels`, in all): true positives and each error type (miss: boxes)."""
    kind = outcome.kind.astype(np.int64)
    group = np.zeros(len(kind), np.int64) if labels is None else labels
    valid = kind >= 0
    table = np.bincount(group[valid] * len(KIND_NAMES) + kind[valid], minlength=num_classes * len(KIND_NAMES))
    table = table.reshape(num_classes, len(KIND_NAMES))
    missed = [int(outcome.num_missed.sum())] if labels is None else outcome.num_missed.tolist()
    return [{**dict(zip(KIND_NAMES, map(int, row))), "miss": int(m)} for row, m in zip(table, missed)]


def _per_class(aps: dict[str, np.ndarray], errors: SplitErrors, dataset: Dataset) -> list[dict]:
    """One row per class: AP, gains, AP with all fixed, boxes and counts."""
    outcome = errors.outcomes[(0, "all")]
    counts = _class_counts(outcome, errors.labels, len(dataset.classes))
    rows = []
    for c, (class_id, name) in enumerate(zip(dataset.classes, dataset.display_names)):
        base = aps["ap"][c]
        gains = {key: max(aps[key][c] - base, 0.0) if not math.isnan(base) else math.nan
                 for key in MAIN_ERRORS + SPECIAL_ERRORS}
        rows.append({"id": class_id, "name": name, "ap": float(base), "gain": gains, "fixed_all": float(aps["all"][c]),
                     "num_gt": int(outcome.num_gt[c]), "counts": counts[c]})
    return rows


def json_safe(value: Any) -> Any:
    """`value` with NaN floats as None and numpy numbers as Python ones (for JSON)."""
    if isinstance(value, dict):
        return {key: json_safe(v) for key, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


# --------------------------------------------------------------------------- Hoiem


def hoiem_summary(errors: SplitErrors, dataset: Dataset, similar: np.ndarray, groups: dict[str, list[str]]) -> dict:
    """Hoiem type counts among the top k = m * N false positives of every class (and summed over
    classes), at each m of HOIEM_MULTIPLES; k is capped at the class's number of false positives."""
    outcome = errors.outcomes[(0, "all")]
    order = errors.order
    fp = outcome.kind[order] > TP
    labels, types = errors.labels[order][fp], errors.hoiem[order][fp]
    bounds = np.searchsorted(labels, np.arange(len(dataset.classes) + 1))
    classes, total_k, total = [], np.zeros(len(HOIEM_MULTIPLES), np.int64), np.zeros((4, len(HOIEM_MULTIPLES)), np.int64)
    for c, (class_id, name) in enumerate(zip(dataset.classes, dataset.display_names)):
        segment = types[bounds[c]:bounds[c + 1]]
        ks, counts = _top_counts(segment, int(outcome.num_gt[c]))
        total_k, total = total_k + ks, total + counts
        classes.append({"id": class_id, "name": name, "num_gt": int(outcome.num_gt[c]), "num_fp": int(len(segment)),
                        "k": ks.tolist(), "counts": dict(zip(HOIEM_TYPES, counts.tolist()))})
    return {"multiples": list(HOIEM_MULTIPLES), "types": list(HOIEM_TYPES), "similar_classes": groups,
            "similar_pairs": int(similar.sum() // 2),
            "overall": {"k": total_k.tolist(), "counts": dict(zip(HOIEM_TYPES, total.tolist()))},
            "classes": classes}


def _top_counts(types: np.ndarray, num_gt: int) -> tuple[np.ndarray, np.ndarray]:
    """(k [M], counts [4, M]): for each multiple m, k = min(round(m * num_gt), len(types)) and the
    number of each Hoiem type among the first k of `types` (score order)."""
    ks = np.array([min(int(round(m * num_gt)), len(types)) for m in HOIEM_MULTIPLES], dtype=np.int64)
    cumulative = np.zeros((4, len(types) + 1), dtype=np.int64)
    if len(types):
        cumulative[:, 1:] = np.cumsum(types[None, :] == np.arange(4)[:, None], axis=1)
    return ks, cumulative[:, ks]
