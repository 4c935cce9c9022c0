"""The ILSVRC DET recipe of R-CNN and the GoogLeNet entry: val1/val2 split and extra train positives.

R-CNN (Girshick et al. 2014, sec. 4.1 and appendix D) split DET val into two halves, val1 for
fine-tuning and val2 for evaluation, "balanced by class": many random candidate splits, keeping
the one with the smallest maximum relative class imbalance (|n1 - n2| / (n1 + n2) over the
objects of a class). Fine-tuning added up to N = 1000 ground-truth boxes per class from DET train
as positives only, because train images are not exhaustively annotated (no proposals or
background are taken from them).

Split DET val once (writes ``ImageSets/DET/val1.txt`` and ``val2.txt`` beside ``val.txt``)::

    rcnn split-val --config ilsvrc_det --trials 1000
    rcnn run --config ilsvrc_det
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from detector.common.atomic import write_text
from detector.common.errors import UserError
from detector.config import Config
from detector.data.datasets import Dataset, ImageRecord, load_dataset

TRIALS_PER_CHUNK = 64  #: candidate splits scored at once (memory: chunk x images booleans)


@dataclass
class SplitResult:
    """A two-way split of a dataset's images: in_first [N] bool, and its per-class imbalance [C]."""

    in_first: np.ndarray
    imbalance: np.ndarray

    @property
    def max_imbalance(self) -> float:
        return float(self.imbalance.max(initial=0.0))

    @property
    def median_imbalance(self) -> float:
        return float(np.median(self.imbalance)) if len(self.imbalance) else 0.0


def class_counts(dataset: Dataset) -> np.ndarray:
    """Objects per image and class, int64 [N images, C classes] (ignored boxes counted too)."""
    counts = np.zeros((len(dataset.records), len(dataset.classes)), dtype=np.int64)
    for row, record in enumerate(dataset.records):
        np.add.at(counts[row], record.labels, 1)
    return counts


def relative_imbalance(counts: np.ndarray, in_first: np.ndarray) -> np.ndarray:
    """|n1 - n2| / (n1 + n2) per class [T, C] for T candidate splits in_first [T, N] of counts [N, C];
    0 for classes without objects."""
    total = counts.sum(axis=0)
    first = in_first.astype(np.float64) @ counts
    return np.abs(2 * first - total) / np.maximum(total, 1)


def _random_halves(rng: np.random.Generator, trials: int, images: int) -> np.ndarray:
    """T random splits [T, N] bool, each putting exactly N // 2 images in the first half."""
    ranks = rng.random((trials, images)).argsort(axis=1).argsort(axis=1)
    return ranks < images // 2


def balanced_split(counts: np.ndarray, trials: int = 1000, seed: int = 0) -> SplitResult:
    """R-CNN's val1/val2 split: of `trials` random halvings of the images, the one with the
    smallest maximum relative class imbalance (ties: the earliest)."""
    if trials < 1:
        raise UserError(f"--trials {trials}: expected at least 1")
    rng = np.random.default_rng(seed)
    best: SplitResult | None = None
    for start in range(0, trials, TRIALS_PER_CHUNK):
        candidates = _random_halves(rng, min(TRIALS_PER_CHUNK, trials - start), len(counts))
        imbalance = relative_imbalance(counts, candidates)
        pick = int(imbalance.max(axis=1).argmin())
        if best is None or imbalance[pick].max() < best.max_imbalance:
            best = SplitResult(candidates[pick], imbalance[pick])
    return best


def _split_lines(root: Path, split: str) -> list[str]:
    path = root / "ImageSets" / "DET" / f"{split}.txt"
    if not path.is_file():
        raise UserError(f"{path}: split file not found")
    return [line for line in path.read_text().splitlines() if line.strip()]


def _write_split(path: Path, lines: list[str], force: bool) -> None:
    text = "\n".join(lines) + "\n"
    if path.is_file() and path.read_text() != text and not force:
        raise UserError(f"{path} exists with another split; pass --force to replace it")
    write_text(path, text)


def split_val(config: Config, source: str = "val", names: tuple[str, str] = ("val1", "val2"),
              trials: int = 1000, seed: int = 0, force: bool = False) -> SplitResult:
    """Split DET `source` into two class-balanced halves written as ImageSets/DET/<names>.txt
    (original lines, original order); returns the chosen split."""
    if config.data.format != "ilsvrc_det":
        raise UserError(f"data.format is {config.data.format!r}: the val1/val2 split is for ilsvrc_det")
    dataset = load_dataset(config.data, source)
    root = Path(config.data.root).expanduser()
    lines = _split_lines(root, source)
    result = balanced_split(class_counts(dataset), trials, seed)
    for name, keep in zip(names, (result.in_first, ~result.in_first)):
        _write_split(root / "ImageSets" / "DET" / f"{name}.txt", [l for l, k in zip(lines, keep) if k], force)
    return result


# --------------------------------------------------------------------------- extra positives


def ground_truth_only(config: Config) -> list[ImageRecord]:
    """Up to `train.extra_boxes_per_class` ground-truth boxes per class from `train.extra_split`,
    drawn at random (seeded by `seed`), as records holding only the drawn boxes."""
    train = config.train
    if not train.extra_split:
        return []
    if train.extra_boxes_per_class < 1:
        raise UserError(f"train.extra_boxes_per_class = {train.extra_boxes_per_class}: expected at least 1")
    dataset = load_dataset(config.data, train.extra_split)
    owners = [(i, j) for i, r in enumerate(dataset.records) for j in np.flatnonzero(~r.ignore)]
    labels = np.array([dataset.records[i].labels[j] for i, j in owners], dtype=np.int64)
    rng = np.random.default_rng([config.seed, 1000])
    chosen: dict[int, list[int]] = {}
    for label in range(len(dataset.classes)):
        candidates = np.flatnonzero(labels == label)
        picked = rng.choice(candidates, min(len(candidates), train.extra_boxes_per_class), replace=False)
        for index in sorted(int(p) for p in picked):
            image, box = owners[index]
            chosen.setdefault(image, []).append(box)
    return [_with_boxes(dataset.records[i], sorted(boxes)) for i, boxes in sorted(chosen.items())]


def _with_boxes(record: ImageRecord, boxes: list[int]) -> ImageRecord:
    return replace(record, boxes=record.boxes[boxes], labels=record.labels[boxes], ignore=record.ignore[boxes])
