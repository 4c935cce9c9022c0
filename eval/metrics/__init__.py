"""Detection metrics behind one small interface::

    evaluator = make_evaluator("voc07", dataset)
    for image_id, dets in detections.items():
        evaluator.process(image_id, dets)
    result = evaluator.evaluate()  # EvalResult: per-class AP, mAP, curves, extras

Metrics: ``voc07`` (11-point AP), ``voc10`` (all-point AP), ``ilsvrc`` (size-dependent IoU
thresholds, greedy matching) — see :mod:`eval.metrics.devkit` — and ``coco`` (pycocotools) — see
:mod:`eval.metrics.coco`. Images of the split never passed to ``process`` have no detections.
"""
from __future__ import annotations

from typing import Protocol

from detector.common.errors import UserError
from detector.data.datasets import Dataset
from eval.detections import Detections, ImageDetections
from eval.metrics.coco import CocoEvaluator
from eval.metrics.devkit import DevkitEvaluator
from eval.metrics.result import EvalResult

METRICS = ("voc07", "voc10", "ilsvrc", "coco")
#: data.format -> the metric that dataset's own benchmark uses.
#: yolo: COCO AP@[.5:.95], the mAP50-95 ultralytics reports.
DEFAULT_METRICS = {"voc": "voc07", "ilsvrc_det": "ilsvrc", "coco": "coco", "yolo": "coco"}

__all__ = ["METRICS", "EvalResult", "Evaluator", "default_metric", "make_evaluator", "resolve_metric", "resolve_metrics",
           "score"]


class Evaluator(Protocol):
    """What every evaluator offers."""

    metric: str

    def process(self, image_id: str, dets: ImageDetections) -> None: ...

    def evaluate(self) -> EvalResult: ...


def default_metric(format: str) -> str:
    """The metric of a data.format: voc -> voc07, ilsvrc_det -> ilsvrc, coco and yolo -> coco."""
    if format not in DEFAULT_METRICS:
        raise UserError(f"data.format {format!r}: no default metric (known: {', '.join(DEFAULT_METRICS)})")
    return DEFAULT_METRICS[format]


def resolve_metric(metric: str, format: str) -> str:
    """`metric` checked, with ``auto`` replaced by default_metric(format)."""
    if metric == "auto":
        return default_metric(format)
    if metric not in METRICS:
        raise UserError(f"metric {metric!r}: expected auto or one of {', '.join(METRICS)}")
    return metric


def resolve_metrics(metric: str, extra_metrics: list[str], format: str) -> list[str]:
    """The primary metric (resolved as resolve_metric does), then each extra one not already listed."""
    metrics = [resolve_metric(metric, format)]
    for extra in extra_metrics:
        if resolve_metric(extra, format) not in metrics:
            metrics.append(resolve_metric(extra, format))
    return metrics


def make_evaluator(metric: str, dataset: Dataset) -> Evaluator:
    """A fresh evaluator of `metric` (one of METRICS) for `dataset`."""
    if metric == "coco":
        return CocoEvaluator(dataset)
    if metric not in METRICS:
        raise UserError(f"metric {metric!r}: expected one of {', '.join(METRICS)}")
    return DevkitEvaluator(metric, dataset)


def score(dets: Detections, dataset: Dataset, metric: str, progress: bool = False) -> EvalResult:
    """`metric` of `dets` (image id -> detections) against `dataset`'s ground truth."""
    from tqdm import tqdm

    evaluator = make_evaluator(metric, dataset)
    items = tqdm(dets.items(), desc=f"scoring ({metric})", unit="image", leave=False, disable=not progress)
    for image_id, image_dets in items:
        evaluator.process(image_id, image_dets)
    return evaluator.evaluate()
