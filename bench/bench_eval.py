"""Benchmark: scoring speed and memory of the evaluators on synthetic splits (issue 6 targets).

    python bench/bench_eval.py                 # all cases, one subprocess each, Markdown table
    python bench/bench_eval.py --case ilsvrc   # one case, prints a JSON line

Each case builds an in-memory split (1-4 ground-truth boxes per image, some images empty, 5% of
boxes ignored for VOC) and 100 detections per image (a jittered copy of every ground-truth box,
the rest random), then times ``make_evaluator`` + ``process`` of every image + ``evaluate``.
Peak RSS is the case's whole process (data generation included), so it bounds the scoring cost.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from detector.data.datasets import Dataset, ImageRecord
from eval.detections import ImageDetections
from eval.metrics import make_evaluator

#: case -> (metric, images, classes, target seconds)
CASES = {
    "voc07": ("voc07", 5000, 20, 5.0),
    "voc10": ("voc10", 5000, 20, 5.0),
    "ilsvrc": ("ilsvrc", 20000, 200, 60.0),
    "coco": ("coco", 5000, 20, None),
}
DETECTIONS_PER_IMAGE = 100
SIZE = (500, 375)  #: image width, height in pixels


def _random_boxes(rng: np.random.Generator, n: int) -> np.ndarray:
    """n random xyxy boxes [n, 4] float32 inside a SIZE image, 4..250 pixels a side."""
    wh = rng.uniform(4, 250, size=(n, 2))
    xy = rng.uniform(0, 1, size=(n, 2)) * (np.array(SIZE) - wh)
    return np.concatenate([xy, xy + wh], axis=1).astype(np.float32)


def make_split(rng: np.random.Generator, images: int, classes: int, ignore_rate: float) -> Dataset:
    """An in-memory split with 0-4 boxes per image (about 1 in 10 images empty)."""
    records = []
    for i in range(images):
        n = int(rng.choice(5, p=[0.1, 0.4, 0.25, 0.15, 0.1]))
        records.append(ImageRecord(
            image_id=f"{i:06d}", path=Path(f"{i:06d}.jpg"), width=SIZE[0], height=SIZE[1],
            boxes=_random_boxes(rng, n), labels=rng.integers(0, classes, n),
            ignore=rng.random(n) < ignore_rate,
        ))
    names = [f"class{c:03d}" for c in range(classes)]
    return Dataset(name="bench/test", classes=names, display_names=names, records=records)


def make_detections(rng: np.random.Generator, record: ImageRecord, classes: int) -> ImageDetections:
    """DETECTIONS_PER_IMAGE detections: jittered copies of the ground truth (scores 0.3..1), then
    random boxes (scores 0..0.7)."""
    jitter = rng.normal(0, 8, size=record.boxes.shape).astype(np.float32)
    rest = DETECTIONS_PER_IMAGE - len(record.boxes)
    boxes = np.concatenate([np.sort((record.boxes + jitter).reshape(-1, 2, 2), axis=1).reshape(-1, 4),
                            _random_boxes(rng, rest)])
    labels = np.concatenate([record.labels, rng.integers(0, classes, rest)])
    scores = np.concatenate([rng.uniform(0.3, 1.0, len(record.boxes)), rng.uniform(0.0, 0.7, rest)])
    return ImageDetections(boxes, scores, labels)


def run_case(name: str) -> dict:
    """Time one case; returns its row of the table."""
    metric, images, classes, target = CASES[name]
    rng = np.random.default_rng(0)
    dataset = make_split(rng, images, classes, ignore_rate=0.05 if metric.startswith("voc") else 0.0)
    dets = {r.image_id: make_detections(rng, r, classes) for r in dataset.records}
    start = time.perf_counter()
    evaluator = make_evaluator(metric, dataset)
    for image_id, det in dets.items():
        evaluator.process(image_id, det)
    result = evaluator.evaluate()
    seconds = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"case": name, "metric": metric, "images": images, "classes": classes,
            "detections": images * DETECTIONS_PER_IMAGE, "seconds": seconds, "target_s": target,
            "peak_rss_mib": peak_mib, "mAP": result.mAP}


def markdown(rows: list[dict]) -> str:
    """The results as a Markdown table."""
    lines = ["| case | images x classes | detections | seconds | target | peak RSS (MiB) | mAP |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        target = f"<= {r['target_s']:.0f} s" if r["target_s"] else "-"
        lines.append(f"| {r['case']} | {r['images']} x {r['classes']} | {r['detections']:,} | "
                     f"{r['seconds']:.2f} | {target} | {r['peak_rss_mib']:.0f} | {r['mAP']:.4f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", choices=sorted(CASES), help="run one case in this process (JSON line)")
    parser.add_argument("--cases", nargs="+", default=["voc07", "voc10", "ilsvrc"], choices=sorted(CASES))
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case)))
        return 0
    rows = []
    for name in args.cases:
        out = subprocess.run([sys.executable, __file__, "--case", name], check=True, capture_output=True, text=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
