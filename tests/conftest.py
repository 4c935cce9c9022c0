"""Shared fixtures: self-made datasets and the optional ../shared data."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.synthetic import make_voc_dataset

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
ANIMALS_VOC = SHARED_DATA / "animals-voc"


@pytest.fixture(scope="session")
def tiny_voc(tmp_path_factory) -> Path:
    """A VOC-layout set of 8 train / 4 test synthetic images (classes square, disc)."""
    return make_voc_dataset(tmp_path_factory.mktemp("tiny_voc"))


@pytest.fixture(scope="session")
def animals_voc() -> Path:
    """../shared/data/animals-voc, or skip when this checkout has no ../shared."""
    if not (ANIMALS_VOC / "ImageSets").is_dir():
        pytest.skip(f"needs the shared dataset at {ANIMALS_VOC}")
    return ANIMALS_VOC
