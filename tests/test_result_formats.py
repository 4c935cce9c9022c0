"""Other tools' result formats (COCO JSON, VOC comp4, ILSVRC DET, ultralytics labels): round trips
under every metric, ids and conventions, one-line errors naming file and line, `rcnn eval
--detections / --save-format`, `detect --save-format` and the pipeline's eval.save_formats."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from detector.cli import detect_main, main
from detector.common.errors import UserError
from detector.config import load_config
from detector.data.datasets import Dataset, DatasetConfig, ImageRecord, load_dataset
from eval.detections import ImageDetections, save_detections
from eval.metrics import METRICS, score
from eval.result_formats import SAVE_FORMATS, detect_format, read_results, save_results
from tests.synthetic import make_ilsvrc_dataset
from tests.test_detect import _checkpoint


@pytest.fixture(scope="module")
def dataset(tiny_voc) -> Dataset:
    return load_dataset(load_config("tiny", [f"data.root={tiny_voc}"]).data, "test")


def random_detections(dataset: Dataset, seed: int = 0) -> dict[str, ImageDetections]:
    """25 randomly labelled random boxes per image plus its ground truth jittered by ~2 px, with
    random scores (continuous, so no ties); the last image has no detections and is absent."""
    rng = np.random.default_rng(seed)
    dets = {}
    for record in dataset.records[:-1]:
        corner = rng.uniform(0, [record.width, record.height], (25, 2))
        random = np.concatenate([corner, corner + rng.uniform(0.5, 60, (25, 2))], axis=1)
        boxes = np.concatenate([random, record.boxes + rng.normal(0, 2, record.boxes.shape)])
        labels = np.concatenate([rng.integers(0, 2, 25), record.labels])
        dets[record.image_id] = ImageDetections(boxes, rng.random(len(boxes)), labels)
    return dets


def location(files: list[Path], format: str) -> Path:
    """What to pass as --detections for files written by save_results."""
    return files[0].parent if format == "voc" else files[0].parent.parent if format == "yolo" else files[0]


def by_score(det: ImageDetections) -> tuple[np.ndarray, ...]:
    order = np.argsort(-det.scores, kind="stable")
    return det.boxes[order], det.scores[order], det.labels[order]


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("format", SAVE_FORMATS)
def test_every_format_round_trips_to_the_same_map_under_every_metric(dataset, tmp_path, format):
    dets = random_detections(dataset)
    save_detections(tmp_path / "own.npz", dets, dataset.classes, dataset.name)
    own = read_results(tmp_path / "own.npz", dataset)
    files = save_results(tmp_path / "out", format, dets, dataset)
    assert detect_format(location(files, format)) == format
    back = read_results(location(files, format), dataset)

    assert list(back) == list(dets)  # record order; the image without detections stays absent
    for image_id, det in dets.items():
        boxes, scores, labels = by_score(back[image_id])
        expected = by_score(det)
        assert np.array_equal(scores, expected[1]) and np.array_equal(labels, expected[2])
        np.testing.assert_allclose(boxes, expected[0], atol=1e-4)  # detector.data.boxes converts in float32
    for metric in METRICS:
        reference = score(own, dataset, metric).mAP
        assert reference > 0.05, metric  # the jittered ground truth is found
        assert abs(score(back, dataset, metric).mAP - reference) <= 1e-9, metric


def test_files_follow_the_official_layouts(dataset, tmp_path):
    record = dataset.records[0]
    x1, y1, x2, y2 = 10.5, 20.0, 60.25, 80.0
    dets = {record.image_id: ImageDetections([[x1, y1, x2, y2]], [0.75], [1])}
    out = tmp_path / "out"
    for format in SAVE_FORMATS:
        save_results(out, format, dets, dataset)
    root_name = dataset.name.split("/")[0]
    voc = out / "results" / root_name / "Main"
    assert sorted(p.name for p in voc.iterdir()) == ["comp4_det_test_disc.txt", "comp4_det_test_square.txt"]
    assert (voc / "comp4_det_test_square.txt").read_text() == ""
    # 1-based inclusive pixels: continuous [10.5, 20, 60.25, 80] covers pixels 11.5..60.25, 21..80
    assert (voc / "comp4_det_test_disc.txt").read_text() == f"{record.image_id} 0.75 11.5 21.0 60.25 80.0\n"
    assert (out / "ilsvrc_test_results.txt").read_text() == "1 2 0.75 11.5 21.0 60.25 80.0\n"
    (coco,) = json.loads((out / "detections_test_rcnn_results.json").read_text())
    assert coco == {"image_id": record.image_id, "category_id": 2, "bbox": [10.5, 20.0, 49.75, 60.0], "score": 0.75}
    cls, cx, cy, w, h, conf = (out / "labels" / f"{record.path.stem}.txt").read_text().split()
    assert cls == "1" and conf == "0.75"
    assert [float(v) for v in (cx, cy, w, h)] == pytest.approx(
        [(x1 + x2) / 2 / record.width, (y1 + y2) / 2 / record.height, (x2 - x1) / record.width, (y2 - y1) / record.height])
    assert [p.name for p in (out / "labels").iterdir()] == [f"{record.path.stem}.txt"]  # no file without detections


def _record(image_id: str, coco_id: int | None = None) -> ImageRecord:
    return ImageRecord(image_id, Path(f"{image_id}.jpg"), 100, 80, np.zeros((0, 4), np.float32),
                       np.zeros(0, np.int64), np.zeros(0, bool), coco_id)


def test_coco_ids_are_cocos_own_or_the_image_id_and_class_number(tmp_path):
    dets = {"000005": ImageDetections([[1, 2, 3, 4]], [0.5], [1]), "cat_1": ImageDetections([[1, 2, 3, 4]], [0.5], [0])}
    voc = Dataset("v/test", ["a", "b"], ["a", "b"], [_record("000005"), _record("cat_1")])
    (path,) = save_results(tmp_path / "voc", "coco", dets, voc)
    assert [(e["image_id"], e["category_id"]) for e in json.loads(path.read_text())] == [(5, 2), ("cat_1", 1)]
    path.write_text(json.dumps([{"image_id": "000005", "category_id": 2, "bbox": [1, 2, 2, 2], "score": 0.5}]))
    assert list(read_results(path, voc)) == ["000005"]  # the id as a string is understood too

    coco = Dataset("c/val2017", ["a", "b"], ["a", "b"], [_record("42", 42), _record("7", 7)], coco_category_ids=[5, 9])
    dets = {"42": ImageDetections([[1, 2, 3, 4]], [0.5], [1])}
    (path,) = save_results(tmp_path / "coco", "coco", dets, coco)
    assert [(e["image_id"], e["category_id"]) for e in json.loads(path.read_text())] == [(42, 9)]
    assert read_results(path, coco)["42"].labels.tolist() == [1]


def test_ilsvrc_image_index_is_the_split_lists_index(tmp_path):
    root = make_ilsvrc_dataset(tmp_path / "det", splits={"val": 6}, empty_images=0)
    lines = (root / "ImageSets" / "DET" / "val.txt").read_text().splitlines()
    (root / "ImageSets" / "DET" / "val2.txt").write_text("\n".join(lines[1::2]) + "\n")  # indices 2, 4, 6
    (root / "ImageSets" / "DET" / "val_plain.txt").write_text("\n".join(l.split()[0] for l in lines[:2]) + "\n")
    config = DatasetConfig(format="ilsvrc_det", root=str(root), classes=["n00000001", "n00000002"])
    val2 = load_dataset(config, "val2")
    assert [r.list_index for r in val2.records] == [2, 4, 6]
    dets = {r.image_id: ImageDetections(r.boxes, np.linspace(0.9, 0.5, len(r.boxes)), r.labels) for r in val2.records}
    (path,) = save_results(tmp_path / "out", "ilsvrc", dets, val2)
    assert {int(line.split()[0]) for line in path.read_text().splitlines()} == {2, 4, 6}
    assert score(read_results(path, val2), val2, "ilsvrc").mAP == 1.0
    assert [r.list_index for r in load_dataset(config, "val_plain").records] == [1, 2]  # no index column: the line


NAMES = ("my photo", "ünïcødé", "日本 語", "tab\there", "plain")


@pytest.mark.parametrize("format", SAVE_FORMATS)
def test_names_with_spaces_and_non_ascii_read_back_or_are_refused(tmp_path, format):
    """Issue 26 item 4: VOC lines wrote 'my photo' verbatim, which no reader can split."""
    dataset = Dataset("v/test", ["a", "b"], ["a", "b"], [_record(name) for name in NAMES])
    dets = {name: ImageDetections([[i, 2, 30 + i, 40]], [0.5 + i / 10], [i % 2]) for i, name in enumerate(NAMES)}
    if format == "voc":
        with pytest.raises(UserError, match=r"image id 'my photo' is empty or holds whitespace, which VOC result "
                                             r"lines .* cannot hold"):
            save_results(tmp_path, format, dets, dataset)
        assert not (tmp_path / "results").exists()
        names = [name for name in NAMES if name.split() == [name]]  # non-ASCII without whitespace reads back
        dataset.records = [_record(name) for name in names]
        dets = {name: dets[name] for name in names}
    files = save_results(tmp_path, format, dets, dataset)
    back = read_results(location(files, format), dataset)
    assert list(back) == list(dets)
    for name, det in dets.items():
        assert back[name].labels.tolist() == det.labels.tolist() and back[name].scores.tolist() == det.scores.tolist()
        np.testing.assert_allclose(back[name].boxes, det.boxes, atol=1e-4)


def test_detect_refuses_voc_results_for_a_name_with_a_space(tiny_voc, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(tiny_voc / "JPEGImages" / "test_0000.jpg", images / "my photo.jpg")
    assert detect_main([str(images), "--weights", str(tmp_path / "not-loaded.pt"), "--out", str(tmp_path / "out"),
                        "--save-format", "yolo", "voc"]) == 2  # refused before the model is read
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--save-format voc: image id 'my photo' is empty or holds whitespace" in err[0]


# --------------------------------------------------------------------------- errors


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


GOOD_VOC = "test_0000 0.9 11 21 60 80\n"


@pytest.mark.parametrize("name, text, message", [
    ("comp4_det_test_square.txt", GOOD_VOC + "test_0000 0.9 11 21 60\n", r":2: expected 6 fields 'image_id score"),
    ("comp4_det_test_square.txt", GOOD_VOC + "\ntest_9999 0.9 11 21 60 80\n", r":3: image 'test_9999' is not in"),
    ("comp4_det_test_square.txt", GOOD_VOC + "test_0001 nan 11 21 60 80\n", r":2: a number is NaN or infinite"),
    ("comp4_det_test_square.txt", GOOD_VOC + "test_0001 0.5 11 21 8 80\n", r":2: inverted box"),
    ("comp4_det_test_square.txt", "test_0001 0.5 11 21 x 80\n", r":1: expected numbers, got '0.5 11 21 x 80'"),
    ("ilsvrc.txt", "1 1 0.9 11 21 60 80\n1 3 0.9 11 21 60 80\n", r":2: class_index 3 is not in 1\.\.2"),
    ("ilsvrc.txt", "9 1 0.9 11 21 60 80\n", r":1: image_index 9 is not an image of"),
    ("ilsvrc.txt", "1 1.5 0.9 11 21 60 80\n", r":1: class_index '1\.5' is not a whole number"),
    ("labels/test_0000.txt", "0 0.5 0.5 0.2 0.2\n", r":1: expected 6 fields 'class cx cy w h conf' \(ultralytics: "
                                                    r"predict with save_conf=True\)"),
    ("labels/test_0000.txt", "0 0.5 0.5 0.2 0.2 0.9\n7 0.5 0.5 0.2 0.2 0.9\n", r":2: class 7 is not in 0\.\.1"),
    ("labels/test_0000.txt", "0 0.5 0.5 -0.2 0.2 0.9\n", r":1: inverted box"),
    ("labels/cat.txt", "0 0.5 0.5 0.2 0.2 0.9\n", r": image 'cat' is not in"),
    ("comp4_det_test_square.txt", "test_0001 0.5 11 21 1e400 80\n", r":1: a number is out of range"),
    ("comp4_det_test_square.txt", "test_0001 0.5 -inf 21 8 80\n", r":1: a number is NaN or infinite \('-inf'\)"),
    ("ilsvrc.txt", "1 1 0.9 11 21 1e39 80\n", r":1: a number is out of range"),
    ("ilsvrc.txt", "1 1 nan 11 21 60 80\n", r":1: a number is NaN or infinite"),
    ("labels/test_0000.txt", "0 0.5 0.5 0.2 1e300 0.9\n", r":1: a number is out of range"),
    ("labels/test_0000.txt", "0 0.5 0.5 0.2 1e37 0.9\n", r":1: a box is out of range once converted to pixels"),
])
def test_bad_text_lines_name_the_file_and_line(dataset, tmp_path, name, text, message):
    path = _write(tmp_path / name, text)
    spec = tmp_path if name.startswith("labels") else path
    with pytest.raises(UserError, match=re.escape(str(path)) + message):
        read_results(spec, dataset)


@pytest.mark.parametrize("entry, message", [
    ({"image_id": "test_0000", "category_id": 1, "score": 0.5}, r"results\[1\]: expected \{image_id, category_id"),
    ({"image_id": "test_0000", "category_id": 3, "bbox": [1, 2, 3, 4], "score": 0.5}, r"results\[1\]: category_id 3"),
    ({"image_id": "nope", "category_id": 1, "bbox": [1, 2, 3, 4], "score": 0.5}, r"results\[1\]: image_id 'nope'"),
    ({"image_id": "test_0000", "category_id": 1, "bbox": [1, 2, 3], "score": 0.5}, r"results\[1\]: bbox must be"),
    ({"image_id": "test_0000", "category_id": 1, "bbox": [1, 2, -3, 4], "score": 0.5}, r"results\[1\]: inverted box"),
    ({"image_id": "test_0000", "category_id": 1, "bbox": [1, 2, 3, 4], "score": None}, r"results\[1\]: expected numbers"),
    ({"image_id": "test_0000", "category_id": 1, "bbox": [1, 2, 10**400, 4], "score": 0.5},
     r"results\[1\]: a number is out of range"),
    ({"image_id": "test_0000", "category_id": 1, "bbox": [1, 2, 3, 4], "score": float("nan")},
     r"results\[1\]: a number is NaN or infinite \(nan\)"),
    ({"image_id": "test_0000", "category_id": 1, "bbox": [3e38, 2, 3e38, 4], "score": 0.5},
     r"results\[1\]: a box is out of range once converted"),
    ({"image_id": "test_0000", "category_id": 1, "bbox": [1, 2, "3", True], "score": 0.5},
     r"results\[1\]: expected numbers"),
    ({"image_id": ["test_0000"], "category_id": 1, "bbox": [1, 2, 3, 4], "score": 0.5},
     r"results\[1\]: image_id \['test_0000'\] is not in"),
])
def test_bad_coco_entries_name_the_file_and_entry(dataset, tmp_path, entry, message):
    good = {"image_id": "test_0001", "category_id": 2, "bbox": [1, 2, 3, 4], "score": 0.5}
    path = _write(tmp_path / "results.json", json.dumps([good, entry]))
    with pytest.raises(UserError, match=re.escape(str(path)) + ": " + message):
        read_results(path, dataset)


@pytest.mark.parametrize("text, message", [
    ("[" * 100_000 + "]" * 100_000, r"malformed JSON \(nested too deeply\)"),
    ('[{"image_id": "test_0000", "category_id": 1, "bbox": [1, 2, 3, 4], "score": 1' + "0" * 5000 + "}]",
     r"malformed JSON \(Exceeds the limit|results\[0\]: a number is out of range"),  # the latter before 3.10.7
    ('[{"image_id": "test_0000", "category_id": 1, "bbox": [1, 2, 3, 4], "score": 1' + "0" * 400 + "}]",
     r"results\[0\]: a number is out of range"),
])
def test_hostile_coco_results_are_one_line(dataset, tmp_path, eval_args, text, message, capsys):
    path = _write(tmp_path / "results.json", text)
    assert main([*eval_args, "--detections", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(re.escape(f"{path}: ") + f"({message})", err[0]), err


def test_a_detections_json_nested_too_deeply_is_one_line(dataset, tmp_path):
    path = _write(tmp_path / "own.json", '{"meta": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(UserError, match="not a detections file written by save_detections"):
        read_results(path, dataset, "rcnn")


def test_voc_files_of_another_split_or_class_are_refused(dataset, tmp_path):
    _write(tmp_path / "a" / "comp4_det_train_square.txt", GOOD_VOC)
    with pytest.raises(UserError, match=r"comp4_det_train_square.txt: results for split 'train', not 'test'"):
        read_results(str(tmp_path / "a" / "*_det_*.txt"), dataset)
    with pytest.raises(UserError, match=r"no VOC result files for split test"):
        read_results(tmp_path / "a", dataset, "voc")  # a folder contributes only the split's files
    _write(tmp_path / "b" / "comp4_det_test_cat.txt", GOOD_VOC)
    with pytest.raises(UserError, match=r"comp4_det_test_cat.txt: 'cat' is not a class of"):
        read_results(tmp_path / "b", dataset)
    _write(tmp_path / "c" / "comp3_det_test_square.txt", GOOD_VOC)
    _write(tmp_path / "c" / "comp4_det_test_square.txt", GOOD_VOC)
    with pytest.raises(UserError, match=r"a second result file for class 'square'"):
        read_results(tmp_path / "c", dataset)
    assert len(read_results(str(tmp_path / "c" / "comp4_*"), dataset)["test_0000"]) == 1


def test_format_detection(dataset, tmp_path):
    save_detections(tmp_path / "own.json", {}, dataset.classes, dataset.name)
    _write(tmp_path / "coco.json", "  [ ]")
    _write(tmp_path / "sub.txt", "1 1 0.9 11 21 60 80\n")
    _write(tmp_path / "one_det_file.txt", GOOD_VOC)
    _write(tmp_path / "pred" / "labels" / "x.txt", "")
    assert [detect_format(tmp_path / n) for n in ("own.json", "coco.json", "sub.txt", "one_det_file.txt", "pred")] == \
        ["rcnn", "coco", "ilsvrc", "voc", "yolo"]
    assert detect_format(str(tmp_path / "*_det_*.txt")) == "voc"
    with pytest.raises(UserError, match="missing: no such results file or folder"):
        detect_format(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="empty: no result files in it"):
        detect_format(tmp_path / "empty")


# --------------------------------------------------------------------------- commands


@pytest.fixture
def eval_args(tiny_voc, tmp_path) -> list[str]:
    return ["eval", "--config", "tiny", "--set", f"data.root={tiny_voc}", "--set", f"output_dir={tmp_path}/run"]


def test_rcnn_eval_reads_and_writes_every_format(dataset, tmp_path, eval_args, capsys):
    dets = random_detections(dataset)
    save_detections(tmp_path / "own.npz", dets, dataset.classes, dataset.name)
    assert main([*eval_args, "--detections", str(tmp_path / "own.npz"), "--save-format", *SAVE_FORMATS,
                 "--metric", "voc07", "--out", str(tmp_path / "own")]) == 0
    printed = capsys.readouterr().out
    expected = json.loads((tmp_path / "own" / "metrics.json").read_text())["mAP"]
    for format, written in [("coco", "own/detections_test_rcnn_results.json"), ("voc", "own/results"),
                            ("ilsvrc", "own/ilsvrc_test_results.txt"), ("yolo", "own/labels")]:
        assert f"{format} results: {tmp_path / written}" in printed
    voc = next((tmp_path / "own" / "results").iterdir()) / "Main"
    for format, spec in [("coco", "own/detections_test_rcnn_results.json"), ("voc", voc),
                         ("ilsvrc", "own/ilsvrc_test_results.txt"), ("yolo", "own")]:
        out = tmp_path / format
        assert main([*eval_args, "--detections", str(tmp_path / spec), "--metric", "voc07", "--out", str(out)]) == 0
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["mAP"] == pytest.approx(expected, abs=1e-9), format
    capsys.readouterr()
    assert main([*eval_args, "--detections", str(tmp_path / "own" / "labels"), "--format", "coco"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "labels: cannot read it" in err


def test_rcnn_eval_save_formats_from_the_config_and_bad_names(dataset, tmp_path, eval_args, capsys):
    save_detections(tmp_path / "own.npz", random_detections(dataset), dataset.classes, dataset.name)
    base = [*eval_args, "--detections", str(tmp_path / "own.npz"), "--out", str(tmp_path / "out")]
    assert main([*base, "--set", "eval.save_formats=[yolo]"]) == 0
    assert len(list((tmp_path / "out" / "labels").iterdir())) == len(dataset.records) - 1
    assert main([*base, "--set", "eval.save_formats=[pascal]"]) == 2
    assert "eval.save_formats: 'pascal' is not a results format" in capsys.readouterr().err


def test_detect_save_format_files_score_alike_in_rcnn_eval(tiny_voc, tmp_path, eval_args, capsys):
    images = tmp_path / "images"
    images.mkdir()
    for path in sorted((tiny_voc / "JPEGImages").glob("test_*.jpg")):
        shutil.copy(path, images / path.name)
    weights = _checkpoint(tmp_path / "model.pt")
    out = tmp_path / "out"
    assert detect_main([str(images), "--weights", str(weights), "--out", str(out), "--save-format", *SAVE_FORMATS,
                        "--set", "proposals.max_boxes=30", "--set", "test.score_threshold=0"]) == 0
    specs = {"coco": out / "detections_test_rcnn_results.json", "voc": out / "results" / "detect" / "Main",
             "ilsvrc": out / "ilsvrc_test_results.txt", "yolo": out}
    values = []
    for format, spec in specs.items():
        assert main([*eval_args, "--detections", str(spec), "--out", str(tmp_path / format)]) == 0
        values.append(json.loads((tmp_path / format / "metrics.json").read_text())["mAP"])
    assert values[0] > 0 and values == pytest.approx([values[0]] * 4, abs=1e-9)
    assert detect_main([str(images), "--weights", str(weights), "--save-format", "voc"]) == 2
    assert "--save-format writes into the --out folder" in capsys.readouterr().err


def test_pipeline_writes_eval_save_formats_beside_the_detections(tiny_voc, tmp_path, capsys):
    workdir = tmp_path / "run"
    args = ["run", "--config", "tiny", "--workdir", str(workdir), "--set", f"data.root={tiny_voc}",
            "--set", "eval.save_formats=[coco, voc, ilsvrc, yolo]", "--set", "proposals.max_boxes=30"]
    assert main(args) == 0
    dataset = load_dataset(load_config(workdir / "config.yaml").data, "test")
    expected = json.loads((workdir / "eval" / "test" / "metrics.json").read_text())["mAP"]
    assert expected > 0
    folder = workdir / "detections_test"
    voc = folder / "results" / dataset.name.split("/")[0] / "Main"
    for spec in (folder / "detections_test_rcnn_results.json", voc, folder / "ilsvrc_test_results.txt", folder):
        assert score(read_results(spec, dataset), dataset, "voc10").mAP == pytest.approx(expected, abs=1e-9)
    outputs = json.loads((workdir / "stages" / "detect-test.json").read_text())["outputs"]
    assert next(iter(outputs)) == "detections_test.npz" and "detections_test/ilsvrc_test_results.txt" in outputs
    label = next((folder / "labels").iterdir())
    label.unlink()
    assert main(args) == 0  # a missing output redoes the detection unit (from its per-image cache)
    assert label.is_file()
