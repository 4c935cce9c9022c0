"""The GoogLeNet paper's classification test protocol (Szegedy et al. 2014, Sect. 7, Table 3):
softmax probabilities averaged over 1, 10 or 144 crops per image (detector.data.transforms.TEST_CROPS)
and over an ensemble of models, scored as top-1 / top-5 error.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from detector.common.errors import UserError
from detector.common.precision import Precision
from detector.data.classification import ClassificationSamples, make_loader
from detector.data.imagefolder import ImageFolder
from detector.data.transforms import TEST_CROPS, EvalCrops, read_rgb
from detector.inference.ensemble import Ensemble, crop_probabilities

CROPS_PER_BATCH = 288  #: crops per forward pass (images per batch = this // crops per image)


def evaluate(ensemble: Ensemble, folder: ImageFolder, crops: int, precision: Precision, workers: int = 2,
             limit: int = 0) -> dict[str, float]:
    """Top-1 / top-5 error (fractions) of the ensemble on `folder` with `crops` crops per image,
    and the network's cost in ms per image; `limit` > 0 scores that many images spread evenly
    over the (class-sorted) list."""
    if crops not in TEST_CROPS:
        raise UserError(f"crops {crops}: expected one of {', '.join(map(str, TEST_CROPS))}")
    if folder.classes != ensemble.classes:
        raise UserError(f"{folder.root}: classes {folder.classes[:5]}... differ from the model's {ensemble.classes[:5]}...")
    samples = ClassificationSamples(folder, EvalCrops(crops, ensemble.input_size), seed=0)
    indices = _spread(len(folder), limit)
    per_batch = max(1, CROPS_PER_BATCH // crops)
    batches = [[(0, i) for i in indices[start:start + per_batch]] for start in range(0, len(indices), per_batch)]
    errors1 = errors5 = 0
    network_seconds = 0.0
    for images, labels in make_loader(samples, batches, workers, 0):
        start = time.perf_counter()
        probabilities = crop_probabilities(ensemble, images, precision)
        network_seconds += time.perf_counter() - start
        top5 = probabilities.topk(min(5, probabilities.shape[1]), dim=1).indices
        errors1 += int((top5[:, 0] != labels).sum())
        errors5 += int((top5 != labels[:, None]).all(1).sum())
    count = len(indices)
    return {"images": count, "top1_error": errors1 / count, "top5_error": errors5 / count,
            "ms_per_image": 1000 * network_seconds / count}


def _spread(size: int, limit: int) -> list[int]:
    """All indices, or `limit` of them evenly spaced (every class of a sorted list represented)."""
    if limit <= 0 or limit >= size:
        return list(range(size))
    return [int(i * size / limit) for i in range(limit)]


def top_classes(ensemble: Ensemble, image_path: str | Path, precision: Precision, crops: int = 10,
                k: int = 5) -> list[tuple[str, float]]:
    """The k most probable (display name, probability) of one image."""
    image = torch.from_numpy(EvalCrops(crops, ensemble.input_size)(read_rgb(image_path))).movedim(-1, -3)
    probabilities = crop_probabilities(ensemble, image[None], precision)[0]
    values, indices = probabilities.topk(min(k, len(ensemble.classes)))
    return [(ensemble.display_names[i], float(v)) for v, i in zip(values, indices)]
