"""Numeric precision and device choice for the region classifier.

``auto`` picks bf16 autocast only on CPUs with native bf16 matrix units (AMX or AVX512-BF16),
where it is ~2x faster than fp32; elsewhere bf16 is emulated and several times slower, so fp32
with channels_last is used. On CUDA ``auto`` is fp16 automatic mixed precision. ``int8`` (static
quantisation) is for detection from checkpoints only: detector.inference.int8 builds it, and
detector.inference.precision_choice lets ``auto`` pick int8 on CPUs with VNNI where it agrees with
fp32 (a rule on the CPU's features and that check, never a timing).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from detector.common.errors import UserError

CHOICES = ("auto", "fp32", "bf16", "fp16", "int8")


def cpu_has_fast_bf16() -> bool:
    """True when this CPU multiplies bf16 matrices natively (AMX tiles or AVX512-BF16)."""
    return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())


def cpu_has_vnni() -> bool:
    """True when this CPU has VNNI (AVX512-VNNI or AVX-VNNI): int8 dot products in one
    instruction, which int8 inference needs to be fast (and to use full 8-bit activations)."""
    return bool(torch.cpu._is_vnni_supported())


def flush_denormals() -> None:
    """Treat denormal floats as zero on CPU. Fine-tuned weights and activations drift into the
    denormal range, where x86 arithmetic is ~10x slower (measured: 4.4 s -> 0.3 s per image)."""
    torch.set_flush_denormal(True)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass(frozen=True)
class Precision:
    """Autocast dtype (None = fp32) on a device, or int8 (the scorers' quantised networks, which
    take fp32 inputs), and a human-readable description."""

    device: torch.device
    dtype: torch.dtype | None
    int8: bool = False

    @property
    def description(self) -> str:
        if self.int8:
            return f"int8 static quantisation on {self.device.type}"
        name = {None: "fp32", torch.bfloat16: "bf16 autocast", torch.float16: "fp16 AMP"}[self.dtype]
        layout = ", channels_last" if self.device.type == "cpu" else ""
        return f"{name}{layout} on {self.device.type}"

    def autocast(self):
        """Context manager running the forward pass in this precision."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)


def resolve_precision(name: str, device: torch.device | None = None) -> Precision:
    """The precision to use for `name` (auto | fp32 | bf16 | fp16) on `device`."""
    device = device or default_device()
    if name not in CHOICES:
        raise UserError(f"precision {name!r}: expected one of {', '.join(CHOICES)}")
    if name == "auto":
        if device.type == "cuda":
            return Precision(device, torch.float16)
        return Precision(device, torch.bfloat16 if cpu_has_fast_bf16() else None)
    if name == "int8":
        raise UserError("precision int8 is for detection from checkpoints only (test.precision of detect / rcnn eval); "
                        "use auto, fp32 or bf16 here")
    if name == "fp16" and device.type == "cpu":
        raise UserError("precision fp16 needs a CUDA device; use bf16 or fp32 on CPU")
    return Precision(device, {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name])


def prepare_model(model: torch.nn.Module, precision: Precision) -> torch.nn.Module:
    """Move the model to the device; channels_last memory format on CPU (faster convolutions)."""
    model = model.to(precision.device)
    if precision.device.type == "cpu":
        model = model.to(memory_format=torch.channels_last)
    return model


def prepare_input(inputs, precision: Precision):
    """Network input on the device: a tensor (4-D ones channels_last on CPU) or a list/tuple of them."""
    if isinstance(inputs, (list, tuple)):
        return type(inputs)(prepare_input(item, precision) for item in inputs)
    inputs = inputs.to(precision.device, non_blocking=True)
    if precision.device.type == "cpu" and inputs.dim() == 4:
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    return inputs
