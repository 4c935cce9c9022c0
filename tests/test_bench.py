"""`rcnn bench`: the quick run on a tiny image yields every row, sane ratios and a JSON copy.

Timings are never asserted: only the table's shape, the ratios' arithmetic and the files.
"""
from __future__ import annotations

import math

import torch
from PIL import Image

from detector.bench.classifier import _compiled_row
from detector.bench.report import BenchReport, BenchSettings, Row, add_ratios, synthetic_image
from detector.cli import main
from detector.common.workers import default_workers

TINY = ["--set", "model.input_size=32", "--set", "model.context_pad=2", "--set", "test.batch_size=2",
        "--set", "proposals.max_boxes=8", "--set", "train.regions_per_batch=4", "--set", "model.roi_short_side=64",
        "--set", "model.roi_max_side=96", "--set", "pretrain.input_size=32", "--set", "pretrain.precision=bf16",
        "--repeats", "1"]
ROWS = [
    ("proposals", "opencv-fast, rcnn preset"),
    ("proposals", "opencv-fast, googlenet preset"),
    ("classifier", "fp32 NCHW, batch 1"),
    ("classifier", "fp32 channels_last, batch 2"),
    ("classifier", "bf16 autocast channels_last, batch 2"),
    ("classifier", "int8 static (x86), batch 2"),
    *[("detect", f"{case}: {stage}")
      for case in ("1 model, rcnn preset", "1 model, rcnn preset, warps overlapped", "1 model, googlenet preset",
                   "ensemble of 3, rcnn preset",
                   "roi 4e, 64 px, rcnn preset", "roi 5b, 64 px, rcnn preset", "roi 5b-dilated, 64 px, rcnn preset",
                   "roi 5b-dilated+3b, 64 px, rcnn preset",
                   "roi 5b-dilated, 64 px, rcnn preset, fp32", "roi 5b-dilated, 64 px, rcnn preset, int8",
                   "roi 5b-dilated+3b, 64 px, rcnn preset, fp32", "roi 5b-dilated+3b, 64 px, rcnn preset, int8")
      for stage in ("total", "proposals", "regions", "postprocess")],
]
TRAINING_AND_MEMORY = [
    ("training", "fp32, channels_last on cpu, minibatch 4"),
    ("training", "bf16 autocast, channels_last on cpu, minibatch 4"),
    ("memory", "peak RSS, detect one image (1 model)"),
    ("memory", "peak RSS, fp32 training step, minibatch 4"),
]
PRETRAIN = [
    ("pretrain", "network step, bf16 autocast, channels_last on cpu, 16 x 32 px"),
    ("pretrain", "network step, fp32, channels_last on cpu, 16 x 32 px"),
    ("pretrain", "data loader alone, 2 worker processes"),
    ("pretrain", "data loader alone, 0 worker processes"),
]
CORES = default_workers()
THROUGHPUT = [("throughput", f"{cache} proposal cache: {name}") for cache, name in (
    ("cold", "serial (auto)"), ("cold", f"1 worker, network {max(1, CORES - 1)} thread{'s' if CORES > 2 else ''}"),
    *([("cold", f"{CORES} workers, network 1 thread"), ("cold", f"{CORES} workers, network {CORES} threads")]
      if CORES > 1 else []),
    ("warm", "serial"), ("warm", "auto"), ("warm", f"{CORES} workers all the same"))]
ROWS += TRAINING_AND_MEMORY + PRETRAIN + THROUGHPUT


def test_quick_bench_table_and_json(tmp_path, capsys):
    image = tmp_path / "tiny.png"
    Image.fromarray(synthetic_image(96, 72)).save(image)
    json_path = tmp_path / "bench.json"
    assert main(["bench", "--quick", "--device", "cpu", "--image", str(image), "--json", str(json_path), *TINY]) == 0
    out = capsys.readouterr().out
    assert "native bf16:" in out and f"torch {torch.__version__}" in out and "threads" in out
    table = [line for line in out.splitlines() if line.startswith("| ") and not line.startswith("| section")]
    assert [tuple(cell.strip() for cell in line.split("|")[1:3]) for line in table] == ROWS

    report = BenchReport.from_json(json_path.read_text())
    assert [(row.section, row.name) for row in report.rows] == ROWS
    assert report.settings["quick"] and report.settings["crop_size"] == 32 and report.images == [str(image)]
    for row in report.rows:
        assert row.value is not None and row.value > 0, row
        assert row.ratio is not None and math.isfinite(row.ratio) and row.ratio > 0, row
        if row.baseline:
            assert row.ratio == 1.0
    baselines = {(row.group or row.section) for row in report.rows if row.baseline}
    assert baselines == {"proposals", "classifier", "training", "memory", "detect total", "detect proposals",
                         "detect regions", "detect postprocess", "pretrain", "throughput cold", "throughput warm"}
    fast = [row for row in report.rows if row.section == "classifier" and not row.baseline]
    assert all(0 <= row.extra["top1_agreement"] <= 1 and row.extra["max_abs_diff"] >= 0 for row in fast)
    assert BenchReport.from_json(report.to_json()) == report


def test_sections_select_the_rows(tmp_path, capsys):
    image = tmp_path / "tiny.png"
    Image.fromarray(synthetic_image(96, 72)).save(image)
    assert main(["bench", "--quick", "--device", "cpu", "--image", str(image), "--sections", "training", "memory", *TINY]) == 0
    out = capsys.readouterr().out
    table = [line for line in out.splitlines() if line.startswith("| ") and not line.startswith("| section")]
    assert [tuple(cell.strip() for cell in line.split("|")[1:3]) for line in table] == TRAINING_AND_MEMORY
    assert "sections: training memory" in out


def test_pretrain_section_times_the_network_and_the_loader(tmp_path, capsys):
    from tests.synthetic import make_image_folder

    root = make_image_folder(tmp_path / "folder", per_split={"train": 12})
    assert main(["bench", "--quick", "--device", "cpu", "--sections", "pretrain", "--set", f"pretrain.root={root}",
                 "--json", str(tmp_path / "bench.json"), *TINY]) == 0
    report = BenchReport.from_json((tmp_path / "bench.json").read_text())
    assert [(row.section, row.name) for row in report.rows] == PRETRAIN
    loader = report.rows[2]
    assert loader.note.startswith(f"{root / 'train'}; target >= 1.5x") and loader.ratio == loader.value / report.rows[0].value


def test_ratios_are_relative_to_the_group_baseline():
    rows = add_ratios([Row("s", "base", 2.0, "s", baseline=True), Row("s", "other", 3.0, "s"),
                       Row("s", "skipped", None, "s"), Row("t", "g", 4.0, "s", baseline=True, group="g"),
                       Row("t", "h", 1.0, "s", group="g")])
    assert [row.ratio for row in rows] == [1.0, 1.5, None, 1.0, 0.25]


def test_compile_failure_is_a_skipped_row(monkeypatch):
    def broken(model):
        raise RuntimeError("no C compiler\nmore detail")

    monkeypatch.setattr(torch, "compile", broken)
    row = _compiled_row(torch.nn.Identity(), torch.zeros(2, 3, 8, 8), None, torch.zeros(2, 3), BenchSettings())
    assert row.value is None and row.note == "skipped: RuntimeError: no C compiler"
