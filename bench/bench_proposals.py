"""Measure the proposal targets on a VOC-layout split and print them as Markdown tables.

Targets (issue 3): opencv-fast recall@0.5 >= 0.98 and recall@0.7 >= 0.75 with <= 2000
boxes/image; <= 1.5 s per ~500x375 image on one core; 2 workers >= 1.7x the throughput of 1;
the googlenet preset keeps about 60% of the boxes with recall@0.5 within 2 points.

Every number is measured in this run on fresh caches (nothing is read from an earlier cache).

    python bench/bench_proposals.py                      # animals-voc test split, all images
    python bench/bench_proposals.py --limit 30 --speed-images 16
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from detector.data.datasets import DatasetConfig, load_dataset
from proposals.config import ProposalConfig
from proposals.extract import extract
from proposals.report import markdown_table, method_config, summarize

REPO = Path(__file__).resolve().parents[1]


def _throughput(paths: list[Path], config: ProposalConfig, workers: int) -> float:
    """Images per second (wall clock) for `paths` on a fresh cache."""
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        results = extract(paths, config, Path(cache), workers=workers, progress=False)
        seconds = time.perf_counter() - start
    assert not any(r.error for r in results), [r.error for r in results if r.error]
    return len(paths) / seconds


def _speed(paths: list[Path], config: ProposalConfig) -> tuple[float, float]:
    """(images/s with 1 worker, with 2 workers), printed with the load average before the run."""
    load = os.getloadavg()[0]
    one = _throughput(paths, config, workers=1)
    two = _throughput(paths, config, workers=2)  # forkserver already started by an earlier pool
    print(f"throughput on {len(paths)} images (opencv-fast, wall clock incl. decoding, fresh cache): "
          f"1 worker {one:.2f} img/s ({1 / one:.2f} s/image), 2 workers {two:.2f} img/s, "
          f"speed-up {two / one:.2f}x; load average before: {load:.1f}\n")
    return one, two


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=str(REPO.parent / "shared" / "data" / "animals-voc"))
    parser.add_argument("--classes", default="raccoon,kangaroo")
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, default=0, help="first N images only (0 = all)")
    parser.add_argument("--workers", type=int, default=2, help="workers for the recall runs")
    parser.add_argument("--speed-images", type=int, default=20, help="images in the 1- vs 2-worker run")
    parser.add_argument("--speed-only", action="store_true", help="only the 1- vs 2-worker throughput")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    data = DatasetConfig(format="voc", root=args.root, classes=args.classes.split(","))
    dataset = load_dataset(data, args.split)
    records = dataset.records[: args.limit or None]
    paths = [r.path for r in records]
    sizes = np.array([(r.width, r.height) for r in records])
    print(f"{dataset.name}: {len(records)} images, mean size {sizes[:, 0].mean():.0f}x{sizes[:, 1].mean():.0f}, "
          f"{args.workers} worker(s) on one core each\n")

    base = ProposalConfig()
    if args.speed_only:
        with tempfile.TemporaryDirectory() as warm:  # start the forkserver, as the recall runs do
            extract(paths[:2], base, Path(warm), workers=2, progress=False)
        one, two = _speed(paths[: args.speed_images], base)
        return 0 if two / one >= 1.7 else 1
    summaries = []
    for spec in ("opencv-fast", "googlenet"):
        config = method_config(spec, base)
        with tempfile.TemporaryDirectory() as cache:
            results = extract(paths, config, Path(cache), workers=args.workers, keep_boxes=True, description=spec)
        summaries.append(summarize(spec, config, records, results))
    print(markdown_table(summaries))

    fast, googlenet = summaries
    one, two = _speed(paths[: args.speed_images], base)

    ratio = googlenet.boxes_per_image / fast.boxes_per_image
    checks = [
        ("opencv-fast recall@0.5 >= 98%", f"{100 * fast.recall_50:.1f}%", fast.recall_50 >= 0.98),
        ("opencv-fast recall@0.7 >= 75%", f"{100 * fast.recall_70:.1f}%", fast.recall_70 >= 0.75),
        ("opencv-fast boxes/image <= 2000", f"{fast.boxes_per_image:.0f}", fast.boxes_per_image <= 2000),
        ("opencv-fast s/image <= 1.5 (one worker, one core)", f"{1 / one:.2f}", 1 / one <= 1.5),
        ("2 workers >= 1.7x 1 worker", f"{two / one:.2f}x", two / one >= 1.7),
        ("googlenet boxes ~60% of fast", f"{100 * ratio:.0f}%", 0.5 <= ratio <= 0.7),
        ("googlenet recall@0.5 within 2 points", f"{100 * (googlenet.recall_50 - fast.recall_50):+.1f}",
         googlenet.recall_50 >= fast.recall_50 - 0.02),
    ]
    print("| target | measured | met |\n|---|---:|:---:|")
    for name, value, ok in checks:
        print(f"| {name} | {value} | {'yes' if ok else 'NO'} |")
    return 0 if all(ok for *_, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
