"""The ultralytics (YOLO) data set layout: ``data.yaml``, ``images/`` beside ``labels/``.

``data.yaml`` is resolved the way ultralytics resolves it: ``path`` (the data set root) is taken
relative to the yaml's folder when relative and defaults to that folder; each split key
(ultralytics reads ``train``, ``val``, ``test``, ``minival``; here any other key whose value is a
path or a list of paths is a split too) holds a folder of images (searched recursively), a
``.txt`` file listing image paths (relative ones are relative to the list's folder), or a list of
those, relative to the root; an entry ``../x`` that does not exist is read as ``x`` (Roboflow's
exports). ``names`` is a list or a ``{index: name}`` dict; ``nc``, when given, must agree.

An image's label file is its path with the last ``/images/`` replaced by ``/labels/`` and the
suffix by ``.txt``; each line ``class cx cy w h`` is one box, normalised by the image's size as
people see it (EXIF orientation applied). A missing or empty label file means no objects.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from detector.common.errors import AnnotationError, UserError
from detector.data.images import IMAGE_SUFFIXES
from detector.data.textfile import lines, numbers

DATA_YAML = "data.yaml"
#: The split keys ultralytics reads.
SPLIT_KEYS = ("train", "val", "test", "minival")
#: Keys holding paths or strings that are not splits.
NOT_SPLITS = ("path", "names", "download", "yaml_file")
LABEL_LAYOUT = "class cx cy w h"


@dataclass
class DataYaml:
    """A parsed ``data.yaml``: its file, the data set root, class names and split entries."""

    file: Path
    root: Path  #: ``path`` resolved
    names: list[str]  #: class names, index order
    splits: dict[str, list[str]]  #: split key -> entries as written (folders or .txt lists)

    def images(self, split: str) -> list[Path]:
        """The image files of `split`, in listing order (folders sorted by path)."""
        if split not in self.splits:
            raise UserError(f"{self.file}: no split {split!r} (it has {', '.join(self.splits) or 'none'})")
        return [image for entry in self.splits[split] for image in _entry_images(self, split, entry)]

    def folders(self, split: str) -> list[Path]:
        """The image folders among `split`'s entries (not those of .txt lists)."""
        return [path for path in map(self.resolve, self.splits[split]) if path.is_dir()]

    def resolve(self, entry: str) -> Path:
        """A split entry as a path: relative to the root; ``../x`` as ``x`` when only that exists."""
        path = Path(os.path.normpath(self.root / entry))
        if not path.exists() and entry.startswith("../"):
            path = Path(os.path.normpath(self.root / entry[3:]))
        return path


def find_data_yaml(root: str) -> Path:
    """The data.yaml of `root`: the file itself, or ``data.yaml`` in the folder."""
    if not root:
        raise UserError("data.root is not set: point it at the folder holding data.yaml (--set data.root=PATH)")
    path = Path(root).expanduser()
    path = path / DATA_YAML if path.is_dir() else path
    if not path.is_file():
        raise UserError(f"{path}: no such file (data.root names a folder with {DATA_YAML}, or the yaml file)")
    return path


def read_data_yaml(path: Path, extra_splits: dict | None = None) -> DataYaml:
    """Parse an ultralytics ``data.yaml`` (safe_load; nothing in it runs); `extra_splits` adds
    split entries to its own or replaces them (data.yolo_splits)."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise AnnotationError(f"{path}: cannot read it ({exc})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise AnnotationError(f"{where}: malformed YAML ({getattr(exc, 'problem', None) or exc})") from None
    if not isinstance(data, dict):
        raise AnnotationError(f"{path}: expected a mapping with names and train / val / test, got {type(data).__name__}")
    root = Path(data.get("path") or ".")
    splits = {str(key): _entries(value, path, key) for key, value in data.items() if _is_split(key, value)}
    splits |= {key: _entries(value, "data.yolo_splits", key) for key, value in (extra_splits or {}).items()}
    return DataYaml(file=path, root=root if root.is_absolute() else path.parent / root,
                    names=_names(data, path), splits=splits)


def _is_split(key, value) -> bool:
    """Whether a data.yaml entry is a split: a split key, or another holding paths."""
    if key in SPLIT_KEYS:
        return bool(value)
    paths = value if isinstance(value, list) else [value]
    return key not in NOT_SPLITS and bool(paths) and all(isinstance(p, str) for p in paths)


def _entries(value, where: str | Path, key: str) -> list[str]:
    values = value if isinstance(value, list) else [value]
    if not all(isinstance(v, str) and v for v in values):
        raise AnnotationError(f"{where}: {key} must be a path or a list of paths, got {value!r}")
    return values


def _names(data: dict, path: Path) -> list[str]:
    """Class names of a data.yaml: ``names`` (list or {index: name}), else ``class_<i>`` for ``nc``."""
    names, count = data.get("names"), data.get("nc")
    if isinstance(names, dict):
        if sorted(names) != list(range(len(names))):
            raise AnnotationError(f"{path}: names keys must be the indices 0..{len(names) - 1}, got {list(names)}")
        names = [names[i] for i in range(len(names))]
    elif names is None and isinstance(count, int):
        names = [f"class_{i}" for i in range(count)]
    if not isinstance(names, list) or not names:
        raise AnnotationError(f"{path}: names must be a non-empty list or {{index: name}} mapping")
    names = [str(name) for name in names]
    if count is not None and count != len(names):
        raise AnnotationError(f"{path}: nc is {count} but names has {len(names)} entries")
    if len(set(names)) != len(names):
        raise AnnotationError(f"{path}: names has duplicates: {names}")
    return names


def _entry_images(spec: DataYaml, split: str, entry: str) -> list[Path]:
    path = spec.resolve(entry)
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if path.is_file() and path.suffix == ".txt":
        listed = (Path(line.strip()) for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
        return [Path(os.path.normpath(p if p.is_absolute() else path.parent / p)) for p in listed]
    raise AnnotationError(f"{spec.file}: {split} entry {entry!r} ({path}) is not a folder of images or a .txt list")


def label_path(image: Path) -> Path:
    """The label file of `image`: the last ``images`` folder of its path replaced by ``labels``,
    the suffix by ``.txt`` (beside the image when no folder is called ``images``)."""
    parts = list(image.parts)
    folders = parts[:-1]
    if "images" in folders:
        parts[len(folders) - 1 - folders[::-1].index("images")] = "labels"
    return Path(*parts).with_suffix(".txt")


def orphan_labels(images: list[Path], folders: list[Path]) -> list[Path]:
    """Label files in the labels folders of `folders` (image folders) that belong to none of `images`."""
    expected = {label_path(image) for image in images}
    label_dirs = {label_path(folder / "image").parent for folder in folders}
    return sorted(p for d in label_dirs if d.is_dir() for p in d.rglob("*.txt") if p not in expected)


def read_labels(path: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Class indices int64 [N] and normalised boxes [cx, cy, w, h] float64 [N, 4] of one label file
    (none when it is missing or empty); a bad line raises AnnotationError naming ``file:line``."""
    rows = []
    if path.is_file():
        for number, fields in lines(path, LABEL_LAYOUT):
            values = numbers(fields, f"{path}:{number}", AnnotationError)
            if not values[0].is_integer() or not 0 <= values[0] < num_classes:
                raise AnnotationError(f"{path}:{number}: class {fields[0]} is not in 0..{num_classes - 1}")
            rows.append(values)
    table = np.array(rows, dtype=np.float64).reshape(-1, 5)
    return table[:, 0].astype(np.int64), table[:, 1:]
