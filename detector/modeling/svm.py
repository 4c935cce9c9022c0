"""R-CNN's second stage: per-class linear SVMs and ridge box regressors on region features.

Girshick et al. 2014 (sec. 2.3, appendix B/C): after fine-tuning, one linear SVM per class is
trained on pooled CNN features with the ground-truth boxes as positives and proposals with IoU
< 0.3 to every box of the class as negatives, with hard-negative mining; class-specific ridge
regressors (lambda = 1000) map the features of proposals with IoU >= 0.6 to box deltas.
Features are rescaled so that their mean L2 norm is 20, as R-CNN did. scikit-learn does the
fitting (liblinear hinge loss, positive class weight 2, bias multiplier 10, as in R-CNN).
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.svm import LinearSVC
from tqdm import tqdm

from detector.common.precision import Precision, prepare_input
from detector.data.boxes import box_iou
from detector.data.datasets import Dataset
from detector.data.images import load_image
from detector.modeling.box_regression import MIN_RIDGE_SAMPLES, REGRESSION_IOU, encode_deltas, fit_ridge
from detector.modeling.googlenet import RegionClassifier
from detector.modeling.regions import normalize_image, warp_regions

log = logging.getLogger(__name__)

FEATURE_NORM = 20.0  #: R-CNN's target mean feature norm
HARD_MARGIN = -1.0  #: negatives scoring above this are hard (R-CNN)
EASY_MARGIN = -1.2  #: cached negatives scoring below this are evicted (R-CNN)


@dataclass
class RegionFeatures:
    """M regions: features [M, D]; class_iou [M, C] best IoU with a box of each class;
    gt_label [M] class of a ground-truth box (-1 for proposals); best_class [M], best_iou [M]
    and target_deltas [M, 4] towards the best-overlapping ground-truth box."""

    features: np.ndarray
    class_iou: np.ndarray
    gt_label: np.ndarray
    best_class: np.ndarray
    best_iou: np.ndarray
    target_deltas: np.ndarray


@dataclass
class SvmHead:
    """Per-class linear scorers and box regressors on rescaled features (D = 1024)."""

    weights: torch.Tensor  #: [C, D]
    bias: torch.Tensor  #: [C]
    ridge_weights: torch.Tensor  #: [C, 4, D]
    ridge_bias: torch.Tensor  #: [C, 4]
    feature_scale: float

    def scores(self, features: torch.Tensor) -> torch.Tensor:
        """SVM margins [B, C+1]; column 0 (background) is 0."""
        margins = (features.float() * self.feature_scale) @ self.weights.T + self.bias
        return torch.cat([margins.new_zeros((len(margins), 1)), margins], dim=1)

    def deltas(self, features: torch.Tensor) -> torch.Tensor:
        """Class-specific box deltas [B, 4C]."""
        scaled = features.float() * self.feature_scale
        return (torch.einsum("bd,ckd->bck", scaled, self.ridge_weights) + self.ridge_bias).flatten(1)

    def state_dict(self) -> dict:
        return {"weights": self.weights, "bias": self.bias, "ridge_weights": self.ridge_weights,
                "ridge_bias": self.ridge_bias, "feature_scale": self.feature_scale}

    @classmethod
    def from_state_dict(cls, state: dict) -> "SvmHead":
        return cls(**state)


@torch.inference_mode()
def collect_features(
    model: RegionClassifier, dataset: Dataset, proposal_fn, input_size: int, context_pad: int,
    precision: Precision, proposals_per_image: int, rng: np.random.Generator, batch_size: int = 64,
) -> RegionFeatures:
    """Features of every ground-truth box and up to `proposals_per_image` random proposals per
    image (all proposals with IoU >= 0.6 are kept for the box regressors)."""
    model.eval()
    num_classes = len(dataset.classes)
    parts: list[tuple] = []
    for record in tqdm(dataset.records, desc="svm features", unit="image", dynamic_ncols=True):
        keep = ~record.ignore
        gt_boxes = torch.from_numpy(record.boxes[keep])
        gt_labels = record.labels[keep]
        image = load_image(record.path)
        proposals = torch.as_tensor(np.asarray(proposal_fn(record.path), np.float32).reshape(-1, 4))
        boxes = torch.cat([gt_boxes, _sample_proposals(proposals, gt_boxes, proposals_per_image, rng)])
        normalized = normalize_image(image)
        features = torch.cat([
            model.features(prepare_input(warp_regions(normalized, chunk, input_size, context_pad), precision))[0].float().cpu()
            for chunk in boxes.split(batch_size)
        ]) if len(boxes) else torch.zeros((0, 1024))
        parts.append(_label_regions(boxes, features, gt_boxes, gt_labels, num_classes))
    return RegionFeatures(*(np.concatenate([p[i] for p in parts]) for i in range(6)))


def _sample_proposals(proposals: torch.Tensor, gt_boxes: torch.Tensor, count: int, rng: np.random.Generator) -> torch.Tensor:
    if len(proposals) == 0:
        return proposals
    best = box_iou(proposals, gt_boxes).max(1).values if len(gt_boxes) else proposals.new_zeros(len(proposals))
    regressable = torch.nonzero(best >= REGRESSION_IOU).flatten().numpy()
    others = rng.permutation(np.setdiff1d(np.arange(len(proposals)), regressable))[:count]
    return proposals[torch.from_numpy(np.concatenate([regressable, others]).astype(np.int64))]


def _label_regions(boxes, features, gt_boxes, gt_labels, num_classes) -> tuple:
    count = len(boxes)
    class_iou = np.zeros((count, num_classes), np.float16)
    best_iou, best_class = np.zeros(count, np.float32), np.full(count, -1, np.int64)
    deltas = np.zeros((count, 4), np.float32)
    if len(gt_boxes):
        iou = box_iou(boxes, gt_boxes)  # [M, G]
        for c in np.unique(gt_labels):
            class_iou[:, c] = iou[:, torch.from_numpy(gt_labels == c)].max(1).values.numpy()
        best, which = iou.max(1)
        best_iou, best_class = best.numpy(), gt_labels[which.numpy()]
        deltas = encode_deltas(boxes, gt_boxes[which]).numpy()
    gt_label = np.full(count, -1, np.int64)
    gt_label[: len(gt_labels)] = gt_labels
    return features.numpy(), class_iou, gt_label, best_class, best_iou, deltas


def _fit_svm(positives: np.ndarray, negatives: np.ndarray, c: float) -> tuple[np.ndarray, float]:
    data = np.concatenate([positives, negatives])
    target = np.concatenate([np.ones(len(positives)), np.zeros(len(negatives))])
    svm = LinearSVC(C=c, loss="hinge", class_weight={1: 2.0, 0: 1.0}, intercept_scaling=10.0, max_iter=5000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        svm.fit(data, target)
    return svm.coef_[0], float(svm.intercept_[0])


def train_class_svm(features: np.ndarray, positive: np.ndarray, negative: np.ndarray, c: float,
                    rounds: int, rng: np.random.Generator, cache_size: int = 5000) -> tuple[np.ndarray, float]:
    """One class's SVM with hard-negative mining. `positive`/`negative` are boolean masks [M]."""
    pos, pool = features[positive], np.flatnonzero(negative)
    cache = rng.permutation(pool)[:cache_size]
    weights, bias = _fit_svm(pos, features[cache], c)
    for _ in range(rounds):
        margins = features[pool] @ weights + bias
        hard = pool[margins > HARD_MARGIN]
        new = np.setdiff1d(hard, cache)
        if len(new) == 0:
            break
        cached_margins = features[cache] @ weights + bias
        cache = np.union1d(cache[cached_margins >= EASY_MARGIN], new)
        weights, bias = _fit_svm(pos, features[cache], c)
    return weights, bias


def train_svm_head(regions: RegionFeatures, num_classes: int, svm_c: float, neg_iou: float,
                   rounds: int, ridge_lambda: float, seed: int = 0) -> SvmHead:
    """SVMs (one per class) and ridge regressors from collected region features."""
    rng = np.random.default_rng(seed)
    norms = np.linalg.norm(regions.features, axis=1)
    scale = FEATURE_NORM / max(float(norms.mean()), 1e-6)
    features = regions.features * scale
    dim = features.shape[1]
    weights, bias = np.zeros((num_classes, dim), np.float32), np.zeros(num_classes, np.float32)
    ridge_w, ridge_b = np.zeros((num_classes, 4, dim), np.float32), np.zeros((num_classes, 4), np.float32)
    for c in tqdm(range(num_classes), desc="svm classes", dynamic_ncols=True):
        positive = regions.gt_label == c
        negative = (regions.class_iou[:, c] < neg_iou) & ~positive
        if positive.any() and negative.any():
            weights[c], bias[c] = train_class_svm(features, positive, negative, svm_c, rounds, rng)
        regress = (regions.best_class == c) & (regions.best_iou >= REGRESSION_IOU)
        if regress.sum() >= MIN_RIDGE_SAMPLES:
            ridge_w[c], ridge_b[c] = fit_ridge(features[regress], regions.target_deltas[regress], ridge_lambda)
    return SvmHead(torch.from_numpy(weights), torch.from_numpy(bias), torch.from_numpy(ridge_w),
                   torch.from_numpy(ridge_b), scale)
