"""Worker processes that end with their parent: process pools and DataLoader workers, and sharding.

Each worker runs on one core (``cv2.setNumThreads(1)``, ``torch.set_num_threads(1)``), so N
workers use N cores. Workers come from a ``forkserver`` (``spawn`` where there is none), which is
safe whatever threads the parent holds; they ignore Ctrl-C, which the parent handles by killing
and joining them (:func:`worker_pool`), and end when the parent ends, however it ends
(:func:`exit_with`).
"""
from __future__ import annotations

import contextlib
import multiprocessing
import os
import select
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from typing import Any, Iterator, Sequence, TypeVar

import cv2
import torch

from detector.common.errors import UserError

T = TypeVar("T")


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` -> (i, n) with 0 <= i < n: shard i (0-based) of n."""
    index, sep, count = text.partition("/")
    try:
        i, n = int(index), int(count)
    except ValueError:
        i, n = -1, 0
    if not sep or n < 1 or not 0 <= i < n:
        raise UserError(f"--shard {text!r}: expected i/n with 0 <= i < n, e.g. 0/4")
    return i, n


def shard(items: Sequence[T], index: int, count: int) -> list[T]:
    """Every `count`-th item starting at `index` (0-based): shards 0..count-1 partition `items`."""
    return list(items[index::count])


def _limit_threads() -> None:
    """Limit the calling process to one core for OpenCV and torch."""
    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def init_worker(parent: int) -> None:
    """Set up a pool worker of process `parent`: one core, Ctrl-C left to the parent (which ends
    the pool), and an exit when the parent is gone."""
    _limit_threads()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    exit_with(parent)


def exit_with(parent: int) -> None:
    """End this process (status 1) as soon as process `parent` ends, from a daemon thread.
    Without it a forkserver's worker outlives a parent killed by a signal: it waits for work on
    a queue whose write end it holds itself, and it keeps the forkserver alive (each child holds
    the server's liveness pipe), so both end up orphans under init."""
    threading.Thread(target=_exit_after, args=(parent,), name=f"exit-with-{parent}", daemon=True).start()


def _exit_after(pid: int) -> None:
    """Block until process `pid` has ended (a pidfd on Linux, else polling each second), then exit."""
    try:
        select.select([os.pidfd_open(pid)], [], [])
    except ProcessLookupError:
        pass  # already gone
    except (AttributeError, OSError):  # no pidfd (not Linux, or a kernel before 5.3)
        while _is_running(pid):
            time.sleep(1.0)
    os._exit(1)


def _is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, owned by another user
    return True


@contextlib.contextmanager
def one_core() -> Iterator[None]:
    """Run the body like a pool worker (one core), then restore this process's thread counts."""
    cv2_threads, torch_threads = cv2.getNumThreads(), torch.get_num_threads()
    _limit_threads()
    try:
        yield
    finally:
        cv2.setNumThreads(cv2_threads)
        torch.set_num_threads(torch_threads)


@contextlib.contextmanager
def worker_pool(workers: int, preload: str = __name__) -> Iterator[ProcessPoolExecutor]:
    """A pool of `workers` one-core processes (:func:`init_worker`) from a forkserver that has
    imported module `preload` (:func:`worker_context`).
    Leaving the body normally waits for the submitted work; leaving it by an exception (Ctrl-C,
    a generator closed early) cancels what has not started and kills and joins the workers."""
    pool = _WorkerPool(workers, mp_context=worker_context(preload), initializer=init_worker, initargs=(os.getpid(),))
    try:
        yield pool
    except BaseException:
        _terminate(pool)
        raise
    pool.shutdown()


class _WorkerPool(ProcessPoolExecutor):
    """A ProcessPoolExecutor whose submit() finishes before a Ctrl-C is raised: submit starts
    workers, and one started but not yet registered when KeyboardInterrupt struck would escape
    :func:`_terminate`, then fail noisily as this process exits (its queues' semaphores gone)."""

    def submit(self, fn, /, *args, **kwargs):
        with _ctrl_c_deferred():
            return super().submit(fn, *args, **kwargs)


@contextlib.contextmanager
def _ctrl_c_deferred() -> Iterator[None]:
    """Run the body with SIGINT recorded, not acted on; then hand a recorded one to the handler
    that was in place (KeyboardInterrupt by default). Main thread only (elsewhere: no change)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received and callable(previous):
            previous(signal.SIGINT, None)
        elif received and previous == signal.SIG_DFL:
            signal.raise_signal(signal.SIGINT)


def _terminate(pool: ProcessPoolExecutor) -> None:
    """Stop `pool` now: drop queued work, kill its workers mid-task and reap them."""
    processes = list((pool._processes or {}).values())  # Python >= 3.14: pool.terminate_workers()
    result_queue = pool._result_queue  # shutdown() forgets it
    # The feeder thread may still hold tasks for the workers about to die: exit must not join it.
    pool._call_queue.cancel_join_thread()
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.terminate()
    for process in processes:
        process.join()
    # A worker killed while sending its result (an image: many pipe-fulls) leaves the pool's
    # manager thread blocked in recv() on the rest, forever: this process holds a write end
    # of that pipe too. Closing it turns the rest into end-of-file, so the thread ends and
    # interpreter exit, which joins it, does not hang after Ctrl-C.
    result_queue._writer.close()


def worker_context(preload: str = __name__) -> multiprocessing.context.BaseContext:
    """forkserver (workers forked from a clean, single-threaded server that has imported module
    `preload` once, so later pools start fast) where available, else spawn; both fork-safe,
    unlike forking a process whose OpenMP threads have run."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([preload])
        return context
    return multiprocessing.get_context("spawn")


def loader_processes(workers: int, preload: str) -> dict[str, Any]:
    """Keyword arguments for a ``torch.utils.data.DataLoader`` with `workers` worker processes,
    forked from a forkserver that has imported module `preload` (forking this process after its
    OpenMP threads ran can deadlock the child), each on one core and ending with this process."""
    if not workers:
        return {"num_workers": 0}
    return {"num_workers": workers, "multiprocessing_context": worker_context(preload),
            "worker_init_fn": partial(_init_loader_worker, os.getpid())}


def _init_loader_worker(parent: int, worker_id: int) -> None:
    _limit_threads()
    exit_with(parent)


def default_workers() -> int:
    """Cores this process may use: its CPU affinity, shared among the processes torchrun started
    on this machine ($LOCAL_WORLD_SIZE)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
