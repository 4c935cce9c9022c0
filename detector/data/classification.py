"""Image classification samples for pre-training and the crop tests: seeded per-sample
transforms, epoch batch samplers that resume mid-epoch and split global batches over ranks,
and DataLoaders whose workers run on one core each and end with their parent."""
from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from detector.common.distributed import DistContext
from detector.common.errors import UserError
from detector.common.workers import loader_processes
from detector.data.imagefolder import ImageFolder
from detector.data.transforms import read_rgb


class ClassificationSamples(Dataset):
    """``samples[(epoch, index)] -> (image [3, S, S] uint8, label)``: the index-th image,
    transformed with a generator seeded by (seed, epoch, index). A transform that returns K
    crops [K, S, S, 3] gives [K, 3, S, S]."""

    def __init__(self, folder: ImageFolder, transform: Callable[[np.ndarray, np.random.Generator], np.ndarray],
                 seed: int) -> None:
        self.folder = folder
        self.transform = transform
        self.seed = seed

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int]:
        epoch, index = key
        path, label = self.folder.samples[index]
        image = self.transform(read_rgb(path), np.random.default_rng([self.seed, epoch, index]))
        return torch.from_numpy(image).movedim(-1, -3), label


class EpochBatches:
    """Batch sampler of one epoch: a permutation seeded by (seed, epoch), cut into global batches
    of batch_size x world_size (the incomplete last one dropped); this rank takes its slice of
    each, starting at batch `start`."""

    def __init__(self, size: int, batch_size: int, epoch: int, seed: int, context: DistContext, start: int = 0,
                 shuffle: bool = True, drop_last: bool = True) -> None:
        self.size, self.batch_size, self.epoch, self.seed = size, batch_size, epoch, seed
        self.context, self.start, self.shuffle, self.drop_last = context, start, shuffle, drop_last

    def __len__(self) -> int:
        global_batch = self.batch_size * self.context.world_size
        return (self.size if self.drop_last else self.size + global_batch - 1) // global_batch - self.start

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order = (torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed * 100003 + self.epoch))
                 if self.shuffle else torch.arange(self.size))
        global_batch = self.batch_size * self.context.world_size
        for batch in range(self.start, self.start + len(self)):
            first = batch * global_batch + self.context.rank * self.batch_size
            yield [(self.epoch, int(i)) for i in order[first:first + self.batch_size]]


def make_loader(samples: ClassificationSamples, batches, workers: int, seed: int) -> DataLoader:
    """A DataLoader over `batches` that never touches the global RNG (dropout stays reproducible),
    with one-core workers from a forkserver (:func:`detector.common.workers.loader_processes`)."""
    return DataLoader(samples, batch_sampler=batches, prefetch_factor=4 if workers else None,
                      generator=torch.Generator().manual_seed(seed), **loader_processes(workers, __name__))


def one_line(exc: UserError) -> UserError:
    """A UserError raised in a DataLoader worker arrives with the worker's traceback in its
    message; keep the original message (its last line) only."""
    last = str(exc).strip().splitlines()[-1]
    return type(exc)(last.split(": ", 1)[1] if last.startswith(("detector.common.errors.", "UserError")) else last)
