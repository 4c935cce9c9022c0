"""Run a whole experiment: proposals -> fine-tuning (+ SVMs) -> detection -> evaluation -> report.

Every stage is skipped when its outputs are complete and were made from the same inputs and
settings (content-keyed manifests in <run dir>/stages/); a killed run resumes where it stopped,
training from its last checkpoint. Changing a setting re-runs the stages it affects and those
after them. With `ensemble: [a, b, ...]` in the config (member configs or run folders) the members
are trained (or reused) in their own run folders, and each member and the fused model are scored.

Across processes and machines: `torchrun ... -m detector run --config C` runs every stage with the
images split over the ranks; where machines cannot reach each other, run `--stages proposals
detect --shard i/n` on each (shared run folder or copied caches), then once without --shard.

examples:
  rcnn run --config animals_voc
  rcnn run --config tiny --set data.root=data/tiny --workdir /tmp/tiny --stages proposals train
  rcnn run --config voc2007 --set "eval.splits=[trainval,test]"
"""
from __future__ import annotations

import argparse
import json

from detector.config import Config, apply_overrides


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from detector.common.workers import default_workers
    from detector.experiment.pipeline import STAGES

    parser.add_argument("--workdir", default=None, metavar="DIR",
                        help="run folder (default: output_dir of the config)")
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES, metavar="STAGE",
                        help=f"stages allowed to run, of: {' '.join(STAGES)}; others must be complete")
    parser.add_argument("--shard", default=None, metavar="i/n",
                        help="only shard i (0-based) of n of the proposals and detect stages, then stop")
    parser.add_argument("--workers", type=int, default=default_workers(),
                        help="proposal extraction processes, one core each")


def run(args: argparse.Namespace, config: Config) -> int:
    from detector.common.workers import parse_shard
    from detector.experiment.pipeline import run_experiment

    if args.workdir:
        config = apply_overrides(config, [f"output_dir={args.workdir}"])
    shard = parse_shard(args.shard) if args.shard else (0, 1)
    report = run_experiment(config, tuple(args.stages), shard, args.workers)
    if report is not None:
        print(f"{config.run_dir}: done; report {config.run_dir / 'report.md'}")
        for unit, mean_ap in _maps(config).items():
            print(f"  {unit}: mAP {mean_ap:.4f}")
    else:
        print(f"{config.run_dir}: stages {' '.join(args.stages)} done" + (f" for shard {args.shard}" if args.shard else ""))
    return 0


def _maps(config: Config) -> dict[str, float]:
    return json.loads((config.run_dir / "summary.json").read_text())["mAP"]
