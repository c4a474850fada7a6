"""MUSTER (Xu et al. 2022, arXiv:2211.13928): a hierarchical shifted-window transformer decoder."""

from __future__ import annotations

import logging
import math
from typing import Sequence

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, trunc_normal_
from timm.models.swin_transformer import window_partition, window_reverse
from torch import nn

from benchmark.models.decoders.blocks import ConvNormAct, resize
from benchmark.models.decoders.neck import FeaturePyramidNeck

log = logging.getLogger(__name__)

# Swin's value for masked attention logits: finite, so a window made only of padding keeps a defined softmax.
MASKED = -100.0


def clip_heads(dim: int, heads: int) -> int:
    """The largest head count <= ``heads`` that divides ``dim``."""
    return next(h for h in range(min(heads, dim), 0, -1) if dim % h == 0)


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
        bias = self.position_bias(window).unsqueeze(0)
        if mask is not None:
            # windows are ordered (batch, window): tile the per-window mask over the batch
            bias = (bias + mask.unsqueeze(1)).repeat(b // mask.shape[0], 1, 1, 1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


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
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

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
        x = x + self.drop_path(self.attend(self.norm1(x), self.norm_skip(skip)))
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return self.norm3(x)


class MusterStage(nn.Module):
    """Skip-attention blocks at one pyramid level, then MUSTER's fuse-and-upsample: concatenate the
    decoder state with the skip, 1x1 conv-norm-ReLU (2C -> 2C) and, except at the finest stage, patch
    expanding by PixelShuffle(2) to C/2 channels at twice the resolution.

    (B, C, H, W) state and skip -> (B, C/2, 2H, 2W), or (B, 2C, H, W) without ``upsample``.
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        drop_path: Sequence[float],
        upsample: bool,
        norm: str,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            SkipAttentionBlock(dim, num_heads, window_size, i % 2 == 1, mlp_ratio, drop_path[i])
            for i in range(depth)
        )
        self.fuse = ConvNormAct(2 * dim, 2 * dim, 1, norm)
        self.expand = nn.PixelShuffle(2) if upsample else nn.Identity()

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        state, skip_last = x.permute(0, 2, 3, 1), skip.permute(0, 2, 3, 1)
        for block in self.blocks:
            state = block(state, skip_last)
        return self.expand(self.fuse(torch.cat([state.permute(0, 3, 1, 2), skip], dim=1)))


class MUSTER(nn.Module):
    """MUSTER decoder on the shared feature pyramid, coarse to fine.

    The pyramid levels (1/2x, 1x, 2x, 4x of the token grid) are each projected (1x1) to their stage
    width. Stage i runs ``depths[i]`` blocks of windowed skip attention (queries from its level, keys and
    values from the decoder state), fuses state and level, and expands the patches (twice the resolution,
    half the width) for the next stage. A light head (1x1 conv-norm-ReLU to ``channels``, dropout, 1x1
    classifier) follows the finest stage.

    Windows are ``window_size`` tokens, clipped per axis to small grids; grids that are not window
    multiples are padded and the padding is masked out of attention, so any (non-square) grid works.

    Args:
        in_dims: channels of the encoder outputs (4, one per pyramid level).
        num_classes: output classes.
        channels: width of the head.
        embed_dim: width of the coarsest stage, halved at each later stage (default: the coarsest encoder
            output's channels, as MUSTER takes its first width from the backbone); must be divisible by
            2 ** (stages - 1).
        window_size: attention window side in tokens.
        depths: blocks per stage, coarse to fine.
        num_heads: attention heads per stage, coarse to fine. A count that does not divide its stage width
            is lowered to the largest one that does (logged): e.g. 32 heads on a 48-wide stage become 24.
        mlp_ratio: MLP hidden width over stage width.
        drop_path_rate: stochastic depth, rising linearly over all blocks from 0 to this rate.
        dropout: Dropout2d rate before the classifier (active in training only).
        norm: ``batch`` or ``group`` for the conv layers (attention blocks use LayerNorm).
    Returns raw logits (B, num_classes, H, W) at ``output_size``.
    """

    def __init__(
        self,
        in_dims: Sequence[int],
        num_classes: int,
        channels: int = 256,
        embed_dim: int | None = None,
        window_size: int = 12,
        depths: Sequence[int] = (2, 2, 2, 2),
        num_heads: Sequence[int] = (32, 16, 8, 4),
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.1,
        dropout: float = 0.1,
        norm: str = "batch",
    ) -> None:
        super().__init__()
        self.neck = FeaturePyramidNeck(in_dims, norm=norm)
        dims = self.neck.out_dims[::-1]
        stages = len(dims)
        if len(depths) != stages or len(num_heads) != stages:
            raise ValueError(
                f"MUSTER has one stage per pyramid level: depths {list(depths)} and num_heads {list(num_heads)} "
                f"need {stages} entries each"
            )
        embed_dim = embed_dim or dims[0]
        factor = 2 ** (stages - 1)
        if embed_dim % factor:
            suggestion = max(factor, embed_dim // factor * factor)
            raise ValueError(
                f"MUSTER halves its width at each of its {stages} stages, so embed_dim must be divisible by "
                f"{factor}; got {embed_dim}. Set decoder.embed_dim to e.g. {suggestion}"
            )
        widths = [embed_dim // 2**i for i in range(stages)]
        heads = [clip_heads(width, h) for width, h in zip(widths, num_heads)]
        if heads != list(num_heads):
            log.info("MUSTER: num_heads %s lowered to %s to divide stage widths %s", list(num_heads), heads, widths)
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        starts = [sum(depths[:i]) for i in range(stages)]
        self.projections = nn.ModuleList(nn.Conv2d(dim, width, 1) for dim, width in zip(dims, widths))
        self.stages = nn.ModuleList(
            MusterStage(
                widths[i],
                depths[i],
                heads[i],
                window_size,
                mlp_ratio,
                rates[starts[i] : starts[i] + depths[i]],
                upsample=i < stages - 1,
                norm=norm,
            )
            for i in range(stages)
        )
        self.head = ConvNormAct(2 * widths[-1], channels, 1, norm)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: Sequence[torch.Tensor], output_size: tuple[int, int]) -> torch.Tensor:
        levels = self.neck(features)[::-1]
        skips = [project(level) for project, level in zip(self.projections, levels)]
        x = skips[0]
        for stage, skip in zip(self.stages, skips):
            # Patch expanding doubles the size; cropping undoes the neck's ceil-mode pooling of odd grids
            # (15 -> 8 -> 16 -> 15), whose last cell came from the last row/column.
            x = stage(x[..., : skip.shape[-2], : skip.shape[-1]], skip)
        return resize(self.classifier(self.dropout(self.head(x))), output_size)
