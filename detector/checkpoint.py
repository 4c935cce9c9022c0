"""Checkpoints: atomic writes, one self-describing file per save.

A checkpoint holds the model weights, the foreground class list, the resolved config, and for
resumable training also the optimiser, scheduler, EMA weights, iteration and RNG state.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from detector.model import RegionClassifier, make_network
from eval.atomic import atomic_path
from eval.errors import UserError

FORMAT = "googlenet-rcnn"
VERSION = 1


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write `state` (plus format markers) to `path` atomically."""
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, "version": VERSION, **state}, tmp)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by save_checkpoint; UserError naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise UserError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{path}: not a {FORMAT} checkpoint (a plain state_dict? use model.init=PATH)")
    if state.get("version", 0) > VERSION:
        raise UserError(f"{path}: checkpoint version {state['version']} is newer than this code ({VERSION})")
    return state


def check_classes(state: dict[str, Any], classes: list[str], where: str) -> None:
    """Raise when the checkpoint was trained for a different class list than `classes`."""
    trained = list(state.get("classes", []))
    if trained != list(classes):
        extra = sorted(set(trained) - set(classes))[:5]
        missing = sorted(set(classes) - set(trained))[:5]
        raise UserError(
            f"{where}: checkpoint classes ({len(trained)}) do not match the config's ({len(classes)}); "
            f"only in checkpoint: {extra}, only in config: {missing}"
            + ("; same names in another order" if not extra and not missing else "")
        )


AUX_PREFIXES = ("trunk.aux1.", "trunk.aux2.")


def inference_weights(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Weights as an inference checkpoint keeps them: auxiliary classifiers dropped (unused at
    inference), floating tensors stored as fp16 (half the file; loading casts them back)."""
    return {k: v.half() if v.is_floating_point() else v for k, v in weights.items() if not k.startswith(AUX_PREFIXES)}


def model_from_checkpoint(state: dict[str, Any], use_ema: bool = True) -> RegionClassifier:
    """An inference model (eval mode, auxiliary classifiers dropped) from a loaded checkpoint."""
    weights = state.get("ema") if use_ema and state.get("ema") is not None else state["model"]
    weights = {k: v for k, v in weights.items() if not k.startswith(AUX_PREFIXES)}
    num_classes = len(state["classes"])
    head = weights.get("cls_score.weight")
    if head is None or head.shape[0] != num_classes + 1:
        raise UserError(f"checkpoint head has {None if head is None else head.shape[0]} outputs for {num_classes} classes + background")
    model_config = state.get("config", {}).get("model", {})
    model = make_network(model_config.get("mode", "crop"), num_classes, aux_classifiers=False,
                         roi_layer=model_config.get("roi_layer", "4e"))
    model.load_state_dict(weights, strict=True)
    return model.eval()
