"""torch.distributed for ``torchrun``: gloo on CPU, nccl on GPU (one GPU per rank, LOCAL_RANK).

Training runs DDP; proposals, detection and evaluation split a split's images over the ranks
(:func:`split_by_cost`, balanced by image area) and send their results over the process group
(:func:`gathered`), so machines need no shared disk. A rank that dies or stops answering ends
the others within the process-group timeout (``$RCNN_DIST_TIMEOUT_S``, default 1800 s) with one
line naming it and the stage (:class:`RankFailure`); each rank's per-image caches make the rerun
recompute only what was lost.
"""
from __future__ import annotations

import contextlib
import datetime
import heapq
import os
import re
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch
import torch.distributed as dist

from detector.common.errors import UserError

TIMEOUT_ENV = "RCNN_DIST_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 1800.0
HEARTBEAT_S = 1.0  #: each rank bumps its counter in the job's store this often, so the others can name a dead one


class RankFailure(UserError):
    """Another rank died or did not answer in time: the job stops (rerun to resume from the caches)."""


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job (rank 0 of 1 when not launched by torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def timeout() -> datetime.timedelta:
    """How long a collective waits for the other ranks ($RCNN_DIST_TIMEOUT_S seconds)."""
    text = os.environ.get(TIMEOUT_ENV, "")
    try:
        seconds = float(text) if text else DEFAULT_TIMEOUT_S
    except ValueError:
        raise UserError(f"${TIMEOUT_ENV} {text!r}: expected seconds") from None
    if seconds <= 0:
        raise UserError(f"${TIMEOUT_ENV} {text!r}: expected a positive number of seconds")
    return datetime.timedelta(seconds=seconds)


def launched_world_size() -> int:
    """The number of processes torchrun started for this job ($WORLD_SIZE; 1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed() -> DistContext:
    """Join the process group described by torchrun's environment variables, if any."""
    world_size = launched_world_size()
    if world_size <= 1:
        return DistContext()
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend, timeout=timeout())
        _start_heartbeat(dist.get_rank())
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    return DistContext(dist.get_rank(), world_size, local_rank)


@contextlib.contextmanager
def process_group() -> Iterator[DistContext]:
    """This process's DistContext while the body runs; a process group it had to create is
    destroyed afterwards (one created by a caller is left to that caller)."""
    created = launched_world_size() > 1 and not dist.is_initialized()
    context = init_distributed()
    try:
        yield context
    finally:
        if created:
            shutdown(context)


def refuse_shard_under_torchrun(sharded: bool) -> None:
    """UserError for --shard under torchrun, whose ranks split the images themselves."""
    if sharded and launched_world_size() > 1:
        raise UserError("--shard is for machines that cannot reach each other; under torchrun the ranks split "
                        "the images themselves: drop --shard")


def device_for(context: DistContext) -> torch.device:
    return torch.device(f"cuda:{context.local_rank}") if torch.cuda.is_available() else torch.device("cpu")


def barrier(context: DistContext) -> None:
    if context.enabled:
        dist.barrier()


def shutdown(context: DistContext) -> None:
    _stop_heartbeat()
    if context.enabled and dist.is_initialized():
        dist.destroy_process_group()


def split_by_cost(costs: Sequence[float], parts: int) -> list[list[int]]:
    """Indices of `costs` dealt to `parts` workers so that their summed costs are close: the
    costliest first, each to the least loaded (ties: the lower worker); each list ascending.
    Deterministic, so a rerun gives every rank the images (and caches) it had."""
    loads = [(0.0, part) for part in range(parts)]
    shares: list[list[int]] = [[] for _ in range(parts)]
    for index in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        load, part = heapq.heappop(loads)
        shares[part].append(index)
        heapq.heappush(loads, (load + costs[index], part))
    return [sorted(share) for share in shares]


def own_share(costs: Sequence[float], context: DistContext) -> list[int]:
    """The indices of `costs` this rank handles (all of them without torchrun)."""
    return split_by_cost(costs, context.world_size)[context.rank] if context.enabled else list(range(len(costs)))


def gathered(obj: Any, context: DistContext, stage: str, everywhere: bool = False) -> list[Any] | None:
    """Every rank's picklable `obj`, in rank order: on rank 0 (None elsewhere), or on every rank
    when `everywhere`. RankFailure naming the stage when another rank died or is stuck."""
    if not context.enabled:
        return [obj]
    try:
        _all_arrived(stage)
        objects = [None] * context.world_size
        if everywhere:
            dist.all_gather_object(objects, obj)
            return objects
        dist.gather_object(obj, objects if context.is_main else None, dst=0)
        return objects if context.is_main else None
    except (RuntimeError, dist.DistError) as exc:
        raise _failure(exc, context, stage) from None


def broadcast(obj: Any, context: DistContext, stage: str) -> Any:
    """Rank 0's picklable `obj` on every rank (RankFailure as for :func:`gathered`)."""
    if not context.enabled:
        return obj
    try:
        _all_arrived(stage)
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]
    except (RuntimeError, dist.DistError) as exc:
        raise _failure(exc, context, stage) from None


def _all_arrived(stage: str) -> None:
    """Wait for every rank; on gloo a monitored barrier names the ranks that never come."""
    if dist.get_backend() == "gloo":
        dist.monitored_barrier(timeout=timeout(), wait_all_ranks=True)
    else:
        dist.barrier()


def _failure(exc: Exception, context: DistContext, stage: str) -> RankFailure:
    """The one-line error of a failed collective: which rank, which stage, what to do."""
    missing = re.search(r"Ranks? ([\d, ]+) failed to pass monitoredBarrier", str(exc))
    ranks = [int(r) for r in re.findall(r"\d+", missing.group(1))] if missing else _silent_ranks(context)
    if ranks:
        what = f"rank {', '.join(map(str, ranks))} died or did not answer within {timeout().total_seconds():g} s"
    else:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        first = re.sub(r"^\[[^\]]*\]:?\s*", "", first)  # gloo's "[file:line]" prefix
        what = f"the process group failed ({first})"
    return RankFailure(f"rank {context.rank}: {stage}: {what}; rerun to resume from the caches")


class _Heartbeat:
    """Bumps this rank's counter in the job's store every HEARTBEAT_S seconds from a thread, until
    stopped (before the process group goes: a store call cut short at exit aborts the process)."""

    def __init__(self, rank: int) -> None:
        self.store, self.key = dist.distributed_c10d._get_default_store(), _heartbeat_key(rank)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._beat, name=f"rcnn-heartbeat-{rank}", daemon=True)
        self.thread.start()

    def _beat(self) -> None:
        with contextlib.suppress(Exception):  # the store's host is gone: the job is ending anyway
            while not self.stopped.is_set():
                self.store.add(self.key, 1)
                self.stopped.wait(HEARTBEAT_S)

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join()


_heartbeat: _Heartbeat | None = None


def _heartbeat_key(rank: int) -> str:
    return f"rcnn/heartbeat/{rank}"


def _start_heartbeat(rank: int) -> None:
    global _heartbeat
    _heartbeat = _Heartbeat(rank)


def _stop_heartbeat() -> None:
    global _heartbeat
    if _heartbeat is not None:
        _heartbeat.stop()
        _heartbeat = None


def _silent_ranks(context: DistContext) -> list[int]:
    """The other ranks whose heartbeat stopped (watched for 3 beats); [] when the store is gone."""
    try:
        store = dist.distributed_c10d._get_default_store()
        others = [rank for rank in range(context.world_size) if rank != context.rank]
        before = {rank: store.add(_heartbeat_key(rank), 0) for rank in others}
        time.sleep(3 * HEARTBEAT_S)
        return [rank for rank in others if store.add(_heartbeat_key(rank), 0) == before[rank]]
    except Exception:  # noqa: BLE001 - no store to ask: name no rank
        return []
