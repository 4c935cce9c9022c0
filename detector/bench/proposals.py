"""``rcnn bench``'s ``proposals`` section: seconds per image of each region-proposal backend and
preset, with the full post-processing and the R-CNN box budget; baseline opencv-fast, rcnn preset
(``--quick`` skips the slow backends).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from detector.bench.report import BenchSettings, Row, median_seconds
from proposals import propose_with_config
from proposals.config import ProposalConfig

#: backend, preset and whether --quick skips it
PROPOSAL_CASES = (("opencv-fast", "rcnn", False), ("opencv-fast", "googlenet", False),
                  ("opencv-quality", "rcnn", True), ("selectivesearch", "rcnn", True))


def bench_proposals(images: list[np.ndarray], config: ProposalConfig, settings: BenchSettings) -> list[Row]:
    """Seconds per image of each backend / preset (full post-processing, R-CNN box budget)."""
    rows = []
    for method, preset, slow in PROPOSAL_CASES:
        if slow and settings.quick:
            continue
        case = dataclasses.replace(config, method=method, preset=preset)
        counts = [len(propose_with_config(image, case)) for image in images]  # also the warm-up
        seconds = median_seconds(lambda: [propose_with_config(image, case) for image in images],
                                 settings.repeats, 0, torch.device("cpu"))
        rows.append(Row("proposals", f"{method}, {preset} preset", seconds / len(images), "s/image",
                        note=f"{np.mean(counts):.0f} boxes/image",
                        baseline=(method, preset) == PROPOSAL_CASES[0][:2]))
    return rows
