"""Milliseconds per image of detect_from_scores for each fusion, ILSVRC scale (N=2000, C=200).

Synthetic but realistic inputs: softmax scores dominated by background, a few objects whose
overlapping proposals score high for their class, per-class refined boxes jittered around the
proposals; extra ensemble members perturb logits and boxes. Prints the median of several runs.

    python bench/bench_postprocess.py [--proposals 2000] [--classes 200] [--runs 7] [--threads 1]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detector.data.boxes import box_iou  # noqa: E402
from detector.inference.ensemble import FUSIONS
from detector.inference.postprocess import detect_from_scores

HEIGHT, WIDTH = 375, 500


def random_boxes(n: int, gen: torch.Generator) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=gen) * torch.tensor([WIDTH * 0.8, HEIGHT * 0.8])
    wh = 20 + torch.rand(n, 2, generator=gen) * torch.tensor([WIDTH * 0.5, HEIGHT * 0.5])
    return torch.cat([xy, xy + wh], dim=1)


def make_inputs(k: int, n: int, c: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores [k, n, c+1] and boxes [k, n, c, 4] for one synthetic image with 5 objects."""
    gen = torch.Generator().manual_seed(seed)
    proposals = random_boxes(n, gen)
    objects, classes = random_boxes(5, gen), torch.randint(0, c, (5,), generator=gen)
    logits = torch.randn(n, c + 1, generator=gen)
    logits[:, 0] += 4.0  # mostly background
    overlap = box_iou(proposals, objects)  # [n, 5]
    logits[:, 1:].index_add_(1, classes, 10.0 * overlap)
    scores, boxes = [], []
    for _ in range(k):
        noisy = logits + 0.5 * torch.randn(n, c + 1, generator=gen)
        scores.append(torch.softmax(noisy, dim=1))
        boxes.append(proposals[:, None, :] + 3.0 * torch.randn(n, c, 4, generator=gen))
    return torch.stack(scores), torch.stack(boxes)


def median_ms(fn, runs: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proposals", type=int, default=2000)
    parser.add_argument("--classes", type=int, default=200)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"N={args.proposals} C={args.classes} torch threads={torch.get_num_threads()}")
    print(f"{'K':>2} {'fusion':>6} {'cand/model':>10} {'dets':>5} {'ms/image':>9}")
    for k in (1, 3):
        scores, boxes = make_inputs(k, args.proposals, args.classes)
        candidates = int((scores[:, :, 1:] >= 0.05).sum()) // k
        for fusion in FUSIONS:
            def run(fusion=fusion):
                return detect_from_scores(scores, boxes, (HEIGHT, WIDTH), fusion=fusion)

            ms = median_ms(run, args.runs)
            print(f"{k:>2} {fusion:>6} {candidates:>10} {len(run()[1]):>5} {ms:>9.2f}")


if __name__ == "__main__":
    main()
