"""Learning-rate schedules expressed in fractions of the run, stepped once per iteration."""

from __future__ import annotations

import math
from typing import Sequence

import torch


def multi_step_lr(
    optimizer: torch.optim.Optimizer,
    total_iters: int,
    milestones: Sequence[float] = (0.6, 0.9),
    gamma: float = 0.1,
) -> torch.optim.lr_scheduler.MultiStepLR:
    """Multiply the LR by ``gamma`` at each milestone, given as a fraction of ``total_iters``."""
    if any(not 0 < m < 1 for m in milestones):
        raise ValueError(f"milestones are fractions of the run in (0, 1), got {list(milestones)}")
    steps = sorted(max(1, int(round(m * total_iters))) for m in milestones)
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=steps, gamma=gamma)


def cosine_warmup(
    optimizer: torch.optim.Optimizer,
    total_iters: int,
    warmup_fraction: float = 0.1,
    warmup_start_factor: float = 0.001,
    final_factor: float = 0.0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up from ``warmup_start_factor`` x LR to the LR over the first ``warmup_fraction`` of
    ``total_iters``, then a half cosine down to ``final_factor`` x LR at the last iteration.

    Every parameter group follows the same curve relative to its own LR (layer-wise decay is kept).
    """
    if not 0 <= warmup_fraction < 1:
        raise ValueError(f"warmup_fraction is a fraction of the run in [0, 1), got {warmup_fraction}")
    warmup = int(round(warmup_fraction * total_iters))
    decay = max(1, total_iters - warmup)

    def factor(step: int) -> float:
        if step < warmup:
            return warmup_start_factor + (1 - warmup_start_factor) * step / warmup
        progress = min(1.0, (step - warmup) / decay)
        return final_factor + (1 - final_factor) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
