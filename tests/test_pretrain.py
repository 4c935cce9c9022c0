"""Classification pre-training: ImageFolder reading, augmentation, schedules, exact resume,
export loadable by torchvision and by detection fine-tuning, DDP."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
import yaml

from detector.common.distributed import DistContext
from detector.common.errors import UserError
from detector.config import load_config
from detector.data.classification import EpochBatches
from detector.data.imagefolder import read_image_folder
from detector.data.transforms import TrainAugment, center_crop, multi_scale_crops, ten_crops
from detector.modeling.build import CLASSIFIER_PREFIXES, build_model, load_imagenet_trunk, read_export
from detector.training.pretrain import Pretrainer, pretrain
from detector.training.schedules import pretrain_lr_factor as lr_factor
from tests.ddp_worker import run_two_ranks
from tests.synthetic import make_image_folder


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("imagefolder"))


def pretrain_config(root: Path, run_dir: Path, *extra: str):
    return load_config("tiny", [f"pretrain.root={root}", f"output_dir={run_dir}", "pretrain.precision=fp32", *extra])


# --------------------------------------------------------------------------- data


def test_image_folder_classes_labels_and_imagenet_names(image_folder):
    train = read_image_folder(image_folder, "train")
    assert train.classes == ["n01440764", "n02102040", "plain"]
    assert train.display_names == ["tench", "English springer", "plain"]
    assert train.counts() == [6, 6, 6] and len(train) == 18
    assert all(path.parent.name == train.classes[label] for path, label in train.samples)


def test_image_folder_errors_name_the_folder(tmp_path, image_folder):
    with pytest.raises(UserError, match="no such ImageFolder split"):
        read_image_folder(tmp_path, "train")
    (tmp_path / "train" / "empty").mkdir(parents=True)
    with pytest.raises(UserError, match="empty: class folder holds no images"):
        read_image_folder(tmp_path, "train")
    with pytest.raises(UserError, match=r"\['plain'\] are not among"):
        read_image_folder(image_folder, "val", classes=["n01440764", "n02102040"])


def test_train_augment_crops_within_the_paper_ranges_and_is_seeded():
    augment = TrainAugment(32)
    areas, aspects = [], []
    for seed in range(300):
        top, left, h, w = augment.crop_box(120, 160, np.random.default_rng(seed))
        assert 0 <= top and top + h <= 120 and 0 <= left and left + w <= 160
        areas.append(h * w / (120 * 160))
        aspects.append(w / h)
    assert 0.07 <= min(areas) < 0.2 and max(areas) > 0.9
    assert min(aspects) >= 0.74 and max(aspects) <= 1.35
    image = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    first = augment(image, np.random.default_rng([1, 2, 3]))
    assert first.shape == (32, 32, 3) and first.dtype == np.uint8
    assert np.array_equal(first, augment(image, np.random.default_rng([1, 2, 3])))
    assert not np.array_equal(first, augment(image, np.random.default_rng([1, 2, 4])))


def test_photometric_distortion_changes_colours_within_range():
    image = np.full((8, 8, 3), (200, 100, 50), np.uint8)
    augment = TrainAugment(8, brightness=0.4, contrast=0.4, saturation=0.4)
    outputs = [augment.photometric(image, np.random.default_rng(s)) for s in range(20)]
    assert any(not np.array_equal(out, image) for out in outputs)
    assert all(out.dtype == np.uint8 for out in outputs)
    assert np.array_equal(TrainAugment(8, brightness=0, contrast=0, saturation=0).photometric(image, np.random.default_rng(0)), image)


@pytest.mark.parametrize("shape", [(90, 120, 3), (120, 90, 3)])
def test_test_crops_match_the_paper_protocol(shape):
    image = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    assert center_crop(image, 32).shape == (32, 32, 3)
    ten = ten_crops(image, 32)
    assert ten.shape == (10, 32, 32, 3)
    assert np.array_equal(ten[5:], ten[:5, :, ::-1])  # the mirrors
    dense = multi_scale_crops(image, 32)
    assert dense.shape == (144, 32, 32, 3)  # 4 scales x 3 squares x 6 crops x 2 mirrors
    assert np.array_equal(dense[72:], dense[:72, :, ::-1])
    assert len({crop.tobytes() for crop in dense[:72]}) == 72


# --------------------------------------------------------------------------- schedule and batches


def test_lr_schedules():
    config = load_config("tiny", ["pretrain.schedule=step", "pretrain.warmup_epochs=0"]).pretrain
    assert [lr_factor(config, e) for e in (0, 7.9, 8, 16.5)] == [1, 1, 0.96, pytest.approx(0.96 ** 2)]
    cycle = load_config("tiny", ["pretrain.schedule=onecycle", "pretrain.epochs=20", "pretrain.warmup_epochs=4"]).pretrain
    assert lr_factor(cycle, 0) == pytest.approx(1 / 25) and lr_factor(cycle, 4) == pytest.approx(1)
    assert lr_factor(cycle, 12) == pytest.approx(0.5, abs=1e-3) and lr_factor(cycle, 20) == pytest.approx(1e-4)
    cosine = load_config("tiny", ["pretrain.schedule=cosine", "pretrain.epochs=10", "pretrain.warmup_epochs=0"]).pretrain
    assert lr_factor(cosine, 10) == 0 and lr_factor(cosine, 5) == pytest.approx(0.5)


def test_epoch_batches_shard_ranks_and_resume_mid_epoch():
    ranks = [list(EpochBatches(23, 4, epoch=3, seed=0, context=DistContext(r, 2))) for r in (0, 1)]
    assert [len(r) for r in ranks] == [2, 2]  # 23 images -> 2 global batches of 8, the rest dropped
    seen = [key for rank in ranks for batch in rank for key in batch]
    assert len(seen) == len(set(seen)) == 16 and all(epoch == 3 for epoch, _ in seen)
    whole = list(EpochBatches(23, 4, epoch=3, seed=0, context=DistContext()))
    assert list(EpochBatches(23, 4, epoch=3, seed=0, context=DistContext(), start=2)) == whole[2:]
    assert whole != list(EpochBatches(23, 4, epoch=4, seed=0, context=DistContext()))
    assert sum(map(len, EpochBatches(23, 4, 0, 0, DistContext(), shuffle=False, drop_last=False))) == 23


# --------------------------------------------------------------------------- runs


def test_pretraining_writes_everything_and_resume_is_exact(image_folder, tmp_path, monkeypatch):
    exported = pretrain(pretrain_config(image_folder, tmp_path / "a"))
    folder = tmp_path / "a" / "pretrain"
    for name in ("config.yaml", "pretrain_log.csv", "pretrain_curve.png", "checkpoints/last.pt", "googlenet.json"):
        assert (folder / name).is_file(), name
    rows = (folder / "pretrain_log.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[0].startswith("epoch,step,lr,train_loss")  # header + 2 epochs
    assert all(0 <= float(r.split(",")[9]) <= 1 for r in rows[1:])  # EMA top-1

    calls = {"n": 0}
    original = Pretrainer.step

    def interrupted_step(self, images, labels):  # Ctrl-C in the middle of epoch 2 (4 steps an epoch)
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt
        return original(self, images, labels)

    monkeypatch.setattr(Pretrainer, "step", interrupted_step)
    config = pretrain_config(image_folder, tmp_path / "b")
    with pytest.raises(KeyboardInterrupt):
        pretrain(config)
    monkeypatch.setattr(Pretrainer, "step", original)
    resumed = pretrain(config, resume=True)
    straight_weights, resumed_weights = read_export(exported)[0], read_export(resumed)[0]
    for key, value in straight_weights.items():
        assert torch.equal(value, resumed_weights[key]), key
    assert (tmp_path / "b" / "pretrain" / "pretrain_log.csv").read_text() .count("\n") == 3


def test_run_folder_guards(image_folder, tmp_path):
    config = pretrain_config(image_folder, tmp_path / "run", "pretrain.epochs=1")
    with pytest.raises(UserError, match="nothing to resume"):
        pretrain(config, resume=True)
    pretrain(config)
    with pytest.raises(UserError, match="already holds a pre-training checkpoint"):
        pretrain(config)
    with pytest.raises(UserError, match="pretrain.input_size=32"):
        pretrain(pretrain_config(image_folder, tmp_path / "run", "pretrain.epochs=1", "pretrain.input_size=64"), resume=True)
    with pytest.raises(UserError, match="make no batch"):
        pretrain(pretrain_config(image_folder, tmp_path / "big", "pretrain.batch_size=64"))


def test_a_corrupt_image_stops_training_with_one_line(image_folder, tmp_path):
    broken = make_image_folder(tmp_path / "data")
    bad = broken / "train" / "plain" / "plain_0.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(UserError) as error:
        pretrain(pretrain_config(broken, tmp_path / "run", "pretrain.workers=1"))
    assert str(bad) in str(error.value) and "\n" not in str(error.value)


def test_export_loads_in_torchvision_and_as_detection_init(image_folder, tmp_path):
    exported = pretrain(pretrain_config(image_folder, tmp_path / "run", "pretrain.epochs=1"))
    weights, metadata = read_export(exported)
    assert metadata["classes"] == ["n01440764", "n02102040", "plain"] and metadata["input_size"] == 32
    assert metadata["mean"] == [0.5, 0.5, 0.5] and metadata["transform_input"] is False
    classifier = torchvision.models.googlenet(num_classes=3, aux_logits=True, init_weights=False)
    classifier.load_state_dict(torch.load(exported, weights_only=True), strict=True)
    for mode, layer in (("crop", "4e"), ("roi", "5b-dilated")):
        detector = build_model(2, "random", mode=mode, roi_layer=layer)
        missing = load_imagenet_trunk(detector, str(exported))
        assert all(key.startswith(CLASSIFIER_PREFIXES) for key in missing), missing
        trunk = detector.trunk.state_dict()
        for key, value in weights.items():
            if not key.startswith(CLASSIFIER_PREFIXES):
                assert torch.equal(trunk[key], value), key


@pytest.mark.slow
def test_ddp_two_cpu_ranks_keep_identical_weights(image_folder, tmp_path):
    digests = run_two_ranks("pretrain", image_folder, tmp_path / "run", port=29541)
    assert digests[0] == digests[1]
    assert (tmp_path / "run" / "pretrain" / "googlenet.pth").is_file()


def test_lr_factor_is_continuous_at_the_end_of_warm_up():
    config = load_config("tiny", ["pretrain.schedule=cosine", "pretrain.epochs=10", "pretrain.warmup_epochs=2"]).pretrain
    assert math.isclose(lr_factor(config, 2 - 1e-9), lr_factor(config, 2), rel_tol=1e-6)


@pytest.mark.slow
def test_rcnn_run_pretrains_then_fine_tunes_from_the_export(image_folder, tiny_voc, tmp_path):
    from detector.cli import main

    workdir = tmp_path / "run"
    args = ["run", "--config", "tiny", "--workdir", str(workdir), "--workers", "1", "--set", f"data.root={tiny_voc}",
            "--set", f"pretrain.root={image_folder}", "--set", "pretrain.epochs=1", "--set", "model.init=pretrain",
            "--set", f"proposals.cache_dir={tmp_path / 'cache'}"]
    assert main(args) == 0
    stages = workdir / "stages"
    pretrained = json.loads((stages / "pretrain.json").read_text())
    exported = next(workdir / p for p in pretrained["outputs"] if p.endswith(".pth"))
    trained = json.loads((stages / "train.json").read_text())
    train_config = yaml.safe_load((workdir / trained["info"]["folder"] / "config.yaml").read_text())
    assert train_config["model"]["init"] == str(exported)
    assert main(args + ["--set", "pretrain.workers=1"]) == 0  # complete (workers are bookkeeping): nothing reruns
    assert json.loads((stages / "pretrain.json").read_text()) == pretrained
    assert json.loads((stages / "train.json").read_text()) == trained
    assert main(args + ["--set", "pretrain.label_smoothing=0.1"]) == 0  # new weights: pre-training and training rerun
    again = json.loads((stages / "pretrain.json").read_text())
    assert again["key"] != pretrained["key"] and json.loads((stages / "train.json").read_text())["key"] != trained["key"]


def test_model_init_pretrain_needs_the_export(tiny_voc, tmp_path):
    from detector.training.finetune import train

    config = load_config("tiny", [f"data.root={tiny_voc}", f"output_dir={tmp_path}", "model.init=pretrain"])
    with pytest.raises(UserError, match="pretrain/googlenet.pth does not exist; run `rcnn pretrain`"):
        train(config)


def test_a_damaged_resume_checkpoint_is_one_line(image_folder, tmp_path):
    from detector.modeling.checkpoint import load_checkpoint, save_checkpoint

    config = pretrain_config(image_folder, tmp_path / "run", "pretrain.epochs=1")
    pretrain(config)
    last = tmp_path / "run" / "pretrain" / "checkpoints" / "last.pt"
    state = load_checkpoint(last)
    state["model"] = {k: v for k, v in state["model"].items() if not k.startswith("inception5b.")}
    save_checkpoint(last, state)
    with pytest.raises(UserError, match=r"last.pt: weights do not fit the GoogLeNet classifier .* missing"):
        pretrain(config, resume=True)
    del state["optimizer"]
    save_checkpoint(last, state)
    with pytest.raises(UserError, match="last.pt: checkpoint lacks optimizer"):
        pretrain(config, resume=True)


def test_frozen_batchnorm_keeps_the_statistics_of_classification_weights(image_folder, tiny_voc, tmp_path):
    from detector.training.finetune import Trainer

    exported = pretrain(pretrain_config(image_folder, tmp_path / "pre", "pretrain.epochs=1"))
    key = "trunk.inception4a.branch1.bn.running_mean"

    def one_step(init: str, *extra: str) -> tuple[torch.Tensor, torch.Tensor, Trainer]:
        config = load_config("tiny", [f"data.root={tiny_voc}", f"output_dir={tmp_path / init.replace('/', '_')}",
                                      f"model.init={init}", *extra])
        trainer = Trainer(config, DistContext())
        before = trainer.model.state_dict()[key].clone()
        trainer.step(next(iter(trainer._loader())))
        return before, trainer.model.state_dict()[key], trainer

    before, after, trainer = one_step(str(exported), "train.batchnorm=frozen")
    assert trainer.frozen_batchnorm and torch.equal(before, after)
    before, after, trainer = one_step(str(exported), "train.batchnorm=frozen", "model.mode=roi",
                                      "model.roi_layer=5b-dilated", "model.roi_short_side=64", "model.roi_max_side=96",
                                      "output_dir=" + str(tmp_path / "lh"))
    assert torch.equal(before, after)
    assert trainer.model.light_reduce.bn.training  # the new layers' statistics still learn
    before, after, trainer = one_step(str(exported), "output_dir=" + str(tmp_path / "default"))
    assert not trainer.frozen_batchnorm and not torch.equal(before, after)
    with pytest.raises(UserError, match="train.batchnorm 'sync'"):
        one_step("random", "train.batchnorm=sync", "output_dir=" + str(tmp_path / "bad"))
