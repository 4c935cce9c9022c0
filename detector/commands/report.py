"""Rebuild the evaluation report of a run, or compare two runs' per-class AP.

RUN_DIR is a report folder (with metrics.json, as `rcnn eval` writes) or a run folder holding a
single eval/<split>/. With RUN_B, prints and writes the per-class AP deltas (B - A), and the
error breakdown's (the AP each error type costs) when both reports have one.

examples:
  rcnn report runs/voc2007/eval/test
  rcnn report runs/baseline runs/ensemble
"""
from __future__ import annotations

import argparse

from eval.report import compare_reports, find_report, load_analysis, load_report, write_report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="report or run folder")
    parser.add_argument("run_b", metavar="RUN_B", nargs="?", default=None, help="second run: compare A with B")
    parser.add_argument("--out", default=None, metavar="FILE",
                        help="where the comparison goes (default: RUN_B's report folder / comparison.md)")


def run(args: argparse.Namespace, config: None) -> int:
    if args.run_b:
        print(compare_reports(args.run_dir, args.run_b, args.out), end="")
        return 0
    folder = find_report(args.run_dir)
    report = write_report(folder, *load_report(folder), analysis=load_analysis(folder))
    print(f"wrote {report} and {folder / 'report.html'}")
    return 0
