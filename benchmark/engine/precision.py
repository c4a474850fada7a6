"""Numeric precision and device placement of the tensors the model reads, shared by training, evaluation
and the feature cache so that all three compute alike; the device's peak memory."""

from __future__ import annotations

import contextlib
from typing import Any

import torch


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` means bf16 on CUDA and fp32 on CPU."""
    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"task.trainer.precision must be auto, fp32 or bf16, got {precision!r}")
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


def autocast_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast for ``precision == "bf16"`` (CUDA or CPU); full precision otherwise."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The model inputs of a batch on ``device``: ``image`` (a dict of modalities) or, from the feature
    cache, ``features`` (a list of encoder outputs, stored as ``cache_dtype``, returned as float32)."""
    if "features" in batch:
        return {"features": [f.to(device, non_blocking=True).float() for f in batch["features"]]}
    return {"image": {m: x.to(device, non_blocking=True) for m, x in batch["image"].items()}}


def peak_memory_mb(device: torch.device) -> float:
    """Peak CUDA memory allocated, or the process's peak resident set size on CPU, in MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
