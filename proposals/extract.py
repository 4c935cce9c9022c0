"""Proposals for many images: a process pool over the cache, resumable and shardable.

Each worker process (:func:`detector.common.workers.worker_pool`) runs one search at a time on
one core, ignores Ctrl-C (the parent ends the pool) and ends with its parent. Images
already in the cache are read, not recomputed, so an interrupted run resumes where it stopped.
A failing image is logged and reported in its result; the other images go on.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from concurrent.futures import as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, NamedTuple, Sequence

import numpy as np
from tqdm import tqdm

from detector.common.distributed import DistContext, gathered, own_share
from detector.common.errors import UserError
from detector.common.workers import one_core, worker_pool
from detector.data.datasets import ImageRecord
from detector.data.images import load_image
from proposals.cache import load_or_compute, store
from proposals.config import ProposalConfig, validate
from proposals.search import propose_with_config

log = logging.getLogger(__name__)


@dataclass
class ImageResult:
    """Outcome for one image. `boxes` float32 [N, 4] only when asked for and successful."""

    path: Path
    n_boxes: int = 0
    seconds: float = 0.0  #: search time when the boxes were computed (stored with them in the cache)
    cached: bool = False
    error: str = ""  #: one-line message naming the file; empty on success
    boxes: np.ndarray | None = None


def extract_one(path: Path, config: ProposalConfig, cache_dir: Path, keep_boxes: bool = False) -> ImageResult:
    """Proposals of one image through the cache; errors become the result's `error`, never raise."""
    try:
        entry = load_or_compute(path, config, cache_dir)
    except UserError as exc:
        return ImageResult(path=Path(path), error=str(exc))
    except Exception as exc:  # noqa: BLE001 - a backend crash on one image must not stop the others
        return ImageResult(path=Path(path), error=f"{path}: {type(exc).__name__}: {exc}")
    return ImageResult(
        path=Path(path), n_boxes=len(entry.boxes), seconds=entry.seconds, cached=entry.cached,
        boxes=entry.boxes if keep_boxes else None,
    )


def extract(
    paths: Sequence[Path], config: ProposalConfig, cache_dir: Path, *,
    workers: int = 1, keep_boxes: bool = False, progress: bool = True, description: str = "proposals",
) -> list[ImageResult]:
    """Proposals of every image in `paths` (cached or computed), one result per path, in order.

    `workers` > 1 runs a spawn-started process pool; 1 runs in this process (also limited to one
    core). Failures are logged as they happen and returned with their message.
    """
    validate(config)
    if workers < 1:
        raise UserError(f"--workers {workers}: expected at least 1")
    results: list[ImageResult | None] = [None] * len(paths)
    bar = tqdm(total=len(paths), desc=description, unit="img", disable=not progress, dynamic_ncols=True)
    with bar, contextlib.closing(_run(paths, config, cache_dir, workers, keep_boxes)) as finished:
        for index, result in finished:
            if result.error:
                log.error("%s", result.error)
            results[index] = result
            bar.update()
    return results


def _run(
    paths: Sequence[Path], config: ProposalConfig, cache_dir: Path, workers: int, keep_boxes: bool
) -> Iterator[tuple[int, ImageResult]]:
    """(index, ImageResult) pairs as images finish."""
    if workers == 1 or len(paths) <= 1:
        with one_core():
            for index, path in enumerate(paths):
                yield index, extract_one(path, config, cache_dir, keep_boxes)
        return
    with worker_pool(min(workers, len(paths)), preload=__name__) as pool:
        futures = {pool.submit(extract_one, path, config, cache_dir, keep_boxes): i for i, path in enumerate(paths)}
        for future in as_completed(futures):
            index = futures[future]
            try:
                yield index, future.result()
            except Exception as exc:  # noqa: BLE001 - e.g. a worker killed by the OS
                yield index, ImageResult(path=Path(paths[index]), error=f"{paths[index]}: worker failed ({exc!r})")


def extract_everywhere(
    records: Sequence[ImageRecord], config: ProposalConfig, cache_dir: Path, context: DistContext, *,
    workers: int = 1, keep_boxes: bool = False, progress: bool = True, description: str = "proposals",
) -> list[ImageResult]:
    """:func:`extract` of the records' images over the ranks of a torchrun job: each rank searches
    its share (balanced by image area), then the boxes travel over the process group into every
    rank's cache, so that training on any rank finds them. Every rank returns every result, in
    `records` order. Without torchrun: :func:`extract`."""
    paths = [record.path for record in records]
    if not context.enabled:
        return extract(paths, config, cache_dir, workers=workers, keep_boxes=keep_boxes, progress=progress,
                       description=description)
    mine = own_share([record.width * record.height for record in records], context)
    found = extract([paths[i] for i in mine], config, cache_dir, workers=workers, keep_boxes=True,
                    progress=progress, description=f"{description} (rank {context.rank})")
    results: list[ImageResult | None] = [None] * len(paths)
    for part in gathered(list(zip(mine, found)), context, description, everywhere=True):
        for index, result in part:
            results[index] = result
    for index in sorted(set(range(len(paths))) - set(mine)):
        if not results[index].error:
            store(paths[index], config, cache_dir, results[index].boxes, results[index].seconds)
    if not keep_boxes:
        results = [dataclasses.replace(r, boxes=None) for r in results]
    return results


class ProposedImage(NamedTuple):
    """An image file read for detection: pixels RGB uint8 [H, W, 3], its proposals float32 [N, 4]
    xyxy pixels best-ranked first, and the seconds spent on them (search or cache read)."""

    image: np.ndarray
    boxes: np.ndarray
    seconds: float


def read_and_propose(path: Path, config: ProposalConfig, cache_dir: Path | None = None) -> ProposedImage | UserError:
    """Decode one image and find its proposals, through the cache in `cache_dir` when given.
    A UserError (unreadable image) is returned, not raised, so that the caller decides: skip the
    image (``detect``) or stop (``rcnn eval``). Picklable: runs in pool workers."""
    try:
        image = load_image(path)
        start = time.perf_counter()
        if cache_dir is None:
            boxes = propose_with_config(image, config)
        else:
            boxes = load_or_compute(path, config, cache_dir, image).boxes
    except UserError as exc:
        return exc
    return ProposedImage(image, boxes, time.perf_counter() - start)


