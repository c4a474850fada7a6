"""BEiT blocks and their relative position bias, as SSL4EO-S12's data2vec release uses them.

Names and creation order follow timm's ``timm.models.beit`` (the release loads unchanged and a seeded
initialisation draws the same numbers; ``tests/test_layers.py`` compares). Only what data2vec uses is
built: one bias table shared by all blocks, passed to each block as ``shared_rel_pos_bias``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.models.layers import Mlp, drop_path_or_identity

__all__ = ["BeitBlock", "RelativePositionBias", "relative_position_index", "resize_relative_position_table",
           "square_grid_side", "table_rows"]


def table_rows(grid_hw: tuple[int, int]) -> int:
    """Rows of a BEiT relative position bias table: one per 2-D offset, plus 3 for cls-token pairs."""
    return (2 * grid_hw[0] - 1) * (2 * grid_hw[1] - 1) + 3


def square_grid_side(rows: int) -> int | None:
    """The side of the square token grid whose table has ``rows`` rows; None if no square grid has."""
    side = (round((rows - 3) ** 0.5) + 1) // 2
    return side if table_rows((side, side)) == rows else None


def relative_position_index(grid_hw: tuple[int, int], device: torch.device | None = None) -> torch.Tensor:
    """(1 + h*w, 1 + h*w) long: the table row of each (query, key) token pair, cls token first.

    Patch pairs index their 2-D offset, row-major over ``(2h-1) x (2w-1)``; the last three rows are
    cls -> patch, patch -> cls and cls -> cls."""
    h, w = grid_hw
    rows, cols = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    rows, cols = rows.flatten(), cols.flatten()
    offset = (rows[:, None] - rows[None, :] + h - 1) * (2 * w - 1) + (cols[:, None] - cols[None, :] + w - 1)
    distances = table_rows(grid_hw)
    index = torch.empty((h * w + 1,) * 2, dtype=torch.long, device=device)
    index[1:, 1:] = offset
    index[0, :] = distances - 3
    index[:, 0] = distances - 2
    index[0, 0] = distances - 1
    return index


class RelativePositionBias(nn.Module):
    """A learned bias per head and relative offset; ``forward()`` gives (heads, 1 + h*w, 1 + h*w)."""

    def __init__(self, grid_hw: tuple[int, int], num_heads: int) -> None:
        super().__init__()
        self.grid_hw = tuple(grid_hw)
        self.relative_position_bias_table = nn.Parameter(torch.zeros(table_rows(self.grid_hw), num_heads))
        self.register_buffer("relative_position_index", relative_position_index(self.grid_hw), persistent=False)

    def forward(self) -> torch.Tensor:
        return bias_from_table(self.relative_position_bias_table, self.relative_position_index)


def bias_from_table(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Look up (rows, heads) ``table`` at (T, T) ``index``: the attention bias (heads, T, T)."""
    tokens = index.shape[0]
    return table[index.view(-1)].view(tokens, tokens, -1).permute(2, 0, 1).contiguous()


class BeitAttention(nn.Module):
    """Self-attention with a bias-free ``qkv`` plus learned ``q_bias`` and ``v_bias`` (the key bias is zero)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.register_buffer("k_bias", torch.zeros(dim), persistent=False)
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, shared_rel_pos_bias: torch.Tensor | None = None) -> torch.Tensor:
        b, n, c = x.shape
        qkv = F.linear(x, self.qkv.weight, torch.cat((self.q_bias, self.k_bias, self.v_bias)))
        q, k, v = qkv.reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=shared_rel_pos_bias)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class BeitBlock(nn.Module):
    """Pre-norm block with layer scale: ``x + gamma_1 * attn(norm1(x))``, ``x + gamma_2 * mlp(norm2(x))``;
    ``gamma`` starts at ``init_values``. (B, N, dim) in and out."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, init_values: float, eps: float,
                 drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = BeitAttention(dim, num_heads)
        self.drop_path1 = drop_path_or_identity(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path2 = drop_path_or_identity(drop_path)
        self.gamma_1 = nn.Parameter(torch.full((dim,), float(init_values)))
        self.gamma_2 = nn.Parameter(torch.full((dim,), float(init_values)))

    def forward(self, x: torch.Tensor, shared_rel_pos_bias: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.drop_path1(self.gamma_1 * self.attn(self.norm1(x), shared_rel_pos_bias))
        return x + self.drop_path2(self.gamma_2 * self.mlp(self.norm2(x)))


def geometric_offsets(source_side: int, target_side: int) -> torch.Tensor:
    """Where BEiT places a table's ``source_side`` offsets (odd, centred on 0) on the target's integer
    offsets: spacings grow geometrically from 1 so that the outermost lands near ``target_side // 2``."""
    half = source_side // 2
    low, high = 1.01, 1.5
    while high - low > 1e-6:  # bisection for the ratio
        ratio = (low + high) / 2.0
        if (1.0 - ratio**half) / (1.0 - ratio) > target_side // 2:
            high = ratio
        else:
            low = ratio
    positive = [1.0]
    for power in range(1, half):
        positive.append(positive[-1] + ratio**power)
    return torch.tensor([-p for p in reversed(positive)] + [0.0] + positive, dtype=torch.float64)


def linear_weights(source: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left and right neighbours in ascending ``source`` of each ``target`` point and the right one's
    weight; targets outside the source range take the edge value."""
    target = target.clamp(source[0].item(), source[-1].item())
    right = torch.searchsorted(source, target).clamp(1, len(source) - 1)
    left = right - 1
    return left, right, (target - source[left]) / (source[right] - source[left])


def resize_relative_position_table(table: torch.Tensor, new_grid: tuple[int, int]) -> torch.Tensor:
    """A (rows, heads) table of a square token grid resized to ``new_grid``: the offset plane
    interpolated bilinearly at BEiT's geometric source positions (BEiT's fine-tuning recipe, with
    linear instead of cubic interpolation, as timm does without scipy), the three cls rows kept. An axis
    whose size does not change is kept as it is (timm re-spaces it too)."""
    old = square_grid_side(table.shape[0])
    if old is None:
        raise ValueError(f"a relative position table of {table.shape[0]} rows fits no square token grid")
    source_side = 2 * old - 1
    plane = table[:-3].double().reshape(source_side, source_side, -1)
    for axis, new in enumerate(new_grid):
        side = 2 * new - 1
        if side == source_side:
            continue
        targets = torch.arange(side, dtype=torch.float64) - side // 2
        left, right, weight = linear_weights(geometric_offsets(source_side, side), targets)
        shape = [-1, 1, 1] if axis == 0 else [1, -1, 1]
        plane = (plane.index_select(axis, left) * (1 - weight).view(shape)
                 + plane.index_select(axis, right) * weight.view(shape))
    return torch.cat([plane.reshape(-1, table.shape[1]).to(table.dtype), table[-3:]])
