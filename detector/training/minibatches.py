"""Training minibatches for the region classifier, one deterministic batch per iteration.

Batch ``i`` is a pure function of (seed, i, rank): which images (uniformly, or by LVIS repeat
factor), whether each is flipped and which regions are sampled all come from
``np.random.default_rng([seed, i, rank])``. Resuming at iteration ``i`` therefore replays exactly
the batches an uninterrupted run would have seen, and DataLoader workers need no shared state.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset as TorchDataset

from detector.common.errors import UserError
from detector.data.boxes import hflip_boxes
from detector.data.datasets import Dataset, ImageRecord
from detector.data.images import load_image
from detector.data.transforms import photometric_jitter
from detector.modeling.regions import normalize_image, resize_for_roi, roi_inputs, warp_regions
from detector.training.sampling import FG_SAMPLING, class_repeat_factors, image_repeat_factors, sample_regions

#: image path -> proposals float32 [P, 4] xyxy (pixels of the image file)
ProposalFn = Callable[[Path], np.ndarray]


@dataclass
class SamplingSettings:
    """How one minibatch is drawn (see TrainConfig for the meaning of each)."""

    images_per_batch: int = 2
    regions_per_batch: int = 128
    fg_fraction: float = 0.25
    fg_iou: float = 0.5
    bg_iou: tuple[float, float] = (0.1, 0.5)
    bbox_iou: float = 0.6
    flip: bool = True
    input_size: int = 224
    context_pad: int = 16
    mode: str = "crop"  #: crop: warped regions; roi: resized images + RoIs (shared features)
    roi_short_side: int = 600
    roi_max_side: int = 1000
    scales: tuple[int, ...] = ()  #: roi mode: shorter sides to draw from (empty = roi_short_side)
    photometric: float = 0.0  #: brightness / contrast / saturation jitter strength (0 = off)
    fg_sampling: str = "uniform"  #: uniform: over foreground proposals; per_object: over ground-truth objects
    repeat_factor: float = 0.0  #: LVIS repeat-factor threshold t of image sampling (0 = uniform images)

    def __post_init__(self) -> None:
        if any(side <= 0 for side in self.scales):
            raise UserError(f"train.scales {list(self.scales)}: shorter sides must be positive pixels")
        if not 0 <= self.photometric < 1:
            raise UserError(f"train.photometric {self.photometric}: expected a strength in [0, 1)")
        if self.fg_sampling not in FG_SAMPLING:
            raise UserError(f"train.fg_sampling {self.fg_sampling!r}: expected one of {', '.join(FG_SAMPLING)}")
        if self.repeat_factor < 0:
            raise UserError(f"train.repeat_factor {self.repeat_factor}: expected a threshold >= 0 (0 = off)")

    def roi_sides(self, rng: np.random.Generator) -> tuple[int, int]:
        """(shorter side, longer-side cap) of one training image: a random scale of `scales`, the
        cap scaled with it, or the fixed sides when `scales` is empty."""
        if not self.scales:
            return self.roi_short_side, self.roi_max_side
        short = int(self.scales[rng.integers(len(self.scales))])
        return short, round(self.roi_max_side * short / self.roi_short_side)


@dataclass
class RegionBatch:
    """The network's inputs — crop mode: (regions [R, 3, S, S],); roi mode: (list of normalised
    images [3, H, W], rois [R, 5]) — and the targets: labels [R] (0 = background),
    box_targets [R, 4], box_mask [R] bool."""

    inputs: tuple
    labels: torch.Tensor
    box_targets: torch.Tensor
    box_mask: torch.Tensor


class TrainBatches(TorchDataset):
    """Item ``i`` = the RegionBatch of iteration ``i`` (use with DataLoader(batch_size=None))."""

    def __init__(
        self, dataset: Dataset, proposal_fn: ProposalFn, settings: SamplingSettings,
        iterations: int, seed: int = 0, rank: int = 0,
    ) -> None:
        records = [r for r in dataset.records if (~r.ignore).any()]
        if not records:
            raise UserError(f"{dataset.name}: no image has a (non-difficult) object to train on")
        self.ground_truth_only: set[int] = set()  #: indices into records of ground-truth-only images
        self.num_classes = len(dataset.classes)
        self.proposal_fn = proposal_fn
        self.settings = settings
        self._set_records(records)
        self.iterations = iterations
        self.seed = seed
        self.rank = rank

    def __len__(self) -> int:
        return self.iterations

    def add_ground_truth_only(self, records: list[ImageRecord]) -> None:
        """Also draw `records`, whose ground-truth boxes are the only regions taken: no proposals,
        no background (R-CNN on ILSVRC: DET train images are not exhaustively annotated)."""
        kept = [r for r in records if (~r.ignore).any()]
        self.ground_truth_only.update(range(len(self.records), len(self.records) + len(kept)))
        self._set_records(self.records + kept)

    def _set_records(self, records: list[ImageRecord]) -> None:
        """Draw from `records`; with repeat-factor sampling each with probability proportional to r(I)."""
        self.records = records
        self.image_probabilities = None  #: [N] draw probability of each record; None = uniform
        if self.settings.repeat_factor:
            factors = image_repeat_factors(self._image_classes(), self.class_repeat_factors())
            self.image_probabilities = factors / factors.sum()

    def _image_classes(self) -> list[np.ndarray]:
        return [r.labels[~r.ignore] for r in self.records]

    def class_repeat_factors(self) -> np.ndarray:
        """LVIS r(c) [C] of each class over the records drawn (train.repeat_factor as t)."""
        return class_repeat_factors(self._image_classes(), self.num_classes, self.settings.repeat_factor)

    def draw_images(self, rng: np.random.Generator) -> np.ndarray:
        """Indices into records of one batch's images, distinct: uniform, or by repeat factor."""
        size = min(self.settings.images_per_batch, len(self.records))
        return rng.choice(len(self.records), size=size, replace=False, p=self.image_probabilities)

    def _image_regions(self, record: ImageRecord, rng: np.random.Generator, num_regions: int, index: int,
                       gt_only: bool = False):
        """Network inputs (warped regions; or the resized image and its RoIs, `index` being the
        image's place in the batch) and targets sampled from one (possibly flipped) image; a
        ground-truth-only image yields its ground-truth boxes alone."""
        s = self.settings
        image = load_image(record.path)
        proposals = np.zeros((0, 4), np.float32) if gt_only else \
            np.asarray(self.proposal_fn(record.path), dtype=np.float32).reshape(-1, 4)
        gt_boxes, gt_labels = record.boxes[~record.ignore], record.labels[~record.ignore]
        flip = s.flip and bool(rng.integers(0, 2))
        if flip:
            width = image.shape[1]
            image = image[:, ::-1].copy()
            proposals, gt_boxes = hflip_boxes(proposals, width), hflip_boxes(gt_boxes, width)
        targets = sample_regions(
            torch.from_numpy(proposals), torch.from_numpy(gt_boxes), torch.from_numpy(gt_labels),
            num_regions, rng, s.fg_fraction, s.fg_iou, s.bg_iou, s.bbox_iou, s.fg_sampling,
        )
        if s.photometric:
            image = photometric_jitter(image, rng, s.photometric, s.photometric, s.photometric)
        normalized = normalize_image(image)
        if s.mode == "roi":
            resized, scale = resize_for_roi(normalized, *s.roi_sides(rng))
            return (resized, roi_inputs(targets.boxes, index, s.input_size, s.context_pad, scale)), targets
        return warp_regions(normalized, targets.boxes, s.input_size, s.context_pad), targets

    def __getitem__(self, iteration: int) -> RegionBatch:
        s = self.settings
        rng = np.random.default_rng([self.seed, iteration, self.rank])
        picks = self.draw_images(rng)
        per_image = s.regions_per_batch // len(picks)
        parts = [self._image_regions(self.records[i], rng, per_image, k, int(i) in self.ground_truth_only)
                 for k, i in enumerate(picks)]
        if s.mode == "roi":
            inputs = ([p[0][0] for p in parts], torch.cat([p[0][1] for p in parts]))
        else:
            inputs = (torch.cat([p[0] for p in parts]),)
        return RegionBatch(
            inputs=inputs,
            labels=torch.cat([p[1].labels for p in parts]),
            box_targets=torch.cat([p[1].box_targets for p in parts]),
            box_mask=torch.cat([p[1].box_mask for p in parts]),
        )
