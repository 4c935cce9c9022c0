"""int8 inference: post-training static quantisation of a checkpoint's region classifier.

FX graph mode (``torch.ao.quantization.quantize_fx``) on PyTorch's x86 quantized engine (fbgemm
kernels; VNNI where the CPU has it): convolution + batch norm + ReLU fused, int8 per-channel
weights, uint8 activations whose ranges are observed (histograms) on regions of the training
split. It runs without a compiler, which PT2E's X86InductorQuantizer needs to be fast. Crop
mode quantises the whole network (regions -> logits, deltas, features); the shared-feature (roi)
mode quantises the trunk (image -> the map regions are pooled from) and the region head (pooled
region -> logits, deltas, features), with RoIAlign between them in fp32.

The int8 network is rebuilt from the checkpoint's weights deterministically (prepare, load the
observers' statistics, convert), so only statistics (plain float tensors) need caching; the
cache and the choice of precision are :mod:`detector.inference.precision_choice`'s.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from detector.common.errors import UserError
from detector.config import Config
from detector.data.datasets import ImageRecord, load_dataset
from detector.data.images import file_digest, load_image
from detector.inference.scorers import FineTunedScorer
from detector.modeling.googlenet import RegionClassifier, RegionOutputs, SharedFeatureClassifier
from detector.modeling.regions import normalize_image, resize_for_roi, roi_inputs, warp_regions
from proposals.cache import cache_path, cached_proposals, default_cache_dir

log = logging.getLogger(__name__)

ENGINE = "x86"  #: torch.backends.quantized engine (fbgemm + oneDNN kernels)
#: layers kept in fp32: the class scores and box deltas cost ~1% of a region, and their outputs
#: go straight into softmax and box decoding
FLOAT_LAYERS = ("model.cls_score", "model.bbox_pred")
REGIONS_PER_IMAGE = 16  #: calibration regions drawn from each training image


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
    """Shared-feature trunk: one normalised image [1, 3, H, W] -> the map(s) regions are pooled from."""

    def __init__(self, model: SharedFeatureClassifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
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
        self.pool_regions = model.pool_regions  # fp32 RoIAlign, from each map the float model would use

    def shared_map(self, image: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """The roi layer's map(s) [1, C, h, w] of a normalised image [1, 3, H, W]."""
        return self.trunk(image)

    def pooled_outputs(self, shared: torch.Tensor | tuple[torch.Tensor, ...], rois: torch.Tensor) -> RegionOutputs:
        """Logits, deltas and features of RoIs [R, 5] on the map(s) of :meth:`shared_map`."""
        return RegionOutputs(*self.head(self.pool_regions(shared, rois)))


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
    from torch.ao.quantization import (
        HistogramObserver,
        QConfig,
        default_per_channel_weight_observer,
        get_default_qconfig_mapping,
    )

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
            pooled.append(model.pool_regions(shared, rois))
    return {"trunk": images, "head": pooled}


# ----------------------------------------------------------------------------- from cached statistics


#: the largest batch a cached example shape may name (calibration batches hold REGIONS_PER_IMAGE regions)
MAX_EXAMPLE_BATCH = 4096


def example_input(scorer: FineTunedScorer, name: str, shape) -> torch.Tensor | None:
    """A zero input (batch 1) for tracing part `name` when the cached example `shape` fits
    `scorer`'s network, else None; checked before anything is allocated, so a cache file cannot
    make it allocate more than one input of the network's own size. crop: [B, 3, S, S] (S the
    input size); roi trunk: [1, 3, H, W] within the longest resized side; roi head: [B, C, s, s]
    (the pooled map's channels and size)."""
    if not (isinstance(shape, list) and len(shape) == 4 and all(type(v) is int and v > 0 for v in shape)):
        return None
    batch, channels, height, width = shape
    model = scorer.network
    if name == "network":
        fits = (channels, height, width) == (3, scorer.input_size, scorer.input_size)
    elif name == "trunk":
        fits = batch == 1 and channels == 3 and max(height, width) <= max(scorer.roi_sides)
    elif name == "head" and isinstance(model, SharedFeatureClassifier):
        size = model.LAYERS[model.roi_layer][1]
        fits = (height, width) == (size, size) and channels == _map_channels(model)
    else:
        fits = False
    return torch.zeros(1, channels, height, width) if fits and batch <= MAX_EXAMPLE_BATCH else None


def _map_channels(model: SharedFeatureClassifier) -> int:
    """Channels of the pooled regions (one region of a 64-pixel image through the trunk)."""
    with torch.inference_mode():
        shared = model.image_features([torch.zeros(3, 64, 64)])[2]
        return int(model.pool_regions(shared, torch.tensor([[0.0, 0.0, 0.0, 64.0, 64.0]])).shape[1])


def rebuild(scorer: FineTunedScorer, state: dict[str, Any]) -> nn.Module | None:
    """The int8 network from a cached artefact's statistics, or None when they do not fit: a part
    missing, an example shape that is not the network's (:func:`example_input`), observers of
    other names or shapes."""
    parts = {}
    for name, part in float_parts(scorer.network).items():
        saved = state["parts"].get(name)
        if not isinstance(saved, dict) or not isinstance(saved.get("observers"), dict):
            return None
        example = example_input(scorer, name, saved.get("example_shape"))
        if example is None:
            return None
        prepared = prepare(part, example)
        try:
            if not load_observers(prepared, saved["observers"]):
                return None
        except (RuntimeError, TypeError, ValueError):  # tensors of other shapes or types
            return None
        parts[name] = convert(prepared)
    return int8_network(scorer.network, parts)
