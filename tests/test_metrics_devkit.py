"""VOC07 / VOC10 / ILSVRC evaluators: hand-computed cases for every rule, and random cross-checks
against straightforward transcriptions of py-faster-rcnn's voc_eval.py and the ILSVRC devkit's
eval_detection.m (kept here, in the tests only).

Hand cases give boxes in the devkits' 1-based inclusive pixels, converted with voc_to_xyxy.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from detector.common.errors import UserError
from detector.data.box_formats import voc_to_xyxy, xyxy_to_voc
from detector.data.datasets import Dataset, ImageRecord
from eval.detections import ImageDetections
from eval.metrics import default_metric, make_evaluator, resolve_metric
from eval.metrics.devkit import devkit_iou, ilsvrc_thresholds

CLASSES = ["a", "b", "c"]


def record(image_id: str, boxes=(), labels=(), ignore=None) -> ImageRecord:
    boxes = voc_to_xyxy(np.array(boxes, dtype=np.float32).reshape(-1, 4))
    ignore = np.zeros(len(boxes), bool) if ignore is None else np.array(ignore, bool)
    return ImageRecord(image_id, Path(f"{image_id}.jpg"), 500, 400, boxes, np.array(labels, np.int64), ignore)


def dets(boxes, scores, labels) -> ImageDetections:
    return ImageDetections(voc_to_xyxy(np.array(boxes, np.float32)), scores, labels)


def dataset(*records: ImageRecord, classes=CLASSES) -> Dataset:
    return Dataset("hand/test", list(classes), list(classes), list(records))


def score(metric: str, ds: Dataset, detections: dict[str, ImageDetections]):
    evaluator = make_evaluator(metric, ds)
    for image_id, d in detections.items():
        evaluator.process(image_id, d)
    return evaluator.evaluate()


# --------------------------------------------------------------------------- overlaps


def test_devkit_iou_on_inclusive_boxes_equals_continuous_iou():
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 300, (2, 50, 2))
    wh = rng.uniform(0.5, 200, (2, 50, 2))
    a, b = (np.concatenate([p, p + s], 1).astype(np.float32) for p, s in zip(xy, wh))
    ours = devkit_iou(xyxy_to_voc(a), xyxy_to_voc(b))
    reference = box_iou(torch.from_numpy(a).double(), torch.from_numpy(b).double()).numpy()
    np.testing.assert_allclose(ours, reference, atol=1e-9)
    # VOC pixels 1..10 x 1..10 vs 1..10 x 1..5: 50 of 100 pixels -> exactly 0.5, continuous too
    assert devkit_iou(np.array([[1.0, 1, 10, 10]]), np.array([[1.0, 1, 10, 5]]))[0, 0] == 0.5


def test_ilsvrc_thresholds_follow_box_size():
    gts = xyxy_to_voc(np.array([[0, 0, 10, 10], [0, 0, 15, 15], [0, 0, 100, 100], [0, 0, 20, 40]], np.float32))
    np.testing.assert_allclose(ilsvrc_thresholds(gts), [100 / 400, 225 / 625, 0.5, 0.5])


# --------------------------------------------------------------------------- rules


def test_voc_needs_iou_above_half_ilsvrc_accepts_equal():
    ds = dataset(record("i", [[1, 1, 100, 100]], [0]))
    half = {"i": dets([[1, 1, 100, 50]], [0.9], [0])}  # IoU exactly 0.5
    assert score("voc10", ds, half).ap["a"] == 0.0
    assert score("ilsvrc", ds, half).ap["a"] == 1.0


def test_ilsvrc_small_box_threshold_accepts_loose_detection():
    ds = dataset(record("i", [[1, 1, 10, 10]], [0]))  # 10x10: threshold 0.25
    loose = {"i": dets([[1, 1, 10, 4]], [0.9], [0])}  # IoU 0.4
    assert score("ilsvrc", ds, loose).ap["a"] == 1.0
    assert score("voc10", ds, loose).ap["a"] == 0.0
    too_loose = {"i": dets([[1, 1, 10, 2]], [0.9], [0])}  # IoU 0.2 < 0.25
    assert score("ilsvrc", ds, too_loose).ap["a"] == 0.0


def test_difficult_objects_are_neither_true_nor_false_positives():
    ds = dataset(record("i", [[1, 1, 50, 50], [101, 101, 150, 150]], [0, 0], ignore=[False, True]))
    detections = {"i": dets([[101, 101, 150, 150], [300, 300, 350, 350], [1, 1, 50, 50]], [0.9, 0.8, 0.7], [0, 0, 0])}
    result = score("voc10", ds, detections)
    # the difficult hit vanishes: FP (0.8) then TP (0.7) of 1 object -> precision 1/2 at recall 1
    assert result.ap["a"] == pytest.approx(0.5)
    assert result.num_gt["a"] == 1 and result.num_detections["a"] == 3
    np.testing.assert_allclose(result.recall["a"], [0, 1])
    np.testing.assert_allclose(result.precision["a"], [0, 0.5])


def test_duplicates_are_false_positives_with_both_ap_rules():
    ds = dataset(record("i", [[1, 1, 50, 50]], [0]), record("j", [[1, 1, 50, 50]], [0]))
    detections = {"i": dets([[1, 1, 50, 50], [2, 2, 50, 50]], [0.9, 0.8], [0, 0]),
                  "j": dets([[1, 1, 50, 50]], [0.7], [0])}
    # TP, duplicate FP, TP: recall .5 .5 1, precision 1 .5 2/3
    assert score("voc10", ds, detections).ap["a"] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert score("voc07", ds, detections).ap["a"] == pytest.approx((6 * 1 + 5 * 2 / 3) / 11)


def test_voc_keeps_taken_best_box_ilsvrc_moves_to_next_free_box():
    gts = [[1, 1, 100, 100], [41, 1, 140, 100]]
    ds = dataset(record("i", gts, [0, 0]))
    # second detection overlaps the (taken) first box most, the second box by 0.6 (> 0.5)
    second = [11, 1, 110, 100]
    iou = devkit_iou(np.array([second], float), np.array(gts, float))[0]
    assert iou[0] > iou[1] > 0.5
    detections = {"i": dets([gts[0], second], [0.9, 0.8], [0, 0])}
    assert score("voc10", ds, detections).ap["a"] == pytest.approx(0.5)  # TP, FP (duplicate)
    assert score("ilsvrc", ds, detections).ap["a"] == 1.0  # TP, TP


def test_images_without_objects_contribute_false_positives():
    ds = dataset(record("obj", [[1, 1, 50, 50]], [0]), record("empty"))
    detections = {"empty": dets([[1, 1, 50, 50]], [0.9], [0]), "obj": dets([[1, 1, 50, 50]], [0.5], [0])}
    assert score("ilsvrc", ds, detections).ap["a"] == pytest.approx(0.5)


def test_other_class_boxes_never_match():
    ds = dataset(record("i", [[1, 1, 50, 50]], [1]))
    result = score("voc10", ds, {"i": dets([[1, 1, 50, 50]], [0.9], [0])})
    assert result.ap["b"] == 0.0 and math.isnan(result.ap["a"])


def test_missing_detections_and_missing_ground_truth():
    ds = dataset(record("i", [[1, 1, 50, 50], [1, 1, 80, 80]], [0, 1]), record("j", [[1, 1, 50, 50]], [0]))
    result = score("voc07", ds, {"i": dets([[1, 1, 50, 50]], [0.9], [0])})
    assert result.ap["a"] == pytest.approx((6 * 1 + 5 * 0) / 11)  # recall stops at 0.5
    assert result.ap["b"] == 0.0  # ground truth, no detections
    assert math.isnan(result.ap["c"])  # no ground truth: undefined, not in the mean
    assert result.mAP == pytest.approx((result.ap["a"] + 0.0) / 2)
    assert result.precision["c"].size == 0


@pytest.mark.parametrize("metric", ["voc07", "voc10", "ilsvrc", "coco"])
def test_no_detections_at_all_scores_zero(metric):
    ds = dataset(record("i", [[1, 1, 50, 50]], [0]), record("j"))
    result = score(metric, ds, {"j": ImageDetections.empty()})
    assert result.ap["a"] == 0.0 and result.mAP == 0.0
    assert math.isnan(result.ap["b"])


@pytest.mark.parametrize("metric", ["voc10", "coco"])
def test_bad_detections_are_rejected(metric):
    ds = dataset(record("i", [[1, 1, 50, 50]], [0]))
    evaluator = make_evaluator(metric, ds)
    with pytest.raises(UserError, match="not in the split.*'nope'"):
        evaluator.process("nope", dets([[1, 1, 5, 5]], [0.5], [0]))
    with pytest.raises(UserError, match=r"labels outside 0\.\.2"):
        evaluator.process("i", dets([[1, 1, 5, 5]], [0.5], [3]))
    evaluator.process("i", dets([[1, 1, 5, 5]], [0.5], [0]))
    with pytest.raises(UserError, match="given twice"):
        evaluator.process("i", dets([[1, 1, 5, 5]], [0.5], [0]))


def test_metric_names():
    assert [default_metric(f) for f in ("voc", "ilsvrc_det", "coco", "yolo")] == ["voc07", "ilsvrc", "coco", "coco"]
    assert resolve_metric("auto", "coco") == "coco" and resolve_metric("voc10", "coco") == "voc10"
    with pytest.raises(UserError, match="'map50'"):
        resolve_metric("map50", "voc")


# --------------------------------------------------------------------------- devkit transcriptions


def reference_voc_ap(rec, prec, use_07_metric):
    """py-faster-rcnn voc_eval.voc_ap, verbatim in substance."""
    if use_07_metric:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            p = 0 if np.sum(rec >= t) == 0 else np.max(prec[rec >= t])
            ap = ap + p / 11.0
        return ap
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = np.maximum(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1])


def reference_voc_eval(ds: Dataset, detections, cls: int, use_07_metric: bool, ilsvrc: bool = False):
    """py-faster-rcnn voc_eval's loop (or, with ilsvrc, eval_detection.m's) on inclusive boxes."""
    class_recs, npos = {}, 0
    for r in ds.records:
        keep = r.labels == cls
        bbox = xyxy_to_voc(r.boxes[keep])
        w, h = bbox[:, 2] - bbox[:, 0] + 1, bbox[:, 3] - bbox[:, 1] + 1
        thr = np.minimum(0.5, w * h / ((w + 10) * (h + 10)))
        class_recs[r.image_id] = {"bbox": bbox, "difficult": r.ignore[keep], "det": [False] * int(keep.sum()), "thr": thr}
        npos += int((~r.ignore[keep]).sum())
    image_ids, confidence, boxes = [], [], []
    for image_id, d in detections.items():
        keep = d.labels == cls
        image_ids += [image_id] * int(keep.sum())
        confidence.append(d.scores[keep])
        boxes.append(xyxy_to_voc(d.boxes[keep]))
    confidence, BB = np.concatenate(confidence), np.concatenate(boxes)
    sorted_ind = np.argsort(-confidence)
    BB, image_ids = BB[sorted_ind, :], [image_ids[x] for x in sorted_ind]
    nd = len(image_ids)
    tp, fp = np.zeros(nd), np.zeros(nd)
    for d in range(nd):
        R, bb, ovmax, jmax = class_recs[image_ids[d]], BB[d, :].astype(float), -np.inf, -1
        for k in range(len(R["bbox"])):
            bbgt = R["bbox"][k]
            iw = max(min(bb[2], bbgt[2]) - max(bb[0], bbgt[0]) + 1.0, 0.0)
            ih = max(min(bb[3], bbgt[3]) - max(bb[1], bbgt[1]) + 1.0, 0.0)
            inters = iw * ih
            uni = (bb[2] - bb[0] + 1.0) * (bb[3] - bb[1] + 1.0) + (bbgt[2] - bbgt[0] + 1.0) * (bbgt[3] - bbgt[1] + 1.0) - inters
            ov = inters / uni
            if ilsvrc:
                if not R["det"][k] and ov >= R["thr"][k] and ov > ovmax:
                    ovmax, jmax = ov, k
            elif ov > ovmax:
                ovmax, jmax = ov, k
        if ilsvrc:
            if jmax >= 0:
                tp[d], R["det"][jmax] = 1.0, True
            else:
                fp[d] = 1.0
        elif ovmax > 0.5:
            if not R["difficult"][jmax]:
                if not R["det"][jmax]:
                    tp[d], R["det"][jmax] = 1.0, True
                else:
                    fp[d] = 1.0
        else:
            fp[d] = 1.0
    fp, tp = np.cumsum(fp), np.cumsum(tp)
    rec = tp / float(npos)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return reference_voc_ap(rec, prec, use_07_metric)


def random_split(seed: int, images: int = 40, small: bool = False, difficult: float = 0.2):
    """Random ground truth (some images empty) and detections: jittered copies plus clutter."""
    rng = np.random.default_rng(seed)
    records, detections = [], {}
    scores = rng.permutation(images * 30).astype(np.float32)  # distinct: no tie-breaking questions
    for i in range(images):
        n = int(rng.integers(0, 5))
        side = (4, 30) if small else (10, 150)
        xy = rng.integers(1, 300, (n, 2))
        gt = np.concatenate([xy, xy + rng.integers(*side, (n, 2))], 1)
        records.append(record(f"im{i}", gt, rng.integers(0, 3, n), rng.random(n) < difficult))
        m = int(rng.integers(0, 30))
        copies = np.repeat(gt, 3, axis=0) + rng.integers(-4, 5, (3 * n, 4))
        clutter_xy = rng.integers(1, 300, (m, 2))
        clutter = np.concatenate([clutter_xy, clutter_xy + rng.integers(*side, (m, 2))], 1)
        boxes = np.concatenate([copies, clutter])[:m]
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2])
        labels = np.concatenate([np.repeat(records[-1].labels, 3), rng.integers(0, 3, m)])[:m]
        detections[f"im{i}"] = dets(boxes, scores[i * 30:i * 30 + m], labels)
    return dataset(*records), detections


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("metric", ["voc07", "voc10"])
def test_voc_matches_py_faster_rcnn_voc_eval(seed, metric):
    ds, detections = random_split(seed)
    result = score(metric, ds, detections)
    for c, name in enumerate(CLASSES):
        expected = reference_voc_eval(ds, detections, c, use_07_metric=metric == "voc07")
        assert result.ap[name] == pytest.approx(expected, abs=1e-12), name
    assert 0.05 < result.mAP < 0.95  # a non-trivial mix of hits, misses and duplicates


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ilsvrc_matches_devkit_greedy_matching(seed):
    ds, detections = random_split(seed, small=True, difficult=0.0)
    result = score("ilsvrc", ds, detections)
    for c, name in enumerate(CLASSES):
        expected = reference_voc_eval(ds, detections, c, use_07_metric=False, ilsvrc=True)
        assert result.ap[name] == pytest.approx(expected, abs=1e-12), name
    assert result.mAP != score("voc10", ds, detections).mAP  # the small-box rule changes results
