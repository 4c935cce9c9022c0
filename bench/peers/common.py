"""What every peer benchmark shares: the config's splits through our own readers, a wall-clock
training budget, and predictions written as COCO results that ``rcnn eval --detections`` scores
with our evaluator, so every row of the peer table is measured the same way."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from detector.common.errors import UserError
from detector.config import Config, load_config
from detector.data.datasets import Dataset, load_dataset
from eval.detections import Detections
from eval.result_formats import save_results


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="aquarium", help="config whose data section names the dataset")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, as for rcnn")
    parser.add_argument("--budget-min", type=float, required=True, help="training wall-clock budget in minutes")
    parser.add_argument("--out", required=True, help="folder for checkpoints, logs and results")
    parser.add_argument("--splits", nargs="+", default=None,
                        help="splits to predict (default: val if the data has one, and data.test_split)")


def config_of(args: argparse.Namespace) -> Config:
    return load_config(args.config, args.overrides)


def predicted_splits(args: argparse.Namespace, config: Config) -> list[str]:
    """--splits, or val (when the dataset has it) and the test split."""
    if args.splits:
        return args.splits
    splits = [config.data.test_split]
    try:
        load_dataset(config.data, "val")
        splits.insert(0, "val")
    except UserError:  # no val split: test only
        pass
    return list(dict.fromkeys(splits))


class Budget:
    """Wall-clock training budget that survives a resume: seconds already spent are carried over."""

    def __init__(self, minutes: float, spent: float = 0.0) -> None:
        self.seconds, self.spent, self.start = minutes * 60.0, spent, time.monotonic()

    @property
    def used(self) -> float:
        return self.spent + time.monotonic() - self.start

    def over(self) -> bool:
        return self.used >= self.seconds


def write_results(out: Path, split: str, dataset: Dataset, dets: Detections) -> Path:
    """Save `dets` of `dataset` as COCO results in <out>/<split>/ and print how to score them."""
    (path,) = save_results(out / split, "coco", dets, dataset)
    print(f"{split}: {sum(len(d) for d in dets.values())} detections on {len(dets)} images -> {path}\n"
          f"  score: rcnn eval --config <config> --split {split} --detections {path} --format coco")
    return path
