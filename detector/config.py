"""Experiment configuration: dataclasses loaded from YAML, overridable with ``--set a.b=value``.

A config file may name a ``base:`` file, or a list of them applied in order (relative to itself
or shipped config names), whose values it overrides. Unknown keys and values of the wrong type are errors naming the key.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from configs import config_path
from detector.common.atomic import write_text
from detector.common.errors import UserError
from detector.data.datasets import DatasetConfig
from proposals.config import ProposalConfig


@dataclass
class ModelConfig:
    """The GoogLeNet region classifier."""

    #: imagenet | random | pretrain (this run's `rcnn pretrain` export) | a .pth of torchvision GoogLeNet weights
    init: str = "imagenet"
    mode: str = "crop"  #: crop (R-CNN warped regions) | roi (shared trunk features, RoIAlign; see roi_layer)
    input_size: int = 224  #: warped region side (pixels)
    context_pad: int = 16  #: context pixels around each region at the warped size (R-CNN)
    aux_classifiers: bool = True  #: train with the two auxiliary heads (dropped at inference)
    dropout: float = 0.4  #: main head dropout (GoogLeNet paper)
    roi_short_side: int = 600  #: roi mode: images resized so the shorter side is this (pixels)
    roi_max_side: int = 1000  #: roi mode: ...unless the longer side would exceed this
    #: roi mode: 4e (5a/5b per region) | 5b (whole trunk per image) | 5b-dilated (light head) |
    #: 5b-dilated+3b (light head + a stride-8 level for regions under 112 px, FPN's rule)
    roi_layer: str = "4e"


@dataclass
class TrainConfig:
    """R-CNN fine-tuning of the region classifier."""

    iterations: int = 40000
    images_per_batch: int = 2
    regions_per_batch: int = 128
    fg_fraction: float = 0.25  #: 32 foreground of 128 (R-CNN)
    fg_iou: float = 0.5  #: foreground: IoU >= this with a ground-truth box
    bg_iou_low: float = 0.1  #: background: IoU in [bg_iou_low, bg_iou_high)
    bg_iou_high: float = 0.5
    fg_sampling: str = "uniform"  #: uniform (over foreground proposals) | per_object (slots spread evenly over objects)
    repeat_factor: float = 0.0  #: LVIS repeat-factor threshold t: images drawn by max_c sqrt(t / f(c)) (0 = off)
    bbox_iou: float = 0.6  #: box-regression targets for proposals with IoU >= this (R-CNN)
    bbox_loss_weight: float = 1.0
    aux_loss_weight: float = 0.3  #: each auxiliary classifier's loss weight (GoogLeNet)
    lr: float = 0.001  #: 1/10 of the pre-training rate (R-CNN)
    momentum: float = 0.9
    weight_decay: float = 0.0005
    schedule: str = "step"  #: step | cosine
    lr_steps: list[int] = field(default_factory=lambda: [30000])
    lr_gamma: float = 0.1
    warmup_iterations: int = 0
    flip: bool = True  #: random horizontal flip of training images
    #: roi mode: each training image's shorter side drawn from these pixels (multi-scale training,
    #: Fast R-CNN; model.roi_max_side scales with it); empty = model.roi_short_side only
    scales: list[int] = field(default_factory=list)
    photometric: float = 0.0  #: brightness / contrast / saturation jitter of training images (0 = off)
    ema_decay: float = 0.0  #: Polyak averaging of the weights (0 = off)
    #: trunk batch norm: train (statistics follow the minibatches) | frozen (those of the initial weights kept)
    batchnorm: str = "train"
    precision: str = "auto"  #: auto (bf16 on capable CPUs, fp16 AMP on CUDA) | fp32 | bf16 | fp16
    checkpoint_every: int = 1000
    log_every: int = 20
    val_every: int = 0  #: validation mAP on data.test_split every N iterations (0 = off)
    val_images: int = 50  #: images of the test split used for validation mAP (0 = all)
    workers: int = 2  #: DataLoader worker processes
    classifier: str = "softmax"  #: softmax | svm (R-CNN per-class linear SVMs on features)
    svm_c: float = 0.001
    svm_neg_iou: float = 0.3
    svm_mining_rounds: int = 3
    svm_proposals_per_image: int = 200  #: random proposals per image whose features feed the SVMs
    ridge_lambda: float = 1000.0
    extra_split: str = ""  #: split whose ground-truth boxes are extra positives, no proposals/background (R-CNN ILSVRC: DET train)
    extra_boxes_per_class: int = 1000  #: at most this many extra ground-truth boxes per class (R-CNN: 1000)


@dataclass
class TestConfig:
    """Inference and post-processing."""

    batch_size: int = 64  #: regions per forward pass
    max_proposals: int = 0  #: score at most this many proposals per image, best-ranked first (0 = all)
    nms_iou: float = 0.3  #: per-class greedy NMS threshold (R-CNN)
    score_threshold: float = 0.05
    max_detections: int = 100  #: per image
    fusion: str = "nms"  #: nms | vote (box voting) | wbf (weighted boxes fusion)
    vote_iou: float = 0.5  #: box voting neighbourhood (Gidaris & Komodakis)
    wbf_iou: float = 0.55  #: weighted boxes fusion cluster IoU
    flip: bool = False  #: test-time horizontal flip, averaged like an extra model
    #: roi mode: shorter sides to test at (empty = the model's own); several: each region scored at
    #: the one that brings its area closest to input_size² (Fast R-CNN's multi-scale testing)
    scales: list[int] = field(default_factory=list)
    precision: str = "auto"  #: auto (int8 with VNNI, else native bf16, else fp32; those agreeing with fp32) | fp32 | bf16 | fp16 | int8
    int8_calibration_images: int = 60  #: training images whose regions calibrate int8 (a quarter held out)
    weights: list[str] = field(default_factory=list)  #: checkpoints; several = ensemble
    #: processes computing the proposals of the next images while the network scores this one
    #: (detect on several images, rcnn eval with a cold proposal cache): -1 = auto (every core in
    #: roi mode, none in crop mode), 0 = none (one thread computes the next image's)
    proposal_workers: int = -1
    proposal_ahead: int = 0  #: at most this many images read and proposed ahead (0 = two per worker)


def detection_settings(test: TestConfig) -> dict:
    """The test settings that change detections, as a dict for cache keys: all but those that
    change speed only, and the checkpoints (which enter the keys by content)."""
    speed_only = ("weights", "batch_size", "proposal_workers", "proposal_ahead")
    return {k: v for k, v in dataclasses.asdict(test).items() if k not in speed_only}


@dataclass
class PretrainConfig:
    """Classification pre-training of the GoogLeNet trunk on an ImageFolder (``rcnn pretrain``).

    Defaults follow the GoogLeNet paper (Sect. 6): SGD momentum 0.9, the learning rate cut by 4%
    every 8 epochs, Polyak (EMA) averaging, 8%-100% area / [3/4, 4/3] aspect crops, photometric
    distortions, random resize interpolation, auxiliary losses weighted 0.3.
    """

    root: str = ""  #: ImageFolder root holding <train_split>/<class>/* and <val_split>/<class>/*
    train_split: str = "train"
    val_split: str = "val"
    input_size: int = 224  #: training crop side (pixels); 128 / 160 suit short budgets
    epochs: int = 90
    batch_size: int = 64  #: images per step per process
    lr: float = 0.04  #: peak learning rate at batch_size images per step
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0002
    schedule: str = "step"  #: step (gamma every step_epochs) | cosine | onecycle, all after warm-up
    step_epochs: float = 8.0  #: step schedule: epochs between decays (paper: 8)
    step_gamma: float = 0.96  #: step schedule: factor per decay (paper: 0.96, "4% every 8 epochs")
    warmup_epochs: float = 0.0  #: linear warm-up from lr/25 (onecycle: the rising part)
    label_smoothing: float = 0.0
    aux_loss_weight: float = 0.3  #: each auxiliary classifier's loss weight (paper)
    dropout: float = 0.4  #: main head (paper); the auxiliary heads use 0.7
    ema_decay: float = 0.9998  #: Polyak averaging per step, warmed up as min(decay, (1+t)/(10+t))
    min_area: float = 0.08  #: random crop area, fraction of the image
    max_area: float = 1.0
    min_aspect: float = 0.75
    max_aspect: float = 1.3333333333333333
    random_interpolation: bool = True  #: bilinear / area / nearest / cubic at random (paper)
    flip: bool = True
    brightness: float = 0.4  #: photometric distortions (0 = off)
    contrast: float = 0.4
    saturation: float = 0.4
    precision: str = "auto"  #: auto | fp32 | bf16 | fp16 (see train.precision)
    workers: int = 2  #: DataLoader worker processes decoding and augmenting
    checkpoint_every: int = 200  #: steps between checkpoints (also at every epoch's end)


@dataclass
class EvalConfig:
    """How detections are scored."""

    metric: str = "auto"  #: auto (by data.format) | voc07 | voc10 | ilsvrc | coco
    #: further metrics scored beside `metric`, each reported in eval/<split>/<name>/ (e.g. [coco]
    #: next to voc10: AP@[.5:.95], AP50, AP75 and AP by object size)
    extra_metrics: list[str] = field(default_factory=list)
    splits: list[str] = field(default_factory=list)  #: splits `rcnn run` detects and scores; empty = [data.test_split]
    #: also write detections as coco | voc | ilsvrc | yolo results: `rcnn run` into
    #: <run dir>/detections_<split>/, `rcnn eval` into its report folder
    save_formats: list[str] = field(default_factory=list)
    #: error analysis in every report: TIDE breakdown, Hoiem false-positive types, galleries
    analysis: bool = True
    #: Hoiem's "similar" classes: group name -> class ids or names, e.g. {animals: [cat, dog, horse]};
    #: two classes are similar when one group lists both
    similar_classes: dict[str, list[str]] = field(default_factory=dict)
    gallery_per_class: int = 12  #: gallery pictures per class of each kind (false positives, misses); 0: none
    gallery_total: int = 1200  #: at most this many pictures in all (fewer per class when there are many classes)


@dataclass
class Config:
    """Everything one experiment needs; written as config.yaml beside its outputs."""

    name: str = "experiment"
    output_dir: str = "runs/{name}"
    seed: int = 0
    data: DatasetConfig = field(default_factory=DatasetConfig)
    proposals: ProposalConfig = field(default_factory=ProposalConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    test: TestConfig = field(default_factory=TestConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    ensemble: list[str] = field(default_factory=list)  #: member configs or `rcnn run` folders; `rcnn run` fuses them

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir.format(name=self.name))


# --------------------------------------------------------------------------- typed merging


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """`value` checked against type `tp` (int accepted for float); raises UserError naming `key`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _coerce(value, option, key)
            except UserError:
                continue
        raise UserError(f"config key {key}: {value!r} does not match {tp}")
    if origin is list:
        if not isinstance(value, list):
            raise UserError(f"config key {key}: expected a list, got {value!r}")
        (item_type,) = typing.get_args(tp)
        return [_coerce(item, item_type, f"{key}[{i}]") for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"config key {key}: expected a mapping, got {value!r}")
        key_type, value_type = typing.get_args(tp)
        return {_coerce(k, key_type, key): _coerce(v, value_type, f"{key}.{k}") for k, v in value.items()}
    if tp is type(None):
        if value is None:
            return None
        raise UserError(f"config key {key}: expected null, got {value!r}")
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if tp in (bool, int, float, str) and (not isinstance(value, tp) or (tp is int and isinstance(value, bool))):
        raise UserError(f"config key {key}: expected {_type_name(tp)}, got {value!r}")
    return value


def _merge(instance: Any, values: dict, prefix: str = "") -> Any:
    """A copy of dataclass `instance` with `values` (a nested dict) applied, type-checked."""
    if not isinstance(values, dict):
        raise UserError(f"config section {prefix.rstrip('.') or '<top>'}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(type(instance))
    names = {f.name for f in dataclasses.fields(instance)}
    changes = {}
    for key, value in values.items():
        full = f"{prefix}{key}"
        if key not in names:
            raise UserError(f"unknown config key {full!r} (known: {', '.join(sorted(names))})")
        current = getattr(instance, key)
        if dataclasses.is_dataclass(current):
            changes[key] = _merge(current, value, f"{full}.")
        else:
            changes[key] = _coerce(value, hints[key], full)
    return dataclasses.replace(instance, **changes)


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError:
        raise UserError(f"{path}: config file not found") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: malformed YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: a config must be a mapping of sections")
    return data


def resolve_config_file(spec: str | Path, relative_to: Path | None = None) -> Path:
    """A config given as a path, a path relative to another config, or a shipped name."""
    path = Path(spec)
    for candidate in (path, (relative_to / path) if relative_to else None):
        if candidate is not None and candidate.is_file():
            return candidate
    shipped = config_path(str(spec))
    if shipped.is_file():
        return shipped
    raise UserError(f"config {spec}: no such file and not a shipped config")


def _apply_file(config: Config, path: Path, seen: tuple[Path, ...] = ()) -> Config:
    if path.resolve() in seen:
        raise UserError(f"{path}: circular `base:` chain")
    data = _read_yaml(path)
    bases = data.pop("base", None)
    bases = bases if isinstance(bases, list) else [] if bases is None else [bases]
    if not all(isinstance(base, str) for base in bases):
        raise UserError(f"{path}: `base:` must be a config name or file, or a list of them")
    for base in bases:
        config = _apply_file(config, resolve_config_file(base, path.parent), seen + (path.resolve(),))
    return _merge(config, data)


def parse_override(text: str) -> dict:
    """``a.b=value`` -> {"a": {"b": value}}; the value is parsed as YAML (``[1, 2]``, ``true``)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--set {text!r}: expected KEY=VALUE, e.g. train.lr=0.001")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    nested: Any = value
    for part in reversed(key.strip().split(".")):
        nested = {part: nested}
    return nested


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """Defaults <- YAML file (and its bases) <- ``--set`` overrides, all type-checked."""
    config = Config()
    if path is not None:
        config = _apply_file(config, resolve_config_file(path))
    return apply_overrides(config, overrides)


def apply_overrides(config: Config, overrides: list[str]) -> Config:
    """A copy of `config` with ``a.b=value`` overrides applied in order, type-checked."""
    for text in overrides:
        config = _merge(config, parse_override(text))
    return config


def config_to_dict(config: Config) -> dict:
    return dataclasses.asdict(config)


def save_config(config: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically)."""
    write_text(path, yaml.safe_dump(config_to_dict(config), sort_keys=False))
