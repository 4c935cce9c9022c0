"""Measure the pipeline's speed in one process and print a Markdown table of ratios to baselines.

Proposals (s/image per backend and preset), the region classifier (ms/crop: fp32 NCHW batch 1 =
baseline, fp32 channels_last batched, bf16 autocast on CPU / fp16 AMP on CUDA, int8 static
quantisation on CPU, optionally torch.compile, with their agreement with fp32), end-to-end
detection (s/image split into proposals / regions / postprocess; googlenet preset; ensemble of
3; the roi modes, the light head also at fp32 and int8), training throughput
(regions/s, fp32 vs bf16), peak memory, and the throughput of detection over the image files
(images/s, cold and warm proposal cache, proposals in worker processes vs the serial path; with
--config animals_voc the light head). Models are randomly initialised. Sizes come from the
config (model.input_size, test.batch_size, proposals.max_boxes, train.regions_per_batch);
--quick caps them and skips the slow proposal backends.

The image: --image, else the images of --images-dir (averaged), else examples/*.jpg, else a
synthetic 500x375 image.

examples:
  rcnn bench --quick
  rcnn bench --image examples/chelsea.jpg --compile --json bench.json
  rcnn bench --sections detect --repeats 3
  rcnn bench --config animals_voc --sections throughput --images-dir ../shared/data/animals-voc/JPEGImages
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from detector.bench.report import SECTIONS, BenchSettings, format_report, synthetic_image, write_json
from detector.bench.runner import run_benchmark
from detector.common.errors import UserError
from detector.config import Config
from detector.data.images import list_images, load_image

EXAMPLES = Path("examples")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help="small batches, few proposals, 2 repeats, fast proposal backends only")
    parser.add_argument("--compile", action="store_true", help="also measure the classifier under torch.compile")
    parser.add_argument("--image", default=None, help="benchmark on this image")
    parser.add_argument("--images-dir", default=None, help="average over the images of this folder")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per figure (default 5, --quick 2)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS), metavar="SECTION",
                        help=f"measure only these: {', '.join(SECTIONS)} (default: all)")


def bench_images(image: str | None, images_dir: str | None) -> dict[str, np.ndarray]:
    """Name -> RGB image: --image, else --images-dir, else examples/*.jpg, else a synthetic one."""
    if image:
        paths = [Path(image)]
    elif images_dir:
        if not Path(images_dir).is_dir():
            raise UserError(f"{images_dir}: no such folder")
        paths = list_images(images_dir)
        if not paths:
            raise UserError(f"{images_dir}: folder holds no images")
    else:
        paths = sorted(EXAMPLES.glob("*.jpg"))
    if not paths:
        return {"synthetic 500x375": synthetic_image()}
    for path in paths:
        if not path.is_file():
            raise UserError(f"{path}: no such image")
    return {str(path): load_image(path) for path in paths}


def _device(name: str | None) -> str:
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device available")
    return name or ("cuda" if torch.cuda.is_available() else "cpu")


def run(args: argparse.Namespace, config: Config) -> int:
    if args.repeats is not None and args.repeats < 1:
        raise UserError(f"--repeats {args.repeats}: expected at least 1")
    images = bench_images(args.image, args.images_dir)
    settings = BenchSettings.from_config(config, args.quick, repeats=args.repeats,
                                         compile=args.compile, device=_device(args.device),
                                         sections=tuple(dict.fromkeys(args.sections)))
    report = run_benchmark(images, config, settings, log=lambda section: print(f"bench: {section}...", file=sys.stderr))
    print(format_report(report))
    if args.json:
        write_json(report, args.json)
    return 0
