"""The matrix-product RoIAlign equals torchvision's roi_align, values and gradients."""
from __future__ import annotations

import pytest
import torch
from torchvision.ops import roi_align

from detector.modeling.googlenet import pad_to_batch
from detector.modeling.roi_pool import roi_align_matmul


def _random_rois(count: int, images: int, generator: torch.Generator) -> torch.Tensor:
    """Boxes of every kind: inside, overlapping the border, fully outside, sub-pixel small."""
    corner = torch.rand(count, 2, generator=generator) * 560 - 80
    size = torch.rand(count, 2, generator=generator) * 400 + 0.2
    index = torch.randint(0, images, (count, 1), generator=generator).float()
    return torch.cat([index, corner, corner + size], 1)


@pytest.mark.parametrize("size,stride", [(4, 16), (14, 16), (4, 32)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_matches_torchvision_values_and_gradients(size, stride, channels_last):
    generator = torch.Generator().manual_seed(size + stride)
    maps = torch.randn(3, 8, 480 // stride, 400 // stride, generator=generator)
    if channels_last:
        maps = maps.contiguous(memory_format=torch.channels_last)
    maps.requires_grad_()
    rois = _random_rois(60, 3, generator)
    expected = roi_align(maps, rois, size, 1.0 / stride, sampling_ratio=2, aligned=True)
    pooled = roi_align_matmul(maps, rois, size, 1.0 / stride, sampling_ratio=2)
    assert pooled.shape == expected.shape == (60, 8, size, size)
    torch.testing.assert_close(pooled, expected, atol=1e-5, rtol=1e-5)
    upstream = torch.randn(expected.shape, generator=generator)
    (grad_expected,) = torch.autograd.grad(expected, maps, upstream)
    (grad,) = torch.autograd.grad(pooled, maps, upstream)
    torch.testing.assert_close(grad, grad_expected, atol=1e-4, rtol=1e-4)


def test_rois_of_unsorted_images_and_none():
    maps = torch.randn(2, 4, 10, 12)
    rois = torch.tensor([[1, 0, 0, 100, 80.0], [0, 20, 20, 60, 90], [1, 50, 10, 180, 150]])
    expected = roi_align(maps, rois, 4, 1 / 16, sampling_ratio=2, aligned=True)
    torch.testing.assert_close(roi_align_matmul(maps, rois, 4, 1 / 16), expected, atol=1e-5, rtol=1e-5)
    assert roi_align_matmul(maps, rois[:0], 4, 1 / 16).shape == (0, 4, 4, 4)


def test_pad_to_batch_places_each_image_top_left():
    small, large = torch.ones(3, 4, 5), torch.full((3, 6, 3), 2.0)
    batch = pad_to_batch([small, large])
    assert batch.shape == (2, 3, 6, 5)
    assert torch.equal(batch[0, :, :4, :5], small) and batch[0, :, 4:].abs().sum() == 0
    assert torch.equal(batch[1, :, :, :3], large) and batch[1, :, :, 3:].abs().sum() == 0


def test_bf16_maps_keep_fp32_sampling_geometry():
    """Small boxes far from the origin: bf16 coordinates (4-pixel steps at 512-1024) would move
    their samples by up to a quarter cell, ~10% of the pooled values on average; fp32 geometry
    leaves only bf16's rounding of values and weights."""
    generator = torch.Generator().manual_seed(0)
    maps = torch.randn(1, 16, 40, 64, generator=generator).bfloat16()
    corner = torch.rand(200, 2, generator=generator) * torch.tensor([900.0, 560.0]) + torch.tensor([100.0, 50.0])
    rois = torch.cat([torch.zeros(200, 1), corner, corner + 12 + 18 * torch.rand(200, 2, generator=generator)], 1)
    expected = roi_align(maps.float(), rois, 7, 1 / 16, sampling_ratio=2, aligned=True)
    pooled = roi_align_matmul(maps, rois, 7, 1 / 16)
    assert pooled.dtype == torch.bfloat16
    assert (pooled.float() - expected).abs().mean() < 0.01 * expected.abs().mean()
