"""Grids of square windows over a tile: where training crops and sliding-window inference look.

A tile smaller than the window is padded at the bottom/right to the window size first
(:func:`pad_to_window`, the one padding rule of crops, cached windows and inference), so every grid
holds at least one window. Positions are listed row-major (top, then left); the feature cache stores
windows in this order, so crops, cached features and sliding-window inference agree by construction.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def window_starts(length: int, window: int, stride: int | None) -> list[int]:
    """Start offsets of windows of size ``window`` covering ``[0, length)``; the last one ends at the edge.

    ``stride`` is the step between starts (the last start is moved to the edge); None means the fewest
    windows that cover the length, spread evenly and rounded to whole pixels, as PANGAEA's sliding-window
    inference places them (a 512 px side with a 224 px window: 0, 144, 288).
    """
    if stride is not None and not 1 <= stride <= window:
        raise ValueError(f"stride must be in [1, window={window}], got {stride}")
    if length <= window:
        return [0]
    if stride is None:
        count = math.ceil(length / window)
        return [round(i * (length - window) / (count - 1)) for i in range(count)]
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] != length - window:
        starts.append(length - window)
    return starts


def window_grid(height: int, width: int, window: int, stride: int | None) -> list[tuple[int, int]]:
    """``(top, left)`` of every window of the grid over a ``height`` x ``width`` tile, row-major."""
    lefts = window_starts(width, window, stride)
    return [(top, left) for top in window_starts(height, window, stride) for left in lefts]


def padded_size(height: int, width: int, window: int) -> tuple[int, int]:
    """Sides (pixels) of a ``height`` x ``width`` tile after :func:`pad_to_window`."""
    return max(height, window), max(width, window)


def pad_to_window(x: torch.Tensor, window: int, value: float = 0) -> torch.Tensor:
    """``x`` (..., H, W) padded at the bottom/right with ``value`` to at least ``window`` on both sides;
    ``x`` itself when it is large enough. Images pad with 0 (the normalised mean), targets with the
    ignore index."""
    height, width = x.shape[-2:]
    padded_height, padded_width = padded_size(height, width, window)
    if (padded_height, padded_width) == (height, width):
        return x
    return F.pad(x, (0, padded_width - width, 0, padded_height - height), value=value)


def crop_window(image: dict[str, torch.Tensor], top: int, left: int, window: int) -> dict[str, torch.Tensor]:
    """The ``window`` x ``window`` crop at ``(top, left)`` of every modality of ``image`` (..., H, W)."""
    return {m: x[..., top : top + window, left : left + window] for m, x in image.items()}
