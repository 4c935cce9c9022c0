"""Runs ``rcnn bench``: the sections that :class:`~detector.bench.report.BenchSettings` selects, in
one process on the same image(s), into one :class:`~detector.bench.report.BenchReport` whose rows
carry their ratios to their baselines; the only module that imports every section, and itself
measures nothing.

Sections and their baselines:

- ``proposals`` (:mod:`detector.bench.proposals`): seconds per image per backend / preset;
  baseline opencv-fast, rcnn preset.
- ``classifier`` (:mod:`detector.bench.classifier`): ms per warped crop; baseline fp32 NCHW
  batch 1. int8 static quantisation (detector.inference.int8, calibrated on the crops) is
  compared with fp32 and bf16 in its note.
- ``detect`` (:mod:`detector.bench.detect`): seconds per image per stage, one model on warped
  crops (baseline), googlenet preset, ensemble of 3, and the shared-feature (roi) mode at each
  ``model.roi_layer``; the light heads also at fp32 and int8 (calibrated on the first image's
  proposals).
- ``training`` (:mod:`detector.bench.training`): regions/s of an SGD step (aux heads on);
  baseline fp32.
- ``memory`` (:mod:`detector.bench.memory`): peak RSS of the process (MiB) while detecting one
  image (baseline) or training a step.
- ``pretrain`` (:mod:`detector.bench.training`): images/s of classification pre-training
  (pretrain.input_size, batch_size): the network's SGD step at the training precision
  (baseline), fp32, and the data loader alone (decode + augmentation, pretrain.workers processes
  and none) on pretrain.root's training split (a generated 224x224 ImageFolder when it has none).
  Target: loader >= 1.5x the network.
- ``throughput`` (:mod:`detector.bench.throughput`): images/s of end-to-end detection over the
  image files with a cold and a warm proposal cache; baseline the serial path (next image's
  proposals in a thread), beside proposals in worker processes (``test.proposal_workers``).

The randomly initialised models all sections time are built in :mod:`detector.bench.models`;
settings, rows, timing helpers and the report's formatting live in :mod:`detector.bench.report`.
Imports go one way only: report < models < proposals, classifier, detect, training < memory <
throughput < runner.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
import torch

from detector.bench.classifier import bench_classifier
from detector.bench.detect import ENSEMBLE_SIZE, bench_detect
from detector.bench.memory import bench_memory
from detector.bench.models import (
    benchmark_model,
    crops_from,
    inference_copy,
    proposal_config_for,
    random_scorers,
    shared_feature_scorer,
)
from detector.bench.proposals import bench_proposals
from detector.bench.report import BenchReport, BenchSettings, Row, add_ratios, environment
from detector.bench.throughput import bench_throughput
from detector.bench.training import bench_pretrain, bench_training
from detector.common.precision import flush_denormals
from detector.config import Config
from detector.modeling.googlenet import ROI_NETWORKS
from proposals import propose_with_config


def run_benchmark(images: dict[str, np.ndarray], config: Config, settings: BenchSettings,
                  log: Callable[[str], None] = lambda section: None) -> BenchReport:
    """The settings' sections on `images` (name -> RGB uint8 [H, W, 3]); `log` is told which
    section starts."""
    flush_denormals()
    wanted = settings.sections
    pictures = list(images.values())
    rows = []
    if "proposals" in wanted:
        log("proposals")
        rows += bench_proposals(pictures, config.proposals, settings)
    if set(wanted) & {"memory", "classifier", "detect", "training"}:  # memory first: peak RSS only grows
        rows += _region_sections(pictures, config, settings, log)
    if "pretrain" in wanted:
        log("pre-training")
        rows += bench_pretrain(config, settings)
    if "throughput" in wanted:
        log("throughput")
        rows += bench_throughput(images, config, settings)
    return BenchReport(environment(torch.device(settings.device)), dataclasses.asdict(settings), list(images),
                       add_ratios(rows))


def _region_sections(pictures: list[np.ndarray], config: Config, settings: BenchSettings,
                     log: Callable[[str], None]) -> list[Row]:
    """The sections that score regions of the first image: memory, classifier, detect, training."""
    wanted, rows = settings.sections, []
    boxes = propose_with_config(pictures[0], proposal_config_for(config, settings))
    crops = crops_from(pictures[0], boxes, settings.batch_size, settings.crop_size, settings.context_pad)
    train_crops = crops_from(pictures[0], boxes, settings.train_batch, settings.crop_size, settings.context_pad)
    torch.manual_seed(0)
    model = benchmark_model(aux_classifiers=True)
    scorers = random_scorers(model, ENSEMBLE_SIZE, settings)
    memory = []
    if "memory" in wanted:  # first: peak RSS only grows
        log("memory")
        memory = bench_memory(pictures[0], scorers[0], model, train_crops, config, settings)
    if "classifier" in wanted:
        log("region classifier")
        rows += bench_classifier(inference_copy(model), crops, settings)
    if "detect" in wanted:
        log("end-to-end detection")
        sides = (config.model.roi_short_side, config.model.roi_max_side)
        shared = [shared_feature_scorer(model, layer, sides, settings) for layer in ROI_NETWORKS]
        rows += bench_detect(pictures, scorers, shared, config, settings)
    if "training" in wanted:
        log("training")
        rows += bench_training(model, train_crops, config.train, settings)
    return rows + memory
