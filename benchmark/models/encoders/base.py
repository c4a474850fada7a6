"""The contract every encoder family follows, and the split of an encoder config into architecture
and weights file.

An encoder takes ``{modality: (B, C, T, H, W)}`` images and returns one (B, C_i, h, w) map per
requested block. Constructing it only builds the module; the release weights are loaded afterwards
by :func:`benchmark.models.encoders.weights.load_pretrained` (skipped in ``mode=random``).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from benchmark.data.bands import canonical_band_dict
from benchmark.models.encoders.layout import ReleaseLayout, drop_keys

# Keys of an encoder config (configs/encoder/*.yaml) that say where the release file is, not what to
# build: the builder reads them to load the weights; the constructor never sees them.
WEIGHTS_KEYS = ("encoder_weights", "download_url")


def architecture_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The constructor's part of an encoder config: ``config`` resolved, without :data:`WEIGHTS_KEYS`.

    ``hydra.utils.instantiate`` it to build the encoder (no file is read).
    """
    if isinstance(config, DictConfig):
        config = OmegaConf.to_container(config, resolve=True)
    return {key: value for key, value in config.items() if key not in WEIGHTS_KEYS}


class Encoder(nn.Module):
    """Base class of all encoders.

    Subclasses build their layers in ``__init__`` (and nothing else: no file is read there), implement
    :meth:`forward`, and describe their release file(s) in :attr:`release_layouts`; they override
    :meth:`unbuilt_prefixes` and :meth:`from_release` where the file needs more than renaming.

    Attributes:
        input_bands: ``{modality: [band, ...]}`` in the order the model expects.
        input_size: side of the square input window in pixels.
        patch_size: pixels per token side.
        output_layers: 0-based block indices whose outputs are returned.
        output_dims: channels of each returned map.
        release_layouts: the layouts of the family's release files, tried in order.
        lora_targets: regular expressions over module names of the layers LoRA adapts: ``attention``
            (the q/k/v and output projections; a fused qkv is one layer) and ``mlp``. The default names
            are timm's ViT blocks'.
    """

    release_layouts: tuple[ReleaseLayout, ...] = ()
    num_frames: int = 1  # frames read at once (then features are (B, T, C, h, w)); single-date encoders run per frame
    lora_targets: dict[str, str] = {"attention": r".*\.attn\.(qkv|proj)", "mlp": r".*\.mlp\.(fc1|fc2)"}

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

    def transformer_blocks(self) -> list[nn.Module]:
        """The built transformer blocks, input to output (``mode=partial``, ``encoder_lr_decay``)."""
        if not isinstance(getattr(self, "blocks", None), nn.ModuleList):
            raise ValueError(f"{type(self).__name__} has no transformer blocks: mode=partial and encoder_lr_decay apply to ViT encoders")
        return list(self.blocks)

    def unbuilt_prefixes(self) -> tuple[str, ...]:
        """State-dict prefixes of the release's modules that this configuration does not build (blocks
        past the deepest requested output, another sensor's encoder): their weights are not loaded."""
        return ()

    def from_release(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The release's encoder weights (renamed by the layout) made loadable into this configuration.

        Drops the weights of unbuilt modules; families extend it with their documented, logged
        adaptations (position tables for another grid or frame count) and raise
        :class:`~benchmark.models.encoders.layout.CheckpointLayoutError` for a file made for other
        bands or sizes.
        """
        return drop_keys(state_dict, self.unbuilt_prefixes())

    def forward(self, image: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """``image[modality]`` is (B, C, T, H, W); returns one (B, C_i, h, w) map per output layer."""
        raise NotImplementedError
