"""Region scorers: a network that maps warped regions to class scores and box deltas.

A :class:`Detector` holds one scorer per ensemble member. ``FineTunedScorer`` wraps a trained
checkpoint; ``ImageNetScorer`` is the no-training default: torchvision's ImageNet GoogLeNet whose
1000 class probabilities are mapped to detection classes through WordNet (detector.modeling.class_maps).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import googlenet

from detector.common.errors import UserError
from detector.common.precision import Precision, prepare_input, prepare_model
from detector.modeling.build import imagenet_weights, model_from_checkpoint
from detector.modeling.checkpoint import load_checkpoint, model_settings
from detector.modeling.class_maps import map_imagenet_probs, target_class_names
from detector.modeling.googlenet import RegionClassifier, SharedFeatureClassifier
from detector.modeling.regions import resize_for_roi, roi_inputs
from detector.modeling.svm import SvmHead

WEIGHTS_HELP = "pass --weights CHECKPOINT.pt (train one with `rcnn train`) or set $RCNN_WEIGHTS"


@dataclass
class RegionScores:
    """Scores [B, C+1] (column 0 = background) and class-specific deltas [B, 4C] (None: keep boxes)."""

    scores: torch.Tensor
    deltas: torch.Tensor | None


class RegionScorer:
    """Base: a network in eval mode plus the warp settings its input needs."""

    shares_features = False  #: roi-mode scorers score whole images (see FineTunedScorer.score_image)

    def __init__(self, network: nn.Module, classes: list[str], display_names: list[str],
                 input_size: int, context_pad: int, name: str) -> None:
        self.network = network.eval()
        self.classes = classes
        self.display_names = display_names
        self.input_size = input_size
        self.context_pad = context_pad
        self.name = name

    @property
    def warp_key(self) -> tuple[int, int]:
        return self.input_size, self.context_pad

    def to(self, precision: Precision) -> "RegionScorer":
        self.network = prepare_model(self.network, precision)
        return self

    def __call__(self, regions: torch.Tensor, precision: Precision) -> RegionScores:
        raise NotImplementedError


class FineTunedScorer(RegionScorer):
    """A checkpoint from ``rcnn train``: softmax probabilities and box deltas of the network, or
    R-CNN SVM margins and ridge deltas when the checkpoint holds an SVM head."""

    def __init__(self, *args, svm: SvmHead | None = None, roi_sides: tuple[int, int] = (600, 1000),
                 checkpoint: Path | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.svm = svm
        self.roi_sides = roi_sides  #: (short, max) image sides of a shared-feature (roi) model
        self.checkpoint = checkpoint  #: the file the weights came from (keys the int8 cache)
        self.int8: nn.Module | None = None  #: the int8 network (detector.inference.int8), run under int8 precision

    @property
    def shares_features(self) -> bool:
        """True for a roi-mode model, which scores all boxes of an image from one trunk pass."""
        return isinstance(self.network, SharedFeatureClassifier)

    @classmethod
    def from_checkpoint(cls, path: str) -> "FineTunedScorer":
        state = load_checkpoint(path)
        model: RegionClassifier = model_from_checkpoint(state, where=str(path))
        model_config = model_settings(state, str(path))
        svm = SvmHead.from_state_dict(state["svm"]) if state.get("svm") else None
        roi_sides = (model_config.get("roi_short_side", 600), model_config.get("roi_max_side", 1000))
        return cls(model, list(state["classes"]), list(state.get("display_names", state["classes"])),
                   model_config.get("input_size", 224), model_config.get("context_pad", 16), str(path),
                   svm=svm, roi_sides=roi_sides, checkpoint=Path(path))

    def _network(self, precision: Precision) -> nn.Module:
        """The network `precision` runs: the int8 one under int8, else the float one."""
        if not precision.int8:
            return self.network
        if self.int8 is None:
            raise ValueError(f"{self.name}: precision int8 without an int8 network (see detector.inference.int8)")
        return self.int8

    def _scores(self, out) -> RegionScores:
        if self.svm is not None:
            features = out.features.float().cpu()
            return RegionScores(self.svm.scores(features), self.svm.deltas(features))
        return RegionScores(F.softmax(out.class_logits.float(), dim=1).cpu(), out.box_deltas.float().cpu())

    def test_sides(self, scales: Sequence[int] = ()) -> list[tuple[int, int]]:
        """(shorter side, longer-side cap) of each test scale: the model's own for no `scales`,
        else each shorter side with the cap scaled alike (as train.scales does)."""
        short, longest = self.roi_sides
        return [(int(side), round(longest * side / short)) for side in scales] or [self.roi_sides]

    def score_image(self, image: torch.Tensor, boxes: torch.Tensor, precision: Precision, batch_size: int,
                    scales: Sequence[int] = ()) -> RegionScores:
        """Shared-feature (roi) scoring of boxes [N, 4] on a normalised image [3, H, W], at the
        model's scale or at test `scales` (shorter sides): with several, each box is scored at
        the one where its area comes closest to input_size² (Fast R-CNN's multi-scale testing),
        one trunk pass per scale that some box needs."""
        sides = self.test_sides(scales)
        if len(sides) == 1:
            return self._score_at(image, boxes, precision, batch_size, sides[0])
        height, width = image.shape[1:]
        factors = torch.tensor([min(short / min(height, width), longest / max(height, width)) for short, longest in sides])
        areas = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))[:, None] * factors[None] ** 2
        chosen = (areas - self.input_size ** 2).abs().argmin(dim=1)  # [N] index into sides
        scores = torch.empty((len(boxes), len(self.classes) + 1))
        deltas = torch.zeros((len(boxes), 4 * len(self.classes)))
        for index, side in enumerate(sides):
            mine = chosen == index
            if bool(mine.any()):
                out = self._score_at(image, boxes[mine], precision, batch_size, side)
                scores[mine] = out.scores
                deltas[mine] = out.deltas
        return RegionScores(scores, deltas)

    def _score_at(self, image: torch.Tensor, boxes: torch.Tensor, precision: Precision, batch_size: int,
                  sides: tuple[int, int]) -> RegionScores:
        """Scores of boxes [N, 4] from one trunk pass over the image resized to `sides`, then
        RoIAlign (+ inception 5 for roi_layer 4e) + heads in chunks of `batch_size` regions."""
        resized, scale = resize_for_roi(image, *sides)
        network = self._network(precision)
        with precision.autocast():
            resized = prepare_input(resized, precision)
            shared = network.shared_map(resized[None]) if precision.int8 else network.image_features([resized])[2]
            parts = [
                self._scores(network.pooled_outputs(
                    shared, prepare_input(roi_inputs(chunk, 0, self.input_size, self.context_pad, scale), precision)))
                for chunk in boxes.split(batch_size)
            ]
        return RegionScores(torch.cat([p.scores for p in parts]), torch.cat([p.deltas for p in parts]))

    def __call__(self, regions: torch.Tensor, precision: Precision) -> RegionScores:
        with precision.autocast():
            out = self._network(precision)(prepare_input(regions, precision))
        return self._scores(out)


class ImageNetScorer(RegionScorer):
    """torchvision's ImageNet GoogLeNet, not fine-tuned; ImageNet classes -> `target` via WordNet."""

    def __init__(self, target: str = "ilsvrc_det200") -> None:
        ids, names = target_class_names(target)
        network = googlenet(weights=None, aux_logits=False, transform_input=False, init_weights=False)
        state = _imagenet_weights()
        network.load_state_dict({k: v for k, v in state.items() if not k.startswith("aux")})
        self.target = target
        super().__init__(network, ids, names, input_size=224, context_pad=16, name=f"imagenet->{target}")

    def __call__(self, regions: torch.Tensor, precision: Precision) -> RegionScores:
        with precision.autocast():
            logits = self.network(prepare_input(regions, precision))
        probs = F.softmax(logits.float(), dim=1).cpu()
        return RegionScores(map_imagenet_probs(probs, self.target), None)


def _imagenet_weights() -> dict[str, torch.Tensor]:
    """The ImageNet weights, or a UserError that also says how to give detection weights."""
    try:
        return imagenet_weights()
    except UserError as exc:
        reason = str(exc).split(":")[0]
        raise UserError(f"no detection weights: {WEIGHTS_HELP}; the ImageNet default model is unavailable "
                        f"({reason}; it needs googlenet-1378be20.pth in ~/.cache/torch/hub/checkpoints/)") from None
