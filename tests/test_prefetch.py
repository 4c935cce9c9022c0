"""prefetched(): results in order, computed ahead in a background thread or in worker processes."""
from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

import pytest
import torch

from detector.inference.prefetch import prefetched


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


# ----------------------------------------------------------------------------- worker processes


def _pid_of(item: int) -> tuple[int, int]:
    return item, os.getpid()


def test_worker_processes_give_results_in_order():
    results = list(prefetched(_pid_of, range(9), ahead=3, workers=2))
    assert [item for item, _ in results] == list(range(9))
    assert os.getpid() not in {pid for _, pid in results}


def test_worker_processes_run_a_bounded_number_of_items_ahead():
    pulled = []

    def items():
        for index in range(20):
            pulled.append(index)
            yield index

    for taken, _ in enumerate(prefetched(_pid_of, items(), ahead=3, workers=2), start=1):
        assert len(pulled) <= taken + 3


def test_an_error_in_a_worker_is_raised_at_its_items_turn(tmp_path):
    (tmp_path / "a.txt").write_text("a")
    seen = []
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        for text in prefetched(Path.read_text, [tmp_path / "a.txt", tmp_path / "missing.txt", tmp_path / "a.txt"],
                               ahead=3, workers=2):
            seen.append(text)
    assert seen == ["a"]


def test_leaving_early_kills_and_reaps_the_workers():
    stream = prefetched(_pid_of, range(100), ahead=4, workers=2)
    with pytest.raises(RuntimeError), contextlib.closing(stream):
        for _, pid in stream:
            raise RuntimeError("the consumer failed")
    assert not Path(f"/proc/{pid}").exists()
