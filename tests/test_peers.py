"""Peer benchmark scripts (bench/peers/): each trains briefly on a tiny synthetic split and writes
COCO results that our evaluator reads. The YOLO peer needs the optional extra `.[peers]`."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from detector.config import load_config
from detector.data.datasets import load_dataset
from eval.detections import validate_detections
from eval.result_formats import read_results
from tests.synthetic import make_voc_dataset

REPO = Path(__file__).resolve().parents[1]


def _run_peer(script: str, data: Path, out: Path, *extra: str) -> Path:
    command = [sys.executable, str(REPO / "bench" / "peers" / script), "--config", "tiny", "--set", f"data.root={data}",
               "--budget-min", "0.02", "--out", str(out), "--splits", "test", *extra]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    return out / "test"


def _check_results(folder: Path, data: Path) -> None:
    dataset = load_dataset(load_config("tiny", [f"data.root={data}"]).data, "test")
    (results,) = folder.glob("detections_*.json")
    dets = read_results(results, dataset, "coco")
    validate_detections(dets, dataset)
    assert set(dets) == {r.image_id for r in dataset.records}
    assert all(len(d) and (d.scores >= 0.001).all() and (d.labels < 2).all() for d in dets.values())


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["mobilenet", "googlenet"])
def test_torchvision_peer_trains_and_writes_results_our_evaluator_reads(tmp_path, backbone):
    data = make_voc_dataset(tmp_path / "data", {"train": 2, "test": 2})
    folder = _run_peer("torchvision_peer.py", data, tmp_path / backbone, "--backbone", backbone,
                       "--min-size", "120", "--max-size", "160")
    _check_results(folder, data)
    assert (tmp_path / backbone / "checkpoint.pt").is_file()


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("ultralytics") is None,
                    reason="needs the optional extra: pip install -e '.[peers]'")
def test_yolo_peer_trains_offline_and_writes_results_our_evaluator_reads(tmp_path):
    data = make_voc_dataset(tmp_path / "data", {"train": 4, "test": 2})
    folder = _run_peer("yolo_peer.py", data, tmp_path / "yolo", "--imgsz", "160", "--batch", "2", "--workers", "0")
    _check_results(folder, data)
