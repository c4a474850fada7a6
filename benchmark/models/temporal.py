"""Temporal heads: per-frame encoder features (B, T, C, h, w), frames oldest first, merged into one map
(B, C, h, w) per output level before any decoder (config group ``temporal``). The features come from a
single-date encoder run on each frame, or from Prithvi reading all frames at once.

- :class:`TemporalMean`: the average over frames (no parameters; order-blind).
- :class:`TemporalLinear`: a learned weight per frame and channel plus a bias, starting as the average.
- :class:`LTAE`: the Lightweight Temporal Attention Encoder (Garnot & Landrieu, 2020) applied per pixel, as
  PANGAEA configures it, plus a code of the frame index (see the class).

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
    """Lightweight temporal attention per pixel, laid out as PANGAEA's ``LTAE2d`` with ``d_model`` and the
    MLP at the level's width: GroupNorm, a linear input projection, keys from it for a learned master
    query per head, each head's attention-weighted average of its share of the channels, Linear +
    BatchNorm + ReLU, dropout, GroupNorm. One departure: a sin-cos code of the frame index is added
    before the keys (PANGAEA passes no dates, so its L-TAE cannot tell pre-fire from post-fire).

    Args:
        channels: C of the level's maps (kept: the decoder sees the encoder's widths).
        frames: T, the frames of every sample.
        heads: attention heads; each averages ``channels / heads`` channels (C must be divisible by it).
        key_dim: size of each head's keys and master query.
        dropout: after the MLP (attention weights: 0.1, as PANGAEA).
    """

    def __init__(self, channels: int, frames: int, heads: int = 16, key_dim: int = 4, dropout: float = 0.2) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"L-TAE: {channels} channels cannot be split into temporal.heads={heads} heads")
        self.heads, self.key_dim = heads, key_dim
        self.norm_in = nn.GroupNorm(heads, channels)
        self.project = nn.Linear(channels, channels)
        self.register_buffer("frame_code", sincos_1d(channels, torch.arange(frames)), persistent=False)  # (T, C)
        self.keys = nn.Linear(channels, heads * key_dim)
        self.query = nn.Parameter(torch.randn(heads, key_dim) * math.sqrt(2.0 / key_dim))
        nn.init.normal_(self.keys.weight, std=math.sqrt(2.0 / key_dim))
        self.attention_dropout = nn.Dropout(0.1)
        self.mlp = nn.Sequential(nn.Linear(channels, channels), nn.BatchNorm1d(channels), nn.ReLU(), nn.Dropout(dropout))
        self.norm_out = nn.GroupNorm(heads, channels)

    def sequences(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C, h, w) -> per-pixel sequences (B*h*w, T, C): normalised, projected, frame code added."""
        b, t, c, h, w = x.shape
        x = self.norm_in(x.reshape(b * t, c, h, w)).view(b, t, c, h, w)
        return self.project(x.permute(0, 3, 4, 1, 2).reshape(b * h * w, t, c)) + self.frame_code.to(x.dtype)

    def attention(self, sequences: torch.Tensor) -> torch.Tensor:
        """(N, heads, T) attention weights over the frames of each of the N pixel sequences."""
        n, t, _ = sequences.shape
        keys = self.keys(sequences).view(n, t, self.heads, self.key_dim)
        scores = torch.einsum("nthd,hd->nht", keys, self.query) / math.sqrt(self.key_dim)
        return self.attention_dropout(scores.softmax(dim=-1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c, h, w = x.shape
        sequences = self.sequences(x)
        values = sequences.view(b * h * w, t, self.heads, c // self.heads)
        merged = torch.einsum("nht,nthc->nhc", self.attention(sequences), values).reshape(b * h * w, c)
        return self.norm_out(self.mlp(merged)).view(b, h, w, c).permute(0, 3, 1, 2)


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
