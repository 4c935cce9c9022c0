#!/usr/bin/env python3
"""Build the ImageNet-1k -> ILSVRC DET 200 / PASCAL VOC 20 class maps through WordNet 3.0.

The out-of-the-box ``detect`` model scores region proposals with torchvision's ImageNet-1k
GoogLeNet, whose 1000 class probabilities are mapped to detection classes with the maps this
script writes (``configs/classes/imagenet_to_{ilsvrc_det200,voc20}.json``, read by
``detector.modeling.class_maps``).

A target class collects an ImageNet class's probability when one of its WordNet synsets is the
ImageNet synset or one of its ancestors (transitive closure over the hypernym ``@`` and instance
hypernym ``@i`` pointers of ``data.noun``). When several targets qualify (nested targets such as
a general class and a more specific one), the probability goes to the most specific one only:
targets whose synset is an ancestor of another qualifying target's synset are dropped; if
unrelated targets remain (multiple inheritance), the nearest in hypernym steps wins, then the
first in list order. Each ImageNet class thus feeds at most one target, so the target
probabilities of one region sum to at most 1 and the rest is background.

ImageNet wnids are WordNet 3.0 noun offsets (``n01440764`` is the synset at byte offset
01440764 of ``data.noun``); the script checks the version and that each ImageNet class's
first lemma names its synset. Output is deterministic: re-running it reproduces the shipped
files byte for byte.

Usage: python scripts/build_class_maps.py [--wordnet-dir /usr/share/wordnet] [--out configs/classes]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IMAGENET_LIST = "configs/classes/imagenet1k.txt"
DET_LIST = "configs/classes/ilsvrc_det200.txt"
VOC_LIST = "configs/classes/voc20.txt"
HYPERNYM_POINTERS = frozenset({"@", "@i"})
WORDNET_VERSION = "3.0"

RULE = (
    "Target t collects ImageNet class i when a synset of t is i's synset or one of its WordNet "
    "hypernym ancestors (@ and @i, transitive). Each ImageNet class goes to its most specific "
    "such target only (targets that are ancestors of another qualifying target are dropped; "
    "then fewest hypernym steps, then list order), so a region's target probabilities sum to <= 1."
)

# WordNet 3.0 noun synsets of the PASCAL VOC classes. Several synsets where the VOC class is
# wider than any single synset (VOC labels what a photo shows, WordNet what a thing *is*).
VOC_SYNSETS: dict[str, tuple[str, ...]] = {
    # airplane (airliner) and warplane: WordNet puts warplane beside airplane, under
    # heavier-than-air craft; not airship, balloon or space shuttle
    "aeroplane": ("n02691156", "n04552348"),
    "bicycle": ("n02834778",),  # bicycle: mountain bike, bicycle-built-for-two
    "bird": ("n01503061",),  # bird: all ~60 ImageNet bird species
    # vessel/watercraft, not boat: VOC 'boat' includes ships (liner, container ship, schooner)
    "boat": ("n04530566",),
    "bottle": ("n02876657",),  # bottle: beer/wine/water/pop/pill bottle
    "bus": ("n02924116",),  # bus: school bus, trolleybus, minibus
    "car": ("n02958343",),  # car/automobile: cab, convertible, jeep, limousine, sports car, ...
    "cat": ("n02121808",),  # domestic cat: tabby, tiger cat, Persian, Siamese, Egyptian cat
    "chair": ("n03001627",),  # chair: barber chair, folding chair, rocking chair, throne
    "cow": ("n02402425",),  # cattle/cows/Bos taurus: ox (not water buffalo or bison)
    "diningtable": ("n03201208",),  # dining table: the ImageNet class itself
    "dog": ("n02084071",),  # dog/domestic dog: the 118 breeds (not wolves, foxes, hyenas)
    "horse": ("n02374451",),  # horse/Equus caballus: sorrel (not zebra)
    # motorcycle covers minibike and moped; motor scooter is a separate wheeled vehicle in
    # WordNet but VOC labels scooters 'motorbike'
    "motorbike": ("n03790512", "n03791053"),
    # person: ImageNet-1k has almost no person classes (scuba diver, groom, ballplayer)
    "person": ("n00007846",),
    # flowerpot: WordNet's houseplant/pot plant synsets have no ImageNet-1k hyponyms, while
    # ImageNet 'pot, flowerpot' images are potted plants
    "pottedplant": ("n03991062",),
    "sheep": ("n02411705",),  # sheep: ram, bighorn
    "sofa": ("n04256520",),  # sofa/couch: studio couch
    # train, plus locomotive and railway car: WordNet makes these train *members* (%m), not
    # hyponyms, but a VOC 'train' box is drawn around them
    "train": ("n04468005", "n03684823", "n02959942"),
    # television receiver; television system (ImageNet's 'television' class shows TV sets);
    # monitor and display (ImageNet 'monitor', 'screen, CRT screen')
    "tvmonitor": ("n04405907", "n04404412", "n03782006", "n03211117"),
}


@dataclass(frozen=True)
class Synset:
    """One WordNet noun synset: its words (underscores for spaces) and hypernym wnids."""

    words: tuple[str, ...]
    hypernyms: tuple[str, ...]


@dataclass(frozen=True)
class Target:
    """A detection class: identifier, display name and the WordNet synsets it stands for."""

    id: str
    name: str
    synsets: tuple[str, ...]


def parse_data_noun(path: Path) -> dict[str, Synset]:
    """Parse WordNet's ``data.noun`` into ``{wnid: Synset}``.

    A data line is ``offset lex_filenum ss_type w_cnt (word lex_id)*w_cnt p_cnt
    (symbol offset pos source/target)*p_cnt [frames] | gloss``, w_cnt in hex, p_cnt decimal.
    """
    synsets: dict[str, Synset] = {}
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.startswith("  "):  # licence header
                continue
            fields = line.split(" | ", 1)[0].split()
            word_count = int(fields[3], 16)
            words = tuple(fields[4 : 4 + 2 * word_count : 2])
            pointer_start = 5 + 2 * word_count
            pointer_count = int(fields[pointer_start - 1])
            pointers = [fields[start : start + 4] for start in range(pointer_start, pointer_start + 4 * pointer_count, 4)]
            hypernyms = tuple(f"n{offset}" for symbol, offset, pos, _ in pointers
                              if symbol in HYPERNYM_POINTERS and pos == "n")
            synsets[f"n{fields[0]}"] = Synset(words, hypernyms)
    return synsets


def wordnet_version(path: Path) -> str:
    """The version named in ``data.noun``'s licence header (``3.0``)."""
    with path.open(encoding="utf-8") as f:
        for line in f:
            if not line.startswith("  "):
                break
            match = re.search(r"WordNet (\d+\.\d+)", line)
            if match:
                return match.group(1)
    raise ValueError(f"{path}: no WordNet version in the header")


def ancestor_distances(wnid: str, synsets: dict[str, Synset]) -> dict[str, int]:
    """``{ancestor wnid: fewest hypernym steps}`` for a synset, including itself at 0."""
    distances = {wnid: 0}
    frontier = [wnid]
    while frontier:
        next_frontier = []
        for current in frontier:
            for parent in synsets[current].hypernyms:
                if parent not in distances:
                    distances[parent] = distances[current] + 1
                    next_frontier.append(parent)
        frontier = next_frontier
    return distances


def read_imagenet(path: Path, synsets: dict[str, Synset]) -> list[str]:
    """ImageNet wnids in class-index order, checked against WordNet (first lemma in the synset)."""
    wnids = []
    for index, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        wnid, lemmas = line.split("\t")
        if wnid not in synsets:
            raise ValueError(f"ImageNet class {index} {wnid} is not a WordNet {WORDNET_VERSION} noun synset")
        first_lemma = lemmas.split(", ")[0].replace(" ", "_").lower()
        if first_lemma not in {word.lower() for word in synsets[wnid].words}:
            raise ValueError(f"ImageNet class {index} {wnid} '{first_lemma}' not in WordNet's {synsets[wnid].words}")
        wnids.append(wnid)
    return wnids


def det_targets(path: Path) -> list[Target]:
    """ILSVRC DET classes (``wnid<TAB>name`` lines, devkit order); each is its own synset."""
    rows = [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines()]
    return [Target(wnid, name, (wnid,)) for wnid, name in rows]


def voc_targets(path: Path) -> list[Target]:
    """PASCAL VOC classes (one name a line, standard order) with their synsets from VOC_SYNSETS."""
    return [Target(name, name, VOC_SYNSETS[name]) for name in path.read_text(encoding="utf-8").split()]


def assign(wnid: str, targets: list[Target], synsets: dict[str, Synset]) -> int | None:
    """Index of the most specific target collecting ImageNet synset ``wnid`` (None if none does)."""
    distances = ancestor_distances(wnid, synsets)
    candidates = [(distances[s], t, s) for t, target in enumerate(targets) for s in target.synsets if s in distances]
    below = {a for _, _, s in candidates for a in ancestor_distances(s, synsets) if a != s}
    specific = [c for c in candidates if c[2] not in below]
    return min(specific)[1] if specific else None


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_map(name: str, list_file: str, targets: list[Target], imagenet: list[str], wordnet_dir: Path,
              synsets: dict[str, Synset]) -> dict:
    """The JSON document mapping ImageNet class indices to ``targets``."""
    collected: list[list[int]] = [[] for _ in targets]
    for index, wnid in enumerate(imagenet):
        target = assign(wnid, targets, synsets)
        if target is not None:
            collected[target].append(index)
    mapped = sum(len(indices) for indices in collected)
    data_noun = wordnet_dir / "data.noun"
    return {
        "target": name,
        "generator": "scripts/build_class_maps.py",
        "rule": RULE,
        "sources": {
            "imagenet": {"file": IMAGENET_LIST, "sha256": sha256(REPO / IMAGENET_LIST)},
            "target": {"file": list_file, "sha256": sha256(REPO / list_file)},
            "wordnet": {"file": "data.noun", "version": wordnet_version(data_noun), "sha256": sha256(data_noun)},
        },
        "num_imagenet_classes": len(imagenet),
        "num_imagenet_mapped": mapped,
        "num_imagenet_unmapped": len(imagenet) - mapped,
        "classes": [
            {"id": t.id, "name": t.name, "synsets": list(t.synsets), "imagenet_indices": indices}
            for t, indices in zip(targets, collected)
        ],
    }


def summarize(document: dict) -> str:
    """Coverage summary: ImageNet classes collected per target, and the targets collecting none."""
    classes = document["classes"]
    lines = [f"{document['target']}: {document['num_imagenet_mapped']} of {document['num_imagenet_classes']} "
             f"ImageNet classes mapped, {document['num_imagenet_unmapped']} to nothing"]
    lines += [f"  {len(c['imagenet_indices']):4d}  {c['id']}  {c['name']}" for c in classes]
    empty = [c["name"] for c in classes if not c["imagenet_indices"]]
    lines.append(f"  {len(empty)} target classes collect no ImageNet class: {', '.join(empty) or '-'}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wordnet-dir", type=Path, default=Path("/usr/share/wordnet"),
                        help="WordNet 3.0 dict directory holding data.noun (Debian: wordnet-base)")
    parser.add_argument("--out", type=Path, default=REPO / "configs" / "classes", help="output directory")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    data_noun = args.wordnet_dir / "data.noun"
    if wordnet_version(data_noun) != WORDNET_VERSION:
        raise SystemExit(f"{data_noun}: ImageNet wnids are WordNet {WORDNET_VERSION} offsets")
    synsets = parse_data_noun(data_noun)
    imagenet = read_imagenet(REPO / IMAGENET_LIST, synsets)
    jobs = [("ilsvrc_det200", DET_LIST, det_targets(REPO / DET_LIST)),
            ("voc20", VOC_LIST, voc_targets(REPO / VOC_LIST))]
    args.out.mkdir(parents=True, exist_ok=True)
    for name, list_file, targets in jobs:
        document = build_map(name, list_file, targets, imagenet, args.wordnet_dir, synsets)
        (args.out / f"imagenet_to_{name}.json").write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
        print(summarize(document))


if __name__ == "__main__":
    main()
