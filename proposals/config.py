"""Settings of region-proposal extraction (the ``proposals:`` section of a config)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ProposalConfig:
    """Selective-search backend, its parameters, post-processing and cache location."""

    method: str = "opencv-fast"  #: opencv-fast | opencv-quality | selectivesearch
    preset: str = "rcnn"  #: rcnn (R-CNN fast mode) | googlenet (2x superpixels, ~60% boxes) | none
    base_k: int = 150  #: OpenCV graph-segmentation k of the first strategy
    inc_k: int = 150  #: OpenCV k increment between strategies
    sigma: float = 0.8  #: Gaussian smoothing before segmentation
    scale: float = 500.0  #: selectivesearch package: segmentation scale
    min_size: int = 20  #: selectivesearch package: minimum component size (pixels)
    superpixel_scale: float = 1.0  #: multiplies k / scale (the GoogLeNet entry used 2.0)
    max_side: int = 500  #: images are resized so their longer side is at most this for search
    min_box_side: float = 8.0  #: boxes smaller than this (pixels, either side) are dropped
    dedup_iou: float = 0.98  #: near-duplicate boxes above this IoU are merged (1.0 = exact only)
    max_boxes: int = 2000  #: keep at most this many boxes in the backend's ranking (0 = all)
    cache_dir: str = ""  #: empty = <output_dir>/proposals
