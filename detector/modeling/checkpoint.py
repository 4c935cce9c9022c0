"""Checkpoints: atomic writes, one self-describing file per save, read without running code.

A checkpoint holds the model weights, the foreground class list, the resolved config, and for
resumable training also the optimiser, scheduler, EMA weights, iteration and RNG state. Every
file is read with ``torch.load(weights_only=True)``: only tensors and plain data (dicts, lists,
tuples, strings, numbers, booleans, None) come back, and a file that pickles anything else is
refused as soon as the unpickler meets it, so a downloaded checkpoint can never run code.
"""
from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path, PurePath
from typing import Any

import numpy as np
import torch
from torch import nn

from detector.common.atomic import atomic_path
from detector.common.errors import UserError

FORMAT = "googlenet-rcnn"
VERSION = 1
PLAIN = (str, int, float, bool, type(None))
SVM_KEYS = {"weights", "bias", "ridge_weights", "ridge_bias", "feature_scale"}
#: the model settings inference reads from a checkpoint's config, and their types
SETTING_TYPES = {"mode": str, "roi_layer": str, "input_size": int, "context_pad": int,
                 "roi_short_side": int, "roi_max_side": int}


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write `state` (plus format markers) to `path` atomically, as data that loads safely."""
    state = plain_data({"format": FORMAT, "version": VERSION, **state})
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def plain_data(value: Any, key: str = "checkpoint") -> Any:
    """`value` with paths as strings and numpy scalars as numbers (containers left as they are
    when nothing inside changes); TypeError naming `key` for anything else that is not plain."""
    if isinstance(value, torch.Tensor) or type(value) in PLAIN:  # exact types: np.float64 is a float
        return value
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (dict, list, tuple)):
        items = list(value.items() if isinstance(value, dict) else enumerate(value))
        converted = [(k, plain_data(v, f"{key}.{k}")) for k, v in items]
        if all(new is old for (_, new), (_, old) in zip(converted, items)):
            return value
        return dict(converted) if isinstance(value, dict) else type(value)(v for _, v in converted)
    raise TypeError(f"{key}: a {type(value).__name__} cannot go into a checkpoint (tensors and plain data only)")


def read_weights_file(path: Path, what: str = "checkpoint") -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU; UserError (one line, naming the file)
    for a file that is truncated, not a PyTorch file, or pickles anything but tensors and data."""
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the error says enough
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # what the weights-only unpickler refuses
        found = re.search(r"GLOBAL ([\w.]*\w)", str(exc))
        if found:
            raise UserError(f"{path}: refused: it pickles {found[1]}, which could run code when loaded; "
                            "only tensors and plain data are read") from None
        detail = re.search(r"WeightsUnpickler error:\s*(\S.*)", str(exc))
        raise UserError(f"{path}: not a readable {what}: garbage, or pickled objects beyond tensors and plain "
                        f"data ({detail[1] if detail else error_line(exc)})") from None
    except Exception as exc:  # truncated zip, empty file
        raise UserError(f"{path}: not a readable {what}, truncated or corrupt ({error_line(exc)})") from None


def error_line(exc: Exception) -> str:
    """`exc` in one short line: its type and the first sentence of its message."""
    first = re.split(r"(?<=\.)\s|\n", str(exc).strip())[0]
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by save_checkpoint, never running code; UserError naming the file
    for a missing, unreadable, unsafe or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    state = read_weights_file(path)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{path}: not a {FORMAT} checkpoint; plain weights such as torchvision's GoogLeNet "
                        "state dict are initial weights: give them as model.init=PATH (rcnn train --init PATH)")
    if not isinstance(state.get("version"), int) or state["version"] > VERSION:
        raise UserError(f"{path}: checkpoint version {state.get('version')!r} is not one this code reads "
                        f"(<= {VERSION})")
    return state


def require_keys(state: dict[str, Any], keys: tuple[str, ...], where: str) -> None:
    """UserError naming `where` when `state` lacks any of `keys`."""
    missing = [k for k in keys if k not in state]
    if missing:
        raise UserError(f"{where}: checkpoint lacks {', '.join(missing)} (it has {', '.join(map(str, state))})")


def model_settings(state: dict[str, Any], where: str) -> dict[str, Any]:
    """The checkpoint's ``config["model"]`` section ({} when it has none), its types checked."""
    config = state.get("config") or {}
    settings = (config.get("model") or {}) if isinstance(config, dict) else None
    if not isinstance(settings, dict):
        raise UserError(f"{where}: checkpoint config is not a mapping of sections")
    for key, kind in SETTING_TYPES.items():
        if key in settings and not isinstance(settings[key], kind):
            raise UserError(f"{where}: checkpoint config model.{key} = {settings[key]!r} is not a {kind.__name__}")
    return settings


def check_classes(state: dict[str, Any], classes: list[str], where: str) -> None:
    """Raise when the checkpoint was trained for a different class list than `classes`."""
    trained = state.get("classes") if isinstance(state.get("classes"), list) else []
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


def weight_tensors(weights: Any, where: str) -> dict[str, torch.Tensor]:
    """`weights` checked to be a mapping of names to tensors."""
    if not isinstance(weights, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                for k, v in weights.items()):
        raise UserError(f"{where}: checkpoint weights are not a mapping of names to tensors")
    return weights


def load_weights(model: nn.Module, weights: Any, where: str, described: str) -> None:
    """Load `weights` into `model` (the `described` one) strictly; UserError naming `where` when
    tensors are missing, unexpected or of another shape (another mode, layer or class count)."""
    weights, own = weight_tensors(weights, where), model.state_dict()
    found = {
        "missing": [k for k in own if k not in weights],
        "unexpected": [k for k in weights if k not in own],
        "of another shape": [f"{k} {list(weights[k].shape)} vs {list(v.shape)}"
                             for k, v in own.items() if k in weights and weights[k].shape != v.shape],
    }
    problems = [f"{len(names)} {kind} (first: {names[0]})" for kind, names in found.items() if names]
    if problems:
        raise UserError(f"{where}: weights do not fit {described}: {'; '.join(problems)}")
    model.load_state_dict(weights)


def check_inference_state(state: dict[str, Any], where: str) -> None:
    """UserError naming `where` unless `state` has the keys and types inference reads."""
    if "kind" in state:  # e.g. "pretrain": detection checkpoints carry no kind
        raise UserError(f"{where}: a {state['kind']!r} checkpoint, not a detector; fine-tune one from its exported "
                        "weights with model.init=PATH (rcnn train --init PATH)")
    require_keys(state, ("model", "classes"), where)
    names = (state["classes"], state.get("display_names", state["classes"]))
    if not all(isinstance(n, list) and all(isinstance(s, str) for s in n) for n in names) \
            or len(names[0]) != len(names[1]):
        raise UserError(f"{where}: checkpoint classes and display_names are not two lists of as many names")
    svm = state.get("svm")
    if svm is not None and not _is_svm_head(svm):
        raise UserError(f"{where}: checkpoint svm head is not tensors {', '.join(sorted(SVM_KEYS - {'feature_scale'}))} "
                        "and a float feature_scale")


def _is_svm_head(svm: Any) -> bool:
    """True for what SvmHead.state_dict writes."""
    return isinstance(svm, dict) and set(svm) == SVM_KEYS and isinstance(svm["feature_scale"], float) \
        and all(isinstance(v, torch.Tensor) for k, v in svm.items() if k != "feature_scale")
