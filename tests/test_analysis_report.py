"""The error analysis in reports: galleries (own synthetic images), report.md / report.html /
metrics.json, links of report.html, rebuild, comparison, `rcnn eval` and the run summary."""
from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from detector.cli import main
from detector.common.errors import UserError
from detector.config import load_config
from detector.data.datasets import DatasetConfig, load_dataset
from detector.experiment.run_folder import Manifest, markdown_summary
from eval.analysis import AnalysisInput, AnalysisOptions, analyse
from eval.detections import ImageDetections, save_detections
from eval.gallery import FULL_SIDE, MAX_ZOOM, THUMB_SIDE, crop_rect, pictures_per_class, write_gallery
from eval.metrics import score
from eval.report import compare_reports, load_analysis, load_report, write_report, write_reports
from tests.synthetic import make_voc_dataset


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    """A 12-image synthetic VOC test split (square, disc) and detections with every kind of error:
    each object found (a quarter with the wrong class), a poorly placed copy, and random boxes."""
    root = make_voc_dataset(tmp_path_factory.mktemp("voc"), {"test": 12}, size=(240, 180), max_objects=3, seed=3)
    dataset = load_dataset(DatasetConfig(format="voc", root=str(root), classes=["square", "disc"]), "test")
    return dataset, detections(dataset, seed=0)


def detections(dataset, seed: int) -> dict[str, ImageDetections]:
    rng = np.random.default_rng(seed)
    dets = {}
    for r in dataset.records:
        n = len(r.boxes)
        shifted = r.boxes + np.array([0.4, 0, 0.4, 0]) * (r.boxes[:, 2:3] - r.boxes[:, 0:1])
        xy, wh = rng.uniform(0, 150, (4, 2)), rng.uniform(10, 80, (4, 2))
        boxes = np.concatenate([r.boxes, shifted, np.concatenate([xy, xy + wh], 1)]).astype(np.float32)
        labels = np.concatenate([np.where(rng.random(n) < 0.75, r.labels, 1 - r.labels), r.labels,
                                 rng.integers(0, 2, 4)])
        scores = np.concatenate([rng.uniform(0.5, 1, n), rng.uniform(0.3, 0.9, n), rng.uniform(0, 0.8, 4)])
        dets[r.image_id] = ImageDetections(boxes, scores, labels)
    return dets


class Links(HTMLParser):
    """Every src / href of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.links += [value for name, value in attrs if name in ("src", "href") and value]


def links_of(page: Path) -> list[str]:
    parser = Links()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser.links


# --------------------------------------------------------------------------- galleries


def test_pictures_per_class_are_capped_in_all():
    assert pictures_per_class(12, 1200, 20) == 12
    assert pictures_per_class(12, 1200, 200) == 3
    assert pictures_per_class(12, 1200, 5000) == 1
    assert pictures_per_class(0, 1200, 20) == 0 and pictures_per_class(12, 0, 20) == 0


def test_crops_stay_inside_the_image():
    assert crop_rect([np.array([0, 0, 10, 10])], 50, 40) == (0, 0, 26, 26)
    assert crop_rect([np.array([40, 30, 50, 40]), np.array([35, 25, 45, 35])], 50, 40) == (19, 9, 50, 40)


def test_gallery_has_the_worst_false_positives_and_the_largest_misses(split, tmp_path):
    dataset, dets = split
    analysis = analyse(dets, dataset, "voc10")
    manifest = write_gallery(tmp_path, analysis, dets, dataset, per_class=3)
    assert manifest["per_class"] == 3 and manifest["skipped"] == 0
    for entry in manifest["classes"]:
        assert 0 < len(entry["fp"]) <= 3 and len(entry["miss"]) <= 3
        scores = [item["score"] for item in entry["fp"]]
        assert scores == sorted(scores, reverse=True)
        for item in entry["fp"] + entry["miss"]:
            with Image.open(tmp_path / item["file"]) as picture, Image.open(tmp_path / item["thumb"]) as thumb:
                assert max(thumb.size) <= THUMB_SIDE and picture.height > min(picture.size) // 2
            assert item["caption"].startswith(item["error"] + ":")
        assert all(item["error"] in ("cls", "loc", "both", "dupe", "bkg") for item in entry["fp"])
        assert all(item["error"] in ("miss", "near miss") for item in entry["miss"])
    files = sorted(p.name for p in (tmp_path / "gallery").rglob("*.jpg"))
    assert len(files) == 2 * sum(len(e["fp"]) + len(e["miss"]) for e in manifest["classes"])
    # a second gallery replaces the first
    write_gallery(tmp_path, analysis, dets, dataset, per_class=1)
    assert len(list((tmp_path / "gallery").rglob("fp_02.jpg"))) == 0


def test_a_gallery_folder_holding_other_files_is_refused_not_deleted(split, tmp_path):
    dataset, dets = split
    analysis = analyse(dets, dataset, "voc10")
    write_gallery(tmp_path, analysis, dets, dataset, per_class=1)
    mine = tmp_path / "gallery" / "000_square" / "notes.txt"
    mine.write_text("my notes")
    with pytest.raises(UserError, match="notes.txt: not a picture of a gallery"):
        write_gallery(tmp_path, analysis, dets, dataset, per_class=1)
    assert mine.read_text() == "my notes" and (tmp_path / "gallery" / "000_square" / "fp_01.jpg").is_file()


def test_small_objects_are_enlarged_at_most_max_zoom(split, tmp_path):
    dataset, _ = split
    record = dataset.records[0]
    box = record.boxes[:1] * 0 + np.array([[10, 10, 14, 14]], np.float32)
    dets = {record.image_id: ImageDetections(box, [0.9], [0])}
    one = type(dataset)(dataset.name, dataset.classes, dataset.display_names, [record])
    manifest = write_gallery(tmp_path, analyse(dets, one, "voc10"), dets, one, per_class=1)
    with Image.open(tmp_path / manifest["classes"][0]["fp"][0]["file"]) as picture:
        assert picture.width <= max(FULL_SIDE, (4 + 2 * 16) * MAX_ZOOM + 1)


def test_unreadable_images_are_skipped(split, tmp_path):
    dataset, dets = split
    missing = [type(r)(**{**r.__dict__, "path": tmp_path / "gone.jpg"}) for r in dataset.records]
    broken = type(dataset)(dataset.name, dataset.classes, dataset.display_names, missing)
    manifest = write_gallery(tmp_path, analyse(dets, broken, "voc10"), dets, broken, per_class=2)
    assert manifest["skipped"] > 0 and all(not e["fp"] and not e["miss"] for e in manifest["classes"])


# --------------------------------------------------------------------------- reports


def write(folder: Path, dataset, dets, options: AnalysisOptions | None = None) -> Path:
    results = [score(dets, dataset, metric) for metric in ("voc10", "coco")]
    options = options or AnalysisOptions(similar_classes={"shapes": ["square", "disc"]}, gallery_per_class=4)
    return write_reports(folder, results, dataset.name, {"split": "test"}, {"evaluate": 0.1},
                         AnalysisInput(dets, dataset, options))


def test_reports_have_the_analysis_and_every_link_of_the_page_resolves(split, tmp_path):
    dataset, dets = split
    report = write(tmp_path, dataset, dets)
    text = report.read_text()
    assert "## Where the AP goes" in text and "### Top-ranked false positives" in text
    assert "| all | " in text and "similar classes: shapes: square, disc" in text
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    analysis = metrics["analysis"]
    assert analysis["overall"]["ap"] == pytest.approx(metrics["mAP"], abs=1e-12)
    assert analysis["gallery"]["per_class"] == 4 and "error analysis" in metrics["timing"]
    coco = json.loads((tmp_path / "coco" / "metrics.json").read_text())["analysis"]
    assert len(coco["thresholds"]) == 10 and "gallery" not in coco  # galleries: primary metric only
    for folder in (tmp_path, tmp_path / "coco"):
        links = links_of(folder / "report.html")
        assert {"errors.png", "fp_types_01.png"} <= set(links)
        assert all((folder / link).is_file() for link in links), [link for link in links if not (folder / link).is_file()]
    thumbs = [link for link in links_of(tmp_path / "report.html") if link.endswith("_thumb.jpg")]
    assert len(thumbs) == sum(len(c["fp"]) + len(c["miss"]) for c in analysis["gallery"]["classes"]) > 0


def test_rebuilt_report_keeps_the_analysis_and_comparison_shows_its_deltas(split, tmp_path):
    dataset, dets = split
    write(tmp_path / "a", dataset, dets)
    (tmp_path / "a" / "report.html").unlink()
    write_report(tmp_path / "a", *load_report(tmp_path / "a"), analysis=load_analysis(tmp_path / "a"))
    assert any(link.endswith("_thumb.jpg") for link in links_of(tmp_path / "a" / "report.html"))
    better = {k: ImageDetections(d.boxes[:len(r.boxes)], d.scores[:len(r.boxes)], r.labels)
              for (k, d), r in zip(dets.items(), dataset.records)}
    write(tmp_path / "b", dataset, better)
    text = compare_reports(tmp_path / "a", tmp_path / "b")
    assert "## Where the AP goes: B - A" in text
    row = next(line for line in text.splitlines() if line.startswith("| gain cls |"))
    assert row.split(" | ")[-1].startswith("-")  # the perfect classes of B lose nothing to cls errors
    assert load_analysis(tmp_path / "b")["overall"]["gain"]["cls"] == 0.0


def test_analysis_off_writes_the_plain_report(split, tmp_path):
    dataset, dets = split
    write(tmp_path, dataset, dets, AnalysisOptions(enabled=False))
    assert "analysis" not in json.loads((tmp_path / "metrics.json").read_text())
    assert not (tmp_path / "gallery").exists() and not (tmp_path / "errors.png").exists()
    assert load_analysis(tmp_path) is None


def test_rcnn_eval_writes_the_analysis_and_galleries(tiny_voc, tmp_path, capsys):
    args = ["--config", "tiny", "--set", f"data.root={tiny_voc}", "--set", f"output_dir={tmp_path}/run"]
    dataset = load_dataset(load_config("tiny", [f"data.root={tiny_voc}"]).data, "test")
    save_detections(tmp_path / "dets.npz", detections(dataset, seed=1), dataset.classes, dataset.name)
    assert main(["eval", *args, "--detections", str(tmp_path / "dets.npz"),
                 "--set", "eval.similar_classes={shapes: [square, disc]}"]) == 0
    out = tmp_path / "run" / "eval" / "test"
    analysis = json.loads((out / "metrics.json").read_text())["analysis"]
    assert analysis["hoiem"]["similar_classes"] == {"shapes": ["square", "disc"]}
    assert (out / "gallery").is_dir() and "## Where the AP goes" in (out / "report.md").read_text()
    assert main(["eval", *args, "--detections", str(tmp_path / "dets.npz"), "--out", str(tmp_path / "off"),
                 "--set", "eval.analysis=false"]) == 0
    assert "analysis" not in json.loads((tmp_path / "off" / "metrics.json").read_text())
    assert main(["eval", *args, "--detections", str(tmp_path / "dets.npz"), "--out", str(tmp_path / "x"),
                 "--set", "eval.similar_classes={shapes: [square, cube]}"]) == 2
    assert "'cube' not among the classes" in capsys.readouterr().err


def test_run_summary_lists_the_ap_each_error_type_costs():
    errors = {"cls": 0.01, "loc": 0.125, "both": 0.0, "dupe": 0.0, "bkg": 0.05, "miss": 0.0, "FP": 0.2, "FN": 0.1}
    evaluations = {"evaluate-test": Manifest("evaluate-test", "k", {}, {"mAP": 0.5, "metric": "voc10", "errors": errors}),
                   "evaluate-val": Manifest("evaluate-val", "k", {}, {"mAP": 0.4, "metric": "voc10"})}
    text = markdown_summary("toy", evaluations, {u: {"key": "k", "info": m.info} for u, m in evaluations.items()})
    assert "| test | +0.0100 | +0.1250 | +0.0000 | +0.0000 | +0.0500 | +0.0000 | +0.2000 | +0.1000 |" in text
    assert "errors" not in text.split("| stage |")[1]
