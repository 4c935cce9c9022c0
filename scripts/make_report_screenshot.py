#!/usr/bin/env python3
"""Re-create docs/error_analysis_report.png: report.html with the error analysis, in a real browser.

Draws the project's own synthetic test images (tests/synthetic.py: squares and discs on noise;
nothing from any data set), makes detections with every kind of error (wrong class, shifted
boxes, duplicates, random boxes, misses), writes the report with ``eval.report.write_reports``
and has headless Chromium photograph the page (``apt-get install chromium`` if absent)::

    python scripts/make_report_screenshot.py [--out docs/error_analysis_report.png] [--keep DIR]
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from detector.data.datasets import DatasetConfig, load_dataset  # noqa: E402
from eval.analysis import AnalysisInput, AnalysisOptions  # noqa: E402
from eval.detections import ImageDetections  # noqa: E402
from eval.metrics import score  # noqa: E402
from eval.report import write_reports  # noqa: E402
from tests.synthetic import make_voc_dataset  # noqa: E402

WIDTH = 1200  #: browser window width, px


def detections(dataset, rng: np.random.Generator) -> dict[str, ImageDetections]:
    """Per image: each object found (a fifth with the wrong class, a tenth missed), a shifted
    copy of some, and four random boxes."""
    dets = {}
    for r in dataset.records:
        found = rng.random(len(r.boxes)) > 0.1
        boxes, labels = r.boxes[found], r.labels[found]
        jitter = np.sort((boxes + rng.normal(0, 3, boxes.shape)).reshape(-1, 2, 2), 1).reshape(-1, 4)
        shifted = boxes + np.array([0.45, 0.1, 0.45, 0.1]) * (boxes[:, 2:3] - boxes[:, 0:1])
        xy, wh = rng.uniform(0, 200, (4, 2)), rng.uniform(15, 80, (4, 2))
        dets[r.image_id] = ImageDetections(
            np.concatenate([jitter, shifted, np.concatenate([xy, xy + wh], 1)]).astype(np.float32),
            np.concatenate([rng.uniform(0.5, 1, len(boxes)), rng.uniform(0.3, 0.9, len(boxes)), rng.uniform(0, 0.8, 4)]),
            np.concatenate([np.where(rng.random(len(boxes)) < 0.8, labels, 1 - labels), labels, rng.integers(0, 2, 4)]))
    return dets


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(REPO / "docs" / "error_analysis_report.png"))
    parser.add_argument("--keep", default=None, metavar="DIR", help="also keep the report folder here")
    parser.add_argument("--height", type=int, default=4200, help="page height photographed, px")
    args = parser.parse_args()
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        print("no chromium on PATH (apt-get install -y chromium)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as work:
        root = make_voc_dataset(Path(work) / "voc", {"test": 40}, size=(320, 240), max_objects=3, seed=7)
        dataset = load_dataset(DatasetConfig(format="voc", root=str(root), classes=["square", "disc"]), "test")
        dets = detections(dataset, np.random.default_rng(0))
        results = [score(dets, dataset, "voc10")]
        report = Path(args.keep or Path(work) / "report")
        options = AnalysisOptions(similar_classes={"shapes": ["square", "disc"]}, gallery_per_class=8)
        write_reports(report, results, "synthetic shapes (tests/synthetic.py)", {"split": "test"}, {},
                      AnalysisInput(dets, dataset, options))
        shot = Path(work) / "shot.png"
        subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        f"--window-size={WIDTH},{args.height}", f"--screenshot={shot}",
                        (report / "report.html").resolve().as_uri()], check=True, capture_output=True)
        with Image.open(shot) as image:
            page = image.convert("RGB")
        rows = np.flatnonzero((np.asarray(page) < 250).any(axis=(1, 2)))  # drop the blank bottom
        page = page.crop((0, 0, page.width, min(page.height, int(rows[-1]) + 20 if rows.size else page.height)))
        page.quantize(colors=128).save(args.out, optimize=True)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
