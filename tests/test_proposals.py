"""Proposals: backends, post-processing, cache, sharded parallel extraction, CLI and report."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import proposals.cache as cache_module
from detector.common.errors import UserError
from detector.common.workers import parse_shard, shard
from detector.data.datasets import DatasetConfig, load_dataset
from proposals import propose, propose_with_config
from proposals.cache import cache_path, cached_proposals, default_cache_dir, load_or_compute
from proposals.config import ProposalConfig, backend_params, effective_max_boxes
from proposals.extract import extract
from proposals.report import best_overlaps, method_config, size_table, summarize
from proposals.search import postprocess

FAST = ProposalConfig(max_side=200, max_boxes=300)


def _blocks(height: int = 48, width: int = 64) -> np.ndarray:
    """A textured RGB image with two coloured rectangles, [H, W, 3] uint8."""
    rng = np.random.default_rng(1)
    image = rng.integers(90, 110, size=(height, width, 3), dtype=np.uint8)
    image[5:25, 8:30] = (220, 30, 30)
    image[28:44, 36:60] = (30, 30, 220)
    return image


def _image_files(folder: Path, count: int = 3) -> list[Path]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"img{i}.png"
        Image.fromarray(np.roll(_blocks(), 7 * i, axis=1)).save(path)
        paths.append(path)
    return paths


# --------------------------------------------------------------------------- backends


@pytest.mark.parametrize("method", ["opencv-fast", "opencv-quality", "selectivesearch"])
def test_backends_return_boxes_inside_the_image(method):
    boxes = propose(_blocks(), method)
    assert boxes.dtype == np.float32 and boxes.ndim == 2 and boxes.shape[1] == 4 and len(boxes) > 0
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    assert boxes.min() >= 0 and boxes[:, 2].max() <= 64 and boxes[:, 3].max() <= 48
    # the red block, continuous [8, 5, 30, 25], is found exactly
    assert best_overlaps(np.array([[8, 5, 30, 25]], np.float32), boxes)[0] == pytest.approx(1.0)


def test_opencv_ranking_is_reproducible_and_puts_large_regions_first():
    image = np.random.default_rng(0).integers(0, 255, (90, 120, 3), dtype=np.uint8)
    boxes = propose(image, "opencv-fast")
    assert np.array_equal(boxes, propose(image, "opencv-fast"))
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    tenth = len(boxes) // 10
    assert np.median(areas[:tenth]) > 4 * np.median(areas[-tenth:])


@pytest.mark.parametrize("shape", [(1, 1, 3), (3, 500, 3), (500, 3, 3), (1, 1)])
@pytest.mark.parametrize("method", ["opencv-fast", "selectivesearch"])
def test_tiny_images_give_an_empty_array(shape, method):
    boxes = propose_with_config(np.full(shape, 128, np.uint8), replace(FAST, method=method))
    assert boxes.shape == (0, 4) and boxes.dtype == np.float32


def test_grayscale_image_is_accepted():
    gray = _blocks()[:, :, 0]
    assert np.array_equal(propose(gray), propose(np.repeat(gray[:, :, None], 3, axis=2)))


def test_bad_method_and_parameter_are_rejected():
    with pytest.raises(UserError, match="nope"):
        propose(_blocks(), "nope")
    with pytest.raises(TypeError, match="scale"):
        propose(_blocks(), "opencv-fast", scale=3.0)
    with pytest.raises(UserError, match="proposals.preset"):
        backend_params(replace(FAST, preset="huge"))


def test_googlenet_preset_doubles_superpixel_sizes_and_gives_fewer_boxes():
    assert backend_params(replace(FAST, preset="googlenet")) == {"base_k": 100, "inc_k": 100, "sigma": 0.8}
    assert effective_max_boxes(replace(FAST, preset="googlenet")) == 180 == 0.6 * FAST.max_boxes
    assert backend_params(replace(FAST, method="selectivesearch", preset="googlenet")) == {
        "scale": 1000.0, "sigma": 0.8, "min_size": 40}
    image = np.random.default_rng(0).integers(0, 255, (90, 120, 3), dtype=np.uint8)
    fast = propose_with_config(image, replace(FAST, max_boxes=0))
    googlenet = propose_with_config(image, replace(FAST, max_boxes=0, preset="googlenet"))
    assert 0 < len(googlenet) < len(fast)


def test_large_images_are_searched_downscaled_and_boxes_scaled_back():
    small = _blocks()
    big = np.repeat(np.repeat(small, 2, axis=0), 2, axis=1)  # 96x128; INTER_AREA halving restores `small`
    searched_small = propose(big, max_side=64)
    assert np.array_equal(searched_small, 2 * propose(small, max_side=0))
    assert searched_small[:, 2].max() == 128 and searched_small[:, 3].max() == 96


# --------------------------------------------------------------------------- post-processing


def test_postprocess_clips_drops_small_and_duplicates_keeping_rank():
    boxes = np.array([
        [-5, -5, 30, 30],  # clipped to [0, 0, 30, 30]
        [10, 10, 14, 40],  # 4 px wide: small
        [0, 0, 30, 30],  # exact duplicate of the clipped first box
        [40, 40, 90, 90],  # clipped to [40, 40, 64, 48]: 8 px high, kept
        [0, 0, 30, 30.2],  # near-duplicate (IoU 0.993) of the first
        [5, 5, 25, 25],
    ], dtype=np.float32)
    out = postprocess(boxes, 48, 64, min_box_side=8, dedup_iou=0.98)
    np.testing.assert_array_equal(out, [[0, 0, 30, 30], [40, 40, 64, 48], [5, 5, 25, 25]])
    exact_only = postprocess(boxes, 48, 64, min_box_side=8, dedup_iou=1.0)
    assert len(exact_only) == 4 and exact_only[2].tolist() == pytest.approx([0, 0, 30, 30.2])


def test_postprocess_max_boxes_keeps_the_best_ranked_and_empty_input_is_empty():
    boxes = np.array([[i, i, i + 20, i + 20] for i in range(0, 25, 5)], dtype=np.float32)
    np.testing.assert_array_equal(postprocess(boxes, 100, 100, max_boxes=2), boxes[:2])
    assert postprocess(np.zeros((0, 4), np.float32), 10, 10).shape == (0, 4)


# --------------------------------------------------------------------------- cache


@pytest.fixture
def count_searches(monkeypatch):
    calls = []
    real = cache_module.propose_with_config

    def counting(image, config):
        calls.append(config)
        return real(image, config)

    monkeypatch.setattr(cache_module, "propose_with_config", counting)
    return calls


def test_cache_hit_skips_the_search(tmp_path, count_searches):
    (image,) = _image_files(tmp_path / "images", 1)
    first = load_or_compute(image, FAST, tmp_path / "cache")
    second = load_or_compute(image, FAST, tmp_path / "cache")
    assert (first.cached, second.cached, len(count_searches)) == (False, True, 1)
    np.testing.assert_array_equal(first.boxes, second.boxes)
    assert second.seconds == first.seconds > 0


def test_cache_is_keyed_by_content_and_parameters(tmp_path, count_searches):
    (image,) = _image_files(tmp_path / "images", 1)
    renamed = image.with_name("other-name.png")
    renamed.write_bytes(image.read_bytes())
    cached_proposals(image, FAST, tmp_path / "cache")
    cached_proposals(renamed, replace(FAST, cache_dir="elsewhere"), tmp_path / "cache")
    assert len(count_searches) == 1  # same bytes and boxes-relevant parameters: one search
    paths = {cache_path("ab" * 8, config, tmp_path) for config in (
        FAST, replace(FAST, base_k=60), replace(FAST, preset="googlenet"), replace(FAST, max_boxes=10),
        replace(FAST, method="selectivesearch"), replace(FAST, min_box_side=4.0))}
    assert len(paths) == 6
    # googlenet preset = k doubled and 60% of max_boxes by hand: the same boxes, hence the same file
    assert cache_path("ab" * 8, replace(FAST, preset="googlenet"), tmp_path) == cache_path(
        "ab" * 8, replace(FAST, base_k=100, inc_k=100, max_boxes=180), tmp_path)


@pytest.mark.parametrize("damage", ["garbage", "truncate", "wrong_key"])
def test_corrupt_cache_file_is_recomputed(tmp_path, count_searches, damage, caplog):
    (image,) = _image_files(tmp_path / "images", 1)
    good = cached_proposals(image, FAST, tmp_path / "cache")
    (path,) = (tmp_path / "cache").rglob("*.npz")
    if damage == "garbage":
        path.write_bytes(b"not a zip file")
    elif damage == "truncate":
        path.write_bytes(path.read_bytes()[:-40])
    else:
        np.savez_compressed(path, key=np.array("another key"), boxes=good[:1], seconds=np.float64(1))
    again = cached_proposals(image, FAST, tmp_path / "cache")
    np.testing.assert_array_equal(again, good)
    assert len(count_searches) == 2 and "recomputing" in caplog.text
    assert load_or_compute(image, FAST, tmp_path / "cache").cached  # rewritten intact


def test_default_cache_dir():
    class Like:
        proposals = ProposalConfig()
        run_dir = Path("runs/x")

    assert default_cache_dir(Like()) == Path("runs/x/proposals")
    Like.proposals = ProposalConfig(cache_dir="/data/cache")
    assert default_cache_dir(Like()) == Path("/data/cache")


# --------------------------------------------------------------------------- extraction


def test_shards_partition_the_images_exactly_once():
    items = list(range(17))
    for count in range(1, 6):
        parts = [shard(items, i, count) for i in range(count)]
        assert sorted(x for part in parts for x in part) == items
    assert shard(items, 1, 4) == [1, 5, 9, 13]
    assert parse_shard("2/5") == (2, 5)
    for bad in ("5/5", "-1/2", "1", "a/b", "0/0"):
        with pytest.raises(UserError, match="--shard"):
            parse_shard(bad)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_bad_image_is_reported_and_the_others_succeed(tmp_path, workers):
    paths = _image_files(tmp_path / "images", 3)
    broken = tmp_path / "images" / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    order = [paths[0], broken, paths[1], tmp_path / "missing.jpg", paths[2]]
    results = extract(order, FAST, tmp_path / "cache", workers=workers, keep_boxes=True, progress=False)
    assert [r.path for r in results] == order
    assert [bool(r.error) for r in results] == [False, True, False, True, False]
    assert "broken.jpg" in results[1].error and "missing.jpg" in results[3].error
    assert all(r.n_boxes == len(r.boxes) > 0 for r in results if not r.error)
    assert len(list((tmp_path / "cache").rglob("*.npz"))) == 3
    rerun = extract(paths, FAST, tmp_path / "cache", workers=workers, progress=False)
    assert all(r.cached for r in rerun)


# --------------------------------------------------------------------------- report


def test_recall_summary_on_known_boxes():
    from detector.data.datasets import ImageRecord
    from proposals.extract import ImageResult

    gt = np.array([[0, 0, 10, 10], [20, 20, 40, 40]], np.float32)
    record = ImageRecord("a", Path("a.jpg"), 50, 50, gt, np.array([0, 1]), np.array([False, False]))
    proposals = np.array([[0, 0, 10, 10], [20, 20, 40, 30]], np.float32)  # IoU 1.0 and 0.5
    result = ImageResult(path=Path("a.jpg"), n_boxes=2, seconds=0.5, boxes=proposals)
    s = summarize("x", FAST, [record], [result])
    assert (s.recall_50, s.recall_70, s.mabo, s.average_recall) == pytest.approx((1.0, 0.5, 0.75, 0.5))
    assert (s.boxes_per_image, s.seconds_per_image, s.objects) == (2, 0.5, 2)
    assert method_config("googlenet", FAST).preset == "googlenet"
    assert method_config("selectivesearch:googlenet", FAST).method == "selectivesearch"
    with pytest.raises(UserError, match="--methods"):
        method_config("fastest", FAST)


def test_recall_by_coco_object_size():
    from detector.data.datasets import ImageRecord
    from proposals.extract import ImageResult

    # areas: 100 (small), 31x33 = 1023 (small), 32x32 = 1024 (medium), 96x96 (large), 10x10 ignored
    gt = np.array([[0, 0, 10, 10], [0, 0, 31, 33], [50, 50, 82, 82], [100, 0, 196, 96], [0, 0, 10, 10]], np.float32)
    ignore = np.array([False, False, False, False, True])
    record = ImageRecord("a", Path("a.jpg"), 200, 200, gt, np.array([0, 1, 0, 1, 0]), ignore)
    proposals = np.array([[0, 0, 10, 10], [50, 50, 82, 66], [100, 0, 196, 96]], np.float32)  # IoU 1, 0.5, 1
    result = ImageResult(path=Path("a.jpg"), n_boxes=3, seconds=0.1, boxes=proposals)
    s = summarize("x", FAST, [record], [result])
    small, medium, large = (s.by_size[size] for size in ("small", "medium", "large"))
    assert (small["objects"], small["recall_50"], small["mabo"]) == (2, 0.5, pytest.approx((1 + 100 / 1023) / 2))
    assert (medium["objects"], medium["recall_50"], medium["recall_70"], medium["average_recall"]) == (1, 1, 0, 0)
    assert (large["objects"], large["recall_70"], large["average_recall"]) == (1, 1, 1)
    assert sum(f["objects"] for f in s.by_size.values()) == s.objects == 4
    table = size_table([s]).splitlines()
    assert table[0].startswith("| method | small objects | small recall@0.5 | small recall@0.7 | small AR |")
    assert table[2] == "| x | 2 | 50.0 | 50.0 | 50.0 | 1 | 100.0 | 0.0 | 0.0 | 1 | 100.0 | 100.0 | 100.0 |"
    empty = summarize("y", FAST, [record], [ImageResult(path=Path("a.jpg"), n_boxes=1, seconds=0.1, boxes=gt[:1])])
    assert "| y | 2 | 50.0 |" in size_table([empty])
    record.boxes, record.labels, record.ignore = gt[:1], np.array([0]), ignore[:1]  # no medium or large boxes
    assert size_table([summarize("z", FAST, [record], [result])]).endswith("| 0 | - | - | - | 0 | - | - | - |")


def test_recall_on_real_photos(animals_voc, tmp_path):
    data = DatasetConfig(root=str(animals_voc), classes=["raccoon", "kangaroo"])
    records = load_dataset(data, "test").records[:2]
    config = ProposalConfig()
    results = extract([r.path for r in records], config, tmp_path, keep_boxes=True, progress=False)
    summary = summarize("opencv-fast", config, records, results)
    assert summary.recall_50 == 1.0 and summary.boxes_per_image <= 2000


# --------------------------------------------------------------------------- command line


def _rcnn(*argv: str) -> int:
    from detector.cli import main

    return main(list(argv))


def test_cli_extracts_resumes_and_reports(tiny_voc, tmp_path, capsys):
    common = ("--config", "tiny", "--set", f"data.root={tiny_voc}", "--set", f"output_dir={tmp_path}",
              "--split", "test", "--workers", "1")
    assert _rcnn("proposals", *common, "--shard", "0/2") == 0
    assert "2 images, 2 computed, 0 already cached" in capsys.readouterr().out
    assert _rcnn("proposals", *common) == 0
    assert "4 images, 2 computed, 2 already cached, 0 failed" in capsys.readouterr().out
    assert (tmp_path / "proposals" / "runs" / "test-shard0of2" / "config.yaml").is_file()

    assert _rcnn("proposals", *common, "--report", "--methods", "opencv-fast,googlenet",
                 "--out", str(tmp_path / "report")) == 0
    out = capsys.readouterr().out
    assert "| opencv-fast | 4 |" in out and "| googlenet | 4 |" in out
    report = json.loads((tmp_path / "report" / "recall.json").read_text())
    assert [m["label"] for m in report["methods"]] == ["opencv-fast", "googlenet"]
    assert "| method | small objects |" in out
    by_size = report["methods"][0]["by_size"]
    assert sum(f["objects"] for f in by_size.values()) == report["methods"][0]["objects"]
    assert (tmp_path / "report" / "recall.png").stat().st_size > 0
    assert (tmp_path / "report" / "config.yaml").is_file()


@pytest.mark.parametrize("argv, message", [
    (("--shard", "2/2"), "--shard '2/2'"),
    (("--set", "proposals.method=fastest"), "proposals.method 'fastest'"),
    (("--report", "--methods", "nope"), "--methods entry 'nope'"),
])
def test_cli_bad_input_exits_2_with_one_line(tiny_voc, tmp_path, capsys, argv, message):
    code = _rcnn("proposals", "--config", "tiny", "--set", f"data.root={tiny_voc}",
                 "--set", f"output_dir={tmp_path}", "--split", "test", *argv)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err


def test_cli_bad_image_exits_2_after_storing_the_others(tmp_path, capsys):
    from tests.synthetic import make_voc_dataset

    root = make_voc_dataset(tmp_path / "voc", splits={"test": 3})
    (root / "JPEGImages" / "test_0001.jpg").write_bytes(b"garbage")
    code = _rcnn("proposals", "--config", "tiny", "--set", f"data.root={root}",
                 "--set", f"output_dir={tmp_path}", "--split", "test", "--workers", "1")
    err = capsys.readouterr().err
    assert code == 2 and "1 of 3 images failed" in err.splitlines()[-1] and "test_0001.jpg" in err
    assert len(list((tmp_path / "proposals").rglob("*.npz"))) == 2
