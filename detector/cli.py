"""Command-line entry points: ``rcnn <command>`` and ``detect``.

Each command lives in its own module exposing ``add_arguments(parser)`` and ``run(args, config)``
(``config`` is the resolved :class:`detector.config.Config`, or None for commands that take no
config). Errors a user can fix print one line and exit with status 2; ``--debug`` shows the
traceback instead.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import textwrap

from configs import shipped_configs
from detector.common.errors import UserError

#: command name -> (module, takes a --config, one-line help)
COMMANDS: dict[str, tuple[str, bool, str]] = {
    "data": ("detector.commands.data", True, "read a dataset split and print its statistics"),
    "config": ("detector.commands.config", True, "print the resolved config (file + --set overrides)"),
    "proposals": ("detector.commands.proposals", True, "extract selective-search proposals for a split; --report for recall"),
    "eval": ("detector.commands.eval", True, "score detections of a split (VOC / ILSVRC / COCO mAP) and write the report"),
    "report": ("detector.commands.report", False, "rebuild an evaluation report, or compare two runs' per-class AP"),
    "pretrain": ("detector.commands.pretrain", True, "pre-train GoogLeNet as an image classifier on an ImageFolder"),
    "classify": ("detector.commands.classify", True, "classify images, or score pre-trained weights with 1 / 10 / 144 crops"),
    "train": ("detector.commands.train", True, "fine-tune the GoogLeNet region classifier (R-CNN)"),
    "detect": ("detector.commands.detect", True, "detect objects in images (same as the `detect` command)"),
    "bench": ("detector.commands.bench", True, "measure speed and memory: proposals, classifier precisions, detection, training"),
    "split-val": ("detector.commands.split_val", True, "split ILSVRC DET val into class-balanced val1 / val2 (R-CNN)"),
    "run": ("detector.commands.run", True, "run a whole experiment: proposals, training, detection, evaluation, report"),
}

EPILOG = textwrap.dedent(
    """\
    examples:
      rcnn data --config animals_voc --split train
      rcnn config --config voc2007 --set train.lr=0.0005
    configs are YAML files or shipped names (voc2007, ilsvrc_det, coco, animals_voc, imagenette, tiny, ...);
    `rcnn COMMAND --help` tells each command's options and defaults.
    """
)


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """--config and --set, shared by every command that runs from a config."""
    parser.add_argument(
        "--config", "-c", default=None,
        help=f"YAML config file or shipped name ({', '.join(shipped_configs())})",
    )
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.lr=0.001 (repeatable, type-checked)",
    )


def chosen_command(argv: list[str]) -> str | None:
    """The command word of an ``rcnn`` command line (the first known name), if any."""
    return next((word for word in argv if word in COMMANDS), None)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``rcnn`` parser. Only `command`'s module is imported and given its options (the
    others are listed by name and help), so a command starts without loading the rest."""
    parser = argparse.ArgumentParser(
        prog="rcnn",
        description="R-CNN object detection with a GoogLeNet region classifier (ILSVRC 2014 style).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, takes_config, help_text) in COMMANDS.items():
        if name != command:
            subparsers.add_parser(name, help=help_text)
            continue
        module = importlib.import_module(module_name)
        sub = subparsers.add_parser(
            name, help=help_text, description=module.__doc__,
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        )
        sub.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
        if takes_config:
            add_config_arguments(sub)
        module.add_arguments(sub)
        sub.set_defaults(module=module, takes_config=takes_config)
    return parser


def run_command(args: argparse.Namespace) -> int:
    """Load the config (when the command takes one) and run the command; returns the exit code."""
    config = None
    if args.takes_config:
        from detector.config import load_config

        config = load_config(args.config, args.overrides)
    return int(args.module.run(args, config) or 0)


def guarded(function, args: argparse.Namespace) -> int:
    """Run `function(args)`, turning user errors and Ctrl-C into one line and an exit code."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return function(args)
    except UserError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def quiet_collective_errors() -> None:
    """Under torchrun, a failed collective is reported in our one line: keep gloo's C++ error log
    out of it (torch reads $TORCH_CPP_LOG_LEVEL when imported, so call this first)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "FATAL")


def detect_main(argv: list[str] | None = None) -> int:
    """``detect``: the single-image command, ``rcnn detect`` without the subcommand word."""
    quiet_collective_errors()
    module = importlib.import_module("detector.commands.detect")
    parser = argparse.ArgumentParser(
        prog="detect", description=module.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    add_config_arguments(parser)
    module.add_arguments(parser)
    parser.set_defaults(module=module, takes_config=True)
    return guarded(run_command, parser.parse_args(argv))


def main(argv: list[str] | None = None) -> int:
    """``rcnn``: the experiment command with subcommands."""
    quiet_collective_errors()
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(chosen_command(argv)).parse_args(argv)
    return guarded(run_command, args)


if __name__ == "__main__":
    sys.exit(main())
