"""Load and faults, measured (issue 26, item 7): repeated evaluation, concurrent detection, and
`rcnn run` killed at random moments.

1. ``rcnn eval`` ROUNDS times back to back in this process (the run folder, with its cached
   detections, is removed between rounds, so each round detects again; proposals stay cached):
   RSS, open file descriptors, threads and child processes after each round, and whether every
   round's metrics.json is identical.
2. 4 ``detect`` processes at once on one folder, each into its own --out: all exit 0 and write
   the same result files as one process alone.
3. ``rcnn run`` of the tiny config SIGKILLed at KILLS random moments of its uninterrupted
   duration, each then rerun to completion: whether each ends with the uninterrupted metrics.

    python bench/soak.py --config aquarium --split test --weights model.pt      # real data
    python bench/soak.py                                                        # synthetic images
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from detector.bench.report import cpu_name  # noqa: E402
from detector.cli import main as rcnn  # noqa: E402


def process_state() -> dict[str, float]:
    """This process's resident memory (MiB), open descriptors, threads and live children."""
    rss_pages = int(Path("/proc/self/statm").read_text().split()[1])
    children = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _parent(p) == os.getpid()]
    return {"rss_mib": rss_pages * os.sysconf("SC_PAGE_SIZE") / 2**20, "fds": len(os.listdir("/proc/self/fd")),
            "threads": threading.active_count(), "children": len(children)}


def _parent(proc: Path) -> int:
    try:
        return int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def soak_eval(args: list[str], out: Path, rounds: int) -> list[dict]:
    """`rcnn eval` `rounds` times in this process; per round its state and metrics digest."""
    rows = []
    for round_ in range(rounds):
        shutil.rmtree(out, ignore_errors=True)
        code = rcnn([*args, "--set", f"output_dir={out}", "--set", f"proposals.cache_dir={out.parent / 'proposals'}"])
        metrics = json.loads(next(out.glob("eval/*/metrics.json")).read_text())
        metrics.pop("timing")
        rows.append({"round": round_ + 1, "exit": code, **process_state(), "metrics": json.dumps(metrics, sort_keys=True)})
        print(f"eval round {round_ + 1}: {rows[-1]['rss_mib']:.0f} MiB, {rows[-1]['fds']} fds, "
              f"{rows[-1]['threads']} threads, {rows[-1]['children']} children", flush=True)
    return rows


def concurrent_detect(images: Path, weights: Path, scratch: Path, processes: int = 4) -> bool:
    """`processes` detect runs at once vs one alone: all exit 0 with identical COCO results."""
    def command(out: Path) -> list[str]:
        return [sys.executable, "-m", "detector", "detect", str(images), "--weights", str(weights), "--out", str(out),
                "--coco-json", str(out / "coco.json"), "--json"]

    alone = subprocess.run(command(scratch / "alone"), cwd=REPO, capture_output=True, text=True)
    runs = [subprocess.Popen(command(scratch / f"p{i}"), cwd=REPO, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL) for i in range(processes)]
    codes = [run.wait() for run in runs]
    expected = (scratch / "alone" / "coco.json").read_text()
    same = all((scratch / f"p{i}" / "coco.json").read_text() == expected for i in range(processes))
    print(f"{processes} concurrent detect runs: exit codes {codes} (alone: {alone.returncode}); "
          f"results identical: {'yes' if same else 'NO'}", flush=True)
    return alone.returncode == 0 and codes == [0] * processes and same


def kills(run_args: list[str], scratch: Path, tries: int, seed: int) -> list[dict]:
    """SIGKILL `rcnn run` at random moments, rerun each to completion, compare the metrics."""
    start = time.perf_counter()
    reference = scratch / "reference"
    subprocess.run([sys.executable, "-m", "detector", *run_args, "--workdir", str(reference)], cwd=REPO, check=True,
                   capture_output=True)
    duration = time.perf_counter() - start
    expected = json.loads((reference / "summary.json").read_text())["mAP"]
    rng, rows = random.Random(seed), []
    for attempt in range(tries):
        workdir, delay = scratch / f"killed{attempt}", rng.uniform(0.05, 0.95) * duration
        run = subprocess.Popen([sys.executable, "-m", "detector", *run_args, "--workdir", str(workdir)], cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        time.sleep(delay)
        killed = run.poll() is None
        if killed:
            os.killpg(run.pid, signal.SIGKILL)
        run.wait()
        stages = sorted(p.stem for p in (workdir / "stages").glob("*.json")) if (workdir / "stages").is_dir() else []
        rerun = subprocess.run([sys.executable, "-m", "detector", *run_args, "--workdir", str(workdir)], cwd=REPO,
                               capture_output=True, text=True)
        metrics = json.loads((workdir / "summary.json").read_text())["mAP"] if rerun.returncode == 0 else None
        rows.append({"at_s": round(delay, 1), "killed": killed, "complete_before": stages, "rerun_exit": rerun.returncode,
                     "same_metrics": metrics == expected})
        print(f"kill {attempt + 1} at {delay:.1f} s of {duration:.1f} s (killed: {killed}, done before: "
              f"{len(stages)} units): rerun exit {rerun.returncode}, metrics identical: "
              f"{'yes' if metrics == expected else 'NO'}", flush=True)
    return rows


def synthetic(scratch: Path) -> tuple[list[str], Path, Path, Path]:
    """Tiny-config data (24 test images), a random checkpoint: (eval args, weights, images, data root)."""
    import torch

    from detector.modeling.build import build_model
    from detector.modeling.checkpoint import save_checkpoint
    from tests.synthetic import make_voc_dataset

    root = make_voc_dataset(scratch / "data", {"train": 8, "test": 24})
    torch.manual_seed(0)
    weights = scratch / "model.pt"
    save_checkpoint(weights, {"model": build_model(2).state_dict(), "classes": ["square", "disc"],
                              "config": {"model": {"input_size": 64, "context_pad": 4}}})
    return (["eval", "--config", "tiny", "--set", f"data.root={root}", "--weights", str(weights)], weights,
            root / "JPEGImages", root)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None, help="config of the eval soak (default: synthetic data)")
    parser.add_argument("--split", default=None)
    parser.add_argument("--weights", default=None)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        eval_args, weights, images, root = synthetic(scratch)
        if options.config:
            eval_args = ["eval", "--config", options.config, "--weights", options.weights,
                         *(["--split", options.split] if options.split else [])]
            weights = Path(options.weights)
        print(f"CPU: {cpu_name()}, {os.cpu_count()} logical CPUs")
        rows = soak_eval(eval_args, scratch / "soak", options.rounds)
        first, last = rows[0], rows[-1]
        print(f"eval x{len(rows)}: RSS {first['rss_mib']:.0f} -> {last['rss_mib']:.0f} MiB, fds {first['fds']} -> "
              f"{last['fds']}, threads {first['threads']} -> {last['threads']}, children {last['children']}; "
              f"exit codes {sorted({r['exit'] for r in rows})}; metrics identical: "
              f"{'yes' if len({r['metrics'] for r in rows}) == 1 else 'NO'}")
        concurrent_detect(images, weights, scratch / "detect")
        run_args = ["run", "--config", "tiny", "--workers", "1", "--set", f"data.root={root}", "--set", "train.iterations=8"]
        results = kills(run_args, scratch / "kills", options.kills, options.seed)
        print(f"kills: {sum(r['killed'] for r in results)} of {len(results)} runs killed; reruns identical to the "
              f"uninterrupted metrics: {sum(r['same_metrics'] for r in results)} of {len(results)}")


if __name__ == "__main__":
    main()
