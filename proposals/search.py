"""Selective search behind one function, and the post-processing shared by every backend.

Backends (boxes come back in the backend's own ranking, best first):

- ``opencv-fast`` / ``opencv-quality``: OpenCV ximgproc selective search (Uijlings et al. 2013).
  OpenCV sorts regions by ``level * rand()`` ascending, with levels counted from the initial
  segments up, so its first boxes are the smallest; the order is reversed here to rank the top
  of each hierarchy first, as Uijlings et al. do (a ``max_boxes`` cap then keeps large boxes).
  The C generator is re-seeded before every search so that an image always gets the same order.
- ``selectivesearch``: the pure-Python ``selectivesearch`` package (one HSV strategy, LBP
  texture). It returns regions in merge order; they are ranked latest merge first (the
  hierarchy-level ranking of Uijlings et al., without its random jitter).
"""
from __future__ import annotations

import ctypes
import warnings
from typing import Callable

import cv2
import numpy as np
import torch
from torchvision import ops

from detector.common.errors import UserError
from detector.data.boxes import clip_boxes, remove_small_boxes
from proposals.config import BACKEND_PARAMS, ProposalConfig, backend_params, effective_max_boxes


def _c_srand() -> Callable[[int], None] | None:
    """libc's ``srand`` (the generator OpenCV's selective search ranks with), None where unreachable."""
    try:
        return ctypes.CDLL(None).srand
    except (OSError, AttributeError, TypeError):  # TypeError: no process-wide libc handle (Windows)
        return None


_SRAND = _c_srand()


def _opencv(image: np.ndarray, quality: bool, base_k: int = 50, inc_k: int = 50, sigma: float = 0.8) -> np.ndarray:
    """OpenCV selective search on RGB uint8 [H, W, 3]: ranked boxes float32 [N, 4] xyxy."""
    search = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    search.setBaseImage(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if quality:
        search.switchToSelectiveSearchQuality(int(base_k), int(inc_k), float(sigma))
    else:
        search.switchToSelectiveSearchFast(int(base_k), int(inc_k), float(sigma))
    if _SRAND is not None:
        _SRAND(1)
    rects = np.asarray(search.process(), dtype=np.float32).reshape(-1, 4)[::-1]  # x, y, w, h (w counts pixels)
    return np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:]], axis=1)


def _selectivesearch(image: np.ndarray, scale: float = 500.0, sigma: float = 0.8, min_size: int = 20) -> np.ndarray:
    """The ``selectivesearch`` package on RGB uint8 [H, W, 3]: boxes float32 [N, 4], latest merge first."""
    import selectivesearch

    with warnings.catch_warnings():
        # It runs LBP on a float copy holding integer values, for which skimage's warning about
        # rounding noise does not apply; the results are those of the integer image.
        warnings.filterwarnings("ignore", message="Applying `local_binary_pattern`", category=UserWarning)
        _, regions = selectivesearch.selective_search(image, scale=scale, sigma=sigma, min_size=int(min_size))
    # 'rect' is (min_x, min_y, max_x - min_x, max_y - min_y) with inclusive max pixel indices.
    rects = np.array([region["rect"] for region in regions[::-1]], dtype=np.float32).reshape(-1, 4)
    return np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:] + 1], axis=1)


BACKENDS: dict[str, Callable[..., np.ndarray]] = {
    "opencv-fast": lambda image, **params: _opencv(image, quality=False, **params),
    "opencv-quality": lambda image, **params: _opencv(image, quality=True, **params),
    "selectivesearch": _selectivesearch,
}


def as_rgb(image: np.ndarray) -> np.ndarray:
    """uint8 [H, W], [H, W, 1] or [H, W, 3] -> contiguous RGB uint8 [H, W, 3]."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got dtype {image.dtype}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3) or min(image.shape[:2]) == 0:
        raise ValueError(f"expected an image [H, W] or [H, W, 1|3] with H, W > 0, got shape {image.shape}")
    return np.ascontiguousarray(np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image)


def _search_size(height: int, width: int, max_side: int) -> tuple[int, int]:
    """(height, width) of the search copy: longer side at most `max_side` (0 = unchanged)."""
    factor = max_side / max(height, width) if max_side else 1.0
    if factor >= 1.0:
        return height, width
    return max(1, round(height * factor)), max(1, round(width * factor))


def propose(image: np.ndarray, method: str = "opencv-fast", *, max_side: int = 500, **params) -> np.ndarray:
    """Raw selective-search boxes of an RGB uint8 image [H, W, 3] (grayscale [H, W] accepted).

    Images whose longer side exceeds `max_side` pixels are searched on a downscaled copy and the
    boxes scaled back. `params` are the backend's (see ``proposals.config.BACKEND_PARAMS``).
    Returns float32 [N, 4] xyxy in continuous pixel coordinates of `image`, in the backend's
    ranking (best first), not post-processed (see `postprocess`).
    """
    if method not in BACKENDS:
        raise UserError(f"proposal method {method!r}: expected one of {', '.join(BACKENDS)}")
    unknown = set(params) - set(BACKEND_PARAMS[method])
    if unknown:
        raise TypeError(f"{method} takes parameters {BACKEND_PARAMS[method]}, not {sorted(unknown)}")
    image = as_rgb(image)
    height, width = image.shape[:2]
    small_h, small_w = _search_size(height, width, max_side)
    if (small_h, small_w) != (height, width):
        image = cv2.resize(image, (small_w, small_h), interpolation=cv2.INTER_AREA)
    boxes = BACKENDS[method](image, **params).astype(np.float32).reshape(-1, 4)
    return boxes * np.array([width / small_w, height / small_h] * 2, dtype=np.float32)


def postprocess(
    boxes: np.ndarray, height: int, width: int, *,
    min_box_side: float = 8.0, dedup_iou: float = 0.98, max_boxes: int = 0,
) -> np.ndarray:
    """Clip ranked boxes [N, 4] to the image, drop small ones and duplicates, keep the best `max_boxes`.

    A box is small when its width or height is below `min_box_side` pixels; a duplicate when it
    equals a better-ranked box or overlaps one with IoU > `dedup_iou` (1.0 = exact duplicates
    only). The ranking is preserved. Returns float32 [K, 4], K <= max_boxes when max_boxes > 0.
    """
    tensor = clip_boxes(torch.from_numpy(np.asarray(boxes, dtype=np.float32).reshape(-1, 4)), height, width)
    tensor = tensor[remove_small_boxes(tensor, min_box_side)]
    tensor = tensor[(tensor[:, 2] > tensor[:, 0]) & (tensor[:, 3] > tensor[:, 1])]  # empty after clipping
    _, first = np.unique(tensor.numpy(), axis=0, return_index=True)
    tensor = tensor[torch.from_numpy(np.sort(first))]
    if dedup_iou < 1.0 and len(tensor):
        rank_scores = -torch.arange(len(tensor), dtype=torch.float32)  # earlier = better
        tensor = tensor[ops.nms(tensor, rank_scores, dedup_iou)]
    if max_boxes > 0:
        tensor = tensor[:max_boxes]
    return tensor.numpy().astype(np.float32, copy=False).reshape(-1, 4)


def propose_with_config(image: np.ndarray, config: ProposalConfig) -> np.ndarray:
    """Proposals for an RGB uint8 image [H, W, 3] as `config` asks: backend and preset, then post-processing.

    Returns float32 [N, 4] xyxy pixels of `image`, best-ranked first; [0, 4] when none survive.
    """
    boxes = propose(image, config.method, max_side=config.max_side, **backend_params(config))
    height, width = np.asarray(image).shape[:2]
    return postprocess(
        boxes, height, width,
        min_box_side=config.min_box_side, dedup_iou=config.dedup_iou, max_boxes=effective_max_boxes(config),
    )
