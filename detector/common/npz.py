"""Per-item caches stored as compressed ``.npz`` files: written atomically, read without pickles,
and a damaged file reads as a cache miss (recomputed) instead of an error."""
from __future__ import annotations

import logging
import zipfile
from pathlib import Path

import numpy as np

from detector.common.atomic import atomic_path

log = logging.getLogger(__name__)


def write_npz(path: Path, **arrays: np.ndarray) -> None:
    """Save `arrays` compressed at `path`, atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(handle, **arrays)


def read_npz(path: Path, keys: tuple[str, ...], what: str) -> dict[str, np.ndarray] | None:
    """The arrays `keys` of the file at `path`, or None when it is absent, unreadable or lacks one
    (logged as a warning naming `what`: the caller recomputes)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in keys}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        log.warning("%s: unreadable %s (%s); recomputing", path, what, exc)
        return None
