"""Peer: torchvision Faster R-CNN (an RPN instead of selective search), trained from scratch for a
wall-clock budget on a config's training split, then predicting val and test into COCO results
that our evaluator scores (``rcnn eval --detections``).

Backbones:
- ``mobilenet``: ``fasterrcnn_mobilenet_v3_large_fpn(weights=None, weights_backbone=None)``,
  random initialisation (nothing is downloaded);
- ``googlenet``: our GoogLeNet trunk up to inception 4e (stride 16, 832 channels, the light head's
  default RoI layer), initialised from ``--init`` (``rcnn pretrain``'s export, torchvision layout)
  or randomly, with one feature map, 6 anchor sizes x 3 ratios and 7x7 RoIAlign: the same
  initialisation as our R-CNN, so the row compares selective search + R-CNN heads with an RPN.

Training: SGD (momentum 0.9, weight decay 1e-4), 2 images a step, horizontal flips, a linear
warm-up then constant lr until the budget is spent (the last 25% at lr / 10); a checkpoint every
few minutes and at the end, so ``--resume`` continues (the budget counts the time already spent).

    python bench/peers/torchvision_peer.py --backbone mobilenet --budget-min 150 --out runs/peers/mbv3
    python bench/peers/torchvision_peer.py --backbone googlenet --init runs/x/pretrain/googlenet.pth \\
        --budget-min 60 --out runs/peers/googlenet_frcnn
    rcnn eval --config aquarium --split test --format coco \
        --detections runs/peers/mbv3/test/detections_test_rcnn_results.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchvision.models import googlenet
from torchvision.models.detection import FasterRCNN, fasterrcnn_mobilenet_v3_large_fpn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import MultiScaleRoIAlign

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bench.peers.common import Budget, add_common_arguments, config_of, predicted_splits, write_results  # noqa: E402
from detector.common.atomic import atomic_path  # noqa: E402
from detector.data.datasets import ImageRecord, load_dataset  # noqa: E402
from detector.data.images import load_image  # noqa: E402
from detector.modeling.build import read_export  # noqa: E402
from detector.modeling.checkpoint import read_weights_file  # noqa: E402
from eval.detections import ImageDetections  # noqa: E402

CHECKPOINT_EVERY_S = 300.0
GOOGLENET_STAGES = ("conv1", "maxpool1", "conv2", "conv3", "maxpool2", "inception3a", "inception3b", "maxpool3",
                    "inception4a", "inception4b", "inception4c", "inception4d", "inception4e")


def googlenet_backbone(init: str | None) -> nn.Module:
    """GoogLeNet up to inception 4e ([B, 832, H/16, W/16]), from an ``rcnn pretrain`` export or random."""
    trunk = googlenet(weights=None, aux_logits=False, init_weights=True, transform_input=False)
    if init:
        weights, _ = read_export(init)
        kept = {k: v for k, v in weights.items() if not k.startswith(("fc.", "aux1.", "aux2."))}
        missing = trunk.load_state_dict(kept, strict=False).missing_keys
        if any(not k.startswith("fc.") for k in missing):
            sys.exit(f"{init}: not a GoogLeNet export (missing {missing[:3]})")
    body = nn.Sequential(*(getattr(trunk, name) for name in GOOGLENET_STAGES))
    body.out_channels = 832
    return body


def build(backbone: str, num_classes: int, init: str | None, min_size: int, max_size: int) -> FasterRCNN:
    """The peer model for `num_classes` foreground classes (+ background); up to 100 detections an
    image down to score 0.001, as mAP needs."""
    common = {"min_size": min_size, "max_size": max_size, "box_score_thresh": 0.001, "box_detections_per_img": 100}
    if backbone == "mobilenet":
        return fasterrcnn_mobilenet_v3_large_fpn(weights=None, weights_backbone=None, num_classes=num_classes + 1,
                                                 **common)
    anchors = AnchorGenerator(sizes=((16, 32, 64, 128, 256, 512),), aspect_ratios=((0.5, 1.0, 2.0),))
    return FasterRCNN(googlenet_backbone(init), num_classes=num_classes + 1, rpn_anchor_generator=anchors,
                      box_roi_pool=MultiScaleRoIAlign(["0"], output_size=7, sampling_ratio=2),
                      image_mean=[0.5] * 3, image_std=[0.5] * 3, **common)  # the export's normalisation


def sample(record: ImageRecord, flip: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Image float [3, H, W] in [0, 1] and its target (boxes xyxy px, labels 1..C), optionally mirrored."""
    image = torch.from_numpy(load_image(record.path)).permute(2, 0, 1).float() / 255
    keep = ~record.ignore
    boxes = torch.as_tensor(record.boxes[keep], dtype=torch.float32).reshape(-1, 4)
    if flip:
        image = image.flip(-1)
        boxes = torch.stack([image.shape[-1] - boxes[:, 2], boxes[:, 1], image.shape[-1] - boxes[:, 0], boxes[:, 3]], 1)
    return image, {"boxes": boxes, "labels": torch.as_tensor(record.labels[keep], dtype=torch.int64) + 1}


def train(model: FasterRCNN, records: list[ImageRecord], args: argparse.Namespace, out: Path) -> None:
    """SGD until the budget is spent, checkpointing to <out>/checkpoint.pt (resumable)."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=args.lr, momentum=0.9, weight_decay=1e-4)
    state = {"step": 0, "spent": 0.0, "rng": 0}
    checkpoint = out / "checkpoint.pt"
    if args.resume and checkpoint.is_file():
        saved = read_weights_file(checkpoint, "peer checkpoint")
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        state = saved["state"]
    budget, rng = Budget(args.budget_min, state["spent"]), np.random.default_rng([args.seed, state["step"]])
    last_save = time.monotonic()
    model.train()
    while not budget.over():
        lr = args.lr * min(1.0, (state["step"] + 1) / 200) * (0.1 if budget.used > 0.75 * budget.seconds else 1.0)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = [sample(records[i], bool(rng.integers(2))) for i in rng.integers(len(records), size=args.batch)]
        losses = model([image for image, _ in batch], [target for _, target in batch])
        loss = sum(losses.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        state["step"] += 1
        if state["step"] % 20 == 0:
            print(f"step {state['step']} loss {float(loss):.3f} lr {lr:.4f} {budget.used / 60:.1f}/{args.budget_min} min",
                  flush=True)
        if time.monotonic() - last_save > CHECKPOINT_EVERY_S or budget.over():
            state["spent"] = budget.used
            _save(checkpoint, model, optimizer, state)
            last_save = time.monotonic()
    state["spent"] = budget.used
    _save(checkpoint, model, optimizer, state)
    (out / "training.json").write_text(json.dumps({"steps": state["step"], "minutes": state["spent"] / 60}) + "\n")


def _save(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "state": state}, tmp)


@torch.no_grad()
def predict(model: FasterRCNN, records: list[ImageRecord]) -> dict[str, ImageDetections]:
    """Detections of every record (labels back to 0-based foreground classes)."""
    model.eval()
    dets = {}
    for record in records:
        image = torch.from_numpy(load_image(record.path)).permute(2, 0, 1).float() / 255
        (found,) = model([image])
        dets[record.image_id] = ImageDetections(found["boxes"].numpy(), found["scores"].numpy(),
                                                found["labels"].numpy() - 1)
    return dets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--backbone", choices=("mobilenet", "googlenet"), default="mobilenet")
    parser.add_argument("--init", default=None, help="googlenet: rcnn pretrain's export (default: random)")
    parser.add_argument("--min-size", type=int, default=640, help="shorter image side the model resizes to")
    parser.add_argument("--max-size", type=int, default=1024, help="longest image side the model resizes to")
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--batch", type=int, default=2, help="images per step")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint.pt")
    args = parser.parse_args()
    config, out = config_of(args), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    dataset = load_dataset(config.data, config.data.train_split)
    model = build(args.backbone, len(dataset.classes), args.init, args.min_size, args.max_size)
    train(model, [r for r in dataset.records if (~r.ignore).any()], args, out)
    for split in predicted_splits(args, config):
        evaluated = load_dataset(config.data, split)
        write_results(out, split, evaluated, predict(model, evaluated.records))


if __name__ == "__main__":
    main()
