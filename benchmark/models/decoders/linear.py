"""Linear probe: a per-token linear classifier on the encoder's last layer."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from benchmark.models.decoders.blocks import resize


class LinearProbe(nn.Module):
    """A 1x1 convolution (one linear map per token) on the LAST encoder output, then bilinear upsampling.

    Only ``features[-1]`` is used; the other selected layers are ignored, so the head measures how
    linearly separable the encoder's final features are.

    Args:
        in_dims: channels of the encoder outputs; only the last one is read.
        num_classes: output classes.
        batch_norm: normalise the features with BatchNorm before the linear map (off by default; at
            inference it folds into the linear map, so the probe stays linear).
    Returns raw logits (B, num_classes, H, W) at ``output_size``.
    """

    def __init__(self, in_dims: Sequence[int], num_classes: int, batch_norm: bool = False) -> None:
        super().__init__()
        in_dim = list(in_dims)[-1]
        self.norm = nn.BatchNorm2d(in_dim) if batch_norm else nn.Identity()
        self.classifier = nn.Conv2d(in_dim, num_classes, 1)

    def forward(self, features: Sequence[torch.Tensor], output_size: tuple[int, int]) -> torch.Tensor:
        return resize(self.classifier(self.norm(features[-1])), output_size)
