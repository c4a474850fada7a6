"""Process group set-up and rank helpers.

Under ``torchrun`` (``WORLD_SIZE`` set) a process group is created: NCCL when the run uses CUDA, gloo
on CPU. A plain ``python benchmark/run.py`` runs one process without a process group.

:func:`main_then_share` and :func:`on_every_rank` run a step of shared work (preparing and filling the
feature cache) so that a failure on one rank stops every rank, instead of leaving the others waiting in
the next collective call.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.distributed as dist


class RankFailedError(RuntimeError):
    """Another rank failed in a step all ranks take together; this rank stops with it."""


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the run."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def select_device(device: str, local_rank: int) -> torch.device:
    """``auto`` picks CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda was requested but no CUDA device is available; use device=auto or cpu")
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise RuntimeError(
            f"process {local_rank} of this node has no GPU of its own: {count} GPU(s) are visible and NCCL runs "
            f"one process per GPU; set torchrun's --nproc_per_node to at most {count}"
        )
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def init_distributed(device: str = "auto") -> DistContext:
    """Read torchrun's environment, pick the device and create the process group if needed."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    chosen = select_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if chosen.type == "cuda" else "gloo"
        dist.init_process_group(
            backend=backend,
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(minutes=30),
            device_id=chosen if chosen.type == "cuda" else None,
        )
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=chosen)


KEPT = [False]  # True while the processes run job after job in one process group (benchmark.torchrun_jobs)


@contextlib.contextmanager
def process_group_kept() -> Iterator[None]:
    """Within it, :func:`shutdown` keeps the process group for the next job of the same processes; it is
    destroyed at the end."""
    KEPT[0] = True
    try:
        yield
    finally:
        KEPT[0] = False
        shutdown()


def shutdown() -> None:
    """End the process group at the end of a job (unless :func:`process_group_kept`)."""
    if dist.is_initialized() and not KEPT[0]:
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def broadcast_object(value: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``value`` on every rank (a no-op without a process group)."""
    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(value: Any) -> list[Any]:
    """Every rank's ``value``, by rank (``[value]`` without a process group)."""
    if not dist.is_initialized():
        return [value]
    values: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def process_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s own random draws (dropout, drop-path): distinct per rank, fixed per seed."""
    return int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place and return it."""
    if dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_max(value: float, device: torch.device) -> float:
    """Largest ``value`` over ranks."""
    if not dist.is_initialized():
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return float(tensor.item())


def main_then_share(ctx: DistContext, fn: Callable[[], Any], what: str) -> Any:
    """``fn()`` on rank 0, its result on every rank; an error on rank 0 is raised on every rank (the others
    raise :class:`RankFailedError` with its message). ``what``: the step, for that message."""
    outcome, error = None, None
    if ctx.is_main:
        try:
            outcome = ("ok", fn())
        except Exception as exc:  # re-raised below, after the other ranks have been told
            error, outcome = exc, ("error", f"{type(exc).__name__}: {exc}")
    status, value = broadcast_object(outcome)
    if error is not None:
        raise error
    if status == "error":
        raise RankFailedError(f"rank 0 failed while {what}: {value}")
    return value


def on_every_rank(ctx: DistContext, fn: Callable[[], None], what: str) -> None:
    """``fn()`` on every rank; if it fails on any rank, every rank raises (its own error, or
    :class:`RankFailedError`). ``what``: the step, for that message."""
    error = None
    try:
        fn()
    except Exception as exc:
        error = exc
    if all_reduce_max(float(error is not None), ctx.device) > 0:
        if error is not None:
            raise error
        raise RankFailedError(f"another rank failed while {what}")
