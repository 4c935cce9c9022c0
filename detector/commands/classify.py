"""Classify images with pre-trained GoogLeNet weights (the export of `rcnn pretrain`).

With image paths: print each image's top-5 classes. Without: the GoogLeNet paper's test
protocol on the config's ImageFolder validation split (pretrain.root / pretrain.val_split, or
--data FOLDER): softmax averaged over 1, 10 or 144 crops per image and over every --weights file
(an ensemble), printed and saved as a table of top-1 / top-5 error and network cost.

examples:
  rcnn classify --config imagenette --crops 1 10 144 --out runs/imagenette/classify
  rcnn classify photo.jpg --weights runs/imagenette/pretrain/googlenet.pth
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from detector.config import Config

PAPER_NOTE = ("GoogLeNet paper, ILSVRC 2012 val top-5 error: 1 model 1 / 10 / 144 crops 10.07 / 9.15 / 7.89%; "
              "7 models 8.09 / 7.62 / 6.67%")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="*", help="images to classify (none: evaluate the validation split)")
    parser.add_argument("--weights", "-w", nargs="+", default=None,
                        help="exported classifier weights; several = ensemble; when omitted: <output_dir>/pretrain/googlenet.pth")
    parser.add_argument("--crops", type=int, nargs="+", default=[1, 10, 144], choices=[1, 10, 144],
                        help="crops per image, one table row each")
    parser.add_argument("--data", default=None, help="ImageFolder split folder to evaluate; when omitted: pretrain.root/pretrain.val_split")
    parser.add_argument("--limit", type=int, default=0, help="evaluate this many images spread over the split (0 = all)")
    parser.add_argument("--out", "-o", default=None, help="folder for classify.md and classify.json")
    parser.add_argument("--precision", default=None, help="auto | fp32 | bf16 | fp16; when omitted: test.precision")


def run(args: argparse.Namespace, config: Config) -> int:
    from detector.common.precision import flush_denormals, resolve_precision
    from detector.inference.classify import top_classes
    from detector.inference.ensemble import load_ensemble
    from detector.training.pretrain import EXPORT_NAME

    precision = resolve_precision(args.precision or config.test.precision)
    flush_denormals()
    weights = args.weights or [str(config.run_dir / "pretrain" / EXPORT_NAME)]
    ensemble = load_ensemble(weights, precision)
    if args.images:
        for image in args.images:
            ranked = top_classes(ensemble, image, precision)
            print(f"{image}: " + ", ".join(f"{name} {100 * p:.1f}%" for name, p in ranked))
        return 0
    return _evaluate(args, config, ensemble, precision)


def _evaluate(args, config: Config, ensemble, precision) -> int:
    from detector.common.atomic import write_text
    from detector.data.imagefolder import read_image_folder
    from detector.inference.classify import evaluate

    if args.data:
        folder = read_image_folder(Path(args.data).parent, Path(args.data).name, ensemble.classes)
    else:
        folder = read_image_folder(config.pretrain.root, config.pretrain.val_split, ensemble.classes)
    rows = []
    for crops in args.crops:
        result = evaluate(ensemble, folder, crops, precision, config.pretrain.workers, args.limit)
        rows.append({"models": len(ensemble.models), "crops": crops, **result})
    table = format_table(rows, folder.root, precision.description)
    print(table)
    if args.out:
        out = Path(args.out)
        write_text(out / "classify.md", table + "\n")
        write_text(out / "classify.json", json.dumps({"data": str(folder.root), "weights": [str(p) for p in ensemble.paths],
                                                      "precision": precision.description, "rows": rows}, indent=2) + "\n")
    return 0


def format_table(rows: list[dict], data: Path, precision: str) -> str:
    """The paper's Table 3 layout: models, crops, top-1 / top-5 error, cost."""
    lines = [f"{data} ({rows[0]['images']} images, {precision})", "",
             "| models | crops | top-1 error | top-5 error | network ms/image |", "|---|---|---|---|---|"]
    lines += [f"| {r['models']} | {r['crops']} | {100 * r['top1_error']:.2f}% | {100 * r['top5_error']:.2f}% | "
              f"{r['ms_per_image']:.1f} |" for r in rows]
    return "\n".join(lines + ["", PAPER_NOTE])
