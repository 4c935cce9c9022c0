"""Reports: files written, sorted per-class table, undefined classes, rebuild and comparison."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from detector.common.errors import UserError
from eval.metrics import EvalResult
from eval.report import compare_reports, load_report, write_report


def make_result(ap: dict[str, float], metric: str = "voc07") -> EvalResult:
    curves = {c: np.linspace(1, 0.2, 5) if not math.isnan(v) else np.zeros(0) for c, v in ap.items()}
    recall = {c: np.linspace(0.2, 1, len(p)) for c, p in curves.items()}
    defined = [v for v in ap.values() if not math.isnan(v)]
    return EvalResult(
        metric=metric, classes=list(ap), display_names=[c.upper() for c in ap], ap=ap,
        mAP=float(np.mean(defined)), precision=curves, recall=recall,
        num_gt={c: 0 if math.isnan(v) else 3 for c, v in ap.items()}, num_detections=dict.fromkeys(ap, 7),
        extras={"AP50": 0.5} if metric == "coco" else {},
    )


def test_report_files_and_sorted_table(tmp_path):
    result = make_result({"cat": 0.4, "dog": math.nan, "bird": 0.9})
    report = write_report(tmp_path, result, "toy/test", {"metric": "voc07"}, {"evaluate": 1.25})
    names = {p.name for p in tmp_path.iterdir()}
    assert {"report.md", "report.html", "metrics.json", "curves.npz", "ap_per_class.png", "pr_curves_01.png"} <= names
    text = report.read_text()
    assert "**mAP (voc07): 0.6500** over 2 classes (1 without ground truth" in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [row.split(" | ")[1] for row in rows] == ["BIRD", "CAT", "DOG"]  # best first, undefined last
    assert "| 3 | DOG | dog | n/a | 0 | 7 |" in text and "| evaluate | 1.250 |" in text
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["classes"][1] == {"id": "dog", "name": "DOG", "ap": None, "num_gt": 0, "num_detections": 7}
    html = (tmp_path / "report.html").read_text()
    assert "<img src='pr_curves_01.png'" in html and "<td>BIRD</td>" in html
    assert (tmp_path / "pr_curves_01.png").read_bytes()[:4] == b"\x89PNG"


def test_pr_curves_are_paged(tmp_path):
    result = make_result({f"c{i}": i / 30 for i in range(23)})
    write_report(tmp_path, result, "toy/test", {}, {})
    assert sorted(p.name for p in tmp_path.glob("pr_curves_*.png")) == ["pr_curves_01.png", "pr_curves_02.png"]


def test_report_rebuilds_from_its_folder(tmp_path):
    result = make_result({"cat": 0.4, "dog": math.nan}, metric="coco")
    write_report(tmp_path / "eval" / "test", result, "toy/test", {"split": "test"}, {"evaluate": 0.5})
    loaded, name, settings, timing = load_report(tmp_path)  # a run folder with one eval/<split>
    assert name == "toy/test" and settings == {"split": "test"} and timing == {"evaluate": 0.5}
    assert loaded.ap["cat"] == 0.4 and math.isnan(loaded.ap["dog"]) and loaded.extras == {"AP50": 0.5}
    np.testing.assert_array_equal(loaded.precision["cat"], result.precision["cat"])


def test_missing_or_ambiguous_report_folders(tmp_path):
    with pytest.raises(UserError, match="no metrics.json"):
        load_report(tmp_path)
    for split in ("val", "test"):
        write_report(tmp_path / "eval" / split, make_result({"cat": 0.5}), "toy", {}, {})
    with pytest.raises(UserError, match="several evaluations"):
        load_report(tmp_path)


def test_comparison_lists_deltas_biggest_gain_first(tmp_path):
    write_report(tmp_path / "a", make_result({"cat": 0.4, "dog": 0.5, "fox": math.nan}), "toy", {}, {})
    write_report(tmp_path / "b", make_result({"cat": 0.7, "dog": 0.4, "fox": 0.2}), "toy", {}, {})
    text = compare_reports(tmp_path / "a", tmp_path / "b")
    assert (tmp_path / "b" / "comparison.md").read_text() == text
    assert "| mAP | 0.4500 | 0.4333 | -0.0167 |" in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and line.split(" | ")[1] in ("cat", "dog", "fox")]
    assert rows == ["| CAT | cat | 0.4000 | 0.7000 | +0.3000 |", "| DOG | dog | 0.5000 | 0.4000 | -0.1000 |",
                    "| FOX | fox | n/a | 0.2000 | n/a |"]
    write_report(tmp_path / "c", make_result({"cat": 0.1}, metric="coco"), "toy", {}, {})
    assert "different metrics (voc07 vs coco)" in compare_reports(tmp_path / "a", tmp_path / "c", tmp_path / "x.md")
