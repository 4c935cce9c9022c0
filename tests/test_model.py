"""Region classifier: GoogLeNet topology, heads, weight loading, regions, sampling."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.models import googlenet

from detector.common.errors import UserError
from detector.modeling.build import build_model, model_from_checkpoint
from detector.modeling.checkpoint import check_classes, load_checkpoint, save_checkpoint
from detector.modeling.regions import dilate_for_context, normalize_image, warp_regions
from detector.training.sampling import sample_regions


def test_heads_and_aux_classifiers():
    model = build_model(num_classes=3)
    model.train()
    out = model(torch.randn(2, 3, 64, 64))
    assert out.class_logits.shape == (2, 4) and out.box_deltas.shape == (2, 12) and out.features.shape == (2, 1024)
    assert [a.shape for a in out.aux_logits] == [(2, 4), (2, 4)]
    model.eval()
    assert model(torch.randn(1, 3, 64, 64)).aux_logits == ()  # dropped at inference
    inception = [n for n, _ in model.trunk.named_children() if n.startswith("inception")]
    assert len(inception) == 9  # paper Table 1


def test_local_imagenet_weights_are_loaded(tmp_path):
    reference = googlenet(weights=None, aux_logits=True, init_weights=True, num_classes=1000)
    torch.save(reference.state_dict(), tmp_path / "googlenet.pth")
    model = build_model(num_classes=2, init=str(tmp_path / "googlenet.pth"))
    assert torch.equal(model.trunk.inception5b.branch1.conv.weight, reference.inception5b.branch1.conv.weight)
    assert torch.equal(model.trunk.aux1.fc1.weight, reference.aux1.fc1.weight)
    assert model.cls_score.out_features == 3  # the 1000-way layer was replaced, not loaded


def test_bad_init_files(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(UserError, match="junk.pth: not a readable PyTorch weights file"):
        build_model(2, init=str(tmp_path / "junk.pth"))
    torch.save({"layer.weight": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(UserError, match="other.pth: does not hold torchvision GoogLeNet weights"):
        build_model(2, init=str(tmp_path / "other.pth"))
    with pytest.raises(UserError, match="expected imagenet, random or a .pth"):
        build_model(2, init="resnet")


def test_checkpoint_round_trip_and_class_check(tmp_path):
    model = build_model(2)
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"model": model.state_dict(), "classes": ["a", "b"], "config": {}})
    state = load_checkpoint(path)
    restored = model_from_checkpoint(state)
    assert not restored.has_aux and not restored.training
    assert torch.equal(restored.cls_score.weight, model.cls_score.weight)
    check_classes(state, ["a", "b"], "here")
    with pytest.raises(UserError, match="same names in another order"):
        check_classes(state, ["b", "a"], "here")
    with pytest.raises(UserError, match=r"checkpoint classes \(2\) do not match the config's \(3\)"):
        check_classes(state, ["a", "b", "c"], "here")
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    with pytest.raises(UserError, match="bad.pt: not a readable checkpoint"):
        load_checkpoint(tmp_path / "bad.pt")


def test_context_padding_geometry():
    box = torch.tensor([[100.0, 100.0, 292.0, 196.0]])  # 192 x 96
    padded = dilate_for_context(box, size=224, context_pad=16)
    # the original box must fill the central 192 of 224 warped pixels on each axis
    assert torch.allclose(padded, torch.tensor([[84.0, 92.0, 308.0, 204.0]]))


def test_warp_fills_outside_with_mean_and_flips():
    image = np.zeros((40, 60, 3), np.uint8)
    image[:, :30] = 255  # left half white
    normalized = normalize_image(image)
    assert normalized[:, 0, 0].tolist() == [1.0, 1.0, 1.0] and normalized[:, 0, 59].tolist() == [-1.0, -1.0, -1.0]
    regions = warp_regions(normalized, torch.tensor([[0.0, 0.0, 60.0, 40.0]]), size=32, context_pad=0)
    assert regions.shape == (1, 3, 32, 32)
    assert regions[0, 0, 16, 2] > 0.9 and regions[0, 0, 16, 29] < -0.9
    flipped = warp_regions(normalized, torch.tensor([[0.0, 0.0, 60.0, 40.0]]), size=32, context_pad=0, flip=True)
    assert torch.allclose(flipped, regions.flip(-1))
    outside = warp_regions(normalized, torch.tensor([[-200.0, -200.0, -100.0, -100.0]]), size=8, context_pad=0)
    assert outside.abs().max() == 0  # padding is the image mean, i.e. 0 after normalisation
    assert warp_regions(normalized, torch.zeros((0, 4)), size=8).shape == (0, 3, 8, 8)


def test_rcnn_sampling_rules():
    gt = torch.tensor([[0.0, 0.0, 100.0, 100.0]])
    proposals = torch.tensor([
        [0.0, 0.0, 100.0, 90.0],   # IoU 0.90 -> fg with box target
        [0.0, 0.0, 100.0, 55.0],   # IoU 0.55 -> fg, no box target (< 0.6)
        [0.0, 0.0, 100.0, 30.0],   # IoU 0.30 -> bg
        [0.0, 0.0, 100.0, 5.0],    # IoU 0.05 -> neither
    ])
    targets = sample_regions(proposals, gt, torch.tensor([2]), num_regions=8, rng=np.random.default_rng(0), fg_fraction=0.5)
    labels = dict(zip(map(tuple, targets.boxes.tolist()), targets.labels.tolist()))
    assert labels == {(0, 0, 100, 100): 3, (0, 0, 100, 90): 3, (0, 0, 100, 55): 3, (0, 0, 100, 30): 0}
    with_target = {tuple(b) for b, m in zip(targets.boxes.tolist(), targets.box_mask.tolist()) if m}
    assert with_target == {(0, 0, 100, 100), (0, 0, 100, 90)}
    few = sample_regions(proposals, gt, torch.tensor([0]), num_regions=4, rng=np.random.default_rng(0), fg_fraction=0.25)
    assert int((few.labels > 0).sum()) == 1 and len(few.labels) == 2  # 1 fg cap + the only bg
