"""`rcnn run`: the whole experiment on the tiny synthetic VOC set — outputs of every stage, reuse,
invalidation by changed settings, kills and corrupted files, sharded and torchrun runs, ensembles."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from detector.cli import main
from detector.config import load_config
from detector.data.datasets import load_dataset
from eval.detections import ImageDetections, load_detections
from eval.metrics import score

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def proposal_cache(tmp_path_factory) -> Path:
    """One proposal cache for the module's runs (not part of any stage key)."""
    return tmp_path_factory.mktemp("proposal_cache")


def run_args(data_root: Path, workdir: Path, cache: Path, *sets: str) -> list[str]:
    """`rcnn run` arguments for the tiny config over `data_root` into `workdir`."""
    args = ["run", "--config", "tiny", "--workdir", str(workdir), "--workers", "1",
            "--set", f"data.root={data_root}", "--set", f"proposals.cache_dir={cache}"]
    for item in sets:
        args += ["--set", item]
    return args


@pytest.fixture(scope="module")
def reference(tiny_voc, proposal_cache, tmp_path_factory) -> Path:
    """An uninterrupted run of the tiny config (4 iterations), evaluated on the test split."""
    workdir = tmp_path_factory.mktemp("reference")
    assert main(run_args(tiny_voc, workdir, proposal_cache)) == 0
    return workdir


def manifest(workdir: Path, unit: str) -> dict:
    return json.loads((workdir / "stages" / f"{unit}.json").read_text())


def metrics(workdir: Path, split: str = "test") -> dict:
    data = json.loads((workdir / "eval" / split / "metrics.json").read_text())
    return {"mAP": data["mAP"], "classes": data["classes"]}


def detections(path: Path) -> dict[str, ImageDetections]:
    return load_detections(path)[0]


def assert_same_detections(a: Path, b: Path) -> None:
    first, second = detections(a), detections(b)
    assert first.keys() == second.keys()
    for image_id, dets in first.items():
        for field in ("boxes", "scores", "labels"):
            np.testing.assert_array_equal(getattr(dets, field), getattr(second[image_id], field))


def random_baseline(dets: dict[str, ImageDetections], dataset, metric: str, seeds: int = 10) -> list[float]:
    """mAP of the same boxes and labels with uniformly random scores, one value per seed."""
    values = []
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        shuffled = {k: ImageDetections(d.boxes, rng.random(len(d)), d.labels) for k, d in dets.items()}
        values.append(score(shuffled, dataset, metric).mAP)
    return values


def copy_run(source: Path, target: Path, drop: tuple[str, ...] = ()) -> Path:
    """A copy of a run folder without the manifests whose unit names start with `drop`."""
    shutil.copytree(source, target)
    for path in (target / "stages").glob("*.json"):
        if path.stem.startswith(drop):
            path.unlink()
    return target


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_run_end_to_end_writes_every_stage_and_beats_random_scores(tiny_voc, proposal_cache, tmp_path, capsys):
    """The shrunken real run: all stages, train and test evaluated, train mAP above random scores."""
    workdir = tmp_path / "run"
    args = run_args(tiny_voc, workdir, proposal_cache, "eval.splits=[train, test]", "train.iterations=60",
                    "train.lr_steps=[50]", "train.regions_per_batch=32", "model.aux_classifiers=false",
                    "train.checkpoint_every=20")
    assert main(args) == 0
    assert "evaluate-train: mAP" in capsys.readouterr().out
    train_folder = workdir / manifest(workdir, "train")["info"]["folder"]
    expected = [
        "config.yaml", "run.log", "report.md", "summary.json", "detections_train.npz", "detections_test.npz",
        *(f"stages/{u}.json" for u in ("proposals-train", "proposals-test", "train", "detect-train",
                                       "detect-test", "evaluate-train", "evaluate-test", "report")),
        *(f"eval/{s}/{f}" for s in ("train", "test") for f in ("metrics.json", "report.md", "report.html")),
    ]
    assert [name for name in expected if not (workdir / name).is_file()] == []
    for name in ("model_final.pt", "checkpoints/last.pt", "train_log.csv", "train_curve.png", "config.yaml"):
        assert (train_folder / name).is_file(), name
    assert "| train | voc10 |" in (workdir / "report.md").read_text()

    config = load_config(workdir / "config.yaml")
    dataset = load_dataset(config.data, "train")
    baseline = random_baseline(detections(workdir / "detections_train.npz"), dataset, "voc10")
    trained = metrics(workdir, "train")["mAP"]
    assert trained > max(baseline), (trained, baseline)


def test_rerun_reuses_every_stage(reference, tiny_voc, proposal_cache, caplog):
    before = {p.name: p.stat().st_mtime_ns for p in (reference / "stages").iterdir()}
    caplog.set_level("INFO", logger="detector.experiment.pipeline")
    assert main(run_args(tiny_voc, reference, proposal_cache)) == 0
    assert {p.name: p.stat().st_mtime_ns for p in (reference / "stages").iterdir()} == before
    reused = [r.getMessage() for r in caplog.records if r.getMessage().endswith("complete, reused")]
    assert len(reused) == len(before) == 6  # proposals x2, train, detect, evaluate, report


# --------------------------------------------------------------------------- faults


def test_kills_during_training_and_detection_then_rerun_give_identical_metrics(
        reference, tiny_voc, proposal_cache, tmp_path, monkeypatch):
    from detector.inference.detector import Detector
    from detector.training.finetune import Trainer

    args = run_args(tiny_voc, tmp_path / "run", proposal_cache)
    step, detect = Trainer.step, Detector.detect
    calls = {"step": 0, "detect": 0}

    def killed_step(self, batch):
        calls["step"] += 1
        if calls["step"] == 3:
            raise KeyboardInterrupt
        return step(self, batch)

    def killed_detect(self, *a, **k):
        calls["detect"] += 1
        if calls["detect"] == 2:
            raise KeyboardInterrupt
        return detect(self, *a, **k)

    monkeypatch.setattr(Trainer, "step", killed_step)
    assert main(args) == 130
    assert not (tmp_path / "run" / "stages" / "train.json").exists()
    monkeypatch.setattr(Trainer, "step", step)
    monkeypatch.setattr(Detector, "detect", killed_detect)
    assert main(args) == 130
    assert manifest(tmp_path / "run", "train")["info"]["resumed"] is True
    assert not (tmp_path / "run" / "stages" / "detect-test.json").exists()
    monkeypatch.setattr(Detector, "detect", detect)
    assert main(args) == 0
    assert metrics(tmp_path / "run") == metrics(reference)
    assert_same_detections(tmp_path / "run" / "detections_test.npz", reference / "detections_test.npz")


def test_damaged_outputs_are_redone_not_used(reference, tiny_voc, proposal_cache, tmp_path):
    workdir = copy_run(reference, tmp_path / "run")
    model = workdir / manifest(workdir, "train")["info"]["folder"] / "model_final.pt"
    model.write_bytes(model.read_bytes()[:1000])
    (workdir / "detections_test.npz").write_bytes(b"not a zip")
    assert main(run_args(tiny_voc, workdir, proposal_cache)) == 0
    assert manifest(workdir, "train")["info"]["resumed"] is True  # final model rebuilt from last.pt
    assert metrics(workdir) == metrics(reference)
    assert_same_detections(workdir / "detections_test.npz", reference / "detections_test.npz")


def test_changed_settings_rerun_the_stages_downstream_only(reference, tiny_voc, proposal_cache, tmp_path):
    workdir = copy_run(reference, tmp_path / "run")
    assert main(run_args(tiny_voc, workdir, proposal_cache, "test.nms_iou=0.5")) == 0
    assert manifest(workdir, "train") == manifest(reference, "train")
    assert manifest(workdir, "proposals-test") == manifest(reference, "proposals-test")
    assert manifest(workdir, "detect-test")["key"] != manifest(reference, "detect-test")["key"]
    assert manifest(workdir, "evaluate-test")["key"] != manifest(reference, "evaluate-test")["key"]

    assert main(run_args(tiny_voc, workdir, proposal_cache, "train.lr=0.02", "train.iterations=1")
                + ["--stages", "train"]) == 0
    new, old = manifest(workdir, "train"), manifest(reference, "train")
    assert new["key"] != old["key"] and new["info"]["folder"] != old["info"]["folder"]
    assert (workdir / old["info"]["folder"] / "model_final.pt").is_file()  # kept, never reused for lr=0.02


def test_stage_selection_needs_complete_upstream_stages(tiny_voc, proposal_cache, tmp_path, capsys):
    args = run_args(tiny_voc, tmp_path / "run", proposal_cache)
    assert main(args + ["--stages", "detect"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "stage train is not complete" in err
    assert main(args + ["--stages", "proposals"]) == 0
    assert sorted(p.name for p in (tmp_path / "run" / "stages").iterdir()) == ["proposals-test.json", "proposals-train.json"]
    assert not (tmp_path / "run" / "train").exists()
    assert main(args + ["--stages", "train", "--shard", "0/2"]) == 2
    assert "--shard runs only the proposals and detect stages" in capsys.readouterr().err


def test_unwritable_or_full_run_folder_fails_before_any_work(tiny_voc, proposal_cache, tmp_path, monkeypatch, capsys):
    (tmp_path / "file").write_text("")
    assert main(run_args(tiny_voc, tmp_path / "file" / "run", proposal_cache)) == 2
    assert "run folder is not writable" in capsys.readouterr().err

    import detector.experiment.run_folder

    monkeypatch.setattr(detector.experiment.run_folder.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(1, 1, 2**20))
    assert main(run_args(tiny_voc, tmp_path / "full", proposal_cache)) == 2
    assert "only 1 MiB free" in capsys.readouterr().err
    assert not (tmp_path / "full" / "stages").exists()


# --------------------------------------------------------------------------- several processes


@pytest.mark.slow
def test_two_shards_then_merge_equal_the_single_process_run(reference, tiny_voc, proposal_cache, tmp_path):
    """Proposals and detection in two concurrent processes (shards 0/2, 1/2) into their own
    proposal cache, then the merging run: the same proposals, detections and metrics."""
    workdir = copy_run(reference, tmp_path / "run", drop=("proposals", "detect", "evaluate", "report"))
    args = run_args(tiny_voc, workdir, workdir / "proposals")
    shards = [subprocess.Popen([sys.executable, "-m", "detector", *args, "--stages", "proposals", "detect",
                                "--shard", f"{i}/2"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
              for i in range(2)]
    outputs = [process.communicate(timeout=600)[0].decode()[-2000:] for process in shards]
    assert [p.returncode for p in shards] == [0, 0], outputs
    assert not (workdir / "stages" / "detect-test.json").exists()
    assert main(args) == 0
    assert_same_detections(workdir / "detections_test.npz", reference / "detections_test.npz")
    assert metrics(workdir) == metrics(reference)
    names = sorted(p.relative_to(proposal_cache) for p in proposal_cache.glob("*/*.npz"))
    assert sorted(p.relative_to(workdir / "proposals") for p in (workdir / "proposals").glob("*/*.npz")) == names
    for name in names:
        with np.load(proposal_cache / name) as single, np.load(workdir / "proposals" / name) as sharded:
            np.testing.assert_array_equal(single["boxes"], sharded["boxes"])


@pytest.mark.slow
def test_training_stage_under_torchrun_with_two_cpu_ranks(tiny_voc, proposal_cache, tmp_path):
    args = run_args(tiny_voc, tmp_path / "run", proposal_cache, "train.iterations=2")
    assert main(args + ["--stages", "proposals"]) == 0
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29541",
               "-m", "detector", *args, "--stages", "train"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    train = manifest(tmp_path / "run", "train")
    assert (tmp_path / "run" / train["info"]["folder"] / "model_final.pt").is_file()
    assert (tmp_path / "run" / "run.rank1.log").is_file()
    assert main(args) == 0  # single process finishes detection, evaluation and report


# --------------------------------------------------------------------------- ensembles


def test_ensemble_scores_each_member_beside_the_fused_model(reference, tiny_voc, proposal_cache, tmp_path):
    member = tmp_path / "member.yaml"
    member.write_text(yaml.safe_dump({
        "base": "tiny", "name": "tiny_b", "seed": 1, "output_dir": str(tmp_path / "member_b"),
        "data": {"root": str(tiny_voc)}, "proposals": {"cache_dir": str(proposal_cache)},
    }))
    train_before = (reference / "stages" / "train.json").stat().st_mtime_ns
    args = run_args(tiny_voc, tmp_path / "ensemble", proposal_cache, f"ensemble=[{reference}, {member}]",
                    "test.fusion=vote")
    assert main(args) == 0
    summary = json.loads((tmp_path / "ensemble" / "summary.json").read_text())
    assert set(summary["mAP"]) == {"evaluate-test", "evaluate-test@tiny", "evaluate-test@tiny_b"}
    for folder in ("", "members/tiny", "members/tiny_b"):
        assert (tmp_path / "ensemble" / folder / "eval" / "test" / "metrics.json").is_file()
    report = (tmp_path / "ensemble" / "report.md").read_text()
    assert "| test@tiny |" in report and "| test@tiny_b |" in report and "| test |" in report
    assert (reference / "stages" / "train.json").stat().st_mtime_ns == train_before  # member reused
    assert manifest(tmp_path / "member_b", "train")["info"]["iterations"] == 4


def test_extra_metrics_rescore_the_cached_detections_only(reference, tiny_voc, proposal_cache, tmp_path):
    workdir = copy_run(reference, tmp_path / "run")
    assert main(run_args(tiny_voc, workdir, proposal_cache, "eval.extra_metrics=[coco]")) == 0
    assert manifest(workdir, "detect-test") == manifest(reference, "detect-test")
    evaluation = manifest(workdir, "evaluate-test")
    assert evaluation["key"] != manifest(reference, "evaluate-test")["key"]
    coco = json.loads((workdir / "eval" / "test" / "coco" / "metrics.json").read_text())
    assert evaluation["info"]["extra"] == {"coco": coco["mAP"]} and "APs" in coco["extras"]
    assert metrics(workdir) == metrics(reference)  # the primary metric and its report are unchanged
    report = (workdir / "report.md").read_text()
    assert "| test | voc10 |" in report and "| test | coco |" in report
