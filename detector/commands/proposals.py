"""Extract selective-search proposals for a dataset split into the cache, or report their recall.

Extraction runs a process pool (one core per worker), skips images already cached (so an
interrupted run resumes) and can be split across machines or ranks with --shard i/n: shard i
(0-based) takes every n-th image starting at image i, and the n shards together cover the split
exactly once; they can share one cache folder or have theirs merged by copying. A failing image
is reported and the others are still stored; the exit status is then 2.

--report measures each method in --methods (per method: boxes/image, recall@0.5/0.7, MABO,
average recall over IoU 0.5..1, s/image; and objects, recall@0.5/0.7 and AR for COCO's small /
medium / large objects: box area < 32², < 96², larger, in original-image pixels), prints them as
Markdown tables and writes recall.json, recall.png and config.yaml to --out.

examples:
  rcnn proposals --config animals_voc --split test --workers 2
  rcnn proposals --config ilsvrc_det --split val2 --shard 0/8
  rcnn proposals --config animals_voc --split test --report --methods opencv-fast,googlenet --limit 30
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import yaml
from tqdm.contrib.logging import logging_redirect_tqdm

from detector.common.atomic import write_text
from detector.common.distributed import DistContext, process_group, refuse_shard_under_torchrun
from detector.common.errors import UserError
from detector.common.workers import default_workers, parse_shard, shard
from detector.data.datasets import Dataset, ImageRecord, load_dataset
from proposals.cache import default_cache_dir
from proposals.config import BACKEND_PARAMS, PRESETS, validate
from proposals.extract import ImageResult, extract_everywhere
from proposals.report import markdown_table, method_config, size_table, summarize, write_report


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--split", default=None, help="split name; data.train_split when not given")
    parser.add_argument("--workers", type=_positive_int, default=default_workers(),
                        help="worker processes, one core each")
    parser.add_argument("--shard", default=None, metavar="I/N",
                        help="only shard I (0-based) of N: every N-th image starting at image I")
    parser.add_argument("--limit", type=_positive_int, default=None, metavar="N",
                        help="only the first N images (after sharding)")
    parser.add_argument("--method", choices=tuple(BACKEND_PARAMS), default=None,
                        help="backend; proposals.method when not given")
    parser.add_argument("--preset", choices=tuple(PRESETS), default=None,
                        help="rcnn (R-CNN fast mode) or googlenet (2x superpixels); proposals.preset when not given")
    parser.add_argument("--report", action="store_true", help="measure recall instead of only extracting")
    parser.add_argument("--methods", default=None, metavar="A,B",
                        help="with --report: methods, presets or METHOD:PRESET to compare "
                             "(the configured one when not given), e.g. opencv-fast,googlenet")
    parser.add_argument("--out", default=None,
                        help="with --report: output folder; <run_dir>/proposal_report/<split> when not given")


def _selected_records(dataset: Dataset, args: argparse.Namespace) -> list[ImageRecord]:
    records = dataset.records
    if args.shard:
        records = shard(records, *parse_shard(args.shard))
    return records[: args.limit] if args.limit else records


def _save_config(config: Any, folder: Path) -> None:
    write_text(folder / "config.yaml", yaml.safe_dump(dataclasses.asdict(config), sort_keys=False))


def _raise_on_failures(results: list[ImageResult], where: Path) -> None:
    failed = [r for r in results if r.error]
    if failed:
        raise UserError(f"{len(failed)} of {len(results)} images failed (first: {failed[0].error}); "
                        f"the others are in {where}")


def _extract(args: argparse.Namespace, config: Any, dataset: Dataset, records: list[ImageRecord],
             context: DistContext) -> int:
    cache_dir = default_cache_dir(config)
    start = time.perf_counter()
    results = extract_everywhere(records, config.proposals, cache_dir, context, workers=args.workers)
    wall = time.perf_counter() - start
    if not context.is_main:
        return 0
    done = [r for r in results if not r.error]
    computed = [r for r in done if not r.cached]
    summary = {
        "dataset": dataset.name, "shard": args.shard or "0/1", "images": len(results),
        "computed": len(computed), "cached": len(done) - len(computed), "failed": len(results) - len(done),
        "boxes_per_image": sum(r.n_boxes for r in done) / max(len(done), 1),
        "wall_seconds": wall, "failures": [r.error for r in results if r.error],
    }
    run_name = args.split + (f"-shard{args.shard.replace('/', 'of')}" if args.shard else "")
    out_dir = cache_dir / "runs" / run_name
    write_text(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    _save_config(config, out_dir)
    print(f"{dataset.name}: {summary['images']} images, {summary['computed']} computed, "
          f"{summary['cached']} already cached, {summary['failed']} failed; "
          f"{summary['boxes_per_image']:.0f} boxes/image; {wall:.1f} s with {args.workers} worker(s); "
          f"cache {cache_dir}")
    _raise_on_failures(results, cache_dir)
    return 0


def _report(args: argparse.Namespace, config: Any, dataset: Dataset, records: list[ImageRecord],
            context: DistContext) -> int:
    specs = [s.strip() for s in (args.methods or "").split(",") if s.strip()]
    specs = specs or [f"{config.proposals.method}:{config.proposals.preset}"]
    summaries, all_results = [], []
    for spec in specs:
        method = method_config(spec, config.proposals)
        results = extract_everywhere(records, method, default_cache_dir(config), context, workers=args.workers,
                                     keep_boxes=True, description=spec)
        summaries.append(summarize(spec, method, records, results))
        all_results += results
    if not context.is_main:
        return 0
    out_dir = Path(args.out) if args.out else config.run_dir / "proposal_report" / args.split
    write_report(summaries, out_dir, dataset.name)
    _save_config(config, out_dir)
    print(f"{dataset.name}: {len(records)} images, {summaries[0].objects} objects\n")
    print(markdown_table(summaries))
    print("\nby object size (box area in original-image pixels: small < 32², medium < 96², large):\n")
    print(size_table(summaries))
    print(f"\nwrote {out_dir / 'recall.json'} and {out_dir / 'recall.png'}")
    _raise_on_failures(all_results, out_dir)
    return 0


def run(args: argparse.Namespace, config: Any) -> int:
    """Extract (or with --report, measure) proposals for one split of `config.data`."""
    overrides = {k: v for k, v in (("method", args.method), ("preset", args.preset)) if v}
    config = dataclasses.replace(config, proposals=dataclasses.replace(config.proposals, **overrides))
    validate(config.proposals)
    if args.methods and not args.report:
        raise UserError("--methods needs --report (extraction uses --method/--preset)")
    args.split = args.split or config.data.train_split
    dataset = load_dataset(config.data, args.split)
    records = _selected_records(dataset, args)
    if not records:
        raise UserError(f"{dataset.name}: no images selected (shard {args.shard}, limit {args.limit})")
    refuse_shard_under_torchrun(bool(args.shard))
    with logging_redirect_tqdm(), process_group() as context:
        return (_report if args.report else _extract)(args, config, dataset, records, context)
