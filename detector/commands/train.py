"""Fine-tune the GoogLeNet region classifier R-CNN style on the config's training split.

Writes <output_dir>/checkpoints/last.pt (resumable), model_final.pt, train_log.csv,
train_curve.png and config.yaml. Ctrl-C saves a checkpoint first; --resume continues exactly.
Under `torchrun --nproc_per_node N rcnn train ...` it trains with DDP (gloo on CPU, nccl on GPU).

example: rcnn train --config animals_voc --init random --set train.iterations=200
"""
from __future__ import annotations

import argparse

from detector.config import Config, apply_overrides


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--resume", action="store_true", help="continue from <output_dir>/checkpoints/last.pt")
    parser.add_argument("--init", default=None,
                        help="initial weights: imagenet (torchvision download), random, or a .pth file "
                             "(default: model.init of the config)")


def run(args: argparse.Namespace, config: Config) -> int:
    from detector.training.finetune import train

    if args.init is not None:
        config = apply_overrides(config, [f"model.init={args.init}"])
    final = train(config, resume=args.resume)
    print(f"trained model: {final}")
    return 0
