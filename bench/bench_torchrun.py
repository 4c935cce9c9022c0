"""How much faster are proposals + detection of a split with torchrun ranks? (issue 27)

Runs ``rcnn eval`` on the same split and weights twice from empty caches: one process (the
baseline; its proposal workers use every core), then ``torchrun --standalone --nproc_per_node N``
(each rank its share of the images, the cores split among the ranks). Prints both wall times,
the speed-up, the per-image cost, and what that cost projects for ILSVRC DET val (20,121 images)
on M machines of this kind. The metrics of both runs must be identical; the script says if not.

    python bench/bench_torchrun.py --config animals_voc --split test --weights model.pt
    python bench/bench_torchrun.py            # 16 synthetic images, a random light-head model
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from detector.bench.report import cpu_name  # noqa: E402

ILSVRC_DET_VAL_IMAGES = 20121


def synthetic_setup(scratch: Path, images: int) -> tuple[list[str], Path]:
    """A tiny-config VOC split of `images` synthetic 500x375 photos-like images and a random
    light-head checkpoint: (config arguments, weights)."""
    import torch

    from detector.modeling.build import build_model
    from detector.modeling.checkpoint import save_checkpoint
    from tests.synthetic import make_voc_dataset

    root = make_voc_dataset(scratch / "data", {"train": 1, "test": images}, size=(500, 375), max_objects=4)
    torch.manual_seed(0)
    weights = scratch / "roi.pt"
    settings = {"mode": "roi", "roi_layer": "5b-dilated", "input_size": 224, "context_pad": 16}
    save_checkpoint(weights, {"model": build_model(2, mode="roi", roi_layer="5b-dilated").state_dict(),
                              "classes": ["square", "disc"], "config": {"model": settings}})
    return ["--config", "tiny", "--set", f"data.root={root}", "--set", "proposals.max_side=500",
            "--set", "proposals.max_boxes=2000"], weights


def timed_eval(launcher: list[str], args: list[str], out: Path) -> tuple[float, dict]:
    """Wall seconds of one `rcnn eval` from empty caches, and its metrics (without timings)."""
    command = [*launcher, "-m", "detector", "eval", *args, "--set", f"output_dir={out}",
               "--set", f"proposals.cache_dir={out / 'proposals'}"]
    start = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    metrics = json.loads(next(out.glob("eval/*/metrics.json")).read_text())
    metrics.pop("timing")
    return seconds, metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None, help="config to evaluate (default: synthetic images)")
    parser.add_argument("--split", default=None, help="split of --config (default: its test split)")
    parser.add_argument("--weights", default=None, help="checkpoint (required with --config)")
    parser.add_argument("--images", type=int, default=16, help="synthetic images (without --config)")
    parser.add_argument("--ranks", type=int, default=2, help="torchrun processes on this machine")
    parser.add_argument("--proposal-workers", type=int, default=-1,
                        help="test.proposal_workers of both runs (-1 auto: the single process searches "
                             "proposals on every core; 0: in one thread beside the network)")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        if options.config:
            if not options.weights:
                sys.exit("--config needs --weights")
            args, weights = ["--config", options.config], Path(options.weights)
            if options.split:
                args += ["--split", options.split]
        else:
            args, weights = synthetic_setup(scratch, options.images)
        args += ["--weights", str(weights), "--set", f"test.proposal_workers={options.proposal_workers}"]
        one, metrics_one = timed_eval([sys.executable], args, scratch / "one")
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(options.ranks)]
        many, metrics_many = timed_eval(torchrun, args, scratch / "many")
    images = metrics_one["settings"].get("images") or options.images
    print(f"CPU: {cpu_name()}, {os.cpu_count()} logical CPUs; {images} images")
    print("| run | wall s | s/image | x one process |\n|---|---|---|---|")
    print(f"| 1 process | {one:.1f} | {one / images:.3f} | 1.00x (baseline) |")
    print(f"| torchrun, {options.ranks} ranks | {many:.1f} | {many / images:.3f} | {one / many:.2f}x |")
    print(f"metrics identical: {'yes' if metrics_one == metrics_many else 'NO'}")
    print(f"ILSVRC DET val ({ILSVRC_DET_VAL_IMAGES} images) at {many / images:.3f} s/image per machine like this one: "
          + ", ".join(f"{m} machine(s) {ILSVRC_DET_VAL_IMAGES * many / images / m / 3600:.1f} h" for m in (1, 4, 16, 64)))


if __name__ == "__main__":
    main()
