"""Proposals computed in worker processes ahead of the network (test.proposal_workers): `detect`
and `rcnn eval` give exactly the serial path's results, errors and order."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import detector.inference.prefetch
from detector.cli import detect_main
from detector.common.errors import UserError
from detector.common.workers import default_workers
from detector.config import load_config
from detector.data.datasets import load_dataset
from detector.inference.detector import Detector, proposed_images
from detector.inference.prefetch import AUTO_IMAGES_PER_WORKER, proposal_workers
from detector.inference.split_detection import detect_split
from proposals.extract import extract
from tests.test_detect import _checkpoint

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return _checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt", score_bias=[0.0, 1.0, -1.0])


def _config(tiny_voc: Path, workers: int):
    return load_config("tiny", [f"data.root={tiny_voc}", "proposals.max_boxes=30", "test.score_threshold=0.0",
                                f"test.proposal_workers={workers}"])


def _detect_json(images: Path, weights: Path, workers: int, capsys) -> tuple[int, list[dict], list[str]]:
    """Exit code, printed result lines (timings dropped) and "skipped:" messages of `detect --json` on a folder."""
    code = detect_main([str(images), "--weights", str(weights), "--json", "--set", "proposals.max_boxes=30",
                        "--set", f"test.proposal_workers={workers}", "--score-threshold", "0"])
    captured = capsys.readouterr()
    lines = [json.loads(line) for line in captured.out.splitlines()]
    for line in lines:
        line.pop("timing_s")
    skipped = [line[line.index("skipped:"):] for line in captured.err.splitlines() if "skipped:" in line]
    return code, lines, skipped


def test_detect_with_workers_prints_what_the_serial_path_prints(tiny_voc, tmp_path, weights, capsys):
    images = tmp_path / "images"
    shutil.copytree(tiny_voc / "JPEGImages", images)
    (images / "test_0001b.jpg").write_bytes(b"not a jpeg")
    serial = _detect_json(images, weights, 0, capsys)
    pooled = _detect_json(images, weights, 2, capsys)
    assert serial[0] == pooled[0] == 1  # the broken file is skipped, the others detected
    assert [line["image"] for line in pooled[1]] == [str(p) for p in sorted(images.iterdir()) if "0001b" not in p.name]
    assert pooled[1] == serial[1] and any(line["detections"] for line in serial[1])
    assert pooled[2] == serial[2] and len(serial[2]) == 1 and "test_0001b.jpg: cannot read image" in serial[2][0]


def _split_detections(tiny_voc: Path, weights: Path, workers: int, run: Path):
    config = _config(tiny_voc, workers)
    detector = Detector.from_weights([str(weights)], config)
    dataset = load_dataset(config.data, "train")
    return detect_split(detector, dataset, run / "detections", run / "proposals")


def test_eval_with_workers_detects_what_the_serial_path_detects(tiny_voc, tmp_path, weights):
    serial = _split_detections(tiny_voc, weights, 0, tmp_path / "serial")
    pooled = _split_detections(tiny_voc, weights, 2, tmp_path / "pooled")  # a cold proposal cache too
    assert list(pooled) == list(serial) and len(serial) == 8
    for image_id, dets in serial.items():
        for field in ("boxes", "scores", "labels"):
            np.testing.assert_array_equal(getattr(pooled[image_id], field), getattr(dets, field))
    assert len(list((tmp_path / "pooled" / "proposals").rglob("*.npz"))) == 8  # the workers filled the cache


def test_eval_with_workers_names_an_unreadable_image(tiny_voc, tmp_path, weights):
    copy = tmp_path / "voc"
    shutil.copytree(tiny_voc, copy)
    (copy / "JPEGImages" / "test_0002.jpg").write_bytes(b"not a jpeg")
    config = _config(copy, 2)
    detector = Detector.from_weights([str(weights)], config)
    with pytest.raises(UserError, match=r"test_0002\.jpg: cannot read image"):
        detect_split(detector, load_dataset(config.data, "test"), tmp_path / "dets", tmp_path / "proposals")


def test_a_warm_proposal_cache_starts_no_workers(tiny_voc, tmp_path, weights, monkeypatch):
    config = _config(tiny_voc, 2)
    paths = sorted((tiny_voc / "JPEGImages").glob("test_*.jpg"))
    extract(paths, config.proposals, tmp_path, progress=False)
    monkeypatch.setattr(detector.inference.prefetch, "worker_pool", lambda *args: pytest.fail("started workers"))
    detector_ = Detector.from_weights([str(weights)], config)
    read = list(proposed_images(detector_, paths, tmp_path))
    cached = extract(paths, config.proposals, tmp_path, keep_boxes=True, progress=False)
    for image, entry in zip(read, cached, strict=True):
        np.testing.assert_array_equal(image.boxes, entry.boxes)


def test_auto_workers_follow_the_network_weight_and_the_image_count():
    cores = default_workers()
    assert proposal_workers(-1, light_network=True, images=50 * cores) == cores
    assert proposal_workers(-1, light_network=True, images=AUTO_IMAGES_PER_WORKER * cores - 1) == 0
    assert proposal_workers(-1, light_network=False, images=50 * cores) == 0
    assert proposal_workers(3, light_network=False, images=2) == 2  # never more than the images
    assert proposal_workers(3, light_network=True, images=1) == 0  # one image: nothing to overlap
    assert proposal_workers(0, light_network=True, images=50) == 0
    with pytest.raises(UserError, match="test.proposal_workers = -2"):
        proposal_workers(-2, light_network=True, images=50)


def _group_members(group: int) -> list[int]:
    """Pids of the live processes in process group `group` (from /proc; zombies excluded)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == group and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


needs_proc = pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="needs /proc")  # _group_members


# A background job (`cmd &` in a script, as CI may run the suite) inherits SIGINT ignored, and
# Python keeps it so; the commands under test get a terminal's default Ctrl-C back first.
WITH_CTRL_C = "import signal; signal.signal(signal.SIGINT, signal.default_int_handler); "


@needs_proc
def test_ctrl_c_stops_detect_and_leaves_no_process_behind(tmp_path, weights):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for index in range(48):  # noise: about a second of selective search each, far longer than the test waits
        Image.fromarray(rng.integers(0, 256, (500, 500, 3), dtype=np.uint8)).save(images / f"{index:02d}.png")
    command = [sys.executable, "-c",
               WITH_CTRL_C + "import sys; from detector.cli import detect_main; sys.exit(detect_main(sys.argv[1:]))",
               str(images), "--weights", str(weights), "--set", "test.proposal_workers=2", "--set", "proposals.max_boxes=30",
               "--set", "test.precision=fp32"]
    _assert_ctrl_c_ends_it_cleanly(command)


# Ctrl-C lands just after a worker was forked and before the pool registered it, the moment a
# loaded machine makes likely: the pool must still kill it. The script prints the processes of
# its group forked by the forkserver (workers) still alive a second after the KeyboardInterrupt.
CTRL_C_DURING_WORKER_START = """
import os, signal, time
import multiprocessing.popen_forkserver as forkserver
from detector.common.workers import worker_pool
from tests.test_proposal_workers import _group_members
launch = forkserver.Popen._launch
def launch_then_ctrl_c(self, process_obj):
    launch(self, process_obj)
    os.kill(os.getpid(), signal.SIGINT)
forkserver.Popen._launch = launch_then_ctrl_c
try:
    with worker_pool(1) as pool:
        pool.submit(time.sleep, 60)
        time.sleep(60)
except KeyboardInterrupt:
    time.sleep(1)
    parent = lambda pid: int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
    print([pid for pid in _group_members(os.getpid()) if pid != os.getpid() and parent(pid) != os.getpid()])
"""


@needs_proc
def test_ctrl_c_while_a_worker_starts_still_kills_it():
    run = subprocess.run([sys.executable, "-c", WITH_CTRL_C + CTRL_C_DURING_WORKER_START], cwd=REPO, timeout=120,
                         capture_output=True, text=True, start_new_session=True)
    assert run.returncode == 0 and run.stderr == "", run.stderr
    assert run.stdout.strip() == "[]"


# Each parks a worker process (a proposal pool's, a DataLoader's), prints its pid, then waits.
PARKED_WORKER = {
    "pool": "import time; from detector.common.workers import worker_pool\n"
            "with worker_pool(1) as pool:\n"
            "    pool.submit(time.sleep, 60); print(next(iter(pool._processes)), flush=True); time.sleep(60)",
    "loader": "import time, torch; from torch.utils.data import DataLoader, TensorDataset\n"
              "from detector.common.workers import loader_processes\n"
              "batches = iter(DataLoader(TensorDataset(torch.arange(100)), **loader_processes(1, 'proposals.extract')))\n"
              "print(batches._workers[0].pid, flush=True); time.sleep(60)",
}


@needs_proc
@pytest.mark.parametrize("kind", sorted(PARKED_WORKER))
def test_workers_end_with_a_killed_parent(kind):
    """SIGKILL (no cleanup in the parent) must not leave the workers or their forkserver behind:
    forkserver children keep the server alive and would wait forever on their queues."""
    run = subprocess.Popen([sys.executable, "-c", PARKED_WORKER[kind]], cwd=REPO, start_new_session=True,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        worker = int(run.stdout.readline() or 0)
        assert worker, run.communicate()[1]
        assert worker in _group_members(run.pid)
        run.kill()
        run.wait()  # not communicate(): workers left behind would hold its pipes open
        assert _members_after(run.pid, seconds=15) == []
    finally:
        _kill_group(run)


def _assert_ctrl_c_ends_it_cleanly(command: list[str]) -> None:
    """Run `command` in its own process group, Ctrl-C the group once its two proposal workers
    are up; it must exit 130 saying "interrupted" within 30 s and leave no process behind."""
    run = subprocess.Popen(command, cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           text=True)
    try:
        deadline = time.monotonic() + 60
        while len(_group_members(run.pid)) < 4 and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)  # the command, its worker server and two workers
        assert run.poll() is None, run.communicate()[1]
        os.killpg(run.pid, signal.SIGINT)  # a terminal's Ctrl-C: the whole foreground group
        _, err = run.communicate(timeout=30)
        assert run.returncode == 130 and err.strip().endswith("interrupted"), (run.returncode, err[-2000:])
        assert _members_after(run.pid, seconds=10) == []
    finally:
        _kill_group(run)


def _members_after(group: int, seconds: float) -> list[int]:
    """The live members of process group `group` once it is empty or `seconds` have passed."""
    deadline = time.monotonic() + seconds
    while _group_members(group) and time.monotonic() < deadline:
        time.sleep(0.1)
    return _group_members(group)


def _kill_group(run: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(run.pid, signal.SIGKILL)
    run.communicate()
