"""Dataset readers: VOC, ILSVRC DET and COCO layouts into one record type, bad input named."""
from __future__ import annotations

import json
import logging
import shutil
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from detector.common.errors import AnnotationError, UserError
from detector.data.datasets import DatasetConfig, load_dataset, read_class_file
from tests.synthetic import make_ilsvrc_dataset, make_voc_dataset


def voc_config(root, **kwargs) -> DatasetConfig:
    return DatasetConfig(format="voc", root=str(root), classes=["square", "disc"], **kwargs)


@pytest.fixture()
def voc(tmp_path):
    return make_voc_dataset(tmp_path / "voc", {"train": 3})


def _set_first_box(root, image_id, values):
    path = root / "Annotations" / f"{image_id}.xml"
    tree = ET.parse(path)
    box = tree.getroot().find("object/bndbox")
    for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), values):
        box.find(tag).text = str(value)
    tree.write(path)


def test_voc_reader_converts_inclusive_boxes(voc):
    dataset = load_dataset(voc_config(voc), "train")
    assert len(dataset.records) == 3 and dataset.classes == ["square", "disc"]
    record = dataset.records[0]
    xml = ET.parse(voc / "Annotations" / f"{record.image_id}.xml").getroot().find("object/bndbox")
    xmin, ymin, xmax, ymax = (int(xml.findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax"))
    assert record.boxes[0].tolist() == [xmin - 1, ymin - 1, xmax, ymax]
    assert record.boxes.dtype == np.float32 and record.labels.dtype == np.int64
    assert (record.width, record.height) == (160, 120) and record.path.is_file()


def test_difficult_becomes_ignore(voc):
    path = voc / "Annotations" / "train_0000.xml"
    path.write_text(path.read_text().replace("<difficult>0</difficult>", "<difficult>1</difficult>", 1))
    record = load_dataset(voc_config(voc), "train").records[0]
    assert record.ignore.tolist()[0] is True


def test_unknown_class_is_an_error_or_skipped(voc):
    with pytest.raises(AnnotationError, match=r"train_0000.xml.*'square'"):
        load_dataset(DatasetConfig(root=str(voc), classes=["disc", "cat"]), "train")
    dataset = load_dataset(DatasetConfig(root=str(voc), classes=["disc", "cat"], skip_unknown_classes=True), "train")
    assert all(set(r.labels.tolist()) <= {0} for r in dataset.records)


def test_box_outside_image_is_clipped_with_warning(voc, caplog):
    _set_first_box(voc, "train_0000", (-20, 5, 400, 50))
    with caplog.at_level(logging.WARNING):
        record = load_dataset(voc_config(voc), "train").records[0]
    assert record.boxes[0].tolist() == [0, 4, 160, 50]
    assert "clipped 1 box" in caplog.text
    with pytest.raises(AnnotationError, match="train_0000.xml: box 0 is outside"):
        load_dataset(voc_config(voc, invalid_boxes="error"), "train")


def test_inverted_box_is_dropped_with_warning(voc, caplog):
    before = len(load_dataset(voc_config(voc), "train").records[0].boxes)
    _set_first_box(voc, "train_0000", (50, 50, 10, 10))
    with caplog.at_level(logging.WARNING):
        record = load_dataset(voc_config(voc), "train").records[0]
    assert len(record.boxes) == before - 1 and "dropped 1" in caplog.text


@pytest.mark.parametrize(
    "breakage, message",
    [
        (lambda root: (root / "Annotations" / "train_0001.xml").write_text("<annotation><size>"), "train_0001.xml: malformed XML"),
        (lambda root: (root / "JPEGImages" / "train_0001.jpg").unlink(), "train_0001.jpg does not exist"),
        (lambda root: (root / "Annotations" / "train_0001.xml").unlink(), "train_0001.xml: annotation file not found"),
        (lambda root: (root / "ImageSets" / "Main" / "train.txt").unlink(), "train.txt: split file not found"),
        (lambda root: shutil.rmtree(root), "dataset root not found"),
    ],
)
def test_broken_voc_sets_name_the_file(voc, breakage, message):
    breakage(voc)
    with pytest.raises(UserError, match=message):
        load_dataset(voc_config(voc), "train")


@pytest.mark.parametrize("tag, value, message", [
    ("xmax", "inf", "<xmax> is NaN or infinite ('inf')"),
    ("xmax", "1e400", "<xmax> is out of range"),
    ("ymin", "nan", "<ymin> is NaN or infinite ('nan')"),
    ("width", "inf", "<width> is NaN or infinite ('inf')"),
    ("height", "-1e999", "<height> is out of range"),
    ("xmin", "12 px", "<xmin> is not a number ('12 px')"),
])
def test_voc_numbers_that_are_no_finite_numbers_exit_2_with_one_line(voc, capsys, tag, value, message):
    """`<xmax>inf</xmax>`, 1e400 and `<width>inf</width>` raised OverflowError in _xml_int."""
    from detector.cli import main

    path = voc / "Annotations" / "train_0001.xml"
    tree = ET.parse(path)
    next(tree.getroot().iter(tag)).text = value
    tree.write(path)
    assert main(["data", "--config", "tiny", "--set", f"data.root={voc}", "--split", "train"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"train_0001.xml: {message}" in err[0], err


def test_class_list_validation(tmp_path):
    with pytest.raises(UserError, match="exactly one"):
        load_dataset(DatasetConfig(root=str(tmp_path), classes=["a"], class_file="voc20"), "train")
    ids, names = read_class_file("ilsvrc_det200")
    assert len(ids) == 200 and ids[0] == "n02672831" and names[0] == "accordion"
    assert read_class_file("voc20")[0][-1] == "tvmonitor"
    with pytest.raises(UserError, match="not a preset"):
        read_class_file(str(tmp_path / "missing.txt"))


def test_ilsvrc_reader_keeps_empty_images(tmp_path):
    root = make_ilsvrc_dataset(tmp_path / "det", splits={"val1": 4, "train": 3}, empty_images=1)
    config = DatasetConfig(format="ilsvrc_det", root=str(root), classes=["n00000001", "n00000002"])
    val1 = load_dataset(config, "val1")
    assert len(val1.records) == 4
    assert len(val1.records[0].boxes) == 0 and val1.records[0].path.suffix == ".JPEG"
    assert all(len(r.boxes) > 0 for r in val1.records[1:])
    assert len(load_dataset(config, "train").records) == 3
    with pytest.raises(UserError, match="must start with train, val or test"):
        load_dataset(config, "extra")


def _coco_json(tmp_path, images=2):
    data = {
        "images": [{"id": i + 1, "file_name": f"{i}.jpg", "width": 100, "height": 80} for i in range(images)],
        "categories": [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 3, "bbox": [10, 10, 20, 30], "area": 600, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 7, "bbox": [50, 5, 40, 40], "area": 1600, "iscrowd": 1},
            {"id": 3, "image_id": 2, "category_id": 7, "bbox": [0, 0, 120, 10], "area": 1000, "iscrowd": 0},
        ],
    }
    path = tmp_path / "annotations" / "instances_val.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def test_coco_reader(tmp_path):
    _coco_json(tmp_path)
    config = DatasetConfig(format="coco", root=str(tmp_path), classes=["dog", "cat"])
    dataset = load_dataset(config, "val")
    first, second = dataset.records
    assert first.coco_id == 1 and first.path == tmp_path / "val" / "0.jpg"
    assert first.boxes.tolist() == [[10, 10, 30, 40], [50, 5, 90, 45]]
    assert first.labels.tolist() == [1, 0] and first.ignore.tolist() == [False, True]
    assert second.boxes.tolist() == [[0, 0, 100, 10]]  # clipped to the 100-pixel width
    assert dataset.coco_category_ids == [7, 3]


def test_coco_bad_input(tmp_path):
    path = _coco_json(tmp_path)
    config = DatasetConfig(format="coco", root=str(tmp_path), classes=["dog", "horse"])
    with pytest.raises(AnnotationError, match=r"instances_val.json: configured classes not in its categories: \['horse'\]"):
        load_dataset(config, "val")
    path.write_text("{not json")
    with pytest.raises(AnnotationError, match="instances_val.json: malformed JSON"):
        load_dataset(DatasetConfig(format="coco", root=str(tmp_path), classes=["dog"]), "val")


def _broken_coco(tmp_path, change) -> DatasetConfig:
    path = _coco_json(tmp_path)
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))  # NaN and Infinity as Python's json writes (and reads) them
    return DatasetConfig(format="coco", root=str(tmp_path), classes=["dog", "cat"])


def _set(data, where, key, value):
    data[where[0]][where[1]][key] = value


@pytest.mark.parametrize("change, message", [
    (lambda d: _set(d, ("annotations", 0), "bbox", [10, float("nan"), 20, 30]),
     "annotation 1 bbox: a number is NaN or infinite (nan)"),
    (lambda d: _set(d, ("annotations", 0), "bbox", [10, 10, 10**400, 30]), "annotation 1 bbox: a number is out of range"),
    (lambda d: _set(d, ("annotations", 0), "bbox", [3e38, 10, 3e38, 30]), "image 1: box 0 [3e+38, 10, inf, 40] is NaN, infinite or out of range after conversion"),
    (lambda d: _set(d, ("annotations", 0), "bbox", "10 10 20 30"), "annotation 1: bbox must be [x, y, width, height]"),
    (lambda d: _set(d, ("annotations", 0), "bbox", [10, "10", 20, 30]), "annotation 1 bbox: expected numbers"),
    (lambda d: _set(d, ("annotations", 0), "area", float("inf")), "annotation 1: area is NaN or infinite"),
    (lambda d: _set(d, ("annotations", 0), "category_id", "3"), "annotation 1 has category '3' outside"),
    (lambda d: _set(d, ("images", 1), "height", float("nan")), "image 2: height is NaN or infinite (nan)"),
    (lambda d: _set(d, ("images", 1), "width", 10**400), "image 2: width is out of range"),
    (lambda d: _set(d, ("images", 1), "width", 0), "image 2: width 0 is not a positive number of pixels"),
    (lambda d: _set(d, ("images", 1), "file_name", 7), "image 2: file_name must be text"),
])
def test_coco_numbers_are_checked_whatever_data_invalid_boxes_says(tmp_path, change, message):
    """A NaN ground-truth box was kept (`<=` is false for NaN), so a perfect detection scored 0.0."""
    config = _broken_coco(tmp_path, change)
    for policy in ("clip", "error"):
        config.invalid_boxes = policy
        with pytest.raises(AnnotationError) as caught:
            load_dataset(config, "val")
        assert "instances_val.json" in str(caught.value) and message in str(caught.value)


@pytest.mark.parametrize("text, message", [
    ('{"images": ' + "[" * 100_000 + "]" * 100_000 + "}", "malformed JSON (nested too deeply)"),
    ('{"images": [{"id": 1' + "0" * 5000 + "}]}", "malformed JSON"),
])
def test_hostile_coco_json_is_one_line(tmp_path, capsys, text, message):
    from detector.cli import main

    path = _coco_json(tmp_path)
    path.write_text(text)
    assert main(["data", "--config", "tiny", "--set", "data.format=coco", "--set", f"data.root={tmp_path}",
                 "--set", "data.classes=[dog]", "--split", "val"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "instances_val.json" in err[0], err


@pytest.mark.shared
def test_animals_voc_counts_match_the_xml(animals_voc):
    """The shared set's README: train 182 images / 242 objects, test 91 / 123."""
    config = DatasetConfig(root=str(animals_voc), classes=["raccoon", "kangaroo"])
    for split, images, objects in (("train", 182, 242), ("test", 91, 123)):
        dataset = load_dataset(config, split)
        counts = dataset.object_counts()
        expected = dict.fromkeys(dataset.classes, 0)
        for record in dataset.records:
            for obj in ET.parse(animals_voc / "Annotations" / f"{record.image_id}.xml").getroot().iter("object"):
                expected[obj.findtext("name")] += 1
        assert len(dataset.records) == images and sum(counts.values()) == objects
        assert counts == expected
