"""Classification data in the ImageFolder layout: ``<root>/<split>/<class>/<image>``.

Classes are the class folders' names in sorted order (torchvision's ``ImageFolder`` rule), so a
label index means the same thing in every split. Folders named by ImageNet wnids
(``n01440764``) are shown with their ImageNet names (``tench``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from detector.common.errors import UserError
from detector.data.datasets import read_class_file
from detector.data.images import IMAGE_SUFFIXES


@dataclass(frozen=True)
class ImageFolder:
    """One split: class folder names, their display names, and (image path, label) samples."""

    root: Path
    classes: list[str]
    display_names: list[str]
    samples: list[tuple[Path, int]]

    def __len__(self) -> int:
        return len(self.samples)

    def counts(self) -> list[int]:
        """Images per class, in class order."""
        counts = [0] * len(self.classes)
        for _, label in self.samples:
            counts[label] += 1
        return counts


def display_names(classes: list[str]) -> list[str]:
    """ImageNet names for wnid class names (first lemma), the names themselves otherwise."""
    wnids, names = read_class_file("imagenet1k")
    lookup = dict(zip(wnids, names))
    return [lookup.get(name, name) for name in classes]


def read_image_folder(root: str | Path, split: str, classes: list[str] | None = None) -> ImageFolder:
    """List ``root/split``; with `classes` (another split's), its class folders must be among
    them and labels follow that list. UserError naming the folder when a split or class is empty."""
    folder = Path(root) / split
    if not folder.is_dir():
        raise UserError(f"{folder}: no such ImageFolder split (expected {folder}/<class>/<image>)")
    found = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not found:
        raise UserError(f"{folder}: no class folders")
    if classes is None:
        classes = found
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise UserError(f"{folder}: class folders {unknown[:5]} are not among the {len(classes)} training classes")
    index = {name: i for i, name in enumerate(classes)}
    samples = []
    for name in found:
        images = sorted(p for p in (folder / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise UserError(f"{folder / name}: class folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
        samples.extend((path, index[name]) for path in images)
    return ImageFolder(folder, list(classes), display_names(list(classes)), samples)
