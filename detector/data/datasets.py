"""Dataset readers: PASCAL VOC, ILSVRC DET, COCO and ultralytics YOLO, all producing the same
per-image record.

Every reader returns a :class:`Dataset` whose records hold float32 ``xyxy`` boxes in continuous
pixel coordinates (see :mod:`detector.data.boxes`), labels as indices into ``Dataset.classes`` (0-based
foreground classes: the network adds 1 for its background column) and an ``ignore`` flag per
box (VOC ``difficult``, COCO ``iscrowd``) that evaluation neither rewards nor penalises.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from detector.common.errors import AnnotationError, UserError
from detector.data.box_formats import voc_to_xyxy, xywh_to_xyxy, yolo_to_xyxy
from detector.data.checked import finite_boxes, number, numbers, shown
from detector.data.images import image_size
from detector.data.yolo import DataYaml, find_data_yaml, label_path, orphan_labels, read_data_yaml, read_labels

log = logging.getLogger(__name__)

FORMATS = ("voc", "ilsvrc_det", "coco", "yolo")
#: Class lists shipped in configs/classes/, usable by name in `class_file`.
CLASS_PRESETS = ("voc20", "ilsvrc_det200", "imagenet1k", "coco80")


@dataclass
class DatasetConfig:
    """Where a dataset lives and how to read it (the ``data:`` section of a config)."""

    format: str = "voc"  #: voc | ilsvrc_det | coco | yolo
    #: VOCdevkit-style folder (voc), ILSVRC DET devkit folder, COCO root, or (yolo) the folder
    #: holding data.yaml or that file
    root: str = ""
    train_split: str = "trainval"
    test_split: str = "test"
    classes: list[str] = field(default_factory=list)  #: foreground names, in label order (yolo: data.yaml's when empty)
    class_file: str = ""  #: preset name (voc20, ilsvrc_det200, coco80) or a text file, one per line
    skip_unknown_classes: bool = False  #: drop objects of classes not listed instead of failing
    invalid_boxes: str = "clip"  #: clip (warn and clip/drop) | error
    coco_annotations: str = "annotations/instances_{split}.json"  #: relative to root
    coco_images: str = "{split}"  #: image folder relative to root
    #: yolo: split entries added to data.yaml's (or replacing them), written as there, e.g.
    #: {test: ../test/images} when data.yaml lacks the key
    yolo_splits: dict[str, str] = field(default_factory=dict)


@dataclass
class ImageRecord:
    """One annotated image. Boxes float32 [N, 4] xyxy pixels; labels int64 [N]; ignore bool [N]."""

    image_id: str
    path: Path
    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray
    ignore: np.ndarray
    coco_id: int | None = None  #: the integer id of COCO images (for results JSON)
    list_index: int | None = None  #: ILSVRC DET: the image's index in the split list (submission files)
    dropped: int = 0  #: annotated boxes left out as empty or inverted (data.invalid_boxes: clip)


@dataclass
class Dataset:
    """A split: its foreground classes and one record per image."""

    name: str
    classes: list[str]  #: ids as the annotations spell them (names, or wnids for ILSVRC)
    display_names: list[str]  #: human-readable names, same order
    records: list[ImageRecord]
    coco_category_ids: list[int] | None = None  #: COCO category id of each class
    annotation_file: Path | None = None  #: COCO instances JSON (evaluated by pycocotools)

    def object_counts(self, include_ignored: bool = True) -> dict[str, int]:
        """Number of boxes per class name."""
        counts = dict.fromkeys(self.classes, 0)
        for record in self.records:
            labels = record.labels if include_ignored else record.labels[~record.ignore]
            for label in labels:
                counts[self.classes[label]] += 1
        return counts


# --------------------------------------------------------------------------- class lists


def read_class_file(spec: str) -> tuple[list[str], list[str]]:
    """Class ids and display names from a preset name or a text file.

    Each line is ``name`` or ``id<TAB>display name`` (the synset lists' format).
    """
    if spec in CLASS_PRESETS:
        text = resources.files("configs").joinpath("classes", f"{spec}.txt").read_text()
        source = f"preset {spec}"
    else:
        path = Path(spec)
        if not path.is_file():
            raise UserError(f"class list {spec}: not a preset ({', '.join(CLASS_PRESETS)}) or a file")
        text, source = path.read_text(), str(path)
    ids, names = [], []
    for line in text.splitlines():
        if line.strip():
            key, _, display = line.partition("\t")
            ids.append(key.strip())
            names.append((display.split(",")[0] or key).strip())
    if len(set(ids)) != len(ids) or not ids:
        raise UserError(f"class list {source}: empty or has duplicate entries")
    return ids, names


def resolve_classes(config: DatasetConfig) -> tuple[list[str], list[str]]:
    """The configured class ids and display names (`classes` or `class_file`, not both)."""
    if bool(config.classes) == bool(config.class_file):
        raise UserError("data: give exactly one of `classes` (a list of names) or `class_file`")
    if config.class_file:
        return read_class_file(config.class_file)
    if len(set(config.classes)) != len(config.classes):
        raise UserError(f"data.classes has duplicate names: {config.classes}")
    return list(config.classes), list(config.classes)


# --------------------------------------------------------------------------- shared checks


def _sanitize_boxes(
    boxes: np.ndarray, width: int, height: int, where: str, policy: str
) -> np.ndarray:
    """Boolean keep-mask [N] after clipping boxes in place to the image; warn or raise per policy."""
    if len(boxes) == 0:
        return np.zeros(0, dtype=bool)
    outside = (boxes[:, 0] < 0) | (boxes[:, 1] < 0) | (boxes[:, 2] > width) | (boxes[:, 3] > height)
    np.clip(boxes[:, 0::2], 0, width, out=boxes[:, 0::2])
    np.clip(boxes[:, 1::2], 0, height, out=boxes[:, 1::2])
    degenerate = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
    if policy == "error" and (outside.any() or degenerate.any()):
        index = int(np.flatnonzero(outside | degenerate)[0])
        raise AnnotationError(f"{where}: box {index} is outside the {width}x{height} image or empty")
    if outside.any():
        log.warning("%s: clipped %d box(es) to the %dx%d image", where, int(outside.sum()), width, height)
    if degenerate.any():
        log.warning("%s: dropped %d empty or inverted box(es)", where, int(degenerate.sum()))
    return ~degenerate


def _split_lines(path: Path) -> list[str]:
    """The non-empty lines of an ImageSets split file."""
    if not path.is_file():
        raise AnnotationError(f"{path}: split file not found")
    return [line for line in path.read_text().splitlines() if line.strip()]


def _read_split_file(path: Path) -> list[str]:
    """First token of every non-empty line of an ImageSets split file."""
    return [line.split()[0] for line in _split_lines(path)]


def _read_indexed_split_file(path: Path) -> list[tuple[str, int]]:
    """(name, index) of every non-empty line of an ILSVRC DET split list ``name [index]``: the
    second column (the devkit's image index), else the 1-based position among those lines."""
    entries = []
    for name, *rest in (line.split() for line in _split_lines(path)):
        if rest and not rest[0].isdecimal():
            raise AnnotationError(f"{path}: image {name!r} has index {rest[0]!r}, expected a whole number")
        entries.append((name, int(rest[0]) if rest else len(entries) + 1))
    return entries


def _check_root(root: str, what: str) -> Path:
    if not root:
        raise UserError(f"data.root is not set: point it at the {what} folder (--set data.root=PATH)")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise UserError(f"{path}: dataset root not found")
    return path


# --------------------------------------------------------------------------- VOC and ILSVRC XML


def _xml_int(node: ET.Element, tag: str, xml_path: Path) -> int:
    """The whole number in `tag` (rounded); AnnotationError when missing, not a number, NaN,
    infinite or out of range (detector.data.checked)."""
    text = node.findtext(tag)
    if text is None or not text.strip():
        raise AnnotationError(f"{xml_path}: <{tag}> is missing or not a number ({text!r})")
    return int(round(number(text, str(xml_path), f"<{tag}>", AnnotationError)))


def _parse_xml_objects(xml_path: Path, class_index: dict[str, int], config: DatasetConfig):
    """(width, height, filename, boxes [N,4] inclusive, labels [N], difficult [N]) of one XML file."""
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as exc:
        raise AnnotationError(f"{xml_path}: malformed XML ({exc})") from None
    except OSError:
        raise AnnotationError(f"{xml_path}: annotation file not found") from None
    size = root.find("size")
    width = _xml_int(size, "width", xml_path) if size is not None else 0
    height = _xml_int(size, "height", xml_path) if size is not None else 0
    boxes, labels, difficult = [], [], []
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip()
        if name not in class_index:
            if config.skip_unknown_classes:
                continue
            raise AnnotationError(
                f"{xml_path}: class {name!r} is not in the configured class list "
                "(set data.skip_unknown_classes=true to skip such objects)"
            )
        bndbox = obj.find("bndbox")
        if bndbox is None:
            raise AnnotationError(f"{xml_path}: object {name!r} has no <bndbox>")
        boxes.append([_xml_int(bndbox, tag, xml_path) for tag in ("xmin", "ymin", "xmax", "ymax")])
        labels.append(class_index[name])
        difficult.append((obj.findtext("difficult") or "0").strip() == "1")
    return width, height, root.findtext("filename"), boxes, labels, difficult


def _xml_record(
    image_id: str, xml_path: Path, image_path: Path, class_index: dict[str, int], config: DatasetConfig
) -> ImageRecord:
    width, height, _, boxes, labels, difficult = _parse_xml_objects(xml_path, class_index, config)
    if not image_path.is_file():
        raise AnnotationError(f"{xml_path}: its image {image_path} does not exist")
    if width <= 0 or height <= 0:
        width, height = image_size(image_path)
    xyxy = finite_boxes(voc_to_xyxy(np.array(boxes, dtype=np.float64)), str(xml_path), AnnotationError)
    keep = _sanitize_boxes(xyxy, width, height, str(xml_path), config.invalid_boxes)
    return ImageRecord(
        image_id=image_id,
        path=image_path,
        width=width,
        height=height,
        boxes=xyxy[keep],
        labels=np.array(labels, dtype=np.int64).reshape(-1)[keep],
        ignore=np.array(difficult, dtype=bool).reshape(-1)[keep],
        dropped=int((~keep).sum()),
    )


def read_voc(config: DatasetConfig, split: str) -> Dataset:
    """PASCAL VOC: ``root/ImageSets/Main/<split>.txt``, ``Annotations/<id>.xml``, ``JPEGImages/<id>.jpg``."""
    root = _check_root(config.root, "VOCdevkit/VOC20XX")
    classes, names = resolve_classes(config)
    index = {name: i for i, name in enumerate(classes)}
    records = []
    for image_id in _read_split_file(root / "ImageSets" / "Main" / f"{split}.txt"):
        image_path = root / "JPEGImages" / f"{image_id}.jpg"
        if not image_path.is_file():  # VOC-style sets made by other tools may use .png etc.
            image_path = next(iter(sorted((root / "JPEGImages").glob(f"{image_id}.*"))), image_path)
        records.append(_xml_record(image_id, root / "Annotations" / f"{image_id}.xml", image_path, index, config))
    return Dataset(name=f"{root.name}/{split}", classes=classes, display_names=names, records=records)


def ilsvrc_subset(split: str) -> str:
    """The Data/Annotations sub-folder holding a DET split: train*, val* (val1, val2) or test."""
    for subset in ("train", "val", "test"):
        if split.startswith(subset):
            return subset
    raise UserError(f"ILSVRC split {split!r}: name must start with train, val or test")


def read_ilsvrc_det(config: DatasetConfig, split: str) -> Dataset:
    """ILSVRC 2013/2014 DET: ``ImageSets/DET/<split>.txt`` lines ``relative/path [index]``,
    images ``Data/DET/<subset>/<path>.JPEG``, XML ``Annotations/DET/<subset>/<path>.xml`` with
    wnid names. Images with no objects are kept (their detections count as false positives).
    """
    root = _check_root(config.root, "ILSVRC DET devkit")
    classes, names = resolve_classes(config)
    index = {wnid: i for i, wnid in enumerate(classes)}
    subset = ilsvrc_subset(split)
    records = []
    for rel, list_index in _read_indexed_split_file(root / "ImageSets" / "DET" / f"{split}.txt"):
        image_path = root / "Data" / "DET" / subset / f"{rel}.JPEG"
        xml_path = root / "Annotations" / "DET" / subset / f"{rel}.xml"
        record = _xml_record(rel, xml_path, image_path, index, config)
        record.list_index = list_index
        records.append(record)
    return Dataset(name=f"ILSVRC-DET/{split}", classes=classes, display_names=names, records=records)


# --------------------------------------------------------------------------- COCO


def _load_coco(path: Path):
    from pycocotools.coco import COCO

    if not path.is_file():
        raise AnnotationError(f"{path}: COCO annotation file not found")
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress chatter
            return COCO(str(path))
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError, or an int of over 4300 digits
        raise AnnotationError(f"{path}: malformed JSON ({exc})") from None
    except RecursionError:
        raise AnnotationError(f"{path}: malformed JSON (nested too deeply)") from None
    except (KeyError, TypeError, AssertionError) as exc:
        raise AnnotationError(f"{path}: not a COCO instances file ({exc!r})") from None


def read_coco(config: DatasetConfig, split: str) -> Dataset:
    """COCO instances JSON via pycocotools; ``iscrowd`` regions become ignored boxes."""
    root = _check_root(config.root, "COCO")
    classes, names = resolve_classes(config)
    annotation_file = root / config.coco_annotations.format(split=split)
    coco = _load_coco(annotation_file)
    category_by_name = {c["name"]: c["id"] for c in coco.loadCats(coco.getCatIds())}
    missing = [name for name in classes if name not in category_by_name]
    if missing:
        raise AnnotationError(f"{annotation_file}: configured classes not in its categories: {missing}")
    label_of = {category_by_name[name]: i for i, name in enumerate(classes)}
    image_dir = root / config.coco_images.format(split=split)
    records = []
    for image_id in _coco_image_ids(coco, annotation_file):
        info = coco.imgs[image_id]
        where = f"{annotation_file} image {image_id}"
        width, height = (_coco_side(info, key, where) for key in ("width", "height"))
        if not isinstance(info.get("file_name"), str):
            raise AnnotationError(f"{where}: file_name must be text, got {info.get('file_name')!r}"[:200])
        boxes, labels, ignore = [], [], []
        for ann in coco.imgToAnns.get(image_id, []):
            label = _coco_label(ann, label_of, annotation_file, config.skip_unknown_classes)
            if label is None:
                continue
            boxes.append(_coco_bbox(ann, f"{annotation_file} annotation {_shown_id(ann)}"))
            labels.append(label)
            ignore.append(bool(ann.get("iscrowd", 0)))
        with np.errstate(over="ignore"):  # x + w beyond float32: refused just below
            xyxy = xywh_to_xyxy(np.array(boxes, dtype=np.float64).reshape(-1, 4))
        xyxy = finite_boxes(xyxy, where, AnnotationError)
        keep = _sanitize_boxes(xyxy, width, height, where, config.invalid_boxes)
        records.append(
            ImageRecord(
                image_id=str(image_id),
                path=image_dir / info["file_name"],
                width=width,
                height=height,
                boxes=xyxy[keep],
                labels=np.array(labels, dtype=np.int64).reshape(-1)[keep],
                ignore=np.array(ignore, dtype=bool).reshape(-1)[keep],
                dropped=int((~keep).sum()),
                coco_id=int(image_id),
            )
        )
    return Dataset(
        name=f"COCO/{split}",
        classes=classes,
        display_names=names,
        records=records,
        coco_category_ids=[category_by_name[name] for name in classes],
        annotation_file=annotation_file,
    )


def _coco_image_ids(coco, annotation_file: Path) -> list[int]:
    """The image ids of a COCO file, sorted; AnnotationError unless each is a whole number."""
    ids = list(coco.getImgIds())
    for image_id in ids:
        if isinstance(image_id, bool) or not isinstance(image_id, int):
            raise AnnotationError(f"{annotation_file}: image id {shown(image_id)} is not a whole number")
    return sorted(ids)


def _shown_id(ann: dict) -> str:
    return shown(ann.get("id")) if isinstance(ann, dict) else "?"


def _coco_side(info: dict, key: str, where: str) -> int:
    """An image's width or height: a finite positive number (rounded down, as before)."""
    value = number(info.get(key), where, key, AnnotationError, text=False)
    if value < 1:
        raise AnnotationError(f"{where}: {key} {shown(info.get(key))} is not a positive number of pixels")
    return int(value)


def _coco_label(ann, label_of: dict[int, int], annotation_file: Path, skip_unknown: bool) -> int | None:
    """The label of one annotation; None when its class is skipped (data.skip_unknown_classes)."""
    if not isinstance(ann, dict):
        raise AnnotationError(f"{annotation_file}: an annotation is not an object: {shown(ann)}")
    category = ann.get("category_id")
    if not isinstance(category, int) or isinstance(category, bool) or category not in label_of:
        if skip_unknown and isinstance(category, int) and not isinstance(category, bool):
            return None
        raise AnnotationError(
            f"{annotation_file}: annotation {_shown_id(ann)} has category {shown(category)} "
            "outside the configured classes (set data.skip_unknown_classes=true to skip)"
        )
    return label_of[category]


def _coco_bbox(ann: dict, where: str) -> list[float]:
    """An annotation's [x, y, w, h], each a finite number (detector.data.checked); its area too
    when given (COCOeval reads it to sort objects by size)."""
    bbox = ann.get("bbox")
    if not isinstance(bbox, list) or len(bbox) != 4:
        raise AnnotationError(f"{where}: bbox must be [x, y, width, height], got {shown(bbox)}")
    if "area" in ann:
        number(ann["area"], where, "area", AnnotationError, text=False)
    return numbers(bbox, f"{where} bbox", AnnotationError, text=False)


# --------------------------------------------------------------------------- ultralytics YOLO


def read_yolo(config: DatasetConfig, split: str) -> Dataset:
    """Ultralytics layout (see detector.data.yolo): split `split` is a key of data.yaml (train, val, test).

    Image ids are the file names without suffix (paths relative to the data set root when two
    images share a name). A label file without its image is an error, so is a class list given in
    the config that is not data.yaml's ``names``; an empty `data.classes` and `class_file` take them.
    """
    spec = read_data_yaml(find_data_yaml(config.root), config.yolo_splits)
    classes, names = _yolo_classes(config, spec)
    images = spec.images(split)
    orphans = orphan_labels(images, spec.folders(split))
    if orphans:
        raise AnnotationError(f"{orphans[0]}: label file without an image ({len(orphans)} such in split {split})")
    records = [_yolo_record(image_id, image, len(classes), config)
               for image_id, image in zip(_image_ids(images, spec.root), images)]
    return Dataset(name=f"{spec.root.resolve().name}/{split}", classes=classes, display_names=names, records=records)


def _yolo_classes(config: DatasetConfig, spec: DataYaml) -> tuple[list[str], list[str]]:
    """data.yaml's names, checked against the configured class list when there is one."""
    if not config.classes and not config.class_file:
        return list(spec.names), list(spec.names)
    classes, names = resolve_classes(config)
    if classes != spec.names:
        raise UserError(f"data.classes / class_file {classes} are not the names in {spec.file}: {spec.names} "
                        "(same names in the same order, or leave data.classes empty to take them)")
    return classes, names


def _image_ids(images: list[Path], root: Path) -> list[str]:
    """File names without suffix, or paths relative to `root` without suffix when two names clash."""
    stems = [image.stem for image in images]
    if len(set(stems)) == len(stems):
        return stems
    return [Path(os.path.relpath(image, root)).with_suffix("").as_posix() for image in images]


def _yolo_record(image_id: str, image: Path, num_classes: int, config: DatasetConfig) -> ImageRecord:
    label_file = label_path(image)
    labels, cxcywh = read_labels(label_file, num_classes)
    if not image.is_file():
        raise AnnotationError(f"{image}: image file not found")
    width, height = image_size(image)
    xyxy = finite_boxes(yolo_to_xyxy(cxcywh, np.array([width, height] * 2)), str(label_file), AnnotationError)
    keep = _sanitize_boxes(xyxy, width, height, str(label_file), config.invalid_boxes)
    return ImageRecord(image_id=image_id, path=image, width=width, height=height, boxes=xyxy[keep],
                       labels=labels[keep], ignore=np.zeros(int(keep.sum()), dtype=bool),
                       dropped=int((~keep).sum()))


READERS = {"voc": read_voc, "ilsvrc_det": read_ilsvrc_det, "coco": read_coco, "yolo": read_yolo}


def load_dataset(config: DatasetConfig, split: str) -> Dataset:
    """Read split `split` of the dataset described by `config`."""
    if config.format not in READERS:
        raise UserError(f"data.format {config.format!r}: expected one of {', '.join(FORMATS)}")
    if config.invalid_boxes not in ("clip", "error"):
        raise UserError(f"data.invalid_boxes {config.invalid_boxes!r}: expected clip or error")
    return READERS[config.format](config, split)
