"""Recall / coverage of proposals against a split's ground truth, per method or preset.

Measures (ignored ground truth, e.g. VOC ``difficult``, left out; images that failed excluded):

- recall@t: fraction of ground-truth boxes whose best-overlapping proposal has IoU >= t;
- MABO: mean over classes of the average best overlap of their boxes (Uijlings et al. 2013);
- AR: average recall over IoU 0.5..1.0, ``2 * integral_{0.5}^{1} recall(t) dt`` (Hosang et al.
  2016), computed exactly as ``2 * mean(max(best_overlap - 0.5, 0))``;
- seconds/image: search + post-processing time of one worker on one core, measured when the
  proposals were computed (stored with them in the cache);
- by object size: the recall figures of the ground-truth boxes in each of COCO's area ranges
  (SIZE_RANGES: small < 32², medium < 96², large; box area in original-image pixels).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from detector.common.atomic import atomic_path, write_text
from detector.common.errors import UserError
from detector.data.boxes import box_iou
from detector.data.datasets import ImageRecord
from proposals.config import BACKEND_PARAMS, PRESETS, ProposalConfig, backend_params
from proposals.extract import ImageResult

#: IoU thresholds of the recall-vs-IoU curve.
CURVE_IOUS = np.round(np.linspace(0.5, 1.0, 51), 2)
#: COCO's object sizes: [low, high) ground-truth box area in square pixels of the original image.
SIZE_RANGES = {"small": (0.0, 32.0**2), "medium": (32.0**2, 96.0**2), "large": (96.0**2, np.inf)}


@dataclass
class MethodSummary:
    """Recall figures of one method/preset on one split (fractions in [0, 1], seconds per image)."""

    label: str
    method: str
    preset: str
    params: dict
    images: int
    failed: int
    objects: int
    boxes_per_image: float
    recall_50: float
    recall_70: float
    mabo: float
    average_recall: float
    seconds_per_image: float
    curve_recall: list[float] = field(default_factory=list)  #: recall at each of CURVE_IOUS
    #: SIZE_RANGES name -> {objects, recall_50, recall_70, mabo, average_recall} (None without objects)
    by_size: dict[str, dict[str, float | None]] = field(default_factory=dict)


def method_config(spec: str, base: ProposalConfig) -> ProposalConfig:
    """`base` with the method and/or preset a ``--methods`` entry names.

    An entry is a backend (``opencv-fast``: the config's preset), a preset (``googlenet``: the
    config's backend) or both (``opencv-fast:googlenet``).
    """
    method, _, preset = spec.partition(":")
    if not preset and method in PRESETS:
        method, preset = base.method, method
    if method not in BACKEND_PARAMS or (preset and preset not in PRESETS):
        raise UserError(
            f"--methods entry {spec!r}: expected a method ({', '.join(BACKEND_PARAMS)}), "
            f"a preset ({', '.join(PRESETS)}) or METHOD:PRESET"
        )
    return dataclasses.replace(base, method=method, preset=preset or base.preset)


def best_overlaps(gt_boxes: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Best IoU [G] of each ground-truth box [G, 4] with any proposal [N, 4] (0 when N = 0)."""
    if len(boxes) == 0 or len(gt_boxes) == 0:
        return np.zeros(len(gt_boxes), dtype=np.float64)
    iou = box_iou(torch.as_tensor(gt_boxes, dtype=torch.float32), torch.as_tensor(boxes, dtype=torch.float32))
    return iou.max(dim=1).values.double().numpy()


def summarize(
    label: str, config: ProposalConfig, records: Sequence[ImageRecord], results: Sequence[ImageResult]
) -> MethodSummary:
    """Recall figures of `results` (boxes kept) against `records`' ground truth, same order."""
    overlaps, labels, areas = [], [], []
    done = [(record, result) for record, result in zip(records, results) if not result.error]
    for record, result in done:
        gt = record.boxes[~record.ignore]
        overlaps.append(best_overlaps(gt, result.boxes))
        labels.append(record.labels[~record.ignore])
        areas.append((gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1]))
    if not overlaps or not sum(len(o) for o in overlaps):
        raise UserError(f"{label}: no image with ground-truth boxes succeeded; nothing to measure recall on")
    best, classes, area = np.concatenate(overlaps), np.concatenate(labels), np.concatenate(areas)
    return MethodSummary(
        label=label, method=config.method, preset=config.preset, params=backend_params(config),
        images=len(done), failed=len(results) - len(done),
        boxes_per_image=float(np.mean([result.n_boxes for _, result in done])),
        **recall_figures(best, classes),
        seconds_per_image=float(np.mean([result.seconds for _, result in done])),
        curve_recall=[float(np.mean(best >= t)) for t in CURVE_IOUS],
        by_size={size: recall_figures(best[(area >= low) & (area < high)], classes[(area >= low) & (area < high)])
                 for size, (low, high) in SIZE_RANGES.items()},
    )


def recall_figures(best: np.ndarray, classes: np.ndarray) -> dict[str, float]:
    """objects, recall_50, recall_70, mabo and average_recall of ground-truth boxes with best
    overlaps `best` [G] and class labels `classes` [G]; the fractions are None when G = 0."""
    if len(best) == 0:
        return {"objects": 0, "recall_50": None, "recall_70": None, "mabo": None, "average_recall": None}
    return {
        "objects": len(best), "recall_50": float(np.mean(best >= 0.5)), "recall_70": float(np.mean(best >= 0.7)),
        "mabo": float(np.mean([best[classes == c].mean() for c in np.unique(classes)])),
        "average_recall": float(np.mean(2 * np.clip(best - 0.5, 0, None))),
    }


def markdown_table(summaries: Sequence[MethodSummary]) -> str:
    """One Markdown row per method: boxes/image, recall@0.5/0.7, MABO, AR (percent), s/image."""
    lines = [
        "| method | images | boxes/image | recall@0.5 | recall@0.7 | MABO | AR | s/image |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in summaries:
        lines.append(
            f"| {s.label} | {s.images} | {s.boxes_per_image:.0f} | {100 * s.recall_50:.1f} | "
            f"{100 * s.recall_70:.1f} | {100 * s.mabo:.1f} | {100 * s.average_recall:.1f} | "
            f"{s.seconds_per_image:.2f} |"
        )
    return "\n".join(lines)


def size_table(summaries: Sequence[MethodSummary]) -> str:
    """One Markdown row per method with a column set per object size (SIZE_RANGES): objects,
    recall@0.5, recall@0.7 and AR (percent; "-" for a size without objects)."""
    header, rows = ["method"], []
    for size in SIZE_RANGES:
        header += [f"{size} objects", f"{size} recall@0.5", f"{size} recall@0.7", f"{size} AR"]
    for s in summaries:
        row = [s.label]
        for size in SIZE_RANGES:
            figures = s.by_size[size]
            row += [str(figures["objects"])] + [_percent(figures[key]) for key in ("recall_50", "recall_70", "average_recall")]
        rows.append(row)
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def save_plot(summaries: Sequence[MethodSummary], path: Path, title: str) -> None:
    """Recall-vs-IoU curves of every method, written atomically as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4.5))
    for s in summaries:
        axes.plot(CURVE_IOUS, s.curve_recall, label=f"{s.label} ({s.boxes_per_image:.0f} boxes, AR {s.average_recall:.3f})")
    axes.set(xlabel="IoU threshold", ylabel="recall", xlim=(0.5, 1.0), ylim=(0, 1.01), title=title)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=120)
    plt.close(figure)


def write_report(summaries: Sequence[MethodSummary], out_dir: Path, dataset_name: str) -> None:
    """``recall.json`` (figures and curves) and ``recall.png`` in `out_dir`."""
    payload = {
        "dataset": dataset_name,
        "curve_ious": CURVE_IOUS.tolist(),
        "methods": [dataclasses.asdict(s) for s in summaries],
    }
    write_text(out_dir / "recall.json", json.dumps(payload, indent=2) + "\n")
    save_plot(summaries, out_dir / "recall.png", f"proposal recall, {dataset_name}")
