"""Proposal regions -> network input: R-CNN context padding and anisotropic warping.

R-CNN (Girshick et al. 2014, appendix A): each proposal is dilated so that, at the warped size,
there are ``context_pad`` pixels of image context around the original box, then warped to
``size x size`` regardless of its aspect ratio. Where the dilated box leaves the image it is
filled with the image mean: we normalise the image first (mean -> 0) and sample with
``torchvision.ops.roi_align``, which reads zeros outside the image.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from detector.common.precision import Precision
from detector.modeling.googlenet import PIXEL_MEAN, PIXEL_STD


def normalize_image(image: np.ndarray | torch.Tensor) -> torch.Tensor:
    """RGB uint8 [H, W, 3] -> float32 [3, H, W] normalised like the network's training data."""
    pixels = torch.as_tensor(image).permute(2, 0, 1).float().div_(255.0)
    mean = torch.tensor(PIXEL_MEAN).view(3, 1, 1)
    std = torch.tensor(PIXEL_STD).view(3, 1, 1)
    return pixels.sub_(mean).div_(std)


def dilate_for_context(boxes: torch.Tensor, size: int, context_pad: int) -> torch.Tensor:
    """Boxes [N, 4] grown about their centres so that the original box fills the central
    ``size - 2 * context_pad`` pixels of a ``size``-pixel warp (per axis)."""
    if context_pad <= 0:
        return boxes
    scale = size / (size - 2.0 * context_pad)
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]) / 2 * scale
    return torch.cat([centre - half, centre + half], dim=1)


def warp_regions(
    image: torch.Tensor, boxes: torch.Tensor, size: int = 224, context_pad: int = 16, flip: bool = False
) -> torch.Tensor:
    """Warped regions [N, 3, size, size] from a normalised image [3, H, W] and boxes [N, 4] xyxy.

    Bilinear sampling with 2x2 points per output pixel. ``flip`` mirrors each region
    horizontally (same as warping the box of the mirrored image).
    """
    if boxes.numel() == 0:
        return image.new_zeros((0, 3, size, size))
    rois = torch.cat([boxes.new_zeros((len(boxes), 1)), dilate_for_context(boxes.float(), size, context_pad)], 1)
    regions = roi_align(image[None], rois.to(image.dtype), (size, size), spatial_scale=1.0, sampling_ratio=2, aligned=True)
    return regions.flip(-1) if flip else regions


def resize_for_roi(image: torch.Tensor, short_side: int, max_side: int) -> tuple[torch.Tensor, float]:
    """Normalised image [3, H, W] resized (antialiased bilinear) so its shorter side is
    `short_side` unless the longer would exceed `max_side`; returns it and the scale factor."""
    height, width = image.shape[1:]
    scale = min(short_side / min(height, width), max_side / max(height, width))
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    resized = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]
    return resized, scale


def roi_inputs(boxes: torch.Tensor, index: int, input_size: int, context_pad: int, scale: float) -> torch.Tensor:
    """RoIs [N, 5] (image index, xyxy) for the shared-feature model: boxes [N, 4] dilated for the
    same context a `input_size` crop with `context_pad` would show, in the resized image's pixels."""
    dilated = dilate_for_context(boxes.float(), input_size, context_pad) * scale
    return torch.cat([dilated.new_full((len(boxes), 1), float(index)), dilated], dim=1)


def normalise(images: torch.Tensor, precision: Precision) -> torch.Tensor:
    """uint8 [B, 3, S, S] -> float normalised like the detector's input ((x/255 - 0.5) / 0.5),
    channels_last on CPU."""
    mean = torch.tensor(PIXEL_MEAN, device=precision.device).view(1, 3, 1, 1) * 255
    std = torch.tensor(PIXEL_STD, device=precision.device).view(1, 3, 1, 1) * 255
    x = (images.to(precision.device, non_blocking=True).float() - mean) / std
    return x.contiguous(memory_format=torch.channels_last) if precision.device.type == "cpu" else x
