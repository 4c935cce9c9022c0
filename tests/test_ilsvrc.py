"""The ILSVRC DET recipe: class-balanced val1/val2 split, extra ground-truth-only positives from DET
train, and `rcnn run` on a tiny synthetic ILSVRC devkit folder scored with the ILSVRC metric."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from configs import config_path
from detector.cli import main
from detector.common.errors import UserError
from detector.config import load_config
from detector.data.datasets import load_dataset
from detector.ilsvrc import main as split_main
from detector.modeling.checkpoint import load_checkpoint
from detector.training.ilsvrc import balanced_split, class_counts, ground_truth_only, relative_imbalance
from detector.training.minibatches import SamplingSettings, TrainBatches
from tests.synthetic import make_ilsvrc_dataset

WNIDS = ("n00000001", "n00000002")


@pytest.fixture(scope="module")
def devkit(tmp_path_factory) -> Path:
    """ILSVRC DET layout: val (16 images, one empty) and train (10 images)."""
    return make_ilsvrc_dataset(tmp_path_factory.mktemp("ilsvrc"), WNIDS, {"val": 16, "train": 10})


def ilsvrc_overrides(root: Path) -> list[str]:
    return [f"data.root={root}", "data.class_file=", f"data.classes=[{', '.join(WNIDS)}]"]


def test_relative_imbalance_by_hand():
    counts = np.array([[2, 0], [1, 1], [0, 3], [1, 0]])
    split = np.array([[True, True, False, False]])
    # class 0: 3 vs 1 -> 2/4; class 1: 1 vs 3 -> 2/4
    np.testing.assert_allclose(relative_imbalance(counts, split), [[0.5, 0.5]])
    np.testing.assert_allclose(relative_imbalance(counts, ~split), [[0.5, 0.5]])


def test_balanced_split_keeps_the_best_of_many_random_halvings():
    rng = np.random.default_rng(3)
    counts = rng.poisson(0.4, size=(200, 20))
    best = balanced_split(counts, trials=300, seed=1)
    assert best.in_first.sum() == 100
    np.testing.assert_allclose(best.imbalance, relative_imbalance(counts, best.in_first[None])[0])
    single = balanced_split(counts, trials=1, seed=1)
    assert best.max_imbalance <= single.max_imbalance
    assert best.max_imbalance < 0.5 * single.max_imbalance or best.max_imbalance < 0.2
    again = balanced_split(counts, trials=300, seed=1)
    np.testing.assert_array_equal(again.in_first, best.in_first)
    with pytest.raises(UserError, match="--trials 0"):
        balanced_split(counts, trials=0)


def test_split_script_writes_val1_val2_from_the_original_lines(devkit, capsys):
    args = ["--config", "ilsvrc_det", *(a for o in ilsvrc_overrides(devkit) for a in ("--set", o)), "--trials", "50"]
    assert split_main(args) == 0
    assert "relative class imbalance max" in capsys.readouterr().out
    folder = devkit / "ImageSets" / "DET"
    original = folder.joinpath("val.txt").read_text().splitlines()
    val1, val2 = (folder.joinpath(f"{n}.txt").read_text().splitlines() for n in ("val1", "val2"))
    assert len(val1) == 8 and len(val2) == 8 and sorted(val1 + val2) == sorted(original)
    assert val1 == [line for line in original if line in val1]  # original order and format
    assert split_main(args) == 0  # the same split again: nothing to refuse
    assert split_main([*args, "--seed", "5"]) == 2
    assert "exists with another split; pass --force" in capsys.readouterr().err
    counts = class_counts(load_dataset(load_config("ilsvrc_det", ilsvrc_overrides(devkit)).data, "val"))
    assert counts.shape == (16, 2) and counts[0].sum() == 0  # the first image is empty


def test_ground_truth_only_takes_at_most_n_boxes_per_class(devkit):
    config = load_config("ilsvrc_det", [*ilsvrc_overrides(devkit), "train.extra_split=train",
                                        "train.extra_boxes_per_class=2"])
    records = ground_truth_only(config)
    labels = np.concatenate([r.labels for r in records])
    assert np.bincount(labels, minlength=2).tolist() == [2, 2]
    assert all(r.path.parent.name == "train" for r in records)
    assert [r.image_id for r in ground_truth_only(config)] == [r.image_id for r in records]  # seeded
    assert ground_truth_only(load_config("ilsvrc_det", [*ilsvrc_overrides(devkit), "train.extra_split="])) == []


def test_ground_truth_only_images_give_their_boxes_and_no_proposals(devkit):
    config = load_config("ilsvrc_det", [*ilsvrc_overrides(devkit), "train.extra_split=train",
                                        "train.extra_boxes_per_class=5"])
    extra = ground_truth_only(config)
    val = load_dataset(config.data, "val")
    asked = []

    def proposals(path):
        asked.append(path)
        return np.array([[0, 0, 30, 30], [40, 40, 90, 100]], dtype=np.float32)

    batches = TrainBatches(val, proposals, SamplingSettings(images_per_batch=2, regions_per_batch=32,
                                                            input_size=32, context_pad=2), iterations=50)
    batches.add_ground_truth_only(extra)
    seen_extra = 0
    for iteration in range(20):
        asked.clear()
        batch = batches[iteration]
        picked = np.random.default_rng([0, iteration, 0]).choice(len(batches.records), 2, replace=False)
        extra_picked = [int(i) for i in picked if int(i) in batches.ground_truth_only]
        seen_extra += len(extra_picked)
        assert len(asked) == 2 - len(extra_picked)
        if len(extra_picked) == 2:
            expected = sum(min(len(batches.records[i].boxes), 4) for i in extra_picked)  # 16 x 0.25 each
            assert len(batch.labels) == expected and bool((batch.labels > 0).all())
    assert seen_extra > 0


@pytest.mark.slow
def test_ilsvrc_recipe_end_to_end(devkit, tmp_path, capsys):
    """Split val, fine-tune on val1 + ground-truth-only train boxes, score val2 with the ILSVRC metric."""
    assert split_main(["--config", "ilsvrc_det", *(a for o in ilsvrc_overrides(devkit) for a in ("--set", o)),
                       "--trials", "50", "--force"]) == 0
    config = tmp_path / "ilsvrc_tiny.yaml"
    tiny = yaml.safe_load(config_path("tiny").read_text())
    config.write_text(yaml.safe_dump({
        "base": "ilsvrc_det", "name": "ilsvrc_tiny", "proposals": tiny["proposals"], "model": tiny["model"],
        "train": {**tiny["train"], "extra_split": "train", "extra_boxes_per_class": 3},
        "test": tiny["test"],
    }))
    args = ["run", "--config", str(config), "--workdir", str(tmp_path / "run"), "--workers", "1",
            *(a for o in ilsvrc_overrides(devkit) for a in ("--set", o))]
    assert main(args) == 0
    assert "evaluate-val2: mAP" in capsys.readouterr().out
    run = tmp_path / "run"
    metrics = json.loads((run / "eval" / "val2" / "metrics.json").read_text())
    assert metrics["metric"] == "ilsvrc" and metrics["settings"]["split"] == "val2"
    stages = sorted(p.stem for p in (run / "stages").iterdir())
    assert stages == ["detect-val2", "evaluate-val2", "proposals-val1", "proposals-val2", "report", "train"]
    train = json.loads((run / "stages" / "train.json").read_text())
    checkpoint = load_checkpoint(run / train["info"]["folder"] / "model_final.pt")
    assert checkpoint["config"]["train"]["extra_split"] == "train"
    # Other extra-box settings are another training (its key includes the selected boxes).
    assert main(args + ["--set", "train.extra_boxes_per_class=1", "--stages", "proposals"]) == 0
    assert main(args + ["--set", "train.extra_boxes_per_class=1", "--stages", "detect"]) == 2
    assert "stage train is not complete" in capsys.readouterr().err
