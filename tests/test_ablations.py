"""bench/ablations.py: one `rcnn run` per row, then a table of every row's scores."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "ablations.py"


def _ablate(plan: dict, folder: Path, *args: str) -> subprocess.CompletedProcess:
    path = folder / "plan.yaml"
    path.write_text(yaml.safe_dump(plan))
    return subprocess.run([sys.executable, str(SCRIPT), str(path), *args], capture_output=True, text=True,
                          cwd=REPO, timeout=600)


@pytest.mark.slow
def test_each_row_is_run_and_tabulated_and_a_rerun_reuses_them(tiny_voc, tmp_path):
    plan = {"config": "tiny", "workdir": str(tmp_path / "rows"),
            "shared": [f"data.root={tiny_voc}", f"proposals.cache_dir={tmp_path / 'cache'}", "eval.extra_metrics=[coco]"],
            "rows": {"base": [], "slower": ["train.lr=0.001"]}}
    done = _ablate(plan, tmp_path, "--splits", "test", "--workers", "1")
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in done.stdout.splitlines()
            if line.startswith("| base") or line.startswith("| slower")}
    assert set(rows) == {"base", "slower"} and "`train.lr=0.001`" in rows["slower"][1]
    for cells in rows.values():
        assert all(cell != "-" for cell in cells[2:6])  # mAP, COCO AP, AP50, AP75 (the tiny set has no large objects)
        assert 0.0 <= float(cells[2]) <= 1.0
    assert (tmp_path / "rows" / "ablations.md").read_text() in done.stdout
    # the rerun of a finished row reuses every stage: no manifest is rewritten
    stages = sorted((tmp_path / "rows" / "slower" / "stages").glob("*.json"))
    before = {p: p.stat().st_mtime_ns for p in stages}
    again = _ablate(plan, tmp_path, "--splits", "test", "--workers", "1", "--rows", "slower")
    assert again.returncode == 0 and "| slower |" in again.stdout and "| base |" not in again.stdout
    assert {p: p.stat().st_mtime_ns for p in stages} == before and len(before) >= 5

def test_a_row_not_run_yet_shows_dashes(tmp_path):
    plan = {"config": "tiny", "workdir": str(tmp_path / "rows"), "rows": {"todo": ["train.lr=0.1"]}}
    done = _ablate(plan, tmp_path, "--table-only", "--splits", "val")
    assert done.returncode == 0
    assert "| todo | `train.lr=0.1` | - | - | - | - | - | - | - | - |" in done.stdout


@pytest.mark.parametrize("plan, message", [
    ({"config": "tiny", "workdir": "w"}, "expected a mapping with config, workdir, rows"),
    ({"config": "tiny", "workdir": "w", "rows": {"a": {"from": "b"}}}, "a: from 'b' is not a row"),
    ({"config": "tiny", "workdir": "w", "rows": {"a": {"model": "x"}}}, "a: expected {from: ROW, set: [..]} or"),
    ({"config": "tiny", "workdir": "w", "rows": {"a": "train.lr=1"}}, "a: expected a list of KEY=VALUE strings"),
    ({"config": "tiny", "workdir": "w", "shared": ["oops"], "rows": {"a": []}}, "shared: expected a list"),
])
def test_a_malformed_plan_is_one_line_naming_the_file(tmp_path, plan, message):
    done = _ablate(plan, tmp_path, "--table-only")
    assert done.returncode != 0 and message in done.stderr and "Traceback" not in done.stderr
    assert str(tmp_path / "plan.yaml") in done.stderr


def test_an_unknown_row_is_named(tmp_path):
    done = _ablate({"config": "tiny", "workdir": "w", "rows": {"a": []}}, tmp_path, "--rows", "b", "--table-only")
    assert done.returncode != 0 and "no row b (rows: a)" in done.stderr


@pytest.mark.slow
def test_eval_rows_rescore_a_trained_row_and_score_other_tools_results(tiny_voc, tmp_path):
    """{from: row, set: [...]}: the row's model under other test settings; {detections: ...}: results
    of another tool (here big-test's detections, which rcnn eval saved as COCO JSON) through the same evaluator."""
    shared = [f"data.root={tiny_voc}", f"proposals.cache_dir={tmp_path / 'cache'}", "eval.splits=[test]",
              "eval.save_formats=[coco]"]
    plan = {"config": "tiny", "workdir": str(tmp_path / "rows"), "shared": shared,
            "rows": {"base": ["model.mode=roi", "model.roi_layer=5b-dilated", "model.roi_short_side=96"],
                     "big-test": {"from": "base", "set": ["test.scales=[160]"]},
                     "peer": {"detections": str(tmp_path / "rows" / "big-test" / "eval" / "{split}" / "detections_{split}_rcnn_results.json"),
                              "format": "coco"}}}
    done = _ablate(plan, tmp_path, "--splits", "test", "--workers", "1")
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in done.stdout.splitlines()
            if line.startswith(("| base", "| big-test", "| peer"))}
    assert "model of base: `test.scales=[160]`" in rows["big-test"][1]
    assert rows["peer"][2:9] == rows["big-test"][2:9]  # the same detections, scored by the same evaluator
    assert rows["big-test"][2] != "-" and rows["big-test"][-1].strip(" |") == "-"  # scored, not trained
    assert not (tmp_path / "rows" / "big-test" / "train").exists()
    config = yaml.safe_load((tmp_path / "rows" / "big-test" / "eval" / "test" / "config.yaml").read_text())
    assert config["test"]["scales"] == [160]


def test_an_eval_row_before_its_model_exists_fails_by_name(tmp_path):
    plan = {"config": "tiny", "workdir": str(tmp_path / "rows"),
            "rows": {"base": [], "later": {"from": "base", "set": ["test.flip=true"]}}}
    done = _ablate(plan, tmp_path, "--rows", "later")
    assert done.returncode == 1 and "later: row base has no trained model yet" in done.stderr
    assert "| later | model of base: `test.flip=true` | - |" in done.stdout
