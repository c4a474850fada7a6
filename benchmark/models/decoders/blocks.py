"""Small building blocks shared by the decoders."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def norm_2d(kind: str, channels: int) -> nn.Module:
    """A normalisation layer that works on CPU and GPU: ``batch`` (default) or ``group``.

    Under DDP on CUDA, BatchNorm layers are converted to SyncBatchNorm by the trainer, never here.
    """
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        # at least 2 channels per group, so that a 1x1 map (pyramid pooling) still has statistics
        groups = next((g for g in (32, 16, 8, 4, 2) if channels % g == 0 and channels // g >= 2), 1)
        return nn.GroupNorm(groups, channels)
    raise ValueError(f"unknown norm {kind!r}; use 'batch' or 'group'")


ACTIVATIONS = {"relu": lambda: nn.ReLU(inplace=True), "gelu": nn.GELU}


class ConvNormAct(nn.Sequential):
    """Conv2d -> norm -> activation (``relu`` or ``gelu``), padding keeping the spatial size for odd kernels.

    ``bias`` adds a conv bias; the norm cancels it, but PANGAEA's UPerNet convs carry one, so its parameter
    count is matched by asking for it.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        norm: str = "batch",
        bias: bool = False,
        act: str = "relu",
    ) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias),
            norm_2d(norm, out_channels),
            ACTIVATIONS[act](),
        )


def resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize of (B, C, h, w) maps to ``size`` (H, W); a no-op when the size already matches."""
    size = (int(size[0]), int(size[1]))
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
