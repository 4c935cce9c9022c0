"""Trust boundaries: loading a checkpoint, weights, config, annotation, image or array file never
runs code from it, and a malformed one gives one line naming the file and exit status 2."""
from __future__ import annotations

import json
import os
import shlex
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torchvision.models import googlenet

from detector.cli import detect_main, main
from detector.common.errors import UserError
from detector.config import load_config
from detector.inference import detector as inference
from detector.inference.detector import Detector
from detector.modeling.build import build_model
from detector.modeling.checkpoint import FORMAT, VERSION, load_checkpoint, save_checkpoint
from detector.modeling.googlenet import make_network
from detector.training.finetune import train
from eval.report import write_report
from tests.test_report import make_result


class Payload:
    """Unpickling this calls os.system, which creates `sentinel`: what a hostile file does."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.sentinel))}",)


def _crafted(path: Path, sentinel: Path) -> Path:
    """A checkpoint with the right format marker and one hostile object (issue 17)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": FORMAT, "version": VERSION, "classes": ["square", "disc"], "payload": Payload(sentinel)}, path)
    return path


def _checkpoint(path: Path, classes=("square", "disc"), mode="crop", roi_layer="4e", **changes) -> Path:
    """A random-init checkpoint as `rcnn train` writes it; `changes` replace or (None) drop keys."""
    torch.manual_seed(0)
    model = make_network(mode, len(classes), aux_classifiers=False, roi_layer=roi_layer)
    config = {"model": {"mode": mode, "roi_layer": roi_layer, "input_size": 64, "context_pad": 4}}
    state = {"model": model.state_dict(), "classes": list(classes), "config": config, **changes}
    save_checkpoint(path, {k: v for k, v in state.items() if v is not None})
    return path


def _one_error_line(capsys, name: str) -> str:
    """The single line the command printed on stderr, which must name `name`."""
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and name in lines[0], lines
    return lines[0]


def _detect(tiny_voc: Path, weights: Path) -> int:
    return detect_main([str(tiny_voc / "JPEGImages" / "test_0000.jpg"), "--config", "tiny", "--weights", str(weights)])


# --------------------------------------------------------------------------- the crafted checkpoint


def test_the_crafted_payload_runs_under_plain_pickle(tmp_path):
    """Control: the file really is hostile, so the tests below would see it act."""
    sentinel = tmp_path / "ran"
    torch.load(_crafted(tmp_path / "evil.pt", sentinel), weights_only=False)
    assert sentinel.exists()


@pytest.mark.parametrize("command", ["detect", "rcnn eval"])
def test_crafted_checkpoint_runs_nothing_in_the_cli(command, tiny_voc, tmp_path, capsys):
    sentinel = tmp_path / "ran"
    evil = _crafted(tmp_path / "evil.pt", sentinel)
    if command == "detect":
        code = _detect(tiny_voc, evil)
    else:
        code = main(["eval", "--config", "tiny", "--set", f"data.root={tiny_voc}", "--set", f"output_dir={tmp_path / 'run'}",
                     "--weights", str(evil)])
    assert code == 2 and not sentinel.exists()
    assert "evil.pt: refused: it pickles posix.system" in _one_error_line(capsys, "evil.pt")


def test_crafted_files_run_nothing_through_the_python_api_or_training(tiny_voc, tmp_path, monkeypatch):
    sentinel = tmp_path / "ran"
    evil = _crafted(tmp_path / "evil.pt", sentinel)
    with pytest.raises(UserError, match="evil.pt: refused"):
        Detector.from_weights([str(evil)])
    monkeypatch.setenv("RCNN_WEIGHTS", str(evil))
    with pytest.raises(UserError, match="evil.pt: refused"):
        Detector.from_weights([])
    monkeypatch.delenv("RCNN_WEIGHTS")
    monkeypatch.setattr(inference, "DEFAULT_CHECKPOINT", _crafted(tmp_path / "cache" / "default.pt", sentinel))
    with pytest.raises(UserError, match="default.pt: refused"):
        Detector.from_weights([])
    monkeypatch.setattr(inference, "DEFAULT_CHECKPOINT", tmp_path / "cache" / "absent.pt")
    with pytest.raises(UserError, match="evil.pt: refused"):
        build_model(2, init=str(evil))
    run = tmp_path / "run"
    _crafted(run / "checkpoints" / "last.pt", sentinel)
    with pytest.raises(UserError, match="last.pt: refused"):
        train(load_config("tiny", [f"data.root={tiny_voc}", f"output_dir={run}"]), resume=True)
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    _crafted(hub / "googlenet-1378be20.pth", sentinel)  # torchvision's cached ImageNet weights
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(UserError, match="UnpicklingError"):
        Detector.from_weights([])
    with pytest.raises(UserError, match="UnpicklingError"):
        build_model(2, init="imagenet")
    assert not sentinel.exists()


# --------------------------------------------------------------------------- malformed checkpoints


def test_checkpoint_with_missing_keys(tiny_voc, tmp_path, capsys):
    assert _detect(tiny_voc, _checkpoint(tmp_path / "bare.pt", model=None)) == 2
    assert "checkpoint lacks model (it has format, version, classes, config)" in _one_error_line(capsys, "bare.pt")
    run = tmp_path / "run"  # an inference checkpoint where resuming needs the training state
    _checkpoint(run / "checkpoints" / "last.pt")
    assert main(["train", "--config", "tiny", "--set", f"data.root={tiny_voc}", "--set", f"output_dir={run}", "--resume"]) == 2
    assert "checkpoint lacks optimizer, scheduler, rng, iteration" in _one_error_line(capsys, "last.pt")


def test_plain_torchvision_state_dict_points_to_model_init(tiny_voc, tmp_path, capsys):
    torch.save(googlenet(weights=None, init_weights=False).state_dict(), tmp_path / "googlenet.pth")
    assert _detect(tiny_voc, tmp_path / "googlenet.pth") == 2
    assert "give them as model.init=PATH" in _one_error_line(capsys, "googlenet.pth")


def test_weights_of_the_wrong_shape(tiny_voc, tmp_path, capsys):
    path = _checkpoint(tmp_path / "shape.pt")
    state = load_checkpoint(path)
    state["model"]["bbox_pred.weight"] = torch.zeros(12, 1024)
    save_checkpoint(path, state)
    assert _detect(tiny_voc, path) == 2
    assert "1 of another shape (first: bbox_pred.weight [12, 1024] vs [8, 1024])" in _one_error_line(capsys, "shape.pt")


def test_truncated_checkpoint(tiny_voc, tmp_path, capsys):
    data = _checkpoint(tmp_path / "whole.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    assert _detect(tiny_voc, tmp_path / "cut.pt") == 2
    assert "not a readable checkpoint, truncated or corrupt" in _one_error_line(capsys, "cut.pt")


def test_checkpoint_of_another_model_mode(tiny_voc, tmp_path, capsys):
    roi = _checkpoint(tmp_path / "roi.pt", mode="roi", roi_layer="5b-dilated")
    state = load_checkpoint(roi)
    state["config"]["model"]["mode"] = "crop"  # weights of a roi model, config of a crop one
    save_checkpoint(roi, state)
    assert _detect(tiny_voc, roi) == 2
    line = _one_error_line(capsys, "roi.pt")
    assert "weights do not fit the crop model its config describes" in line and "unexpected" in line
    assert _detect(tiny_voc, _checkpoint(tmp_path / "classifier.pt", kind="pretrain")) == 2  # rcnn pretrain's
    assert "a 'pretrain' checkpoint, not a detector" in _one_error_line(capsys, "classifier.pt")


def test_checkpoint_of_another_class_count(tiny_voc, tmp_path, capsys):
    three = _checkpoint(tmp_path / "three.pt", classes=("square", "disc", "star"))
    assert main(["eval", "--config", "tiny", "--set", f"data.root={tiny_voc}", "--set", f"output_dir={tmp_path / 'run'}",
                 "--weights", str(three)]) == 2
    assert "the model's classes ['square', 'disc', 'star']... do not match" in _one_error_line(capsys, "three.pt")
    state = load_checkpoint(three)
    state["classes"] = ["square", "disc"]  # a class list that disagrees with the head's 4 outputs
    save_checkpoint(three, state)
    assert _detect(tiny_voc, three) == 2
    assert "head of shape [4, 1024] does not give 2 classes" in _one_error_line(capsys, "three.pt")


# --------------------------------------------------------------------------- what is saved


def test_saved_checkpoints_hold_only_plain_data(tmp_path):
    path = tmp_path / "plain.pt"
    save_checkpoint(path, {"config": {"root": Path("/data"), "lr": np.float64(0.5), "steps": [np.int64(3)]}})
    state = torch.load(path, weights_only=True)
    assert state["config"] == {"root": "/data", "lr": 0.5, "steps": [3]}
    assert type(state["config"]["lr"]) is float and type(state["config"]["steps"][0]) is int
    with pytest.raises(TypeError, match=r"checkpoint.config.head: a Payload cannot go into a checkpoint"):
        save_checkpoint(tmp_path / "object.pt", {"config": {"head": Payload(tmp_path / "x")}})
    assert not (tmp_path / "object.pt").exists()


# --------------------------------------------------------------------------- the other readers


def _huge_png(path: Path, side: int = 15000) -> None:
    """A valid all-black grey PNG of side x side pixels (225 MB decoded, ~230 kB on disk)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer, row = zlib.compressobj(9), bytes(side + 1)  # filter byte 0 + one byte per pixel
    pixels = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b""))


def test_huge_png_is_refused_and_detect_goes_on(tiny_voc, tmp_path, capsys):
    images, out = tmp_path / "images", tmp_path / "out"
    images.mkdir()
    shutil.copy(tiny_voc / "JPEGImages" / "test_0000.jpg", images)
    _huge_png(images / "huge.png")
    weights = _checkpoint(tmp_path / "model.pt")
    assert detect_main([str(images), "--config", "tiny", "--weights", str(weights), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "huge.png: cannot read image (Image size (225000000 pixels) exceeds limit" in err
    assert "could be decompression bomb DOS attack" in err and "1 of 2 input(s) could not be read" in err
    assert (out / "test_0000.json").is_file() and not (out / "huge.json").exists()


BILLION_LAUGHS = "<!DOCTYPE a [<!ENTITY l0 'lol'>" + "".join(
    f"<!ENTITY l{i} '{f'&l{i - 1};' * 10}'>" for i in range(1, 10)) + "]><annotation><filename>&l9;</filename></annotation>"


@pytest.mark.parametrize("xml, reason", [
    (BILLION_LAUGHS, "limit on input amplification factor (from DTD and entities) breached"),
    ("<!DOCTYPE a [<!ENTITY x SYSTEM 'file:///etc/hostname'>]><annotation>&x;</annotation>", "undefined entity &x;"),
], ids=["entity expansion", "external entity"])
def test_xml_entities_are_refused(xml, reason, tmp_path, tiny_voc, capsys):
    root = shutil.copytree(tiny_voc, tmp_path / "voc")
    (root / "Annotations" / "train_0003.xml").write_text(xml)
    assert main(["data", "--config", "tiny", "--set", f"data.root={root}", "--split", "train"]) == 2
    assert f"train_0003.xml: malformed XML ({reason}" in _one_error_line(capsys, "train_0003.xml")


def _yaml_payload(sentinel: Path) -> str:
    return f"!!python/object/apply:os.system [{json.dumps(f'touch {shlex.quote(str(sentinel))}')}]"


def test_yaml_cannot_build_python_objects(tmp_path, capsys):
    yaml.unsafe_load(_yaml_payload(tmp_path / "control"))  # the payload works where it is allowed to
    assert (tmp_path / "control").exists()
    sentinel = tmp_path / "ran"
    tag = _yaml_payload(sentinel)
    (tmp_path / "evil.yaml").write_text(f"name: {tag}\n")
    assert main(["config", "--config", str(tmp_path / "evil.yaml")]) == 2
    assert "malformed YAML" in _one_error_line(capsys, "evil.yaml")
    assert main(["config", "--config", "tiny", "--set", f"name={tag}"]) == 0  # --set keeps it as text
    assert "python/object/apply:os.system" in capsys.readouterr().out
    assert not sentinel.exists()


@pytest.mark.parametrize("reader", ["rcnn eval --detections", "rcnn report"])
def test_npz_with_pickled_objects_is_refused(reader, tiny_voc, tmp_path, capsys):
    sentinel = tmp_path / "ran"
    hostile = np.array([Payload(sentinel)], dtype=object)
    if reader == "rcnn report":
        write_report(tmp_path, make_result({"cat": 0.5}), "toy/test", {}, {})
        np.savez(tmp_path / "curves.npz", precision_0=hostile, recall_0=hostile)
        code, name = main(["report", str(tmp_path)]), "curves.npz"
    else:
        np.savez(tmp_path / "evil.npz", meta=np.array("{}"), image_ids=hostile, counts=np.zeros(1, np.int64),
                 boxes=np.zeros((0, 4)), scores=np.zeros(0), labels=np.zeros(0, np.int64))
        code, name = main(["eval", "--config", "tiny", "--set", f"data.root={tiny_voc}",
                           "--detections", str(tmp_path / "evil.npz")]), "evil.npz"
    assert code == 2 and not sentinel.exists()
    assert "Object arrays cannot be loaded when allow_pickle=False" in _one_error_line(capsys, name)
