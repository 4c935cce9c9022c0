"""Read a dataset split and print images, objects per class and the time it took to parse.

example: rcnn data --config animals_voc --split test
"""
from __future__ import annotations

import argparse
import time

from detector.config import Config
from eval.datasets import load_dataset


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--split", default=None, help="split name (default: data.train_split)")


def run(args: argparse.Namespace, config: Config) -> int:
    split = args.split or config.data.train_split
    start = time.perf_counter()
    dataset = load_dataset(config.data, split)
    seconds = time.perf_counter() - start
    counts = dataset.object_counts()
    ignored = sum(int(r.ignore.sum()) for r in dataset.records)
    empty = sum(1 for r in dataset.records if len(r.boxes) == 0)
    print(f"{dataset.name}: {len(dataset.records)} images, {sum(counts.values())} objects "
          f"({ignored} ignored), {empty} images without objects; parsed in {seconds:.3f} s")
    width = max(len(name) for name in dataset.display_names)
    for name, count in zip(dataset.display_names, counts.values()):
        print(f"  {name:<{width}}  {count}")
    return 0
