"""Speed benchmarks of the whole pipeline, measured in one process on the same image(s).

Every figure is reported with its ratio to a baseline measured in the same run (``value /
baseline``; for times lower is faster, for throughputs higher is faster), so the ratios stay
meaningful on a noisy shared machine where the absolute numbers do not. Each measurement is the
median over repeats after warm-up runs. Models are randomly initialised, with He-normal
convolutions so that activations and logits have a trained network's scale (see
:func:`benchmark_model`): speed does not depend on the weights, and the fast paths' agreement with
fp32 is measured on those random logits.

Sections and their baselines:

- ``proposals``: seconds per image per backend / preset; baseline opencv-fast, rcnn preset.
- ``classifier``: ms per warped crop; baseline fp32 NCHW batch 1. int8 static quantisation
  (detector.inference.int8, calibrated on the crops) is compared with fp32 and bf16 in its note.
- ``detect``: seconds per image per stage, one model on warped crops (baseline), googlenet
  preset, ensemble of 3, and the shared-feature (roi) mode at each ``model.roi_layer``; the
  light head also at fp32 and int8 (calibrated on the first image's proposals).
- ``training``: regions/s of an SGD step (aux heads on); baseline fp32.
- ``memory``: peak RSS of the process (MiB) while detecting one image (baseline) or training a step.
- ``pretrain``: images/s of classification pre-training (pretrain.input_size, batch_size): the
  network's SGD step at the training precision (baseline), fp32, and the data loader alone
  (decode + augmentation, pretrain.workers processes and none) on pretrain.root's training split
  (a generated 224x224 ImageFolder when it has none). Target: loader >= 1.5x the network.
- ``throughput``: images/s of end-to-end detection over the image files with a cold and a warm
  proposal cache; baseline the serial path (next image's proposals in a thread), beside
  proposals in worker processes (``test.proposal_workers``; :mod:`detector.bench.throughput`).
"""
from __future__ import annotations

import copy
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
from torch import nn

from detector.config import Config, TestConfig, TrainConfig
from detector.inference.detector import Detector
from detector.training.minibatches import RegionBatch
from detector.modeling.googlenet import ROI_NETWORKS, LightHeadClassifier, RegionClassifier, build_model, make_network
from detector.common.precision import (Precision, cpu_has_fast_bf16, flush_denormals, prepare_input, prepare_model,
                                resolve_precision)
from detector.modeling.regions import normalize_image, warp_regions
from detector.inference.int8 import ENGINE, Sample, calibration_inputs, quantize_model
from detector.inference.scorers import FineTunedScorer
from detector.training.finetune import region_losses
from detector.common.atomic import write_text
from proposals import propose_with_config
from proposals.config import ProposalConfig, effective_max_boxes

NUM_CLASSES = 200  #: ILSVRC DET: the width of the class head of every benchmarked model
CLASS_NAMES = [f"class{i}" for i in range(NUM_CLASSES)]  #: stand-in class list of the benchmarked models
ENSEMBLE_SIZE = 3
ENSEMBLE_TARGET = 3.2  #: issue 5: an ensemble of 3 costs at most 3.2x one model per image
#: issue 8: shared-feature mode, seconds per ~500x375 image with 2000 proposals (regions, total)
ROI_TARGETS = (1.0, 2.5)
#: backend, preset and whether --quick skips it
PROPOSAL_CASES = (("opencv-fast", "rcnn", False), ("opencv-fast", "googlenet", False),
                  ("opencv-quality", "rcnn", True), ("selectivesearch", "rcnn", True))
AUTOCAST_NAMES = {torch.bfloat16: "bf16 autocast", torch.float16: "fp16 AMP"}
#: --quick caps: regions per forward pass, proposals per image, regions per training step, repeats
SECTIONS = ("proposals", "memory", "classifier", "detect", "training", "pretrain", "throughput")
LOADER_TARGET = 1.5  #: issue 13: the pre-training loader delivers >= 1.5x the network's images/s
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


# ----------------------------------------------------------------------------- helpers


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


def crops_from(image: np.ndarray, boxes: np.ndarray, count: int, size: int, context_pad: int) -> torch.Tensor:
    """`count` warped regions [count, 3, size, size] of `image`, cycling through `boxes` [N, 4]."""
    cycled = np.resize(boxes.reshape(-1, 4), (count, 4)) if len(boxes) else np.tile([0, 0, 32, 32], (count, 1))
    return warp_regions(normalize_image(image), torch.as_tensor(cycled, dtype=torch.float32), size, context_pad)


def benchmark_model(aux_classifiers: bool = False) -> RegionClassifier:
    """A random region classifier whose activations keep a trained network's scale.

    torchvision's GoogLeNet init (truncated normal, std 0.01) shrinks activations at every layer:
    logits come out ~1e-12, in denormal range, and near-ties make the fast paths' top-1 agreement
    meaningless. He-normal convolutions keep activations and logits O(1)."""
    model = build_model(NUM_CLASSES, aux_classifiers=aux_classifiers)
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    return model


def inference_copy(model: RegionClassifier) -> RegionClassifier:
    """A copy of `model` in eval mode without the auxiliary classifiers, as checkpoints load."""
    copied = copy.deepcopy(model).eval()
    copied.trunk.aux1 = copied.trunk.aux2 = None
    return copied


def add_ratios(rows: list[Row]) -> list[Row]:
    """Fill each row's ratio: value / value of the baseline row of its group."""
    baselines = {row.group or row.section: row.value for row in rows if row.baseline}
    for row in rows:
        base = baselines.get(row.group or row.section)
        row.ratio = row.value / base if row.value is not None and base else None
    return rows


# ----------------------------------------------------------------------------- proposals


def bench_proposals(images: list[np.ndarray], config: ProposalConfig, settings: BenchSettings) -> list[Row]:
    """Seconds per image of each backend / preset (full post-processing, R-CNN box budget)."""
    rows = []
    for method, preset, slow in PROPOSAL_CASES:
        if slow and settings.quick:
            continue
        case = dataclasses.replace(config, method=method, preset=preset)
        counts = [len(propose_with_config(image, case)) for image in images]  # also the warm-up
        seconds = median_seconds(lambda: [propose_with_config(image, case) for image in images],
                                 settings.repeats, 0, torch.device("cpu"))
        rows.append(Row("proposals", f"{method}, {preset} preset", seconds / len(images), "s/image",
                        note=f"{np.mean(counts):.0f} boxes/image",
                        baseline=(method, preset) == PROPOSAL_CASES[0][:2]))
    return rows


# ----------------------------------------------------------------------------- region classifier


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
    fast = _fast_precision(device)
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


# ----------------------------------------------------------------------------- end-to-end detection


def random_scorers(model: RegionClassifier, count: int, settings: BenchSettings) -> list[FineTunedScorer]:
    """`count` ensemble members, each an inference copy of `model` (speed does not depend on
    the weights, so the members may be equal)."""
    return [FineTunedScorer(inference_copy(model), CLASS_NAMES, CLASS_NAMES, settings.crop_size, settings.context_pad,
                            f"random {index}") for index in range(count)]


def shared_feature_scorer(model: RegionClassifier, roi_layer: str, roi_sides: tuple[int, int],
                          settings: BenchSettings) -> FineTunedScorer:
    """`model`'s weights run in the shared-feature (roi) mode, pooling at `roi_layer`, on images
    resized to `roi_sides` (shorter side, cap on the longer). Layers only that mode has (the
    5b-dilated light head) keep their random initialisation."""
    shared = make_network("roi", model.num_classes, aux_classifiers=False, roi_layer=roi_layer).eval()
    missing, unexpected = shared.load_state_dict(inference_copy(model).state_dict(), strict=False)
    assert not unexpected and all(key.startswith("light_") for key in missing), (missing, unexpected)
    return FineTunedScorer(shared, CLASS_NAMES, CLASS_NAMES, settings.crop_size, settings.context_pad,
                           f"roi {roi_layer}, {roi_sides[0]} px", roi_sides=roi_sides)


def _detect_timing(detector: Detector, images: list[np.ndarray], settings: BenchSettings) -> dict[str, float]:
    """Median seconds per image of each stage (and in total) over repeats; each repeat is the
    mean over `images`. Warm-up: detections of one batch of given proposals."""
    batch = np.tile(np.array([[0, 0, 64, 64]], np.float32), (settings.batch_size, 1))
    for _ in range(settings.warmup):
        detector.detect(images[0], proposals=batch)
    runs = []
    for _ in range(settings.repeats):
        timings = [detector.detect(image).timing for image in images]
        runs.append({key: sum(t[key] for t in timings) / len(images) for key in timings[0]})
    stages = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    stages["total_s"] = statistics.median(sum(run.values()) for run in runs)
    return stages


def _detect_rows(label: str, stages: dict[str, float], note: str, baseline: bool) -> list[Row]:
    """The total and per-stage rows of one detector; each stage is compared with the same stage
    of the baseline detector."""
    names = {"total_s": "total", "proposals_s": "proposals", "regions_s": "regions", "postprocess_s": "postprocess"}
    return [Row("detect", f"{label}: {names[key]}", stages[key], "s/image", note=note if key == "total_s" else "",
                baseline=baseline, group=f"detect {names[key]}") for key in names]


def _proposal_config(config: Config, settings: BenchSettings) -> ProposalConfig:
    """The config's proposal settings with the benchmark's box budget."""
    return dataclasses.replace(config.proposals, max_boxes=settings.max_proposals)


def bench_detect(images: list[np.ndarray], scorers: list[FineTunedScorer], shared: list[FineTunedScorer],
                 config: Config, settings: BenchSettings) -> list[Row]:
    """End-to-end detection seconds per image with the stage split: one model on warped crops
    (the baseline, R-CNN), the same with the other choice of overlapping warps and network, one
    with the googlenet proposal preset, an ensemble of all `scorers`, and each `shared`-feature
    (roi mode) scorer."""
    proposals = _proposal_config(config, settings)
    precision = resolve_precision(config.test.precision, torch.device(settings.device))
    test = dataclasses.replace(config.test, max_proposals=0)
    googlenet = dataclasses.replace(proposals, preset="googlenet")
    roi_target = f"targets: regions <= {ROI_TARGETS[0]} s, total <= {ROI_TARGETS[1]} s"
    overlap = precision.device.type == "cuda"  # the Detector's default
    # (label, models, proposal config, warp the next chunk while the network runs, target)
    other = "not " if overlap else ""
    cases = [("1 model, rcnn preset", scorers[:1], proposals, overlap, ""),
             (f"1 model, rcnn preset, warps {other}overlapped", scorers[:1], proposals, not overlap,
              f"warps of the next chunk {other}run in a thread beside the network"),
             ("1 model, googlenet preset", scorers[:1], googlenet, overlap, ""),
             (f"ensemble of {len(scorers)}, rcnn preset", scorers, proposals, overlap,
              f"target <= {ENSEMBLE_TARGET}x one model")]
    cases += [(f"{scorer.name}, rcnn preset", [scorer], proposals, overlap, roi_target) for scorer in shared]
    rows, timings = [], {}
    for index, (label, members, proposal_config, overlap, target) in enumerate(cases):
        detector = Detector(members, proposal_config, test, precision)
        detector.overlap_warps = overlap
        note = "; ".join(part for part in (f"<= {effective_max_boxes(proposal_config)} proposals, "
                                           f"{precision.description}, fusion {test.fusion}", target) if part)
        timings[label] = _detect_timing(detector, images, settings)
        rows += _detect_rows(label, timings[label], note, baseline=index == 0)
    for scorer in shared:
        if isinstance(scorer.network, LightHeadClassifier) and precision.device.type == "cpu":
            rows += _int8_detect_rows(images, scorer, proposals, test, settings,
                                      (precision.description, timings[f"{scorer.name}, rcnn preset"]))
    return rows


def _int8_detect_rows(images: list[np.ndarray], scorer: FineTunedScorer, proposals: ProposalConfig, test: TestConfig,
                      settings: BenchSettings, configured: tuple[str, dict[str, float]]) -> list[Row]:
    """Detection with the shared-feature `scorer` at fp32 and at int8 (calibrated on the first
    image's proposals); the int8 note gives its ratios to fp32 and to the `configured`
    (description, stage seconds) precision's run."""
    cpu = torch.device("cpu")
    boxes = torch.as_tensor(propose_with_config(images[0], proposals)[: settings.batch_size])
    scorer.int8 = quantize_model(scorer.network, calibration_inputs(scorer, [Sample(normalize_image(images[0]), boxes)]))
    stages = {name: _detect_timing(Detector([scorer], proposals, test, precision), images, settings)
              for name, precision in (("fp32", Precision(cpu, None)), ("int8", Precision(cpu, None, int8=True)))}
    ratios = "; ".join(f"{stage} {stages['int8'][f'{stage}_s'] / stages['fp32'][f'{stage}_s']:.2f}x fp32, "
                       f"{stages['int8'][f'{stage}_s'] / configured[1][f'{stage}_s']:.2f}x {configured[0]}"
                       for stage in ("regions", "total"))
    return [row for name, stage in stages.items()
            for row in _detect_rows(f"{scorer.name}, rcnn preset, {name}", stage,
                                    ratios if name == "int8" else "fp32 on cpu", baseline=False)]


# ----------------------------------------------------------------------------- training


def training_batch(crops: torch.Tensor) -> RegionBatch:
    """A minibatch of the given regions: a quarter foreground (random classes), the rest background."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.zeros(len(crops), dtype=torch.long)
    num_fg = max(1, len(crops) // 4)
    labels[:num_fg] = torch.randint(1, NUM_CLASSES + 1, (num_fg,), generator=generator)
    return RegionBatch((crops,), labels, 0.1 * torch.randn(len(crops), 4, generator=generator), labels > 0)


def train_step_fn(model: RegionClassifier, batch: RegionBatch, precision: Precision,
                  train: TrainConfig) -> Callable[[], None]:
    """One SGD step on `batch` of a copy of `model` (with its auxiliary heads), as ``Trainer.step``
    runs it; the copy and its optimiser state persist across calls."""
    model = prepare_model(copy.deepcopy(model), precision).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=train.lr, momentum=train.momentum,
                                weight_decay=train.weight_decay)
    scaler = torch.amp.GradScaler(precision.device.type, enabled=precision.dtype == torch.float16)
    inputs = prepare_input(batch.inputs, precision)

    def step() -> None:
        with precision.autocast():
            outputs = model(*inputs)
        loss = region_losses(outputs, batch, train.aux_loss_weight, train.bbox_loss_weight)["loss"]
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    return step


def _fast_precision(device: torch.device) -> Precision:
    """bf16 autocast on CPU, fp16 AMP on CUDA."""
    return Precision(device, torch.float16 if device.type == "cuda" else torch.bfloat16)


def bench_training(model: RegionClassifier, crops: torch.Tensor, train: TrainConfig,
                   settings: BenchSettings) -> list[Row]:
    """Training regions per second of `model` at minibatch ``len(crops)``: fp32 (baseline) and
    bf16 autocast (CPU) / fp16 AMP (CUDA)."""
    device = torch.device(settings.device)
    batch = training_batch(crops)
    rows = []
    for precision in (Precision(device, None), _fast_precision(device)):
        step = train_step_fn(model, batch, precision, train)
        seconds = median_seconds(step, settings.repeats, settings.warmup, device)
        rows.append(Row("training", f"{precision.description}, minibatch {len(crops)}", len(crops) / seconds,
                        "regions/s", baseline=precision.dtype is None))
    return rows


def bench_pretrain(config: Config, settings: BenchSettings) -> list[Row]:
    """Pre-training images/s: the network's step (classifier, aux losses, SGD, EMA) at the
    configured precision (baseline) and fp32, and the DataLoader alone with pretrain.workers
    worker processes and with none."""
    import tempfile

    from detector.training.pretrain import (ClassificationSamples, EpochBatches, ModelEma, build_classifier,
                                   classification_loss, make_loader, normalise, train_augment)
    from detector.common.distributed import DistContext
    from detector.data.imagefolder import read_image_folder

    pretrain, device = config.pretrain, torch.device(settings.device)
    size, batch = pretrain.input_size, settings.pretrain_batch
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(batch) % 10
    configured = resolve_precision(pretrain.precision, device)
    rows = []
    for precision in [configured] + ([Precision(device, None)] if configured.dtype is not None else []):
        model = prepare_model(build_classifier(10), precision).train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        ema = ModelEma(model, pretrain.ema_decay)

        def step() -> None:
            with precision.autocast():
                outputs = model(normalise(images, precision))
            loss = classification_loss(outputs, labels.to(device), pretrain)[0]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            ema.update(model)

        seconds = median_seconds(step, settings.repeats, settings.warmup, device)
        rows.append(Row("pretrain", f"network step, {precision.description}, {batch} x {size} px", batch / seconds,
                        "images/s", baseline=not rows))
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(pretrain.root) if pretrain.root and (Path(pretrain.root) / pretrain.train_split).is_dir() else None
        folder = read_image_folder(root or _generated_image_folder(Path(scratch)), pretrain.train_split if root else "train")
        samples = ClassificationSamples(folder, train_augment(pretrain), config.seed)
        steps = max(2, min(len(folder) // batch, 8 * settings.repeats))
        for workers in dict.fromkeys((pretrain.workers, 0)):
            loader = make_loader(samples, EpochBatches(len(folder), batch, 0, 0, DistContext()), workers, 0)
            start, count = time.perf_counter(), 0  # worker start-up included: a conservative rate
            for _, (batch_images, _) in zip(range(steps), loader):
                count += len(batch_images)
            note = f"{folder.root}; target >= {LOADER_TARGET}x the network" if workers == pretrain.workers else str(folder.root)
            rows.append(Row("pretrain", f"data loader alone, {workers} worker processes", count / (time.perf_counter() - start),
                            "images/s", note=note))
    return rows


def _generated_image_folder(root: Path, count: int = 160) -> Path:
    """A 224x224 JPEG ImageFolder of noise (Imagenette's size) for timing the loader."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for index in range(count):
        folder = root / "train" / f"class{index % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)).save(folder / f"{index}.jpg", quality=90)
    return root


# ----------------------------------------------------------------------------- memory


def bench_memory(image: np.ndarray, scorer: FineTunedScorer, model: RegionClassifier, crops: torch.Tensor,
                 config: Config, settings: BenchSettings) -> list[Row]:
    """Peak RSS of one-image detection with `scorer` (the baseline) and of one fp32 training step
    of `model` on `crops`."""
    device = torch.device(settings.device)
    detector = Detector([scorer], _proposal_config(config, settings), config.test,
                        resolve_precision(config.test.precision, device))
    detect_mib, method = peak_rss_mib(lambda: detector.detect(image))
    step = train_step_fn(model, training_batch(crops), Precision(device, None), config.train)
    train_mib, _ = peak_rss_mib(step)
    return [Row("memory", "peak RSS, detect one image (1 model)", detect_mib, "MiB", note=method, baseline=True),
            Row("memory", f"peak RSS, fp32 training step, minibatch {len(crops)}", train_mib, "MiB", note=method)]


# ----------------------------------------------------------------------------- the run and its report


def run_benchmark(images: dict[str, np.ndarray], config: Config, settings: BenchSettings,
                  log: Callable[[str], None] = lambda section: None) -> BenchReport:
    """The settings' sections on `images` (name -> RGB uint8 [H, W, 3]); `log` is told which
    section starts."""
    flush_denormals()
    wanted = settings.sections
    pictures = list(images.values())
    rows = []
    if "proposals" in wanted:
        log("proposals")
        rows += bench_proposals(pictures, config.proposals, settings)
    if set(wanted) & {"memory", "classifier", "detect", "training"}:  # memory first: peak RSS only grows
        rows += _region_sections(pictures, config, settings, log)
    if "pretrain" in wanted:
        log("pre-training")
        rows += bench_pretrain(config, settings)
    if "throughput" in wanted:
        from detector.bench.throughput import bench_throughput

        log("throughput")
        rows += bench_throughput(images, config, settings)
    return BenchReport(environment(torch.device(settings.device)), dataclasses.asdict(settings), list(images),
                       add_ratios(rows))


def _region_sections(pictures: list[np.ndarray], config: Config, settings: BenchSettings,
                     log: Callable[[str], None]) -> list[Row]:
    """The sections that score regions of the first image: memory, classifier, detect, training."""
    wanted, rows = settings.sections, []
    boxes = propose_with_config(pictures[0], _proposal_config(config, settings))
    crops = crops_from(pictures[0], boxes, settings.batch_size, settings.crop_size, settings.context_pad)
    train_crops = crops_from(pictures[0], boxes, settings.train_batch, settings.crop_size, settings.context_pad)
    torch.manual_seed(0)
    model = benchmark_model(aux_classifiers=True)
    scorers = random_scorers(model, ENSEMBLE_SIZE, settings)
    memory = []
    if "memory" in wanted:  # first: peak RSS only grows
        log("memory")
        memory = bench_memory(pictures[0], scorers[0], model, train_crops, config, settings)
    if "classifier" in wanted:
        log("region classifier")
        rows += bench_classifier(inference_copy(model), crops, settings)
    if "detect" in wanted:
        log("end-to-end detection")
        sides = (config.model.roi_short_side, config.model.roi_max_side)
        shared = [shared_feature_scorer(model, layer, sides, settings) for layer in ROI_NETWORKS]
        rows += bench_detect(pictures, scorers, shared, config, settings)
    if "training" in wanted:
        log("training")
        rows += bench_training(model, train_crops, config.train, settings)
    return rows + memory


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
