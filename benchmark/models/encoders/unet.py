"""The contracting half of a U-Net (Ronneberger et al. 2015): PANGAEA's supervised baseline encoder,
trained from scratch (there is no release file).

Built as PANGAEA builds it (pangaea/encoders/unet_encoder.py, ``UNet`` with ``topology: [64, 128, 256,
512]``): a stem of two 3x3 conv-BatchNorm-ReLU blocks, then one level per topology entry, each a 2x2 max
pooling followed by two such blocks, widening to the next entry (the last level keeps its width). Convs
carry a bias before their BatchNorm, as PANGAEA's ``nn.Conv2d`` defaults do, so that parameter counts
match. Its decoder is :class:`benchmark.models.decoders.unet.UNetDecoder` (``decoder=seg_unet``).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn

from benchmark.models.encoders.base import Encoder
from benchmark.models.encoders.vit import single_frame


def double_conv(in_channels: int, out_channels: int) -> nn.Sequential:
    """(3x3 conv with bias -> BatchNorm -> ReLU) twice; keeps the spatial size."""
    layers: list[nn.Module] = []
    for channels in (in_channels, out_channels):
        layers += [
            nn.Conv2d(channels, out_channels, 3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        ]
    return nn.Sequential(*layers)


def level_dims(topology: Sequence[int]) -> list[int]:
    """Channels of the stem and of each pooled level: the topology, with its last width repeated for
    the deepest level (PANGAEA's ``UNet_Encoder``)."""
    return [int(c) for c in topology] + [int(topology[-1])]


class UNetEncoder(Encoder):
    """U-Net encoder on all bands of all modalities, stacked along channels in ``input_bands`` order.

    Returns ``len(topology) + 1`` maps, finest first: the stem's (B, topology[0], H, W), then level i
    (B, C_i, H / 2**i, W / 2**i); PANGAEA returns the same maps deepest first. There are no tokens:
    ``patch_size`` is the total downsampling of the deepest map, ``2 ** len(topology)``, so that the
    "token grid" of the embedding tools is that map's grid. Any input side of at least ``patch_size``
    pixels works (sides that do not halve evenly are padded back by the decoder, as PANGAEA does).

    Args:
        input_bands: ``{modality: [bands]}``; every modality's bands feed the first conv.
        input_size: window side in pixels (training crop and sliding window); PANGAEA uses the tile side.
        patch_size: must equal ``2 ** len(topology)`` (derived, stated in the config for the decoders
            and tools that read ``encoder.patch_size``).
        topology: width of the stem and of each level (PANGAEA: 64, 128, 256, 512).
    """

    pyramid_output = True  # read by the start-up checks: decoder=seg_unet needs maps that halve level by level

    def __init__(
        self,
        input_bands: Mapping[str, Sequence[str]],
        input_size: int = 512,
        patch_size: int = 16,
        topology: Sequence[int] = (64, 128, 256, 512),
    ) -> None:
        if not topology:
            raise ValueError("UNetEncoder needs at least one topology entry")
        if patch_size != 2 ** len(topology):
            raise ValueError(
                f"UNetEncoder: patch_size={patch_size} must be 2 ** len(topology) = {2 ** len(topology)} "
                f"(the downsampling of its deepest map for topology {list(topology)}); set encoder.patch_size"
            )
        dims = level_dims(topology)
        super().__init__(input_bands, input_size, patch_size, list(range(len(dims))), dims)
        self.modalities = list(self.input_bands)
        in_channels = sum(len(bands) for bands in self.input_bands.values())
        self.stem = double_conv(in_channels, dims[0])
        self.levels = nn.ModuleList(
            nn.Sequential(nn.MaxPool2d(2), double_conv(dims[i], dims[i + 1])) for i in range(len(topology))
        )

    def forward(self, image: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """``image[modality]`` (B, C, 1, H, W) -> maps (B, C_i, H / 2**i, W / 2**i), finest first."""
        x = torch.cat([single_frame(image[m], type(self).__name__) for m in self.modalities], dim=1)
        maps = [self.stem(x)]
        for level in self.levels:
            maps.append(level(maps[-1]))
        return maps
