"""Fine-tuning: losses, checkpoints, exact resume after an interrupt, run-directory guards, DDP."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from detector.common.distributed import DistContext
from detector.common.errors import UserError
from detector.config import load_config
from detector.modeling.checkpoint import load_checkpoint
from detector.training.finetune import Trainer, train
from detector.training.schedules import finetune_lr_factor as lr_factor
from tests.ddp_worker import run_two_ranks


def tiny_config(data_root: Path, run_dir: Path, *extra: str):
    return load_config("tiny", [f"data.root={data_root}", f"output_dir={run_dir}", *extra])


def test_lr_schedules():
    config = load_config("tiny", ["train.lr_steps=[2, 4]", "train.lr_gamma=0.5", "train.warmup_iterations=0"])
    assert [lr_factor(config.train, i) for i in range(6)] == [1, 1, 0.5, 0.5, 0.25, 0.25]
    cosine = load_config("tiny", ["train.schedule=cosine", "train.iterations=10"]).train
    assert lr_factor(cosine, 0) == 1.0 and lr_factor(cosine, 5) == pytest.approx(0.5) and lr_factor(cosine, 10) == pytest.approx(0)


def test_training_writes_everything_and_resume_is_exact(tiny_voc, tmp_path, monkeypatch):
    straight = train(tiny_config(tiny_voc, tmp_path / "a", "train.ema_decay=0.9"))
    final = load_checkpoint(straight)
    for name in ("config.yaml", "train_log.csv", "train_curve.png", "checkpoints/last.pt"):
        assert (tmp_path / "a" / name).is_file()
    assert final["iteration"] == 4 and final["classes"] == ["square", "disc"] and final["ema"] is not None
    assert len((tmp_path / "a" / "train_log.csv").read_text().splitlines()) == 5  # header + 4 iterations

    # Interrupt at the third step: the checkpoint holds 2 finished iterations; resuming ends identical.
    calls = {"n": 0}
    original = Trainer.step

    def flaky_step(self, batch):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(self, batch)

    monkeypatch.setattr(Trainer, "step", flaky_step)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(tiny_voc, tmp_path / "b", "train.ema_decay=0.9"))
    assert load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")["iteration"] == 2
    monkeypatch.setattr(Trainer, "step", original)
    resumed = load_checkpoint(train(tiny_config(tiny_voc, tmp_path / "b", "train.ema_decay=0.9"), resume=True))
    for key, value in final["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    for key, value in final["ema"].items():
        assert torch.equal(value, resumed["ema"][key]), key
    log = (tmp_path / "b" / "train_log.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in log[1:]] == ["1", "2", "3", "4"]


def test_run_directory_guards(tiny_voc, tmp_path):
    with pytest.raises(UserError, match="nothing to resume"):
        train(tiny_config(tiny_voc, tmp_path / "r"), resume=True)
    train(tiny_config(tiny_voc, tmp_path / "r", "train.iterations=1"))
    with pytest.raises(UserError, match="already holds a training checkpoint"):
        train(tiny_config(tiny_voc, tmp_path / "r", "train.iterations=1"))
    with pytest.raises(UserError, match="different model settings"):
        train(tiny_config(tiny_voc, tmp_path / "r", "train.iterations=2", "model.input_size=96"), resume=True)
    with pytest.raises(UserError, match="do not match"):
        train(tiny_config(tiny_voc, tmp_path / "r", "train.iterations=2", "data.classes=[square, disc, star]",
                          "data.skip_unknown_classes=true"), resume=True)


def test_split_without_objects_is_a_clear_error(tiny_voc, tmp_path):
    config = tiny_config(tiny_voc, tmp_path / "e", "data.classes=[star]", "data.skip_unknown_classes=true")
    with pytest.raises(UserError, match="no image has a"):
        Trainer(config, DistContext())


@pytest.mark.slow
def test_ddp_two_cpu_ranks_keep_identical_weights(tiny_voc, tmp_path):
    digests = run_two_ranks("train", tiny_voc, tmp_path / "run", port=29533)
    assert digests[0] == digests[1]
    assert (tmp_path / "run" / "model_final.pt").is_file()
    assert not (tmp_path / "run" / "rank1_saved").exists()


def test_validation_map_is_logged_without_changing_training(tiny_voc, tmp_path):
    plain = load_checkpoint(train(tiny_config(tiny_voc, tmp_path / "plain", "train.iterations=2")))
    validated = load_checkpoint(train(tiny_config(tiny_voc, tmp_path / "val", "train.iterations=2",
                                                  "train.val_every=1", "train.val_images=2")))
    rows = (tmp_path / "val" / "val_log.csv").read_text().splitlines()
    assert rows[0] == "iteration,mAP" and [r.split(",")[0] for r in rows[1:]] == ["1", "2"]
    assert all(0.0 <= float(r.split(",")[1]) <= 1.0 for r in rows[1:])
    for key, value in plain["model"].items():
        assert torch.equal(value, validated["model"][key]), key


def test_worker_processes_give_the_same_weights(tiny_voc, tmp_path):
    """Batches made in a DataLoader worker (a forkserver child) equal those made in-process."""
    in_process = load_checkpoint(train(tiny_config(tiny_voc, tmp_path / "a", "train.iterations=2")))
    in_worker = load_checkpoint(train(tiny_config(tiny_voc, tmp_path / "b", "train.iterations=2", "train.workers=1")))
    for key, value in in_process["model"].items():
        assert torch.equal(value, in_worker["model"][key]), key
