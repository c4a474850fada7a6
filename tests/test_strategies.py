"""Fine-tuning strategies: learning-rate schedules."""

from __future__ import annotations

import math

import pytest
import torch

from benchmark.engine.schedules import cosine_warmup, multi_step_lr


def lrs(scheduler: torch.optim.lr_scheduler.LRScheduler, steps: int) -> list[list[float]]:
    """The LR of every parameter group at iterations 0..steps-1 (the schedule steps once per iteration)."""
    seen = []
    for _ in range(steps):
        seen.append([group["lr"] for group in scheduler.optimizer.param_groups])
        scheduler.optimizer.step()
        scheduler.step()
    return seen


def optimizer(lrs_per_group: tuple[float, ...] = (1.0,)) -> torch.optim.Optimizer:
    groups = [{"params": [torch.zeros(1, requires_grad=True)], "lr": lr} for lr in lrs_per_group]
    return torch.optim.SGD(groups, lr=lrs_per_group[0])


def test_cosine_warmup_values_at_chosen_steps() -> None:
    # 100 iterations, 10 of warm-up from 0.001 x LR; cosine over the remaining 90 down to 0.
    seen = lrs(cosine_warmup(optimizer((1.0, 0.5)), total_iters=100, warmup_fraction=0.1), 100)
    assert seen[0] == pytest.approx([0.001, 0.0005])
    assert seen[5][0] == pytest.approx(0.001 + 0.999 * 5 / 10)
    assert seen[10] == pytest.approx([1.0, 0.5])  # the peak, where warm-up ends
    assert seen[55][0] == pytest.approx(0.5 * (1 + math.cos(math.pi * 45 / 90)))  # half-way down: 0.5
    assert seen[99][0] == pytest.approx(0.5 * (1 + math.cos(math.pi * 89 / 90)))
    assert all(a[0] >= b[0] for a, b in zip(seen[10:], seen[11:]))  # never rises after the peak


def test_cosine_warmup_resumes_where_it_stopped() -> None:
    first = cosine_warmup(optimizer(), total_iters=50)
    lrs(first, 20)
    resumed = cosine_warmup(optimizer(), total_iters=50)
    resumed.optimizer.load_state_dict(first.optimizer.state_dict())  # as a resumed run loads both
    resumed.load_state_dict(first.state_dict())
    assert lrs(resumed, 30) == lrs(first, 30)


def test_schedules_refuse_fractions_outside_the_run() -> None:
    with pytest.raises(ValueError, match="warmup_fraction"):
        cosine_warmup(optimizer(), total_iters=10, warmup_fraction=1.0)
    with pytest.raises(ValueError, match="milestones"):
        multi_step_lr(optimizer(), total_iters=10, milestones=(0.5, 1.2))
