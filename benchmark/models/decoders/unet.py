"""The expanding half of a U-Net: PANGAEA's ``seg_unet`` head for the U-Net encoder's feature pyramid."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.models.decoders.blocks import ConvNormAct, resize


class UpStage(nn.Module):
    """Upsample 2x with a learned 2x2 transposed conv (channels kept), concatenate the skip map, fuse
    with two 3x3 conv-norm-ReLU blocks (convs with a bias, as PANGAEA's ``Up``)."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, norm: str) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, in_channels, 2, stride=2)
        self.fuse = nn.Sequential(
            ConvNormAct(skip_channels + in_channels, out_channels, 3, norm, bias=True),
            ConvNormAct(out_channels, out_channels, 3, norm, bias=True),
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """x (B, C_in, h, w), skip (B, C_skip, H, W) with H in {2h, 2h + 1} -> (B, C_out, H, W)."""
        x = self.up(x)
        dy, dx = skip.shape[-2] - x.shape[-2], skip.shape[-1] - x.shape[-1]
        if dy not in (0, 1) or dx not in (0, 1):
            raise ValueError(
                f"seg_unet: a {tuple(x.shape[-2:])} map upsampled 2x does not fit its {tuple(skip.shape[-2:])} "
                "skip map; it needs encoder maps that halve in size from one to the next (encoder=unet)"
            )
        # an odd side was floored by the encoder's pooling: pad the missing row/column back (as PANGAEA)
        x = F.pad(x, (dx // 2, dx - dx // 2, dy // 2, dy - dy // 2))
        return self.fuse(torch.cat([skip, x], dim=1))


class UNetDecoder(nn.Module):
    """U-Net decoder: from the deepest encoder map up to the finest, one :class:`UpStage` per skip map,
    then a 1x1 classifier at the finest map's resolution (the input's, for ``encoder=unet``).

    Each stage narrows to the width of the next finer encoder level, the last stage keeps the finest
    width: for PANGAEA's encoder widths 64, 128, 256, 512, 512 the stages output 256, 128, 64, 64, exactly
    PANGAEA's ``UNet_Decoder``.

    Args:
        in_dims: channels of the encoder maps, finest first, each map half the size of the one before.
        num_classes: output classes.
        norm: ``batch`` (PANGAEA) or ``group``.
    Returns raw logits (B, num_classes, H, W) at ``output_size`` (resized only if the finest map differs).
    """

    needs_pyramid = True  # read by the start-up checks: maps of one resolution (ViT tokens) cannot feed it

    def __init__(self, in_dims: Sequence[int], num_classes: int, norm: str = "batch") -> None:
        super().__init__()
        dims = [int(d) for d in in_dims]
        if len(dims) < 2:
            raise ValueError(f"seg_unet needs at least 2 encoder maps (a pyramid), got in_dims={dims}")
        stages = []
        channels = dims[-1]
        for level in range(len(dims) - 2, -1, -1):
            out_channels = dims[max(level - 1, 0)]
            stages.append(UpStage(channels, dims[level], out_channels, norm))
            channels = out_channels
        self.stages = nn.ModuleList(stages)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: Sequence[torch.Tensor], output_size: tuple[int, int]) -> torch.Tensor:
        """``features`` finest first (B, C_i, H / 2**i, W / 2**i) -> logits (B, num_classes, *output_size)."""
        x = features[-1]
        for stage, skip in zip(self.stages, reversed(features[:-1])):
            x = stage(x, skip)
        return resize(self.classifier(x), output_size)
