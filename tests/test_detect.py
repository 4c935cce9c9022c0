"""Inference: the Detector, ensembles, the default ImageNet model, `detect` and `rcnn eval`."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.models import googlenet

from detector.cli import detect_main, main
from detector.common.errors import UserError
from detector.config import load_config
from detector.data.images import load_image
from detector.inference.detector import Detector
from detector.inference.scorers import FineTunedScorer
from detector.modeling.build import build_model
from detector.modeling.checkpoint import save_checkpoint


def _checkpoint(path: Path, classes=("square", "disc"), seed=0, input_size=64, score_bias=None) -> Path:
    """A randomly initialised checkpoint. Its trunk's features are ~0, so every region scores about
    softmax(class-score bias): 1 / (C + 1) each, or softmax(`score_bias` [C + 1]) when given."""
    torch.manual_seed(seed)
    model = build_model(len(classes))
    if score_bias is not None:
        model.cls_score.bias.data = torch.tensor(score_bias)
    config = {"model": {"input_size": input_size, "context_pad": 4}}
    save_checkpoint(path, {"model": model.state_dict(), "classes": list(classes), "config": config})
    return path


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return _checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt")


@pytest.fixture(scope="module")
def spread_weights(tmp_path_factory) -> Path:
    """Every region scores square 0.665, disc 0.090 (background 0.245)."""
    return _checkpoint(tmp_path_factory.mktemp("ckpt") / "spread.pt", score_bias=[0.0, 1.0, -1.0])


def _config(tiny_voc, *extra):
    return load_config("tiny", [f"data.root={tiny_voc}", "test.score_threshold=0.0", *extra])


def test_detector_outputs(tiny_voc, weights):
    detector = Detector.from_weights([str(weights)], _config(tiny_voc, "proposals.max_boxes=40"))
    result = detector.detect(tiny_voc / "JPEGImages" / "test_0000.jpg")
    assert result.boxes.dtype == np.float32 and result.boxes.shape[1] == 4
    assert len(result.boxes) == len(result.scores) == len(result.labels) == len(result.names) > 0
    assert set(result.names) <= {"square", "disc"} and (np.diff(result.scores) <= 0).all()
    assert (result.boxes[:, 0] >= 0).all() and (result.boxes[:, 2] <= 160).all()
    assert set(result.timing) == {"proposals_s", "regions_s", "postprocess_s"}


def test_zero_proposals_give_no_detections(tiny_voc, weights):
    detector = Detector.from_weights([str(weights)], _config(tiny_voc))
    image = load_image(tiny_voc / "JPEGImages" / "test_0000.jpg")
    result = detector.detect(image, proposals=np.zeros((0, 4), np.float32))
    assert result.boxes.shape == (0, 4) and result.names == []


def test_max_proposals_scores_the_best_ranked_first(tiny_voc, weights, monkeypatch):
    detector = Detector.from_weights([str(weights)], _config(tiny_voc, "test.max_proposals=2"))
    scored = []
    score = detector.score
    monkeypatch.setattr(detector, "score", lambda image, proposals: scored.append(proposals) or score(image, proposals))
    proposals = np.array([[10, 10, 60, 60], [50, 20, 120, 100], [0, 0, 30, 30]], np.float32)
    detector.detect(tiny_voc / "JPEGImages" / "test_0000.jpg", proposals=proposals)
    np.testing.assert_array_equal(scored[0], proposals[:2])
    with pytest.raises(UserError, match="test.max_proposals"):
        Detector.from_weights([str(weights)], _config(tiny_voc, "test.max_proposals=-1"))


def test_overlapped_warps_score_like_sequential_ones(tiny_voc, weights):
    detector = Detector.from_weights([str(weights)], _config(tiny_voc, "test.batch_size=3", "test.flip=true"))
    image = load_image(tiny_voc / "JPEGImages" / "test_0000.jpg")
    proposals = np.array([[10, 10, 60, 60], [50, 20, 120, 100], [0, 0, 30, 30], [5, 40, 150, 110],
                          [70, 5, 90, 60], [20, 20, 140, 100], [0, 0, 159, 119]], np.float32)
    assert not detector.overlap_warps  # on a CPU the network already uses every core
    detector.overlap_warps = True
    overlapped = detector.score(image, proposals)
    detector.overlap_warps = False
    sequential = detector.score(image, proposals)
    assert overlapped[0].shape == (2, 7, 3)  # the model and its flipped copy, 3 chunks of regions
    for a, b in zip(overlapped, sequential):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_ensemble_scores_are_the_member_average(tiny_voc, tmp_path, weights):
    other = _checkpoint(tmp_path / "other.pt", seed=1)
    config = _config(tiny_voc)
    image = load_image(tiny_voc / "JPEGImages" / "test_0001.jpg")
    proposals = np.array([[10, 10, 60, 60], [50, 20, 120, 100]], np.float32)
    single = [Detector.from_weights([str(w)], config).score(image, proposals)[0] for w in (weights, other)]
    ensemble_scores, ensemble_boxes = Detector.from_weights([str(weights), str(other)], config).score(image, proposals)
    assert ensemble_scores.shape == (2, 2, 3) and ensemble_boxes.shape == (2, 2, 2, 4)
    assert torch.allclose(ensemble_scores[0], single[0][0], atol=1e-5)
    assert torch.allclose(ensemble_scores[1], single[1][0], atol=1e-5)
    flip = Detector.from_weights([str(weights)], _config(tiny_voc, "test.flip=true", "test.fusion=vote"))
    assert flip.score(image, proposals)[0].shape == (2, 2, 3)  # the flipped view is one more member
    assert len(flip.detect(image, proposals).boxes) > 0


def test_ensemble_with_different_classes_is_refused(tmp_path, weights):
    other = _checkpoint(tmp_path / "cats.pt", classes=("cat", "dog"))
    with pytest.raises(UserError, match="ensemble members disagree on classes"):
        Detector([FineTunedScorer.from_checkpoint(str(weights)), FineTunedScorer.from_checkpoint(str(other))],
                 load_config("tiny").proposals, load_config("tiny").test)


def test_imagenet_default_model_maps_to_det_classes(tiny_voc, tmp_path, monkeypatch):
    """With torchvision's weights file in the hub cache (here random weights), no --weights needed."""
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    torch.save(googlenet(weights=None, aux_logits=True, init_weights=True).state_dict(), hub / "googlenet-1378be20.pth")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("RCNN_WEIGHTS", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    detector = Detector.from_weights([], load_config("tiny", ["proposals.max_boxes=16"]), imagenet_target="voc20")
    assert len(detector.classes) == 20 and detector.classes[-1] == "tvmonitor"
    scores, _ = detector.score(load_image(tiny_voc / "JPEGImages" / "test_0000.jpg"), np.array([[0, 0, 80, 80]], np.float32))
    assert scores.shape == (1, 1, 21) and torch.allclose(scores.sum(-1), torch.ones(1, 1), atol=1e-4)


def test_detect_without_weights_offline_says_how_to_get_them(tiny_voc, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    monkeypatch.delenv("RCNN_WEIGHTS", raising=False)
    from torchvision.models import GoogLeNet_Weights

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(type(GoogLeNet_Weights.IMAGENET1K_V1), "get_state_dict", offline)
    assert detect_main([str(tiny_voc / "JPEGImages" / "test_0000.jpg")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--weights" in err[0] and "RCNN_WEIGHTS" in err[0]


def test_detect_cli_folder_with_a_bad_file(tiny_voc, tmp_path, weights, capsys):
    images = tmp_path / "images"
    images.mkdir()
    for name in ("test_0000.jpg", "test_0001.jpg"):
        (images / name).write_bytes((tiny_voc / "JPEGImages" / name).read_bytes())
    (images / "broken.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "out"
    code = detect_main([str(images), "--weights", str(weights), "--out", str(out), "--coco-json", str(out / "coco.json"),
                        "--save-format", "coco", "--set", "proposals.max_boxes=30", "--score-threshold", "0"])
    captured = capsys.readouterr()
    assert code == 1  # some input failed; the others were processed
    assert "broken.jpg: cannot read image" in captured.err
    assert "test_0000.jpg:" in captured.out and ("square" in captured.out or "disc" in captured.out)
    for name in ("test_0000.jpg", "test_0000.json", "test_0001.jpg", "coco.json"):
        assert (out / name).is_file()
    payload = json.loads((out / "test_0000.json").read_text())
    assert payload["detections"] and set(payload["detections"][0]) == {"class", "label", "score", "box_xyxy"}
    coco = json.loads((out / "coco.json").read_text())
    assert coco and set(coco[0]) == {"image_id", "category_id", "bbox", "score"}
    assert {entry["image_id"] for entry in coco} == {"test_0000", "test_0001"}  # the file stems
    assert coco == json.loads((out / "detections_test_rcnn_results.json").read_text())  # as --save-format coco


def _printed_scores(out: str) -> list[float]:
    return [float(line.split()[1]) for line in out.splitlines() if line.startswith("  ")]


def test_detect_prints_and_draws_above_the_display_threshold_and_saves_everything(
        tiny_voc, tmp_path, spread_weights, capsys, monkeypatch):
    import eval.draw

    drawn = []
    draw = eval.draw.draw_detections
    monkeypatch.setattr(eval.draw, "draw_detections", lambda image, boxes, scores, *rest: drawn.append(scores)
                        or draw(image, boxes, scores, *rest))
    out = tmp_path / "out"
    base = [str(tiny_voc / "JPEGImages" / "test_0000.jpg"), "--weights", str(spread_weights), "--out", str(out),
            "--set", "proposals.max_boxes=30", "--coco-json", str(out / "coco.json")]
    assert detect_main(base) == 0
    printed = capsys.readouterr().out
    saved = json.loads((out / "test_0000.json").read_text())["detections"]
    squares = [d["score"] for d in saved if d["class"] == "square"]
    assert squares and {d["score"] for d in saved} == {0.66524, 0.09003}  # down to test.score_threshold 0.05
    assert f"shown of {len(saved)} (score >= 0.25, at most 10)" in printed
    assert _printed_scores(printed) == [0.665] * min(len(squares), 10) and "disc" not in printed
    assert drawn[-1].tolist() == pytest.approx([0.66524] * min(len(squares), 10), abs=1e-5)
    coco_scores = sorted(d["score"] for d in json.loads((out / "coco.json").read_text()))  # full precision
    assert coco_scores == pytest.approx(sorted(d["score"] for d in saved), abs=5e-6)  # the JSON's are rounded
    assert detect_main([*base, "--max-detections", "1", "--score-threshold", "0"]) == 0
    assert _printed_scores(capsys.readouterr().out) == [0.665] and len(drawn[-1]) == 1


def test_display_threshold_below_test_score_threshold_lowers_it(tiny_voc, spread_weights, capsys):
    base = [str(tiny_voc / "JPEGImages" / "test_0000.jpg"), "--weights", str(spread_weights), "--json",
            "--set", "proposals.max_boxes=30", "--set", "test.score_threshold=0.5"]
    assert detect_main(base) == 0
    assert {d["class"] for d in json.loads(capsys.readouterr().out)["detections"]} == {"square"}
    assert detect_main([*base, "--score-threshold", "0.05"]) == 0
    assert {d["class"] for d in json.loads(capsys.readouterr().out)["detections"]} == {"square", "disc"}


def test_max_detections_below_one_is_refused(tiny_voc, weights, capsys):
    image = str(tiny_voc / "JPEGImages" / "test_0000.jpg")
    assert detect_main([image, "--weights", str(weights), "--max-detections", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--max-detections 0: expected at least 1" in err[0]


def test_output_path_that_is_a_file(tiny_voc, tmp_path, weights, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert detect_main([str(tiny_voc / "JPEGImages" / "test_0000.jpg"), "--weights", str(weights), "--out", str(blocker / "x")]) == 2
    assert "output folder is not writable" in capsys.readouterr().err


def test_rcnn_eval_runs_the_model_sharded_then_merged(tiny_voc, tmp_path, weights, capsys):
    base = ["--config", "tiny", "--set", f"data.root={tiny_voc}", "--set", f"output_dir={tmp_path / 'run'}",
            "--set", "proposals.max_boxes=30", "--weights", str(weights)]
    assert main(["eval", *base, "--shard", "0/2"]) == 0
    assert main(["eval", *base, "--shard", "1/2"]) == 0
    cached = list((tmp_path / "run" / "detections").rglob("*.npz"))
    assert len(cached) == 4  # every test image once, across the two shards
    assert main(["eval", *base]) == 0
    out = capsys.readouterr().out
    assert "mAP (voc10)" in out
    metrics = json.loads((tmp_path / "run" / "eval" / "test" / "metrics.json").read_text())
    assert 0.0 <= metrics["mAP"] <= 1.0
    assert (tmp_path / "run" / "detections_test.npz").is_file()
    with pytest.raises(SystemExit):
        main(["eval", *base, "--shard", "2/2", "--metric", "nonsense"])


def test_detector_is_importable_from_the_package():
    from detector import Detector as exported

    assert exported is Detector
