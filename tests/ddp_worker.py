"""Run under torchrun by the DDP tests: a short training run (`train`: 2 iterations of the tiny
detection config; `pretrain`: one epoch of classification pre-training), then each rank writes a
digest of its weights.

Only parameters are compared: batch-norm running statistics are per-rank by design in DDP (each
rank's forward updates them; rank 0's are the ones saved).
"""
import hashlib
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from detector.common.distributed import init_distributed, shutdown  # noqa: E402
from detector.config import load_config  # noqa: E402


def run_two_ranks(kind: str, data_root: Path, run_dir: Path, port: int) -> list[str]:
    """Start this script under torchrun with 2 CPU ranks; the ranks' weight digests."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
               __file__, kind, str(data_root), str(run_dir)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    return [(run_dir / f"rank{r}.txt").read_text() for r in (0, 1)]


def make_trainer(kind: str, data_root: str, run_dir: str, context):
    if kind == "train":
        from detector.training.finetune import Trainer

        config = load_config("tiny", [f"data.root={data_root}", f"output_dir={run_dir}", "train.iterations=2"])
        return Trainer(config, context)
    from detector.training.pretrain import Pretrainer

    config = load_config("tiny", [f"pretrain.root={data_root}", f"output_dir={run_dir}", "pretrain.epochs=1",
                                  "pretrain.batch_size=2", "pretrain.precision=fp32"])
    return Pretrainer(config, context)


def main(kind: str, data_root: str, run_dir: str) -> None:
    context = init_distributed()
    torch.manual_seed(context.rank)  # different local init: DDP must broadcast rank 0's
    trainer = make_trainer(kind, data_root, run_dir, context)
    trainer.run()
    digest = hashlib.sha1()
    for _, tensor in sorted(trainer.model.named_parameters()):
        digest.update(tensor.detach().float().numpy().tobytes())
    Path(run_dir, f"rank{context.rank}.txt").write_text(digest.hexdigest())
    shutdown(context)


if __name__ == "__main__":
    main(*sys.argv[1:4])
