"""Error analysis (eval.analysis): hand-made cases with one error type each and its exact gain,
the breakdown's AP against the metrics', the bookkeeping (all fixed = 1, gains >= 0), TIDE's own
algorithm (tests/tide_reference.py, a transcription of tidecv) and Hoiem's false-positive types."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest

import eval.analysis as analysis_module
from detector.common.errors import UserError
from detector.data.datasets import Dataset, ImageRecord
from eval.analysis import AnalysisOptions, analyse, similar_matrix
from eval.detections import ImageDetections
from eval.metrics import score
from tests.tide_reference import tide

A = [0, 0, 100, 100]  # object boxes, far apart
B = [200, 0, 300, 100]
C = [0, 200, 100, 300]
TYPES = ("cls", "loc", "both", "dupe", "bkg", "miss")


def record(image_id: str, boxes, labels, ignore=None) -> ImageRecord:
    boxes = np.array(boxes, np.float32).reshape(-1, 4)
    ignore = np.zeros(len(boxes), bool) if ignore is None else np.array(ignore, bool)
    return ImageRecord(image_id, Path(f"{image_id}.jpg"), 400, 400, boxes, np.array(labels, np.int64), ignore)


def one_image(gt_boxes, gt_labels, det_boxes, scores, det_labels, classes=("a", "b", "c")):
    dataset = Dataset("hand/test", list(classes), list(classes), [record("i", gt_boxes, gt_labels)])
    return dataset, {"i": ImageDetections(np.array(det_boxes, np.float32).reshape(-1, 4), scores, det_labels)}


# --------------------------------------------------------------------------- one error type at a time

#: case -> (ground truth boxes, labels, detections, scores, labels, AP, gain of its type, FP gain, FN gain)
CASES = {
    # a "b" detection on the "a" object: fixing it moves it to class a as a true positive
    "cls": ([A, B], [0, 1], [A, B], [0.9, 0.8], [1, 1], 0.25, 0.75, 0.25, 0.5),
    # IoU 0.4 with the second "a" object, ranked first
    "loc": ([A, B], [0, 0], [[0, 0, 100, 40], B], [0.9, 0.8], [0, 0], 0.25, 0.75, 0.25, 0.25),
    # a "b" detection at IoU 0.3 with the "a" object, far from the "b" object
    "both": ([A, B], [0, 1], [[0, 0, 100, 30], A, B], [0.9, 0.8, 0.7], [1, 0, 1], 0.75, 0.25, 0.25, 0.0),
    # a second detection of the first object between the two true positives: 1/2 + 1/2 * 2/3
    "dupe": ([A, B], [0, 0], [A, [0, 0, 100, 90], B], [0.9, 0.8, 0.7], [0, 0, 0], 5 / 6, 1 / 6, 1 / 6, 0.0),
    "bkg": ([A, B], [0, 0], [A, C, B], [0.9, 0.8, 0.7], [0, 0, 0], 5 / 6, 1 / 6, 1 / 6, 0.0),
    # nothing near the second object
    "miss": ([A, B], [0, 0], [A], [0.9], [0], 0.5, 0.5, 0.0, 0.5),
}


@pytest.mark.parametrize("kind", TYPES)
def test_each_error_type_alone_gains_exactly_its_share(kind):
    gt_boxes, gt_labels, det_boxes, scores, det_labels, ap, gain, fp, fn = CASES[kind]
    dataset, dets = one_image(gt_boxes, gt_labels, det_boxes, scores, det_labels)
    summary = analyse(dets, dataset, "voc10").summary
    overall = summary["overall"]
    assert overall["ap"] == pytest.approx(ap, abs=1e-12) == score(dets, dataset, "voc10").mAP
    assert overall["gain"] == pytest.approx({**dict.fromkeys(TYPES, 0.0), kind: gain, "fp": fp, "fn": fn}, abs=1e-12)
    assert overall["fixed_all"] == 1.0
    counted = overall["counts"]
    assert counted[kind] == 1 and sum(counted[t] for t in TYPES) == 1
    for metric in ("voc07", "ilsvrc"):  # the same error under the other devkit rules
        other = analyse(dets, dataset, metric).summary["overall"]
        assert [t for t in TYPES if other["gain"][t] > 0] == [kind] and other["fixed_all"] == 1.0


def test_only_the_best_scoring_error_on_an_object_is_turned_into_a_true_positive():
    # two loc errors on the same object: fixing loc turns the higher-scoring one into a TP and
    # removes the other; the object is not "missed"
    dataset, dets = one_image([A], [0], [[0, 0, 100, 40], [0, 0, 100, 30]], [0.9, 0.8], [0, 0])
    summary = analyse(dets, dataset, "voc10").summary["overall"]
    assert summary["ap"] == 0.0 and summary["gain"]["loc"] == 1.0 and summary["gain"]["miss"] == 0.0
    assert summary["counts"]["loc"] == 2 and summary["counts"]["miss"] == 0


def test_an_error_on_a_matched_object_is_not_fixable():
    # the loc error refers to an object already found: fixing loc only removes it
    dataset, dets = one_image([A, B], [0, 0], [[0, 0, 100, 40], A, B], [0.9, 0.8, 0.7], [0, 0, 0])
    summary = analyse(dets, dataset, "voc10").summary["overall"]
    assert summary["ap"] == pytest.approx(2 / 3)  # FP, TP, TP: precision 2/3 at both recalls
    assert summary["gain"]["loc"] == pytest.approx(1 / 3) and summary["counts"]["loc"] == 1


def test_classes_without_objects_are_left_out_and_emptied_classes_count_as_perfect():
    # class a: one object, missed; class b: its object found; class c: no object, one detection
    dataset, dets = one_image([A, B], [0, 1], [B, C], [0.9, 0.8], [1, 2])
    summary = analyse(dets, dataset, "voc10").summary
    rows = {row["id"]: row for row in summary["classes"]}
    assert rows["c"]["ap"] is None and rows["c"]["gain"]["miss"] is None
    assert rows["a"]["ap"] == 0.0 and rows["a"]["gain"]["miss"] == 1.0  # nothing left to find, nothing wrong
    assert summary["overall"]["ap"] == 0.5 and summary["overall"]["fixed_all"] == 1.0


# --------------------------------------------------------------------------- against the metrics


def random_split(seed: int, images: int = 40, classes: int = 3, ignore_rate: float = 0.1):
    """Objects of 10-150 px, detections: two jittered copies of each (a quarter relabelled) and
    up to 14 random boxes."""
    rng = np.random.default_rng(seed)
    records, dets = [], {}
    for i in range(images):
        n = int(rng.integers(0, 5))
        xy, wh = rng.uniform(0, 300, (n, 2)), rng.uniform(10, 150, (n, 2))
        boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
        labels = rng.integers(0, classes, n)
        records.append(record(str(i), boxes, labels, rng.random(n) < ignore_rate))
        k = int(rng.integers(0, 15))
        jittered = np.sort((np.repeat(boxes, 2, 0) + rng.normal(0, 12, (2 * n, 4))).reshape(-1, 2, 2), 1).reshape(-1, 4)
        xy, wh = rng.uniform(0, 300, (k, 2)), rng.uniform(5, 150, (k, 2))
        det_labels = np.where(rng.random(2 * n) < 0.75, np.repeat(labels, 2), rng.integers(0, classes, 2 * n))
        dets[str(i)] = ImageDetections(np.concatenate([jittered, np.concatenate([xy, xy + wh], 1)]),
                                       np.concatenate([rng.uniform(0.2, 1, 2 * n), rng.uniform(0, 0.8, k)]),
                                       np.concatenate([det_labels, rng.integers(0, classes, k)]))
    names = [f"c{c}" for c in range(classes)]
    return Dataset("random/test", names, names, records), dets


@pytest.mark.parametrize("metric", ["voc07", "voc10", "ilsvrc", "coco"])
@pytest.mark.parametrize("seed", [0, 1])
def test_the_breakdowns_ap_is_the_metrics_and_its_bookkeeping_holds(metric, seed):
    dataset, dets = random_split(seed)
    result = score(dets, dataset, metric)
    summary = analyse(dets, dataset, metric).summary
    exact = 0.0 if metric != "coco" else 1e-12
    assert summary["overall"]["ap"] == pytest.approx(result.mAP, abs=exact)
    for row in summary["classes"]:
        assert row["ap"] == pytest.approx(result.ap[row["id"]], abs=exact)
    if metric == "coco":  # AP by object size: COCOeval's APs / APm / APl
        for size, key in (("small", "APs"), ("medium", "APm"), ("large", "APl")):
            assert summary["sizes"][size]["ap"] == pytest.approx(result.extras[key], abs=1e-12)
        assert len(summary["thresholds"]) == 10
    parts = [summary["overall"], *summary["sizes"].values(), *summary.get("thresholds", []), *summary["classes"]]
    for part in parts:
        if part["ap"] is None:
            continue
        assert part["fixed_all"] == pytest.approx(1.0, abs=1e-12)
        assert all(gain >= 0 for gain in part["gain"].values())
        assert max(part["gain"].values()) <= 1 - part["ap"] + 1e-12


@pytest.mark.parametrize("seed", range(6))
def test_gains_equal_tides_own_algorithm(seed, monkeypatch):
    """COCO matching at IoU 0.5 with no ignored boxes is TIDE's; with TIDE's recall points (x / 100,
    COCOeval uses linspace) the eight gains and the AP equal tidecv's, transcribed."""
    monkeypatch.setattr(analysis_module, "COCO_RECALLS", np.array([x / 100 for x in range(101)]))
    dataset, dets = random_split(seed, ignore_rate=0.0)
    gts = [(int(r.image_id), int(label), box) for r in dataset.records
           for box, label in zip(r.boxes.astype(np.float64).tolist(), r.labels.tolist())]
    preds = [(int(i), int(label), s, box) for i, d in dets.items()
             for box, s, label in zip(d.boxes.astype(np.float64).tolist(), d.scores.tolist(), d.labels.tolist())]
    ap, gains = tide(gts, preds)
    ours = analyse(dets, dataset, "coco").summary["thresholds"][0]
    assert 100 * ours["ap"] == pytest.approx(ap, abs=1e-9)
    assert {k: 100 * v for k, v in ours["gain"].items()} == pytest.approx(gains, abs=1e-9)


def test_ignored_objects_make_detections_neither_right_nor_wrong():
    dataset = Dataset("hand/test", ["a"], ["a"], [record("i", [A, B], [0, 0], ignore=[False, True])])
    dets = {"i": ImageDetections(np.array([B, A], np.float32), [0.9, 0.8], [0, 0])}
    summary = analyse(dets, dataset, "voc10").summary["overall"]
    assert summary["ap"] == 1.0 and summary["num_gt"] == 1
    assert summary["counts"] == {"tp": 1, "cls": 0, "loc": 0, "both": 0, "dupe": 0, "bkg": 0, "miss": 0}


def test_an_analysis_leaves_the_detections_and_metric_untouched():
    dataset, dets = random_split(3)
    before = score(dets, dataset, "voc10")
    copies = {k: dataclasses.replace(d) for k, d in dets.items()}
    analyse(dets, dataset, "voc10")
    assert score(dets, dataset, "voc10").ap == before.ap
    assert all(np.array_equal(dets[k].boxes, copies[k].boxes) for k in dets)


# --------------------------------------------------------------------------- Hoiem


def test_hoiem_types_of_the_top_false_positives():
    # class a has one object; its four false positives, best first: loc (IoU 0.4), sim (on the
    # "b" object, b similar to a), oth (on the "c" object), bg
    classes = ("a", "b", "c")
    dataset, dets = one_image([A, B, C], [0, 1, 2],
                              [[0, 0, 100, 40], B, C, [300, 300, 390, 390], A],
                              [0.9, 0.8, 0.7, 0.6, 0.5], [0, 0, 0, 0, 0], classes)
    options = AnalysisOptions(similar_classes={"ab": ["a", "b"]})
    hoiem = analyse(dets, dataset, "voc10", options).summary["hoiem"]
    row = hoiem["classes"][0]
    assert row["num_gt"] == 1 and row["num_fp"] == 4
    m = hoiem["multiples"]
    assert row["k"][m.index(1.0)] == 1 and row["k"][m.index(4.0)] == 4 and row["k"][-1] == 4  # capped
    assert {t: row["counts"][t][m.index(4.0)] for t in ("loc", "sim", "oth", "bg")} == \
        {"loc": 1, "sim": 1, "oth": 1, "bg": 1}
    assert {t: row["counts"][t][m.index(2.0)] for t in ("loc", "sim", "oth", "bg")} == \
        {"loc": 1, "sim": 1, "oth": 0, "bg": 0}
    plain = analyse(dets, dataset, "voc10").summary["hoiem"]["classes"][0]["counts"]
    assert plain["sim"][-1] == 0 and plain["oth"][-1] == 2  # nothing similar without the groups


def test_similar_classes_by_id_or_name_and_unknown_ones_refused():
    dataset = Dataset("x/test", ["n1", "n2", "n3"], ["cat", "dog", "car"], [])
    similar = similar_matrix(dataset, {"pets": ["cat", "n2"]})
    assert similar.tolist() == [[False, True, False], [True, False, False], [False, False, False]]
    with pytest.raises(UserError, match="eval.similar_classes.pets: 'cow' not among the classes"):
        similar_matrix(dataset, {"pets": ["cat", "cow"]})


def test_summary_is_plain_json():
    import json

    dataset, dets = random_split(4)
    summary = analyse(dets, dataset, "coco").summary
    text = json.dumps(summary, allow_nan=False)
    assert json.loads(text) == summary and not math.isnan(summary["overall"]["ap"])
