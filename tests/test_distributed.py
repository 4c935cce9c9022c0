"""Proposals, detection and evaluation under torchrun: images split over CPU ranks (gloo on
loopback), results sent over the process group, identical metrics, a killed rank ending the job
with one line, and a rerun resuming from the caches."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch.distributed as dist

from detector.common.distributed import split_by_cost
from detector.modeling.build import build_model
from detector.modeling.checkpoint import save_checkpoint
from tests.synthetic import make_voc_dataset

REPO = Path(__file__).resolve().parents[1]
needs_gloo = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="needs torch.distributed with the gloo backend")


def test_split_by_cost_balances_and_partitions():
    costs = [9.0, 1.0, 1.0, 1.0, 4.0, 4.0, 2.0, 2.0]
    shares = split_by_cost(costs, 2)
    assert sorted(i for share in shares for i in share) == list(range(len(costs)))
    assert [sum(costs[i] for i in share) for share in shares] == [12.0, 12.0]
    assert all(share == sorted(share) for share in shares)
    assert split_by_cost(costs, 2) == shares  # deterministic: a rerun gives each rank its images again
    assert split_by_cost([1.0] * 5, 3) == [[0, 3], [1, 4], [2]]
    assert split_by_cost([], 2) == [[], []]


# --------------------------------------------------------------------------- two CPU ranks


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _checkpoint(path: Path, mode: str) -> Path:
    """A randomly initialised tiny-config checkpoint in crop or roi (light head) mode."""
    import torch

    torch.manual_seed(0)
    model = build_model(2, mode=mode, roi_layer="4e")
    settings = {"input_size": 64, "context_pad": 4, "mode": mode, "roi_layer": "4e"}
    save_checkpoint(path, {"model": model.state_dict(), "classes": ["square", "disc"], "config": {"model": settings}})
    return path


def _eval_args(data: Path, weights: Path, out: Path, cache: Path) -> list[str]:
    return ["eval", "--config", "tiny", "--weights", str(weights), "--set", f"data.root={data}",
            "--set", f"output_dir={out}", "--set", f"proposals.cache_dir={cache}", "--set", "test.proposal_workers=0"]


def _torchrun(args: list[str], **env: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(_free_port()), "-m", "detector", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=REPO,
                          env={**os.environ, "RCNN_DIST_TIMEOUT_S": "120", **env})


def _scores(out: Path) -> dict:
    """metrics.json without its timings, and the merged detections, of an eval run folder."""
    metrics = json.loads((out / "eval" / "test" / "metrics.json").read_text())
    metrics.pop("timing")
    with np.load(out / "detections_test.npz", allow_pickle=False) as data:
        arrays = {key: data[key].tolist() for key in data.files}
    return {"metrics": metrics, "detections": arrays}


@pytest.fixture(scope="module")
def split_data(tmp_path_factory) -> Path:
    """The tiny config's layout with 12 test images, so that each rank gets several."""
    return make_voc_dataset(tmp_path_factory.mktemp("voc12"), {"train": 2, "test": 12})


@needs_gloo
@pytest.mark.slow
@pytest.mark.parametrize("mode", ["crop", "roi"])
def test_eval_under_torchrun_scores_exactly_as_one_process(split_data, tmp_path, mode):
    from detector.cli import main

    weights = _checkpoint(tmp_path / f"{mode}.pt", mode)
    assert main(_eval_args(split_data, weights, tmp_path / "one", tmp_path / "cache1")) == 0
    result = _torchrun(_eval_args(split_data, weights, tmp_path / "two", tmp_path / "cache2"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert _scores(tmp_path / "two") == _scores(tmp_path / "one")
    assert len(list((tmp_path / "cache2").glob("*/*.npz"))) == 12  # each rank's boxes reached the other


def _rank(rank: int, args: list[str], port: int, log: Path) -> subprocess.Popen:
    """One rank of a 2-rank job started without torchrun's agent, as on another machine."""
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
           "LOCAL_RANK": "0", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "1", "RCNN_DIST_TIMEOUT_S": "60",
           "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "detector", *args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=log.open("w"))


@needs_gloo
@pytest.mark.slow
def test_a_killed_rank_ends_the_job_in_one_line_and_the_rerun_resumes(split_data, tmp_path):
    from detector.cli import main

    weights = _checkpoint(tmp_path / "roi.pt", "roi")
    args = _eval_args(split_data, weights, tmp_path / "run", tmp_path / "cache")
    port, logs = _free_port(), [tmp_path / "rank0.err", tmp_path / "rank1.err"]
    ranks = [_rank(rank, args, port, log) for rank, log in enumerate(logs)]
    detections = tmp_path / "run" / "detections"
    deadline = time.monotonic() + 300
    while len(list(detections.glob("*/*.npz"))) < 2 and ranks[1].poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    ranks[1].send_signal(signal.SIGKILL)  # mid-detection: some images are cached
    started = time.monotonic()
    assert ranks[0].wait(timeout=120) == 2
    assert time.monotonic() - started < 60  # within the process-group timeout
    lines = logs[0].read_text().strip().splitlines()
    assert lines[-1].startswith("error: rank 0: detect ") and "rank 1 died or did not answer" in lines[-1], lines[-5:]
    assert not any("Traceback" in line or "[E" in line[:12] for line in lines), lines
    ranks[1].wait()
    kept = {p.name: p.stat().st_mtime_ns for p in detections.glob("*/*.npz")}
    assert kept, "nothing was cached before the kill"

    result = _torchrun(args)
    assert result.returncode == 0, result.stderr[-3000:]
    again = {p.name: p.stat().st_mtime_ns for p in detections.glob("*/*.npz")}
    assert len(again) == 12 and all(again[name] == mtime for name, mtime in kept.items())  # reused, not redone
    assert main(_eval_args(split_data, weights, tmp_path / "one", tmp_path / "cache_one")) == 0
    assert _scores(tmp_path / "run") == _scores(tmp_path / "one")


@needs_gloo
@pytest.mark.slow
def test_rcnn_run_runs_every_stage_under_torchrun(split_data, tmp_path):
    from detector.cli import main

    run = tmp_path / "run"
    args = ["run", "--config", "tiny", "--workdir", str(run), "--workers", "1", "--set", f"data.root={split_data}",
            "--set", "train.iterations=2"]
    result = _torchrun(args)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert set(summary["stages"]) == {"proposals-train", "proposals-test", "train", "detect-test", "evaluate-test"}
    rank1 = (run / "run.rank1.log").read_text()
    assert "detect-test: running" in rank1 and "evaluate-test" not in rank1  # rank 1 detects; rank 0 evaluates
    stages = {p.name: p.stat().st_mtime_ns for p in (run / "stages").iterdir()}
    assert main(args) == 0  # one process afterwards: every unit complete, reused
    assert {p.name: p.stat().st_mtime_ns for p in (run / "stages").iterdir()} == stages


@needs_gloo
@pytest.mark.slow
def test_detect_a_folder_under_torchrun_writes_what_one_process_writes(split_data, tmp_path):
    from detector.cli import detect_main

    weights = _checkpoint(tmp_path / "roi.pt", "roi")
    images = split_data / "JPEGImages"
    args = [str(images), "--weights", str(weights), "--config", "tiny", "--set", "test.proposal_workers=0",
            "--score-threshold", "0"]
    assert detect_main([*args, "--coco-json", str(tmp_path / "one.json")]) == 0
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(_free_port()), "-m", "detector", "detect", *args, "--coco-json", str(tmp_path / "two.json")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = (json.loads((tmp_path / name).read_text()) for name in ("one.json", "two.json"))
    assert len({entry["image_id"] for entry in two}) == 14 and two == one  # every image, in input order
    tables = [line for line in result.stdout.splitlines() if line.endswith("detection(s)") or "shown of" in line]
    assert len(tables) == 14  # each image printed once, by the rank that detected it
