"""Run under torchrun by test_pretrain: one DDP epoch, then each rank writes a digest of its weights."""
import hashlib
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detector.config import load_config  # noqa: E402
from detector.distributed import init_distributed, shutdown  # noqa: E402
from detector.pretrain import Pretrainer  # noqa: E402


def main(data_root: str, run_dir: str) -> None:
    config = load_config("tiny", [f"pretrain.root={data_root}", f"output_dir={run_dir}", "pretrain.epochs=1",
                                  "pretrain.batch_size=2", "pretrain.precision=fp32"])
    context = init_distributed()
    torch.manual_seed(config.seed + context.rank)  # different local init: DDP must broadcast rank 0's
    trainer = Pretrainer(config, context)
    trainer.run()
    digest = hashlib.sha1()
    for _, tensor in sorted(trainer.model.named_parameters()):
        digest.update(tensor.detach().float().numpy().tobytes())
    Path(run_dir, f"rank{context.rank}.txt").write_text(digest.hexdigest())
    shutdown(context)


if __name__ == "__main__":
    main(*sys.argv[1:3])
