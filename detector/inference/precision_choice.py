"""Which precision detection runs in: the per-checkpoint int8 artefact and the ``auto`` rule.

The artefact is built once per checkpoint and cached beside it as ``<checkpoint>.int8-<key>.pt``
(in :data:`CACHE_DIR` when that folder is read-only); the key hashes the checkpoint's bytes, the
torch version, the engine, the CPU's vector extensions and the calibration settings. It holds the
calibration result (the observers' statistics, from :mod:`detector.inference.int8`) and the top-1
agreement with fp32 of each candidate precision on held-out regions.

``test.precision: auto`` is a rule on what the CPU supports and what passed that agreement check
(at least :data:`MIN_AGREEMENT`), never a timing, so one checkpoint gives the same detections on
every machine with the same CPU features, idle or loaded: int8 where the CPU has VNNI, else bf16
autocast where it multiplies bf16 natively (AMX / AVX512-BF16), else fp32 (:func:`auto_rule`); the
choice is logged in one line. ``int8`` runs int8 unless it disagrees more. Timings are ``rcnn
bench``'s (the classifier and detect sections). The file loads with ``weights_only=True`` and
never holds code.
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from detector.common.atomic import atomic_path
from detector.common.errors import UserError
from detector.common.precision import Precision, cpu_has_fast_bf16, cpu_has_vnni, default_device, resolve_precision
from detector.config import Config
from detector.data.images import file_digest
from detector.inference.int8 import (
    ENGINE,
    REGIONS_PER_IMAGE,
    Sample,
    calibrate,
    calibration_inputs,
    calibration_samples,
    convert,
    float_parts,
    int8_network,
    observer_state,
    rebuild,
)
from detector.inference.scorers import FineTunedScorer, RegionScorer
from detector.modeling.checkpoint import plain_data, read_weights_file
from detector.modeling.regions import warp_regions

log = logging.getLogger(__name__)

FORMAT = "googlenet-rcnn-int8"
VERSION = 3  #: 3: agreement only, no timing; the key no longer holds the core count
MIN_AGREEMENT = 0.99  #: top-1 agreement with fp32 on held-out regions a fast precision needs
HOLD_OUT_EVERY = 4  #: every 4th calibration image is held out for the agreement check
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "googlenet-rcnn" / "int8"


# ----------------------------------------------------------------------------- agreement


def score_samples(scorer: RegionScorer, samples: list[Sample], precision: Precision, batch_size: int) -> torch.Tensor:
    """Class scores [sum K, C+1] of the samples' regions as detection computes them."""
    with torch.inference_mode():
        if scorer.shares_features:
            return torch.cat([scorer.score_image(s.image, s.boxes, precision, batch_size).scores for s in samples])
        return torch.cat([scorer(warp_regions(s.image, chunk, scorer.input_size, scorer.context_pad), precision).scores
                          for s in samples for chunk in s.boxes.split(batch_size)])


def measure(scorer: RegionScorer, samples: list[Sample], precisions: dict[str, Precision],
            batch_size: int) -> dict[str, dict[str, float]]:
    """Per precision name: top-1 agreement with the first precision (fp32) on `samples`' regions.
    Nothing is timed (timings are rcnn bench's)."""
    results, reference = {}, None
    for name, precision in precisions.items():
        top1 = score_samples(scorer, samples, precision, batch_size).argmax(1)
        reference = top1 if reference is None else reference
        results[name] = {"agreement": float((top1 == reference).float().mean())}
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
    """What int8 and bf16 results depend on: the CPU's vector extensions (kernels, and 7- or
    8-bit activations); not its core count or load."""
    return (f"{torch.backends.cpu.get_cpu_capability()} vnni={cpu_has_vnni()} "
            f"native-bf16={cpu_has_fast_bf16()}")


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
    network, measure agreement on the held-out ones: (the artefact, the int8 network)."""
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
    """Per precision over ensemble members: the lowest agreement."""
    names = [name for name in measured[0] if all(name in m and "agreement" in m[name] for m in measured)]
    return {name: {"agreement": min(float(m[name]["agreement"]) for m in measured)} for name in names}


def passed(totals: dict[str, dict[str, float]], name: str) -> bool:
    """Whether precision `name` agreed with fp32 on at least :data:`MIN_AGREEMENT` of the held-out regions."""
    return name == "fp32" or (name in totals and totals[name]["agreement"] >= MIN_AGREEMENT)


def auto_rule(totals: dict[str, dict[str, float]] | None, vnni: bool, native_bf16: bool) -> tuple[str, str]:
    """(precision name, why) ``test.precision: auto`` runs: int8 where the CPU has VNNI and int8
    passed the agreement check; else bf16 where the CPU multiplies it natively (and it passed,
    when it was checked: `totals` None means nothing was); else fp32. A rule, never a timing."""
    if vnni and totals is not None and passed(totals, "int8"):
        return "int8", "the CPU has VNNI and int8 agreed with fp32"
    reason = ("no VNNI for int8" if not vnni else "no int8 check" if totals is None
              else "int8 agreed with fp32 too little")
    if native_bf16 and (totals is None or passed(totals, "bf16")):
        return "bf16", f"{reason}; the CPU has native bf16"
    bf16 = "bf16 agreed too little" if native_bf16 else "no native bf16"
    return "fp32", f"{reason}; {bf16}"


def describe(totals: dict[str, dict[str, float]]) -> str:
    """`totals` in a few words: each precision's top-1 agreement with fp32."""
    return ", ".join(f"{name} {100 * t['agreement']:.1f}% top-1" for name, t in totals.items() if name != "fp32")


def inference_precision(scorers: list[RegionScorer], config: Config, device: torch.device | None = None) -> Precision:
    """The precision test.precision asks for on `scorers`; int8 networks are attached when it is
    int8 or auto's rule (:func:`auto_rule`) picks int8. auto without checkpoints, off the CPU or on
    a CPU without VNNI calibrates nothing and is resolve_precision's."""
    name, device = config.test.precision, device or default_device()
    if name not in ("int8", "auto"):
        return resolve_precision(name, device)
    plain = resolve_precision("auto" if name == "auto" else "fp32", device)
    problem = int8_problem(scorers, device)
    if problem is None and name == "auto" and not cpu_has_vnni():
        problem = "the CPU has no VNNI"
    if problem is not None:
        if name == "int8":
            log.warning("test.precision int8: %s; running %s", problem, plain.description)
        else:
            log.info("precision auto: %s (no int8: %s)", plain.description, problem)
        return plain
    try:
        states = [int8_artefact(s, config) for s in scorers]
    except UserError as exc:
        if name == "int8":
            raise
        log.info("precision auto: %s (no int8: %s)", plain.description, exc)
        return plain
    totals = summary([state["measured"] for state in states])
    chosen, why = _choice(name, totals)
    precision = candidates(device).get(chosen, plain)
    for scorer, state in zip(scorers, states):
        if precision.int8:
            attach_int8(scorer, state)
        else:
            scorer.int8 = None
    log.info("precision %s: %s (%s; top-1 agreement with fp32 on held-out training regions: %s)",
             name, precision.description, why, describe(totals))
    return precision


def _choice(name: str, totals: dict[str, dict[str, float]]) -> tuple[str, str]:
    """What `name` (int8 | auto) comes to given the agreement `totals`, and why; warns when int8
    falls back."""
    if name == "auto":
        return auto_rule(totals, cpu_has_vnni(), cpu_has_fast_bf16())
    if passed(totals, "int8"):
        return "int8", "asked for"
    log.warning("test.precision int8: top-1 agreement with fp32 %.1f%% < %.0f%% on held-out regions; running fp32",
                100 * totals.get("int8", {}).get("agreement", 0.0), 100 * MIN_AGREEMENT)
    return "fp32", "int8 agreed with fp32 too little"
