"""Prithvi-EO encoders (Jakubik et al. 2023; Szwarcman et al. 2024): MAE ViTs pretrained by IBM and
NASA on multi-temporal HLS imagery. Releases: https://huggingface.co/ibm-nasa-geospatial
(Prithvi-EO-1.0-100M: ViT-B/16; Prithvi-EO-2.0-300M: ViT-L/16; Prithvi-EO-2.0-600M: ViT-H/14).
"""

from __future__ import annotations

import logging
from typing import Mapping, Sequence

import torch
from torch import nn

from benchmark.models.encoders.base import Encoder
from benchmark.models.encoders.layout import CheckpointLayoutError, ReleaseLayout, drop_keys
from benchmark.models.encoders.vit import (
    blocks_to_build,
    collect_block_outputs,
    sincos_pos_embed_3d,
    unbuilt_blocks,
    vit_block,
)

log = logging.getLogger(__name__)

# The original MAE file (Prithvi_100M.pt): one flat state_dict; the MAE decoder, its mask token and the
# pre-decoder norm are not part of the encoder.
FLAT_LAYOUT = ReleaseLayout(
    name="Prithvi MAE",
    summary="flat, 3-D patch embedding",
    signature=("patch_embed.proj.weight",),
    ignored=("decoder_", "mask_token", "norm."),
)
# The newer files (TerraTorch PrithviMAE, Prithvi-EO-2.0): encoder.* and decoder.*.
PREFIXED_LAYOUT = ReleaseLayout(
    name="Prithvi MAE",
    summary="encoder.-prefixed",
    signature=("encoder.patch_embed.proj.weight",),
    rules=(("encoder.", ""),),
    ignored=("encoder.norm.", "encoder.mask_token", "decoder."),
)
# Date / location embeddings of the "-TL" releases: this encoder takes no coordinates.
COORDS_PREFIXES = ("temporal_embed_enc.", "location_embed_enc.")


class TubeletEmbed(nn.Module):
    """3-D patch embedding: (B, C, T, H, W) -> (B, embed_dim, T, h, w) with tubelets (1, p, p)."""

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int) -> None:
        super().__init__()
        kernel = (1, patch_size, patch_size)
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=kernel, stride=kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class Prithvi(Encoder):
    """Prithvi MAE encoder: tubelet embedding, cls token, fixed 3-D sin-cos ``pos_embed``, timm blocks.

    Features are the raw block outputs (no final norm): (B, embed_dim, h, w) maps for one frame. For
    ``num_frames`` T > 1 the tokens of all frames go through the transformer together and each output
    is one map per frame, (B, T, embed_dim, h, w), which the temporal head (``temporal=``) merges before
    the decoder, as PANGAEA's multi-temporal decoders do.

    Release layouts: :data:`FLAT_LAYOUT` (the original MAE file) and :data:`PREFIXED_LAYOUT`. The
    release ``pos_embed`` is a fixed (not learned) table for 3 (v1) or 4 (v2) frames at 224 px; for
    another frame count or grid it is recomputed, as PANGAEA and TerraTorch do.

    Args:
        input_bands: ``{"optical": [6 HLS bands]}``: B2, B3, B4, B8A, B11, B12 in the releases.
        input_size: window side in pixels (224 in the releases).
        patch_size: patch side in pixels (16; 14 for Prithvi-EO-2.0-600M).
        num_frames: dates per sample T (the input is (B, C, T, H, W)).
        embed_dim, depth, num_heads, mlp_ratio: transformer shape (ViT-B: 768, 12, 12, 4).
        layer_norm_eps: eps of every LayerNorm. 1e-5 (PyTorch's default) for Prithvi-EO-1.0, whose
            release code builds plain ``nn.LayerNorm``; 1e-6 for Prithvi-EO-2.0, whose release code
            (``prithvi_mae.py`` published with the weights) defaults to ``LayerNorm(eps=1e-6)``.
        output_layers: 0-based blocks whose outputs are returned; only blocks up to the last are built.
    """

    release_layouts = (FLAT_LAYOUT, PREFIXED_LAYOUT)

    def __init__(
        self,
        input_bands: Mapping[str, Sequence[str]],
        input_size: int = 224,
        patch_size: int = 16,
        num_frames: int = 1,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        layer_norm_eps: float = 1e-5,
        output_layers: Sequence[int] = (3, 5, 7, 11),
    ) -> None:
        super().__init__(
            input_bands, input_size, patch_size, output_layers, [embed_dim] * len(output_layers)
        )
        if list(self.input_bands) != ["optical"]:
            raise ValueError(f"Prithvi takes optical bands only, got modalities {list(self.input_bands)}")
        if num_frames < 1:
            raise ValueError(f"num_frames must be at least 1, got {num_frames}")
        self.num_frames = int(num_frames)
        self.embed_dim = embed_dim
        self.depth = depth
        self.patch_embed = TubeletEmbed(len(self.input_bands["optical"]), embed_dim, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(self._pos_table(self.grid_size), requires_grad=False)
        built = blocks_to_build(self.output_layers, depth, "Prithvi encoder")
        self.blocks = nn.ModuleList(vit_block(embed_dim, num_heads, mlp_ratio, layer_norm_eps) for _ in range(built))
        nn.init.normal_(self.cls_token, std=0.02)

    def _pos_table(self, grid_hw: tuple[int, int]) -> torch.Tensor:
        """The fixed 3-D sin-cos table for ``num_frames`` frames on ``grid_hw``, zero cls slot."""
        return sincos_pos_embed_3d(self.embed_dim, (self.num_frames, *grid_hw), cls_token=True)

    def unbuilt_prefixes(self) -> tuple[str, ...]:
        return unbuilt_blocks("blocks.", len(self.blocks), self.depth)

    def from_release(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Drops unbuilt blocks and date/location embeddings (logged); recomputes ``pos_embed`` for
        this frame count and grid (logged)."""
        name = type(self).__name__
        coords = sorted(key for key in state_dict if key.startswith(COORDS_PREFIXES))
        if coords:
            log.info(
                "%s: ignoring the file's date/location embedding keys %s (takes no coordinates)", name, coords
            )
        state_dict = drop_keys(super().from_release(state_dict), COORDS_PREFIXES)
        patch_weight = state_dict.get("patch_embed.proj.weight")  # when missing, strict loading says so
        bands = self.input_bands["optical"]
        if patch_weight is not None and patch_weight.shape[1] != len(bands):
            file_bands = patch_weight.shape[1]
            raise CheckpointLayoutError(
                f"the file's patch embedding takes {file_bands} bands, but this encoder is configured "
                f"with {len(bands)} ({', '.join(bands)}). Prithvi releases take the 6 HLS bands B2, B3, "
                "B4, B8A, B11, B12: keep encoder.input_bands to those (preprocessing fills missing ones)."
            )
        table = state_dict.get("pos_embed")
        if table is not None and table.shape != self.pos_embed.shape:
            log.info(
                "%s: the file's pos_embed has %d tokens; recomputing the fixed 3-D sin-cos table for "
                "%d frame(s) on a %dx%d grid (%d tokens)",
                name, table.shape[1], self.num_frames, *self.grid_size, self.pos_embed.shape[1],
            )
            state_dict["pos_embed"] = self._pos_table(self.grid_size)
        return state_dict

    def forward(self, image: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        x = image["optical"]
        if x.ndim != 5 or x.shape[2] != self.num_frames:
            raise ValueError(
                f"Prithvi was built for (B, C, T={self.num_frames}, H, W) input, got shape "
                f"{tuple(x.shape)}; set encoder.num_frames to the number of dates of the dataset"
            )
        x = self.patch_embed(x)
        grid = (x.shape[-2], x.shape[-1])
        pos_embed = self.pos_embed if grid == self.grid_size else self._pos_table(grid).to(x)
        x = x.flatten(2).transpose(1, 2)  # (B, T*h*w, D), frame-major like the table
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + pos_embed
        return collect_block_outputs(x, self.blocks, self.output_layers, 1, grid, num_frames=self.num_frames)
