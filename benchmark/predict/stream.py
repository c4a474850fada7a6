"""Streaming sliding-window inference over a scene of any size, one output block at a time.

The scene is covered by one grid of encoder-size windows (:func:`~benchmark.data.windows.window_grid`, the
evaluator's grid) and cut into square output blocks. A block's values come from every window that overlaps
it, blended with weights that fall towards a window's edges, so tile seams do not show; where one window
alone covers a pixel, the pixel gets exactly that window's output, as in the evaluator. Memory is bounded by
the block and batch sizes, whatever the scene's size: a block reads the pixels of its windows at once, and a
window that overlaps two blocks is computed for each.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch

from benchmark.data.windows import window_starts

WindowFunction = Callable[[Sequence[tuple[int, int]]], torch.Tensor]


@dataclass(frozen=True)
class Block:
    """Output rows ``top:top+height`` and columns ``left:left+width`` and the grid windows overlapping them."""

    top: int
    left: int
    height: int
    width: int
    windows: tuple[tuple[int, int], ...]

    def extent(self, window: int) -> tuple[int, int, int, int]:
        """``(top, left, bottom, right)`` of the pixels its windows read (unclipped at the scene's edge)."""
        tops, lefts = [t for t, _ in self.windows], [l for _, l in self.windows]
        return min(tops), min(lefts), max(tops) + window, max(lefts) + window


def overlapping(starts: Sequence[int], window: int, first: int, end: int) -> list[int]:
    """The window starts whose ``[start, start + window)`` overlaps ``[first, end)``."""
    return [s for s in starts if s < end and s + window > first]


def plan_blocks(height: int, width: int, window: int, stride: int | None, block_size: int) -> list[Block]:
    """The output blocks of a ``height`` x ``width`` scene, row-major, with their windows (row-major too)."""
    if block_size < 1:
        raise ValueError(f"block_size must be at least 1, got {block_size}")
    tops, lefts = window_starts(height, window, stride), window_starts(width, window, stride)
    blocks = []
    for top in range(0, height, block_size):
        bottom = min(top + block_size, height)
        rows = overlapping(tops, window, top, bottom)
        for left in range(0, width, block_size):
            right = min(left + block_size, width)
            columns = overlapping(lefts, window, left, right)
            blocks.append(Block(top, left, bottom - top, right - left, tuple((t, c) for t in rows for c in columns)))
    return blocks


def window_weights(window: int) -> torch.Tensor:
    """(window, window) blending weights: a sine bump, 1 at the centre, above 0 at the edges."""
    ramp = torch.sin(math.pi * (torch.arange(window, dtype=torch.float64) + 0.5) / window)
    return torch.outer(ramp, ramp).float()


def chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    for first in range(0, len(items), size):
        yield items[first : first + size]


def blend_block(block: Block, run_windows: WindowFunction, window: int, batch_size: int, device: torch.device) -> torch.Tensor:
    """(C, height, width) values of ``block``: the weighted mean of its windows' outputs.

    ``run_windows(positions)`` returns the (n, C, window, window) outputs of the windows at ``positions``.
    """
    weights = window_weights(window).to(device)
    total = weight_sum = None
    for positions in chunks(block.windows, batch_size):
        outputs = run_windows(positions).float()
        if total is None:
            total = torch.zeros((outputs.shape[1], block.height, block.width), device=device)
            weight_sum = torch.zeros((1, block.height, block.width), device=device)
        for (top, left), output in zip(positions, outputs):
            rows = slice(max(top, block.top), min(top + window, block.top + block.height))
            columns = slice(max(left, block.left), min(left + window, block.left + block.width))
            inside = (slice(rows.start - top, rows.stop - top), slice(columns.start - left, columns.stop - left))
            here = (slice(rows.start - block.top, rows.stop - block.top), slice(columns.start - block.left, columns.stop - block.left))
            total[(slice(None), *here)] += output[(slice(None), *inside)] * weights[inside]
            weight_sum[(slice(None), *here)] += weights[inside]
    return total / weight_sum
