"""Box ops: conventions and the R-CNN delta parametrisation."""
import numpy as np
import torch

from detector.data.box_formats import voc_to_xyxy, xywh_to_xyxy, xyxy_to_voc, xyxy_to_xywh, xyxy_to_yolo, yolo_to_xyxy
from detector.data.boxes import clip_boxes
from detector.modeling.box_regression import decode_deltas, encode_deltas


def test_voc_inclusive_pixels_round_trip():
    voc = np.array([[1, 1, 10, 20]])
    xyxy = voc_to_xyxy(voc)
    assert xyxy.tolist() == [[0, 0, 10, 20]]  # width 10 = 10 - 1 + 1, the devkit's count
    assert xyxy_to_voc(xyxy).tolist() == voc.tolist()


def test_coco_xywh_round_trip():
    xywh = np.array([[5.5, 2.0, 10.0, 4.0]])
    assert xywh_to_xyxy(xywh).tolist() == [[5.5, 2.0, 15.5, 6.0]]
    assert np.allclose(xyxy_to_xywh(xywh_to_xyxy(xywh)), xywh)


def test_encode_decode_round_trip():
    gen = torch.Generator().manual_seed(0)
    proposals = torch.rand(50, 2, generator=gen) * 100
    proposals = torch.cat([proposals, proposals + 5 + torch.rand(50, 2, generator=gen) * 80], 1)
    targets = proposals + torch.randn(50, 4, generator=gen) * 3
    deltas = encode_deltas(proposals, targets)
    assert torch.allclose(decode_deltas(proposals, deltas), targets, atol=1e-3)


def test_known_deltas():
    proposal = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    target = torch.tensor([[5.0, 0.0, 15.0, 20.0]])  # shifted half a width, twice as tall
    deltas = encode_deltas(proposal, target, weights=(1, 1, 1, 1))
    assert torch.allclose(deltas, torch.tensor([[0.5, 0.5, 0.0, float(np.log(2))]]))


def test_decode_class_specific_columns_and_clamp():
    proposals = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    deltas = torch.zeros(1, 8)
    deltas[0, 6] = 1000.0  # absurd width change of class 1 is clamped, not inf
    boxes = decode_deltas(proposals, deltas)
    assert boxes.shape == (1, 8) and torch.isfinite(boxes).all()
    assert boxes[0, :4].tolist() == [0, 0, 10, 10]


def test_clip():
    boxes = torch.tensor([[-5.0, -5.0, 50.0, 8.0]])
    assert clip_boxes(boxes, height=10, width=20).tolist() == [[0, 0, 20, 8]]


def test_hflip_numpy_and_torch_agree():
    from detector.data.boxes import hflip_boxes

    boxes = np.array([[10.0, 2.0, 30.0, 8.0]], np.float32)
    assert hflip_boxes(boxes, 100).tolist() == [[70.0, 2.0, 90.0, 8.0]]
    assert hflip_boxes(torch.from_numpy(boxes), 100).tolist() == [[70.0, 2.0, 90.0, 8.0]]
    assert hflip_boxes(boxes, 100).dtype == np.float32


def test_yolo_normalised_centres_round_trip():
    sizes = np.array([200, 100, 200, 100])
    yolo = np.array([[0.5, 0.5, 0.2, 0.4], [0.1, 0.9, 0.2, 0.2]])
    xyxy = yolo_to_xyxy(yolo, sizes)
    assert np.allclose(xyxy, [[80, 30, 120, 70], [0, 80, 40, 100]])
    assert np.allclose(xyxy_to_yolo(xyxy, sizes), yolo)
