"""prefetched(): results in order, one item computed ahead in a background thread."""
from __future__ import annotations

import threading

import pytest
import torch

from detector.prefetch import prefetched


def test_results_come_in_order_from_another_thread():
    threads = set()

    def square(x: int) -> int:
        threads.add(threading.get_ident())
        return x * x

    assert list(prefetched(square, range(7))) == [x * x for x in range(7)]
    assert threads and threading.get_ident() not in threads


def test_the_next_item_is_computed_while_the_caller_works():
    started = {index: threading.Event() for index in range(3)}

    def mark(index: int) -> int:
        started[index].set()
        return index

    for index in prefetched(mark, range(3)):
        if index < 2:  # the caller still holds item `index`, yet the next one gets computed
            assert started[index + 1].wait(timeout=10)


def test_an_error_is_raised_at_its_items_turn():
    def check(x: int) -> int:
        if x == 2:
            raise ValueError("bad item 2")
        return x

    seen = []
    with pytest.raises(ValueError, match="bad item 2"):
        for x in prefetched(check, range(5)):
            seen.append(x)
    assert seen == [0, 1]


def test_torch_runs_in_inference_mode_in_the_thread():
    assert all(prefetched(lambda _: torch.is_inference_mode_enabled(), range(2)))
