"""Read a dataset split and print images, objects per class and the time it took to parse;
`rcnn data download NAME` fetches a public data set (voc2007, voc2012, coco2017-val);
`rcnn data convert --to coco|voc|yolo OUT` writes the config's splits in another layout.

examples:
  rcnn data --config animals_voc --split test
  rcnn data --config aquarium --split val
  rcnn data download voc2007
  rcnn data --config animals_voc convert --to yolo out/animals-yolo
  rcnn data --config aquarium convert --to coco out/aquarium-coco --split train --split test
"""
from __future__ import annotations

import argparse
import time

from detector.commands import download
from detector.config import Config
from detector.data import convert
from detector.data.datasets import Dataset, load_dataset


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--split", default=None, help="split name (default: data.train_split)")
    actions = parser.add_subparsers(dest="action", metavar="download | convert")
    fetch = actions.add_parser("download", help="download a public data set into the layout the configs read",
                               description=download.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    fetch.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    download.add_arguments(fetch)
    write = actions.add_parser("convert", help="write the config's splits in another layout (coco, voc, yolo)",
                               description=convert.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    write.add_argument("out", help="output folder; must not exist or be empty")
    write.add_argument("--to", required=True, choices=convert.TARGETS, help="layout to write")
    write.add_argument("--split", dest="splits", action="append", default=None, metavar="SPLIT",
                       help="split to convert, repeatable (default: data.train_split and data.test_split)")
    write.add_argument("--copy-images", action="store_true",
                       help="copy the images (default: hard links where the file system allows, else copies)")
    write.add_argument("--config", "-c", default=argparse.SUPPRESS, help="as before `convert`")
    write.add_argument("--set", dest="overrides", action="append", default=argparse.SUPPRESS,
                       metavar="KEY=VALUE", help="as before `convert`")
    write.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks on errors")


def run(args: argparse.Namespace, config: Config) -> int:
    if args.action == "download":
        return download.run(args)
    if args.action == "convert":
        return _convert(args, config)
    split = args.split or config.data.train_split
    start = time.perf_counter()
    dataset = load_dataset(config.data, split)
    seconds = time.perf_counter() - start
    print(f"{_summary(dataset)}; parsed in {seconds:.3f} s")
    counts = dataset.object_counts()
    width = max(len(name) for name in dataset.display_names)
    for name, count in zip(dataset.display_names, counts.values()):
        print(f"  {name:<{width}}  {count}")
    return 0


def _summary(dataset: Dataset) -> str:
    """``name: N images, M objects (K ignored, D empty boxes left out), E images without objects``."""
    objects = sum(len(r.boxes) for r in dataset.records)
    ignored = sum(int(r.ignore.sum()) for r in dataset.records)
    dropped = sum(r.dropped for r in dataset.records)
    empty = sum(1 for r in dataset.records if len(r.boxes) == 0)
    return (f"{dataset.name}: {len(dataset.records)} images, {objects} objects ({ignored} ignored, "
            f"{dropped} empty boxes left out), {empty} images without objects")


def _convert(args: argparse.Namespace, config: Config) -> int:
    splits = args.splits or ([args.split] if args.split else [config.data.train_split, config.data.test_split])
    datasets = {split: load_dataset(config.data, split) for split in dict.fromkeys(splits)}
    out = convert.convert(datasets, args.to, args.out, copy_images=args.copy_images)
    for dataset in datasets.values():
        print(_summary(dataset))
    print(f"wrote {out} ({args.to}); read it with --set data.format={args.to} --set data.root={out}")
    return 0
