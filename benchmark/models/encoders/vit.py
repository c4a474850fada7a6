"""Shared Vision Transformer pieces: sin-cos position embeddings, their interpolation, token maps, and
building and running the blocks up to the deepest requested output."""

from __future__ import annotations

import logging
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.models.layers import ViTBlock

log = logging.getLogger(__name__)


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """Sin-cos embedding of 1-D positions: (N,) -> (N, dim), sines in the first half."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding needs an even dim, got {dim}")
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega
    angles = positions.double().reshape(-1, 1) * omega.reshape(1, -1)
    return torch.cat([angles.sin(), angles.cos()], dim=1).float()


def sincos_pos_embed_2d(dim: int, grid_hw: tuple[int, int], cls_token: bool = True) -> torch.Tensor:
    """MAE-convention 2-D sin-cos table: (1, [1 +] h*w, dim).

    The first half of the channels encodes the column index, the second half the row index; the cls
    slot (when present) is zero.
    """
    h, w = grid_hw
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    emb = torch.cat([sincos_1d(dim // 2, cols.flatten()), sincos_1d(dim // 2, rows.flatten())], dim=1)
    if cls_token:
        emb = torch.cat([torch.zeros(1, dim), emb], dim=0)
    return emb.unsqueeze(0)


def sincos_pos_embed_3d(dim: int, grid_thw: tuple[int, int, int], cls_token: bool = True) -> torch.Tensor:
    """Prithvi-convention 3-D sin-cos table: (1, [1 +] t*h*w, dim), tokens ordered frame, row, column.

    Channels are split 6:6:4 (in sixteenths of ``dim``) between the column, row and frame index; the
    cls slot (when present) is zero.
    """
    if dim % 16:
        raise ValueError(f"3-D sin-cos embedding needs a dim divisible by 16, got {dim}")
    frames, rows, cols = torch.meshgrid(*(torch.arange(n) for n in grid_thw), indexing="ij")
    spatial_dim = dim // 16 * 6
    emb = torch.cat(
        [
            sincos_1d(spatial_dim, cols.flatten()),
            sincos_1d(spatial_dim, rows.flatten()),
            sincos_1d(dim - 2 * spatial_dim, frames.flatten()),
        ],
        dim=1,
    )
    if cls_token:
        emb = torch.cat([torch.zeros(1, dim), emb], dim=0)
    return emb.unsqueeze(0)


def resize_pos_embed(
    pos_embed: torch.Tensor,
    old_grid: tuple[int, int],
    new_grid: tuple[int, int],
    num_prefix_tokens: int = 1,
) -> torch.Tensor:
    """Bicubically interpolate the spatial part of a (1, prefix + h*w, D) table to a new grid."""
    if tuple(old_grid) == tuple(new_grid):
        return pos_embed
    prefix, spatial = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    dim = spatial.shape[-1]
    if spatial.shape[1] != old_grid[0] * old_grid[1]:
        raise ValueError(
            f"pos_embed has {spatial.shape[1]} spatial tokens, not {old_grid[0]}x{old_grid[1]}"
        )
    spatial = spatial.reshape(1, old_grid[0], old_grid[1], dim).permute(0, 3, 1, 2)
    spatial = F.interpolate(spatial.float(), size=tuple(new_grid), mode="bicubic", align_corners=False)
    spatial = spatial.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], dim)
    return torch.cat([prefix, spatial.to(pos_embed.dtype)], dim=1)


def grid_of(num_tokens: int) -> tuple[int, int]:
    """Square grid holding ``num_tokens`` tokens; raises if there is none."""
    side = round(num_tokens**0.5)
    if side * side != num_tokens:
        raise ValueError(f"{num_tokens} tokens do not form a square grid")
    return side, side


def adapt_pos_embed(
    state_dict: dict[str, torch.Tensor],
    key: str,
    new_grid: tuple[int, int],
    num_prefix_tokens: int,
    owner: str,
) -> None:
    """Interpolate ``state_dict[key]`` in place to ``new_grid`` (logged), if the grids differ."""
    if key not in state_dict:
        return
    table = state_dict[key]
    old_grid = grid_of(table.shape[1] - num_prefix_tokens)
    if old_grid != tuple(new_grid):
        log.info(
            "%s: interpolating %s from a %dx%d to a %dx%d token grid (bicubic)",
            owner, key, *old_grid, *new_grid,
        )
        state_dict[key] = resize_pos_embed(table, old_grid, new_grid, num_prefix_tokens)


def tokens_to_map(tokens: torch.Tensor, grid_hw: tuple[int, int], num_frames: int = 1) -> torch.Tensor:
    """(B, T*h*w, C) patch tokens, frame-major -> (B, C, h, w) maps for one frame, (B, T, C, h, w) for more
    (one map per frame, oldest first, for the temporal head)."""
    b, n, c = tokens.shape
    h, w = grid_hw
    maps = tokens.reshape(b, num_frames, h * w, c).transpose(2, 3).reshape(b, num_frames, c, h, w)
    return maps[:, 0] if num_frames == 1 else maps


def blocks_to_build(output_layers: Sequence[int], depth: int, owner: str) -> int:
    """How many of the ``depth`` blocks to build and run: those up to the deepest requested output (the
    deeper ones would never shape a returned feature). Raises for an index outside ``0..depth-1``."""
    if not output_layers or min(output_layers) < 0 or max(output_layers) >= depth:
        raise ValueError(
            f"output_layers {list(output_layers)} exceed the {depth} layers of the {owner}; "
            f"use indices 0..{depth - 1}"
        )
    return max(output_layers) + 1


def vit_block(embed_dim: int, num_heads: int, mlp_ratio: float, layer_norm_eps: float) -> nn.Module:
    """The pre-norm ViT block with qkv bias, as the MAE-lineage releases (DOFA, Prithvi, SSL4EO) use."""
    return ViTBlock(embed_dim, num_heads, mlp_ratio, qkv_bias=True, eps=layer_norm_eps)


def unbuilt_blocks(prefix: str, built: int, depth: int) -> tuple[str, ...]:
    """State-dict prefixes ``<prefix><i>.`` of the release's blocks ``built..depth-1``, which a model
    built by :func:`blocks_to_build` lacks (their weights are skipped when loading)."""
    return tuple(f"{prefix}{index}." for index in range(built, depth))


def collect_block_outputs(
    x: torch.Tensor,
    blocks: Sequence[nn.Module],
    output_layers: Sequence[int],
    num_prefix_tokens: int,
    grid_hw: tuple[int, int],
    final_norm: nn.Module | None = None,
    num_frames: int = 1,
    **block_kwargs: torch.Tensor,
) -> list[torch.Tensor]:
    """Run ``blocks`` on tokens ``x`` and return the requested block outputs as maps.

    ``final_norm`` (if given) is applied to the output of the last block only, for the families whose
    published features carry it. ``block_kwargs`` are passed to every block (an attention bias shared
    by all blocks, a cross-attention context). Tokens of ``num_frames`` > 1 frames give one map per
    frame (see :func:`tokens_to_map`).
    """
    outputs = []
    last = len(blocks) - 1
    for index, block in enumerate(blocks):
        x = block(x, **block_kwargs)
        if index in output_layers:
            out = final_norm(x) if (final_norm is not None and index == last) else x
            outputs.append(tokens_to_map(out[:, num_prefix_tokens:], grid_hw, num_frames))
    return outputs


def single_frame(image: torch.Tensor, owner: str) -> torch.Tensor:
    """(B, C, 1, H, W) -> (B, C, H, W); multi-temporal input to a single-frame encoder is an error."""
    if image.ndim != 5:
        raise ValueError(f"{owner} expects (B, C, T, H, W) input, got shape {tuple(image.shape)}")
    if image.shape[2] != 1:
        raise ValueError(
            f"{owner} takes one frame, but the input has T={image.shape[2]} frames; "
            "use a multi-temporal encoder (e.g. prithvi) or a single-date dataset"
        )
    return image[:, :, 0]
