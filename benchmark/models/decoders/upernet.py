"""UPerNet (Xiao et al. 2018) on the shared feature pyramid."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.models.decoders.blocks import ConvNormAct, resize
from benchmark.models.decoders.neck import FeaturePyramidNeck


class PyramidPooling(nn.Module):
    """Pool to each scale, project, upsample back, concatenate with the input and fuse (3x3).

    Every conv carries a bias before its norm, as in PANGAEA (pangaea/decoders/upernet.py, ``nn.Conv2d``
    with its default ``bias=True`` before each ``nn.SyncBatchNorm``), so that parameter counts match.
    """

    def __init__(self, in_channels: int, channels: int, scales: Sequence[int], norm: str) -> None:
        super().__init__()
        self.scales = list(scales)
        self.branches = nn.ModuleList(ConvNormAct(in_channels, channels, 1, norm, bias=True) for _ in self.scales)
        self.bottleneck = ConvNormAct(in_channels + channels * len(self.scales), channels, 3, norm, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = [
            resize(branch(F.adaptive_avg_pool2d(x, scale)), size) for scale, branch in zip(self.scales, self.branches)
        ]
        return self.bottleneck(torch.cat([x, *pooled], dim=1))


class UPerNet(nn.Module):
    """UPerNet head: pyramid pooling on the coarsest level, FPN top-down fusion, fuse all levels.

    As PANGAEA builds it: each level its own encoder layer, every conv with a bias before its norm.

    Args:
        in_dims: channels of the encoder outputs (4 of them).
        num_classes: output classes.
        channels: width of every conv (512 in PANGAEA).
        pool_scales: pyramid pooling grid sizes.
        dropout: Dropout2d rate before the classifier (active in training only).
        norm: ``batch`` or ``group``.
    Returns raw logits (B, num_classes, H, W) at ``output_size``.
    """

    def __init__(
        self,
        in_dims: Sequence[int],
        num_classes: int,
        channels: int = 512,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        dropout: float = 0.1,
        norm: str = "batch",
    ) -> None:
        super().__init__()
        self.neck = FeaturePyramidNeck(in_dims, norm=norm)
        dims = self.neck.out_dims
        self.ppm = PyramidPooling(dims[-1], channels, pool_scales, norm)
        self.lateral = nn.ModuleList(ConvNormAct(dim, channels, 1, norm, bias=True) for dim in dims[:-1])
        self.fpn = nn.ModuleList(ConvNormAct(channels, channels, 3, norm, bias=True) for _ in dims[:-1])
        self.fuse = ConvNormAct(channels * len(dims), channels, 3, norm, bias=True)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        # BatchNorm after the 1x1 pooling branch sees one value per channel and sample: it needs 2 samples.
        self.min_train_batch = 2 if norm == "batch" and 1 in pool_scales else 1

    def forward(self, features: Sequence[torch.Tensor], output_size: tuple[int, int]) -> torch.Tensor:
        pyramid = self.neck(features)
        laterals = [conv(level) for conv, level in zip(self.lateral, pyramid[:-1])]
        laterals.append(self.ppm(pyramid[-1]))
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + resize(laterals[i], laterals[i - 1].shape[-2:])
        outs = [conv(level) for conv, level in zip(self.fpn, laterals[:-1])] + [laterals[-1]]
        finest = outs[0].shape[-2:]
        outs = [resize(o, finest) for o in outs]
        logits = self.classifier(self.dropout(self.fuse(torch.cat(outs, dim=1))))
        return resize(logits, output_size)
