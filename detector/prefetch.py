"""Overlap input preparation with the network: ``prefetched(fn, items)`` computes ``fn`` of the
next item in a background thread while the caller works on the current one.

Worth it because the slow preparation steps release the GIL: OpenCV's selective search, image
decoding and torchvision's ``roi_align`` warps run while PyTorch runs the network.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

Item = TypeVar("Item")
Result = TypeVar("Result")


def prefetched(function: Callable[[Item], Result], items: Iterable[Item], ahead: int = 1) -> Iterator[Result]:
    """``function(item)`` for each item, in order, each computed in one background thread up to
    `ahead` items before the caller asks for it. An exception raised by ``function`` is raised
    here when its item's turn comes. Torch ops in the thread run in inference mode."""
    def call(item: Item) -> Result:
        with torch.inference_mode():
            return function(item)

    iterator = iter(items)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch") as pool:
        pending = deque(pool.submit(call, item) for _, item in zip(range(ahead), iterator))
        while pending:
            result = pending.popleft().result()
            for item in iterator:  # one more in flight while the caller works on `result`
                pending.append(pool.submit(call, item))
                break
            yield result
