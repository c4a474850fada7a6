"""Temporal heads: the per-frame features of a single-date encoder, (B, T, C, h, w) with frames oldest first,
merged into one map (B, C, h, w) per output level before any decoder (config group ``temporal``).

- :class:`TemporalMean`: the average over frames (no parameters; order-blind).
- :class:`TemporalLinear`: a learned weight per frame and channel plus a bias, starting as the average.
- :class:`LTAE`: the Lightweight Temporal Attention Encoder (Garnot & Landrieu, 2020) applied per pixel: a
  learned master query per head attends over the frames, whose keys carry a sin-cos encoding of the frame
  index; each head averages its share of the channels with its attention weights; a linear layer, norm and
  ReLU follow.

A head is built per output level by :class:`TemporalDecoder`, which wraps the decoder so that checkpoints,
optimizer groups and frozen-encoder modes treat the heads as the decoder's (they always train).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import nn

from benchmark.models.encoders.vit import sincos_1d


class TemporalMean(nn.Module):
    """The average of the frames."""

    def __init__(self, channels: int, frames: int) -> None:
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=1)


class TemporalLinear(nn.Module):
    """``sum_t w[t, c] x[:, t, c] + b[c]``; starts as the average of the frames."""

    def __init__(self, channels: int, frames: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((frames, channels), 1.0 / frames))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("btchw,tc->bchw", x, self.weight) + self.bias[:, None, None]


class LTAE(nn.Module):
    """Lightweight temporal attention per pixel.

    Args:
        channels: C of the level's maps (kept: the decoder sees the encoder's widths).
        frames: T, the frames of every sample.
        heads: attention heads; each averages ``channels / heads`` channels (C must be divisible by it).
        key_dim: size of each head's keys and master query.
    """

    def __init__(self, channels: int, frames: int, heads: int = 16, key_dim: int = 4) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"L-TAE: {channels} channels cannot be split into temporal.heads={heads} heads")
        self.heads, self.key_dim = heads, key_dim
        self.norm_in = nn.GroupNorm(heads, channels)
        self.register_buffer("frame_code", sincos_1d(channels, torch.arange(frames)), persistent=False)  # (T, C)
        self.keys = nn.Linear(channels, heads * key_dim)
        self.query = nn.Parameter(torch.randn(heads, key_dim) / math.sqrt(key_dim))
        self.out = nn.Sequential(nn.Linear(channels, channels), nn.LayerNorm(channels), nn.ReLU())

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """(B, heads, T, h, w) attention weights over the frames."""
        b, t, c, h, w = x.shape
        keys = self.keys(self.sequences(x)).view(b * h * w, t, self.heads, self.key_dim)
        scores = torch.einsum("nthd,hd->nht", keys, self.query) / math.sqrt(self.key_dim)
        return scores.softmax(dim=-1).view(b, h, w, self.heads, t).permute(0, 3, 4, 1, 2)

    def sequences(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C, h, w) -> per-pixel sequences (B*h*w, T, C), normalised, with the frame code added."""
        b, t, c, h, w = x.shape
        x = self.norm_in(x.reshape(b * t, c, h, w)).view(b, t, c, h, w)
        return x.permute(0, 3, 4, 1, 2).reshape(b * h * w, t, c) + self.frame_code.to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c, h, w = x.shape
        weights = self.attention(x).permute(0, 3, 4, 1, 2).reshape(b * h * w, self.heads, t)
        values = self.sequences(x).view(b * h * w, t, self.heads, c // self.heads)
        merged = torch.einsum("nht,nthc->nhc", weights, values).reshape(b * h * w, c)
        return self.out(merged).view(b, h, w, c).permute(0, 3, 1, 2)


class TemporalDecoder(nn.Module):
    """A decoder behind one temporal head per encoder output level: features (B, T, C_i, h_i, w_i) -> decoder."""

    def __init__(self, decoder: nn.Module, make_head: Callable[..., nn.Module], in_dims: Sequence[int], frames: int) -> None:
        super().__init__()
        self.heads = nn.ModuleList(make_head(channels=c, frames=frames) for c in in_dims)
        self.decoder = decoder
        self.frames = frames

    def __getattr__(self, name: str):  # the wrapped decoder's attributes (min_train_batch, needs_pyramid, ...)
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("decoder"), name)

    def forward(self, features: Sequence[torch.Tensor], output_size: tuple[int, int]) -> torch.Tensor:
        return self.decoder([head(f) for head, f in zip(self.heads, features)], output_size)
