"""Does int8 quantisation speed up the GoogLeNet region classifier on this CPU? (issue 8, item 4)

Post-training static quantisation (FX graph mode, the x86 / fbgemm backend: int8 convolutions
and linear layers, per-channel weights, observers calibrated on warped regions) of the same
randomly initialised region classifier the `rcnn bench` uses, against fp32 channels_last in the
same run. Prints ms per 224x224 crop (median of repeats), the ratio, and the agreement of the
int8 logits with fp32. Weights are random (He-normal, see detector.benchmark.benchmark_model),
so agreement is a lower bound on a trained model's numerical fidelity, not an accuracy figure.

    python bench/bench_quantization.py                  # batch 32, 5 repeats
    python bench/bench_quantization.py --batch 8 --repeats 3
"""
from __future__ import annotations

import argparse
import copy

import torch
from torch.ao.quantization import get_default_qconfig_mapping
from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

from detector.benchmark import agreement, benchmark_model, crops_from, inference_copy, median_seconds, synthetic_image
from detector.precision import flush_denormals
from proposals import propose_with_config
from proposals.config import ProposalConfig


class Logits(torch.nn.Module):
    """The classifier's class logits alone (FX tracing needs plain tensor outputs)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, regions: torch.Tensor) -> torch.Tensor:
        return self.model(regions).class_logits


def warped_regions(count: int, seed: int) -> torch.Tensor:
    """`count` R-CNN warps [count, 3, 224, 224] of selective-search boxes on a synthetic image."""
    image = synthetic_image(seed=seed)
    return crops_from(image, propose_with_config(image, ProposalConfig(max_boxes=count)), count, 224, 16)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32, help="regions per forward pass")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs (median reported)")
    args = parser.parse_args()
    flush_denormals()
    torch.manual_seed(0)
    fp32 = Logits(inference_copy(benchmark_model())).eval()
    calibration, crops = warped_regions(64, seed=1), warped_regions(args.batch, seed=0)

    torch.backends.quantized.engine = "x86"
    prepared = prepare_fx(copy.deepcopy(fp32), get_default_qconfig_mapping("x86"), (calibration[:1],))
    with torch.inference_mode():
        for chunk in calibration.split(16):
            prepared(chunk)
    int8 = convert_fx(prepared)

    fp32_cl = fp32.to(memory_format=torch.channels_last)
    crops_cl = crops.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        reference = fp32_cl(crops_cl)
        cases = {"fp32 channels_last": (fp32_cl, crops_cl), "int8 static (fbgemm/x86)": (int8, crops)}
        times = {name: median_seconds(lambda m=m, x=x: m(x), args.repeats, 1, torch.device("cpu"))
                 for name, (m, x) in cases.items()}
        stats = agreement(int8(crops), reference)
    base = times["fp32 channels_last"]
    print(f"batch {args.batch}, median of {args.repeats}, {torch.get_num_threads()} threads")
    print("| model | ms/crop | x fp32 |\n|---|---|---|")
    for name, seconds in times.items():
        print(f"| {name} | {1000 * seconds / args.batch:.1f} | {seconds / base:.2f} |")
    print(f"int8 vs fp32: top-1 agreement {100 * stats['top1_agreement']:.0f}%, max abs logit diff "
          f"{stats['max_abs_diff']:.2g} (logits up to {stats['max_abs_logit']:.2g})")


if __name__ == "__main__":
    main()
