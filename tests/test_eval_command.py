"""`rcnn eval` and `rcnn report` end to end on the tiny synthetic VOC set."""
from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from detector.cli import main
from detector.config import load_config
from detector.data.datasets import load_dataset
from eval.detections import ImageDetections, save_detections


@pytest.fixture
def tiny(tiny_voc, tmp_path):
    """(config args, dataset) for the tiny test split, output under tmp_path."""
    args = ["--config", "tiny", "--set", f"data.root={tiny_voc}", "--set", f"output_dir={tmp_path}/run"]
    config = load_config("tiny", [f"data.root={tiny_voc}"])
    return args, load_dataset(config.data, "test")


def perfect(dataset, skip: int = 0) -> dict[str, ImageDetections]:
    """The ground truth as detections, less the first `skip` boxes of the first image."""
    dets = {}
    for i, r in enumerate(dataset.records):
        start = skip if i == 0 else 0
        scores = np.linspace(1, 0.5, len(r.boxes))
        dets[r.image_id] = ImageDetections(r.boxes[start:], scores[start:], r.labels[start:])
    return dets


def test_eval_scores_a_detections_file_and_writes_the_report(tiny, tmp_path, capsys):
    args, dataset = tiny
    save_detections(tmp_path / "dets.npz", perfect(dataset), dataset.classes, dataset.name)
    assert main(["eval", *args, "--split", "test", "--detections", str(tmp_path / "dets.npz")]) == 0
    out = tmp_path / "run" / "eval" / "test"
    assert "mAP (voc10) 1.0000" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["mAP"] == 1.0 and metrics["metric"] == "voc10" and metrics["settings"]["split"] == "test"
    assert yaml.safe_load((out / "config.yaml").read_text())["data"]["classes"] == ["square", "disc"]
    assert {"report.md", "report.html", "ap_per_class.png"} <= {p.name for p in out.iterdir()}

    save_detections(tmp_path / "worse.json", perfect(dataset, skip=1), dataset.classes, dataset.name)
    assert main(["eval", *args, "--detections", str(tmp_path / "worse.json"), "--metric", "coco",
                 "--out", str(tmp_path / "b")]) == 0
    assert 0 < json.loads((tmp_path / "b" / "metrics.json").read_text())["mAP"] < 1
    capsys.readouterr()
    assert main(["report", str(tmp_path / "run"), str(tmp_path / "b")]) == 0
    printed = capsys.readouterr().out
    assert "different metrics (voc10 vs coco)" in printed and "| mAP | 1.0000 |" in printed
    (out / "report.md").unlink()
    assert main(["report", str(tmp_path / "run")]) == 0 and (out / "report.md").is_file()


def test_eval_rejects_bad_detection_files_in_one_line(tiny, tmp_path, capsys, monkeypatch):
    args, dataset = tiny
    save_detections(tmp_path / "train.npz", {}, dataset.classes, "other/train")
    assert main(["eval", *args, "--detections", str(tmp_path / "train.npz")]) == 2
    assert "train.npz: detections are for split 'other/train'" in capsys.readouterr().err
    broken = perfect(dataset)
    broken[dataset.records[1].image_id].boxes[:, 0] = np.nan
    save_detections(tmp_path / "nan.npz", broken, dataset.classes, dataset.name)
    assert main(["eval", *args, "--detections", str(tmp_path / "nan.npz")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nan.npz: " in err and "non-finite boxes or scores" in err
    monkeypatch.setenv("RCNN_WEIGHTS", str(tmp_path / "missing.pt"))  # no file: the model cannot run
    assert main(["eval", *args]) == 2
    assert "missing.pt: checkpoint not found" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # nothing half-written


def test_empty_detections_score_zero(tiny, tmp_path, capsys):
    args, dataset = tiny
    save_detections(tmp_path / "none.npz", {}, dataset.classes, dataset.name)
    assert main(["eval", *args, "--detections", str(tmp_path / "none.npz"), "--metric", "voc07"]) == 0
    assert "mAP (voc07) 0.0000" in capsys.readouterr().out


def test_extra_metrics_are_scored_and_reported_beside_the_primary_one(tiny, tmp_path, capsys):
    args, dataset = tiny
    save_detections(tmp_path / "dets.npz", perfect(dataset, skip=1), dataset.classes, dataset.name)
    assert main(["eval", *args, "--detections", str(tmp_path / "dets.npz"), "--set", "eval.extra_metrics=[coco, voc10]",
                 "--out", str(tmp_path / "r")]) == 0
    printed = capsys.readouterr().out
    primary = json.loads((tmp_path / "r" / "metrics.json").read_text())
    coco = json.loads((tmp_path / "r" / "coco" / "metrics.json").read_text())
    assert primary["metric"] == "voc10" and coco["metric"] == "coco"  # voc10 listed twice is scored once
    assert not (tmp_path / "r" / "voc10").exists()
    assert {"APs", "APm", "APl"} <= set(coco["extras"]) and 0 < coco["mAP"] < 1
    assert f"mAP (coco) {coco['mAP']:.4f}" in printed and f"mAP (voc10) {primary['mAP']:.4f}" in printed
    assert (tmp_path / "r" / "coco" / "report.md").is_file()
    assert main(["eval", *args, "--detections", str(tmp_path / "dets.npz"), "--set", "eval.extra_metrics=[map50]",
                 "--out", str(tmp_path / "bad")]) == 2
    assert "metric 'map50'" in capsys.readouterr().err
