"""The ultralytics (YOLO) data set reader: data.yaml resolution, label files, sizes, errors."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from detector.common.errors import UserError
from detector.data.datasets import DatasetConfig, load_dataset
from detector.data.images import image_size, load_image
from detector.data.yolo import label_path
from tests.conftest import SHARED_DATA
from tests.synthetic import CLASSES, make_voc_dataset, make_yolo_dataset

AQUARIUM = SHARED_DATA / "aquarium"
#: ../shared/data/aquarium/README.md: images, boxes and boxes per class of each split.
AQUARIUM_COUNTS = {
    "train": (448, 3324, [1961, 385, 330, 175, 259, 78, 136]),
    "val": (127, 909, [459, 155, 104, 74, 57, 27, 33]),
    "test": (63, 584, [249, 154, 82, 35, 38, 11, 15]),
}


def _yolo(root: Path, **changes) -> DatasetConfig:
    return DatasetConfig(format="yolo", root=str(root), **changes)


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _image(path: Path, size=(40, 30), exif=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (90, 120, 150)).save(path, exif=exif) if exif else Image.new("RGB", size).save(path)
    return path


@pytest.fixture
def tiny_yolo(tmp_path) -> Path:
    return make_yolo_dataset(tmp_path / "yolo")


def test_reads_the_same_records_as_the_voc_layout_of_the_same_images(tiny_yolo, tmp_path):
    voc_root = make_voc_dataset(tmp_path / "voc", splits={"train": 8, "val": 4})
    for split in ("train", "val"):
        yolo = load_dataset(_yolo(tiny_yolo), split)
        voc = load_dataset(DatasetConfig(root=str(voc_root), classes=list(CLASSES)), split)
        assert yolo.name == f"yolo/{split}" and yolo.classes == list(CLASSES)
        assert [r.image_id for r in yolo.records] == [r.image_id for r in voc.records]
        for a, b in zip(yolo.records, voc.records):
            assert (a.width, a.height) == (b.width, b.height) == (160, 120)
            np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-4)
            assert a.labels.tolist() == b.labels.tolist() and not a.ignore.any()
            assert a.path == tiny_yolo / split / "images" / f"{a.image_id}.jpg"


def test_data_yaml_names_dict_path_list_of_folders_and_roboflow_parent_entries(tmp_path):
    root = tmp_path / "set"
    for name in ("a", "b"):
        _image(root / "one" / "images" / f"{name}.jpg")
        _write(root / "one" / "labels" / f"{name}.txt", "1 0.5 0.5 0.5 0.5")  # no final newline
    _image(root / "two" / "images" / "sub" / "c.png")  # folders are searched recursively; no label: no objects
    _image(root / "three" / "images" / "d.jpg")
    _write(root / "three" / "labels" / "d.txt", "")  # empty: no objects
    _write(tmp_path / "yamls" / "data.yaml", yaml.safe_dump({
        "path": "../set", "train": ["one/images", "two/images"], "val": "../three/images",
        "names": {0: "cat", 1: "dog"},
    }))
    config = _yolo(tmp_path / "yamls" / "data.yaml")
    train = load_dataset(config, "train")
    assert train.classes == ["cat", "dog"] and train.name == "set/train"
    assert [r.image_id for r in train.records] == ["a", "b", "c"]
    assert train.records[0].boxes.tolist() == [[10, 7.5, 30, 22.5]] and train.records[0].labels.tolist() == [1]
    assert len(train.records[2].boxes) == 0
    val = load_dataset(config, "val")  # ../three does not exist beside `set`: read as three
    assert [r.path for r in val.records] == [root / "three" / "images" / "d.jpg"] and len(val.records[0].boxes) == 0


def test_split_given_as_a_txt_list_and_extra_splits_from_the_config(tmp_path):
    root = tmp_path / "set"
    for name in ("a", "b", "c"):
        _image(root / "images" / f"{name}.jpg")
        _write(root / "labels" / f"{name}.txt", "0 0.5 0.5 1 1\n")
    _write(root / "train.txt", "./images/a.jpg\nimages/b.jpg\n\n")
    _write(root / "data.yaml", yaml.safe_dump({"train": "train.txt", "nc": 1, "names": ["thing"]}))
    train = load_dataset(_yolo(root), "train")
    assert [r.image_id for r in train.records] == ["a", "b"]
    extra = load_dataset(_yolo(root, yolo_splits={"test": "images"}), "test")  # a folder of a list's images
    assert [r.image_id for r in extra.records] == ["a", "b", "c"]
    assert extra.records[0].boxes.tolist() == [[0, 0, 40, 30]]


def test_config_classes_must_match_data_yaml_names(tiny_yolo):
    assert load_dataset(_yolo(tiny_yolo, classes=list(CLASSES)), "val").classes == list(CLASSES)
    with pytest.raises(UserError, match="are not the names in .*data.yaml"):
        load_dataset(_yolo(tiny_yolo, classes=["disc", "square"]), "val")
    with pytest.raises(UserError, match="no split 'valid' \\(it has train, val\\)"):
        load_dataset(_yolo(tiny_yolo), "valid")


def test_label_path_replaces_the_last_images_folder():
    assert label_path(Path("/d/images/x/images/a.b.jpg")) == Path("/d/images/x/labels/a.b.txt")
    assert label_path(Path("images/a.png")) == Path("labels/a.txt")
    assert label_path(Path("/d/pictures/a.jpg")) == Path("/d/pictures/a.txt")


@pytest.mark.parametrize("orientation, expected", [(1, (40, 30)), (6, (30, 40)), (8, (30, 40)), (3, (40, 30))])
def test_image_size_applies_the_exif_orientation_like_load_image(tmp_path, orientation, expected):
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = _image(tmp_path / "rotated.jpg", exif=exif)
    assert image_size(path) == expected
    assert load_image(path).shape[1::-1] == expected


def test_labels_are_normalised_to_the_exif_rotated_size(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6
    _image(tmp_path / "images" / "r.jpg", exif=exif)  # 40x30 stored, 30x40 as seen
    _write(tmp_path / "labels" / "r.txt", "0 0.5 0.5 1 0.5\n")
    _write(tmp_path / "data.yaml", yaml.safe_dump({"val": "images", "names": ["x"]}))
    record = load_dataset(_yolo(tmp_path), "val").records[0]
    assert (record.width, record.height) == (30, 40) and record.boxes.tolist() == [[0, 10, 30, 30]]


def test_boxes_outside_the_image_follow_the_invalid_boxes_policy(tmp_path, caplog):
    _image(tmp_path / "images" / "a.jpg")
    _write(tmp_path / "labels" / "a.txt", "0 0.9 0.5 0.4 0.5\n0 0.5 0.5 0 0\n")  # overhangs right; empty
    _write(tmp_path / "data.yaml", yaml.safe_dump({"val": "images", "names": ["x"]}))
    with caplog.at_level(logging.WARNING):
        record = load_dataset(_yolo(tmp_path), "val").records[0]
    assert record.boxes.tolist() == [[28, 7.5, 40, 22.5]]
    assert "clipped 1 box" in caplog.text and "dropped 1 empty" in caplog.text
    with pytest.raises(UserError, match="labels/a.txt: box 0 is outside the 40x30 image"):
        load_dataset(_yolo(tmp_path, invalid_boxes="error"), "val")


def _rcnn(*argv: str) -> int:
    from detector.cli import main

    return main(list(argv))


LABEL = "val/labels/val_0000.txt"
BAD_INPUTS = [
    (LABEL, "0 0.5 0.5 0.2 0.2\n2 0.5 0.5 0.2 0.2\n", "val_0000.txt:2: class 2 is not in 0..1"),
    (LABEL, "0 0.5 0.5 0.2 0.2\n-1 0.5 0.5 0.2 0.2\n", "val_0000.txt:2: class -1 is not in 0..1"),
    (LABEL, "0.5 0.5 0.5 0.2 0.2\n", "val_0000.txt:1: class 0.5 is not in 0..1"),
    (LABEL, "0 0.5 0.5 0.2\n", "val_0000.txt:1: expected 5 fields 'class cx cy w h'"),
    (LABEL, "0 0.5 0.5 0.2 0.2 0.9 0.1\n", "val_0000.txt:1: expected 5 fields"),
    (LABEL, "\n\n1 0.5 abc 0.2 0.2\n", "val_0000.txt:3: expected numbers, got '1 0.5 abc 0.2 0.2'"),
    (LABEL, "1 0.5 nan 0.2 0.2\n", "val_0000.txt:1: a number is NaN or infinite"),
    (LABEL, "1 0.5 0.5 1e39 0.2\n", "val_0000.txt:1: a number is out of range"),
    (LABEL, "1 0.5 0.5 1e37 0.2\n", "val_0000.txt: box 0 [-8e+38"),  # in float32 range, not once in pixels
    ("data.yaml", "names: [a, b\n", "data.yaml:2: malformed YAML"),
    ("data.yaml", "- just\n- a list\n", "data.yaml: expected a mapping"),
    ("data.yaml", "val: val/images\nnc: 3\nnames: [square, disc]\n", "data.yaml: nc is 3 but names has 2 entries"),
    ("data.yaml", "val: val/images\nnames: {0: square, 2: disc}\n", "data.yaml: names keys must be the indices 0..1"),
    ("data.yaml", "val: val/images\n", "data.yaml: names must be a non-empty list"),
    ("data.yaml", "val: nowhere/images\nnames: [square, disc]\n", "val entry 'nowhere/images'"),
    ("data.yaml", "val: [val/images, 3]\nnames: [square, disc]\n", "data.yaml: val must be a path or a list of paths"),
]


@pytest.mark.parametrize("file, text, message", BAD_INPUTS)
def test_a_malformed_label_line_or_data_yaml_exits_2_with_one_line(tiny_yolo, capsys, file, text, message):
    (tiny_yolo / file).write_text(text)
    assert _rcnn("data", "--config", "tiny", "--set", "data.format=yolo", "--set", f"data.root={tiny_yolo}",
                 "--split", "val") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_a_label_without_its_image_and_a_missing_root_exit_2(tiny_yolo, tmp_path, capsys):
    (tiny_yolo / "val" / "images" / "val_0002.jpg").unlink()
    base = ("data", "--config", "tiny", "--set", "data.format=yolo", "--split", "val")
    assert _rcnn(*base, "--set", f"data.root={tiny_yolo}") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "val/labels/val_0002.txt: label file without an image" in err
    assert _rcnn(*base, "--set", f"data.root={tmp_path / 'none'}") == 2
    assert "none: no such file (data.root names a folder with data.yaml" in capsys.readouterr().err


@pytest.mark.parametrize("split", sorted(AQUARIUM_COUNTS))
def test_aquarium_counts_match_its_readme(split, capsys):
    if not (AQUARIUM / "data.yaml").is_file():
        pytest.skip(f"needs the shared dataset at {AQUARIUM}")
    assert _rcnn("data", "--config", "aquarium", "--set", f"data.root={AQUARIUM}", "--split", split) == 0
    out = capsys.readouterr().out
    images, boxes, per_class = AQUARIUM_COUNTS[split]
    dropped = 2 if split == "test" else 0  # two shark boxes of width and height 0, left out as empty
    if dropped:
        boxes, per_class = boxes - dropped, [*per_class[:4], per_class[4] - dropped, *per_class[5:]]
    assert f"aquarium/{split}: {images} images, {boxes} objects (0 ignored, {dropped} empty boxes left out)" in out
    dataset = load_dataset(_yolo(AQUARIUM, yolo_splits={"test": "../test/images"}), split)
    assert list(dataset.object_counts().values()) == per_class
