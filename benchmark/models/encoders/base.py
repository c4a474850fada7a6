"""The encoder contract shared by every family (DESIGN §3)."""

from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from benchmark.data.bands import canonical_band_dict
from benchmark.models.encoders.weights import load_release_weights, resolve_weights_file

log = logging.getLogger(__name__)


class Encoder(nn.Module):
    """Base class of all encoders.

    Subclasses build their layers in ``__init__``, then call :meth:`init_pretrained`, and implement
    :meth:`forward` and :meth:`convert_release_checkpoint`.

    Attributes:
        input_bands: ``{modality: [band, ...]}`` in the order the model expects.
        input_size: side of the square input window in pixels.
        patch_size: pixels per token side.
        output_layers: 0-based block indices whose outputs are returned.
        output_dims: channels of each returned map.
        multi_temporal: whether the encoder consumes T > 1 frames itself.
    """

    multi_temporal: bool = False

    def __init__(
        self,
        input_bands: Mapping[str, Sequence[str]],
        input_size: int,
        patch_size: int,
        output_layers: Sequence[int],
        output_dims: Sequence[int],
    ) -> None:
        super().__init__()
        self.input_bands = canonical_band_dict(input_bands)
        self.input_size = int(input_size)
        self.patch_size = int(patch_size)
        self.output_layers = [int(i) for i in output_layers]
        self.output_dims = [int(d) for d in output_dims]
        if len(self.output_dims) != len(self.output_layers):
            raise ValueError("output_dims must have one entry per output layer")

    @property
    def grid_size(self) -> tuple[int, int]:
        """Token grid (h, w) for an ``input_size`` window."""
        side = self.input_size // self.patch_size
        return side, side

    def init_pretrained(
        self,
        pretrained: bool,
        encoder_weights: str | None,
        download_url: str | None,
    ) -> None:
        """Load the release checkpoint strictly when ``pretrained``; otherwise keep random init."""
        if not pretrained:
            log.info("%s: random initialisation (mode=random), no weights file read", type(self).__name__)
            return
        path = resolve_weights_file(encoder_weights, download_url)
        load_release_weights(self, path)

    def convert_release_checkpoint(self, checkpoint: Any) -> dict[str, torch.Tensor]:
        """Turn the object stored in the release file into this module's state_dict naming.

        Unwraps the family's layout, drops the keys a release file is known to carry besides the
        encoder (decoders, heads, momentum encoders) and applies the documented adaptations. Raises
        :class:`~benchmark.models.encoders.weights.CheckpointLayoutError` on a foreign layout.
        """
        raise NotImplementedError

    def forward(self, image: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """``image[modality]`` is (B, C, T, H, W); returns one (B, C_i, h, w) map per output layer."""
        raise NotImplementedError
