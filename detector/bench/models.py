"""The randomly initialised models that the region sections (:mod:`detector.bench.classifier`,
:mod:`detector.bench.detect`, :mod:`detector.bench.training`, :mod:`detector.bench.memory`) and
:mod:`detector.bench.throughput` measure, the scorers that wrap them, the warped crops they score,
the benchmark's proposal budget and its fast precision; nothing is timed here.

Models are randomly initialised, with He-normal convolutions so that activations and logits have a
trained network's scale (see :func:`benchmark_model`): speed does not depend on the weights, and
the fast paths' agreement with fp32 is measured on those random logits.
"""
from __future__ import annotations

import copy
import dataclasses

import numpy as np
import torch
from torch import nn

from detector.bench.report import BenchSettings
from detector.common.precision import Precision
from detector.config import Config
from detector.inference.scorers import FineTunedScorer
from detector.modeling.build import build_model
from detector.modeling.googlenet import RegionClassifier, make_network
from detector.modeling.regions import normalize_image, warp_regions
from proposals.config import ProposalConfig

NUM_CLASSES = 200  #: ILSVRC DET: the width of the class head of every benchmarked model
CLASS_NAMES = [f"class{i}" for i in range(NUM_CLASSES)]  #: stand-in class list of the benchmarked models


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


def random_scorers(model: RegionClassifier, count: int, settings: BenchSettings) -> list[FineTunedScorer]:
    """`count` ensemble members, each an inference copy of `model` (speed does not depend on
    the weights, so the members may be equal)."""
    return [FineTunedScorer(inference_copy(model), CLASS_NAMES, CLASS_NAMES, settings.crop_size, settings.context_pad,
                            f"random {index}") for index in range(count)]


def shared_feature_scorer(model: RegionClassifier, roi_layer: str, roi_sides: tuple[int, int],
                          settings: BenchSettings) -> FineTunedScorer:
    """`model`'s weights run in the shared-feature (roi) mode, pooling at `roi_layer`, on images
    resized to `roi_sides` (shorter side, cap on the longer). Layers only that mode has (the
    light head's, and its stride-8 level's) keep their random initialisation."""
    shared = make_network("roi", model.num_classes, aux_classifiers=False, roi_layer=roi_layer).eval()
    missing, unexpected = shared.load_state_dict(inference_copy(model).state_dict(), strict=False)
    assert not unexpected and all(key.startswith(("light_", "fine_")) for key in missing), (missing, unexpected)
    return FineTunedScorer(shared, CLASS_NAMES, CLASS_NAMES, settings.crop_size, settings.context_pad,
                           f"roi {roi_layer}, {roi_sides[0]} px", roi_sides=roi_sides)


def proposal_config_for(config: Config, settings: BenchSettings) -> ProposalConfig:
    """The config's proposal settings with the benchmark's box budget."""
    return dataclasses.replace(config.proposals, max_boxes=settings.max_proposals)


def fast_precision(device: torch.device) -> Precision:
    """bf16 autocast on CPU, fp16 AMP on CUDA."""
    return Precision(device, torch.float16 if device.type == "cuda" else torch.bfloat16)
