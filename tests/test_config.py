"""Typed YAML configs: shipped files load, overrides are type-checked, bases inherit."""
from __future__ import annotations

import pytest
import yaml

from configs import shipped_configs
from detector.common.errors import UserError
from detector.config import Config, apply_overrides, load_config, save_config


@pytest.mark.parametrize("name", ["voc2007", "ilsvrc_det", "coco", "tiny", "animals_voc"])
def test_shipped_configs_load(name):
    config = load_config(name)
    assert config.name == name
    assert name in shipped_configs()


def test_overrides_are_typed():
    config = load_config("voc2007", ["train.lr=0.01", "train.lr_steps=[5, 10]", "train.flip=false", "data.root=123"])
    assert config.train.lr == 0.01 and config.train.lr_steps == [5, 10] and config.train.flip is False
    assert config.data.root == "123"
    assert apply_overrides(config, ["train.iterations=7"]).train.iterations == 7
    assert load_config(None, ["train.lr=1"]).train.lr == 1.0  # int accepted for float


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lrr=0.1", "unknown config key 'train.lrr'"),
        ("train.iterations=many", "config key train.iterations: expected int"),
        ("train.iterations=1.5", "expected int"),
        ("train.flip=3", "expected bool"),
        ("train.lr_steps=5", "expected a list"),
        ("train=3", "expected a mapping"),
        ("no_equals_sign", "expected KEY=VALUE"),
    ],
)
def test_bad_overrides(override, message):
    with pytest.raises(UserError, match=message):
        load_config("voc2007", [override])


def test_base_inheritance_and_errors(tmp_path):
    (tmp_path / "child.yaml").write_text("base: voc2007\nname: child\ntrain: {lr: 0.5}\n")
    child = load_config(tmp_path / "child.yaml")
    assert child.name == "child" and child.train.lr == 0.5 and child.data.class_file == "voc20"
    (tmp_path / "loop.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(UserError, match="circular"):
        load_config(tmp_path / "loop.yaml")
    (tmp_path / "bad.yaml").write_text("train: [unclosed\n")
    with pytest.raises(UserError, match="bad.yaml: malformed YAML"):
        load_config(tmp_path / "bad.yaml")
    with pytest.raises(UserError, match="no such file"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "numbers.yaml").write_text("base: [1, 2]\n")
    with pytest.raises(UserError, match="numbers.yaml: `base:` must be"):
        load_config(tmp_path / "numbers.yaml")


def test_a_list_of_bases_applies_in_order():
    both = load_config("animals_voc_imagenette")
    assert both.name == "animals_voc_imagenette" and both.model.init == "pretrain"
    assert both.data.classes == ["raccoon", "kangaroo"] and both.model.roi_layer == "5b-dilated"  # animals_voc
    assert both.pretrain.input_size == 128 and both.pretrain.schedule == "onecycle"  # imagenette
    fish = load_config("aquarium_imagenette")
    assert fish.data.format == "yolo" and fish.model.roi_short_side == 480 and fish.model.init == "pretrain"
    assert fish.pretrain == both.pretrain


def test_saved_config_reloads_identically(tmp_path):
    config = load_config("tiny", ["data.root=/somewhere", "train.lr=0.123"])
    save_config(config, tmp_path / "config.yaml")
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["train"]["lr"] == 0.123
    assert load_config(tmp_path / "config.yaml") == config
    assert Config().run_dir.name == "experiment"
