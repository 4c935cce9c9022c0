"""Peer: ultralytics YOLOv8n from ``yolov8n.yaml`` (random initialisation), trained for a
wall-clock budget on a config's training split, then predicting val and test into COCO results
that our evaluator scores (``rcnn eval --detections``). Needs the optional extra
(``pip install -e '.[peers]'``); ultralytics is AGPL-3.0 and only this script imports it.

Offline: ``YOLO_OFFLINE=1``, ``pretrained=False``, ``amp=False`` (no check that downloads a
model), and a TTF font (matplotlib's DejaVu Sans) placed where ultralytics looks for Arial.ttf.
The data is written in the ultralytics layout by our converter (``rcnn data convert``), so any
format we read works. ``--resume`` continues an interrupted run (ultralytics' own resume).

    python bench/peers/yolo_peer.py --config aquarium --budget-min 150 --out runs/peers/yolov8n
    rcnn eval --config aquarium --split test --format coco \
        --detections runs/peers/yolov8n/test/detections_test_rcnn_results.json
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bench.peers.common import add_common_arguments, config_of, predicted_splits, write_results  # noqa: E402
from detector.common.errors import UserError  # noqa: E402
from detector.data.convert import convert  # noqa: E402
from detector.data.datasets import Dataset, load_dataset  # noqa: E402
from eval.detections import ImageDetections  # noqa: E402


def offline_settings(out: Path) -> None:
    """Environment that keeps ultralytics from reaching the network (before importing it)."""
    config_dir = out / "ultralytics_config"
    import matplotlib

    font = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    for folder in (config_dir, config_dir / "Ultralytics"):
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(font, folder / "Arial.ttf")
    os.environ.update({"YOLO_OFFLINE": "1", "YOLO_CONFIG_DIR": str(config_dir)})


def yolo_data(config, out: Path) -> Path:
    """The training split (and val, when there is one) in the ultralytics layout; its data.yaml."""
    folder = out / "data"
    if not (folder / "data.yaml").is_file():
        splits = {"train": load_dataset(config.data, config.data.train_split)}
        try:
            splits["val"] = load_dataset(config.data, "val")
        except UserError:  # no val split: validate on the training split
            splits["val"] = splits["train"]
        convert(splits, "yolo", folder, copy_images=True)
    return folder / "data.yaml"


def predict(model, dataset: Dataset, imgsz: int) -> dict[str, ImageDetections]:
    """Detections of every record down to confidence 0.001, at most 100 an image."""
    dets = {}
    paths = [str(record.path) for record in dataset.records]
    results = model.predict(source=paths, conf=0.001, iou=0.7, max_det=100, imgsz=imgsz, device="cpu",
                            stream=True, verbose=False)
    for record, result in zip(dataset.records, results):
        boxes = result.boxes
        dets[record.image_id] = ImageDetections(boxes.xyxy.numpy(), boxes.conf.numpy(), boxes.cls.numpy().astype(int))
    return dets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2, help="data loader processes")
    parser.add_argument("--resume", action="store_true", help="continue <out>/train/weights/last.pt")
    args = parser.parse_args()
    config, out = config_of(args), Path(args.out).resolve()
    offline_settings(out)
    from ultralytics import YOLO  # AGPL-3.0: imported here only

    last = out / "train" / "weights" / "last.pt"
    if args.resume and last.is_file():
        YOLO(str(last)).train(resume=True)
    else:
        YOLO("yolov8n.yaml").train(
            data=str(yolo_data(config, out)), epochs=10_000, time=args.budget_min / 60, imgsz=args.imgsz,
            batch=args.batch, workers=args.workers, device="cpu", pretrained=False, amp=False, plots=False,
            project=str(out), name="train", exist_ok=True, seed=0, deterministic=True)
    best = out / "train" / "weights" / "best.pt"
    model = YOLO(str(best if best.is_file() else last))
    for split in predicted_splits(args, config):
        evaluated = load_dataset(config.data, split)
        write_results(out, split, evaluated, predict(model, evaluated, args.imgsz))


if __name__ == "__main__":
    main()
