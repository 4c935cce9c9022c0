"""Image loading used by every stage: any common file in, RGB uint8 out.

Handles JPEG/PNG/BMP/WebP/TIFF, grayscale, palette, RGBA (composited on white), 16-bit and CMYK
inputs, and applies the EXIF orientation so that boxes refer to the image as people see it.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from detector.common.errors import ImageReadError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
#: EXIF orientations that exif_transpose turns by 90 degrees (width and height swap).
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)
_READ_ERRORS = (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def _to_rgb(image: Image.Image) -> np.ndarray:
    """Convert any PIL mode to an RGB uint8 array [H, W, 3]."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if values.max(initial=0) > 255 else 255.0
        gray = np.clip(np.rint(values * (255.0 / peak)), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return np.array(image.convert("RGB"), dtype=np.uint8)  # a writable copy


def load_image(path: str | Path) -> np.ndarray:
    """Read an image file as RGB uint8 [H, W, 3], EXIF orientation applied.

    Raises ImageReadError naming the file when it is missing, empty, truncated or not an image.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: image file not found")
    if path.stat().st_size == 0:
        raise ImageReadError(f"{path}: image file is empty (0 bytes)")
    try:
        with Image.open(path) as image:
            image.load()
            image = ImageOps.exif_transpose(image)
            rgb = _to_rgb(image)
    except _READ_ERRORS as exc:
        raise ImageReadError(f"{path}: cannot read image ({exc})") from None
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ImageReadError(f"{path}: image has zero size {rgb.shape[1]}x{rgb.shape[0]}")
    return rgb


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) in pixels of the image as load_image returns it (EXIF orientation applied),
    from the file's header without decoding the pixels; ImageReadError naming the file otherwise."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            # PIL decodes a PNG to look for EXIF stored after its pixels: only read EXIF found up front
            exif = image.getexif() if image.format != "PNG" or "exif" in image.info else {}
    except FileNotFoundError:
        raise ImageReadError(f"{path}: image file not found") from None
    except _READ_ERRORS as exc:
        raise ImageReadError(f"{path}: cannot read image ({exc})") from None
    if exif.get(ExifTags.Base.Orientation) in _TRANSPOSING_ORIENTATIONS:
        return height, width
    return width, height


def file_digest(path: str | Path, length: int = 16) -> str:
    """Hex SHA-1 of a file's bytes (first `length` characters): the content key of caches."""
    sha = hashlib.sha1()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            sha.update(chunk)
    return sha.hexdigest()[:length]


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly inside `folder`, sorted by name."""
    return sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
