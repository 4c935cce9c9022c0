"""Detection over a whole dataset split: per-image cache, resumable, shardable, merged at the end.

Each image's detections are stored in ``<cache>/<key>/<image digest>.npz`` where ``key`` hashes
the checkpoints' bytes and every setting that changes the output (proposals, test config), so a
changed model or setting never reuses stale results. ``--shard i/n`` processes every n-th image
(on another machine or rank); a later unsharded run finds them cached and merges.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
from pathlib import Path

from tqdm import tqdm

from detector.common.distributed import DistContext, gathered, own_share
from detector.common.errors import UserError
from detector.common.npz import read_npz, write_npz
from detector.common.workers import shard
from detector.config import detection_settings
from detector.data.datasets import Dataset, ImageRecord
from detector.data.images import file_digest
from detector.inference.detector import Detector, proposed_images
from eval.detections import Detections, ImageDetections
from proposals.extract import ProposedImage


def detection_key(detector: Detector, weights: list[str]) -> str:
    """Content hash of the model files and the settings that determine the detections."""
    digest = hashlib.sha1()
    for path in weights:
        digest.update(file_digest(path, length=40).encode())
    if not weights:  # the ImageNet default model: its name tells the class map
        digest.update(",".join(s.name for s in detector.scorers).encode())
    settings = {"proposals": dataclasses.asdict(detector.proposal_config), "test": detection_settings(detector.test_config)}
    digest.update(json.dumps(settings, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def _cache_file(cache_dir: Path, record: ImageRecord) -> Path:
    return cache_dir / f"{file_digest(record.path)}.npz"


def _read_cached(path: Path) -> ImageDetections | None:
    """Cached detections, or None when absent or unreadable (then recomputed)."""
    data = read_npz(path, ("boxes", "scores", "labels"), "cached detections")
    return None if data is None else ImageDetections(data["boxes"], data["scores"], data["labels"])


def _write_cached(path: Path, dets: ImageDetections) -> None:
    write_npz(path, boxes=dets.boxes, scores=dets.scores, labels=dets.labels)


def detect_split(
    detector: Detector, dataset: Dataset, cache_dir: Path, proposal_cache: Path,
    shard_index: int = 0, shard_count: int = 1, context: DistContext = DistContext(),
) -> Detections | None:
    """Detections of this shard's images of `dataset` (all images when unsharded), cached per image.
    Under torchrun each rank detects its share (balanced by image area) and rank 0 returns them
    all, in the split's order; the other ranks return None."""
    if detector.classes != dataset.classes:
        raise UserError(f"{detector.scorers[0].name}: the model's classes {detector.classes[:5]}... do not match "
                        f"{dataset.name}'s {dataset.classes[:5]}... ({len(detector.classes)} vs {len(dataset.classes)})")
    records = shard(dataset.records, shard_index, shard_count)
    mine = [records[i] for i in own_share([r.width * r.height for r in records], context)]
    parts = gathered(_detect_records(detector, mine, dataset.name, cache_dir, proposal_cache), context,
                     f"detect {dataset.name}")
    if parts is None:
        return None
    found = {image_id: dets for part in parts for image_id, dets in part.items()}
    return {record.image_id: found[record.image_id] for record in records}


def _detect_records(detector: Detector, records: list[ImageRecord], name: str, cache_dir: Path,
                    proposal_cache: Path) -> Detections:
    """Detections of `records` through the per-image cache in `cache_dir`."""
    files = [_cache_file(cache_dir, record) for record in records]
    results: Detections = {record.image_id: _read_cached(file) for record, file in zip(records, files)}
    to_detect = [(record, file) for record, file in zip(records, files) if results[record.image_id] is None]
    with contextlib.closing(proposed_images(detector, [record.path for record, _ in to_detect], proposal_cache)) as inputs:
        for (record, file), ready in zip(tqdm(to_detect, desc=f"detect {name}", unit="image", dynamic_ncols=True),
                                         inputs):
            results[record.image_id] = _detect(detector, ready)
            _write_cached(file, results[record.image_id])
    return results


def _detect(detector: Detector, ready: ProposedImage | UserError) -> ImageDetections:
    """Detections of an image read and proposed ahead; the UserError of an unreadable one is raised."""
    if isinstance(ready, UserError):
        raise ready
    return detector.detect(ready.image, ready.boxes).as_image_detections()
