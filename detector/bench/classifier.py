"""``rcnn bench``'s ``classifier`` section: milliseconds per warped crop of the region classifier,
fp32 NCHW one crop at a time (the baseline), fp32 channels_last batched, bf16 autocast (CPU) /
fp16 AMP (CUDA) batched, int8 static quantisation (CPU) and optionally torch.compile, each with
its agreement with the fp32 logits.

int8 static quantisation (detector.inference.int8, calibrated on the crops) is compared with fp32
and bf16 in its note.
"""
from __future__ import annotations

import time
from typing import Callable

import torch

from detector.bench.models import fast_precision
from detector.bench.report import BenchSettings, Row, median_seconds
from detector.common.precision import Precision, cpu_has_fast_bf16
from detector.inference.int8 import ENGINE, quantize_model
from detector.modeling.googlenet import RegionClassifier

AUTOCAST_NAMES = {torch.bfloat16: "bf16 autocast", torch.float16: "fp16 AMP"}


def agreement(logits: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """Max absolute logit difference, largest reference |logit| and top-1 agreement of two [B, C+1]."""
    logits, reference = logits.float().cpu(), reference.float().cpu()
    return {"max_abs_diff": float((logits - reference).abs().max()),
            "max_abs_logit": float(reference.abs().max()),
            "top1_agreement": float((logits.argmax(1) == reference.argmax(1)).float().mean())}


def _agreement_note(stats: dict[str, float]) -> str:
    return (f"vs fp32: max abs logit diff {stats['max_abs_diff']:.1e} (logits up to {stats['max_abs_logit']:.2g}), "
            f"top-1 agree {100 * stats['top1_agreement']:.0f}%")


def _classifier_row(name: str, logits_of: Callable[[torch.Tensor], torch.Tensor], crops: torch.Tensor,
                    precision: Precision, reference: torch.Tensor, settings: BenchSettings, note: str = "") -> Row:
    """ms/crop of ``logits_of(crops)`` (crops already on the device, in their memory format),
    with its agreement with the fp32 `reference` logits."""
    def forward() -> torch.Tensor:
        with torch.inference_mode(), precision.autocast():
            return logits_of(crops)

    seconds = median_seconds(forward, settings.repeats, settings.warmup, precision.device)
    stats = agreement(forward(), reference)
    note = "; ".join(part for part in (note, _agreement_note(stats)) if part)
    return Row("classifier", name, 1000 * seconds / len(crops), "ms/crop", note=note, extra=stats)


def _compiled_row(model: torch.nn.Module, crops: torch.Tensor, precision: Precision,
                  reference: torch.Tensor, settings: BenchSettings) -> Row:
    """torch.compile of the fp32 channels_last model; a skipped row saying why when it fails."""
    name = f"fp32 channels_last torch.compile, batch {len(crops)}"
    try:
        compiled = torch.compile(model)
        start = time.perf_counter()
        with torch.inference_mode():
            compiled(crops)
        note = f"compile + first run {time.perf_counter() - start:.0f} s"
        return _classifier_row(name, lambda x: compiled(x).class_logits, crops, precision, reference, settings, note)
    except Exception as exc:  # no compiler, unsupported platform or op: report, do not fail the run
        reason = (str(exc).strip().splitlines() or [""])[0][:160]
        return Row("classifier", name, None, "ms/crop", note=f"skipped: {type(exc).__name__}: {reason}")


def bench_classifier(model: RegionClassifier, crops: torch.Tensor, settings: BenchSettings) -> list[Row]:
    """ms per crop of `model` (eval mode): fp32 NCHW one crop at a time (the baseline), fp32
    channels_last batched, bf16 autocast (CPU) / fp16 AMP (CUDA) batched, torch.compile (opt-in)."""
    device = torch.device(settings.device)
    model = model.to(device)
    crops = crops.to(device)
    fp32 = Precision(device, None)
    with torch.inference_mode():
        reference = model(crops).class_logits

    def one_by_one(batch: torch.Tensor) -> torch.Tensor:
        return torch.cat([model(crop[None]).class_logits for crop in batch])

    def batched(batch: torch.Tensor) -> torch.Tensor:
        return model(batch).class_logits

    rows = [_classifier_row("fp32 NCHW, batch 1", one_by_one, crops, fp32, reference, settings)]
    rows[0].baseline = True
    model = model.to(memory_format=torch.channels_last)
    crops = crops.contiguous(memory_format=torch.channels_last)
    rows.append(_classifier_row(f"fp32 channels_last, batch {len(crops)}", batched, crops, fp32, reference, settings))
    fast = fast_precision(device)
    native = "" if device.type == "cuda" else f"CPU native bf16: {'yes' if cpu_has_fast_bf16() else 'no (emulated)'}"
    name = f"{AUTOCAST_NAMES[fast.dtype]} channels_last, batch {len(crops)}"
    rows.append(_classifier_row(name, batched, crops, fast, reference, settings, native))
    if device.type == "cpu":
        rows.append(_int8_classifier_row(model, crops, reference, settings,
                                         {"fp32 channels_last": rows[1].value, AUTOCAST_NAMES[fast.dtype]: rows[2].value}))
    if settings.compile:
        rows.append(_compiled_row(model, crops, fp32, reference, settings))
    return rows


def _int8_classifier_row(model: RegionClassifier, crops: torch.Tensor, reference: torch.Tensor,
                         settings: BenchSettings, others: dict[str, float]) -> Row:
    """ms/crop of the int8 network (calibrated on `crops`), with its ratios to the `others`
    (name -> ms/crop of the same run) in the note."""
    int8 = quantize_model(model, {"network": [crops]})
    precision = Precision(torch.device("cpu"), None, int8=True)
    row = _classifier_row(f"int8 static ({ENGINE}), batch {len(crops)}", lambda x: int8(x).class_logits, crops,
                          precision, reference, settings, f"CPU VNNI: {'yes' if torch.cpu._is_vnni_supported() else 'no'}")
    row.note += "".join(f"; {row.value / value:.2f}x {name}" for name, value in others.items())
    return row
