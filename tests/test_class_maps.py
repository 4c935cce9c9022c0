"""ImageNet-1k -> ILSVRC DET 200 / VOC 20 class maps: shipped data, tensor API, generator script."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch

from detector.modeling.class_maps import imagenet_class_map, map_imagenet_probs, target_class_names
from tests.conftest import REPO

CLASSES = REPO / "configs" / "classes"
SCRIPT = REPO / "scripts" / "build_class_maps.py"
DATA = REPO / "detector" / "data"
DATA_NOUN = Path("/usr/share/wordnet/data.noun")
TARGETS = ["ilsvrc_det200", "voc20"]
IMAGENET_WNIDS = [line.split("\t")[0] for line in (CLASSES / "imagenet1k.txt").read_text().splitlines()]


@pytest.fixture(scope="module")
def script() -> Iterator[ModuleType]:
    """scripts/build_class_maps.py imported as a module (registered so its dataclasses resolve)."""
    spec = importlib.util.spec_from_file_location("build_class_maps", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def mapped_to(target: str, imagenet_wnid: str) -> list[str]:
    """Ids of the target classes collecting an ImageNet class."""
    row = imagenet_class_map(target)[IMAGENET_WNIDS.index(imagenet_wnid)]
    ids, _ = target_class_names(target)
    return [ids[c] for c in row.nonzero().flatten().tolist()]


@pytest.mark.parametrize("imagenet, det, voc", [
    ("n02391049", "n02391049", None),  # zebra -> zebra; not a VOC horse
    ("n02123045", "n02121808", "cat"),  # tabby -> domestic cat
    ("n02690373", "n02691156", "aeroplane"),  # airliner -> airplane
    ("n04552348", None, "aeroplane"),  # warplane: not under WordNet's airplane, added for VOC
    ("n02099601", "n02084071", "dog"),  # golden retriever -> dog
    ("n02403003", "n02402425", "cow"),  # ox -> cattle
    ("n04310018", None, "train"),  # steam locomotive: a train member, added for VOC
    ("n10565667", "n00007846", "person"),  # scuba diver
    ("n01440764", None, None),  # tench: no target
])
def test_known_mappings(imagenet: str, det: str | None, voc: str | None) -> None:
    assert mapped_to("ilsvrc_det200", imagenet) == ([det] if det else [])
    assert mapped_to("voc20", imagenet) == ([voc] if voc else [])


@pytest.mark.parametrize("target, list_file", [("ilsvrc_det200", "ilsvrc_det200.txt"), ("voc20", "voc20.txt")])
def test_columns_follow_the_target_list(target: str, list_file: str) -> None:
    lines = (CLASSES / list_file).read_text().splitlines()
    ids, names = target_class_names(target)
    assert ids == [line.split("\t")[0] for line in lines]
    assert names == [line.split("\t")[-1] for line in lines]
    assert imagenet_class_map(target).shape == (1000, len(lines))


@pytest.mark.parametrize("target", TARGETS)
def test_each_imagenet_class_feeds_at_most_one_target(target: str) -> None:
    matrix = imagenet_class_map(target)
    assert matrix.dtype == torch.float32
    assert set(matrix.unique().tolist()) == {0.0, 1.0}
    assert (matrix.sum(dim=1) <= 1).all()
    assert (matrix.sum(dim=0) >= 1).all(), "every target class collects some ImageNet class"


@pytest.mark.parametrize("target", TARGETS)
def test_map_imagenet_probs(target: str) -> None:
    probs = torch.randn(5, 1000, generator=torch.Generator().manual_seed(0)).mul(3).softmax(dim=1)
    mapped = map_imagenet_probs(probs, target)
    matrix = imagenet_class_map(target)
    assert mapped.shape == (5, matrix.shape[1] + 1)
    torch.testing.assert_close(mapped.sum(dim=1), torch.ones(5))
    unmapped = matrix.sum(dim=1) == 0
    torch.testing.assert_close(mapped[:, 0], probs[:, unmapped].sum(dim=1))
    column = target_class_names(target)[0].index("n02084071" if target == "ilsvrc_det200" else "dog") + 1
    torch.testing.assert_close(mapped[:, column], probs[:, matrix[:, column - 1].bool()].sum(dim=1))


def test_all_mass_on_one_class() -> None:
    probs = torch.zeros(2, 1000)
    probs[0, IMAGENET_WNIDS.index("n02123045")] = 1.0  # tabby
    probs[1, IMAGENET_WNIDS.index("n01440764")] = 1.0  # tench
    mapped = map_imagenet_probs(probs, "voc20")
    cat = target_class_names("voc20")[0].index("cat") + 1
    assert mapped[0, cat] == 1.0 and mapped[0].sum() == 1.0
    assert mapped[1, 0] == 1.0 and mapped[1].sum() == 1.0


def test_unknown_target() -> None:
    with pytest.raises(ValueError, match="coco80"):
        imagenet_class_map("coco80")


def test_most_specific_target_wins(script: ModuleType) -> None:
    synsets = {  # entity <- animal <- dog <- terrier <- cairn; animal <- cat
        "n0": script.Synset(("entity",), ()),
        "n1": script.Synset(("animal",), ("n0",)),
        "n2": script.Synset(("dog",), ("n1",)),
        "n3": script.Synset(("terrier",), ("n2",)),
        "n4": script.Synset(("cairn",), ("n3",)),
        "n5": script.Synset(("cat",), ("n1",)),
    }
    targets = [script.Target(s, s, (s,)) for s in ("n1", "n2", "n5")]
    assert script.assign("n4", targets, synsets) == 1  # dog, not animal
    assert script.assign("n5", targets, synsets) == 2  # cat itself
    assert script.assign("n1", targets, synsets) == 0
    assert script.assign("n0", targets, synsets) is None


def test_parse_data_noun_reads_hypernym_pointers(script: ModuleType, tmp_path: Path) -> None:
    data_noun = tmp_path / "data.noun"
    data_noun.write_text(
        "  1 WordNet 3.0 Copyright 2006 by Princeton University.\n"
        "00000010 05 n 02 cairn 0 cairn_terrier 0 003 @ 00000020 n 0000 + 00000030 v 0101"
        " @i 00000040 n 0000 | a small terrier; gloss with @ 99999999 n 0000 | bars\n"
    )
    synsets = script.parse_data_noun(data_noun)
    assert synsets == {"n00000010": script.Synset(("cairn", "cairn_terrier"), ("n00000020", "n00000040"))}
    assert script.wordnet_version(data_noun) == "3.0"


@pytest.mark.skipif(not DATA_NOUN.is_file(), reason=f"needs WordNet 3.0 at {DATA_NOUN} (Debian: wordnet-base)")
def test_script_rebuilds_the_shipped_maps(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(SCRIPT), "--wordnet-dir", str(DATA_NOUN.parent), "--out", str(tmp_path)],
                   check=True, capture_output=True, text=True)
    for target in TARGETS:
        name = f"imagenet_to_{target}.json"
        assert (tmp_path / name).read_bytes() == (DATA / name).read_bytes(), name
