"""Write data set splits the project has read (any of detector.data.datasets.FORMATS) in another layout.

=====  ===========================================================  ==============================
to     layout under OUT                                             read back with
=====  ===========================================================  ==============================
coco   ``annotations/instances_<split>.json``, ``<split>/<image>``  ``data.format=coco``
voc    ``Annotations/<id>.xml``, ``ImageSets/Main/<split>.txt``,     ``data.format=voc``
       ``JPEGImages/<id>.<ext>`` (one folder for all splits)
yolo   ``data.yaml``, ``<split>/images/<image>``,                    ``data.format=yolo``
       ``<split>/labels/<stem>.txt``
=====  ===========================================================  ==============================

Images keep their file names (made from the image ids when two in a split share a name) and are
hard-linked when OUT is on the same file system, else copied. Class names are the data set's
class ids (wnids for ILSVRC). What a layout cannot hold: VOC stores whole pixels, so boxes are
rounded to the nearest pixel edge; YOLO has no ignore flag, so ignored boxes (VOC ``difficult``,
COCO ``iscrowd``) are dropped with a warning, as ultralytics' own VOC conversion drops difficult
objects. COCO images are numbered from 1 unless they come from COCO (detector.data.coco_json.coco_ids).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import yaml

from detector.common.atomic import fresh_folder
from detector.common.errors import ImageReadError, UserError
from detector.data.box_formats import xyxy_to_voc, xyxy_to_yolo
from detector.data.coco_json import ground_truth_json
from detector.data.datasets import Dataset, ImageRecord
from detector.data.textfile import text_rows
from detector.data.yolo import DATA_YAML, SPLIT_KEYS

log = logging.getLogger(__name__)

TARGETS = ("coco", "voc", "yolo")


def convert(datasets: dict[str, Dataset], to: str, out: str | Path, copy_images: bool = False) -> Path:
    """Write `datasets` ({split name: its records}) under `out` in layout `to` (one of TARGETS).

    `out` must not exist or be empty; everything is written into a folder beside it that is
    renamed to `out` at the end, so a failure leaves nothing behind. Returns `out`.
    """
    if to not in TARGETS:
        raise UserError(f"--to {to!r}: expected one of {', '.join(TARGETS)}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out}: exists and is not an empty folder; not overwriting it")
    with fresh_folder(out) as tmp:
        _WRITERS[to](datasets, tmp, copy_images)
    return out


def place_image(source: Path, target: Path, copy: bool) -> None:
    """`source` at `target`: a hard link unless `copy` or the file systems differ, else a copy."""
    if not source.is_file():
        raise ImageReadError(f"{source}: image file not found")
    target.parent.mkdir(parents=True, exist_ok=True)
    if not copy:
        try:
            os.link(source, target)
            return
        except OSError:  # another file system, or links not allowed: copy instead
            pass
    shutil.copy2(source, target)


def file_names(records: list[ImageRecord]) -> list[str]:
    """Output file name of each record: its own, or ``<image id>.<ext>`` (``/`` as ``_``) when two
    records share a file name stem, so every name and stem is unique."""
    stems = [record.path.stem for record in records]
    if len(set(stems)) == len(stems):
        return [record.path.name for record in records]
    names = [record.image_id.replace("/", "_") + record.path.suffix for record in records]
    if len({Path(name).stem for name in names}) < len(names):
        raise UserError("two images have the same image id and file name; cannot name them apart")
    return names


# --------------------------------------------------------------------------- COCO


def _write_coco(datasets: dict[str, Dataset], out: Path, copy: bool) -> None:
    for split, dataset in datasets.items():
        data = ground_truth_json(dataset)
        names = file_names(dataset.records)
        for image, record, name in zip(data["images"], dataset.records, names):
            image["file_name"] = name
            place_image(record.path, out / split / name, copy)
        for annotation in data["annotations"]:
            annotation["segmentation"] = []
        (out / "annotations").mkdir(exist_ok=True)
        (out / "annotations" / f"instances_{split}.json").write_text(json.dumps(data), encoding="utf-8")


# --------------------------------------------------------------------------- VOC


def voc_pixels(boxes: np.ndarray) -> np.ndarray:
    """xyxy [N, 4] -> 1-based inclusive whole-pixel boxes int64 [N, 4], each at least 1 pixel."""
    voc = np.rint(xyxy_to_voc(boxes)).astype(np.int64)
    voc[:, 2:] = np.maximum(voc[:, 2:], voc[:, :2])
    return voc


def voc_xml(record: ImageRecord, filename: str, classes: list[str]) -> ET.ElementTree:
    """The VOC annotation of `record` (``difficult`` = ignored)."""
    root = ET.Element("annotation")
    ET.SubElement(root, "filename").text = filename
    size = ET.SubElement(root, "size")
    for tag, value in (("width", record.width), ("height", record.height), ("depth", 3)):
        ET.SubElement(size, tag).text = str(value)
    for box, label, ignore in zip(voc_pixels(record.boxes).tolist(), record.labels.tolist(), record.ignore.tolist()):
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = classes[label]
        ET.SubElement(obj, "difficult").text = str(int(ignore))
        bndbox = ET.SubElement(obj, "bndbox")
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), box):
            ET.SubElement(bndbox, tag).text = str(value)
    tree = ET.ElementTree(root)
    ET.indent(tree)
    return tree


def _write_voc(datasets: dict[str, Dataset], out: Path, copy: bool) -> None:
    sources: dict[str, Path] = {}  # VOC image id -> source image, over all splits
    for folder in ("Annotations", "ImageSets/Main", "JPEGImages"):
        (out / folder).mkdir(parents=True)
    for split, dataset in datasets.items():
        names = file_names(dataset.records)
        _warn_if_rounded(dataset)
        for record, name in zip(dataset.records, names):
            image_id = Path(name).stem
            if sources.setdefault(image_id, record.path) != record.path:
                raise UserError(f"{record.path} and {sources[image_id]} would both be VOC image {image_id!r}")
            voc_xml(record, name, dataset.classes).write(out / "Annotations" / f"{image_id}.xml", encoding="unicode")
            if not (out / "JPEGImages" / name).exists():
                place_image(record.path, out / "JPEGImages" / name, copy)
        ids = "".join(f"{Path(name).stem}\n" for name in names)
        (out / "ImageSets" / "Main" / f"{split}.txt").write_text(ids, encoding="utf-8")


def _warn_if_rounded(dataset: Dataset) -> None:
    boxes = np.concatenate([r.boxes for r in dataset.records] + [np.zeros((0, 4), np.float32)])
    moved = np.abs(boxes - np.rint(boxes)) > 1e-3
    if moved.any():
        log.warning("%s: %d box coordinate(s) rounded to whole pixels (VOC stores integers)",
                    dataset.name, int(moved.sum()))


# --------------------------------------------------------------------------- YOLO


def yolo_label_text(record: ImageRecord) -> str:
    """The ultralytics label file of `record`: ``class cx cy w h`` lines, normalised, shortest exact
    numbers; ignored boxes left out."""
    keep = ~record.ignore
    sizes = np.array([record.width, record.height] * 2, dtype=np.float64)
    rows = text_rows(record.labels[keep], *xyxy_to_yolo(record.boxes[keep], sizes).T)
    return "".join(f"{row}\n" for row in rows)


def _write_yolo(datasets: dict[str, Dataset], out: Path, copy: bool) -> None:
    classes = _same_classes(datasets)
    for split, dataset in datasets.items():
        if split not in SPLIT_KEYS:
            log.warning("split %r: ultralytics reads only %s from data.yaml (this project reads any)",
                        split, ", ".join(SPLIT_KEYS))
        ignored = sum(int(r.ignore.sum()) for r in dataset.records)
        if ignored:
            log.warning("%s: %d ignored box(es) dropped (YOLO labels cannot mark them)", dataset.name, ignored)
        (out / split / "labels").mkdir(parents=True)
        for record, name in zip(dataset.records, file_names(dataset.records)):
            place_image(record.path, out / split / "images" / name, copy)
            (out / split / "labels" / f"{Path(name).stem}.txt").write_text(yolo_label_text(record), encoding="utf-8")
    spec = {**{split: f"{split}/images" for split in datasets}, "nc": len(classes), "names": classes}
    (out / DATA_YAML).write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")


def _same_classes(datasets: dict[str, Dataset]) -> list[str]:
    """The class list all `datasets` share (data.yaml has one)."""
    lists = {tuple(dataset.classes) for dataset in datasets.values()}
    if len(lists) != 1:
        raise UserError(f"the splits have different class lists ({len(lists)}); data.yaml holds one")
    return list(lists.pop())


_WRITERS = {"coco": _write_coco, "voc": _write_voc, "yolo": _write_yolo}
