"""Benchmark: what the error analysis (TIDE breakdown, Hoiem types, galleries) adds to a report.

    python bench/bench_analysis.py                  # both cases, one subprocess each, Markdown table
    python bench/bench_analysis.py --case large     # one case, prints a JSON line

Each case writes a synthetic split to disk once (JPEG images with coloured shapes on smooth
colour fields plus pixel noise, which JPEG compresses about as badly as photographs; reused
from --cache on later runs), makes detections (a jittered copy of every object, 15% of them
with the wrong class, a shifted second copy of a third of them, the rest random boxes), scores
them, then writes the reports twice with ``eval.report.write_reports``: without the analysis
and with it. "added" is the difference, i.e. what `rcnn eval` spends on the analysis, its
galleries, plots and tables; "report MB" is the report folder with the analysis.

Cases (issue 23's targets): ``realistic`` 63 images / ~600 objects of 7 classes at 1024 x 768,
100 detections an image, voc10 plus coco (aquarium's metrics): added <= 10 s; ``large`` 20,000
images of 200 classes at 500 x 375, 50 detections an image (1,000,000), ilsvrc: added <= 60 s
and the report folder < 50 MB.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from detector.data.datasets import Dataset, ImageRecord
from eval.analysis import AnalysisInput, AnalysisOptions
from eval.detections import ImageDetections
from eval.metrics import score
from eval.report import write_reports

#: case -> (images, classes, (width, height), objects per image (mean), detections per image,
#:          metrics, target seconds added, target report MB)
CASES = {
    "realistic": (63, 7, (1024, 768), 9.5, 100, ("voc10", "coco"), 10.0, None),
    "large": (20000, 200, (500, 375), 2.5, 50, ("ilsvrc",), 60.0, 50.0),
}


def _boxes(rng: np.random.Generator, n: int, size: tuple[int, int]) -> np.ndarray:
    """n random xyxy boxes [n, 4] float32 inside a `size` image, 8 px to half the image a side."""
    wh = rng.uniform(8, np.array(size) / 2, size=(n, 2))
    xy = rng.uniform(0, 1, size=(n, 2)) * (np.array(size) - wh)
    return np.concatenate([xy, xy + wh], axis=1).astype(np.float32)


def _image(rng: np.random.Generator, size: tuple[int, int], boxes: np.ndarray) -> Image.Image:
    """A smooth colour field with pixel noise and one filled shape per box."""
    width, height = size
    field = Image.fromarray(rng.integers(30, 220, (6, 8, 3), dtype=np.uint8)).resize((width, height), Image.BILINEAR)
    pixels = np.asarray(field, dtype=np.int16) + rng.normal(0, 10, (height, width, 3)).astype(np.int16)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for box in boxes:
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([float(v) for v in box], fill=colour)
    return image


def make_split(folder: Path, images: int, classes: int, size: tuple[int, int], objects: float) -> Dataset:
    """The case's split, its images written into `folder` unless they are there already."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(images):
        n = int(rng.poisson(objects - 1)) + 1
        boxes, labels = _boxes(rng, n, size), rng.integers(0, classes, n)
        path = folder / f"{i:06d}.jpg"
        if not path.is_file():
            _image(np.random.default_rng(i), size, boxes).save(path, quality=90)
        records.append(ImageRecord(f"{i:06d}", path, size[0], size[1], boxes, labels, np.zeros(n, bool)))
    names = [f"class{c:03d}" for c in range(classes)]
    return Dataset("bench/test", names, names, records)


def make_detections(rng: np.random.Generator, record: ImageRecord, classes: int, count: int,
                    size: tuple[int, int]) -> ImageDetections:
    """`count` detections of one image (see the module docstring)."""
    gt = record.boxes
    jitter = np.sort((gt + rng.normal(0, 0.08, gt.shape) * (gt[:, 2:3] - gt[:, 0:1])).reshape(-1, 2, 2), 1).reshape(-1, 4)
    second = gt[: max(1, len(gt) // 3)] + np.array([0.35, 0, 0.35, 0]) * (gt[: max(1, len(gt) // 3), 2:3]
                                                                          - gt[: max(1, len(gt) // 3), 0:1])
    rest = max(0, count - len(jitter) - len(second))
    boxes = np.concatenate([jitter, second, _boxes(rng, rest, size)])[:count]
    labels = np.concatenate([np.where(rng.random(len(gt)) < 0.85, record.labels, rng.integers(0, classes, len(gt))),
                             record.labels[: len(second)], rng.integers(0, classes, rest)])[:count]
    scores = np.concatenate([rng.uniform(0.3, 1.0, len(gt)), rng.uniform(0.2, 0.9, len(second)),
                             rng.uniform(0.0, 0.7, rest)])[:count]
    return ImageDetections(boxes, scores, labels)


def _megabytes(folder: Path) -> tuple[float, int]:
    files = [p for p in folder.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 1e6, len(files)


def run_case(name: str, cache: Path) -> dict:
    """Time one case; returns its row of the table."""
    images, classes, size, objects, per_image, metrics, target_s, target_mb = CASES[name]
    start = time.perf_counter()
    dataset = make_split(cache / name, images, classes, size, objects)
    rng = np.random.default_rng(1)
    dets = {r.image_id: make_detections(rng, r, classes, per_image, size) for r in dataset.records}
    setup = time.perf_counter() - start
    start = time.perf_counter()
    results = [score(dets, dataset, metric) for metric in metrics]
    scoring = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        write_reports(Path(out) / "plain", results, dataset.name, {}, {})
        plain = time.perf_counter() - start
        start = time.perf_counter()
        write_reports(Path(out) / "full", results, dataset.name, {}, {},
                      AnalysisInput(dets, dataset, AnalysisOptions()))
        full = time.perf_counter() - start
        timings = [json.loads(p.read_text())["timing"] for p in (Path(out) / "full").rglob("metrics.json")]
        timing = {key: sum(t.get(key, 0.0) for t in timings) for key in ("error analysis", "gallery")}
        megabytes, files = _megabytes(Path(out) / "full")
        plain_mb, _ = _megabytes(Path(out) / "plain")
        gallery_mb, pictures = _megabytes(Path(out) / "full" / "gallery")
    return {"case": name, "metrics": "+".join(metrics), "images": images, "classes": classes,
            "objects": int(sum(len(r.boxes) for r in dataset.records)), "detections": sum(len(d) for d in dets.values()),
            "setup_s": setup, "score_s": scoring, "plain_report_s": plain, "full_report_s": full,
            "added_s": full - plain, "analysis_s": timing.get("error analysis", 0.0), "gallery_s": timing.get("gallery", 0.0),
            "report_mb": megabytes, "plain_mb": plain_mb, "files": files, "gallery_mb": gallery_mb, "pictures": pictures // 2,
            "target_s": target_s, "target_mb": target_mb,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def markdown(rows: list[dict]) -> str:
    """The results as a Markdown table."""
    lines = ["| case | images x classes | objects | detections | scoring s | report s (plain) | added s "
             "(analysis / gallery) | target | report MB (plain; gallery, pictures) | target | peak RSS MiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        target_mb = f"< {r['target_mb']:.0f} MB" if r["target_mb"] else "-"
        lines.append(
            f"| {r['case']} ({r['metrics']}) | {r['images']:,} x {r['classes']} | {r['objects']:,} | {r['detections']:,} | "
            f"{r['score_s']:.2f} | {r['plain_report_s']:.2f} | {r['added_s']:.2f} ({r['analysis_s']:.2f} / "
            f"{r['gallery_s']:.2f}) | <= {r['target_s']:.0f} s | {r['report_mb']:.1f} ({r['plain_mb']:.1f}; {r['gallery_mb']:.1f}, "
            f"{r['pictures']}) | {target_mb} | {r['peak_rss_mib']:.0f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", choices=sorted(CASES), help="run one case in this process (JSON line)")
    parser.add_argument("--cases", nargs="+", default=["realistic", "large"], choices=sorted(CASES))
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "bench_analysis"),
                        help="where the synthetic images are written once and reused")
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, Path(args.cache))))
        return 0
    rows = []
    for name in args.cases:
        out = subprocess.run([sys.executable, __file__, "--case", name, "--cache", args.cache],
                             check=True, capture_output=True, text=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
