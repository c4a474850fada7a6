"""The shared neck: ViT token maps at one resolution -> a 4-level feature pyramid."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from benchmark.models.decoders.blocks import norm_2d


def _rescale(channels: int, scale: float, norm: str) -> nn.Module:
    if scale == 4:
        return nn.Sequential(
            nn.ConvTranspose2d(channels, channels, 2, stride=2),
            norm_2d(norm, channels),
            nn.GELU(),
            nn.ConvTranspose2d(channels, channels, 2, stride=2),
        )
    if scale == 2:
        return nn.ConvTranspose2d(channels, channels, 2, stride=2)
    if scale == 1:
        return nn.Identity()
    if scale == 0.5:
        return nn.MaxPool2d(2, ceil_mode=True)
    raise ValueError(f"unsupported pyramid scale {scale}; use 4, 2, 1 or 0.5")


class FeaturePyramidNeck(nn.Module):
    """Rescale the encoder's selected layers to 4x, 2x, 1x and 1/2x of the token grid.

    Transposed convolutions go up, max pooling (ceil mode, so odd grids such as CROMA's 15x15 keep
    every token) goes down. Channels are kept.

    Args:
        in_dims: channels of each encoder output (one per pyramid level).
        scales: resize factor per level, finest first.
        norm: ``batch`` or ``group``.
    """

    def __init__(self, in_dims: Sequence[int], scales: Sequence[float] = (4, 2, 1, 0.5), norm: str = "batch") -> None:
        super().__init__()
        if len(in_dims) != len(scales):
            raise ValueError(
                f"the neck needs one encoder output per pyramid level: got {len(in_dims)} outputs "
                f"for scales {list(scales)}; set encoder.output_layers to {len(scales)} layers"
            )
        self.out_dims = list(in_dims)
        self.levels = nn.ModuleList(_rescale(dim, scale, norm) for dim, scale in zip(in_dims, scales))

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [level(feature) for level, feature in zip(self.levels, features)]
