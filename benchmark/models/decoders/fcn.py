"""FCN head (Long et al. 2015, mmsegmentation's FCNHead variant) on the encoder's last layer."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from benchmark.models.decoders.blocks import ConvNormAct, resize

UPSAMPLING = ("bilinear", "pixel_shuffle")


class FCN(nn.Module):
    """3x3 conv-norm-ReLU blocks on the LAST encoder output, a 1x1 classifier, then upsampling.

    Only ``features[-1]`` is used; the other selected layers are ignored.

    Args:
        in_dims: channels of the encoder outputs; only the last one is read.
        num_classes: output classes.
        channels: width of the conv blocks.
        num_convs: number of 3x3 blocks (at least 1).
        concat_input: concatenate the input features with the blocks' output and fuse them with one
            more 3x3 block (a skip that keeps the encoder's features close to the classifier).
        dropout: Dropout2d rate before the classifier (active in training only).
        upsample: ``bilinear`` (upsample the logits) or ``pixel_shuffle`` (the classifier predicts
            ``patch_size``**2 sub-pixel logits per token, rearranged by PixelShuffle: a learned upsampling).
        patch_size: pixels per token side; required by ``pixel_shuffle``.
        norm: ``batch`` or ``group``.
    Returns raw logits (B, num_classes, H, W) at ``output_size`` (bilinearly resized if PixelShuffle's
    token grid x patch_size differs from it).
    """

    def __init__(
        self,
        in_dims: Sequence[int],
        num_classes: int,
        channels: int = 512,
        num_convs: int = 2,
        concat_input: bool = True,
        dropout: float = 0.1,
        upsample: str = "bilinear",
        patch_size: int | None = None,
        norm: str = "batch",
    ) -> None:
        super().__init__()
        if num_convs < 1:
            raise ValueError(f"FCN needs num_convs >= 1, got {num_convs}; use seg_linear for a head without convs")
        if upsample not in UPSAMPLING:
            raise ValueError(f"unknown upsample {upsample!r}; use one of {', '.join(UPSAMPLING)}")
        if upsample == "pixel_shuffle" and not patch_size:
            raise ValueError(
                "upsample='pixel_shuffle' needs the encoder's patch_size; set patch_size: ${encoder.patch_size} "
                "in the decoder config"
            )
        in_dim = list(in_dims)[-1]
        self.convs = nn.Sequential(
            *(ConvNormAct(in_dim if i == 0 else channels, channels, 3, norm) for i in range(num_convs))
        )
        self.concat_input = concat_input
        self.fuse = ConvNormAct(in_dim + channels, channels, 3, norm) if concat_input else nn.Identity()
        self.dropout = nn.Dropout2d(dropout)
        scale = patch_size if upsample == "pixel_shuffle" else 1
        self.classifier = nn.Conv2d(channels, num_classes * scale * scale, 1)
        self.upsample = nn.PixelShuffle(scale) if scale > 1 else nn.Identity()

    def forward(self, features: Sequence[torch.Tensor], output_size: tuple[int, int]) -> torch.Tensor:
        x = features[-1]
        out = self.convs(x)
        if self.concat_input:
            out = self.fuse(torch.cat([x, out], dim=1))
        return resize(self.upsample(self.classifier(self.dropout(out))), output_size)
