"""Learning-rate schedules expressed in fractions of the run, stepped once per iteration."""

from __future__ import annotations

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
