"""Pre-train GoogLeNet as an image classifier on an ImageFolder (pretrain.root: train/<class>/*,
val/<class>/*): the classification weights that detection fine-tunes from.

Writes <output_dir>/pretrain/: checkpoints/last.pt (resumable), pretrain_log.csv (per-epoch train
loss, val top-1 / top-5 of the raw and EMA weights), pretrain_curve.png, config.yaml, and the
export googlenet.pth (torchvision GoogLeNet state dict, EMA weights) + googlenet.json (classes,
input size, normalisation). Ctrl-C saves a checkpoint first; --resume continues exactly.
Under `torchrun --nproc_per_node N rcnn pretrain ...` it trains with DDP.

examples:
  rcnn pretrain --config imagenette
  rcnn train --config animals_voc --init runs/imagenette/pretrain/googlenet.pth
"""
from __future__ import annotations

import argparse

from detector.config import Config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--resume", action="store_true",
                        help="continue from <output_dir>/pretrain/checkpoints/last.pt")


def run(args: argparse.Namespace, config: Config) -> int:
    from detector.training.pretrain import pretrain

    exported = pretrain(config, resume=args.resume)
    print(f"classification weights: {exported} (metadata: {exported.with_suffix('.json')})")
    return 0
