"""SegFormer's all-MLP head (Xie et al. 2021) on the shared feature pyramid, as PANGAEA builds it."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from benchmark.models.decoders.blocks import ConvNormAct, resize
from benchmark.models.decoders.neck import FeaturePyramidNeck, pyramid_dims, pyramid_inputs


class SegFormer(nn.Module):
    """Per level a 1x1 conv-norm-ReLU projection to ``channels``, upsample to the finest level, concatenate,
    1x1 fuse conv-norm-ReLU, dropout, 1x1 classifier.

    By default (PANGAEA's ``pyramid_strategy: head_only``) all four pyramid levels are built from the LAST
    selected encoder layer; ``intermediate`` gives each level its own layer.

    Args:
        in_dims: channels of the encoder outputs.
        num_classes: output classes.
        channels: width of the projections and of the fused map (PANGAEA: 512).
        dropout: Dropout2d rate before the classifier (active in training only).
        norm: ``batch`` or ``group``.
        pyramid_strategy: ``head_only`` (or its synonym ``head``) or ``intermediate``.
    Returns raw logits (B, num_classes, H, W) at ``output_size``.
    """

    def __init__(
        self,
        in_dims: Sequence[int],
        num_classes: int,
        channels: int = 512,
        dropout: float = 0.1,
        norm: str = "batch",
        pyramid_strategy: str = "head_only",
    ) -> None:
        super().__init__()
        self.pyramid_strategy = pyramid_strategy
        self.neck = FeaturePyramidNeck(pyramid_dims(in_dims, pyramid_strategy), norm=norm)
        dims = self.neck.out_dims
        self.projections = nn.ModuleList(ConvNormAct(dim, channels, 1, norm) for dim in dims)
        self.fuse = ConvNormAct(channels * len(dims), channels, 1, norm)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: Sequence[torch.Tensor], output_size: tuple[int, int]) -> torch.Tensor:
        pyramid = self.neck(pyramid_inputs(features, self.pyramid_strategy))
        finest = pyramid[0].shape[-2:]
        # project at each level's own size, then upsample (as SegFormer does): fewer pixels to project
        maps = [resize(project(level), finest) for project, level in zip(self.projections, pyramid)]
        logits = self.classifier(self.dropout(self.fuse(torch.cat(maps, dim=1))))
        return resize(logits, output_size)
