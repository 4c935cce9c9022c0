"""COCO evaluator: crowd handling, and a randomised cross-check against pycocotools.

The cross-check: our COCO metric *is* pycocotools' COCOeval, so comparing it with COCOeval would
be circular unless what we add is tested — reading the instances file into records, converting
our xyxy detections to COCO results (ids, category mapping, xywh), the empty-results path and the
ground truth we build from records for non-COCO datasets. So a random COCO instances file
(non-contiguous category ids, crowd regions, empty images) is scored twice: through our
evaluator, and by COCOeval directly on hand-written results JSON; all 12 summary numbers and the
per-class APs must agree to 1e-6. Boxes lie on a 1/4-pixel grid, exact in float32, so the
conversions themselves are exact.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detector.data.datasets import Dataset, DatasetConfig, ImageRecord, read_coco
from eval.detections import ImageDetections
from eval.metrics import make_evaluator
from eval.metrics.coco import COCO_STATS

CATEGORIES = {3: "cat", 7: "dog", 11: "bird"}


def random_coco(root: Path, seed: int, images: int = 30):
    """Write root/annotations/instances_val.json; returns (its path, results JSON for COCOeval)."""
    rng = np.random.default_rng(seed)
    grid = lambda *shape: rng.integers(0, 800, shape) / 4  # noqa: E731  (0..200 px, 1/4 px steps: in the image)
    image_list, annotations, results = [], [], []
    for image_id in range(101, 101 + images):
        image_list.append({"id": image_id, "width": 640, "height": 480, "file_name": f"{image_id}.jpg"})
        n = int(rng.integers(0, 5))
        for _ in range(n):
            x, y = grid(2)
            w, h = 4 + grid(2)
            category = int(rng.choice(list(CATEGORIES)))
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category,
                                "bbox": [x, y, w, h], "area": w * h, "iscrowd": int(rng.random() < 0.1)})
            for _ in range(2):  # near copies
                jitter = rng.integers(-24, 25, 4) / 4
                results.append({"image_id": image_id, "category_id": category, "score": 0.0,
                                "bbox": [x + jitter[0], y + jitter[1], max(w + jitter[2], 1), max(h + jitter[3], 1)]})
        for _ in range(int(rng.integers(0, 8))):  # clutter
            x, y = grid(2)
            w, h = 4 + grid(2)
            results.append({"image_id": image_id, "category_id": int(rng.choice(list(CATEGORIES))),
                            "score": 0.0, "bbox": [x, y, w, h]})
    for score, result in zip(rng.permutation(len(results)) / len(results), results):
        result["score"] = float(np.float32(score))
    path = root / "annotations" / "instances_val.json"
    path.parent.mkdir(parents=True)
    categories = [{"id": cid, "name": name} for cid, name in CATEGORIES.items()]
    path.write_text(json.dumps({"images": image_list, "annotations": annotations, "categories": categories}))
    return path, results


def direct_cocoeval(annotation_file: Path, results: list[dict]) -> COCOeval:
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(annotation_file))
        evaluator = COCOeval(gt, gt.loadRes(results), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def our_detections(dataset: Dataset, results: list[dict]) -> dict[str, ImageDetections]:
    label_of = {cid: i for i, cid in enumerate(dataset.coco_category_ids)}
    grouped: dict[str, list] = {r.image_id: [] for r in dataset.records}
    for r in results:
        grouped[str(r["image_id"])].append(r)
    out = {}
    for image_id, items in grouped.items():
        xywh = np.array([r["bbox"] for r in items], dtype=np.float32).reshape(-1, 4)
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        out[image_id] = ImageDetections(boxes, [r["score"] for r in items], [label_of[r["category_id"]] for r in items])
    return out


def evaluate(dataset: Dataset, detections: dict[str, ImageDetections]):
    evaluator = make_evaluator("coco", dataset)
    for image_id, d in detections.items():
        evaluator.process(image_id, d)
    return evaluator.evaluate()


@pytest.mark.parametrize("seed", [0, 1])
def test_coco_metric_matches_cocoeval_on_random_data(tmp_path, seed):
    annotation_file, results = random_coco(tmp_path, seed)
    dataset = read_coco(DatasetConfig(format="coco", root=str(tmp_path), classes=["bird", "cat", "dog"],
                                      coco_annotations="annotations/instances_{split}.json"), "val")
    expected = direct_cocoeval(annotation_file, results)
    detections = our_detections(dataset, results)
    result = evaluate(dataset, detections)
    for name, value in zip(COCO_STATS, expected.stats):
        assert result.extras[name] == pytest.approx(value, abs=1e-6) or (value == -1 and math.isnan(result.extras[name]))
    assert result.mAP == pytest.approx(expected.stats[0], abs=1e-6)
    assert 0.05 < result.mAP < 0.95
    precision = expected.eval["precision"]
    for name in dataset.classes:
        k = expected.params.catIds.index(dataset.coco_category_ids[dataset.classes.index(name)])
        assert result.ap[name] == pytest.approx(precision[:, :, k, 0, -1].mean(), abs=1e-6)
        np.testing.assert_allclose(result.precision[name], precision[0, :, k, 0, -1], atol=1e-6)
    # ground truth rebuilt from the records (areas here are box areas) scores the same
    rebuilt = evaluate(dataclasses.replace(dataset, annotation_file=None), detections)
    assert rebuilt.extras == pytest.approx(result.extras, abs=1e-6, nan_ok=True)


def _one_image(ignore: list[bool]) -> Dataset:
    boxes = np.array([[0, 0, 100, 100], [200, 200, 400, 400]], np.float32)
    record = ImageRecord("1", Path("1.jpg"), 640, 480, boxes, np.array([0, 0]), np.array(ignore))
    return Dataset("crowd/test", ["person"], ["person"], [record])


def test_detections_on_crowd_regions_are_ignored():
    detections = {"1": ImageDetections(
        [[0, 0, 100, 100], [210, 210, 300, 300], [300, 300, 400, 400]], [0.5, 0.9, 0.8], [0, 0, 0])}
    crowd = evaluate(_one_image([False, True]), detections)
    assert crowd.ap["person"] == pytest.approx(1.0) and crowd.num_gt["person"] == 1
    assert evaluate(_one_image([False, False]), detections).ap["person"] < 0.5  # two FPs first, one miss
