"""``rcnn bench``'s ``throughput`` section: end-to-end detection over several image files, in
images/s, with the proposals computed ahead of the network one image at a time in a thread
(the serial baseline) or in worker processes (``test.proposal_workers``), measured in one run.

The network is the config's (``model.mode``, ``model.roi_layer``, randomly initialised): the light
head of ``--config animals_voc`` is proposal-bound, crop mode network-bound. Each pass decodes
the files and detects them as ``rcnn eval`` does: cold = every image's proposals computed (as
``detect`` does; an empty proposal cache also writes them, a few ms), warm = read from a cache
filled before. The pool's start-up is inside each timed pass; the forkserver's, once a process,
is not (started before timing).
"""
from __future__ import annotations

import contextlib
import dataclasses
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from detector.bench.models import benchmark_model, proposal_config_for, random_scorers, shared_feature_scorer
from detector.bench.report import BenchSettings, Row, median_seconds
from detector.common.precision import resolve_precision
from detector.common.workers import default_workers, worker_pool
from detector.config import Config
from detector.inference.detector import Detector, proposed_images
from detector.inference.prefetch import proposal_workers
from proposals.config import effective_max_boxes
from proposals.extract import extract

IMAGES = 12  #: images per timed pass (the files given, cycled or cut to this); --quick: QUICK_IMAGES
QUICK_IMAGES = 4


def bench_throughput(images: dict[str, np.ndarray], config: Config, settings: BenchSettings) -> list[Row]:
    """images/s of end-to-end detection over the files of `images` (name -> pixels; names that
    are not files are written to a scratch folder), cold and warm proposal cache, serial
    baseline and worker splits."""
    detector = _detector(config, settings)
    detector.detect(next(iter(images.values())))  # warm-up: the network's first pass
    with worker_pool(1, preload="proposals.extract") as pool:
        pool.submit(int).result()  # start the forkserver (as detection's pools will) outside the timed passes
    with tempfile.TemporaryDirectory() as scratch:
        paths = _image_files(images, Path(scratch) / "images", QUICK_IMAGES if settings.quick else IMAGES)
        cache = Path(scratch) / "proposals"
        extract(sorted(set(paths)), detector.proposal_config, cache, workers=default_workers(), progress=False)
        rows = []
        for label, cache_dir in (("cold", None), ("warm", cache)):
            variants = _variants(detector, cache_dir, len(paths))
            rows += [_row(detector, paths, cache_dir, label, *variant, settings) for variant in variants]
    return rows


def _detector(config: Config, settings: BenchSettings) -> Detector:
    """One randomly initialised model in the config's mode, on the benchmark's proposal budget."""
    torch.manual_seed(0)
    model = benchmark_model()
    if config.model.mode == "roi":
        sides = (config.model.roi_short_side, config.model.roi_max_side)
        scorer = shared_feature_scorer(model, config.model.roi_layer, sides, settings)
    else:
        scorer = random_scorers(model, 1, settings)[0]
    precision = resolve_precision(config.test.precision, torch.device(settings.device))
    return Detector([scorer], proposal_config_for(config, settings), config.test, precision)


def _image_files(images: dict[str, np.ndarray], scratch: Path, count: int) -> list[Path]:
    """`count` image files: those named in `images` (the others written as PNG), cycled or cut."""
    files = []
    for index, (name, pixels) in enumerate(images.items()):
        if Path(name).is_file():
            files.append(Path(name))
        else:
            scratch.mkdir(parents=True, exist_ok=True)
            files.append(scratch / f"{index}.png")
            Image.fromarray(pixels).save(files[-1])
    return [files[i % len(files)] for i in range(count)]


def _variants(detector: Detector, cache_dir: Path | None, images: int) -> list[tuple[str, int, int | None]]:
    """(label, test.proposal_workers, network threads or None for the default split): the serial
    baseline, then the worker splits (cold cache), or auto (which starts no workers on a warm
    cache) and workers all the same; the split that auto chooses is marked."""
    cores = default_workers()
    if cache_dir is not None:
        return [("serial", 0, None), ("auto", -1, None), (f"{_count(cores, 'worker')} all the same", cores, None)]
    variants = [("serial", 0, None), (f"1 worker, network {_count(max(1, cores - 1), 'thread')}", 1, None)]
    if cores > 1:
        variants += [(f"{cores} workers, network 1 thread", cores, None),
                     (f"{cores} workers, network {_count(cores, 'thread')}", cores, cores)]
    auto = proposal_workers(-1, all(scorer.shares_features for scorer in detector.scorers), images)
    return [(f"{label} (auto)" if (workers, threads) == (auto, None) else label, workers, threads)
            for label, workers, threads in variants]


def _count(count: int, noun: str) -> str:
    return f"{count} {noun}{'s' if count > 1 else ''}"


def _row(detector: Detector, paths: list[Path], cache_dir: Path | None, cache: str, label: str, workers: int,
         threads: int | None, settings: BenchSettings) -> Row:
    """images/s of passes over `paths` with `workers` proposal workers (median of the repeats)."""
    detector.test_config = dataclasses.replace(detector.test_config, proposal_workers=workers)

    def run() -> None:
        with contextlib.closing(proposed_images(detector, paths, cache_dir, threads)) as inputs:
            for ready in inputs:
                detector.detect(ready.image, ready.boxes)

    seconds = median_seconds(run, settings.repeats, 0, torch.device(settings.device))
    note = (f"{len(paths)} images, <= {effective_max_boxes(detector.proposal_config)} proposals, "
            f"{detector.scorers[0].name}, {detector.precision.description}") if workers == 0 else ""
    return Row("throughput", f"{cache} proposal cache: {label}", len(paths) / seconds, "images/s", note=note,
               baseline=workers == 0, group=f"throughput {cache}")
