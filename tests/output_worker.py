"""One of two processes writing into the same output folder at once (tests/test_outputs.py).

``python -m tests.output_worker results FOLDER TAG LOOPS``: writes TAG's detections of a small
split with every --save-format into FOLDER, LOOPS times. ``python -m tests.output_worker fresh
FOLDER TAG LOOPS``: for i < LOOPS makes FOLDER/<i> a fresh folder holding ``tag.txt`` (TAG). Each starts once the file ``go`` beside
FOLDER exists (after writing ``ready-<TAG>`` there), so that the two overlap.
Prints one line per call: ``<i> ok``, or ``<i> refused <message>`` for a UserError; any other
exception ends the process with its traceback and a non-zero status.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from detector.common.atomic import fresh_folder
from detector.common.errors import UserError
from detector.data.datasets import Dataset, ImageRecord
from eval.detections import ImageDetections
from eval.result_formats import SAVE_FORMATS, save_results

IMAGES = ("a", "b", "c", "d")


def split() -> Dataset:
    records = [ImageRecord(name, Path(f"/images/{name}.jpg"), 100, 80, np.zeros((0, 4), np.float32),
                           np.zeros(0, np.int64), np.zeros(0, bool)) for name in IMAGES]
    return Dataset("set/test", ["cat", "dog"], ["cat", "dog"], records)


def detections(tag: int) -> dict[str, ImageDetections]:
    """Different detections per tag: tag 1 has them on images a, b; tag 2 on c, d."""
    images = IMAGES[:2] if tag == 1 else IMAGES[2:]
    return {name: ImageDetections([[10 * tag, 10, 50, 60 + tag]], [0.5 + tag / 10], [tag - 1]) for name in images}


def main(mode: str, folder: Path, tag: int, loops: int) -> None:
    dataset = split()
    start = folder.parent / "go"  # both processes start together: the test creates it once both wait
    (folder.parent / f"ready-{tag}").touch()
    deadline = time.monotonic() + 60
    while not start.exists() and time.monotonic() < deadline:
        time.sleep(0.005)
    for i in range(loops):
        try:
            if mode == "results":
                for format in SAVE_FORMATS:
                    save_results(folder, format, detections(tag), dataset)
            else:
                with fresh_folder(folder / str(i)) as tmp:
                    (tmp / "tag.txt").write_text(str(tag))
            print(f"{i} ok", flush=True)
        except UserError as exc:
            print(f"{i} refused {exc}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
