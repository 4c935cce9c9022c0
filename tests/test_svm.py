"""R-CNN SVM stage: hard-negative mining, ridge box regression, end to end through a checkpoint."""
from __future__ import annotations

import numpy as np
import torch

from detector.config import load_config
from detector.data.images import load_image
from detector.inference.detector import Detector
from detector.modeling.checkpoint import load_checkpoint
from detector.modeling.svm import RegionFeatures, train_class_svm, train_svm_head
from detector.training.finetune import train


def test_hard_negative_mining_finds_the_separating_direction():
    rng = np.random.default_rng(0)
    positives = rng.normal(size=(40, 8)) + np.array([3.0] + [0] * 7)
    easy = rng.normal(size=(3000, 8)) - np.array([4.0] + [0] * 7)
    hard = rng.normal(size=(30, 8)) + np.array([1.0] + [0] * 7)  # near the boundary, rare
    features = np.concatenate([positives, easy, hard])
    positive = np.arange(len(features)) < 40
    weights, bias = train_class_svm(features, positive, ~positive, c=1.0, rounds=3, rng=rng, cache_size=100)
    margins = features @ weights + bias
    assert (margins[:40] > 0).mean() > 0.9
    assert (margins[40:] < 0).mean() > 0.97
    assert np.argmax(np.abs(weights)) == 0


def test_ridge_regressors_learn_linear_deltas():
    rng = np.random.default_rng(1)
    count, dim = 400, 16
    features = rng.normal(size=(count, dim)).astype(np.float32)
    mapping = rng.normal(size=(dim, 4)).astype(np.float32)
    regions = RegionFeatures(
        features=features, class_iou=np.zeros((count, 1), np.float16), gt_label=np.r_[np.zeros(10), -np.ones(count - 10)].astype(np.int64),
        best_class=np.zeros(count, np.int64), best_iou=np.full(count, 0.8, np.float32),
        target_deltas=features @ mapping,
    )
    head = train_svm_head(regions, num_classes=1, svm_c=0.01, neg_iou=0.3, rounds=1, ridge_lambda=1e-3)
    predicted = head.deltas(torch.from_numpy(features) / 1.0).numpy()
    assert np.corrcoef(predicted.ravel(), (features @ mapping).ravel())[0, 1] > 0.99
    assert head.scores(torch.from_numpy(features)).shape == (count, 2)


def test_svm_classifier_end_to_end(tiny_voc, tmp_path):
    config = load_config("tiny", [f"data.root={tiny_voc}", f"output_dir={tmp_path}", "train.iterations=2",
                                  "train.classifier=svm", "train.svm_proposals_per_image=20"])
    state = load_checkpoint(train(config))
    assert state["svm"]["weights"].shape == (2, 1024) and state["svm"]["ridge_weights"].shape == (2, 4, 1024)
    detector = Detector.from_weights([str(tmp_path / "model_final.pt")], config)
    assert detector.scorers[0].svm is not None
    image = load_image(tiny_voc / "JPEGImages" / "test_0000.jpg")
    scores, boxes = detector.score(image, np.array([[10, 10, 60, 60]], np.float32))
    assert scores.shape == (1, 1, 3) and scores[0, 0, 0] == 0  # SVM margins; no background column
    assert boxes.shape == (1, 1, 2, 4)
