"""``benchmark/run.py`` inside a one-process NCCL (or gloo) group, so that the multi-GPU code path runs on one GPU.

    torchrun --standalone --nproc_per_node=1 scripts/one_rank_ddp.py <run.py overrides>

A run of one process creates no process group (there is nothing to share), and NCCL refuses two
processes on one GPU. Here the group is created with one member and the run treats itself as
distributed: DistributedDataParallel, SyncBatchNorm, the collectives and the fail-together steps all
run, on one GPU, for ``scripts/gpu_check.sh``. The metrics are those of a one-process run.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmark import distributed, pipeline  # noqa: E402
from benchmark.run import main  # noqa: E402


def init_one_member_group(device: str = "auto") -> distributed.DistContext:
    ctx = distributed.init_distributed(device)
    if not dist.is_initialized():
        cuda = ctx.device.type == "cuda"
        dist.init_process_group("nccl" if cuda else "gloo", rank=0, world_size=1, device_id=ctx.device if cuda else None)
        print(f"one-member {dist.get_backend()} process group on {ctx.device}", flush=True)
    return ctx


if __name__ == "__main__":
    pipeline.init_distributed = init_one_member_group
    distributed.DistContext.distributed = property(lambda self: dist.is_initialized())
    main()
