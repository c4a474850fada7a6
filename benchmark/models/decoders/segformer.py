"""SegFormer's all-MLP head (Xie et al. 2021) on the shared feature pyramid."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from benchmark.models.decoders.blocks import ConvNormAct, resize
from benchmark.models.decoders.neck import FeaturePyramidNeck


class SegFormer(nn.Module):
    """Per level a linear (1x1) projection to ``channels``, upsample to the finest level, concatenate,
    1x1 fuse conv-norm-ReLU, dropout, 1x1 classifier.

    Args:
        in_dims: channels of the encoder outputs (4 of them, one per pyramid level).
        num_classes: output classes.
        channels: width of the projections and of the fused map (256 to 768 in SegFormer).
        dropout: Dropout2d rate before the classifier (active in training only).
        norm: ``batch`` or ``group``.
    Returns raw logits (B, num_classes, H, W) at ``output_size``.
    """

    def __init__(
        self,
        in_dims: Sequence[int],
        num_classes: int,
        channels: int = 256,
        dropout: float = 0.1,
        norm: str = "batch",
    ) -> None:
        super().__init__()
        self.neck = FeaturePyramidNeck(in_dims, norm=norm)
        dims = self.neck.out_dims
        self.projections = nn.ModuleList(nn.Conv2d(dim, channels, 1) for dim in dims)
        self.fuse = ConvNormAct(channels * len(dims), channels, 1, norm)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: Sequence[torch.Tensor], output_size: tuple[int, int]) -> torch.Tensor:
        pyramid = self.neck(features)
        finest = pyramid[0].shape[-2:]
        # Projection and bilinear resizing commute: projecting first does the matmuls at the coarse sizes.
        maps = [resize(project(level), finest) for project, level in zip(self.projections, pyramid)]
        logits = self.classifier(self.dropout(self.fuse(torch.cat(maps, dim=1))))
        return resize(logits, output_size)
