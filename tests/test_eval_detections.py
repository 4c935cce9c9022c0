"""Detections: results files (round trip, metadata checks, bad files), validation, COCO results."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from detector.common.errors import UserError
from detector.data.datasets import Dataset, ImageRecord
from eval.detections import ImageDetections, load_detections, save_detections, to_coco_results, validate_detections


def _record(image_id: str, coco_id: int | None = None) -> ImageRecord:
    return ImageRecord(image_id, Path(f"{image_id}.jpg"), 100, 80, np.zeros((0, 4), np.float32),
                       np.zeros(0, np.int64), np.zeros(0, bool), coco_id)


DATASET = Dataset("toy/test", ["a", "b"], ["A", "B"], [_record("x"), _record("y")])
DETS = {
    "x": ImageDetections([[1.5, 2, 30, 40.25], [0, 0, 5, 5]], [0.9, 0.1], [1, 0]),
    "y": ImageDetections.empty(),
}


@pytest.mark.parametrize("suffix", [".npz", ".json"])
def test_round_trip_keeps_everything(tmp_path, suffix):
    path = tmp_path / f"dets{suffix}"
    save_detections(path, DETS, DATASET.classes, DATASET.name)
    loaded, meta = load_detections(path, classes=DATASET.classes, split_name=DATASET.name)
    assert meta["classes"] == ["a", "b"] and meta["split"] == "toy/test"
    assert list(loaded) == ["x", "y"]
    for key in DETS:
        for field in ("boxes", "scores", "labels"):
            expected, got = getattr(DETS[key], field), getattr(loaded[key], field)
            assert got.dtype == expected.dtype and np.array_equal(got, expected)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary files left


def test_empty_detections_round_trip(tmp_path):
    save_detections(tmp_path / "none.npz", {}, ["a"], "toy/test")
    assert load_detections(tmp_path / "none.npz")[0] == {}


def test_results_for_another_split_or_class_list_are_rejected(tmp_path):
    path = tmp_path / "dets.npz"
    save_detections(path, DETS, DATASET.classes, DATASET.name)
    with pytest.raises(UserError, match=r"dets.npz: detections are for split 'toy/test', not 'toy/val'"):
        load_detections(path, classes=DATASET.classes, split_name="toy/val")
    with pytest.raises(UserError, match=r"dets.npz: detections are for classes \[a, b\], the dataset has \[a, c\]"):
        load_detections(path, classes=["a", "c"])


def test_missing_and_corrupt_files_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="nothing.npz: detections file not found"):
        load_detections(tmp_path / "nothing.npz")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(UserError, match="bad.npz: not a detections file"):
        load_detections(tmp_path / "bad.npz")
    (tmp_path / "bad.json").write_text('{"images": {}}')
    with pytest.raises(UserError, match="bad.json: not a detections file"):
        load_detections(tmp_path / "bad.json")


def test_non_finite_boxes_are_counted_with_an_example():
    dets = {
        "x": ImageDetections([[0, 0, 1, 1], [np.nan, 0, 1, 1], [0, 0, np.inf, 1]], [0.5, 0.5, 0.5], [0, 0, 0]),
        "y": ImageDetections([[0, 0, 1, 1]], [np.nan], [1]),
    }
    with pytest.raises(UserError, match=r"3 non-finite boxes or scores \(e\.g\. image 'x' detection 1: box \[nan"):
        validate_detections(dets, DATASET)


def test_negative_size_unknown_images_and_bad_labels_are_rejected():
    inverted = {"x": ImageDetections([[10, 0, 5, 5], [0, 0, 0, 0]], [0.5, 0.4], [0, 0])}  # zero size is fine
    with pytest.raises(UserError, match=r"1 boxes with negative width or height \(e\.g\. image 'x' detection 0"):
        validate_detections(inverted, DATASET)
    with pytest.raises(UserError, match=r"2 detections for images not in the split \(e\.g\. image 'z1'\)"):
        validate_detections({"z1": ImageDetections.empty(), "z2": ImageDetections.empty()}, DATASET)
    with pytest.raises(UserError, match=r"1 labels outside 0\.\.1"):
        validate_detections({"x": ImageDetections([[0, 0, 1, 1]], [0.5], [2])}, DATASET)
    validate_detections({"x": ImageDetections([[0, 0, 0, 0]], [0.5], [1]), "y": ImageDetections.empty()}, DATASET)


def test_mismatched_shapes_are_refused():
    with pytest.raises(ValueError, match="2 boxes, 1 scores and 2 labels"):
        ImageDetections(np.zeros((2, 4)), [0.5], [0, 1])
    with pytest.raises(ValueError, match=r"boxes must be \[K, 4\], got shape \[4, 2\]"):
        ImageDetections(np.zeros((4, 2)), [0.5, 0.5], [0, 1])


def test_coco_results_use_dataset_ids_or_number_from_one():
    results = to_coco_results(DETS, DATASET)  # not a COCO dataset: images and classes from 1
    assert results[0] == {"image_id": 1, "category_id": 2, "bbox": [1.5, 2.0, 28.5, 38.25], "score": pytest.approx(0.9)}
    coco = Dataset("c/val", ["a", "b"], ["a", "b"], [_record("x", 42), _record("y", 7)], coco_category_ids=[5, 9])
    assert [(r["image_id"], r["category_id"]) for r in to_coco_results(DETS, coco)] == [(42, 9), (42, 5)]
