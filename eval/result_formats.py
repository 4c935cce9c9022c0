"""Detection results in the formats of other tools and evaluation servers, read and written.

========  ==============================================  ===============================================
format    layout                                          ids and coordinates
========  ==============================================  ===============================================
rcnn      this project's ``.npz`` / ``.json``             split and class list stored and checked
          (eval.detections)
coco      one JSON list of ``{"image_id", "category_id",  COCO data: COCO's ids. Other data: image_id is
          "bbox": [x, y, w, h], "score"}``                the image id (a number where it is one),
                                                          category_id the 1-based class index; pixels
voc       one file per class, ``<comp>_det_<split>_       1-based inclusive pixels (the devkit's)
          <class>.txt``, lines ``image_id score xmin
          ymin xmax ymax``
ilsvrc    one file, lines ``image_index class_index       image_index: the image's index in the split
          score xmin ymin xmax ymax``                     list (its second column, else its 1-based
                                                          line); class_index 1-based; 1-based inclusive
yolo      ``labels/<image file stem>.txt``, lines         0-based class; box centre and size divided by
          ``class cx cy w h conf`` (ultralytics predict   the image width and height
          with ``save_txt=True, save_conf=True``)
========  ==============================================  ===============================================

Inside, boxes are float32 ``xyxy`` in continuous pixels (see detector.data.boxes). Numbers are written in
their shortest exact form, so a file read back holds the same scores and labels, and the same
boxes up to one float32 rounding (detector.data.box_formats converts VOC and COCO boxes in float32); an image
without detections has no lines (no label file for yolo).
"""
from __future__ import annotations

import array
import collections
import glob
import json
from pathlib import Path
from typing import Callable

import numpy as np

from detector.common.atomic import OutputFolder
from detector.common.errors import UserError
from detector.data.box_formats import voc_to_xyxy, xywh_to_xyxy, xyxy_to_voc, xyxy_to_yolo, yolo_to_xyxy
from detector.data.checked import bad_boxes
from detector.data.coco_json import coco_ids, results_image_ids
from detector.data.datasets import Dataset
from detector.data.textfile import integer, lines, numbers, text_rows
from eval.detections import Detections, ImageDetections, load_detections, to_coco_results, validate_detections

READ_FORMATS = ("rcnn", "coco", "voc", "ilsvrc", "yolo")
SAVE_FORMATS = ("coco", "voc", "ilsvrc", "yolo")
VOC_LAYOUT = "image_id score xmin ymin xmax ymax"
ILSVRC_LAYOUT = "image_index class_index score xmin ymin xmax ymax"
YOLO_LAYOUT = "class cx cy w h conf"


def split_of(dataset: Dataset) -> str:
    """The split part of a Dataset.name (``VOC2007/test`` -> ``test``)."""
    return dataset.name.rsplit("/", 1)[-1]


# --------------------------------------------------------------------------- reading


def detect_format(spec: str | Path) -> str:
    """The format of the results at `spec`: ``.npz`` rcnn; ``.json`` coco when it holds a list,
    else rcnn; a folder of ``*_det_*.txt`` files or a glob voc; a folder of label files or one
    holding ``labels/`` yolo; another file voc when its first line has 6 fields, else ilsvrc."""
    path = Path(spec)
    if not path.exists():
        if any(char in str(spec) for char in "*?[") and glob.glob(str(spec)):
            return "voc"
        raise UserError(f"{spec}: no such results file or folder")
    if path.is_dir():
        if any(path.glob("*_det_*.txt")):
            return "voc"
        if (path / "labels").is_dir() or any(path.glob("*.txt")):
            return "yolo"
        raise UserError(f"{path}: no result files in it (<comp>_det_<split>_<class>.txt, or labels/<image>.txt)")
    if path.suffix == ".json":
        with open(path, encoding="utf-8", errors="replace") as handle:
            return "coco" if handle.read(4096).lstrip().startswith("[") else "rcnn"
    if path.suffix == ".npz":
        return "rcnn"
    first = next(lines(path, ""), None)
    if first is None:
        return "voc" if "_det_" in path.name else "ilsvrc"
    return "voc" if len(first[1]) == len(VOC_LAYOUT.split()) else "ilsvrc"


def read_results(spec: str | Path, dataset: Dataset, format: str = "auto") -> Detections:
    """The detections of `dataset`'s split in the results file, folder or glob `spec`.

    `format` is one of READ_FORMATS or ``auto`` (detect_format). A malformed line, an unknown image
    or class, a non-finite number or an inverted box raises a UserError naming the file and line.
    """
    format = detect_format(spec) if format == "auto" else format
    if format == "rcnn":
        dets, _ = load_detections(spec, classes=dataset.classes, split_name=dataset.name)
        validate_detections(dets, dataset, where=str(spec))
        return dets
    if format not in _READERS:
        raise UserError(f"results format {format!r}: expected auto or one of {', '.join(READ_FORMATS)}")
    return _READERS[format](str(spec), dataset)


class _Table:
    """Detections read line by line, with the file and line each came from."""

    def __init__(self, where: str = "{file}:{line}") -> None:
        self.where_format = where  #: how a row's origin is named in messages
        self.files: list[Path] = []
        self.rows = array.array("q")  #: (file, line, image, label) per detection, flat
        self.values = array.array("d")  #: score and the four box numbers as written, flat

    def open(self, path: Path) -> None:
        """Rows added next come from `path`."""
        self.files.append(path)

    def where(self, line: int, file: int = -1) -> str:
        """How messages name `line` of the current (or the `file`-th) file."""
        return self.where_format.format(file=self.files[file], line=line)

    def add(self, line: int, image: int, label: int, values: list[float]) -> None:
        """One detection: `image` indexes dataset.records, `label` its classes."""
        self.rows.extend((len(self.files) - 1, line, image, label))
        self.values.extend(values)

    def detections(self, dataset: Dataset, to_xyxy: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Detections:
        """Detections per image in record order; `to_xyxy(box numbers [N, 4], image [N])` converts
        the boxes as written to xyxy pixels."""
        rows = np.frombuffer(self.rows, dtype=np.int64).reshape(-1, 4)
        values = np.frombuffer(self.values, dtype=np.float64).reshape(-1, 5)
        with np.errstate(over="ignore", invalid="ignore"):  # refused just below
            boxes = to_xyxy(values[:, 1:], rows[:, 2])
        self._refuse(rows, bad_boxes(boxes), "a box is out of range once converted to pixels")
        self._refuse(rows, (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1]),
                     "inverted box (its right or bottom edge before its left or top)")
        return _group(dataset, rows[:, 2], rows[:, 3], values[:, 0], boxes)

    def _refuse(self, rows: np.ndarray, bad: np.ndarray, problem: str) -> None:
        if bad.any():
            file, line = rows[np.flatnonzero(bad)[0], :2].tolist()
            raise UserError(f"{self.where(line, file)}: {problem}")


def _group(dataset: Dataset, image: np.ndarray, labels: np.ndarray, scores: np.ndarray, boxes: np.ndarray) -> Detections:
    order = np.argsort(image, kind="stable")
    present, starts = np.unique(image[order], return_index=True)
    parts = np.split(order, starts[1:]) if len(order) else []
    return {dataset.records[i].image_id: ImageDetections(boxes[rows], scores[rows], labels[rows])
            for i, rows in zip(present.tolist(), parts)}


def _lookup(mapping: dict, key, where: str, problem: str) -> int:
    try:
        return mapping[key]
    except (KeyError, TypeError):
        raise UserError(f"{where}: {problem}") from None


def _unique(keys: list, dataset: Dataset, what: str) -> dict:
    """{key: record index}; two records with one key are a UserError."""
    mapping = {key: i for i, key in enumerate(keys)}
    if len(mapping) < len(keys):
        (key, _), = collections.Counter(keys).most_common(1)
        raise UserError(f"{dataset.name}: two images have the {what} {key!r}, so results cannot name them apart")
    return mapping


def _classes(dataset: Dataset, first: int) -> dict[int, int]:
    """{class number in a file: label} for classes numbered from `first`."""
    return {first + label: label for label in range(len(dataset.classes))}


def _from_inclusive(boxes: np.ndarray, image: np.ndarray) -> np.ndarray:
    return voc_to_xyxy(boxes)


def _read_voc(spec: str, dataset: Dataset) -> Detections:
    images = {record.image_id: i for i, record in enumerate(dataset.records)}
    table, seen = _Table(), {}
    for path in _voc_files(spec, split_of(dataset)):
        label = _voc_label(path, dataset)
        if label in seen:
            raise UserError(f"{path}: a second result file for class {dataset.classes[label]!r} (after "
                            f"{seen[label].name}); give one competition's files, e.g. with a glob")
        seen[label] = path
        table.open(path)
        for number, fields in lines(path, VOC_LAYOUT):
            where = table.where(number)
            image = _lookup(images, fields[0], where, f"image {fields[0]!r} is not in {dataset.name}")
            table.add(number, image, label, numbers(fields[1:], where))
    return table.detections(dataset, _from_inclusive)


def _voc_files(spec: str, split: str) -> list[Path]:
    """The files of a glob or a single file, or a folder's files for `split`."""
    path = Path(spec)
    files = sorted(path.glob(f"*_det_{split}_*.txt")) if path.is_dir() else sorted(map(Path, glob.glob(spec)))
    if not files:
        raise UserError(f"{spec}: no VOC result files for split {split} (<comp>_det_{split}_<class>.txt)")
    return files


def _voc_label(path: Path, dataset: Dataset) -> int:
    """The class a devkit result file is for, from its name ``<comp>_det_<split>_<class>.txt``,
    whose split must be the dataset's."""
    split = split_of(dataset)
    _, found, rest = path.stem.partition("_det_")
    for label, name in enumerate(dataset.classes):
        if found and rest == f"{split}_{name}":
            return label
    if found and rest.startswith(f"{split}_"):
        raise UserError(f"{path}: {rest[len(split) + 1:]!r} is not a class of {dataset.name}")
    for name in dataset.classes:
        if found and rest.endswith(f"_{name}"):
            raise UserError(f"{path}: results for split {rest[:-len(name) - 1]!r}, not {split!r}")
    raise UserError(f"{path}: not named <comp>_det_{split}_<class>.txt")


def _read_ilsvrc(spec: str, dataset: Dataset) -> Detections:
    images = _unique(ilsvrc_indices(dataset), dataset, "split-list index")
    classes = _classes(dataset, first=1)
    table = _Table()
    table.open(Path(spec))
    for number, fields in lines(Path(spec), ILSVRC_LAYOUT):
        where = table.where(number)
        index, class_index = (integer(f, where, n) for f, n in zip(fields, ("image_index", "class_index")))
        image = _lookup(images, index, where, f"image_index {index} is not an image of {dataset.name}")
        label = _lookup(classes, class_index, where, f"class_index {class_index} is not in 1..{len(classes)}")
        table.add(number, image, label, numbers(fields[2:], where))
    return table.detections(dataset, _from_inclusive)


def ilsvrc_indices(dataset: Dataset) -> list[int]:
    """The image_index of each record in ILSVRC submissions: its split-list index, else its 1-based position."""
    return [r.list_index if r.list_index is not None else i + 1 for i, r in enumerate(dataset.records)]


def _read_yolo(spec: str, dataset: Dataset) -> Detections:
    folder = Path(spec) / "labels" if (Path(spec) / "labels").is_dir() else Path(spec)
    files = sorted(folder.glob("*.txt"))
    if not files:
        raise UserError(f"{folder}: no label files (<image>.txt)")
    images = _unique([record.path.stem for record in dataset.records], dataset, "file name")
    classes = _classes(dataset, first=0)
    table = _Table()
    for path in files:
        image = _lookup(images, path.stem, str(path), f"image {path.stem!r} is not in {dataset.name}")
        table.open(path)
        for number, fields in lines(path, YOLO_LAYOUT, " (ultralytics: predict with save_conf=True)"):
            where = table.where(number)
            class_index = integer(fields[0], where, "class")
            label = _lookup(classes, class_index, where, f"class {class_index} is not in 0..{len(classes) - 1}")
            cx, cy, w, h, conf = numbers(fields[1:], where)
            table.add(number, image, label, [conf, cx, cy, w, h])
    return table.detections(dataset, lambda boxes, image: yolo_to_xyxy(boxes, _sizes(dataset)[image]))


def _sizes(dataset: Dataset) -> np.ndarray:
    """[width, height, width, height] of every record, float64 [N, 4]."""
    return np.array([[r.width, r.height] * 2 for r in dataset.records], dtype=np.float64).reshape(-1, 4)


def _read_coco(spec: str, dataset: Dataset) -> Detections:
    path = Path(spec)
    entries = _json_list(path)
    records = dataset.records
    images = {**{r.image_id: i for i, r in enumerate(records)},
              **_unique(results_image_ids(dataset), dataset, "COCO image_id")}
    categories = {cid: label for label, cid in enumerate(coco_ids(dataset)[1])}
    table = _Table("{file}: results[{line}]")
    table.open(path)
    for k, entry in enumerate(entries):
        where = table.where(k)
        if not isinstance(entry, dict) or not {"image_id", "category_id", "bbox", "score"} <= entry.keys():
            raise UserError(f"{where}: expected {{image_id, category_id, bbox: [x, y, w, h], score}}, got {str(entry)[:80]}")
        bbox = entry["bbox"] if isinstance(entry["bbox"], list) and len(entry["bbox"]) == 4 else None
        if bbox is None:
            raise UserError(f"{where}: bbox must be [x, y, width, height], got {entry['bbox']!r}")
        image = _lookup(images, entry["image_id"], where, f"image_id {entry['image_id']!r} is not in {dataset.name}")
        label = _lookup(categories, entry["category_id"], where, f"category_id {entry['category_id']!r} is unknown "
                        f"(expected {min(categories)}..{max(categories)})")
        table.add(k, image, label, numbers([entry["score"], *bbox], where, text=False))
    return table.detections(dataset, lambda boxes, image: xywh_to_xyxy(boxes))


def _json_list(path: Path) -> list:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UserError(f"{path}: cannot read it ({exc.strerror})") from None
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError, or an int of over 4300 digits
        raise UserError(f"{path}: malformed JSON ({exc})") from None
    except RecursionError:
        raise UserError(f"{path}: malformed JSON (nested too deeply)") from None
    if not isinstance(data, list):
        raise UserError(f"{path}: a COCO results file is a JSON list of detections, this is a {type(data).__name__}")
    return data


_READERS = {"coco": _read_coco, "voc": _read_voc, "ilsvrc": _read_ilsvrc, "yolo": _read_yolo}


# --------------------------------------------------------------------------- writing


def check_formats(formats: list[str], where: str) -> None:
    """UserError unless every entry of `formats` is one of SAVE_FORMATS."""
    unknown = [f for f in formats if f not in SAVE_FORMATS]
    if unknown:
        raise UserError(f"{where}: {unknown[0]!r} is not a results format ({', '.join(SAVE_FORMATS)})")


def save_results(folder: str | Path, format: str, dets: Detections, dataset: Dataset) -> list[Path]:
    """Write `dets` (checked detections of `dataset`'s images) under `folder` in `format`; the files
    written. coco: ``detections_<split>_rcnn_results.json``; voc: ``results/<set>/Main/
    comp4_det_<split>_<class>.txt`` for every class; ilsvrc: ``ilsvrc_<split>_results.txt``; yolo:
    ``labels/<image file stem>.txt`` for every image with detections.

    `folder` is an :class:`~detector.common.atomic.OutputFolder`: a file there that this project
    did not write is never overwritten, and the ``Main`` and ``labels`` folders, written whole (the
    project's files of an earlier call that this one does not write are removed), must hold only
    the project's files; either is a UserError naming the file, before anything is written.
    Image ids that `format` cannot write so that they read back (whitespace in VOC lines) are a
    UserError too.
    """
    check_formats([format], "results format")
    check_image_ids(format, [r.image_id for r in dataset.records], dataset.name)
    return _WRITERS[format](OutputFolder(folder), dets, dataset)


def check_image_ids(format: str, image_ids: list[str], where: str) -> None:
    """UserError when a results file of `format` cannot name the images `image_ids` so that
    they read back: VOC lines are whitespace-separated, so an id holding whitespace (or an empty
    one) would shift the fields of its lines."""
    if format != "voc":
        return
    for image_id in image_ids:
        if image_id.split() != [image_id]:
            raise UserError(f"{where}: image id {image_id!r} is empty or holds whitespace, which VOC result lines "
                            f"'{VOC_LAYOUT}' cannot hold; rename the image, or save another format "
                            "(coco, ilsvrc, yolo)")


def planned_files(format: str, dataset_name: str) -> tuple[list[str], list[str]]:
    """(files, folders written whole) that save_results writes in `format` for the Dataset named
    `dataset_name` (``<set>/<split>``), relative to the output folder."""
    set_name, split = dataset_name.split("/")[0], dataset_name.rsplit("/", 1)[-1]
    return {"coco": ([f"detections_{split}_rcnn_results.json"], []),
            "voc": ([], [f"results/{set_name}/Main"]),
            "ilsvrc": ([f"ilsvrc_{split}_results.txt"], []),
            "yolo": ([], ["labels"])}[format]


def check_results_folder(folder: str | Path, formats: list[str], dataset_name: str) -> None:
    """UserError now when save_results(folder, format, ...) would later refuse to write
    (files or folders there that the project did not write), so that long work does not end in it."""
    output = OutputFolder(folder)
    for format in formats:
        files, folders = planned_files(format, dataset_name)
        output.refuse_foreign(files)
        for sub in folders:
            output.refuse_foreign_entries(sub)


def _flatten(dets: Detections, dataset: Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(record index [N], boxes float32 [N, 4], scores float32 [N], labels [N]) in record order."""
    present = [(i, dets[r.image_id]) for i, r in enumerate(dataset.records) if r.image_id in dets]
    image = np.concatenate([np.full(len(d), i) for i, d in present] + [np.zeros(0, np.int64)])
    boxes = np.concatenate([d.boxes for _, d in present] + [np.zeros((0, 4), np.float32)])
    scores = np.concatenate([d.scores for _, d in present] + [np.zeros(0, np.float32)])
    labels = np.concatenate([d.labels for _, d in present] + [np.zeros(0, np.int64)])
    return image, boxes, scores, labels


def _write_coco(folder: OutputFolder, dets: Detections, dataset: Dataset) -> list[Path]:
    (name,), _ = planned_files("coco", dataset.name)
    ordered = {r.image_id: dets[r.image_id] for r in dataset.records if r.image_id in dets}
    return [folder.write_text(name, json.dumps(to_coco_results(ordered, dataset, results_image_ids(dataset))))]


def _write_voc(folder: OutputFolder, dets: Detections, dataset: Dataset) -> list[Path]:
    image, boxes, scores, labels = _flatten(dets, dataset)
    ids = np.array([r.image_id for r in dataset.records])[image]
    rows = np.array(text_rows(ids, scores, *xyxy_to_voc(boxes).T), dtype=object)
    _, (target,) = planned_files("voc", dataset.name)
    names = [f"comp4_det_{split_of(dataset)}_{name}.txt" for name in dataset.classes]
    return folder.write_set(target, {name: "".join(f"{row}\n" for row in rows[labels == label])
                                     for label, name in enumerate(names)})


def _write_ilsvrc(folder: OutputFolder, dets: Detections, dataset: Dataset) -> list[Path]:
    image, boxes, scores, labels = _flatten(dets, dataset)
    index = np.array(ilsvrc_indices(dataset), dtype=np.int64)[image]
    (name,), _ = planned_files("ilsvrc", dataset.name)
    return [folder.write_text(name, "".join(f"{row}\n" for row in text_rows(index, labels + 1, scores,
                                                                           *xyxy_to_voc(boxes).T)))]


def _write_yolo(folder: OutputFolder, dets: Detections, dataset: Dataset) -> list[Path]:
    image, boxes, scores, labels = _flatten(dets, dataset)
    rows = text_rows(labels, *xyxy_to_yolo(boxes, _sizes(dataset)[image]).T, scores)
    _unique([record.path.stem for record in dataset.records], dataset, "file name")
    present, starts = np.unique(image, return_index=True)  # image is in record order
    stems = [dataset.records[i].path.stem for i in present.tolist()]
    _, (target,) = planned_files("yolo", dataset.name)
    return folder.write_set(target, {f"{stem}.txt": "".join(f"{row}\n" for row in rows[start:end])
                                     for stem, start, end in zip(stems, starts.tolist(),
                                                                 [*starts[1:].tolist(), len(rows)])})


_WRITERS = {"coco": _write_coco, "voc": _write_voc, "ilsvrc": _write_ilsvrc, "yolo": _write_yolo}
