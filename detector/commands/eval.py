"""Detect objects in a split (or read other tools' results) and score them against the ground truth.

Without --detections the model (--weights, else test.weights, else the default model) runs over
the split; detections are cached per image, so an interrupted run resumes, and `--shard i/n`
processes every n-th image only (run the shards anywhere, then once without --shard to merge).

--detections reads this project's .npz/.json, a COCO results JSON, a folder or glob of PASCAL VOC
devkit comp4_det_<split>_<class>.txt files, an ILSVRC DET submission file or an ultralytics
prediction folder (labels/<image>.txt with confidences); the format is detected (--format forces
it). --save-format writes the split's detections in those formats into the report folder.

The metric is the one the dataset's benchmark uses (eval.metric auto: VOC -> voc07, ILSVRC DET ->
ilsvrc, COCO -> coco) unless --metric says otherwise. Writes report.md, report.html, metrics.json,
plots and the resolved config.yaml into --out (default: <run dir>/eval/<split>), and the same
for each of eval.extra_metrics into --out/<metric>/ (e.g. coco beside voc10: AP by object size).
Each report has the error analysis (eval.analysis: false turns it off): the AP each error type
costs (TIDE), the types of the top-ranked false positives (Hoiem) and, in report.html, galleries
of each class's worst false positives and misses (--out/gallery/).

examples:
  rcnn eval --config animals_voc --weights runs/animals_voc/model_final.pt
  rcnn eval --config voc2007 --split test --detections runs/voc2007/detections_test.npz
  rcnn eval --config voc2007 --detections results/VOC2007/Main --save-format coco
  rcnn eval --config coco --split val2017 --detections runs/detect/predict --format yolo
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from detector.common.distributed import DistContext, process_group, refuse_shard_under_torchrun
from detector.config import Config, save_config
from detector.data.datasets import Dataset, load_dataset
from eval.analysis import AnalysisInput, AnalysisOptions
from eval.detections import Detections, save_detections, validate_detections
from eval.metrics import METRICS, resolve_metrics, score
from eval.report import write_reports
from eval.result_formats import READ_FORMATS, SAVE_FORMATS, check_formats, read_results, save_results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--split", default=None, help="split to score (default: data.test_split)")
    parser.add_argument("--detections", default=None, metavar="PATH",
                        help="results file, folder or quoted glob to score instead of running the model")
    parser.add_argument("--format", default="auto", choices=("auto",) + READ_FORMATS,
                        help="format of --detections: rcnn (.npz/.json of this project), coco, voc, ilsvrc, yolo")
    parser.add_argument("--save-format", nargs="+", default=None, choices=SAVE_FORMATS, metavar="FORMAT",
                        help=f"also write the detections into --out as {' / '.join(SAVE_FORMATS)} "
                             "(default: eval.save_formats)")
    parser.add_argument("--metric", default=None, choices=("auto",) + METRICS,
                        help="override eval.metric (default: the config's, auto = the dataset's own)")
    parser.add_argument("--out", default=None, metavar="DIR", help="report folder (default: <run dir>/eval/<split>)")
    parser.add_argument("--weights", nargs="+", default=[], help="checkpoint(s) to run; several = ensemble")
    parser.add_argument("--shard", default=None, metavar="i/n",
                        help="only detect shard i (0-based) of n and stop; merge by running without --shard")


def obtain_detections(args: argparse.Namespace, config: Config, dataset: Dataset,
                      context: DistContext) -> Detections | None:
    """The detections to score: those of --detections (checked against this split and class
    list), or the model run over the split (None when only a shard was processed, and on
    torchrun ranks > 0, which detect their share for rank 0)."""
    if args.detections:
        return read_results(args.detections, dataset, args.format) if context.is_main else None
    from detector.common.workers import parse_shard
    from detector.inference.detector import Detector, resolve_weights
    from detector.inference.split_detection import detect_split, detection_key
    from proposals.cache import default_cache_dir

    weights = resolve_weights(args.weights or config.test.weights)
    detector = Detector.from_weights(weights, config)
    cache = config.run_dir / "detections" / detection_key(detector, weights)
    index, count = parse_shard(args.shard) if args.shard else (0, 1)
    refuse_shard_under_torchrun(count > 1)
    dets = detect_split(detector, dataset, cache, default_cache_dir(config), index, count, context)
    if dets is None:
        return None
    if count > 1:
        print(f"shard {index}/{count}: {len(dets)} images detected into {cache}; "
              "run again without --shard to merge and evaluate")
        return None
    save_detections(config.run_dir / f"detections_{dataset.name.split('/')[-1]}.npz", dets, dataset.classes, dataset.name)
    return dets


def run(args: argparse.Namespace, config: Config) -> int:
    split = args.split or config.data.test_split
    timing = {}
    start = time.perf_counter()
    dataset = load_dataset(config.data, split)
    timing["read ground truth"] = time.perf_counter() - start
    metrics = resolve_metrics(args.metric or config.eval.metric, config.eval.extra_metrics, config.data.format)
    formats = config.eval.save_formats if args.save_format is None else args.save_format
    check_formats(formats, "eval.save_formats")

    start = time.perf_counter()
    with process_group() as context:
        dets = obtain_detections(args, config, dataset, context)
    if dets is None:
        return 0
    validate_detections(dets, dataset, where=str(args.detections or "detections"))
    timing["obtain detections"] = time.perf_counter() - start

    start = time.perf_counter()
    results = [score(dets, dataset, metric, progress=True) for metric in metrics]
    timing["evaluate"] = time.perf_counter() - start

    out = Path(args.out) if args.out else config.run_dir / "eval" / split
    save_config(config, out / "config.yaml")
    settings = {
        "config": config.name, "split": split, "images": len(dataset.records),
        "images with detections": len(dets), "detections": sum(len(d) for d in dets.values()),
        "detections file": str(args.detections),
    }
    analysis = AnalysisInput(dets, dataset, AnalysisOptions.from_config(config.eval))
    report = write_reports(out, results, dataset.name, settings, timing, analysis)
    for index, result in enumerate(results):
        where = report.parent / result.metric / "report.md" if index else report
        print(f"{dataset.name}: mAP ({result.metric}) {result.mAP:.4f} over {len(dataset.records)} images; report {where}")
    for format in formats:
        files = save_results(out, format, dets, dataset)
        print(f"{format} results: {os.path.commonpath(files) if files else out} ({len(files)} file(s))")
    return 0
