"""`rcnn classify`: the 1 / 10 / 144-crop test protocol, ensembles, single images, bad weights."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from detector.cli import main
from detector.common.errors import UserError
from detector.common.precision import Precision
from detector.config import PretrainConfig
from detector.data.imagefolder import read_image_folder
from detector.inference.classify import evaluate
from detector.inference.ensemble import crop_probabilities, load_ensemble
from detector.modeling.build import build_classifier
from detector.training.pretrain import export_weights
from tests.synthetic import make_image_folder

FP32 = Precision(torch.device("cpu"), None)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("imagefolder"), size=(48, 40))


def export(path: Path, folder: Path, favourite: int | None = None, seed: int = 0) -> Path:
    """Random GoogLeNet weights for the folder's classes; with `favourite`, a head that always
    picks that class (zero weights, bias 10)."""
    torch.manual_seed(seed)
    model = build_classifier(3).eval()
    if favourite is not None:
        with torch.no_grad():
            model.fc.weight.zero_()
            model.fc.bias.copy_(torch.tensor([0.0, 0.0, 0.0]).index_fill_(0, torch.tensor([favourite]), 10.0))
    return export_weights(model, read_image_folder(folder, "train"), PretrainConfig(input_size=32), path, {})


def test_a_constant_classifier_scores_its_class_share(folder, tmp_path):
    ensemble = load_ensemble([export(tmp_path / "w.pth", folder, favourite=1)], FP32)
    val = read_image_folder(folder, "val")
    for crops in (1, 10, 144):
        result = evaluate(ensemble, val, crops, FP32, workers=0)
        assert result["images"] == 6 and result["ms_per_image"] > 0
        assert result["top1_error"] == pytest.approx(2 / 3) and result["top5_error"] == 0  # 3 classes: always in top 5
    assert evaluate(ensemble, val, 10, FP32, workers=0, limit=3)["images"] == 3


def test_ensemble_averages_softmax_over_models_and_crops(folder, tmp_path):
    a, b = export(tmp_path / "a.pth", folder, seed=1), export(tmp_path / "b.pth", folder, seed=2)
    crops = torch.randint(0, 256, (2, 10, 3, 32, 32), dtype=torch.uint8)
    single = [crop_probabilities(load_ensemble([w], FP32), crops, FP32) for w in (a, b)]
    both = crop_probabilities(load_ensemble([a, b], FP32), crops, FP32)
    assert both.shape == (2, 3) and torch.allclose(both.sum(1), torch.ones(2))
    assert torch.allclose(both, (single[0] + single[1]) / 2, atol=1e-6)
    assert torch.allclose(crop_probabilities(load_ensemble([a, a], FP32), crops, FP32), single[0], atol=1e-6)


def test_cli_table_files_and_single_image(folder, tmp_path, capsys):
    weights = export(tmp_path / "w.pth", folder, favourite=0)
    out = tmp_path / "out"
    assert main(["classify", "--config", "tiny", "--weights", str(weights), "--data", str(folder / "val"),
                 "--crops", "1", "10", "--out", str(out), "--precision", "fp32"]) == 0
    printed = capsys.readouterr().out
    assert "| 1 | 10 | 66.67% | 0.00% |" in printed and "10.07" in printed  # the paper's figures for reference
    rows = json.loads((out / "classify.json").read_text())["rows"]
    assert [(r["models"], r["crops"], r["images"]) for r in rows] == [(1, 1, 6), (1, 10, 6)]
    assert (out / "classify.md").read_text().startswith(str(folder / "val"))
    image = folder / "val" / "plain" / "plain_0.jpg"
    assert main(["classify", str(image), "--config", "tiny", "--weights", str(weights)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{image}: tench 100.0%") and "English springer" in line


def test_bad_weights_and_mismatched_ensembles_are_one_line_errors(folder, tmp_path):
    weights = export(tmp_path / "w.pth", folder)
    other = tmp_path / "other"
    make_image_folder(other, classes=("a", "b", "c"))
    mismatched = export_weights(build_classifier(3), read_image_folder(other, "train"), PretrainConfig(input_size=32),
                                tmp_path / "other.pth", {})
    with pytest.raises(UserError, match="classes or input size differ"):
        load_ensemble([weights, mismatched], FP32)
    with pytest.raises(UserError, match="differ from the model's"):
        evaluate(load_ensemble([mismatched], FP32), read_image_folder(folder, "val"), 1, FP32)
    bare = tmp_path / "bare.pth"
    torch.save(torch.load(weights, weights_only=True), bare)
    with pytest.raises(UserError, match="metadata bare.json"):
        load_ensemble([bare], FP32)
    (tmp_path / "bad.pth").write_bytes(b"garbage")
    (tmp_path / "bad.json").write_text(weights.with_suffix(".json").read_text())
    with pytest.raises(UserError, match="bad.pth: not a readable"):
        load_ensemble([tmp_path / "bad.pth"], FP32)
    assert main(["classify", "x.jpg", "--config", "tiny", "--weights", str(tmp_path / "missing.pth")]) == 2


def test_weights_of_another_class_count_are_one_line(folder, tmp_path):
    weights = export(tmp_path / "w.pth", folder)
    metadata = json.loads(weights.with_suffix(".json").read_text())
    metadata["classes"], metadata["display_names"] = metadata["classes"][:2], metadata["display_names"][:2]
    weights.with_suffix(".json").write_text(json.dumps(metadata))
    with pytest.raises(UserError, match=r"w.pth: weights do not fit GoogLeNet with 2 classes: .*of another shape"):
        load_ensemble([weights], FP32)


@pytest.mark.parametrize("key, value, message", [
    ("classes", 5, '"classes" must be a non-empty list of distinct class names, got 5'),
    ("classes", [], '"classes" must be a non-empty list'),
    ("classes", ["a", "a", "b"], '"classes" must be a non-empty list of distinct class names'),
    ("classes", ["a", 7, "b"], '"classes" must be a non-empty list'),
    ("display_names", "abc", '"display_names" must be a list of 3 names (one per class), got "abc"'),
    ("display_names", ["a"], '"display_names" must be a list of 3 names'),
    ("input_size", "224", '"input_size" must be a whole number of pixels in 16..2048, got "224"'),
    ("input_size", 10**9, '"input_size" must be a whole number of pixels in 16..2048, got 1000000000'),
    ("input_size", 0, '"input_size" must be a whole number'),
    ("input_size", 1e400, '"input_size" must be a whole number'),
])
def test_malformed_export_metadata_is_one_line(folder, tmp_path, capsys, key, value, message):
    """`"classes": 5` raised TypeError in len(); a string or huge input_size went on to the crops."""
    weights = export(tmp_path / "w.pth", folder)
    meta = weights.with_suffix(".json")
    metadata = json.loads(meta.read_text())
    metadata[key] = value
    meta.write_text(json.dumps(metadata))
    image = next((folder / "val").rglob("*.jpg"))
    assert main(["classify", str(image), "--config", "tiny", "--weights", str(weights)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{meta}: {message}" in err[0], err
