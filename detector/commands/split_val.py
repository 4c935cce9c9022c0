"""Split ILSVRC DET val into R-CNN's class-balanced halves val1 (fine-tuning) and val2 (evaluation).

Scores --trials random halvings and keeps the one whose worst class is most evenly split
(Girshick et al. 2014, sec. 4.1); writes ImageSets/DET/val1.txt and val2.txt beside val.txt.

example: rcnn split-val --config ilsvrc_det --trials 1000
"""
from __future__ import annotations

import argparse

from detector.config import Config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trials", type=int, default=1000, help="random candidate splits to score")
    parser.add_argument("--seed", type=int, default=0, help="seed of the candidate splits")
    parser.add_argument("--force", action="store_true", help="replace existing val1/val2 files")


def run(args: argparse.Namespace, config: Config) -> int:
    from detector.training.ilsvrc import split_val

    result = split_val(config, trials=args.trials, seed=args.seed, force=args.force)
    print(f"val1: {int(result.in_first.sum())} images, val2: {int((~result.in_first).sum())} images; "
          f"relative class imbalance max {result.max_imbalance:.3f}, median {result.median_imbalance:.3f}")
    return 0
