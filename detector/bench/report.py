"""What every ``rcnn bench`` section shares: its settings (:class:`BenchSettings`), its figures
(:class:`Row`) and their report (:class:`BenchReport`: ratios to baselines, a Markdown table, JSON),
and the measuring helpers: median wall-clock seconds, peak resident memory, the environment the
numbers depend on, and a synthetic test image. It measures nothing on its own.

Every figure is reported with its ratio to a baseline measured in the same run (``value /
baseline``; for times lower is faster, for throughputs higher is faster), so the ratios stay
meaningful on a noisy shared machine where the absolute numbers do not. Each measurement is the
median over repeats after warm-up runs.
"""
from __future__ import annotations

import dataclasses
import json
import os
import platform
import resource
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from detector.common.atomic import write_text
from detector.common.precision import cpu_has_fast_bf16
from detector.config import Config

SECTIONS = ("proposals", "memory", "classifier", "detect", "training", "pretrain", "throughput")
#: --quick caps: regions per forward pass, proposals per image, regions per training step, repeats
QUICK = {"batch_size": 8, "max_proposals": 16, "train_batch": 8, "repeats": 2, "pretrain_batch": 16}


@dataclass
class BenchSettings:
    """Sizes and repeats of one benchmark run."""

    crop_size: int = 224  #: warped region side (pixels)
    context_pad: int = 16
    batch_size: int = 64  #: regions per batched forward pass
    max_proposals: int = 2000  #: proposals per image in the detect section (rcnn preset)
    train_batch: int = 128  #: regions per training minibatch
    pretrain_batch: int = 64  #: images per pre-training step
    repeats: int = 5  #: timed runs per measurement (the median is reported)
    warmup: int = 1  #: untimed runs before them
    quick: bool = False  #: skip the slow proposal backends
    compile: bool = False  #: also measure torch.compile
    device: str = "cpu"
    sections: tuple[str, ...] = SECTIONS  #: which parts to measure

    @classmethod
    def from_config(cls, config: Config, quick: bool = False, **overrides: Any) -> "BenchSettings":
        """Sizes from `config` (model.input_size, test.batch_size, proposals.max_boxes,
        train.regions_per_batch), capped by :data:`QUICK` when `quick`; `overrides` win."""
        sizes = {"batch_size": config.test.batch_size, "max_proposals": config.proposals.max_boxes,
                 "train_batch": config.train.regions_per_batch, "repeats": cls.repeats,
                 "pretrain_batch": config.pretrain.batch_size}
        if quick:
            sizes = {key: min(value, QUICK[key]) for key, value in sizes.items()}
        settings = cls(crop_size=config.model.input_size, context_pad=config.model.context_pad, quick=quick, **sizes)
        return dataclasses.replace(settings, **{k: v for k, v in overrides.items() if v is not None})


@dataclass
class Row:
    """One figure: `value` in `unit` (None = skipped, `note` says why) and its ratio to the
    baseline row of its `group` (the group defaults to the section)."""

    section: str
    name: str
    value: float | None
    unit: str
    note: str = ""
    baseline: bool = False
    group: str = ""
    ratio: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class BenchReport:
    """Environment, settings and rows of one run."""

    environment: dict[str, Any]
    settings: dict[str, Any]
    images: list[str]
    rows: list[Row]

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "BenchReport":
        data = json.loads(text)
        return cls(data["environment"], data["settings"], data["images"], [Row(**row) for row in data["rows"]])


def cpu_name() -> str:
    """The CPU model name from /proc/cpuinfo, else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device) -> dict[str, Any]:
    """CPU, accelerator, torch version, threads and load: what the numbers depend on."""
    info = {
        "cpu": cpu_name(), "cpu_count": os.cpu_count(), "cpu_native_bf16": cpu_has_fast_bf16(),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(), "device": str(device),
        "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def synthetic_image(width: int = 500, height: int = 375, seed: int = 0) -> np.ndarray:
    """An RGB uint8 [H, W, 3] image of coloured rectangles on a gradient, with noise: enough
    structure for selective search to return about as many boxes as on a photograph."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    image = np.stack([xs * 255.0 / width, ys * 255.0 / height, np.full(xs.shape, 128.0)], axis=-1)
    for _ in range(16):
        w, h = rng.integers(width // 20, width // 3), rng.integers(height // 20, height // 3)
        x, y = rng.integers(0, width - w), rng.integers(0, height - h)
        image[y : y + h, x : x + w] = rng.integers(0, 256, 3)
    image += rng.normal(0.0, 12.0, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], Any], repeats: int, warmup: int, device: torch.device) -> float:
    """Median wall-clock seconds of `fn()` over `repeats` runs after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_rss_mib(fn: Callable[[], Any]) -> tuple[float, str]:
    """Peak resident memory (MiB) of this process while `fn()` runs, and how it was measured.

    On Linux the high-water mark is reset first (/proc/self/clear_refs), so the figure is the peak
    of `fn` alone (it includes everything already resident: torch, models); elsewhere it is
    ``ru_maxrss``, the peak since the process started."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        fn()
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "ru_maxrss since process start"
    fn()
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024, "VmHWM, reset before the run"
    raise RuntimeError("/proc/self/status has no VmHWM line")


def add_ratios(rows: list[Row]) -> list[Row]:
    """Fill each row's ratio: value / value of the baseline row of its group."""
    baselines = {row.group or row.section: row.value for row in rows if row.baseline}
    for row in rows:
        base = baselines.get(row.group or row.section)
        row.ratio = row.value / base if row.value is not None and base else None
    return rows


def _number(value: float) -> str:
    if value >= 100:
        return f"{value:.0f}"
    return f"{value:.2f}" if value >= 1 else f"{value:.3g}"


def markdown_table(rows: list[Row]) -> str:
    """The rows as a Markdown table: section, measurement, value, unit, ratio to baseline, note."""
    lines = ["| section | measurement | value | unit | x baseline | note |", "|---|---|---|---|---|---|"]
    for row in rows:
        value = "skipped" if row.value is None else _number(row.value)
        ratio = "-" if row.ratio is None else f"{row.ratio:.2f}x" + (" (baseline)" if row.baseline else "")
        lines.append(f"| {row.section} | {row.name} | {value} | {row.unit} | {ratio} | {row.note} |")
    return "\n".join(lines)


def format_report(report: BenchReport) -> str:
    """Environment and settings lines, then the Markdown table."""
    env, s = report.environment, report.settings
    bf16 = "yes" if env["cpu_native_bf16"] else "no (bf16 emulated)"
    lines = [
        f"CPU: {env['cpu']} ({env['cpu_count']} logical CPUs), native bf16: {bf16}; "
        f"device: {env.get('gpu', env['device'])}",
        f"torch {env['torch']}, {env['threads']} threads ({env['interop_threads']} inter-op); "
        f"1-min load average at the end: {env['load_average_1min']}",
        f"settings: crops {s['crop_size']}x{s['crop_size']}, batch {s['batch_size']}, "
        f"<= {s['max_proposals']} proposals, training minibatch {s['train_batch']}, "
        f"median of {s['repeats']} after {s['warmup']} warm-up"
        + (", --quick" if s["quick"] else "")
        + ("" if tuple(s["sections"]) == SECTIONS else f", sections: {' '.join(s['sections'])}"),
        f"images: {', '.join(report.images)}",
        "",
        markdown_table(report.rows),
    ]
    return "\n".join(lines)


def write_json(report: BenchReport, path: str | Path) -> None:
    """Write the report as JSON (atomically)."""
    write_text(path, report.to_json() + "\n")
