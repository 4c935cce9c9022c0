"""Image transforms of classification pre-training and of the GoogLeNet test protocol.

Training (Szegedy et al. 2014, Sect. 6): a random patch covering 8%-100% of the image area with
aspect ratio in [3/4, 4/3], resized with an interpolation chosen at random (bilinear, area,
nearest, cubic), a random horizontal flip and photometric distortions. Test (Table 3): one
center crop, 10 crops (4 corners + center and their mirrors) or 144 crops (4 scales x 3 squares
x 6 crops x 2 mirrors).

Everything works on RGB uint8 arrays [H, W, 3] with OpenCV (fast in DataLoader workers) and
takes its randomness from a numpy Generator, so a sample's augmentation depends only on the
seed it is given (exact resume, any number of workers).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from detector.data.images import load_image

#: The paper's resize interpolations: bilinear, area, nearest, cubic.
INTERPOLATIONS = (cv2.INTER_LINEAR, cv2.INTER_AREA, cv2.INTER_NEAREST, cv2.INTER_CUBIC)
#: Shorter-side scales of the 144-crop protocol for 224-pixel crops (scaled for other sizes).
PAPER_SCALES = (256, 288, 320, 352)
CENTER_CROP_RATIO = 0.875  #: crop side / resized shorter side of the 1- and 10-crop tests (224/256)


def read_rgb(path: str | Path) -> np.ndarray:
    """RGB uint8 [H, W, 3] of an image file: OpenCV's decoder (EXIF orientation applied), or
    detector.data.images.load_image for what OpenCV cannot read (which names the file if nobody can)."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None or bgr.size == 0:
        return load_image(path)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def resize(image: np.ndarray, width: int, height: int, interpolation: int | None = None) -> np.ndarray:
    """Resize to width x height pixels; default interpolation: area when shrinking, cubic when growing."""
    if interpolation is None:
        shrinking = width * height < image.shape[0] * image.shape[1]
        interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC
    return cv2.resize(image, (width, height), interpolation=interpolation)


def resize_shorter(image: np.ndarray, side: int) -> np.ndarray:
    """Resize so the shorter side is `side` pixels, keeping the aspect ratio."""
    height, width = image.shape[:2]
    scale = side / min(height, width)
    return resize(image, max(side, round(width * scale)), max(side, round(height * scale)))


def photometric_jitter(image: np.ndarray, rng: np.random.Generator, brightness: float = 0.4,
                       contrast: float = 0.4, saturation: float = 0.4) -> np.ndarray:
    """Brightness, contrast and saturation jitter of an RGB uint8 [H, W, 3] image, in random order
    (Howard 2013; torchvision's ColorJitter without hue): each factor drawn from [1 - x, 1 + x]."""
    pixels = image.astype(np.float32)
    for which in rng.permutation(3):
        strength = (brightness, contrast, saturation)[which]
        if strength <= 0:
            continue
        factor = rng.uniform(max(0.0, 1 - strength), 1 + strength)
        if which == 0:
            pixels *= factor
        else:
            gray = pixels @ np.array([0.299, 0.587, 0.114], np.float32)
            towards = gray.mean() if which == 1 else gray[..., None]
            pixels = pixels * factor + towards * (1 - factor)
        np.clip(pixels, 0, 255, out=pixels)
    return pixels.round().astype(np.uint8)


# --------------------------------------------------------------------------- training


@dataclass(frozen=True)
class TrainAugment:
    """The training transform: ``augment(image [H, W, 3] uint8, rng) -> [size, size, 3] uint8``."""

    size: int
    min_area: float = 0.08
    max_area: float = 1.0
    min_aspect: float = 3 / 4
    max_aspect: float = 4 / 3
    random_interpolation: bool = True
    flip: bool = True
    brightness: float = 0.4  #: factors drawn from [1 - x, 1 + x] (0 = off)
    contrast: float = 0.4
    saturation: float = 0.4

    def crop_box(self, height: int, width: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
        """(top, left, h, w) of a random patch of the requested area and aspect ratio; after 10
        failed draws, the largest central patch within the aspect range (torchvision's rule)."""
        area = height * width
        log_ratio = (math.log(self.min_aspect), math.log(self.max_aspect))
        for _ in range(10):
            target = area * rng.uniform(self.min_area, self.max_area)
            aspect = math.exp(rng.uniform(*log_ratio))
            w = round(math.sqrt(target * aspect))
            h = round(math.sqrt(target / aspect))
            if 0 < w <= width and 0 < h <= height:
                return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
        aspect = width / height
        if aspect < self.min_aspect:
            w, h = width, round(width / self.min_aspect)
        elif aspect > self.max_aspect:
            h, w = height, round(height * self.max_aspect)
        else:
            h, w = height, width
        return (height - h) // 2, (width - w) // 2, h, w

    def photometric(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """This transform's photometric distortions of `image` (see :func:`photometric_jitter`)."""
        return photometric_jitter(image, rng, self.brightness, self.contrast, self.saturation)

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        top, left, h, w = self.crop_box(*image.shape[:2], rng)
        interpolation = INTERPOLATIONS[rng.integers(len(INTERPOLATIONS))] if self.random_interpolation else cv2.INTER_LINEAR
        patch = cv2.resize(image[top:top + h, left:left + w], (self.size, self.size), interpolation=interpolation)
        if self.flip and rng.random() < 0.5:
            patch = patch[:, ::-1]
        if self.brightness or self.contrast or self.saturation:
            patch = self.photometric(patch, rng)
        return np.ascontiguousarray(patch)


# --------------------------------------------------------------------------- test protocol


def _center(image: np.ndarray, size: int) -> np.ndarray:
    height, width = image.shape[:2]
    top, left = (height - size) // 2, (width - size) // 2
    return image[top:top + size, left:left + size]


def _corners_and_center(image: np.ndarray, size: int) -> list[np.ndarray]:
    """The 4 corner crops (top-left, top-right, bottom-left, bottom-right) and the center crop."""
    height, width = image.shape[:2]
    corners = [image[top:top + size, left:left + size] for top in (0, height - size) for left in (0, width - size)]
    return corners + [_center(image, size)]


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """The 1-crop test: shorter side resized to size / 0.875, then the central size x size crop."""
    return np.ascontiguousarray(_center(resize_shorter(image, round(size / CENTER_CROP_RATIO)), size))


def _with_mirrors(crops: list[np.ndarray]) -> np.ndarray:
    """[2K, size, size, 3]: the crops, then their horizontal mirrors."""
    stacked = np.stack(crops)
    return np.ascontiguousarray(np.concatenate([stacked, stacked[:, :, ::-1]]))


def ten_crops(image: np.ndarray, size: int) -> np.ndarray:
    """[10, size, size, 3]: 4 corners + center of the image resized to size / 0.875, and mirrors."""
    return _with_mirrors(_corners_and_center(resize_shorter(image, round(size / CENTER_CROP_RATIO)), size))


def multi_scale_crops(image: np.ndarray, size: int) -> np.ndarray:
    """[144, size, size, 3], the paper's dense test: the shorter side resized to 4 scales (256,
    288, 320, 352 for 224-pixel crops); the left, center and right squares (top, center, bottom
    for portrait images); per square its 4 corners, center and the whole square resized to size;
    and the mirrors of all 72."""
    crops = []
    for scale in PAPER_SCALES:
        resized = resize_shorter(image, round(scale * size / 224))
        height, width = resized.shape[:2]
        side = min(height, width)
        for offset in (0, (max(height, width) - side) // 2, max(height, width) - side):
            square = resized[offset:offset + side] if height > width else resized[:, offset:offset + side]
            crops.extend(_corners_and_center(square, size))
            crops.append(resize(square, size, size))
    return _with_mirrors(crops)


def one_crop(image: np.ndarray, size: int) -> np.ndarray:
    """[1, size, size, 3]: the center crop."""
    return center_crop(image, size)[None]


#: crops per image -> the function that makes them
TEST_CROPS = {1: one_crop, 10: ten_crops, 144: multi_scale_crops}


@dataclass(frozen=True)
class CenterCrop:
    """The validation transform ``(image, rng) -> [size, size, 3]`` (rng unused; picklable)."""

    size: int

    def __call__(self, image: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        return center_crop(image, self.size)


@dataclass(frozen=True)
class EvalCrops:
    """The test transform ``(image, rng) -> [crops, size, size, 3]`` (rng unused), picklable for
    DataLoader workers."""

    crops: int
    size: int

    def __call__(self, image: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        return TEST_CROPS[self.crops](image, self.size)
