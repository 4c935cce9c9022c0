"""COCO scoring through pycocotools ``COCOeval`` (bbox): AP@[.5:.95], AP50, AP75, APs/m/l, AR.

Ground truth is the dataset's own instances JSON when it has one (so areas and crowd regions are
exactly the official ones); other datasets are converted from their records (area = box area,
``ignore`` -> ``iscrowd``). Detections go through :func:`eval.detections.to_coco_results`.
"""
from __future__ import annotations

import contextlib
import io

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detector.common.errors import UserError
from detector.data.coco_json import coco_ids, ground_truth_json
from detector.data.datasets import Dataset
from eval.detections import Detections, ImageDetections, check_detections, to_coco_results
from eval.metrics.result import EvalResult, count_by_class

#: Names of COCOeval.stats, in order.
COCO_STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def _coco_from_dict(data: dict) -> COCO:
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _ground_truth(dataset: Dataset) -> COCO:
    if dataset.annotation_file is None:
        return _coco_from_dict(ground_truth_json(dataset))
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(dataset.annotation_file))


def run_cocoeval(gt: COCO, results: list[dict], image_ids: list[int], category_ids: list[int]) -> COCOeval:
    """COCOeval (bbox) of `results` against `gt` on the given images and categories, summarised."""
    with contextlib.redirect_stdout(io.StringIO()):
        if results:
            dt = gt.loadRes(results)
        else:  # loadRes cannot take an empty list
            dt = _coco_from_dict({"images": gt.dataset["images"], "annotations": [],
                                  "categories": gt.dataset["categories"]})
        evaluator = COCOeval(gt, dt, "bbox")
        evaluator.params.imgIds = sorted(image_ids)
        evaluator.params.catIds = sorted(category_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


class CocoEvaluator:
    """COCO scoring of one split: ``process`` each image, then ``evaluate``.

    Per-class AP is the mean of COCOeval's precision over IoU 0.5:0.95 and the 101 recall points
    (area all, 100 detections), NaN for classes without ground truth; mAP is ``stats[0]``.
    """

    metric = "coco"

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self._known = {record.image_id for record in dataset.records}
        self._dets: Detections = {}

    def process(self, image_id: str, dets: ImageDetections) -> None:
        """Keep the detections of one image for evaluate."""
        where = f"detections for {self.dataset.name}"
        check_detections([(image_id, dets)], self._known, len(self.dataset.classes), where)
        if image_id in self._dets:
            raise UserError(f"{where}: image {image_id!r} given twice")
        self._dets[image_id] = dets

    def evaluate(self) -> EvalResult:
        """Run COCOeval over everything processed so far."""
        image_ids, category_ids = coco_ids(self.dataset)
        coco_eval = run_cocoeval(
            _ground_truth(self.dataset), to_coco_results(self._dets, self.dataset), image_ids, category_ids
        )
        precision = coco_eval.eval["precision"]  # [IoU T, recall R, class K, area A, maxDets M]
        column = {cid: k for k, cid in enumerate(coco_eval.params.catIds)}
        classes = self.dataset.classes
        ap, curve = {}, {}
        for name, cid in zip(classes, category_ids):
            values = precision[:, :, column[cid], 0, -1]
            ap[name] = float(values.mean()) if (values > -1).all() else np.nan
            curve[name] = values[0].astype(np.float64) if (values > -1).all() else np.zeros(0)
        recall = {name: coco_eval.params.recThrs.copy() if curve[name].size else np.zeros(0) for name in classes}
        return EvalResult(
            metric=self.metric,
            classes=list(classes),
            display_names=list(self.dataset.display_names),
            ap=ap,
            mAP=_stat(coco_eval.stats[0]),
            precision=curve,
            recall=recall,
            num_gt=count_by_class([r.labels[~r.ignore.astype(bool)] for r in self.dataset.records], classes),
            num_detections=count_by_class([d.labels for d in self._dets.values()], classes),
            extras={key: _stat(value) for key, value in zip(COCO_STATS, coco_eval.stats)},
        )


def _stat(value: float) -> float:
    """COCOeval's -1 (undefined, e.g. no ground truth in an area range) as NaN."""
    return float(value) if value > -1 else np.nan
