"""The Detector: image -> proposals -> region scores -> class-specific boxes -> NMS / voting.

``Detector.from_weights(["a.pt", "b.pt"], config)`` builds an ensemble whose members score the
same proposals; their class scores are averaged and their refined boxes fused by
:func:`detector.inference.postprocess.detect_from_scores` (NMS, box voting or weighted boxes fusion).
A test-time horizontal flip counts as one more member.
"""
from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch

from detector.common.errors import UserError
from detector.common.precision import Precision, flush_denormals, resolve_precision
from detector.common.workers import default_workers
from detector.config import Config, TestConfig
from detector.data.boxes import clip_boxes, hflip_boxes
from detector.data.images import load_image
from detector.inference.ensemble import check_members, ensemble_members
from detector.inference.postprocess import detect_from_scores
from detector.inference.precision_choice import inference_precision
from detector.inference.prefetch import prefetched, proposal_workers, with_torch_threads
from detector.inference.scorers import FineTunedScorer, ImageNetScorer, RegionScorer
from detector.modeling.box_regression import decode_deltas
from detector.modeling.regions import normalize_image, warp_regions
from eval.detections import ImageDetections
from proposals import propose_with_config
from proposals.cache import is_cached
from proposals.config import ProposalConfig
from proposals.extract import ProposedImage, read_and_propose

#: Where `detect` looks for a default fine-tuned checkpoint when no --weights / $RCNN_WEIGHTS.
DEFAULT_CHECKPOINT = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "googlenet-rcnn" / "default.pt"


@dataclass
class DetectionResult:
    """Detections of one image: boxes [D, 4] xyxy pixels, scores [D], labels [D] (0-based),
    their class names, and seconds spent per stage."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    names: list[str]
    timing: dict[str, float] = field(default_factory=dict)

    def as_image_detections(self) -> ImageDetections:
        return ImageDetections(self.boxes, self.scores, self.labels)


def resolve_weights(weights: list[str]) -> list[str]:
    """--weights > $RCNN_WEIGHTS > the user-cache default checkpoint > [] (the ImageNet model)."""
    if weights:
        return list(weights)
    if os.environ.get("RCNN_WEIGHTS"):
        return os.environ["RCNN_WEIGHTS"].split(os.pathsep)
    return [str(DEFAULT_CHECKPOINT)] if DEFAULT_CHECKPOINT.is_file() else []


class Detector:
    """R-CNN detection with one or more region scorers (an ensemble) over shared proposals."""

    def __init__(self, scorers: list[RegionScorer], proposal_config: ProposalConfig,
                 test_config: TestConfig, precision: Precision | None = None) -> None:
        if not scorers:
            raise UserError("a detector needs at least one model")
        check_members(scorers)
        first = scorers[0]
        if test_config.max_proposals < 0:
            raise UserError(f"test.max_proposals = {test_config.max_proposals}: expected 0 (all) or more")
        if any(side <= 0 for side in test_config.scales):
            raise UserError(f"test.scales {list(test_config.scales)}: shorter sides must be positive pixels")
        flush_denormals()
        self.precision = precision or resolve_precision(test_config.precision)
        self.scorers = [s.to(self.precision) for s in scorers]
        self.classes, self.display_names = first.classes, first.display_names
        self.proposal_config = proposal_config
        self.test_config = test_config
        #: warp the next chunk of regions in a thread while the network runs: on CUDA only, as
        #: on a CPU the network already uses every core (rcnn bench on 2 cores: 4% slower)
        self.overlap_warps = self.precision.device.type == "cuda"

    @classmethod
    def from_weights(cls, weights: list[str], config: Config | None = None, imagenet_target: str = "ilsvrc_det200") -> "Detector":
        """Checkpoints (several = ensemble), or the ImageNet default model when `weights` is empty."""
        config = config or Config()
        paths = resolve_weights(weights or config.test.weights)
        scorers = [FineTunedScorer.from_checkpoint(p) for p in paths] if paths else [ImageNetScorer(imagenet_target)]
        return cls(scorers, config.proposals, config.test, inference_precision(scorers, config))

    # ----------------------------------------------------------------- scoring

    @torch.inference_mode()
    def score(self, image: np.ndarray, proposals: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores [K, N, C+1] and refined boxes [K, N, C, 4] of K members on N proposals."""
        height, width = image.shape[:2]
        boxes = torch.as_tensor(proposals, dtype=torch.float32).reshape(-1, 4)
        members = ensemble_members(self.scorers, self.test_config.flip)
        num_classes = len(self.classes)
        scores = torch.zeros((len(members), len(boxes), num_classes + 1))
        deltas = torch.zeros((len(members), len(boxes), 4 * num_classes))
        normalized = normalize_image(image)
        if len(boxes):
            self._score_shared(members, normalized, boxes, scores, deltas)
            self._score_crops(members, normalized, boxes, scores, deltas)
        for k, (_, flip) in enumerate(members):
            if flip:  # a mirrored region's x-shift points the other way
                deltas[k, :, 0::4] *= -1
        flat = deltas.view(len(members) * len(boxes), 4 * num_classes)
        refined = decode_deltas(boxes.repeat(len(members), 1), flat).view(-1, 4)
        refined = clip_boxes(refined, height, width)
        return scores, refined.view(len(members), len(boxes), num_classes, 4)

    def _score_shared(self, members, normalized, boxes, scores, deltas) -> None:
        """Fill rows of roi-mode members: one trunk pass per (model, flip)."""
        width = normalized.shape[2]
        for k, (scorer, flip) in enumerate(members):
            if scorer.shares_features:
                image, member_boxes = (normalized.flip(-1), hflip_boxes(boxes, width)) if flip else (normalized, boxes)
                out = scorer.score_image(image, member_boxes, self.precision, self.test_config.batch_size,
                                         self.test_config.scales)
                scores[k], deltas[k] = out.scores, out.deltas

    def _score_crops(self, members, normalized, boxes, scores, deltas) -> None:
        """Fill rows of warped-region members, chunk by chunk; a warp is shared by every member
        with the same (size, context, flip). With ``overlap_warps`` the next chunk is warped in a
        background thread while the network scores this one."""
        crop_members = [(k, scorer, (*scorer.warp_key, flip))
                        for k, (scorer, flip) in enumerate(members) if not scorer.shares_features]
        if not crop_members:
            return
        warp_keys = list(dict.fromkeys(key for _, _, key in crop_members))
        step = self.test_config.batch_size
        starts = range(0, len(boxes), step)

        def warp_chunk(start: int) -> dict[tuple, torch.Tensor]:
            chunk = boxes[start : start + step]
            return {key: warp_regions(normalized, chunk, *key) for key in warp_keys}

        chunks = prefetched(warp_chunk, starts) if self.overlap_warps else map(warp_chunk, starts)
        for start, warped in zip(starts, chunks):
            for k, scorer, key in crop_members:
                out = scorer(warped[key], self.precision)
                scores[k, start : start + step] = out.scores
                if out.deltas is not None:
                    deltas[k, start : start + step] = out.deltas

    # ----------------------------------------------------------------- detection

    def propose(self, image: np.ndarray) -> np.ndarray:
        """The proposals [N, 4] xyxy that `detect` scores on an RGB uint8 image [H, W, 3]."""
        return self._ranked(propose_with_config(image, self.proposal_config))

    def _ranked(self, proposals: np.ndarray) -> np.ndarray:
        """The first test.max_proposals of ranked proposals (best first), or all when 0."""
        limit = self.test_config.max_proposals
        return proposals[:limit] if limit > 0 else proposals

    def detect(self, image: np.ndarray | str | Path, proposals: np.ndarray | None = None) -> DetectionResult:
        """Detections of one image (an RGB uint8 array [H, W, 3] or a path)."""
        timing = {}
        start = time.perf_counter()
        if not isinstance(image, np.ndarray):
            image = load_image(image)
        proposals = self.propose(image) if proposals is None else self._ranked(proposals)
        timing["proposals_s"] = time.perf_counter() - start
        start = time.perf_counter()
        scores, boxes = self.score(image, proposals)
        timing["regions_s"] = time.perf_counter() - start
        start = time.perf_counter()
        t = self.test_config
        det_boxes, det_scores, det_labels = detect_from_scores(
            scores, boxes, image.shape[:2], score_threshold=t.score_threshold, nms_iou=t.nms_iou,
            max_detections=t.max_detections, fusion=t.fusion, vote_iou=t.vote_iou, wbf_iou=t.wbf_iou,
        )
        timing["postprocess_s"] = time.perf_counter() - start
        labels = det_labels.numpy().astype(np.int64)
        return DetectionResult(
            det_boxes.numpy().astype(np.float32), det_scores.numpy().astype(np.float32), labels,
            [self.display_names[i] for i in labels], timing,
        )


def proposed_images(detector: Detector, paths: Sequence[Path], cache_dir: Path | None = None,
                    network_threads: int | None = None) -> Iterator[ProposedImage | UserError]:
    """:func:`proposals.extract.read_and_propose` of each path (through the proposal cache in
    `cache_dir` when given), in order, ahead of the caller: in ``test.proposal_workers``
    processes (:func:`proposal_workers`; none when every image's proposals are cached already,
    as reading them is cheap), else in one thread. While it runs, torch in this process uses
    `network_threads` (default: the cores the workers leave, at least one; unchanged without
    workers). Close it when leaving early: that ends the workers and restores the threads."""
    config, test = detector.proposal_config, detector.test_config
    if test.proposal_ahead < 0:
        raise UserError(f"test.proposal_ahead = {test.proposal_ahead}: expected 0 (two per worker) or more")
    to_compute = len(paths) if cache_dir is None else sum(not is_cached(p, config, cache_dir) for p in paths)
    light = all(scorer.shares_features for scorer in detector.scorers)
    workers = proposal_workers(test.proposal_workers, light, to_compute)
    ahead = (test.proposal_ahead or 2 * workers) if workers else 1
    if network_threads is None:
        network_threads = max(1, default_workers() - workers) if workers else 0
    read = partial(read_and_propose, config=config, cache_dir=cache_dir)
    return with_torch_threads(network_threads, prefetched(read, paths, ahead, workers))
