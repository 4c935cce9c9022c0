"""Fine-tuning region and image sampling: per-object foreground, LVIS repeat factors, the defaults unchanged."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from detector.common.errors import UserError
from detector.config import DatasetConfig, load_config
from detector.data.datasets import Dataset, ImageRecord, load_dataset
from detector.experiment.pipeline import TRAIN_BOOKKEEPING
from detector.training.finetune import sampling_settings
from detector.training.minibatches import SamplingSettings, TrainBatches
from detector.training.sampling import class_repeat_factors, image_repeat_factors, sample_regions

BIG, SMALL = [0.0, 0.0, 100.0, 100.0], [200.0, 200.0, 220.0, 220.0]


def two_objects() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Proposals [106, 4]: 100 foreground on a large object (class 0), 2 on a 20-px one (class 1),
    4 background; the ground-truth boxes [2, 4] and labels [2]."""
    big = [[i * 0.2, 0.0, 100.0 + i * 0.2, 100.0] for i in range(100)]
    small = [[200.0, 200.0, 221.0, 220.0], [201.0, 200.0, 220.0, 220.0]]
    background = [[50.0, 0.0, 150.0, 100.0], [0.0, 50.0, 100.0, 150.0], [60.0, 0.0, 160.0, 100.0],
                  [190.0, 190.0, 230.0, 230.0]]
    return torch.tensor(big + small + background), torch.tensor([BIG, SMALL]), torch.tensor([0, 1])


def small_object_share(fg_sampling: str, draws: int = 300) -> float:
    """Fraction of the foreground regions (2 slots of 8) given to the small object over `draws` samples."""
    proposals, gt_boxes, gt_labels = two_objects()
    labels = torch.cat([
        sample_regions(proposals, gt_boxes, gt_labels, 8, np.random.default_rng(seed), fg_sampling=fg_sampling).labels
        for seed in range(draws)
    ])
    return float((labels == 2).sum() / (labels > 0).sum())


def test_per_object_balances_objects_and_uniform_follows_proposals():
    assert abs(small_object_share("per_object") - 0.5) < 0.08  # 0.476 expected: 2 draws without replacement
    assert small_object_share("uniform") < 0.1  # 3 of 104 candidates


def test_per_object_takes_every_candidate_when_fewer_than_slots():
    proposals, gt_boxes, gt_labels = two_objects()
    targets = sample_regions(proposals[100:], gt_boxes, gt_labels, 32, np.random.default_rng(0),
                             fg_sampling="per_object")
    fg = targets.boxes[targets.labels > 0]
    # 8 slots, 4 candidates: both ground-truth boxes (the big object has no proposal here) and 2 proposals
    assert len(fg) == 4 and (targets.labels > 0).sum() == 4
    assert {tuple(b) for b in fg.tolist()} == {tuple(BIG), tuple(SMALL), *map(tuple, proposals[100:102].tolist())}


def test_uniform_is_the_permutation_of_before():
    proposals, gt_boxes, gt_labels = two_objects()
    candidates = torch.cat([gt_boxes, proposals])
    fg, bg = np.r_[0:104], np.r_[104:108]  # ground truth + proposals of both objects; the 4 background
    for seed in range(5):
        rng = np.random.default_rng(seed)
        expected_fg = rng.permutation(fg)[:8]
        expected = np.concatenate([expected_fg, rng.permutation(bg)[: 32 - len(expected_fg)]])
        for targets in (sample_regions(proposals, gt_boxes, gt_labels, 32, np.random.default_rng(seed)),
                        sample_regions(proposals, gt_boxes, gt_labels, 32, np.random.default_rng(seed),
                                       fg_sampling="uniform")):
            assert torch.equal(targets.boxes, candidates[expected])


def record(index: int, labels: list[int], ignore: list[bool] | None = None) -> ImageRecord:
    boxes = np.tile(np.array([[0, 0, 10, 10]], np.float32), (len(labels), 1))
    return ImageRecord(f"im{index}", Path(f"im{index}.jpg"), 32, 32, boxes, np.array(labels, np.int64),
                       np.array(ignore or [False] * len(labels)))


def ten_images() -> Dataset:
    """Class 0 in every image, class 1 in image 3 (and ignored in image 4), class 2 in none."""
    records = [record(i, [0, 0]) for i in range(10)]
    records[3] = record(3, [0, 1])
    records[4] = record(4, [0, 1], [False, True])
    return Dataset("ten", ["a", "b", "c"], ["a", "b", "c"], records)


def batches(dataset: Dataset, repeat_factor: float, images_per_batch: int = 2) -> TrainBatches:
    settings = SamplingSettings(images_per_batch=images_per_batch, repeat_factor=repeat_factor)
    return TrainBatches(dataset, lambda path: np.zeros((0, 4), np.float32), settings, iterations=10)


def test_repeat_factors_follow_the_lvis_formula():
    classes = [np.array([0, 0])] * 8 + [np.array([0, 1, 2]), np.array([2, 0])]
    factors = class_repeat_factors(classes, 4, 0.5)  # f = 1, 0.1, 0.2, 0 (class 3 in no image)
    assert np.allclose(factors, [1.0, math.sqrt(5), math.sqrt(2.5), 1.0], rtol=0, atol=1e-12)
    assert np.allclose(image_repeat_factors(classes, factors), [1.0] * 8 + [math.sqrt(5), math.sqrt(2.5)])
    assert np.allclose(class_repeat_factors(classes, 4, 4.0), [2.0, math.sqrt(40), math.sqrt(20), 1.0])

    train = batches(ten_images(), 0.5)  # the ignored box of image 4 does not count
    assert np.allclose(train.class_repeat_factors(), [1.0, math.sqrt(5), 1.0])
    expected = np.array([1.0] * 10)
    expected[3] = math.sqrt(5)
    assert np.allclose(train.image_probabilities, expected / expected.sum())
    # ground-truth-only images count too: class 1 now in 11 of 20 images, every factor 1
    train.add_ground_truth_only([record(10 + i, [1]) for i in range(10)])
    assert np.allclose(train.class_repeat_factors(), [1.0, 1.0, 1.0])
    assert np.allclose(train.image_probabilities, np.full(20, 1 / 20))


def test_repeat_factor_draws_rare_images_more_often_and_zero_is_the_uniform_draw():
    uniform = batches(ten_images(), 0.0)
    assert uniform.image_probabilities is None
    for iteration in range(20):
        expected = np.random.default_rng([0, iteration, 0]).choice(10, size=2, replace=False)
        assert np.array_equal(uniform.draw_images(np.random.default_rng([0, iteration, 0])), expected)
    repeated = batches(ten_images(), 0.5, images_per_batch=1)
    picks = np.concatenate([repeated.draw_images(np.random.default_rng([0, i, 0])) for i in range(4000)])
    assert abs(np.mean(picks == 3) - math.sqrt(5) / (9 + math.sqrt(5))) < 0.02  # 0.199, not 0.1


def test_settings_come_from_the_config_and_are_validated():
    settings = sampling_settings(load_config("tiny", ["train.fg_sampling=per_object", "train.repeat_factor=0.3"]))
    assert (settings.fg_sampling, settings.repeat_factor) == ("per_object", 0.3)
    assert sampling_settings(load_config("tiny")).fg_sampling == "uniform"
    with pytest.raises(UserError, match=r"train.fg_sampling 'balanced': expected one of uniform, per_object"):
        sampling_settings(load_config("tiny", ["train.fg_sampling=balanced"]))
    with pytest.raises(UserError, match="train.repeat_factor"):
        sampling_settings(load_config("tiny", ["train.repeat_factor=-1"]))
    assert not {"fg_sampling", "repeat_factor"} & set(TRAIN_BOOKKEEPING)  # both enter the train key


def test_balanced_batches_are_deterministic(tiny_voc):
    dataset = load_dataset(DatasetConfig(root=str(tiny_voc), train_split="train", classes=["square", "disc"]), "train")
    boxes = np.array([[10, 10, 60, 60], [50, 20, 150, 110], [12, 8, 62, 58]], np.float32)
    settings = SamplingSettings(regions_per_batch=16, input_size=32, context_pad=2, fg_sampling="per_object",
                                repeat_factor=1.0)
    train = TrainBatches(dataset, lambda path: boxes, settings, iterations=4)
    first, again = train[2], train[2]
    assert (first.labels > 0).any() and torch.equal(first.labels, again.labels)
    assert torch.equal(first.inputs[0], again.inputs[0])
