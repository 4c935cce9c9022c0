"""Galleries of a report: each class's highest-scoring false positives and its missed objects,
drawn on crops of their images (ground truth green, detection red, caption above the crop).

::

    manifest = write_gallery(report_dir, analysis, dets, dataset, per_class=12, total=1200)

writes ``<report_dir>/gallery/<NNN>_<class>/{fp,miss}_NN.jpg`` (the crop, up to FULL_SIDE px)
and ``..._thumb.jpg`` (THUMB_SIDE px, for report.html) and returns the manifest stored under
``analysis.gallery`` in metrics.json. False positives come in score order, each labelled with its
TIDE type; misses (boxes no detection matched) largest first, each with the detection overlapping
it most. Each class gets min(per_class, total // (2 * classes)) pictures of each kind (at least
one), so a 200-class split stays small. Images are read once each; an unreadable image skips its
pictures (counted in the manifest). A new gallery replaces the previous one's pictures, and only
those: a gallery/ folder holding anything else is refused (UserError), never deleted.
"""
from __future__ import annotations

import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from detector.common.atomic import atomic_path
from detector.common.errors import ImageReadError, UserError
from detector.data.datasets import Dataset
from detector.data.images import load_image
from eval.analysis import Analysis
from eval.analysis_match import KIND_NAMES, TP
from eval.detections import Detections

log = logging.getLogger(__name__)

GALLERY = "gallery"
FULL_SIDE = 320  #: longest side of a gallery picture (crop), px
THUMB_SIDE = 112  #: longest side of a thumbnail, px
MAX_ZOOM = 4.0  #: small objects' crops are enlarged at most this much
GT_COLOUR = (46, 204, 64)
DET_COLOUR = (255, 45, 45)
JPEG_QUALITY = 82
#: What a gallery holds: class folders of pictures and thumbnails (nothing else is ever deleted).
CLASS_FOLDER = re.compile(r"\d{3,}_[A-Za-z0-9_-]{1,40}")
PICTURE = re.compile(r"(fp|miss)_\d{2,}(_thumb)?\.jpg")


@dataclass
class Item:
    """One gallery picture: `kind` fp or miss, `name` its file stem (``fp_01``...), class index,
    record index, the detection (box [4] xyxy px, class, score) and the ground-truth box (box,
    class), either may be None; `error` the TIDE type (fp) or miss / near miss; `iou` between
    the two boxes (0 without both)."""

    kind: str
    name: str
    label: int
    image: int
    det_box: np.ndarray | None
    det_label: int
    det_score: float
    gt_box: np.ndarray | None
    gt_label: int
    error: str
    iou: float


def pictures_per_class(per_class: int, total: int, num_classes: int) -> int:
    """Pictures of each kind per class: min(per_class, total // (2 * classes)), at least 1 (0 when off)."""
    if per_class <= 0 or total <= 0 or num_classes == 0:
        return 0
    return max(1, min(per_class, total // (2 * num_classes)))


# --------------------------------------------------------------------------- choosing


def select_items(analysis: Analysis, dets: Detections, dataset: Dataset, count: int) -> list[Item]:
    """The `count` highest-scoring false positives and `count` largest misses of every class, in
    that order within each class and kind."""
    items: list[Item] = []
    if count == 0:
        return items
    errors, gt = analysis.errors, analysis.errors.gt
    kind = errors.outcomes[(0, "all")].kind
    fps = errors.order[kind[errors.order] > TP]  # by class, then descending score
    fp_bounds = np.searchsorted(errors.labels[fps], np.arange(len(dataset.classes) + 1))
    missed = np.flatnonzero(~gt["gt_used"]) if gt else np.zeros(0, np.int64)
    missed = missed[np.lexsort((-gt["gt_area"][missed], gt["gt_label"][missed]))] if missed.size else missed
    miss_bounds = np.searchsorted(gt["gt_label"][missed] if missed.size else missed, np.arange(len(dataset.classes) + 1))
    for c in range(len(dataset.classes)):
        chosen = fps[fp_bounds[c]:fp_bounds[c + 1]][:count]
        items += [_false_positive(analysis, dets, dataset, int(j), f"fp_{r:02d}") for r, j in enumerate(chosen, 1)]
        chosen = missed[miss_bounds[c]:miss_bounds[c + 1]][:count]
        items += [_miss(analysis, dets, dataset, int(m), f"miss_{r:02d}") for r, m in enumerate(chosen, 1)]
    return items


def _det(analysis: Analysis, dets: Detections, dataset: Dataset, j: int) -> tuple[np.ndarray, int, float]:
    """(box, class, score) of detection j of the analysis."""
    errors = analysis.errors
    record = dataset.records[errors.image[j]]
    return dets[record.image_id].boxes[errors.position[j]], int(errors.labels[j]), float(errors.scores[j])


def _false_positive(analysis: Analysis, dets: Detections, dataset: Dataset, j: int, name: str) -> Item:
    errors = analysis.errors
    box, label, score = _det(analysis, dets, dataset, j)
    record = dataset.records[errors.image[j]]
    target = int(errors.target[j])
    gt_box = record.boxes[target] if target >= 0 else None
    error = KIND_NAMES[int(errors.outcomes[(0, "all")].kind[j])]
    return Item("fp", name, label, int(errors.image[j]), box, label, score, gt_box,
                int(record.labels[target]) if target >= 0 else -1, error, _iou(box, gt_box))


def _miss(analysis: Analysis, dets: Detections, dataset: Dataset, m: int, name: str) -> Item:
    gt = analysis.errors.gt
    record = dataset.records[gt["gt_image"][m]]
    gt_box, label = record.boxes[gt["gt_index"][m]], int(gt["gt_label"][m])
    near = int(gt["gt_near"][m])
    box, det_label, score = _det(analysis, dets, dataset, near) if near >= 0 else (None, -1, 0.0)
    error = "miss" if gt["gt_missed"][m] else "near miss"
    return Item("miss", name, label, int(gt["gt_image"][m]), box, det_label, score, gt_box, label, error,
                _iou(box, gt_box))


def _iou(a: np.ndarray | None, b: np.ndarray | None) -> float:
    """Continuous IoU of two xyxy boxes [4] (0 when either is None)."""
    if a is None or b is None:
        return 0.0
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - iw * ih
    return float(iw * ih / union) if union > 0 else 0.0


def caption(item: Item, names: list[str]) -> str:
    """One-line label: error type, detection and its score, IoU with the ground truth."""
    det = f"{names[item.det_label]} {item.det_score:.2f}" if item.det_box is not None else ""
    if item.kind == "fp":
        where = f", IoU {item.iou:.2f} with {names[item.gt_label]}" if item.gt_box is not None else ""
        return f"{item.error}: {det}{where}"
    near = f", nearest {det} IoU {item.iou:.2f}" if item.det_box is not None else ", no detection near"
    return f"{item.error}: {names[item.gt_label]}{near}"


# --------------------------------------------------------------------------- drawing


def crop_rect(boxes: list[np.ndarray], width: int, height: int) -> tuple[int, int, int, int]:
    """Integer crop (x0, y0, x1, y1) around the union of `boxes` (xyxy px) with a margin of 30% of
    its longer side (at least 16 px), inside a `width` x `height` image, at least 1 px a side."""
    stacked = np.stack(boxes).astype(np.float64)
    x0, y0 = stacked[:, 0].min(), stacked[:, 1].min()
    x1, y1 = stacked[:, 2].max(), stacked[:, 3].max()
    margin = max(16.0, 0.3 * max(x1 - x0, y1 - y0))
    left, top = int(max(0, np.floor(x0 - margin))), int(max(0, np.floor(y0 - margin)))
    right, bottom = int(min(width, np.ceil(x1 + margin))), int(min(height, np.ceil(y1 + margin)))
    return left, top, max(right, left + 1), max(bottom, top + 1)


def draw_item(image: np.ndarray, item: Item, text: str) -> tuple[Image.Image, Image.Image]:
    """(picture, thumbnail) of `item` on `image` [H, W, 3] RGB: the crop scaled to FULL_SIDE
    (enlarged at most MAX_ZOOM), boxes drawn, the caption on a strip above it."""
    boxes = [b for b in (item.gt_box, item.det_box) if b is not None]
    left, top, right, bottom = crop_rect(boxes, image.shape[1], image.shape[0])
    crop = Image.fromarray(image[top:bottom, left:right])
    scale = min(FULL_SIDE / max(crop.size), MAX_ZOOM)
    crop = crop.resize((max(1, round(crop.width * scale)), max(1, round(crop.height * scale))), Image.BILINEAR)
    draw = ImageDraw.Draw(crop)
    line = max(2, round(max(crop.size) / 120))
    for box, colour in ((item.gt_box, GT_COLOUR), (item.det_box, DET_COLOUR)):
        if box is not None:
            shifted = (np.asarray(box, np.float64) - [left, top, left, top]) * scale
            draw.rectangle([float(v) for v in shifted], outline=colour, width=line)
    thumb = crop.copy()
    thumb.thumbnail((THUMB_SIDE, THUMB_SIDE))
    return _with_caption(crop, text), thumb


def _with_caption(picture: Image.Image, text: str) -> Image.Image:
    """`picture` below a dark strip holding `text` (the strip is as wide as the text needs)."""
    font = ImageFont.load_default(size=13)
    left, top, right, bottom = ImageDraw.Draw(picture).textbbox((0, 0), text, font=font)
    strip = bottom - top + 8
    canvas = Image.new("RGB", (max(picture.width, right - left + 8), picture.height + strip), (40, 40, 40))
    canvas.paste(picture, (0, strip))
    ImageDraw.Draw(canvas).text((4 - left, 4 - top), text, fill=(255, 255, 255), font=font)
    return canvas


# --------------------------------------------------------------------------- writing


def _slug(index: int, class_id: str) -> str:
    return f"{index:03d}_{re.sub(r'[^A-Za-z0-9_-]+', '_', class_id)[:40]}"


def write_gallery(report_dir: str | Path, analysis: Analysis, dets: Detections, dataset: Dataset,
                  per_class: int = 12, total: int = 1200) -> dict:
    """Replace ``report_dir/gallery/`` with the pictures of select_items; returns the manifest:
    per_class, skipped (pictures whose image could not be read) and per class its fp and miss
    entries (file and thumb relative to report_dir, caption, error, score, image id)."""
    folder = Path(report_dir) / GALLERY
    _remove_previous(folder)
    count = pictures_per_class(per_class, total, len(dataset.classes))
    by_image: dict[int, list[Item]] = {}
    for item in select_items(analysis, dets, dataset, count):
        by_image.setdefault(item.image, []).append(item)
    written: dict[tuple[int, str], list[tuple[str, dict]]] = {}
    skipped, unreadable = 0, []
    for image_index in sorted(by_image):
        record = dataset.records[image_index]
        try:
            image = load_image(record.path)
        except ImageReadError as exc:
            unreadable.append(str(exc))
            skipped += len(by_image[image_index])
            continue
        for item in by_image[image_index]:
            entry = _write_item(folder, image, item, dataset, record.image_id)
            written.setdefault((item.label, item.kind), []).append((item.name, entry))
    if unreadable:
        log.warning("gallery: %d picture(s) left out, %d image(s) unreadable (e.g. %s)", skipped, len(unreadable),
                    unreadable[0])
    classes = [{"id": class_id, "name": name,
                **{kind: [entry for _, entry in sorted(written.get((c, kind), []), key=lambda pair: pair[0])]
                   for kind in ("fp", "miss")}}
               for c, (class_id, name) in enumerate(zip(dataset.classes, dataset.display_names))]
    return {"per_class": count, "skipped": skipped, "classes": classes}


def _remove_previous(folder: Path) -> None:
    """Delete a previous gallery's pictures and class folders; UserError naming the first entry
    that a gallery does not hold, before deleting anything."""
    if not folder.exists() and not folder.is_symlink():
        return
    entries = [folder] + (sorted(folder.iterdir()) if folder.is_dir() and not folder.is_symlink() else [])
    entries += [f for sub in entries[1:] if sub.is_dir() and not sub.is_symlink() for f in sorted(sub.iterdir())]
    for entry in entries:
        if not _is_gallery_entry(folder, entry):
            raise UserError(f"{entry}: not a picture of a gallery googlenet-rcnn wrote, in {folder}; not replacing "
                            "that folder (move it away, or choose another report folder)")
    shutil.rmtree(folder)


def _is_gallery_entry(folder: Path, entry: Path) -> bool:
    if entry.is_symlink():
        return False
    if entry == folder or entry.parent == folder:
        return entry.is_dir() and (entry == folder or CLASS_FOLDER.fullmatch(entry.name) is not None)
    temporary = entry.name.startswith(".") and ".tmp" in entry.name  # an interrupted atomic write's
    return entry.is_file() and (PICTURE.fullmatch(entry.name) is not None or temporary)


def _write_item(folder: Path, image: np.ndarray, item: Item, dataset: Dataset, image_id: str) -> dict:
    """Draw and save one picture and its thumbnail; its manifest entry."""
    text = caption(item, dataset.display_names)
    picture, thumb = draw_item(image, item, text)
    sub = _slug(item.label, dataset.classes[item.label])
    (folder / sub).mkdir(parents=True, exist_ok=True)
    for image, name in ((picture, f"{item.name}.jpg"), (thumb, f"{item.name}_thumb.jpg")):
        with atomic_path(folder / sub / name) as tmp:
            image.save(tmp, format="JPEG", quality=JPEG_QUALITY)
    return {"file": f"{GALLERY}/{sub}/{item.name}.jpg", "thumb": f"{GALLERY}/{sub}/{item.name}_thumb.jpg",
            "caption": text, "error": item.error, "image": image_id,
            "score": round(item.det_score, 4) if item.det_box is not None else None}
