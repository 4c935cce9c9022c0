"""Does preparing the next image in a thread (decode + selective search, `detector.inference.prefetch`)
while the network scores this one speed up detection over many images? (issue 8, item 2)

Runs the loop of `detect` on a folder and `rcnn eval` both ways in the same process: one after
the other (the baseline), and with the next image's decoding and proposals in a background
thread. The model is the shared-feature light head (`roi_layer: 5b-dilated`, randomly
initialised, images at 600 px, up to 2000 proposals), whose network time is close to the
proposals' time, so overlap matters most there. Prints seconds per image (median of repeats)
and the ratio.

    python bench/bench_prefetch.py --images-dir ../shared/data/animals-voc/JPEGImages --count 8
    python bench/bench_prefetch.py               # 6 synthetic 500x375 images
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from detector.bench.models import benchmark_model, shared_feature_scorer
from detector.bench.report import BenchSettings, median_seconds, synthetic_image
from detector.common.precision import resolve_precision
from detector.config import TestConfig
from detector.data.images import list_images, load_image
from detector.inference.detector import Detector
from detector.inference.prefetch import prefetched
from proposals.config import ProposalConfig


def image_paths(images_dir: str | None, count: int, scratch: Path) -> list[Path]:
    """The first `count` images of `images_dir`, or `count` synthetic ones written to `scratch`."""
    if images_dir:
        return list_images(images_dir)[:count]
    paths = []
    for index in range(count):
        path = scratch / f"synthetic_{index}.png"
        Image.fromarray(synthetic_image(seed=index)).save(path)
        paths.append(path)
    return paths


def detect_all(detector: Detector, paths: list[Path], overlap: bool) -> int:
    """Detections over `paths` as `detect` runs them; returns how many boxes were found."""
    def prepare(path: Path) -> tuple[np.ndarray, np.ndarray]:
        image = load_image(path)
        return image, detector.propose(image)

    inputs = prefetched(prepare, paths) if overlap else map(prepare, paths)
    return sum(len(detector.detect(image, proposals).boxes) for image, proposals in inputs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images-dir", default=None)
    parser.add_argument("--count", type=int, default=6, help="images per timed run")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    settings, cpu = BenchSettings(), torch.device("cpu")
    scorer = shared_feature_scorer(benchmark_model(aux_classifiers=False), "5b-dilated", (600, 1000), settings)
    detector = Detector([scorer], ProposalConfig(), TestConfig(), resolve_precision("auto", cpu))
    with tempfile.TemporaryDirectory() as scratch:
        paths = image_paths(args.images_dir, args.count, Path(scratch))
        detect_all(detector, paths[:1], overlap=False)  # warm-up
        times = {overlap: median_seconds(lambda: detect_all(detector, paths, overlap), args.repeats, 0, cpu) / len(paths)
                 for overlap in (False, True)}
    print(f"{len(paths)} images, {detector.precision.description}, {time.strftime('%Y-%m-%d %H:%M')}")
    print(f"one after the other: {times[False]:.3f} s/image (baseline)")
    print(f"next image prepared in a thread: {times[True]:.3f} s/image ({times[True] / times[False]:.2f}x)")


if __name__ == "__main__":
    main()
