"""The shared neck: ViT token maps at one resolution -> a 4-level feature pyramid."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from benchmark.models.decoders.blocks import norm_2d

# Which encoder outputs feed the pyramid (PANGAEA's ``pyramid_strategy`` values): ``head`` (MUSTER's name) and
# ``head_only`` (SegFormer's) build every level from the LAST selected layer; ``intermediate`` gives each level
# its own layer, finest level from the first.
PYRAMID_STRATEGIES = ("head", "head_only", "intermediate")


def check_pyramid_strategy(strategy: str) -> None:
    if strategy not in PYRAMID_STRATEGIES:
        raise ValueError(f"unknown pyramid_strategy {strategy!r}; use one of {', '.join(PYRAMID_STRATEGIES)}")


def pyramid_dims(in_dims: Sequence[int], strategy: str, levels: int = 4) -> list[int]:
    """Channels of the maps that ``pyramid_inputs`` hands to the neck."""
    check_pyramid_strategy(strategy)
    return list(in_dims) if strategy == "intermediate" else [list(in_dims)[-1]] * levels


def pyramid_inputs(features: Sequence[torch.Tensor], strategy: str, levels: int = 4) -> list[torch.Tensor]:
    """The (B, C, h, w) maps that feed the ``levels`` pyramid levels under ``strategy``."""
    return list(features) if strategy == "intermediate" else [features[-1]] * levels


def _rescale(in_dim: int, out_dim: int, scale: float, norm: str) -> nn.Module:
    """One pyramid level: resize by ``scale``; the last layer maps ``in_dim`` to ``out_dim`` channels."""
    if scale == 4:
        return nn.Sequential(
            nn.ConvTranspose2d(in_dim, in_dim, 2, stride=2),
            norm_2d(norm, in_dim),
            nn.GELU(),
            nn.ConvTranspose2d(in_dim, out_dim, 2, stride=2),
        )
    if scale == 2:
        return nn.ConvTranspose2d(in_dim, out_dim, 2, stride=2)
    project = nn.Conv2d(in_dim, out_dim, 1) if out_dim != in_dim else nn.Identity()
    if scale == 1:
        return project
    if scale == 0.5:
        pool = nn.MaxPool2d(2, ceil_mode=True)
        return pool if out_dim == in_dim else nn.Sequential(pool, project)
    raise ValueError(f"unsupported pyramid scale {scale}; use 4, 2, 1 or 0.5")


class FeaturePyramidNeck(nn.Module):
    """Rescale the encoder's selected layers to 4x, 2x, 1x and 1/2x of the token grid.

    Transposed convolutions go up, max pooling (ceil mode, so odd grids such as CROMA's 15x15 keep
    every token) goes down. Channels are kept unless ``out_dims`` asks otherwise: then the level's
    last transposed conv changes them, or a 1x1 conv does (after the pooling at 1/2x), as in the
    Swin-like pyramid that PANGAEA's MUSTER builds (C/4, C/2, C, 2C).

    Args:
        in_dims: channels of each encoder output (one per pyramid level).
        scales: resize factor per level, finest first.
        norm: ``batch`` or ``group``.
        out_dims: channels per level (default: ``in_dims``).
    """

    def __init__(
        self,
        in_dims: Sequence[int],
        scales: Sequence[float] = (4, 2, 1, 0.5),
        norm: str = "batch",
        out_dims: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if len(in_dims) != len(scales):
            raise ValueError(
                f"the neck needs one encoder output per pyramid level: got {len(in_dims)} outputs "
                f"for scales {list(scales)}; set encoder.output_layers to {len(scales)} layers"
            )
        self.out_dims = list(out_dims if out_dims is not None else in_dims)
        self.levels = nn.ModuleList(
            _rescale(dim, out, scale, norm) for dim, out, scale in zip(in_dims, self.out_dims, scales)
        )

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [level(feature) for level, feature in zip(self.levels, features)]
