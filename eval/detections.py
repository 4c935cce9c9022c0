"""Detections: the per-image result type, its results file, validation and COCO results JSON.

Other tools' result formats (COCO, VOC devkit, ILSVRC, ultralytics) are in eval.result_formats.

A results file holds the detections of one split for one class list, so that scoring it against
another split or class list fails with a clear message instead of a meaningless mAP. Two formats,
chosen by suffix: ``.json`` (readable, for small sets and other tools) and anything else as a
compressed ``.npz`` (compact and fast for ILSVRC-size splits). Both are written atomically.
"""
from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Collection, Iterable

import numpy as np

from detector.common.atomic import atomic_path, write_text
from detector.common.errors import UserError
from detector.data.box_formats import xyxy_to_xywh
from detector.data.coco_json import coco_ids
from detector.data.datasets import Dataset

#: Version of the results-file layout, stored in its metadata.
FORMAT_VERSION = 1


@dataclass
class ImageDetections:
    """Detections of one image: boxes float32 [K, 4] xyxy pixels, scores float32 [K],
    labels int64 [K] indexing the dataset's foreground classes from 0.

    Inputs are converted to those dtypes; other box shapes or lengths that disagree raise ValueError.
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float32)
        if self.boxes.size == 0:
            self.boxes = self.boxes.reshape(0, 4)
        if self.boxes.ndim != 2 or self.boxes.shape[1] != 4:
            raise ValueError(f"boxes must be [K, 4], got shape {list(self.boxes.shape)}")
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if not len(self.boxes) == len(self.scores) == len(self.labels):
            raise ValueError(
                f"{len(self.boxes)} boxes, {len(self.scores)} scores and {len(self.labels)} labels"
            )

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def empty(cls) -> ImageDetections:
        """No detections."""
        return cls(np.zeros((0, 4)), np.zeros(0), np.zeros(0))


#: Detections of a split, keyed by ImageRecord.image_id.
Detections = dict[str, ImageDetections]


# --------------------------------------------------------------------------- results files


def save_detections(path: str | Path, dets: Detections, classes: list[str], split_name: str) -> None:
    """Write `dets` to one file (``.json`` or ``.npz``), atomically.

    `classes` is the dataset's class list (labels index it) and `split_name` the Dataset.name the
    detections are for (e.g. ``VOC2007/test``); both are stored and checked by load_detections.
    """
    path = Path(path)
    meta = {"format_version": FORMAT_VERSION, "classes": list(classes), "split": split_name}
    if path.suffix == ".json":
        images = {
            image_id: {"boxes": d.boxes.tolist(), "scores": d.scores.tolist(), "labels": d.labels.tolist()}
            for image_id, d in dets.items()
        }
        write_text(path, json.dumps({"meta": meta, "images": images}))
        return
    ids = list(dets)
    counts = np.array([len(dets[i]) for i in ids], dtype=np.int64)
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(
            handle,
            meta=np.array(json.dumps(meta)),
            image_ids=np.array(ids, dtype=str),
            counts=counts,
            boxes=_concat([dets[i].boxes for i in ids], (0, 4)),
            scores=_concat([dets[i].scores for i in ids], (0,)),
            labels=_concat([dets[i].labels for i in ids], (0,)),
        )


def _concat(arrays: list[np.ndarray], empty_shape: tuple[int, ...]) -> np.ndarray:
    return np.concatenate(arrays) if arrays else np.zeros(empty_shape)


def load_detections(
    path: str | Path, classes: list[str] | None = None, split_name: str | None = None
) -> tuple[Detections, dict]:
    """Read a file written by save_detections: (detections, metadata).

    With `classes` / `split_name` given, a file made for another class list or split is rejected
    with a UserError naming the file; so is a missing, corrupt or foreign file.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: detections file not found")
    try:
        dets, meta = _read_json(path) if path.suffix == ".json" else _read_npz(path)
    except (OSError, ValueError, KeyError, TypeError, OverflowError, zipfile.BadZipFile) as exc:
        raise UserError(f"{path}: not a detections file written by save_detections ({exc})") from None
    except RecursionError:
        raise UserError(f"{path}: not a detections file written by save_detections (nested too deeply)") from None
    if classes is not None and meta.get("classes") != list(classes):
        raise UserError(
            f"{path}: detections are for classes {_preview(meta.get('classes'))}, "
            f"the dataset has {_preview(classes)}"
        )
    if split_name is not None and meta.get("split") != split_name:
        raise UserError(f"{path}: detections are for split {meta.get('split')!r}, not {split_name!r}")
    return dets, meta


def _preview(names, limit: int = 5) -> str:
    names = list(names or [])
    more = f", ... ({len(names)} in all)" if len(names) > limit else ""
    return "[" + ", ".join(names[:limit]) + more + "]"


def _read_json(path: Path) -> tuple[Detections, dict]:
    data = json.loads(path.read_text(encoding="utf-8"))
    dets = {
        str(image_id): ImageDetections(d["boxes"], d["scores"], d["labels"])
        for image_id, d in data["images"].items()
    }
    return dets, dict(data["meta"])


def _read_npz(path: Path) -> tuple[Detections, dict]:
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(str(data["meta"]))
        ids, counts = data["image_ids"], data["counts"]
        boxes, scores, labels = data["boxes"], data["scores"], data["labels"]
    if counts.sum() != len(scores) or len(ids) != len(counts):
        raise ValueError("image counts do not add up to the number of detections")
    splits = np.cumsum(counts)[:-1]
    parts = zip(ids, np.split(boxes, splits), np.split(scores, splits), np.split(labels, splits))
    return {str(i): ImageDetections(b, s, lab) for i, b, s, lab in parts}, meta


# --------------------------------------------------------------------------- validation


def check_detections(
    items: Iterable[tuple[str, ImageDetections]], image_ids: Collection[str], num_classes: int, where: str
) -> None:
    """Raise a UserError for detections of unknown images, labels outside ``0..num_classes-1``,
    non-finite boxes or scores, or boxes with x2 < x1 or y2 < y1 (count and first example).

    Zero-size boxes are allowed (they overlap nothing). `where` names the source in messages.
    """
    problems: dict[str, list] = {}  # problem -> [count, first example]
    for image_id, det in items:
        if image_id not in image_ids:
            _note(problems, "detections for images not in the split", 1, f"image {image_id!r}")
            continue
        boxes, scores, labels = det.boxes, det.scores, det.labels
        masks = {
            "non-finite boxes or scores": ~np.isfinite(boxes).all(axis=1) | ~np.isfinite(scores),
            "boxes with negative width or height": (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1]),
            f"labels outside 0..{num_classes - 1}": (labels < 0) | (labels >= num_classes),
        }
        for problem, mask in masks.items():
            if mask.any():
                k = int(np.flatnonzero(mask)[0])
                example = f"image {image_id!r} detection {k}: box {boxes[k].tolist()}, " \
                          f"score {float(scores[k])}, label {int(labels[k])}"
                _note(problems, problem, int(mask.sum()), example)
    if problems:
        text = "; ".join(f"{count} {problem} (e.g. {example})" for problem, (count, example) in problems.items())
        raise UserError(f"{where}: {text}")


def _note(problems: dict[str, list], problem: str, count: int, example: str) -> None:
    entry = problems.setdefault(problem, [0, example])
    entry[0] += count


def validate_detections(dets: Detections, dataset: Dataset, where: str = "detections") -> None:
    """Check `dets` against `dataset` (see check_detections); images of the split without an
    entry simply have no detections.
    """
    known = {record.image_id for record in dataset.records}
    check_detections(dets.items(), known, len(dataset.classes), where)


# --------------------------------------------------------------------------- COCO results


def to_coco_results(dets: Detections, dataset: Dataset, image_ids: list[int | str] | None = None) -> list[dict]:
    """COCO results JSON entries ``{image_id, category_id, bbox: [x, y, w, h], score}``, one per
    detection, ready for ``COCO.loadRes``. Detections must have passed validate_detections.

    `image_ids` gives each record's image_id (default: coco_ids, as COCOeval here scores them).
    """
    numbered, category_ids = coco_ids(dataset)
    image_ids = numbered if image_ids is None else image_ids
    image_id_of = {r.image_id: coco_id for r, coco_id in zip(dataset.records, image_ids)}
    category_of = np.array(category_ids, dtype=np.int64)
    results: list[dict] = []
    for image_id, det in dets.items():
        coco_image = image_id_of[image_id]
        boxes = xyxy_to_xywh(det.boxes).tolist()
        categories = category_of[det.labels].tolist()
        results.extend(
            {"image_id": coco_image, "category_id": c, "bbox": b, "score": s}
            for b, c, s in zip(boxes, categories, det.scores.tolist())
        )
    return results
