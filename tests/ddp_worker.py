"""Run under torchrun by test_train: 2 DDP iterations, then each rank writes a digest of its weights.

Only parameters are compared: batch-norm running statistics are per-rank by design in DDP (each
rank's forward updates them; rank 0's are the ones saved).
"""
import hashlib
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detector.config import load_config  # noqa: E402
from detector.distributed import init_distributed, shutdown  # noqa: E402
from detector.train import Trainer  # noqa: E402


def main(data_root: str, run_dir: str) -> None:
    config = load_config("tiny", [f"data.root={data_root}", f"output_dir={run_dir}", "train.iterations=2"])
    context = init_distributed()
    torch.manual_seed(config.seed + context.rank)  # different local init: DDP must broadcast rank 0's
    trainer = Trainer(config, context)
    trainer.run()
    digest = hashlib.sha1()
    for _, tensor in sorted(trainer.model.named_parameters()):
        digest.update(tensor.detach().float().numpy().tobytes())
    Path(run_dir, f"rank{context.rank}.txt").write_text(digest.hexdigest())
    shutdown(context)


if __name__ == "__main__":
    main(*sys.argv[1:3])
