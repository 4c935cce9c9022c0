"""Output folders never delete or overwrite what the project did not write (issue 26, item 1):
--save-format's labels/ and Main/ folders, detect --out over its inputs or the user's files,
inputs with one file name, two processes writing one folder at once, and atomic writes that
leave the process umask alone."""
from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from detector.cli import detect_main
from detector.common import atomic
from detector.common.atomic import OUTPUTS_FILE, OutputFolder, fresh_folder, write_text
from detector.common.errors import UserError
from eval.result_formats import read_results, save_results
from tests import output_worker
from tests.test_detect import _checkpoint

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return _checkpoint(tmp_path_factory.mktemp("weights") / "model.pt")


@pytest.fixture
def images(tiny_voc, tmp_path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("test_0000.jpg", "test_0001.jpg"):
        (folder / name).write_bytes((tiny_voc / "JPEGImages" / name).read_bytes())
    return folder


def _detect(images: Path, weights: Path, *extra: str) -> int:
    return detect_main([str(images), "--weights", str(weights), "--set", "proposals.max_boxes=20", *extra])


def _one_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


# --------------------------------------------------------------------------- --save-format folders


@pytest.mark.parametrize("format, folder", [("yolo", "labels"), ("voc", "results/detect/Main")])
def test_save_format_keeps_the_users_file_in_its_folder(images, weights, tmp_path, capsys, format, folder):
    """The issue's example: a ground-truth file in o/labels survived nothing before."""
    out = tmp_path / "o"
    (out / folder).mkdir(parents=True)
    mine = out / folder / "my_ground_truth.txt"
    mine.write_text("gt\n")
    assert _detect(images, weights, "--out", str(out), "--save-format", format) == 2
    assert f"{mine}: not written by googlenet-rcnn" in _one_line(capsys)
    assert mine.read_text() == "gt\n"
    assert not (out / "test_0000.jpg").exists()  # refused before any work


def test_save_results_replaces_its_own_files_only(tmp_path):
    dataset = output_worker.split()
    first = save_results(tmp_path, "yolo", output_worker.detections(1), dataset)
    assert sorted(p.name for p in first) == ["a.txt", "b.txt"]
    second = save_results(tmp_path, "yolo", output_worker.detections(2), dataset)  # a, b have none now
    assert sorted(p.name for p in (tmp_path / "labels").iterdir()) == sorted(p.name for p in second) == ["c.txt", "d.txt"]
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "detections_test_rcnn_results.json").write_text("[]")  # not the project's
    with pytest.raises(UserError, match="detections_test_rcnn_results.json: exists and was not written by"):
        save_results(tmp_path, "coco", output_worker.detections(1), dataset)
    assert (tmp_path / "detections_test_rcnn_results.json").read_text() == "[]"
    (tmp_path / "detections_test_rcnn_results.json").unlink()
    save_results(tmp_path, "coco", output_worker.detections(1), dataset)
    save_results(tmp_path, "coco", output_worker.detections(2), dataset)  # its own: replaced
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert sorted(read_results(tmp_path / "detections_test_rcnn_results.json", dataset)) == ["c", "d"]


def test_a_folder_written_whole_must_be_a_folder(tmp_path):
    (tmp_path / "labels").write_text("a file")
    with pytest.raises(UserError, match="labels: exists and is not a folder"):
        save_results(tmp_path, "yolo", output_worker.detections(1), output_worker.split())
    assert (tmp_path / "labels").read_text() == "a file"


# --------------------------------------------------------------------------- detect --out


def test_detect_refuses_an_output_that_would_overwrite_an_input(images, weights, capsys):
    before = (images / "test_0000.jpg").read_bytes()
    assert _detect(images, weights, "--out", str(images)) == 2
    assert "test_0000.jpg: is the input" in _one_line(capsys)
    assert (images / "test_0000.jpg").read_bytes() == before and not (images / "test_0000.json").exists()
    assert _detect(images, weights, "--coco-json", str(images / "test_0001.jpg")) == 2  # an input, even named exactly
    assert "test_0001.jpg: is the input" in _one_line(capsys)


def test_detect_refuses_to_overwrite_a_file_it_did_not_write(images, weights, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "test_0001.json").write_text("my notes")
    assert _detect(images, weights, "--out", str(out)) == 2
    assert "test_0001.json: exists and was not written by googlenet-rcnn" in _one_line(capsys)
    assert (out / "test_0001.json").read_text() == "my notes"
    (out / "test_0001.json").unlink()
    assert _detect(images, weights, "--out", str(out)) == 0
    assert _detect(images, weights, "--out", str(out)) == 0  # its own files: replaced
    assert {p.name for p in out.iterdir()} == {"test_0000.jpg", "test_0000.json", "test_0001.jpg",
                                               "test_0001.json", OUTPUTS_FILE}


def test_detect_refuses_inputs_with_one_file_name(images, weights, tmp_path, capsys):
    (images / "test_0000.png").write_bytes((images / "test_0001.jpg").read_bytes())
    assert _detect(images, weights, "--out", str(tmp_path / "out")) == 2
    assert "--out: 2 inputs are named 'test_0000'" in _one_line(capsys)
    assert not (tmp_path / "out").exists()
    assert _detect(images, weights) == 0  # nothing written: no clash


# --------------------------------------------------------------------------- two processes, one folder


def _two_processes(mode: str, folder: Path, loops: int) -> list[list[str]]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    processes = [subprocess.Popen([sys.executable, "-m", "tests.output_worker", mode, str(folder), str(tag), str(loops)],
                                  cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for tag in (1, 2)]
    deadline = time.monotonic() + 120
    while not all((folder.parent / f"ready-{tag}").exists() for tag in (1, 2)) and time.monotonic() < deadline:
        time.sleep(0.01)
    (folder.parent / "go").touch()
    results = [process.communicate(timeout=300) for process in processes]
    for process, (_, err) in zip(processes, results):
        assert process.returncode == 0, err
    return [out.splitlines() for out, _ in results]


def test_two_processes_save_results_into_one_folder(tmp_path):
    """36 of 600 calls raised FileNotFoundError / ENOTEMPTY when the folders were swapped whole."""
    folder = tmp_path / "out"
    lines = _two_processes("results", folder, loops=40)
    assert all(line.endswith(" ok") for both in lines for line in both) and sum(map(len, lines)) == 80
    dataset = output_worker.split()
    for spec in (folder / "detections_test_rcnn_results.json", folder / "results" / "set" / "Main",
                 folder / "ilsvrc_test_results.txt", folder):
        assert sorted(read_results(spec, dataset)) in (["a", "b"], ["c", "d"])  # one process's, whole
    assert not [p for p in folder.rglob("*") if ".tmp" in p.name]


def test_two_processes_make_one_fresh_folder(tmp_path):
    """Before: the second rename removed the first process's finished folder, or failed with ENOTEMPTY."""
    folder = tmp_path / "out"
    folder.mkdir()
    first, second = _two_processes("fresh", folder, loops=40)
    for i, (a, b) in enumerate(zip(first, second)):
        outcomes = sorted([a.split(" ", 2)[1], b.split(" ", 2)[1]])
        assert outcomes == ["ok", "refused"], (a, b)  # exactly one made it, the other was told
        winner = 1 if a.endswith(" ok") else 2
        assert (folder / str(i) / "tag.txt").read_text() == str(winner)
    assert sorted(p.name for p in folder.iterdir()) == sorted(str(i) for i in range(40))


def test_fresh_folder_never_removes_a_filled_target(tmp_path):
    target = tmp_path / "t"
    target.mkdir()
    (target / "theirs.txt").write_text("x")
    with pytest.raises(UserError, match="exists and is not an empty folder"):
        with fresh_folder(target) as tmp:
            (tmp / "mine.txt").write_text("y")
    assert [p.name for p in target.iterdir()] == ["theirs.txt"] and [p.name for p in tmp_path.iterdir()] == ["t"]


# --------------------------------------------------------------------------- the umask


def test_atomic_writes_leave_the_umask_alone(tmp_path, monkeypatch):
    """os.umask(0) for a moment made another thread's new files world-writable."""
    old = os.umask(0o027)
    try:
        def refuse(mask):
            raise AssertionError("the process umask was changed")

        monkeypatch.setattr(atomic.os, "umask", refuse)
        write_text(tmp_path / "a.txt", "x")
        OutputFolder(tmp_path / "out").write_text("b.txt", "y")
    finally:
        monkeypatch.undo()
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "out" / "b.txt").stat().st_mode) == 0o640


def test_an_unreadable_outputs_list_is_refused_not_ignored(tmp_path):
    folder = OutputFolder(tmp_path)
    folder.write_text("a.txt", "x")
    (tmp_path / OUTPUTS_FILE).write_text("{oops")
    with pytest.raises(UserError, match=f"{OUTPUTS_FILE}: unreadable list"):
        folder.write_text("a.txt", "y")
    assert (tmp_path / "a.txt").read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([OUTPUTS_FILE, "a.txt"])
