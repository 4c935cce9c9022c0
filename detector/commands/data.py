"""Read a dataset split and print images, objects per class and the time it took to parse;
`rcnn data download NAME` fetches a public data set (voc2007, voc2012, coco2017-val).

examples:
  rcnn data --config animals_voc --split test
  rcnn data download voc2007
"""
from __future__ import annotations

import argparse
import time

from detector.commands import download
from detector.config import Config
from eval.datasets import load_dataset


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--split", default=None, help="split name (default: data.train_split)")
    actions = parser.add_subparsers(dest="action", metavar="download")
    fetch = actions.add_parser("download", help="download a public data set into the layout the configs read",
                               description=download.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    fetch.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    download.add_arguments(fetch)


def run(args: argparse.Namespace, config: Config) -> int:
    if args.action == "download":
        return download.run(args)
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
