"""The shipped example image: its origin, and that no file of the repository copies ../shared/data."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from skimage.data import chelsea

from detector.data.images import IMAGE_SUFFIXES, file_digest, load_image
from tests.conftest import REPO, SHARED_DATA

CHECKED_FOLDERS = ("examples", "docs", "tests")


def identical_files(files: list[Path], originals: list[Path]) -> list[tuple[Path, Path]]:
    """(file, original) pairs with the same bytes: sizes first, SHA-1 of the size-matched ones."""
    sizes = {path.stat().st_size for path in files}
    by_digest: dict[str, Path] = {}
    for original in originals:
        if original.stat().st_size in sizes:
            by_digest.setdefault(file_digest(original, length=40), original)
    return [(path, by_digest[digest]) for path in files
            if (digest := file_digest(path, length=40)) in by_digest]


def _files(root: Path, image_only: bool = False) -> list[Path]:
    return [path for path in sorted(root.rglob("*")) if path.is_file()
            and not (image_only and path.suffix.lower() not in IMAGE_SUFFIXES) and "__pycache__" not in path.parts]


def test_identical_files_compares_contents(tmp_path):
    original = tmp_path / "shared" / "a.jpg"
    original.parent.mkdir()
    original.write_bytes(b"\xff\xd8photo bytes")
    copy, same_size, other = tmp_path / "copy.bin", tmp_path / "same_size.jpg", tmp_path / "other.jpg"
    copy.write_bytes(original.read_bytes())
    same_size.write_bytes(b"\xff\xd8photo bytez")
    other.write_bytes(b"short")
    assert identical_files([copy, same_size, other], [original]) == [(copy, original)]


def test_no_repository_file_copies_a_shared_image():
    if not SHARED_DATA.is_dir():
        pytest.skip(f"needs {SHARED_DATA}")
    files = [path for folder in CHECKED_FOLDERS for path in _files(REPO / folder)]
    copies = identical_files(files, _files(SHARED_DATA, image_only=True))
    assert not copies, "copied from ../shared/data: " + ", ".join(f"{a} = {b}" for a, b in copies)


def test_example_image_is_scikit_image_chelsea():
    """examples/chelsea.jpg is scripts/make_example_image.py's JPEG of skimage.data.chelsea()."""
    shipped = load_image(REPO / "examples" / "chelsea.jpg").astype(np.int16)
    original = chelsea().astype(np.int16)
    assert shipped.shape == original.shape == (300, 451, 3)
    assert np.abs(shipped - original).mean() < 4  # JPEG quality 90: ~2 grey levels on average


def test_every_example_image_is_documented():
    readme = (REPO / "examples" / "README.md").read_text()
    images = _files(REPO / "examples", image_only=True)
    assert images and all(path.name in readme for path in images)


def test_bench_defaults_to_the_example_image(monkeypatch):
    from detector.commands.bench import bench_images

    monkeypatch.chdir(REPO)
    images = bench_images(None, None)
    assert list(images) == ["examples/chelsea.jpg"] and images["examples/chelsea.jpg"].shape == (300, 451, 3)
