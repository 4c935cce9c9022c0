"""Detect objects in images: selective search -> GoogLeNet region scores -> NMS / box voting.

Prints a table (class, score, box) per image; with --out writes each image with labelled boxes
and a JSON file of its detections (and --coco-json a COCO results file for all images;
--save-format coco / voc / ilsvrc / yolo the results files those tools read, into --out).
The table and the drawing show the detections scoring at least --score-threshold (0.25), at most
--max-detections (10) per image; the JSON files, --json and --coco-json keep every detection down
to test.score_threshold (0.05; a lower --score-threshold lowers it), the low scores that mAP needs.
Several --weights make an ensemble (scores averaged; --fusion vote for box voting).
Without --weights: $RCNN_WEIGHTS, then ~/.cache/googlenet-rcnn/default.pt, then torchvision's
ImageNet GoogLeNet with its classes mapped to the ILSVRC DET 200 (or --classes voc) classes.

examples:
  detect examples/chelsea.jpg --weights runs/animals_voc/model_final.pt --out out/
  detect photos/ --weights a.pt b.pt c.pt --fusion vote --flip --coco-json results.json
  detect VOC2007/JPEGImages --weights model.pt --out out/ --save-format voc yolo
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from detector.common.atomic import OutputFolder, atomic_path, check_writable, write_text
from detector.common.distributed import gathered, own_share, process_group
from detector.common.errors import UserError
from detector.config import Config, apply_overrides
from detector.data.coco_json import results_image_ids
from detector.data.datasets import Dataset, ImageRecord
from detector.data.images import IMAGE_SUFFIXES, list_images
from eval.detections import ImageDetections, to_coco_results
from eval.result_formats import SAVE_FORMATS, check_image_ids, check_results_folder, planned_files, save_results

DISPLAY_THRESHOLD = 0.25  #: default --score-threshold (ultralytics' conf)
DETECT_SPLIT = "detect/test"  #: the Dataset.name of the images detected, in --save-format files


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", help="image files and/or folders of images")
    parser.add_argument("--weights", "-w", nargs="+", default=[], help="checkpoint(s); several = ensemble")
    parser.add_argument("--classes", choices=("det200", "voc"), default="det200",
                        help="class set of the ImageNet default model (ignored with --weights)")
    parser.add_argument("--out", "-o", default=None, help="folder for drawn images and per-image JSON")
    parser.add_argument("--json", action="store_true",
                        help="print each image's result file (every detection) as a JSON line instead of a table")
    parser.add_argument("--coco-json", default=None, help="also write all detections as a COCO results file")
    parser.add_argument("--save-format", nargs="+", default=[], choices=SAVE_FORMATS, metavar="FORMAT",
                        help=f"also write all detections into --out as {' / '.join(SAVE_FORMATS)} results "
                             "(split 'test', image ids the file names without suffix)")
    parser.add_argument("--show", action="store_true", help="open each drawn image in the system viewer")
    parser.add_argument("--score-threshold", type=float, default=None,
                        help=f"print and draw detections scoring at least this (default {DISPLAY_THRESHOLD}); "
                             "files keep those down to test.score_threshold (0.05), or to this when given and lower")
    parser.add_argument("--max-detections", type=int, default=10,
                        help="print and draw at most this many per image, best first (default 10)")
    parser.add_argument("--nms-iou", type=float, default=None, help="per-class NMS IoU (default: test.nms_iou, 0.3)")
    parser.add_argument("--fusion", choices=("nms", "vote", "wbf"), default=None, help="default: test.fusion (nms)")
    parser.add_argument("--flip", action="store_true", help="test-time horizontal flip")
    parser.add_argument("--preset", choices=("rcnn", "googlenet"), default=None, help="selective search preset")


def _with_flags(config: Config, args: argparse.Namespace) -> Config:
    given = args.score_threshold
    lower = given if given is not None and given < config.test.score_threshold else None
    flags = {"test.score_threshold": lower, "test.nms_iou": args.nms_iou,
             "test.fusion": args.fusion, "proposals.preset": args.preset, "test.flip": True if args.flip else None}
    return apply_overrides(config, [f"{k}={v}" for k, v in flags.items() if v is not None])


def collect_images(inputs: list[str]) -> list[Path]:
    """Image paths from files and folders, in the given order; a missing path is an error."""
    paths: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = list_images(item)
            if not found:
                raise UserError(f"{item}: folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
            paths.extend(found)
        elif item.exists():
            paths.append(item)
        else:
            raise UserError(f"{item}: no such file or folder")
    return paths


def displayed(result, score_threshold: float, max_detections: int):
    """The DetectionResult `detect` prints and draws: the best `max_detections` scoring >= `score_threshold`."""
    keep = np.flatnonzero(result.scores >= score_threshold)
    keep = keep[np.argsort(-result.scores[keep], kind="stable")][:max_detections]
    return replace(result, boxes=result.boxes[keep], scores=result.scores[keep], labels=result.labels[keep],
                   names=[result.names[i] for i in keep])


def format_table(path: Path, shown, total: int, score_threshold: float, max_detections: int) -> str:
    """The printed table of the `shown` detections, saying how many of `total` are hidden and why."""
    lines = [f"{path}: {len(shown.boxes)} detection(s)"]
    if len(shown.boxes) < total:
        lines[0] += f" shown of {total} (score >= {score_threshold:g}, at most {max_detections})"
    for name, score, box in zip(shown.names, shown.scores, shown.boxes):
        x1, y1, x2, y2 = box
        lines.append(f"  {name:<20} {score:6.3f}   [{x1:7.1f} {y1:7.1f} {x2:7.1f} {y2:7.1f}]")
    return "\n".join(lines)


def result_json(path: Path, result, image_shape) -> dict:
    return {
        "image": str(path), "height": image_shape[0], "width": image_shape[1],
        "detections": [
            {"class": name, "label": int(label), "score": round(float(score), 5), "box_xyxy": [round(float(v), 2) for v in box]}
            for name, label, score, box in zip(result.names, result.labels, result.scores, result.boxes)
        ],
        "timing_s": {k: round(v, 4) for k, v in result.timing.items()},
    }


def output_names(path: Path) -> list[str]:
    """The files `detect --out` writes for input `path`: its drawn image and its result file."""
    return [f"{path.stem}.jpg", f"{path.stem}.json"]


def _write_outputs(out: Path, path: Path, image, shown, payload: dict, show: bool) -> None:
    """The drawn image (the `shown` detections) and the result file (`payload`, every detection),
    named by output_names and claimed by check_outputs."""
    from eval.draw import draw_detections

    drawn = draw_detections(image, shown.boxes, shown.scores, shown.labels, shown.names)
    image_name, json_name = output_names(path)
    with atomic_path(out / image_name) as tmp:
        drawn.save(tmp, format="JPEG", quality=92)
    write_text(out / json_name, json.dumps(payload, indent=1))
    if show:
        drawn.show()


def check_result_files(formats: list[str], coco_json: str | None, out: Path | None, paths: list[Path]) -> None:
    """UserError when the output files cannot name every image apart (two inputs with one file
    stem: the drawn images and JSON files of --out, --save-format, --coco-json), --save-format has
    no --out to write to, or a format cannot write an image's name (whitespace in VOC lines)."""
    if formats and out is None:
        raise UserError("--save-format writes into the --out folder: give --out DIR")
    if not formats and not coco_json and out is None:
        return
    stems = collections.defaultdict(list)
    for path in paths:
        stems[path.stem].append(path)
    clash = next((same for same in stems.values() if len(same) > 1), None)
    if clash is not None:
        option = "--save-format" if formats else "--coco-json" if coco_json else "--out"
        raise UserError(f"{option}: {len(clash)} inputs are named {clash[0].stem!r} ({clash[0]}, {clash[1]}); "
                        "output files name images by file name without suffix, so they would overwrite each "
                        "other: rename one, or detect them separately")
    for format in formats:
        check_image_ids(format, [path.stem for path in paths], f"--save-format {format}")


def check_outputs(out: Path | None, paths: list[Path], formats: list[str], coco_json: str | None) -> None:
    """Refuse (UserError naming the file) before any work when an output would overwrite an
    input, or --out holds a file this project did not write where --out writes one (the drawn
    images and JSON files, the --save-format files and folders); then claim --out's files.
    --coco-json names its file exactly, so only an input there is refused."""
    inputs = {_identity(path): path for path in paths}
    targets = [Path(coco_json)] if coco_json else []
    if out is not None:
        targets += [out / name for path in paths for name in output_names(path)]
        for format in formats:
            files, folders = planned_files(format, DETECT_SPLIT)
            targets += [out / name for name in files]
            targets += [entry for folder in folders if (out / folder).is_dir() for entry in (out / folder).iterdir()]
    for target in targets:
        identity = _identity(target)
        source = inputs.get(identity) if identity is not None else None
        if source is not None:
            raise UserError(f"{target}: is the input {source}; writing the outputs there would overwrite it "
                            "(choose another --out / --coco-json)")
    if out is not None:
        check_results_folder(out, formats, DETECT_SPLIT)
        OutputFolder(out).claim([name for path in paths for name in output_names(path)])


def _identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of an existing file, so that two names of one file compare equal."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def detected_split(detector, detected: list[tuple[int, Path, tuple, object]]) -> tuple[Dataset, dict]:
    """The images read, (input index, path, image shape, DetectionResult), as a split ``test``
    and its detections: image ids the file stems, ILSVRC image_index the input's 1-based position."""
    records = [ImageRecord(path.stem, path, shape[1], shape[0], np.zeros((0, 4), np.float32), np.zeros(0, np.int64),
                           np.zeros(0, bool), list_index=index + 1) for index, path, shape, _ in detected]
    dataset = Dataset(DETECT_SPLIT, detector.classes, detector.display_names, records)
    return dataset, {path.stem: ImageDetections(r.boxes, r.scores, r.labels) for _, path, _, r in detected}


def run(args: argparse.Namespace, config: Config | None) -> int:
    from detector.inference.detector import Detector

    if args.max_detections < 1:
        raise UserError(f"--max-detections {args.max_detections}: expected at least 1")
    config = _with_flags(config or Config(), args)
    display = DISPLAY_THRESHOLD if args.score_threshold is None else args.score_threshold
    paths = collect_images(args.inputs)
    out = Path(args.out) if args.out else None
    check_result_files(args.save_format, args.coco_json, out, paths)
    if out is not None:
        check_writable(out)
    check_outputs(out, paths, args.save_format, args.coco_json)
    target = {"det200": "ilsvrc_det200", "voc": "voc20"}[args.classes]
    detector = Detector.from_weights(args.weights, config, imagenet_target=target)
    with process_group() as context:
        mine = own_share([path.stat().st_size for path in paths], context)  # under torchrun: this rank's share
        detected, failures = _detect_each(args, detector, [(i, paths[i]) for i in mine], out, display)
        parts = gathered((detected, failures), context, "detect")
    if parts is None:  # torchrun rank > 0: rank 0 writes the result files
        return 1 if failures else 0
    failures = sum(count for _, count in parts)
    if args.save_format or args.coco_json:
        detected = sorted((entry for part, _ in parts for entry in part), key=lambda entry: entry[0])
        write_result_files(args, detector, detected, out)
    if failures:
        print(f"{failures} of {len(paths)} input(s) could not be read", file=sys.stderr)
    return 1 if failures else 0


def write_result_files(args: argparse.Namespace, detector, detected: list[tuple[int, Path, tuple, object]],
                       out: Path | None) -> None:
    """--save-format's files in `out` and --coco-json's file, of every image detected."""
    dataset, dets = detected_split(detector, detected)
    for format in args.save_format:
        save_results(out, format, dets, dataset)
    if args.coco_json:  # the entries --save-format coco writes
        write_text(args.coco_json, json.dumps(to_coco_results(dets, dataset, results_image_ids(dataset))))


def _detect_each(args: argparse.Namespace, detector, inputs: list[tuple[int, Path]], out: Path | None,
                 display: float) -> tuple[list[tuple[int, Path, tuple, object]], int]:
    """Detect, print and draw each (input index, path); returns what result files need, (index,
    path, image shape, DetectionResult) per image read, and the number of unreadable inputs."""
    from detector.inference.detector import proposed_images

    detected, failures = [], 0
    paths = [path for _, path in inputs]
    with contextlib.closing(proposed_images(detector, paths)) as ready_images:
        for (index, path), ready in zip(tqdm(inputs, desc="detect", disable=len(paths) < 2, file=sys.stderr),
                                        ready_images):
            if isinstance(ready, UserError):
                print(f"skipped: {ready}", file=sys.stderr)
                failures += 1
                continue
            result = detector.detect(ready.image, ready.boxes)
            result.timing["proposals_s"] = ready.seconds
            payload = result_json(path, result, ready.image.shape)
            shown = displayed(result, display, args.max_detections)
            table = format_table(path, shown, len(result.boxes), display, args.max_detections)
            print(json.dumps(payload) if args.json else table, flush=True)
            if out is not None:
                _write_outputs(out, path, ready.image, shown, payload, args.show)
            if args.save_format or args.coco_json:
                detected.append((index, path, ready.image.shape, result))
    return detected, failures
