"""MUSTER's multi-head skip attention in (shifted) windows: queries from the skip, keys and values from
the decoder state (Xu et al. 2022, arXiv:2211.13928)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.models.layers import Mlp, drop_path_or_identity, trunc_normal_

# Masked attention logits. Swin uses -100, whose softmax weights (about exp(-100) = 4e-44) are subnormal
# floats: every product with them then takes the CPU's slow path (MUSTER training ran 10x slower on some
# feature grids). -inf gives exact zeros; no row is all masked, since a query (padding included) always
# shares its own label.
MASKED = float("-inf")


def window_partition(x: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
    """(B, H, W, C) -> (B * H/wh * W/ww, wh, ww, C): the windows of each map, row-major."""
    b, h, w, c = x.shape
    x = x.view(b, h // window[0], window[0], w // window[1], window[1], c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window[0], window[1], c)


def window_reverse(windows: torch.Tensor, window: tuple[int, int], h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: (B * H/wh * W/ww, wh, ww, C) -> (B, H, W, C)."""
    c = windows.shape[-1]
    x = windows.view(-1, h // window[0], w // window[1], window[0], window[1], c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, h, w, c)


def window_layout(grid: tuple[int, int], window_size: int, shift: bool) -> tuple[tuple[int, int], tuple[int, int]]:
    """Window (h, w) clipped to the grid, and the cyclic shift per axis: half a window, or none along an
    axis that a single window covers (shifting there would only wrap the map onto itself)."""
    window = (min(window_size, grid[0]), min(window_size, grid[1]))
    shifts = tuple(w // 2 if shift and g > w else 0 for g, w in zip(grid, window))
    return window, shifts


def _region_labels(length: int, window: int, shift: int, device: torch.device) -> torch.Tensor:
    """Swin's regions along one shifted axis: the last window mixes tokens that the cyclic shift brought
    from opposite borders; they get different labels (0: inner, 1: before the wrap, 2: wrapped)."""
    index = torch.arange(length, device=device)
    if not shift:
        return torch.zeros_like(index)
    return (index >= length - window).long() + (index >= length - shift).long()


def window_mask(
    grid: tuple[int, int],
    padded: tuple[int, int],
    window: tuple[int, int],
    shifts: tuple[int, int],
    device: torch.device,
) -> torch.Tensor | None:
    """Additive attention mask (num_windows, N, N) for the windows of a padded, cyclically shifted map.

    A query attends only to keys with its own label: Swin's region labels keep tokens from opposite
    borders apart, and padding has a label of its own, so real tokens never attend to it. None when no
    window needs a mask (no shift and no padding).
    """
    if not any(shifts) and tuple(grid) == tuple(padded):
        return None
    rows = _region_labels(padded[0], window[0], shifts[0], device)
    cols = _region_labels(padded[1], window[1], shifts[1], device)
    labels = rows[:, None] * 3 + cols[None, :]
    valid_rows = torch.arange(padded[0], device=device) < grid[0]
    valid_cols = torch.arange(padded[1], device=device) < grid[1]
    valid = valid_rows[:, None] & valid_cols[None, :]
    labels[~torch.roll(valid, shifts=(-shifts[0], -shifts[1]), dims=(0, 1))] = -1
    labels = window_partition(labels[None, :, :, None], window).reshape(-1, window[0] * window[1])
    mask = torch.zeros(labels.shape[0], labels.shape[1], labels.shape[1], device=device)
    return mask.masked_fill(labels[:, :, None] != labels[:, None, :], MASKED)


class WindowSkipAttention(nn.Module):
    """MUSTER's multi-head skip attention inside windows: queries from the skip (encoder) tokens, keys
    and values from the decoder state, plus Swin's learned relative position bias.

    The bias table covers offsets of a ``window_size`` window; a smaller or non-square window (clipped to a
    small grid) reads the centre of the same table, so one module serves every grid.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.window_size = window_size
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.relative_position_bias = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        trunc_normal_(self.relative_position_bias, std=0.02)

    def position_bias(self, window: tuple[int, int]) -> torch.Tensor:
        """(heads, N, N) bias between the N = h*w tokens of a window."""
        device = self.relative_position_bias.device
        rows, cols = torch.meshgrid(
            torch.arange(window[0], device=device), torch.arange(window[1], device=device), indexing="ij"
        )
        rows, cols = rows.flatten(), cols.flatten()
        offset, span = self.window_size - 1, 2 * self.window_size - 1
        index = (rows[:, None] - rows[None, :] + offset) * span + (cols[:, None] - cols[None, :] + offset)
        return self.relative_position_bias[index].permute(2, 0, 1)

    def forward(
        self, x: torch.Tensor, skip: torch.Tensor, window: tuple[int, int], mask: torch.Tensor | None
    ) -> torch.Tensor:
        """x, skip: (B * num_windows, N, C) tokens of the same windows; mask: (num_windows, N, N) or None."""
        b, n, c = x.shape
        q = self.q(skip).reshape(b, n, self.num_heads, -1).transpose(1, 2)
        k, v = self.kv(x).reshape(b, n, 2, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        bias = self.position_bias(window)  # (heads, N, N)
        if mask is not None:
            # windows are ordered (batch, window): a (window, ...) view broadcasts the per-window mask over
            # the batch instead of copying it for every image
            windows = mask.shape[0]
            q, k, v = (t.reshape(b // windows, windows, *t.shape[1:]) for t in (q, k, v))
            bias = bias + mask.unsqueeze(1)  # (windows, heads, N, N)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        return self.proj(out.reshape(b, self.num_heads, n, -1).transpose(1, 2).reshape(b, n, c))


class SkipAttentionBlock(nn.Module):
    """Pre-norm windowed skip attention and MLP, each with a residual and stochastic depth, then a
    LayerNorm (MUSTER normalises each block's output). ``shift`` moves the windows by half a window
    (Swin), linking neighbouring windows; stages alternate plain and shifted blocks.

    Takes and returns channels-last maps (B, H, W, C).
    """

    def __init__(
        self, dim: int, num_heads: int, window_size: int, shift: bool, mlp_ratio: float, drop_path: float
    ) -> None:
        super().__init__()
        self.window_size = window_size
        self.shift = shift
        self.norm_skip = nn.LayerNorm(dim)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowSkipAttention(dim, num_heads, window_size)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.norm3 = nn.LayerNorm(dim)
        self.drop_path = drop_path_or_identity(drop_path)

    def attend(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        window, shifts = window_layout((h, w), self.window_size, self.shift)
        padded = (math.ceil(h / window[0]) * window[0], math.ceil(w / window[1]) * window[1])
        pad = (0, 0, 0, padded[1] - w, 0, padded[0] - h)
        # pad first, then shift: the mask then marks padding wherever the shift moved it
        x, skip = (torch.roll(F.pad(t, pad), shifts=(-shifts[0], -shifts[1]), dims=(1, 2)) for t in (x, skip))
        tokens = window[0] * window[1]
        out = self.attn(
            window_partition(x, window).reshape(-1, tokens, c),
            window_partition(skip, window).reshape(-1, tokens, c),
            window,
            window_mask((h, w), padded, window, shifts, x.device),
        )
        out = window_reverse(out.reshape(-1, window[0], window[1], c), window, *padded)
        return torch.roll(out, shifts=shifts, dims=(1, 2))[:, :h, :w]

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        # Stochastic depth on both branches, as MUSTER's reference code has it (PANGAEA's port loses it on
        # the attention branch: its ShiftWindowMSA ignores the dropout_layer it is given).
        x = x + self.drop_path(self.attend(self.norm1(x), self.norm_skip(skip)))
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return self.norm3(x)
