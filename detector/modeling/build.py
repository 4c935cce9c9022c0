"""Models with their weights: region classifiers from a config (random, ImageNet or ``rcnn
pretrain`` trunk weights), inference models from detection checkpoints, and torchvision
GoogLeNet classifiers from ``rcnn pretrain`` exports."""
from __future__ import annotations

import contextlib
import io
import json
import logging
import sys
from pathlib import Path
from typing import Any

import torch
from torchvision.models import GoogLeNet, GoogLeNet_Weights, googlenet

from detector.common.errors import UserError
from detector.modeling.checkpoint import (
    AUX_PREFIXES,
    check_inference_state,
    error_line,
    load_weights,
    model_settings,
    read_weights_file,
    weight_tensors,
)
from detector.modeling.googlenet import RegionClassifier, make_network

log = logging.getLogger(__name__)


def imagenet_weights() -> dict[str, torch.Tensor]:
    """torchvision's ImageNet GoogLeNet weights: from its cache ($TORCH_HOME/hub/checkpoints,
    default ~/.cache/torch/hub/checkpoints), downloaded there when online."""
    chatter = io.StringIO()  # torch.hub prints "Downloading ..." on stdout; shown only on success
    try:
        with contextlib.redirect_stdout(chatter):
            state = GoogLeNet_Weights.IMAGENET1K_V1.get_state_dict(progress=False, weights_only=True)
    except Exception as exc:  # offline, proxy, corrupt download
        raise UserError(
            f"cannot load torchvision's ImageNet GoogLeNet weights ({type(exc).__name__}): put "
            "googlenet-1378be20.pth in ~/.cache/torch/hub/checkpoints/, or give a local copy as model.init=PATH"
        ) from None
    print(chatter.getvalue(), end="", file=sys.stderr)
    return state


def _imagenet_state_dict(init: str) -> dict[str, torch.Tensor]:
    """torchvision GoogLeNet ImageNet weights: downloaded by torchvision, or a local .pth file."""
    if init == "imagenet":
        return imagenet_weights()
    path = Path(init)
    if not path.is_file():
        raise UserError(f"model.init {init!r}: expected imagenet, random or a .pth file")
    state = read_weights_file(path, "PyTorch weights file")
    state = state.get("model", state) if isinstance(state, dict) else state
    if not isinstance(state, dict) or "inception3a.branch1.conv.weight" not in state:
        raise UserError(f"{path}: does not hold torchvision GoogLeNet weights")
    return state


#: torchvision GoogLeNet's classification layers, which detection replaces and never loads
CLASSIFIER_PREFIXES = ("fc.", "aux1.fc2.", "aux2.fc2.")


def load_imagenet_trunk(model: RegionClassifier, init: str) -> list[str]:
    """Load classification weights (torchvision ImageNet ones, or ``rcnn pretrain``'s export)
    into the trunk, log what was skipped, and return the trunk keys left at their fresh init.

    The classification layers (fc, aux fc2: CLASSIFIER_PREFIXES) are never loaded: their
    detection replacements start fresh, whatever the number of classes.
    """
    state = _imagenet_state_dict(init)
    own = model.trunk.state_dict()
    compatible = {k: v for k, v in state.items()
                  if k in own and own[k].shape == v.shape and not k.startswith(CLASSIFIER_PREFIXES)}
    result = model.trunk.load_state_dict(compatible, strict=False)
    skipped = sorted(set(state) - set(compatible))
    log.info("loaded %d classification tensors into the GoogLeNet trunk from %s", len(compatible), init)
    if skipped:
        log.info("not loaded (unexpected or replaced head): %s", ", ".join(skipped))
    if result.missing_keys:
        log.info("missing, freshly initialised: %s", ", ".join(result.missing_keys))
    if len(compatible) < 100:
        raise UserError(f"model.init {init}: only {len(compatible)} tensors match GoogLeNet; wrong file?")
    return result.missing_keys


def build_model(num_classes: int, init: str = "random", aux_classifiers: bool = True, dropout: float = 0.4,
                mode: str = "crop", roi_layer: str = "4e") -> RegionClassifier:
    """A region classifier (see make_network) for `num_classes` foreground classes, initialised
    per `init`."""
    model = make_network(mode, num_classes, aux_classifiers, dropout, roi_layer)
    if init != "random":
        load_imagenet_trunk(model, init)
    return model


def model_from_checkpoint(state: dict[str, Any], use_ema: bool = True, where: str = "checkpoint") -> RegionClassifier:
    """An inference model (eval mode, auxiliary classifiers dropped) from a loaded checkpoint;
    UserError naming `where` when the checkpoint lacks what inference needs or its weights do not
    fit the model its config describes."""
    check_inference_state(state, where)
    weights = weight_tensors(state["ema"] if use_ema and state.get("ema") is not None else state["model"], where)
    weights = {k: v for k, v in weights.items() if not k.startswith(AUX_PREFIXES)}
    num_classes, head = len(state["classes"]), weights.get("cls_score.weight")
    if head is not None and head.shape[:1] != (num_classes + 1,):
        raise UserError(f"{where}: checkpoint head of shape {list(head.shape)} does not give {num_classes} classes "
                        "+ background (its class list and weights disagree)")
    settings = model_settings(state, where)
    mode, roi_layer = settings.get("mode", "crop"), settings.get("roi_layer", "4e")
    try:
        model = make_network(mode, num_classes, aux_classifiers=False, roi_layer=roi_layer)
    except UserError as exc:
        raise UserError(f"{where}: {exc}") from None
    described = f"the {mode} model its config describes" + (f" (roi_layer {roi_layer})" if mode == "roi" else "")
    load_weights(model, weights, where, described)
    return model.eval()


# --------------------------------------------------------------------------- classifiers (rcnn pretrain)


def build_classifier(num_classes: int, dropout: float = 0.4) -> GoogLeNet:
    """torchvision GoogLeNet with both auxiliary classifiers, randomly initialised, taking inputs
    normalised as the detector's (transform_input=False)."""
    return googlenet(weights=None, num_classes=num_classes, aux_logits=True, transform_input=False,
                     init_weights=True, dropout=dropout, dropout_aux=0.7)


def read_export(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(state dict, metadata) of an exported classifier; UserError naming the file otherwise."""
    path = Path(path)
    meta_path = path.with_suffix(".json")
    if not path.is_file() or not meta_path.is_file():
        raise UserError(f"{path}: classifier weights need the file and its metadata {meta_path.name} "
                        "(written by rcnn pretrain)")
    weights = read_weights_file(path, "classifier weights file")
    try:
        metadata = json.loads(meta_path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{meta_path}: not readable JSON metadata ({error_line(exc)})") from None
    if not isinstance(weights, dict) or not isinstance(metadata, dict) or "classes" not in metadata:
        raise UserError(f"{path}: not classifier weights written by rcnn pretrain")
    check_export_metadata(metadata, meta_path)
    return weights, metadata


#: input sizes an export may name (its crops are input_size^2 pixels, up to 144 per image)
EXPORT_INPUT_SIZES = (16, 2048)


def check_export_metadata(metadata: dict, where: str | Path) -> None:
    """UserError naming `where` unless the metadata's classes are a non-empty list of distinct
    names, its display_names (when given) one name per class, and its input_size a whole number
    of pixels in :data:`EXPORT_INPUT_SIZES`."""
    classes = metadata.get("classes")
    if not _names(classes) or len(set(classes)) != len(classes):
        raise UserError(f"{where}: \"classes\" must be a non-empty list of distinct class names, "
                        f"got {_shown(classes)}")
    names = metadata.get("display_names", classes)
    if not _names(names) or len(names) != len(classes):
        raise UserError(f"{where}: \"display_names\" must be a list of {len(classes)} names (one per class), "
                        f"got {_shown(names)}")
    size, (low, high) = metadata.get("input_size"), EXPORT_INPUT_SIZES
    if isinstance(size, bool) or not isinstance(size, int) or not low <= size <= high:
        raise UserError(f"{where}: \"input_size\" must be a whole number of pixels in {low}..{high}, got {_shown(size)}")


def _names(value) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(name, str) and name for name in value)


def _shown(value) -> str:
    text = json.dumps(value) if isinstance(value, (list, dict, str, int, float, bool, type(None))) else repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def load_classifier(path: str | Path) -> tuple[GoogLeNet, dict]:
    """(eval-mode GoogLeNet, metadata) from an export; UserError on a mismatch."""
    weights, metadata = read_export(path)
    model = build_classifier(len(metadata["classes"]))
    load_weights(model, weights, str(path), f"GoogLeNet with {len(metadata['classes'])} classes")
    return model.eval(), metadata
