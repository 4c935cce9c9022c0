"""Settings of region-proposal extraction (the ``proposals:`` section of a config) and presets.

Defaults are selective search "fast" mode as R-CNN ran it (Uijlings et al. 2013: HSV and Lab,
Felzenszwalb k = 50 and 100, sigma 0.8, images about 500 px wide), giving about 2000 boxes on a
500x375 image. The ``googlenet`` preset is the ILSVRC 2014 GoogLeNet entry's variant (Szegedy et
al. 2014, sec. 7): superpixels 2x larger (every segmentation scale doubled), which about halves
the boxes, and a budget of about 60% of R-CNN's (there topped up with 200 MultiBox boxes, which
are not reproduced here), applied as 0.6 x ``max_boxes``.
"""
from __future__ import annotations

from dataclasses import dataclass

from detector.common.errors import UserError

#: Backend name -> names of its parameters in ProposalConfig (passed on to `propose`).
BACKEND_PARAMS: dict[str, tuple[str, ...]] = {
    "opencv-fast": ("base_k", "inc_k", "sigma"),
    "opencv-quality": ("base_k", "inc_k", "sigma"),
    "selectivesearch": ("scale", "sigma", "min_size"),
}


@dataclass(frozen=True)
class Preset:
    """A named variant: factors on the superpixel-size parameters and on ``max_boxes``."""

    superpixel_scale: float
    box_fraction: float


#: Preset name -> its factors: R-CNN fast mode as is; the GoogLeNet entry's 2x superpixels, 60% budget.
PRESETS: dict[str, Preset] = {"rcnn": Preset(1.0, 1.0), "googlenet": Preset(2.0, 0.6)}
#: Parameters that set the superpixel size (scaled by the preset's factor).
SUPERPIXEL_PARAMS = ("base_k", "inc_k", "scale", "min_size")


@dataclass
class ProposalConfig:
    """Selective-search backend, its parameters, post-processing and cache location."""

    method: str = "opencv-fast"  #: opencv-fast | opencv-quality | selectivesearch
    preset: str = "rcnn"  #: rcnn (R-CNN fast mode) | googlenet (2x superpixels, ~60% of the boxes)
    base_k: int = 50  #: OpenCV: Felzenszwalb k of the first segmentation (R-CNN fast mode: 50)
    inc_k: int = 50  #: OpenCV: k increment between segmentations (fast mode: k = 50, 100)
    sigma: float = 0.8  #: Gaussian smoothing (pixels) before segmentation, all backends
    scale: float = 500.0  #: selectivesearch package: Felzenszwalb scale (its k)
    min_size: int = 20  #: selectivesearch package: minimum segment size (pixels)
    max_side: int = 500  #: search on a copy whose longer side is at most this (pixels; 0 = never resize)
    min_box_side: float = 8.0  #: drop boxes narrower or shorter than this (pixels of the input image)
    dedup_iou: float = 0.98  #: drop near-duplicates: IoU above this with a better-ranked box (1.0 = exact only)
    max_boxes: int = 2000  #: keep at most this many boxes, best-ranked first (0 = all); the preset scales it
    cache_dir: str = ""  #: proposal cache folder; empty = <run_dir>/proposals


def validate(config: ProposalConfig) -> None:
    """Raise UserError naming the first ``proposals.*`` value that cannot work."""
    if config.method not in BACKEND_PARAMS:
        raise UserError(f"proposals.method {config.method!r}: expected one of {', '.join(BACKEND_PARAMS)}")
    if config.preset not in PRESETS:
        raise UserError(f"proposals.preset {config.preset!r}: expected one of {', '.join(PRESETS)}")
    checks = {
        "base_k": config.base_k > 0, "inc_k": config.inc_k >= 0, "sigma": config.sigma >= 0,
        "scale": config.scale > 0, "min_size": config.min_size >= 0, "max_side": config.max_side >= 0,
        "min_box_side": config.min_box_side >= 0, "dedup_iou": 0 < config.dedup_iou <= 1,
        "max_boxes": config.max_boxes >= 0,
    }
    for name, ok in checks.items():
        if not ok:
            raise UserError(f"proposals.{name} = {getattr(config, name)!r} is out of range")


def backend_params(config: ProposalConfig) -> dict[str, float | int]:
    """The backend's keyword parameters for `config.method`, superpixel sizes scaled by the preset."""
    validate(config)
    factor = PRESETS[config.preset].superpixel_scale
    params = {}
    for name in BACKEND_PARAMS[config.method]:
        value = getattr(config, name)
        if name in SUPERPIXEL_PARAMS:
            value = type(value)(round(value * factor)) if isinstance(value, int) else value * factor
        params[name] = value
    return params


def effective_max_boxes(config: ProposalConfig) -> int:
    """``max_boxes`` scaled by the preset's box fraction (0 stays 0 = no cap)."""
    validate(config)
    return round(config.max_boxes * PRESETS[config.preset].box_fraction)
