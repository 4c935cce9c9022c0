"""detector.inference.postprocess and .ensemble: NMS, ensembles, box voting and WBF against hand-computed expectations."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from ensemble_boxes import weighted_boxes_fusion

from detector.data.boxes import box_iou
from detector.inference import ensemble
from detector.inference.ensemble import FUSIONS, box_voting
from detector.inference.postprocess import detect_from_scores

SIZE = (100, 100)  # (height, width)


def blank(k: int, n: int, c: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores [k, n, c+1] all background and boxes [k, n, c, 4] all degenerate (never detected)."""
    scores = torch.zeros(k, n, c + 1)
    scores[:, :, 0] = 1.0
    return scores, torch.zeros(k, n, c, 4)


def put(scores, boxes, model, proposal, label, box, score) -> None:
    """Give `model` a detection of class `label` (0-based) on `proposal`."""
    scores[model, proposal, label + 1] = score
    boxes[model, proposal, label] = torch.tensor(box, dtype=torch.float32)


def assert_empty(result) -> None:
    out_boxes, out_scores, out_labels = result
    assert out_boxes.shape == (0, 4) and out_boxes.dtype == torch.float32
    assert out_scores.shape == (0,) and out_scores.dtype == torch.float32
    assert out_labels.shape == (0,) and out_labels.dtype == torch.int64


# --------------------------------------------------------------------------- NMS


def nms_scene():
    """Class 0: [10,10,50,50] 0.9; [12,10,52,50] 0.6 (IoU 1520/1680 = 0.905 with it);
    [40,10,80,50] 0.4 (IoU 400/2800 = 0.143). Class 1: [12,10,52,50] 0.5."""
    scores, boxes = blank(1, 4, 2)
    put(scores, boxes, 0, 0, 0, [10, 10, 50, 50], 0.9)
    put(scores, boxes, 0, 1, 0, [12, 10, 52, 50], 0.6)
    put(scores, boxes, 0, 2, 1, [12, 10, 52, 50], 0.5)
    put(scores, boxes, 0, 3, 0, [40, 10, 80, 50], 0.4)
    return scores, boxes


def test_nms_suppresses_same_class_overlap_keeps_other_class():
    out_boxes, out_scores, out_labels = detect_from_scores(*nms_scene(), SIZE)
    expected = torch.tensor([[10.0, 10, 50, 50], [12, 10, 52, 50], [40, 10, 80, 50]])
    torch.testing.assert_close(out_boxes, expected)
    torch.testing.assert_close(out_scores, torch.tensor([0.9, 0.5, 0.4]))
    assert out_labels.tolist() == [0, 1, 0]


def test_nms_iou_threshold_is_respected():
    _, out_scores, out_labels = detect_from_scores(*nms_scene(), SIZE, nms_iou=0.95)
    torch.testing.assert_close(out_scores, torch.tensor([0.9, 0.6, 0.5, 0.4]))  # 0.905 < 0.95
    assert out_labels.tolist() == [0, 0, 1, 0]
    _, out_scores, _ = detect_from_scores(*nms_scene(), SIZE, nms_iou=0.1)  # 0.143 > 0.1
    torch.testing.assert_close(out_scores, torch.tensor([0.9, 0.5]))


def test_score_threshold_and_max_detections():
    scores, boxes = blank(1, 5, 1)
    for i, score in enumerate([0.3, 0.06, 0.04, 0.8, 0.5]):  # disjoint boxes, none suppressed
        put(scores, boxes, 0, i, 0, [20 * i, 0, 20 * i + 10, 10], score)
    _, out_scores, _ = detect_from_scores(scores, boxes, SIZE)
    torch.testing.assert_close(out_scores, torch.tensor([0.8, 0.5, 0.3, 0.06]))
    _, out_scores, _ = detect_from_scores(scores, boxes, SIZE, score_threshold=0.4)
    torch.testing.assert_close(out_scores, torch.tensor([0.8, 0.5]))
    out_boxes, out_scores, _ = detect_from_scores(scores, boxes, SIZE, max_detections=2)
    torch.testing.assert_close(out_scores, torch.tensor([0.8, 0.5]))
    torch.testing.assert_close(out_boxes, torch.tensor([[60.0, 0, 70, 10], [80, 0, 90, 10]]))
    assert_empty(detect_from_scores(scores, boxes, SIZE, max_detections=0))


@pytest.mark.parametrize("fusion", FUSIONS)
def test_boxes_clipped_to_image_and_outside_boxes_dropped(fusion):
    scores, boxes = blank(1, 2, 1)
    put(scores, boxes, 0, 0, 0, [-10, 20, 120, 130], 0.9)
    put(scores, boxes, 0, 1, 0, [85, 10, 95, 30], 0.8)  # entirely right of a width-80 image
    out_boxes, out_scores, _ = detect_from_scores(scores, boxes, (100, 80), fusion=fusion)
    torch.testing.assert_close(out_boxes, torch.tensor([[0.0, 20, 80, 100]]))
    torch.testing.assert_close(out_scores, torch.tensor([0.9]))


def test_labels_map_score_column_k_plus_1_to_label_k():
    scores, boxes = blank(1, 3, 3)
    put(scores, boxes, 0, 0, 2, [0, 0, 10, 10], 0.7)  # column 3
    put(scores, boxes, 0, 1, 0, [20, 0, 30, 10], 0.6)  # column 1
    put(scores, boxes, 0, 2, 1, [40, 0, 50, 10], 0.5)  # column 2
    scores[0, :, 0] = 0.99  # background is never a detection
    out_boxes, _, out_labels = detect_from_scores(scores, boxes, SIZE)
    assert out_labels.tolist() == [2, 0, 1]
    torch.testing.assert_close(out_boxes[0], torch.tensor([0.0, 0, 10, 10]))


# --------------------------------------------------------------------------- ensembles


def test_ensemble_of_two_models_averages_scores_and_boxes():
    scores, boxes = blank(2, 2, 2)
    put(scores, boxes, 0, 0, 0, [10, 10, 50, 50], 0.8)
    put(scores, boxes, 1, 0, 0, [20, 20, 60, 60], 0.4)
    put(scores, boxes, 0, 1, 1, [60, 60, 90, 90], 0.08)  # mean 0.04 < 0.05 although 0.08 passes
    put(scores, boxes, 1, 1, 1, [60, 60, 90, 90], 0.0)
    out_boxes, out_scores, out_labels = detect_from_scores(scores, boxes, SIZE)
    torch.testing.assert_close(out_boxes, torch.tensor([[15.0, 15, 55, 55]]))
    torch.testing.assert_close(out_scores, torch.tensor([0.6]))
    assert out_labels.tolist() == [0]


# --------------------------------------------------------------------------- box voting


def test_box_voting_is_the_score_weighted_mean_of_same_class_neighbours():
    scores, boxes = blank(1, 4, 2)
    put(scores, boxes, 0, 0, 0, [10, 10, 50, 50], 0.9)
    put(scores, boxes, 0, 1, 0, [14, 10, 54, 50], 0.3)  # IoU 0.818: suppressed, votes 0.25
    put(scores, boxes, 0, 2, 0, [30, 10, 70, 50], 0.3)  # IoU 0.333: suppressed, too far to vote
    put(scores, boxes, 0, 3, 1, [14, 10, 54, 50], 0.5)  # other class: must not vote for class 0
    out_boxes, out_scores, out_labels = detect_from_scores(scores, boxes, SIZE, fusion="vote")
    # 0.75 * [10, 10, 50, 50] + 0.25 * [14, 10, 54, 50]
    torch.testing.assert_close(out_boxes, torch.tensor([[11.0, 10, 51, 50], [14, 10, 54, 50]]))
    torch.testing.assert_close(out_scores, torch.tensor([0.9, 0.5]))  # the NMS winners' scores
    assert out_labels.tolist() == [0, 1]


def test_box_voting_pools_boxes_from_every_model():
    scores, boxes = blank(2, 1, 1)
    put(scores, boxes, 0, 0, 0, [10, 10, 50, 50], 0.9)
    put(scores, boxes, 1, 0, 0, [14, 10, 54, 50], 0.3)
    out_boxes, _, _ = detect_from_scores(scores, boxes, SIZE, fusion="nms")
    torch.testing.assert_close(out_boxes, torch.tensor([[12.0, 10, 52, 50]]))  # plain mean
    out_boxes, out_scores, _ = detect_from_scores(scores, boxes, SIZE, fusion="vote")
    torch.testing.assert_close(out_boxes, torch.tensor([[11.0, 10, 51, 50]]))  # 0.75 / 0.25
    torch.testing.assert_close(out_scores, torch.tensor([0.6]))  # averaged score


def test_box_voting_pool_uses_each_models_own_score_threshold():
    scores, boxes = blank(2, 1, 1)
    put(scores, boxes, 0, 0, 0, [10, 10, 50, 50], 0.9)
    put(scores, boxes, 1, 0, 0, [14, 10, 54, 50], 0.04)  # below 0.05: not in the pool
    out_boxes, out_scores, _ = detect_from_scores(scores, boxes, SIZE, fusion="vote")
    torch.testing.assert_close(out_boxes, torch.tensor([[10.0, 10, 50, 50]]))
    torch.testing.assert_close(out_scores, torch.tensor([0.47]))


def test_box_voting_single_model_without_neighbours_leaves_box_unchanged():
    scores, boxes = blank(1, 2, 1)
    put(scores, boxes, 0, 0, 0, [10.5, 20.25, 40.0, 60.75], 0.7)
    put(scores, boxes, 0, 1, 0, [60, 60, 90, 90], 0.6)
    nms = detect_from_scores(scores, boxes, SIZE, fusion="nms")
    vote = detect_from_scores(scores, boxes, SIZE, fusion="vote")
    for a, b in zip(nms, vote):
        assert torch.equal(a, b)
    torch.testing.assert_close(vote[0][0], torch.tensor([10.5, 20.25, 40.0, 60.75]))


@pytest.mark.parametrize("chunk", [1 << 22, 7])  # one IoU matrix, or many small chunks
def test_box_voting_matches_a_per_box_reference(monkeypatch, chunk):
    monkeypatch.setattr(ensemble, "_VOTE_CHUNK_ELEMENTS", chunk)
    gen = torch.Generator().manual_seed(0)
    xy = torch.rand(300, 2, generator=gen) * 60
    pool_boxes = torch.cat([xy, xy + 10 + torch.rand(300, 2, generator=gen) * 30], dim=1)
    pool_scores = torch.rand(300, generator=gen) - 0.2  # a few negative: weight 0
    pool_labels = torch.randint(0, 3, (300,), generator=gen)
    kept_boxes, kept_labels = pool_boxes[:8].clone() + 1.0, torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    kept_boxes[7] = torch.tensor([200.0, 200, 210, 210])  # no voter at all: unchanged
    voted = box_voting(kept_boxes, kept_labels, pool_boxes, pool_scores, pool_labels, vote_iou=0.4)
    for i in range(len(kept_boxes)):
        same = pool_labels == kept_labels[i]
        cand, w = pool_boxes[same], pool_scores[same].clamp(min=0)
        w = w * (box_iou(kept_boxes[i : i + 1], cand)[0] >= 0.4)
        expected = (w[:, None] * cand).sum(0) / w.sum() if w.sum() > 0 else kept_boxes[i]
        torch.testing.assert_close(voted[i], expected)
    assert torch.equal(voted[7], kept_boxes[7])


# --------------------------------------------------------------------------- WBF


def test_wbf_fuses_two_agreeing_models():
    scores, boxes = blank(2, 1, 1)
    put(scores, boxes, 0, 0, 0, [10, 10, 50, 50], 0.8)
    put(scores, boxes, 1, 0, 0, [14, 10, 54, 50], 0.8)
    out_boxes, out_scores, out_labels = detect_from_scores(scores, boxes, SIZE, fusion="wbf")
    torch.testing.assert_close(out_boxes, torch.tensor([[12.0, 10, 52, 50]]))
    torch.testing.assert_close(out_scores, torch.tensor([0.8]))
    assert out_labels.tolist() == [0]


def test_wbf_matches_ensemble_boxes_called_directly():
    height, width = 80, 120
    scores, boxes = blank(2, 3, 2)
    model_dets = [  # (proposal, label, box, score) per model
        [(0, 0, [10, 10, 50, 40], 0.9), (1, 0, [60, 20, 110, 70], 0.6),
         (2, 1, [5, 5, 30, 30], 0.3)],
        [(0, 0, [12, 8, 52, 42], 0.7), (1, 0, [58, 22, 112, 72], 0.5),
         (2, 1, [70, 5, 90, 30], 0.2)],
    ]
    scale = np.array([width, height, width, height], dtype=np.float64)
    lists = ([], [], [])
    for model, dets in enumerate(model_dets):
        for proposal, label, box, score in dets:
            put(scores, boxes, model, proposal, label, box, score)
        lists[0].append([np.array(box) / scale for _, _, box, _ in dets])
        lists[1].append([score for _, _, _, score in dets])
        lists[2].append([label for _, label, _, _ in dets])
    ref_boxes, ref_scores, ref_labels = weighted_boxes_fusion(
        *lists, iou_thr=0.55, skip_box_thr=0.05
    )
    out_boxes, out_scores, out_labels = detect_from_scores(
        scores, boxes, (height, width), fusion="wbf", max_detections=10
    )
    assert len(ref_scores) == 4  # two fused pairs + two lone class-1 boxes
    torch.testing.assert_close(out_boxes, torch.tensor(ref_boxes * scale, dtype=torch.float32))
    torch.testing.assert_close(out_scores, torch.tensor(ref_scores, dtype=torch.float32))
    assert out_labels.tolist() == ref_labels.astype(int).tolist()
    _, out_scores, _ = detect_from_scores(
        scores, boxes, (height, width), fusion="wbf", max_detections=2
    )
    torch.testing.assert_close(out_scores, torch.tensor(ref_scores[:2], dtype=torch.float32))


# --------------------------------------------------------------------------- edge cases, contract


@pytest.mark.parametrize("fusion", FUSIONS)
def test_empty_and_degenerate_inputs_give_empty_outputs(fusion):
    for k, c in ((1, 3), (3, 1)):  # N = 0 proposals
        no_proposals = torch.zeros(k, 0, c + 1), torch.zeros(k, 0, c, 4)
        assert_empty(detect_from_scores(*no_proposals, SIZE, fusion=fusion))
    scores, boxes = blank(2, 5, 3)
    boxes[..., 2:] = 20.0
    scores[..., 1:] = 0.01  # nothing passes 0.05
    assert_empty(detect_from_scores(scores, boxes, SIZE, fusion=fusion))
    scores, boxes = blank(1, 3, 1)  # C = 1, degenerate boxes with high scores
    put(scores, boxes, 0, 0, 0, [10, 10, 10, 40], 0.9)  # zero width
    put(scores, boxes, 0, 1, 0, [30, 30, 20, 20], 0.9)  # inverted
    put(scores, boxes, 0, 2, 0, [float("nan"), 0, 10, 10], 0.9)
    assert_empty(detect_from_scores(scores, boxes, SIZE, fusion=fusion))


@pytest.mark.parametrize("fusion", FUSIONS)
def test_single_class_outputs_dtypes_and_shapes(fusion):
    scores, boxes = blank(1, 1, 1)
    put(scores, boxes, 0, 0, 0, [1, 2, 30, 40], 0.9)
    out = detect_from_scores(scores.double(), boxes.double(), SIZE, fusion=fusion)
    out_boxes, out_scores, out_labels = out
    assert [t.dtype for t in out] == [torch.float32, torch.float32, torch.int64]
    torch.testing.assert_close(out_boxes, torch.tensor([[1.0, 2, 30, 40]]))
    assert out_labels.tolist() == [0]


def random_inputs(seed: int, k: int, n: int, c: int, sharpness: float):
    """Random softmax scores [K, N, C+1] and valid boxes [K, N, C, 4] inside a 125x125 area."""
    gen = torch.Generator().manual_seed(seed)
    scores = torch.softmax(torch.randn(k, n, c + 1, generator=gen) * sharpness, dim=-1)
    xy = torch.rand(k, n, c, 2, generator=gen) * 80
    return scores, torch.cat([xy, xy + 5 + torch.rand(k, n, c, 2, generator=gen) * 40], dim=-1)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_outputs_sorted_by_descending_score(fusion):
    k, n, c = 2, 300, 5
    scores, boxes = random_inputs(seed=1, k=k, n=n, c=c, sharpness=2)
    out = detect_from_scores(scores, boxes, SIZE, fusion=fusion, max_detections=50)
    out_boxes, out_scores, out_labels = out
    assert len(out_scores) == 50
    assert torch.all(out_scores[:-1] >= out_scores[1:])
    assert out_labels.min() >= 0 and out_labels.max() < c
    assert out_boxes.min() >= 0 and out_boxes.max() <= 100


def test_invalid_fusion_names_the_allowed_values():
    scores, boxes = blank(1, 1, 1)
    with pytest.raises(ValueError, match="nms, vote, wbf"):
        detect_from_scores(scores, boxes, SIZE, fusion="soft-nms")


def test_mismatched_shapes_state_the_expected_shapes():
    with pytest.raises(ValueError, match=r"\[K, N, C, 4\] = \[1, 4, 2, 4\]"):
        detect_from_scores(torch.zeros(1, 4, 3), torch.zeros(1, 4, 3, 4), SIZE)
    with pytest.raises(ValueError, match=r"\[K, N, C\+1\]"):
        detect_from_scores(torch.zeros(4, 3), torch.zeros(4, 2, 4), SIZE)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("fusion", FUSIONS)
def test_cuda_inputs_give_cuda_outputs_equal_to_cpu(fusion):
    scores, boxes = random_inputs(seed=2, k=2, n=500, c=20, sharpness=3)
    cpu = detect_from_scores(scores, boxes, SIZE, fusion=fusion)
    gpu = detect_from_scores(scores.cuda(), boxes.cuda(), SIZE, fusion=fusion)
    assert all(t.device.type == "cuda" for t in gpu)
    for a, b in zip(cpu, gpu):
        torch.testing.assert_close(a, b.cpu())
