"""SSL4EO-S12 ViT-S/16 encoders (Wang et al. 2023), pretrained on Sentinel-1/2 by MAE, DINO, MoCo-v3
and data2vec. Release files: https://github.com/zhu-xlab/SSL4EO-S12 (Google Drive) and the
https://huggingface.co/wangyi111/SSL4EO-S12 mirror (MAE files).

The four variants share one ViT skeleton (:class:`SSL4EOMAE`); the others override only their release
layout (``release_layouts``) and the hooks that differ: position encoding, block type, state_dict
adaptation.
"""

from __future__ import annotations

import logging
from typing import Mapping, Sequence

import torch
from torch import nn

from benchmark.models.encoders.beit import (
    BeitBlock,
    RelativePositionBias,
    bias_from_table,
    relative_position_index,
    resize_relative_position_table,
    square_grid_side,
)
from benchmark.models.encoders.base import Encoder
from benchmark.models.encoders.layout import CheckpointLayoutError, ReleaseLayout, check_band_count
from benchmark.models.layers import PatchEmbed, trunc_normal_
from benchmark.models.encoders.vit import (
    adapt_pos_embed,
    blocks_to_build,
    collect_block_outputs,
    resize_pos_embed,
    sincos_1d,
    sincos_pos_embed_2d,
    single_frame,
    unbuilt_blocks,
    vit_block,
)

log = logging.getLogger(__name__)

# Every SSL4EO-S12 ViT (MAE, DINO, MoCo-v3 and BEiT/data2vec code) builds its LayerNorms with eps 1e-6.
LAYER_NORM_EPS = 1e-6


def mocov3_pos_embed(dim: int, grid_hw: tuple[int, int]) -> torch.Tensor:
    """MoCo-v3 2-D sin-cos table: (1, 1 + h*w, dim), cls slot zero.

    Channel quarters are (sin, cos) of the row index, then (sin, cos) of the column index. MoCo-v3
    calls the first pair "w", but its ``meshgrid(grid_w, grid_h, indexing="ij")`` makes that the slow
    (row) index of the row-major token order, so rows come first here to reproduce the released table.
    """
    h, w = grid_hw
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    emb = torch.cat([sincos_1d(dim // 2, rows.flatten()), sincos_1d(dim // 2, cols.flatten())], dim=1)
    return torch.cat([torch.zeros(1, dim), emb], dim=0).unsqueeze(0)


def ssl4eo_layout(method: str, wrapper: str, prefix: str, ignored: Sequence[str]) -> ReleaseLayout:
    """An SSL4EO-S12 file: the encoder's keys under ``checkpoint[wrapper]``, each starting with
    ``prefix``; ``ignored``: key paths of what else the file holds there (see :class:`ReleaseLayout`)."""
    return ReleaseLayout(
        name=f"SSL4EO {method}",
        summary=f"{{'{wrapper}': {{'{prefix}<key>': ...}}}}" if prefix else f"{{'{wrapper}': state_dict}}",
        signature=(wrapper,),
        rules=((f"{wrapper}/{prefix}", ""),),
        ignored=tuple(ignored),
        article="an",
    )


class SSL4EOMAE(Encoder):
    """SSL4EO-S12 MAE ViT: timm-style ViT, fixed 2-D sin-cos ``pos_embed``, qkv bias.

    Features are the raw block outputs (the release's pre-decoder ``norm`` is not used). One layout
    for the 13-band optical and the 2-band SAR (VV, VH) files; a ``pos_embed`` for another grid is
    interpolated (logged).

    Args:
        input_bands: ``{modality: [bands]}``; one modality (``optical``: 13 S2 bands, or ``sar``: VV, VH).
        input_size: window side in pixels (224 in the release; other sizes interpolate ``pos_embed``).
        patch_size: patch side in pixels.
        embed_dim, depth, num_heads, mlp_ratio: transformer shape (ViT-S: 384, 12, 6, 4).
        output_layers: 0-based blocks whose outputs are returned; only blocks up to the last are built.
    """

    release_layouts = (
        ssl4eo_layout("MAE", "model", "", ("model/decoder_", "model/mask_token", "model/norm.")),
    )

    def __init__(
        self,
        input_bands: Mapping[str, Sequence[str]],
        input_size: int = 224,
        patch_size: int = 16,
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        output_layers: Sequence[int] = (3, 5, 7, 11),
    ) -> None:
        super().__init__(input_bands, input_size, patch_size, output_layers, [embed_dim] * len(output_layers))
        if len(self.input_bands) != 1:
            raise ValueError(f"{type(self).__name__} takes one modality, got {list(self.input_bands)}")
        self.modality, bands = next(iter(self.input_bands.items()))
        self.embed_dim = embed_dim
        self.depth = depth
        self.patch_embed = PatchEmbed(patch_size, len(bands), embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        nn.init.normal_(self.cls_token, std=0.02)
        self._build_position_encoding(num_heads)
        built = blocks_to_build(self.output_layers, depth, type(self).__name__)
        self.blocks = nn.ModuleList(self._make_block(embed_dim, num_heads, mlp_ratio) for _ in range(built))

    # -- hooks the other variants override -------------------------------------------------------

    def _build_position_encoding(self, num_heads: int) -> None:
        """Create the position parameters: MAE's fixed 2-D sin-cos ``pos_embed``."""
        self.pos_embed = nn.Parameter(
            sincos_pos_embed_2d(self.embed_dim, self.grid_size, cls_token=True), requires_grad=False
        )

    def _make_block(self, embed_dim: int, num_heads: int, mlp_ratio: float) -> nn.Module:
        return vit_block(embed_dim, num_heads, mlp_ratio, LAYER_NORM_EPS)

    def _add_position(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Add ``pos_embed`` (interpolated when the input grid differs from ``input_size``'s)."""
        pos_embed = self.pos_embed
        if grid != self.grid_size:
            pos_embed = resize_pos_embed(pos_embed, self.grid_size, grid)
        return x + pos_embed

    def _block_kwargs(self, grid: tuple[int, int]) -> dict[str, torch.Tensor]:
        """Extra inputs of every block (none for timm ViT blocks)."""
        return {}

    def _adapt_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Documented adaptations, in place: ``pos_embed`` interpolated to this model's grid."""
        adapt_pos_embed(state_dict, "pos_embed", self.grid_size, 1, type(self).__name__)

    # -- shared behaviour ------------------------------------------------------------------------

    def unbuilt_prefixes(self) -> tuple[str, ...]:
        return unbuilt_blocks("blocks.", len(self.blocks), self.depth)

    def from_release(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        state_dict = super().from_release(state_dict)
        if "patch_embed.proj.weight" in state_dict:
            bands = self.input_bands[self.modality]
            check_band_count(state_dict["patch_embed.proj.weight"].shape[1], bands, type(self).__name__)
        self._adapt_state_dict(state_dict)
        return state_dict

    def forward(self, image: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        x = single_frame(image[self.modality], type(self).__name__)
        grid = (x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size)
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = self._add_position(x, grid)
        return collect_block_outputs(x, self.blocks, self.output_layers, 1, grid, **self._block_kwargs(grid))


class SSL4EODINO(SSL4EOMAE):
    """SSL4EO-S12 DINO ViT-S/16 (the teacher network): learnable ``pos_embed``, qkv bias.

    The release's student, the teacher's projection head and final ``norm`` are not read. Arguments
    as :class:`SSL4EOMAE`.
    """

    release_layouts = (
        ssl4eo_layout(
            "DINO", "teacher", "backbone.", ["teacher/backbone.norm.", "teacher/head.", "student/"]
        ),
    )

    def _build_position_encoding(self, num_heads: int) -> None:
        """Learnable ``pos_embed`` (DINO's truncated-normal init, std 0.02)."""
        h, w = self.grid_size
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + h * w, self.embed_dim))
        trunc_normal_(self.pos_embed, std=0.02)


class SSL4EOMoCo(SSL4EOMAE):
    """SSL4EO-S12 MoCo-v3 ViT-S/16 (the base encoder): fixed MoCo-v3 sin-cos ``pos_embed``, qkv bias.

    Heads: 6, as in SSL4EO-S12's copy of moco-v3's ``vit_small`` (upstream moco-v3 uses 12; the
    release file cannot tell them apart, the config states it).
    The release's momentum encoder, predictor, projection head and final ``norm`` are not read.
    Arguments as :class:`SSL4EOMAE`.
    """

    release_layouts = (
        ssl4eo_layout(
            "MoCo-v3",
            "state_dict",
            "module.base_encoder.",
            [
                f"state_dict/module.{network}."
                for network in ("base_encoder.head", "base_encoder.norm", "momentum_encoder", "predictor")
            ],
        ),
    )

    def _build_position_encoding(self, num_heads: int) -> None:
        if self.embed_dim % 4:
            raise ValueError(
                f"MoCo-v3 sin-cos position embedding needs embed_dim divisible by 4, got {self.embed_dim}"
            )
        self.pos_embed = nn.Parameter(mocov3_pos_embed(self.embed_dim, self.grid_size), requires_grad=False)


class SSL4EOData2Vec(SSL4EOMAE):
    """SSL4EO-S12 data2vec ViT-S/16: BEiT blocks with one relative position bias shared by all blocks.

    Blocks (timm's BEiT blocks) have a bias-free ``qkv`` plus separate ``q_bias``/``v_bias`` and
    layer-scale ``gamma_1``/``gamma_2``; there is no absolute position embedding. The shared table
    ``rel_pos_bias.relative_position_bias_table`` has :func:`~benchmark.models.encoders.beit.table_rows` rows x heads; a table
    for another grid is resized (BEiT's geometric interpolation, logged).
    Arguments as :class:`SSL4EOMAE`.
    """

    # The stored index buffer is recomputed here from the grid.
    release_layouts = (
        ssl4eo_layout(
            "data2vec",
            "model",
            "",
            [
                "model/mask_token",
                "model/norm.",
                "model/lm_head.",
                "model/rel_pos_bias.relative_position_index",
            ],
        ),
    )
    layer_scale_init = 0.1
    table_key = "rel_pos_bias.relative_position_bias_table"

    def _build_position_encoding(self, num_heads: int) -> None:
        self.rel_pos_bias = RelativePositionBias(self.grid_size, num_heads)

    def _make_block(self, embed_dim: int, num_heads: int, mlp_ratio: float) -> nn.Module:
        return BeitBlock(embed_dim, num_heads, mlp_ratio, init_values=self.layer_scale_init, eps=LAYER_NORM_EPS)

    def _add_position(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        return x  # positions enter only as the attention bias

    def _block_kwargs(self, grid: tuple[int, int]) -> dict[str, torch.Tensor]:
        """The shared bias (heads, 1 + h*w, 1 + h*w) for the input grid."""
        if grid == self.grid_size:
            return {"shared_rel_pos_bias": self.rel_pos_bias()}
        table = resize_relative_position_table(self.rel_pos_bias.relative_position_bias_table, grid)
        return {"shared_rel_pos_bias": bias_from_table(table, relative_position_index(grid, table.device))}

    def _adapt_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Resize the shared relative position bias table to this model's grid (logged)."""
        if self.table_key not in state_dict:
            return
        table = state_dict[self.table_key]
        expected = self.rel_pos_bias.relative_position_bias_table.shape
        if table.ndim != 2 or table.shape == expected:
            return  # identical grid, or a foreign shape that strict loading reports
        old = square_grid_side(table.shape[0])
        if old is None:
            raise CheckpointLayoutError(
                f"{self.table_key} has {table.shape[0]} rows, which fits no square token grid; the file "
                "is not an SSL4EO data2vec checkpoint or is damaged. Point encoder.encoder_weights at "
                "the data2vec release file (fetch it again if it was damaged)."
            )
        log.info(
            "%s: resizing %s from a %dx%d to a %dx%d token grid",
            type(self).__name__, self.table_key, old, old, *self.grid_size,
        )
        state_dict[self.table_key] = resize_relative_position_table(table, self.grid_size)
