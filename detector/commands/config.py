"""Print the resolved config: defaults <- YAML file (and its base) <- --set overrides.

example: rcnn config --config voc2007 --set train.lr=0.0005
"""
from __future__ import annotations

import argparse

import yaml

from detector.config import Config, config_to_dict, save_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=None, help="also write it to this YAML file")


def run(args: argparse.Namespace, config: Config) -> int:
    print(yaml.safe_dump(config_to_dict(config), sort_keys=False), end="")
    if args.out:
        save_config(config, args.out)
    return 0
