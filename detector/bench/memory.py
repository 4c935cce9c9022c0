"""``rcnn bench``'s ``memory`` section: peak RSS of the process (MiB) while detecting one image (the
baseline) or running one fp32 training step; measured before the other region sections, since
peak RSS only grows.
"""
from __future__ import annotations

import numpy as np
import torch

from detector.bench.models import proposal_config_for
from detector.bench.report import BenchSettings, Row, peak_rss_mib
from detector.bench.training import train_step_fn, training_batch
from detector.common.precision import Precision, resolve_precision
from detector.config import Config
from detector.inference.detector import Detector
from detector.inference.scorers import FineTunedScorer
from detector.modeling.googlenet import RegionClassifier


def bench_memory(image: np.ndarray, scorer: FineTunedScorer, model: RegionClassifier, crops: torch.Tensor,
                 config: Config, settings: BenchSettings) -> list[Row]:
    """Peak RSS of one-image detection with `scorer` (the baseline) and of one fp32 training step
    of `model` on `crops`."""
    device = torch.device(settings.device)
    detector = Detector([scorer], proposal_config_for(config, settings), config.test,
                        resolve_precision(config.test.precision, device))
    detect_mib, method = peak_rss_mib(lambda: detector.detect(image))
    step = train_step_fn(model, training_batch(crops), Precision(device, None), config.train)
    train_mib, _ = peak_rss_mib(step)
    return [Row("memory", "peak RSS, detect one image (1 model)", detect_mib, "MiB", note=method, baseline=True),
            Row("memory", f"peak RSS, fp32 training step, minibatch {len(crops)}", train_mib, "MiB", note=method)]
