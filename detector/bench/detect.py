"""``rcnn bench``'s ``detect`` section: end-to-end detection seconds per image, in total and per
stage (proposals, regions, postprocess), each stage compared with the same stage of the baseline.

Baseline: one model on warped crops; beside it the other choice of overlapping warps, the
googlenet preset, an ensemble of 3, and the shared-feature (roi) mode at each
``model.roi_layer``; the light heads (with and without the stride-8 level) also at fp32 and int8
(calibrated on the first image's proposals).
"""
from __future__ import annotations

import dataclasses
import statistics

import numpy as np
import torch

from detector.bench.models import proposal_config_for
from detector.bench.report import BenchSettings, Row
from detector.common.precision import Precision, resolve_precision
from detector.config import Config, TestConfig
from detector.inference.detector import Detector
from detector.inference.int8 import Sample, calibration_inputs, quantize_model
from detector.inference.scorers import FineTunedScorer
from detector.modeling.googlenet import LightHeadClassifier
from detector.modeling.regions import normalize_image
from proposals import propose_with_config
from proposals.config import ProposalConfig, effective_max_boxes

ENSEMBLE_SIZE = 3
ENSEMBLE_TARGET = 3.2  #: issue 5: an ensemble of 3 costs at most 3.2x one model per image
#: issue 8: shared-feature mode, seconds per ~500x375 image with 2000 proposals (regions, total)
ROI_TARGETS = (1.0, 2.5)


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


def bench_detect(images: list[np.ndarray], scorers: list[FineTunedScorer], shared: list[FineTunedScorer],
                 config: Config, settings: BenchSettings) -> list[Row]:
    """End-to-end detection seconds per image with the stage split: one model on warped crops
    (the baseline, R-CNN), the same with the other choice of overlapping warps and network, one
    with the googlenet proposal preset, an ensemble of all `scorers`, and each `shared`-feature
    (roi mode) scorer."""
    proposals = proposal_config_for(config, settings)
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
