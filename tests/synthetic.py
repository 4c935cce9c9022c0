"""Tiny self-made detection sets for tests: coloured squares and discs on textured backgrounds.

Written in the real on-disk layouts (VOCdevkit, ILSVRC DET devkit, ultralytics YOLO) so that the readers, proposal
extraction, training and evaluation run end to end without downloading anything.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml
from PIL import Image, ImageDraw

CLASSES = ("square", "disc")


def _draw_image(rng: np.random.Generator, width: int, height: int, max_objects: int):
    """An RGB image with 1..max_objects non-overlapping shapes; returns (image, [(cls, box)])."""
    base = rng.integers(40, 200, size=3)
    noise = rng.normal(0, 18, size=(height, width, 3))
    pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    objects: list[tuple[str, tuple[int, int, int, int]]] = []
    for _ in range(int(rng.integers(1, max_objects + 1)) * 4):  # a few tries to place each shape
        if len(objects) >= max_objects:
            break
        side_w, side_h = (int(v) for v in rng.integers(min(width, height) // 5, min(width, height) // 2, 2))
        x1, y1 = int(rng.integers(0, width - side_w)), int(rng.integers(0, height - side_h))
        box = (x1, y1, x1 + side_w, y1 + side_h)
        if any(not (box[2] <= b[0] or b[2] <= box[0] or box[3] <= b[1] or b[3] <= box[1]) for _, b in objects):
            continue
        name = CLASSES[int(rng.integers(0, len(CLASSES)))]
        colour = tuple(int(c) for c in (255 - base + rng.integers(-30, 30, 3)) % 256)
        if name == "square":
            draw.rectangle([box[0], box[1], box[2] - 1, box[3] - 1], fill=colour)
        else:
            draw.ellipse([box[0], box[1], box[2] - 1, box[3] - 1], fill=colour)
        objects.append((name, box))
    return image, objects


def _voc_xml(filename: str, width: int, height: int, objects, difficult=()) -> str:
    """VOC XML; boxes given as continuous xyxy are written 1-based inclusive."""
    parts = [f"<annotation><filename>{filename}</filename>",
             f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>"]
    for index, (name, (x1, y1, x2, y2)) in enumerate(objects):
        parts.append(
            f"<object><name>{name}</name><difficult>{int(index in difficult)}</difficult>"
            f"<bndbox><xmin>{x1 + 1}</xmin><ymin>{y1 + 1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
        )
    parts.append("</annotation>")
    return "".join(parts)


def make_voc_dataset(
    root: str | Path, splits: dict[str, int] | None = None, size=(160, 120), max_objects: int = 2, seed: int = 0,
    difficult_images: int = 0,
) -> Path:
    """Write a VOCdevkit-style set (JPEGImages, Annotations, ImageSets/Main) and return its root.

    `splits` maps split name -> number of images (default train 8, test 4); the first object of
    the first `difficult_images` images of each split is marked difficult.
    """
    root = Path(root)
    splits = splits or {"train": 8, "test": 4}
    rng = np.random.default_rng(seed)
    for folder in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for split, count in splits.items():
        ids = []
        for i in range(count):
            image_id = f"{split}_{i:04d}"
            image, objects = _draw_image(rng, size[0], size[1], max_objects)
            image.save(root / "JPEGImages" / f"{image_id}.jpg", quality=92)
            (root / "Annotations" / f"{image_id}.xml").write_text(
                _voc_xml(f"{image_id}.jpg", size[0], size[1], objects, difficult=(0,) if i < difficult_images else ())
            )
            ids.append(image_id)
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return root


def make_yolo_dataset(
    root: str | Path, splits: dict[str, int] | None = None, size=(160, 120), max_objects: int = 2, seed: int = 0
) -> Path:
    """Write an ultralytics-layout set (``data.yaml``, ``<split>/images/*.jpg``, ``<split>/labels/
    *.txt``) and return its root: the same images and objects as make_voc_dataset with equal
    arguments. `splits` maps data.yaml split key -> number of images (default train 8, val 4).
    """
    root = Path(root)
    splits = splits or {"train": 8, "val": 4}
    rng = np.random.default_rng(seed)
    width, height = size
    for split, count in splits.items():
        for folder in ("images", "labels"):
            (root / split / folder).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image_id = f"{split}_{i:04d}"
            image, objects = _draw_image(rng, width, height, max_objects)
            image.save(root / split / "images" / f"{image_id}.jpg", quality=92)
            lines = [f"{CLASSES.index(name)} {(x1 + x2) / 2 / width} {(y1 + y2) / 2 / height} "
                     f"{(x2 - x1) / width} {(y2 - y1) / height}\n" for name, (x1, y1, x2, y2) in objects]
            (root / split / "labels" / f"{image_id}.txt").write_text("".join(lines))
    spec = {**{split: f"{split}/images" for split in splits}, "nc": len(CLASSES), "names": list(CLASSES)}
    (root / "data.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return root


def make_ilsvrc_dataset(
    root: str | Path, wnids=("n00000001", "n00000002"), splits: dict[str, int] | None = None,
    empty_images: int = 1, size=(160, 120), seed: int = 0,
) -> Path:
    """Write an ILSVRC DET devkit-style set: Data/DET/<subset>, Annotations/DET/<subset> (wnid
    names, no difficult), ImageSets/DET/<split>.txt lines ``path index``; `empty_images` images
    per split have no objects. Squares are wnids[0], discs wnids[1].
    """
    root = Path(root)
    splits = splits or {"val": 6}
    rng = np.random.default_rng(seed)
    rename = dict(zip(CLASSES, wnids))
    for split, count in splits.items():
        subset = split.rstrip("0123456789") if split.startswith("val") else split.split("_")[0]
        lines = []
        for i in range(count):
            rel = f"ILSVRC2013_{subset}_{i + 1:08d}"
            image, objects = _draw_image(rng, size[0], size[1], 2)
            if i < empty_images:
                image, objects = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)), []
            for folder in ("Data", "Annotations"):
                (root / folder / "DET" / subset).mkdir(parents=True, exist_ok=True)
            image.save(root / "Data" / "DET" / subset / f"{rel}.JPEG", format="JPEG")
            renamed = [(rename[name], box) for name, box in objects]
            (root / "Annotations" / "DET" / subset / f"{rel}.xml").write_text(
                _voc_xml(rel, size[0], size[1], renamed)
            )
            lines.append(f"{rel} {i + 1}")
        (root / "ImageSets" / "DET").mkdir(parents=True, exist_ok=True)
        (root / "ImageSets" / "DET" / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return root


def make_image_folder(root: str | Path, classes=("n01440764", "n02102040", "plain"), per_split=None,
                      size=(40, 32), seed: int = 0) -> Path:
    """Write an ImageFolder (``<root>/<split>/<class>/*.jpg``) whose classes differ in colour;
    `per_split` maps split -> images per class (default train 6, val 2)."""
    rng = np.random.default_rng(seed)
    for split, count in (per_split or {"train": 6, "val": 2}).items():
        for index, name in enumerate(classes):
            folder = Path(root) / split / name
            folder.mkdir(parents=True, exist_ok=True)
            colour = np.roll(np.array([210, 40, 40]), index)
            for i in range(count):
                pixels = np.clip(rng.normal(colour, 25, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{name}_{i}.jpg", quality=90)
    return Path(root)
