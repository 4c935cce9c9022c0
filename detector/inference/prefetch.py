"""Overlap input preparation with the network: ``prefetched(fn, items)`` computes ``fn`` of the
next items ahead of the caller, in a background thread or in a pool of worker processes, while
the caller works on the current one; results come in input order.

A thread is worth it because the slow preparation steps release the GIL: OpenCV's selective
search, image decoding and torchvision's ``roi_align`` warps run while PyTorch runs the network.
Worker processes go further: with the light head, selective search costs several times the
network, so one thread beside the network still leaves the proposals as the bottleneck, while
a pool spreads them over every core (``test.proposal_workers``, :func:`proposal_workers`).
"""
from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from itertools import islice
from typing import TypeVar

import torch

from detector.common.errors import UserError
from detector.common.workers import default_workers, worker_pool

#: auto starts workers for at least this many images per core: below, the one-off start of the
#: worker server (a fresh interpreter importing torch and OpenCV, 1.5-3 s on 2 cores) costs more
#: than the workers save (about 0.4 s per image with the light head on 2 cores)
AUTO_IMAGES_PER_WORKER = 4
Item = TypeVar("Item")
Result = TypeVar("Result")


def prefetched(function: Callable[[Item], Result], items: Iterable[Item], ahead: int = 1,
               workers: int = 0) -> Iterator[Result]:
    """``function(item)`` for each item, in order, computed up to `ahead` items before the
    caller asks for it: in one background thread (torch ops in inference mode) when `workers`
    is 0, else in a pool of that many one-core processes (`function` and the items must pickle).
    An exception raised by ``function`` is raised here when its item's turn comes. Close the
    iterator (``contextlib.closing``) when leaving it early: that kills and joins the workers."""
    if workers:
        # the worker server imports the module of what the workers run, once
        pool, call = worker_pool(workers, getattr(function, "func", function).__module__), function
    else:
        pool, call = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch"), _in_inference_mode(function)
    with pool as executor:
        yield from _in_order(executor, call, iter(items), max(1, ahead))


def _in_order(executor: Executor, call: Callable[[Item], Result], items: Iterator[Item],
              ahead: int) -> Iterator[Result]:
    """Results of `call` over `items`, in order, with at most `ahead` submitted and not yet taken."""
    pending = deque(executor.submit(call, item) for item in islice(items, ahead))
    while pending:
        result = pending.popleft().result()
        pending.extend(executor.submit(call, item) for item in islice(items, 1))  # refill while the caller works
        yield result


def _in_inference_mode(function: Callable[[Item], Result]) -> Callable[[Item], Result]:
    def call(item: Item) -> Result:
        with torch.inference_mode():
            return function(item)
    return call


def proposal_workers(setting: int, light_network: bool, images: int) -> int:
    """Processes that compute proposals ahead of the network for `images` images: `setting`
    (``test.proposal_workers``; 0 = none, the in-thread path), never more than `images` and
    none for one image. With -1 (auto): every core when the network is light (shared-feature /
    roi mode, where selective search is most of an image's time) and there are at least
    :data:`AUTO_IMAGES_PER_WORKER` images per core; else none (crop mode: the network needs
    the cores, and one thread computing the next image's proposals keeps up with it)."""
    if setting < -1:
        raise UserError(f"test.proposal_workers = {setting}: expected -1 (auto), 0 (none) or a count")
    if setting == -1:
        cores = default_workers()
        setting = cores if light_network and images >= AUTO_IMAGES_PER_WORKER * cores else 0
    return min(setting, images) if images > 1 else 0


def with_torch_threads(count: int, results: Iterator[Result]) -> Iterator[Result]:
    """`results`, with `count` intra-op torch threads (unchanged when 0) until they end or are closed."""
    before = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        with contextlib.closing(results):
            yield from results
    finally:
        torch.set_num_threads(before)
