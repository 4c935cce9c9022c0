"""`rcnn data convert`: every readable layout written as COCO, VOC and YOLO, read back unchanged."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import yaml

from detector.common.errors import UserError
from detector.data.convert import convert
from detector.data.datasets import Dataset, DatasetConfig, load_dataset
from tests.synthetic import CLASSES, make_ilsvrc_dataset, make_voc_dataset

SPLITS = ("train", "test")
#: What a layout stores of the ignore flag: VOC difficult, COCO iscrowd; YOLO drops ignored boxes.
CARRIES_IGNORE = {"voc": True, "coco": True, "yolo": False}


def _config(format: str, root: Path, **changes) -> DatasetConfig:
    return DatasetConfig(format=format, root=str(root), classes=list(CLASSES), **changes)


def _read(format: str, root: Path) -> dict[str, Dataset]:
    return {split: load_dataset(_config(format, root), split) for split in SPLITS}


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    """The same 6 + 3 images (2 of each split with a difficult object) as VOC, and converted to COCO and YOLO."""
    folder = tmp_path_factory.mktemp("sources")
    voc = make_voc_dataset(folder / "voc", splits={"train": 6, "test": 3}, difficult_images=2)
    return {"voc": voc, **{to: convert(_read("voc", voc), to, folder / to) for to in ("coco", "yolo")}}


def _assert_same_records(read: Dataset, expected: Dataset, keep_ignored: bool) -> None:
    """Same images (by file name), sizes, classes, labels and ignore flags, boxes within 1e-3 px."""
    assert read.classes == expected.classes
    by_name = {r.path.name: r for r in read.records}
    assert sorted(by_name) == sorted(r.path.name for r in expected.records)
    for record in expected.records:
        other, keep = by_name[record.path.name], slice(None) if keep_ignored else ~record.ignore
        assert (other.width, other.height) == (record.width, record.height)
        assert other.path.read_bytes() == record.path.read_bytes()
        np.testing.assert_allclose(other.boxes, record.boxes[keep], atol=1e-3)
        assert other.labels.tolist() == record.labels[keep].tolist()
        assert other.ignore.tolist() == record.ignore[keep].tolist()


@pytest.mark.parametrize("to", ["coco", "voc", "yolo"])
@pytest.mark.parametrize("source", ["voc", "coco", "yolo"])
def test_round_trip_between_every_pair_of_layouts(sources, tmp_path, source, to):
    original = _read(source, sources[source])
    assert sum(int(r.ignore.sum()) for d in original.values() for r in d.records) == (4 if source != "yolo" else 0)
    out = convert(original, to, tmp_path / "out")
    converted = _read(to, out)
    for split in SPLITS:
        _assert_same_records(converted[split], original[split], keep_ignored=CARRIES_IGNORE[to])
    assert not list(tmp_path.glob(".out.*"))  # no temporary folder left beside


def test_yolo_numbers_keep_fractional_boxes_and_voc_rounds_them_with_a_warning(sources, tmp_path, caplog):
    dataset = _read("yolo", sources["yolo"])["test"]
    dataset.records[0].boxes[0] += np.float32(0.37)
    back = load_dataset(_config("yolo", convert({"test": dataset}, "yolo", tmp_path / "yolo")), "test")
    np.testing.assert_allclose(back.records[0].boxes, dataset.records[0].boxes, atol=1e-4)
    with caplog.at_level(logging.WARNING):
        voc = load_dataset(_config("voc", convert({"test": dataset}, "voc", tmp_path / "voc")), "test")
    assert "4 box coordinate(s) rounded to whole pixels" in caplog.text
    np.testing.assert_allclose(voc.records[0].boxes, np.rint(dataset.records[0].boxes), atol=1e-4)


def test_yolo_drops_ignored_boxes_with_a_warning(sources, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        convert(_read("voc", sources["voc"]), "yolo", tmp_path / "out")
    assert "voc/train: 2 ignored box(es) dropped (YOLO labels cannot mark them)" in caplog.text
    assert yaml.safe_load((tmp_path / "out" / "data.yaml").read_text()) == {
        "train": "train/images", "test": "test/images", "nc": 2, "names": list(CLASSES)}
    assert "ultralytics reads only" not in caplog.text
    convert({"trainval": _read("voc", sources["voc"])["train"]}, "yolo", tmp_path / "trainval")
    assert "split 'trainval': ultralytics reads only train, val, test, minival" in caplog.text


def test_ilsvrc_det_converts_to_coco(tmp_path):
    wnids = ["n00000001", "n00000002"]
    root = make_ilsvrc_dataset(tmp_path / "ilsvrc", wnids=wnids, splits={"val": 5})
    source = load_dataset(DatasetConfig(format="ilsvrc_det", root=str(root), classes=wnids), "val")
    out = convert({"val": source}, "coco", tmp_path / "coco")
    read = load_dataset(DatasetConfig(format="coco", root=str(out), classes=wnids), "val")
    _assert_same_records(read, source, keep_ignored=True)
    assert [r.path.name for r in read.records] == [f"ILSVRC2013_val_{i:08d}.JPEG" for i in range(1, 6)]
    assert len(read.records[0].boxes) == 0  # the first image has no objects, and keeps none


def test_images_are_hard_linked_unless_copies_are_asked_for(sources, tmp_path):
    dataset = _read("voc", sources["voc"])
    image = dataset["test"].records[0].path
    linked = convert(dataset, "coco", tmp_path / "linked") / "test" / image.name
    copied = convert(dataset, "coco", tmp_path / "copied", copy_images=True) / "test" / image.name
    assert linked.stat().st_ino == image.stat().st_ino
    assert copied.stat().st_ino != image.stat().st_ino and copied.read_bytes() == image.read_bytes()


def test_clashing_file_names_are_made_from_image_ids(tmp_path, sources):
    dataset = _read("coco", sources["coco"])["test"]
    dataset.records[1].path = dataset.records[0].path  # two records naming one file
    out = convert({"test": dataset}, "yolo", tmp_path / "out")
    names = sorted(p.name for p in (out / "test" / "images").iterdir())
    assert names == [f"{r.image_id}.jpg" for r in dataset.records]


def test_a_failure_leaves_nothing_behind(sources, tmp_path):
    dataset = _read("voc", sources["voc"])
    dataset["test"].records[-1].path = tmp_path / "missing.jpg"
    with pytest.raises(UserError, match="missing.jpg: image file not found"):
        convert(dataset, "yolo", tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def _rcnn(*argv: str) -> int:
    from detector.cli import main

    return main(list(argv))


def test_cli_converts_the_default_splits_and_refuses_a_non_empty_out(sources, tmp_path, capsys):
    config = ("--config", "tiny", "--set", f"data.root={sources['voc']}")
    out = tmp_path / "out"
    out.mkdir()  # an empty folder may be written into
    assert _rcnn("data", *config, "convert", "--to", "coco", str(out)) == 0
    printed = capsys.readouterr().out
    assert "voc/train: 6 images" in printed and "voc/test: 3 images" in printed
    assert f"--set data.format=coco --set data.root={out}" in printed
    assert sorted(p.name for p in (out / "annotations").iterdir()) == ["instances_test.json", "instances_train.json"]
    before = sorted(out.rglob("*"))
    assert _rcnn("data", *config, "convert", "--to", "yolo", str(out)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{out}: exists and is not an empty folder; not overwriting it" in err
    assert sorted(out.rglob("*")) == before and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_cli_split_is_repeatable_and_the_config_may_follow_convert(sources, tmp_path, capsys):
    out = tmp_path / "out"
    assert _rcnn("data", "convert", "--to", "voc", str(out), "--split", "test", "--split", "train",
                 "--config", "tiny", "--set", f"data.root={sources['yolo']}", "--set", "data.format=yolo") == 0
    assert sorted(p.name for p in (out / "ImageSets" / "Main").iterdir()) == ["test.txt", "train.txt"]
    ids = (out / "ImageSets" / "Main" / "test.txt").read_text().split()
    assert ids == [f"test_{i:04d}" for i in range(3)]
