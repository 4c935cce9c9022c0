"""Image loading: every common mode becomes RGB uint8, EXIF orientation applied, bad files named."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from detector.common.errors import ImageReadError
from detector.data.images import file_digest, list_images, load_image


def _save(path, image, **kwargs):
    image.save(path, **kwargs)
    return path


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".bmp", ".webp"])
def test_rgb_formats(tmp_path, suffix):
    pixels = np.zeros((20, 30, 3), np.uint8)
    pixels[:, :, 0] = 200
    path = _save(tmp_path / f"a{suffix}", Image.fromarray(pixels), **({"quality": 95} if suffix != ".bmp" else {}))
    image = load_image(path)
    assert image.shape == (20, 30, 3) and image.dtype == np.uint8
    assert abs(int(image[10, 15, 0]) - 200) <= 3 and int(image[10, 15, 1]) <= 3


def test_grayscale_is_replicated(tmp_path):
    path = _save(tmp_path / "g.png", Image.fromarray(np.full((5, 7), 77, np.uint8), mode="L"))
    image = load_image(path)
    assert image.shape == (5, 7, 3) and (image == 77).all()


def test_rgba_is_composited_on_white(tmp_path):
    pixels = np.zeros((4, 4, 4), np.uint8)
    pixels[..., 0] = 255  # red...
    pixels[:2, :, 3] = 255  # ...opaque in the top half, transparent below
    image = load_image(_save(tmp_path / "a.png", Image.fromarray(pixels, mode="RGBA")))
    assert image[0, 0].tolist() == [255, 0, 0]
    assert image[3, 0].tolist() == [255, 255, 255]


def test_sixteen_bit_is_scaled(tmp_path):
    pixels = np.array([[0, 65535], [32768, 1000]], dtype=np.uint16)
    image = load_image(_save(tmp_path / "d.png", Image.fromarray(pixels)))
    assert image[0, 0, 0] == 0 and image[0, 1, 0] == 255 and image[1, 0, 0] in (127, 128)


def test_cmyk_jpeg(tmp_path):
    image = load_image(_save(tmp_path / "c.jpg", Image.new("CMYK", (8, 6), (0, 255, 255, 0))))
    assert image.shape == (6, 8, 3)
    assert image[3, 3, 0] > 200 and image[3, 3, 1] < 60  # red


def test_exif_orientation_is_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = _save(tmp_path / "r.jpg", Image.new("RGB", (40, 20), (10, 200, 10)), exif=exif)
    assert load_image(path).shape == (40, 20, 3)


@pytest.mark.parametrize(
    "content, message",
    [(b"", "empty"), (b"not an image at all", "cannot read"), (None, "not found")],
)
def test_bad_files_name_the_file(tmp_path, content, message):
    path = tmp_path / "bad.jpg"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ImageReadError, match=message) as info:
        load_image(path)
    assert str(path) in str(info.value)


def test_truncated_jpeg(tmp_path):
    path = _save(tmp_path / "t.jpg", Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)))
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(ImageReadError, match="t.jpg"):
        load_image(path)


def test_digest_follows_content_not_name(tmp_path):
    (tmp_path / "a.png").write_bytes(b"same")
    (tmp_path / "b.png").write_bytes(b"same")
    (tmp_path / "c.txt").write_bytes(b"other")
    assert file_digest(tmp_path / "a.png") == file_digest(tmp_path / "b.png") != file_digest(tmp_path / "c.txt")
    assert [p.name for p in list_images(tmp_path)] == ["a.png", "b.png"]


def test_atomic_writes_get_ordinary_permissions(tmp_path):
    import os

    from detector.common.atomic import write_text

    mask = os.umask(0o022)
    try:
        write_text(tmp_path / "out.txt", "hello")
    finally:
        os.umask(mask)
    assert (tmp_path / "out.txt").read_text() == "hello"
    assert (tmp_path / "out.txt").stat().st_mode & 0o777 == 0o644
