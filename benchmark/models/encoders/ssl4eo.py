"""SSL4EO-S12 ViT-S/16 encoders (Wang et al. 2023), pretrained on Sentinel-1/2 by MAE, DINO, MoCo-v3
and data2vec. Release files: https://github.com/zhu-xlab/SSL4EO-S12 (Google Drive) and the
https://huggingface.co/wangyi111/SSL4EO-S12 mirror (MAE files).

The four variants share one ViT skeleton (:class:`SSL4EOMAE`); the others override only the release
layout (class attributes) and the hooks that differ: position encoding, block type, state_dict
adaptation.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any, Mapping, Sequence

import torch
from timm.layers import PatchEmbed, resize_rel_pos_bias_table, trunc_normal_
from timm.models.beit import Block as BeitBlock
from timm.models.beit import RelativePositionBias, gen_relative_position_index
from timm.models.vision_transformer import Block
from torch import nn

from benchmark.models.encoders.base import Encoder
from benchmark.models.encoders.vit import (
    adapt_pos_embed,
    collect_block_outputs,
    resize_pos_embed,
    sincos_1d,
    sincos_pos_embed_2d,
    single_frame,
)
from benchmark.models.encoders.weights import (
    CheckpointLayoutError,
    check_band_count,
    drop_keys,
    strip_prefix,
    unwrap,
)

log = logging.getLogger(__name__)

# Every SSL4EO-S12 ViT (MAE, DINO, MoCo-v3 and BEiT/data2vec code) builds its LayerNorms with eps 1e-6.
LAYER_NORM = partial(nn.LayerNorm, eps=1e-6)

MAE_DECODER_PREFIXES = ("decoder_", "mask_token", "norm.")


def rel_pos_table_rows(grid_hw: tuple[int, int]) -> int:
    """Rows of a BEiT relative position bias table: one per 2-D offset, plus 3 for cls-token pairs."""
    return (2 * grid_hw[0] - 1) * (2 * grid_hw[1] - 1) + 3


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


class SSL4EOMAE(Encoder):
    """SSL4EO-S12 MAE ViT: timm-style ViT, fixed 2-D sin-cos ``pos_embed``, qkv bias.

    Release layout: ``{"model": flat_state_dict}`` holding the encoder plus the MAE decoder
    (``decoder_*``, ``mask_token``) and the pre-decoder ``norm``, which are ignored: features are the
    raw block outputs. Used for the 13-band optical and the 2-band SAR (VV, VH) files.

    Args:
        input_bands: ``{modality: [bands]}``; one modality (``optical``: 13 S2 bands, or ``sar``: VV, VH).
        input_size: window side in pixels (224 in the release; other sizes interpolate ``pos_embed``).
        patch_size: patch side in pixels.
        embed_dim, depth, num_heads, mlp_ratio: transformer shape (ViT-S: 384, 12, 6, 4).
        output_layers: 0-based blocks whose outputs are returned; only blocks up to the last are built.
        encoder_weights: path of the release file; download_url: where to fetch it when missing.
        pretrained: load ``encoder_weights`` (False for ``mode=random``).
    """

    # Release layout: the state_dict sits under ``checkpoint[release_wrapper]``; encoder keys start
    # with ``release_prefix`` (keys without it belong to other networks and are dropped); keys
    # starting with ``release_extras`` (after the prefix is removed) are not part of the encoder.
    release_wrapper = "model"
    release_prefix = ""
    release_extras: tuple[str, ...] = MAE_DECODER_PREFIXES
    release_layout = "an SSL4EO MAE checkpoint ({'model': state_dict})"

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
        encoder_weights: str | None = None,
        download_url: str | None = None,
        pretrained: bool = True,
    ) -> None:
        super().__init__(input_bands, input_size, patch_size, output_layers, [embed_dim] * len(output_layers))
        if len(self.input_bands) != 1:
            raise ValueError(f"{type(self).__name__} takes one modality, got {list(self.input_bands)}")
        if max(self.output_layers) >= depth:
            raise ValueError(
                f"output_layers {self.output_layers} exceed depth {depth}; use indices 0..{depth - 1}"
            )
        self.modality, bands = next(iter(self.input_bands.items()))
        self.embed_dim = embed_dim
        self.depth = depth
        self.patch_embed = PatchEmbed(
            img_size=self.input_size,
            patch_size=patch_size,
            in_chans=len(bands),
            embed_dim=embed_dim,
            strict_img_size=False,
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        nn.init.normal_(self.cls_token, std=0.02)
        self._build_position_encoding(num_heads)
        self.blocks = nn.ModuleList(
            self._make_block(embed_dim, num_heads, mlp_ratio) for _ in range(max(self.output_layers) + 1)
        )
        self.init_pretrained(pretrained, encoder_weights, download_url)

    # -- hooks the other variants override -------------------------------------------------------

    def _build_position_encoding(self, num_heads: int) -> None:
        """Create the position parameters: MAE's fixed 2-D sin-cos ``pos_embed``."""
        self.pos_embed = nn.Parameter(
            sincos_pos_embed_2d(self.embed_dim, self.grid_size, cls_token=True), requires_grad=False
        )

    def _make_block(self, embed_dim: int, num_heads: int, mlp_ratio: float) -> nn.Module:
        return Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=LAYER_NORM)

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

    def convert_release_checkpoint(self, checkpoint: Any) -> dict[str, torch.Tensor]:
        state_dict = dict(unwrap(checkpoint, self.release_wrapper, self.release_layout))
        if self.release_prefix:
            sample = ", ".join(sorted(map(str, state_dict))[:5])
            state_dict = strip_prefix(state_dict, self.release_prefix)
            if not state_dict:
                raise CheckpointLayoutError(
                    f"expected {self.release_layout}, but no key under {self.release_wrapper!r} starts "
                    f"with {self.release_prefix!r} (first keys: {sample}). Check encoder.encoder_weights "
                    "points at the right file."
                )
        state_dict = drop_keys(state_dict, self.release_extras)
        state_dict = drop_keys(state_dict, [f"blocks.{i}." for i in range(len(self.blocks), self.depth)])
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

    Release layout: ``{"teacher": {"backbone.<key>": ...}, "student": ..., ...}``. The teacher's DINO
    projection head (``head.*``, not under ``backbone.``), the final ``norm`` and the student are
    ignored. Arguments as :class:`SSL4EOMAE`.
    """

    release_wrapper = "teacher"
    release_prefix = "backbone."
    release_extras = ("norm.",)
    release_layout = "an SSL4EO DINO checkpoint ({'teacher': {'backbone.<key>': ...}})"

    def _build_position_encoding(self, num_heads: int) -> None:
        """Learnable ``pos_embed`` (DINO's truncated-normal init, std 0.02)."""
        h, w = self.grid_size
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + h * w, self.embed_dim))
        trunc_normal_(self.pos_embed, std=0.02)


class SSL4EOMoCo(SSL4EOMAE):
    """SSL4EO-S12 MoCo-v3 ViT-S/16 (the base encoder): fixed MoCo-v3 sin-cos ``pos_embed``, qkv bias.

    Heads: 6, as in SSL4EO-S12's copy of moco-v3's ``vit_small`` (upstream moco-v3 uses 12; the
    release file cannot tell them apart, the config states it).
    Release layout: ``{"state_dict": {"module.base_encoder.<key>": ...}, ...}``. The momentum encoder,
    the predictor (other prefixes), the projection head ``head.*`` and the final ``norm`` are ignored.
    Arguments as :class:`SSL4EOMAE`.
    """

    release_wrapper = "state_dict"
    release_prefix = "module.base_encoder."
    release_extras = ("head.", "norm.")
    release_layout = "an SSL4EO MoCo-v3 checkpoint ({'state_dict': {'module.base_encoder.<key>': ...}})"

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
    ``rel_pos_bias.relative_position_bias_table`` has :func:`rel_pos_table_rows` rows x heads; a table
    for another grid is resized (BEiT's geometric interpolation, logged).
    Release layout: ``{"model": flat_state_dict}``; ``mask_token``, final ``norm``, ``lm_head`` and the
    stored index buffer (recomputed here) are ignored. Arguments as :class:`SSL4EOMAE`.
    """

    release_extras = ("mask_token", "norm.", "lm_head.", "rel_pos_bias.relative_position_index")
    release_layout = "an SSL4EO data2vec checkpoint ({'model': state_dict})"
    layer_scale_init = 0.1
    table_key = "rel_pos_bias.relative_position_bias_table"

    def _build_position_encoding(self, num_heads: int) -> None:
        self.rel_pos_bias = RelativePositionBias(self.grid_size, num_heads)

    def _make_block(self, embed_dim: int, num_heads: int, mlp_ratio: float) -> nn.Module:
        return BeitBlock(
            embed_dim,
            num_heads,
            qkv_bias=True,
            mlp_ratio=mlp_ratio,
            init_values=self.layer_scale_init,
            norm_layer=LAYER_NORM,
        )

    def _add_position(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        return x  # positions enter only as the attention bias

    def _block_kwargs(self, grid: tuple[int, int]) -> dict[str, torch.Tensor]:
        """The shared bias (heads, 1 + h*w, 1 + h*w) for the input grid."""
        if grid == self.grid_size:
            return {"shared_rel_pos_bias": self.rel_pos_bias()}
        table = self.rel_pos_bias.relative_position_bias_table
        table = resize_rel_pos_bias_table(
            table, new_window_size=grid, new_bias_shape=(rel_pos_table_rows(grid), table.shape[1])
        )
        index = gen_relative_position_index(grid, device=table.device)
        tokens = grid[0] * grid[1] + 1
        bias = table[index.view(-1)].view(tokens, tokens, -1).permute(2, 0, 1).contiguous()
        return {"shared_rel_pos_bias": bias}

    def _adapt_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Resize the shared relative position bias table to this model's grid (logged)."""
        if self.table_key not in state_dict:
            return
        table = state_dict[self.table_key]
        expected = self.rel_pos_bias.relative_position_bias_table.shape
        if table.ndim != 2 or table.shape == expected:
            return  # identical grid, or a foreign shape that strict loading reports
        old = (round((table.shape[0] - 3) ** 0.5) + 1) // 2
        if rel_pos_table_rows((old, old)) != table.shape[0]:
            raise CheckpointLayoutError(
                f"{self.table_key} has {table.shape[0]} rows, which fits no square token grid; the file "
                "is not an SSL4EO data2vec checkpoint or is damaged. Point encoder.encoder_weights at "
                "the data2vec release file (fetch it again if it was damaged)."
            )
        log.info(
            "%s: resizing %s from a %dx%d to a %dx%d token grid",
            type(self).__name__, self.table_key, old, old, *self.grid_size,
        )
        state_dict[self.table_key] = resize_rel_pos_bias_table(
            table, new_window_size=self.grid_size, new_bias_shape=tuple(expected)
        )
