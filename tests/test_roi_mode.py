"""Shared-feature mode (model.mode: roi): same weights as crop mode, trained and used end to end."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from detector.common.errors import UserError
from detector.common.precision import Precision
from detector.config import load_config
from detector.data.datasets import DatasetConfig, load_dataset
from detector.data.images import load_image
from detector.inference.detector import Detector
from detector.inference.scorers import FineTunedScorer
from detector.modeling.build import build_model
from detector.modeling.checkpoint import load_checkpoint
from detector.modeling.googlenet import LightHeadClassifier, PyramidLightHeadClassifier, SharedFeatureClassifier
from detector.modeling.regions import resize_for_roi, roi_inputs
from detector.training.finetune import train
from detector.training.minibatches import SamplingSettings, TrainBatches


def test_roi_model_shares_the_crop_models_weights():
    crop, roi = build_model(2, mode="crop"), build_model(2, mode="roi")
    assert crop.state_dict().keys() == roi.state_dict().keys()
    roi.load_state_dict(crop.state_dict())
    roi.train()
    out = roi([torch.randn(3, 96, 128), torch.randn(3, 80, 80)], torch.tensor([[0, 0, 0, 64, 64], [1, 8, 8, 72, 40.0]]))
    assert out.class_logits.shape == (2, 3) and out.box_deltas.shape == (2, 8) and len(out.aux_logits) == 2


def test_roi_layer_5b_pools_after_the_whole_trunk():
    model = build_model(2, mode="roi", roi_layer="5b").eval()
    image = torch.randn(3, 128, 160)
    shared = model.image_features([image])[2]
    assert shared.shape == (1, 1024, 4, 5)  # stride 32
    rois = torch.tensor([[0, 0, 0, 160, 128.0], [0, 10, 10, 60, 90]])
    with torch.no_grad():
        out = model([image], rois)
    assert out.features.shape == (2, 1024) and out.class_logits.shape == (2, 3)
    assert model.state_dict().keys() == build_model(2).state_dict().keys()


def test_dilated_5b_equals_the_stride_32_map_on_its_even_cells():
    torch.manual_seed(0)
    reference = build_model(2, mode="roi", roi_layer="5b").eval()
    for module in reference.modules():  # He init keeps activations near unit scale (GoogLeNet's shrinks them)
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight)
    dilated = build_model(2, mode="roi", roi_layer="5b-dilated").eval()
    missing, unexpected = dilated.load_state_dict(reference.state_dict(), strict=False)
    assert not unexpected and {key.split(".")[0] for key in missing} == {"light_reduce", "light_fc"}
    image = torch.randn(3, 208, 272)  # inception_4e map 13x17: odd sides exercise the edge cells
    with torch.no_grad():
        stride_32 = reference.image_features([image])[2]
        x4e = dilated.trunk.inception4e(dilated.image_features([image])[1])
        thin = dilated.shared_map(x4e)
        dilated.light_reduce = torch.nn.Identity()
        stride_16 = dilated.shared_map(x4e)
    assert stride_32.shape == (1, 1024, 7, 9) and stride_16.shape == (1, 1024, 13, 17)
    assert thin.shape == (1, dilated.LIGHT_CHANNELS, 13, 17)
    assert stride_32.abs().max() > 0.1
    torch.testing.assert_close(stride_16[..., ::2, ::2], stride_32, rtol=1e-4, atol=1e-4)


def test_dilated_5b_light_head_outputs():
    model = build_model(2, mode="roi", roi_layer="5b-dilated").train()
    rois = torch.tensor([[0, 0, 0, 160, 128.0], [1, 10, 10, 60, 90], [0, 30, 20, 31, 21]])
    out = model([torch.randn(3, 128, 160), torch.randn(3, 96, 96)], rois)
    assert out.features.shape == (3, 1024) and out.class_logits.shape == (3, 3) and out.box_deltas.shape == (3, 8)
    assert len(out.aux_logits) == 2
    out.class_logits.sum().backward()
    assert model.light_fc.weight.grad.abs().sum() > 0 and model.trunk.inception5a.branch2[1].conv.weight.grad.abs().sum() > 0


def test_pyramid_light_head_pools_small_regions_from_the_stride_8_map():
    model = build_model(2, mode="roi", roi_layer="5b-dilated+3b").eval()
    image = torch.randn(3, 128, 160)
    with torch.no_grad():
        x4a, x4d, (fine, coarse) = model.image_features([image])
        assert fine.shape == (1, 128, 16, 20) and coarse.shape == (1, 128, 8, 10)
        # sqrt(w h): 40 and 111.9 px (stride 8), 112 and 143 px (stride 16; FPN's rule at 224 / 2)
        rois = torch.tensor([[0, 10, 10, 50, 50], [0, 0, 0, 160, 128.0], [0, 0, 0, 111.9, 111.9], [0, 8, 8, 120, 120]])
        assert model.is_small(rois).tolist() == [True, False, True, False]
        pooled = model.pool_regions((fine, coarse), rois)
        small, large = rois[[0, 2]], rois[[1, 3]]
        torch.testing.assert_close(pooled[[0, 2]], model._pool(fine, small, 8, 7))
        torch.testing.assert_close(pooled[[1, 3]], model._pool(coarse, large, 16, 7))
        out = model([image], rois)
    assert out.features.shape == (4, 1024) and out.class_logits.shape == (4, 3)


def test_pyramid_light_head_trains_both_levels():
    model = build_model(2, mode="roi", roi_layer="5b-dilated+3b").train()
    rois = torch.tensor([[0, 10, 10, 40, 40], [1, 0, 0, 150, 120.0]])  # one small, one large
    out = model([torch.randn(3, 128, 160), torch.randn(3, 128, 160)], rois)
    assert len(out.aux_logits) == 2
    out.class_logits.sum().backward()
    for layer in (model.fine_lateral, model.fine_smooth, model.light_reduce):
        assert layer.conv.weight.grad.abs().sum() > 0
    assert model.trunk.inception3b.branch1.conv.weight.grad.abs().sum() > 0
    # the shared trunk and light head load from a 5b-dilated model; only the stride-8 layers are new
    missing, unexpected = model.load_state_dict(build_model(2, mode="roi", roi_layer="5b-dilated").state_dict(),
                                                strict=False)
    assert not unexpected and {key.split(".")[0] for key in missing} == {"fine_lateral", "fine_smooth"}


def test_each_roi_layer_gets_the_network_that_runs_it():
    assert type(build_model(2, mode="roi", roi_layer="5b-dilated")) is LightHeadClassifier
    assert type(build_model(2, mode="roi", roi_layer="5b-dilated+3b")) is PyramidLightHeadClassifier
    assert type(build_model(2, mode="roi", roi_layer="4e")) is SharedFeatureClassifier
    with pytest.raises(UserError, match=r"model.roi_layer '5c': expected one of 4e, 5b, 5b-dilated, 5b-dilated\+3b"):
        build_model(2, mode="roi", roi_layer="5c")
    with pytest.raises(UserError, match="SharedFeatureClassifier runs 4e, 5b"):
        SharedFeatureClassifier(2, roi_layer="5b-dilated")


def test_roi_geometry():
    image = torch.zeros(3, 300, 400)
    resized, scale = resize_for_roi(image, short_side=600, max_side=700)
    assert scale == 700 / 400 and resized.shape == (3, 525, 700)  # the long side caps the scale
    rois = roi_inputs(torch.tensor([[100.0, 100.0, 292.0, 196.0]]), 3, 224, 16, scale=0.5)
    assert rois.tolist() == [[3.0, 42.0, 46.0, 154.0, 102.0]]  # context-dilated, then scaled


@pytest.mark.parametrize("layer", ["4e", "5b", "5b-dilated", "5b-dilated+3b"])
def test_roi_mode_trains_and_detects(tiny_voc, tmp_path, layer):
    config = load_config("tiny", [f"data.root={tiny_voc}", f"output_dir={tmp_path}", "model.mode=roi", f"model.roi_layer={layer}",
                                  "model.roi_short_side=120", "model.roi_max_side=200", "train.iterations=2",
                                  "test.score_threshold=0.0"])
    state = load_checkpoint(train(config))
    assert state["config"]["model"]["mode"] == "roi"
    detector = Detector.from_weights([str(tmp_path / "model_final.pt")], config)
    assert detector.scorers[0].shares_features
    image = load_image(tiny_voc / "JPEGImages" / "test_0000.jpg")
    proposals = np.array([[10, 10, 60, 60], [50, 20, 150, 110], [0, 0, 160, 120]], np.float32)
    scores, boxes = detector.score(image, proposals)
    assert scores.shape == (1, 3, 3) and torch.allclose(scores.sum(-1), torch.ones(1, 3), atol=1e-5)
    # batching does not change the shared-feature scores
    detector.test_config.batch_size = 1
    assert torch.allclose(detector.score(image, proposals)[0], scores, atol=1e-5)
    assert len(detector.detect(image, proposals).boxes) > 0


def _roi_batches(tiny_voc, **settings) -> TrainBatches:
    dataset = load_dataset(DatasetConfig(root=str(tiny_voc), train_split="train", classes=["square", "disc"]), "train")
    boxes = np.array([[10, 10, 60, 60], [50, 20, 150, 110]], np.float32)
    return TrainBatches(dataset, lambda path: boxes, SamplingSettings(
        images_per_batch=2, regions_per_batch=16, input_size=32, context_pad=2, mode="roi",
        roi_short_side=120, roi_max_side=200, **settings), iterations=40)


def test_multi_scale_training_draws_each_images_shorter_side(tiny_voc):
    fixed = {min(image.shape[1:]) for i in range(8) for image in _roi_batches(tiny_voc)[i].inputs[0]}
    assert fixed == {120}
    batches = _roi_batches(tiny_voc, scales=(96, 144))
    sides = [min(image.shape[1:]) for i in range(20) for image in batches[i].inputs[0]]
    assert set(sides) == {96, 144}
    # the RoIs follow their image's scale, and a batch is a function of its iteration alone
    again = batches[7]
    assert torch.equal(again.inputs[1], batches[7].inputs[1])
    assert all(torch.equal(a, b) for a, b in zip(again.inputs[0], batches[7].inputs[0]))
    assert not torch.equal(_roi_batches(tiny_voc)[7].inputs[1], again.inputs[1])


def test_photometric_jitter_changes_pixels_not_geometry(tiny_voc):
    plain, jittered = _roi_batches(tiny_voc)[3], _roi_batches(tiny_voc, photometric=0.4)[3]
    first = plain.inputs[1][:, 0] == 0  # the first image's regions are drawn before its jitter
    assert plain.inputs[0][0].shape == jittered.inputs[0][0].shape
    assert torch.equal(plain.inputs[1][first], jittered.inputs[1][jittered.inputs[1][:, 0] == 0])
    assert not torch.allclose(plain.inputs[0][0], jittered.inputs[0][0])
    assert max(float(i.abs().max()) for i in jittered.inputs[0]) < 3  # still normalised 8-bit colours


@pytest.mark.parametrize("settings", [{"scales": (0, 100)}, {"photometric": 1.5}])
def test_bad_augmentation_settings_are_named(settings):
    with pytest.raises(UserError, match="train.scales|train.photometric"):
        SamplingSettings(**settings)


FP32 = Precision(torch.device("cpu"), None)


def _light_scorer(roi_sides=(96, 128)) -> FineTunedScorer:
    torch.manual_seed(0)
    model = build_model(2, mode="roi", roi_layer="5b-dilated").eval()
    for module in model.modules():  # activations and scores far from uniform, so scales tell apart
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            torch.nn.init.kaiming_normal_(module.weight)
    return FineTunedScorer(model, ["square", "disc"], ["square", "disc"], 64, 4, "light", roi_sides=roi_sides)


def test_one_test_scale_is_the_model_run_at_that_scale():
    image, boxes = torch.randn(3, 150, 200), torch.tensor([[10.0, 10.0, 60.0, 70.0], [0.0, 0.0, 200.0, 150.0]])
    rescaled = _light_scorer().score_image(image, boxes, FP32, 64, scales=[144])
    reference = _light_scorer(roi_sides=(144, 192)).score_image(image, boxes, FP32, 64)
    assert _light_scorer().test_sides([144, 48]) == [(144, 192), (48, 64)]
    torch.testing.assert_close(rescaled.scores, reference.scores)
    torch.testing.assert_close(rescaled.deltas, reference.deltas)


def test_several_test_scales_score_each_box_where_its_area_is_closest_to_the_input_size():
    scorer, image = _light_scorer(), torch.randn(3, 150, 200)
    # at scale 0.32 (48 px) and 1.28 (192 px): a 40x40 box is 51 px at 1.28 (closer to 64 px),
    # a 200x150 box 64x48 px at 0.32
    boxes = torch.tensor([[10.0, 10.0, 50.0, 50.0], [0.0, 0.0, 200.0, 150.0], [60.0, 30.0, 100.0, 70.0]])
    both = scorer.score_image(image, boxes, FP32, 2, scales=[48, 192])
    small = scorer.score_image(image, boxes, FP32, 2, scales=[192])
    large = scorer.score_image(image, boxes, FP32, 2, scales=[48])
    for rows, expected in (([0, 2], small), ([1], large)):
        torch.testing.assert_close(both.scores[rows], expected.scores[rows])
        torch.testing.assert_close(both.deltas[rows], expected.deltas[rows])
    assert (small.scores[1] - large.scores[1]).abs().max() > 1e-3  # the choice matters


def test_test_scales_are_checked_and_key_the_detections(tiny_voc, tmp_path):
    from detector.config import detection_settings

    config = load_config("tiny", [f"data.root={tiny_voc}", "test.scales=[480,800]"])
    assert config.test.scales == [480, 800] and detection_settings(config.test)["scales"] == [480, 800]
    bad = load_config("tiny", [f"data.root={tiny_voc}", "test.scales=[0]"])
    with pytest.raises(UserError, match=r"test.scales \[0\]: shorter sides must be positive pixels"):
        Detector([_light_scorer()], bad.proposals, bad.test)
