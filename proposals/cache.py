"""Content-addressed proposal cache: one compressed ``.npz`` per image and parameter set.

A file's name is ``<image digest>-<parameter digest>.npz`` (in a sub-folder named by the first
two digits of the image digest): the image digest is a hash of the file's bytes, the parameter
digest one of the backend, its effective parameters, the post-processing and the backend's
version. Renaming or moving images keeps their cache; editing an image or any parameter that
changes the boxes gives a new file. Files are written atomically and verified on every read
(zip CRC, stored key, shape, dtype); a file that fails is logged, recomputed and rewritten.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from detector.common.errors import ImageReadError
from detector.common.npz import read_npz, write_npz
from detector.data.images import file_digest, load_image
from proposals.config import ProposalConfig, backend_params, effective_max_boxes
from proposals.search import propose_with_config

log = logging.getLogger(__name__)

#: Bump when the meaning of cached boxes changes without any parameter changing.
CACHE_FORMAT = 1


@dataclass
class CacheEntry:
    """Proposals of one image: boxes float32 [N, 4] xyxy, search seconds, whether read from the cache."""

    boxes: np.ndarray
    seconds: float  #: wall time of the search and post-processing when it was computed
    cached: bool


@lru_cache(maxsize=None)
def _backend_version(method: str) -> str:
    if method.startswith("opencv"):
        return f"opencv {cv2.__version__}"
    return f"selectivesearch {metadata.version('selectivesearch')}"


def parameter_key(config: ProposalConfig) -> dict[str, Any]:
    """Everything besides the image that determines the boxes (preset folded into the parameters)."""
    return {
        "format": CACHE_FORMAT,
        "method": config.method,
        "backend": _backend_version(config.method),
        "params": backend_params(config),
        "max_side": config.max_side,
        "min_box_side": config.min_box_side,
        "dedup_iou": config.dedup_iou,
        "max_boxes": effective_max_boxes(config),
    }


def cache_path(image_digest: str, config: ProposalConfig, cache_dir: Path) -> Path:
    """The cache file of the image with content digest `image_digest` under `config`."""
    text = json.dumps(parameter_key(config), sort_keys=True)
    params_digest = hashlib.sha1(text.encode()).hexdigest()[:16]
    return Path(cache_dir) / image_digest[:2] / f"{image_digest}-{params_digest}.npz"


def _key_text(image_digest: str, config: ProposalConfig) -> str:
    return json.dumps({"image": image_digest, **parameter_key(config)}, sort_keys=True)


def _read(path: Path, key: str) -> CacheEntry | None:
    """The entry stored at `path` if it is intact and made for `key`; None when absent or corrupt."""
    data = read_npz(path, ("key", "boxes", "seconds"), "proposal cache file")
    if data is None:
        return None
    stored_key, boxes, seconds = str(data["key"]), data["boxes"], float(data["seconds"])
    if stored_key != key or boxes.dtype != np.float32 or boxes.ndim != 2 or boxes.shape[1] != 4 \
            or not np.isfinite(boxes).all():
        log.warning("%s: proposal cache file does not match its key or is malformed; recomputing", path)
        return None
    return CacheEntry(boxes=boxes, seconds=seconds, cached=True)


def _write(path: Path, key: str, entry: CacheEntry) -> None:
    write_npz(path, key=np.array(key), boxes=entry.boxes, seconds=np.float64(entry.seconds))


def load_or_compute(image_path: Path, config: ProposalConfig, cache_dir: Path,
                    image: np.ndarray | None = None) -> CacheEntry:
    """Proposals of one image file from the cache, or computed (`propose_with_config`) and stored.
    `image`: the file's pixels (RGB uint8 [H, W, 3]) when the caller has decoded them already.

    Raises ImageReadError naming the file when it is missing or unreadable.
    """
    image_path = Path(image_path)
    if not image_path.is_file():
        raise ImageReadError(f"{image_path}: image file not found")
    digest = file_digest(image_path)
    path, key = cache_path(digest, config, cache_dir), _key_text(digest, config)
    entry = _read(path, key)
    if entry is None:
        image = load_image(image_path) if image is None else image
        start = time.perf_counter()
        boxes = propose_with_config(image, config)
        entry = CacheEntry(boxes=boxes, seconds=time.perf_counter() - start, cached=False)
        _write(path, key, entry)
    return entry


def store(image_path: Path, config: ProposalConfig, cache_dir: Path, boxes: np.ndarray, seconds: float) -> None:
    """Put proposals computed elsewhere (another rank's search) into this cache, unless it has them."""
    digest = file_digest(image_path)
    path, key = cache_path(digest, config, cache_dir), _key_text(digest, config)
    if _read(path, key) is None:
        _write(path, key, CacheEntry(boxes=boxes, seconds=seconds, cached=False))


def cached_proposals(image_path: Path, config: ProposalConfig, cache_dir: Path) -> np.ndarray:
    """Proposals float32 [N, 4] xyxy (pixels of the image file) from the cache, or computed and stored."""
    return load_or_compute(image_path, config, cache_dir).boxes


def is_cached(image_path: Path, config: ProposalConfig, cache_dir: Path) -> bool:
    """Whether the cache holds a file for this image and `config` (not verified: a corrupt one
    is recomputed when read); False for a missing image."""
    image_path = Path(image_path)
    return image_path.is_file() and cache_path(file_digest(image_path), config, cache_dir).is_file()


def default_cache_dir(config_like: Any) -> Path:
    """``config.proposals.cache_dir`` when set, else ``config.run_dir / "proposals"`` (a detector Config)."""
    if config_like.proposals.cache_dir:
        return Path(config_like.proposals.cache_dir).expanduser()
    return Path(config_like.run_dir) / "proposals"
