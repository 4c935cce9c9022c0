"""TIDE's error oracles, transcribed for the tests only as a reference for eval.analysis.

From tidecv 1.0.1 (https://github.com/dbolya/tide, MIT licence, (c) 2020 Daniel Bolya):
``quantify.py`` (TIDEExample matching, TIDERun._eval_image's error tests, fix_errors,
fix_main_errors, fix_special_errors), ``errors/main_errors.py`` and ``errors/error.py``
(BestGTMatch) and ``ap.py`` (APDataObject.get_ap), boxes only, without ignore regions, with
continuous xyxy IoU (as tidecv-light computes it). Loops are kept as in the original, so the
code reads against it line by line; AP is in TIDE's 0-100 units.
"""
from __future__ import annotations

import numpy as np

MAIN = ("cls", "loc", "both", "dupe", "bkg", "miss")


def _iou(a, b) -> float:
    iw = max(min(a[2], b[2]) - max(a[0], b[0]), 0)
    ih = max(min(a[3], b[3]) - max(a[1], b[1]), 0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - iw * ih
    return iw * ih / union


def get_ap(points: list[tuple[float, bool]], num_gt: int) -> float:
    """APDataObject.get_ap: 101-point interpolated AP of (score, correct) points, x100."""
    if num_gt == 0:
        return 0
    points = sorted(points, key=lambda x: -x[0])
    precisions, recalls, num_true, num_false = [], [], 0, 0
    for _, correct in points:
        num_true, num_false = num_true + correct, num_false + (not correct)
        precisions.append(num_true / (num_true + num_false))
        recalls.append(num_true / num_gt)
    for i in range(len(precisions) - 1, 0, -1):
        if precisions[i] > precisions[i - 1]:
            precisions[i - 1] = precisions[i]
    x_range = np.array([x / 100 for x in range(101)])
    y_range = [0] * 101
    for bar, index in enumerate(np.searchsorted(np.array(recalls), x_range, side="left")):
        if index < len(precisions):
            y_range[bar] = precisions[index]
    return sum(y_range) / len(y_range) * 100


def _m_ap(points: dict, gt_pos: dict) -> float:
    classes = [c for c in set(points) | set(gt_pos) if points.get(c) or gt_pos.get(c, 0)]
    return sum(get_ap(points.get(c, []), gt_pos.get(c, 0)) for c in classes) / len(classes)


class _Run:
    """TIDERun over `gts` [(image, class, box)] and `preds` [(image, class, score, box)]."""

    def __init__(self, gts, preds, pos=0.5, bg=0.1):
        self.pos, self.bg = pos, bg
        self.gt_pos: dict = {}
        self.correct: dict = {}  # class -> [(score, True)]
        self.errors: list[dict] = []
        self.false_negatives: dict = {}
        images = sorted({g[0] for g in gts} | {p[0] for p in preds})
        for image in images:
            self._image([g for g in gts if g[0] == image], [p for p in preds if p[0] == image])

    def _image(self, gts, preds):
        gts = [{"class": g[1], "box": g[2], "used": False, "usable": False} for g in gts]
        for g in gts:
            self.gt_pos[g["class"]] = self.gt_pos.get(g["class"], 0) + 1
        if not preds:
            for g in gts:
                self.errors.append({"type": "miss", "gt": g})
                self.false_negatives.setdefault(g["class"], []).append(g)
            return
        preds = sorted(preds, key=lambda p: -p[2])[:100]
        preds = [{"class": p[1], "score": p[2], "box": p[3], "used": False} for p in preds]
        if gts:
            iou = np.array([[_iou(p["box"], g["box"]) for g in gts] for p in preds])
            same = np.array([[p["class"] == g["class"] for g in gts] for p in preds])
            cls_iou = iou * same
            buffer = cls_iou.copy()
            for i, pred in enumerate(preds):
                j = int(np.argmax(buffer[i]))
                if buffer[i, j] >= self.pos:
                    pred["used"] = gts[j]["used"] = True
                    buffer[:, j] = 0
        for pred in preds:
            if pred["used"]:
                self.correct.setdefault(pred["class"], []).append((pred["score"], True))
        if gts:
            used = np.array([g["used"] for g in gts])[None, :]
            noncls_iou, used_cls = iou * ~same, used * iou * same
        for i, pred in enumerate(preds):
            if pred["used"]:
                continue
            if not gts:
                self._error("bkg", pred)
                continue
            j = int(cls_iou[i].argmax())
            if self.bg <= cls_iou[i, j] <= self.pos:
                self._error("loc", pred, gts[j])
                continue
            j = int(noncls_iou[i].argmax())
            if noncls_iou[i, j] >= self.pos:
                self._error("cls", pred, gts[j])
                continue
            j = int(used_cls[i].argmax())
            if used_cls[i, j] >= self.pos:
                self._error("dupe", pred)
                continue
            if iou[i].max() <= self.bg:
                self._error("bkg", pred)
                continue
            self._error("both", pred)
        for g in gts:
            if not g["used"]:
                self.false_negatives.setdefault(g["class"], []).append(g)
                if not g["usable"]:
                    self.errors.append({"type": "miss", "gt": g})

    def _error(self, kind, pred, gt=None):
        error = {"type": kind, "pred": pred, "gt": gt, "suppress": True}
        if kind in ("loc", "cls") and not gt["used"]:  # BestGTMatch
            error["suppress"] = False
            gt["usable"] = True
            if gt.get("best_score", -1) < pred["score"]:
                gt["best_score"], gt["best"] = pred["score"], id(pred)
        self.errors.append(error)

    def _fixed(self, error):
        """The error's data point when fixed: (class, point), (class, -1) for a miss, or None."""
        if error["type"] == "miss":
            return error["gt"]["class"], -1
        if error["type"] in ("loc", "cls") and not error["suppress"] and error["gt"]["best"] == id(error["pred"]):
            return (error["pred"]["class"] if error["type"] == "loc" else error["gt"]["class"]), (error["pred"]["score"], True)
        return None

    def fixed_map(self, condition=lambda e: False, transform=None, false_negatives=None) -> float:
        gt_pos, points = dict(self.gt_pos), {}
        for error in self.errors:
            entry = (error["pred"]["class"], (error["pred"]["score"], False)) if "pred" in error else None
            if condition(error):
                entry = self._fixed(error)
                if entry is not None and entry[1] == -1:
                    gt_pos[entry[0]] -= 1
                    entry = None
            if entry is not None:
                points.setdefault(entry[0], []).append(transform(*entry[1]) if transform else entry[1])
        for c, correct in self.correct.items():
            points.setdefault(c, []).extend(transform(*p) if transform else p for p in correct)
        if false_negatives:
            gt_pos = {c: v - len(false_negatives.get(c, [])) for c, v in gt_pos.items()}
        return _m_ap(points, gt_pos)


def tide(gts, preds, pos: float = 0.5, bg: float = 0.1) -> tuple[float, dict[str, float]]:
    """(mAP, {main type: dAP, fp: dAP, fn: dAP}) in TIDE's units (x100)."""
    run = _Run(gts, preds, pos, bg)
    ap = run.fixed_map()
    gains = {kind: max(run.fixed_map(lambda e, k=kind: e["type"] == k) - ap, 0) for kind in MAIN}
    gains["fp"] = run.fixed_map(transform=lambda score, correct: (1, True) if correct else (0, False)) - ap
    gains["fn"] = run.fixed_map(false_negatives=run.false_negatives) - ap
    return ap, gains
