"""int8 inference: post-training static quantisation of a checkpoint's region classifier.

FX graph mode (``torch.ao.quantization.quantize_fx``) on PyTorch's x86 quantized engine (fbgemm
kernels; VNNI where the CPU has it): convolution + batch norm + ReLU fused, int8 per-channel
weights, uint8 activations whose ranges are observed (histograms) on regions of the training
split. It runs without a compiler, which PT2E's X86InductorQuantizer needs to be fast. Crop
mode quantises the whole network (regions -> logits, deltas, features); the shared-feature (roi)
mode quantises the trunk (image -> the map regions are pooled from) and the region head (pooled
region -> logits, deltas, features), with RoIAlign between them in fp32.

The artefact is built once per checkpoint and cached beside it as ``<checkpoint>.int8-<key>.pt``
(in :data:`CACHE_DIR` when that folder is read-only); the key hashes the checkpoint's bytes, the
torch version, the engine, the CPU and the calibration settings. It holds the calibration
result (the observers' statistics: plain float tensors) and what was measured on held-out
regions: top-1 agreement with fp32 and seconds per precision. The int8 network is rebuilt from
the checkpoint's weights deterministically (prepare, load the statistics, convert), so the file
loads with ``weights_only=True`` and never holds code.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from detector.modeling.checkpoint import plain_data, read_weights_file
from detector.config import Config
from detector.modeling.googlenet import RegionClassifier, RegionOutputs, SharedFeatureClassifier
from detector.common.precision import Precision, cpu_has_fast_bf16, default_device, resolve_precision
from detector.modeling.regions import normalize_image, resize_for_roi, roi_inputs, warp_regions
from detector.inference.scorers import FineTunedScorer, RegionScorer
from detector.common.atomic import atomic_path
from detector.data.datasets import ImageRecord, load_dataset
from detector.common.errors import UserError
from detector.data.images import file_digest, load_image
from proposals.cache import cache_path, cached_proposals, default_cache_dir

log = logging.getLogger(__name__)

ENGINE = "x86"  #: torch.backends.quantized engine (fbgemm + oneDNN kernels)
FORMAT = "googlenet-rcnn-int8"
VERSION = 2
#: layers kept in fp32: the class scores and box deltas cost ~1% of a region, and their outputs
#: go straight into softmax and box decoding
FLOAT_LAYERS = ("model.cls_score", "model.bbox_pred")
MIN_AGREEMENT = 0.99  #: top-1 agreement with fp32 on held-out regions a fast precision needs
REGIONS_PER_IMAGE = 16  #: calibration regions drawn from each training image
HOLD_OUT_EVERY = 4  #: every 4th calibration image is held out for the agreement check and timing
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "googlenet-rcnn" / "int8"


# ----------------------------------------------------------------------------- the quantised parts


class _CropPart(nn.Module):
    """Crop-mode network with tensor outputs (FX needs them): regions [B, 3, S, S] -> logits
    [B, C+1], deltas [B, 4C], features [B, 1024]."""

    def __init__(self, model: RegionClassifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, regions: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(regions)
        return out.class_logits, out.box_deltas, out.features


class _TrunkPart(nn.Module):
    """Shared-feature trunk: one normalised image [1, 3, H, W] -> the map regions are pooled from."""

    def __init__(self, model: SharedFeatureClassifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model.image_features([image[0]])[2]


class _HeadPart(nn.Module):
    """Shared-feature region head: pooled regions [R, C, s, s] -> logits, deltas, features."""

    def __init__(self, model: SharedFeatureClassifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, pooled: torch.Tensor) -> tuple[torch.Tensor, ...]:
        features = self.model.region_head(pooled)
        return self.model.cls_score(features), self.model.bbox_pred(features), features


def float_parts(model: RegionClassifier) -> dict[str, nn.Module]:
    """The parts of `model` quantised separately (copies, eval mode): crop: network; roi: trunk, head."""
    model = copy.deepcopy(model).eval().to(memory_format=torch.contiguous_format)
    if isinstance(model, SharedFeatureClassifier):
        return {"trunk": _TrunkPart(model), "head": _HeadPart(model)}
    return {"network": _CropPart(model)}


class Int8Crop(nn.Module):
    """Crop-mode int8 network: ``forward(regions [B, 3, S, S]) -> RegionOutputs`` (fp32 tensors)."""

    def __init__(self, parts: dict[str, nn.Module]) -> None:
        super().__init__()
        self.network = parts["network"]

    def forward(self, regions: torch.Tensor) -> RegionOutputs:
        return RegionOutputs(*self.network(regions))


class Int8Shared(nn.Module):
    """Shared-feature int8 network: int8 trunk and region head, fp32 RoIAlign between them."""

    def __init__(self, parts: dict[str, nn.Module], model: SharedFeatureClassifier) -> None:
        super().__init__()
        self.trunk, self.head = parts["trunk"], parts["head"]
        self.pool = model._pool
        self.stride, self.size = model.LAYERS[model.roi_layer]

    def shared_map(self, image: torch.Tensor) -> torch.Tensor:
        """The roi layer's map [1, C, h, w] of a normalised image [1, 3, H, W]."""
        return self.trunk(image)

    def pooled_outputs(self, shared: torch.Tensor, rois: torch.Tensor) -> RegionOutputs:
        """Logits, deltas and features of RoIs [R, 5] on the map [1, C, h, w]."""
        return RegionOutputs(*self.head(self.pool(shared, rois, self.stride, self.size)))


def int8_network(model: RegionClassifier, parts: dict[str, nn.Module]) -> nn.Module:
    """The scorer-facing int8 network of `model` from its converted `parts`."""
    return Int8Shared(parts, model) if isinstance(model, SharedFeatureClassifier) else Int8Crop(parts)


# ----------------------------------------------------------------------------- prepare / calibrate / convert


@contextlib.contextmanager
def _quiet():
    """Silence torch.ao.quantization's deprecation and observer warnings."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def qconfig_mapping():
    """x86's default mapping (histogram-observed activations, per-channel weights) with full
    8-bit activations where the CPU has VNNI (without it, 7 bits avoid fbgemm's AVX2 overflow),
    and the class and box layers (:data:`FLOAT_LAYERS`) left in fp32."""
    from torch.ao.quantization import HistogramObserver, QConfig, default_per_channel_weight_observer
    from torch.ao.quantization import get_default_qconfig_mapping

    activation = HistogramObserver.with_args(reduce_range=not torch.cpu._is_vnni_supported())
    mapping = get_default_qconfig_mapping(ENGINE).set_global(QConfig(activation, default_per_channel_weight_observer))
    for name in FLOAT_LAYERS:
        mapping = mapping.set_module_name(name, None)
    return mapping


def prepare(part: nn.Module, example: torch.Tensor) -> nn.Module:
    """`part` traced, fused and with observers inserted (see :func:`qconfig_mapping`)."""
    from torch.ao.quantization.quantize_fx import prepare_fx

    torch.backends.quantized.engine = ENGINE
    with _quiet():
        return prepare_fx(part, qconfig_mapping(), (example,))


def convert(prepared: nn.Module) -> nn.Module:
    """The int8 module of a calibrated `prepared` one (weights packed for :data:`ENGINE`)."""
    from torch.ao.quantization.quantize_fx import convert_fx

    torch.backends.quantized.engine = ENGINE
    with _quiet():
        return convert_fx(prepared)


def observer_state(prepared: nn.Module) -> dict[str, torch.Tensor]:
    """The calibration statistics of a prepared module: its observers' buffers."""
    return {k: v.clone() for k, v in prepared.state_dict().items() if "activation_post_process" in k}


def load_observers(prepared: nn.Module, state: dict[str, torch.Tensor]) -> bool:
    """Load observer statistics into `prepared`; False when they do not fit its observers."""
    result = prepared.load_state_dict(state, strict=False)
    return not result.unexpected_keys and not any("activation_post_process" in k for k in result.missing_keys)


def calibrate(parts: dict[str, nn.Module], inputs: dict[str, list[torch.Tensor]]) -> dict[str, nn.Module]:
    """Each part prepared and run on its calibration batches (`inputs[name]`)."""
    prepared = {name: prepare(part, inputs[name][0]) for name, part in parts.items()}
    # not inference mode: convert makes parameters of the fused weights. Quiet: the -inf padding
    # before inception 5's dilated max pools is observed (and skipped) on the pad's own output,
    # whose observer shares the quantisation parameters of the pad's input.
    with torch.no_grad(), _quiet():
        for name, part in prepared.items():
            for batch in inputs[name]:
                part(batch)
    return prepared


def quantize_model(model: RegionClassifier, inputs: dict[str, list[torch.Tensor]]) -> nn.Module:
    """`model`'s int8 network calibrated on `inputs` (see :func:`calibration_inputs`)."""
    prepared = calibrate(float_parts(model), inputs)
    return int8_network(model, {name: convert(part) for name, part in prepared.items()})


# ----------------------------------------------------------------------------- calibration regions


@dataclass
class Sample:
    """A normalised training image [3, H, W] and regions on it [K, 4] xyxy pixels."""

    image: torch.Tensor
    boxes: torch.Tensor


def jittered_boxes(record: ImageRecord, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` boxes [count, 4] around the image's ground-truth boxes (centre shifted by ~20% of
    the size, sides scaled by ~e^0.3), clipped; random boxes when it has none."""
    width, height = record.width, record.height
    gt = record.boxes if len(record.boxes) else np.array([[0, 0, width, height]], np.float32)
    base = gt[np.arange(count) % len(gt)].astype(np.float64)
    sizes = base[:, 2:] - base[:, :2]
    centres = base[:, :2] + sizes / 2 + rng.normal(0.0, 0.2, (count, 2)) * sizes
    sizes = sizes * np.exp(rng.normal(0.0, 0.3, (count, 2)))
    boxes = np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1)
    boxes = np.clip(boxes, 0, [width, height, width, height])
    boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
    return boxes.astype(np.float32)


def region_boxes(record: ImageRecord, config: Config, rng: np.random.Generator) -> np.ndarray:
    """:data:`REGIONS_PER_IMAGE` boxes of `record`: evenly spread over its ranked proposals (the
    first test.max_proposals) when they are cached, else jittered ground-truth boxes."""
    cache_dir = default_cache_dir(config)
    if not cache_path(file_digest(record.path), config.proposals, cache_dir).is_file():
        return jittered_boxes(record, REGIONS_PER_IMAGE, rng)
    proposals = cached_proposals(record.path, config.proposals, cache_dir)[: config.test.max_proposals or None]
    if not len(proposals):
        return jittered_boxes(record, REGIONS_PER_IMAGE, rng)
    picks = np.linspace(0, len(proposals) - 1, REGIONS_PER_IMAGE).round().astype(int)
    return proposals[picks]


def calibration_samples(config: Config) -> list[Sample]:
    """test.int8_calibration_images images spread evenly over data.train_split (deterministic)."""
    count = config.test.int8_calibration_images
    if count < 2:
        raise UserError(f"test.int8_calibration_images = {count}: int8 needs at least 2 (one is held out)")
    records = load_dataset(config.data, config.data.train_split).records
    if not records:
        raise UserError(f"int8 calibration: data.train_split {config.data.train_split!r} has no images")
    indices = dict.fromkeys(np.linspace(0, len(records) - 1, count).round().astype(int).tolist())
    rng = np.random.default_rng(0)
    return [Sample(normalize_image(load_image(records[i].path)),
                   torch.as_tensor(region_boxes(records[i], config, rng))) for i in indices]


def calibration_inputs(scorer: FineTunedScorer, samples: list[Sample]) -> dict[str, list[torch.Tensor]]:
    """Batches of each part's input: warped regions [K, 3, S, S] (crop); resized images
    [1, 3, h, w] and regions pooled from their fp32 maps [K, C, s, s] (roi)."""
    model = scorer.network
    if not isinstance(model, SharedFeatureClassifier):
        return {"network": [warp_regions(s.image, s.boxes, scorer.input_size, scorer.context_pad) for s in samples]}
    images, pooled = [], []
    with torch.inference_mode():
        for sample in samples:
            resized, scale = resize_for_roi(sample.image, *scorer.roi_sides)
            shared = model.image_features([resized])[2]
            rois = roi_inputs(sample.boxes, 0, scorer.input_size, scorer.context_pad, scale)
            images.append(resized[None])
            pooled.append(model._pool(shared, rois, *model.LAYERS[model.roi_layer]))
    return {"trunk": images, "head": pooled}


# ----------------------------------------------------------------------------- agreement and timing


def score_samples(scorer: RegionScorer, samples: list[Sample], precision: Precision, batch_size: int) -> torch.Tensor:
    """Class scores [sum K, C+1] of the samples' regions as detection computes them."""
    with torch.inference_mode():
        if scorer.shares_features:
            return torch.cat([scorer.score_image(s.image, s.boxes, precision, batch_size).scores for s in samples])
        return torch.cat([scorer(warp_regions(s.image, chunk, scorer.input_size, scorer.context_pad), precision).scores
                          for s in samples for chunk in s.boxes.split(batch_size)])


def measure(scorer: RegionScorer, samples: list[Sample], precisions: dict[str, Precision],
            batch_size: int) -> dict[str, dict[str, float]]:
    """Per precision name: seconds to score `samples` (after a warm-up on the first) and top-1
    agreement with the first precision (fp32)."""
    results, reference = {}, None
    for name, precision in precisions.items():
        score_samples(scorer, samples[:1], precision, batch_size)
        start = time.perf_counter()
        scores = score_samples(scorer, samples, precision, batch_size)
        seconds = time.perf_counter() - start
        reference = scores if reference is None else reference
        results[name] = {"seconds": seconds, "agreement": float((scores.argmax(1) == reference.argmax(1)).float().mean())}
    return results


def candidates(device: torch.device) -> dict[str, Precision]:
    """fp32 (the reference), bf16 where the CPU multiplies it natively, and int8."""
    found = {"fp32": Precision(device, None)}
    if cpu_has_fast_bf16():
        found["bf16"] = Precision(device, torch.bfloat16)
    found["int8"] = Precision(device, None, int8=True)
    return found


# ----------------------------------------------------------------------------- the cached artefact


def machine() -> str:
    """What int8 speed depends on: the CPU's vector extensions and core count."""
    return (f"{torch.backends.cpu.get_cpu_capability()} vnni={torch.cpu._is_vnni_supported()} "
            f"native-bf16={cpu_has_fast_bf16()} cpus={os.cpu_count()}")


def cache_key(checkpoint: Path, config: Config) -> str:
    """Hex key of the checkpoint's bytes, torch, engine, machine and calibration settings."""
    parts = [FORMAT, str(VERSION), file_digest(checkpoint, 40), torch.__version__, ENGINE, machine(),
             config.data.train_split, str(config.test.int8_calibration_images), str(REGIONS_PER_IMAGE),
             str(config.test.max_proposals)]
    return hashlib.sha1("\n".join(parts).encode()).hexdigest()[:16]


def cache_files(checkpoint: Path, key: str) -> list[Path]:
    """Where the artefact may be: beside the checkpoint, then in :data:`CACHE_DIR`."""
    name = f"{checkpoint.name}.int8-{key}.pt"
    return [checkpoint.parent / name, CACHE_DIR / name]


def read_artefact(checkpoint: Path, key: str) -> dict[str, Any] | None:
    """The cached artefact of `key` (weights-only load), or None when absent or unusable."""
    for path in cache_files(checkpoint, key):
        if not path.is_file():
            continue
        try:
            state = read_weights_file(path, "int8 cache file")
        except UserError as exc:
            log.warning("%s; rebuilding it", exc)
            continue
        if isinstance(state, dict) and state.get("format") == FORMAT and state.get("key") == key \
                and isinstance(state.get("parts"), dict) and isinstance(state.get("measured"), dict):
            return state
    return None


def write_artefact(checkpoint: Path, key: str, state: dict[str, Any]) -> Path:
    """Save `state` atomically beside the checkpoint, or in :data:`CACHE_DIR` when that is read-only."""
    beside, fallback = cache_files(checkpoint, key)
    path = beside if os.access(beside.parent, os.W_OK) else fallback
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(plain_data(state, "int8 cache"), tmp)
    return path


def build_artefact(scorer: FineTunedScorer, config: Config,
                   samples: list[Sample]) -> tuple[dict[str, Any], nn.Module]:
    """Calibrate `scorer`'s network on `samples` (:func:`calibration_samples`), attach the int8
    network, measure agreement and seconds on the held-out ones: (the artefact, the int8 network)."""
    held_out = samples[HOLD_OUT_EVERY - 1 :: HOLD_OUT_EVERY] or samples[-1:]
    used = [s for s in samples if not any(s is h for h in held_out)]
    inputs = calibration_inputs(scorer, used)
    prepared = calibrate(float_parts(scorer.network), inputs)
    scorer.int8 = int8_network(scorer.network, {name: convert(part) for name, part in prepared.items()})
    measured = measure(scorer, held_out, candidates(torch.device("cpu")), config.test.batch_size)
    state = {"format": FORMAT, "version": VERSION, "key": cache_key(scorer.checkpoint, config),
             "checkpoint": str(scorer.checkpoint), "torch": str(torch.__version__), "engine": ENGINE, "machine": machine(),
             "parts": {name: {"observers": observer_state(part), "example_shape": list(inputs[name][0].shape)}
                       for name, part in prepared.items()},
             "regions": {"calibration": sum(len(s.boxes) for s in used), "held_out": sum(len(s.boxes) for s in held_out)},
             "measured": measured}
    return state, scorer.int8


def rebuild(scorer: FineTunedScorer, state: dict[str, Any]) -> nn.Module | None:
    """The int8 network from a cached artefact's statistics, or None when they do not fit."""
    parts = {}
    for name, part in float_parts(scorer.network).items():
        saved = state["parts"].get(name)
        if not saved:
            return None
        prepared = prepare(part, torch.zeros(saved["example_shape"]))
        if not load_observers(prepared, saved["observers"]):
            return None
        parts[name] = convert(prepared)
    return int8_network(scorer.network, parts)


def int8_artefact(scorer: FineTunedScorer, config: Config) -> dict[str, Any]:
    """The checkpoint's cached artefact, built (and `scorer.int8` attached) when missing."""
    key = cache_key(scorer.checkpoint, config)
    state = read_artefact(scorer.checkpoint, key)
    if state is not None:
        return state
    samples = calibration_samples(config)  # first: it names a missing data set before anything is logged
    log.info("int8: calibrating %s on %d images of %s (once; cached)", scorer.checkpoint, len(samples),
             config.data.train_split)
    state, _ = build_artefact(scorer, config, samples)
    log.info("int8: wrote %s", write_artefact(scorer.checkpoint, key, state))
    return state


def attach_int8(scorer: FineTunedScorer, state: dict[str, Any]) -> None:
    """Give `scorer` its int8 network (rebuilt from `state` unless the build attached it)."""
    if scorer.int8 is None:
        scorer.int8 = rebuild(scorer, state)
    if scorer.int8 is None:
        raise UserError(f"{scorer.checkpoint}: its int8 cache does not fit the network; delete "
                        f"{scorer.checkpoint}.int8-*.pt to rebuild it")


# ----------------------------------------------------------------------------- choosing the precision


def int8_problem(scorers: list[RegionScorer], device: torch.device) -> str | None:
    """Why int8 cannot run here (None when it can)."""
    if device.type != "cpu":
        return f"int8 runs on CPU only, not {device.type}"
    if ENGINE not in torch.backends.quantized.supported_engines:
        return (f"this PyTorch has no {ENGINE} quantized engine (it has: "
                f"{', '.join(torch.backends.quantized.supported_engines)})")
    if not all(isinstance(s, FineTunedScorer) and s.checkpoint is not None for s in scorers):
        return "int8 needs checkpoints from rcnn train (the ImageNet default model has none)"
    return None


def summary(measured: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Per precision over ensemble members: total seconds and the lowest agreement."""
    names = [name for name in measured[0] if all(name in m for m in measured)]
    return {name: {"seconds": sum(m[name]["seconds"] for m in measured),
                   "agreement": min(m[name]["agreement"] for m in measured)} for name in names}


def fastest(totals: dict[str, dict[str, float]]) -> str:
    """The fastest precision whose top-1 agreement with fp32 is at least :data:`MIN_AGREEMENT`."""
    passed = [name for name, t in totals.items() if name == "fp32" or t["agreement"] >= MIN_AGREEMENT]
    return min(passed, key=lambda name: totals[name]["seconds"])


def describe(totals: dict[str, dict[str, float]]) -> str:
    """`totals` in a few words: time relative to fp32 and top-1 agreement of each precision."""
    base = totals["fp32"]["seconds"]
    return ", ".join(f"{name} {t['seconds'] / base:.2f}x time" + ("" if name == "fp32" else f" {100 * t['agreement']:.1f}% top-1")
                     for name, t in totals.items())


def inference_precision(scorers: list[RegionScorer], config: Config, device: torch.device | None = None) -> Precision:
    """The precision test.precision asks for on `scorers`; int8 networks are attached when it is
    int8 or auto picks int8. auto without checkpoints (or off the CPU) is resolve_precision's."""
    name, device = config.test.precision, device or default_device()
    if name not in ("int8", "auto"):
        return resolve_precision(name, device)
    plain = resolve_precision("auto" if name == "auto" else "fp32", device)
    problem = int8_problem(scorers, device)
    if problem is not None:
        if name == "int8":
            log.warning("test.precision int8: %s; running %s", problem, plain.description)
        return plain
    try:
        states = [int8_artefact(s, config) for s in scorers]
    except UserError as exc:
        if name == "int8":
            raise
        log.info("precision auto: %s (no int8: %s)", plain.description, exc)
        return plain
    totals = summary([state["measured"] for state in states])
    precision = candidates(device).get(_choice(name, totals), plain)
    for scorer, state in zip(scorers, states):
        if precision.int8:
            attach_int8(scorer, state)
        else:
            scorer.int8 = None
    log.info("precision %s: %s (measured on held-out training regions: %s)", name, precision.description, describe(totals))
    return precision


def _choice(name: str, totals: dict[str, dict[str, float]]) -> str:
    """What `name` (int8 | auto) comes to given the measured `totals`; warns when int8 falls back."""
    if name == "auto":
        return fastest(totals)
    if totals["int8"]["agreement"] >= MIN_AGREEMENT:
        return "int8"
    log.warning("test.precision int8: top-1 agreement with fp32 %.1f%% < %.0f%% on held-out regions; running fp32",
                100 * totals["int8"]["agreement"], 100 * MIN_AGREEMENT)
    return "fp32"
