"""MUSTER (Xu et al. 2022, arXiv:2211.13928) as PANGAEA builds it: a hierarchical shifted-window
transformer decoder over a Swin-like pyramid made from a ViT."""

from __future__ import annotations

import logging
from typing import Sequence

import torch
from torch import nn

from benchmark.models.decoders.blocks import ConvNormAct, resize
from benchmark.models.decoders.neck import FeaturePyramidNeck, pyramid_dims, pyramid_inputs
from benchmark.models.decoders.skip_attention import SkipAttentionBlock
from benchmark.models.layers import Mlp, drop_path_or_identity

__all__ = ["MUSTER", "MusterStage", "ResidualMlp", "SkipAttentionBlock", "clip_heads"]

log = logging.getLogger(__name__)


def clip_heads(dim: int, heads: int) -> int:
    """The largest head count <= ``heads`` that divides ``dim``."""
    return next(h for h in range(min(heads, dim), 0, -1) if dim % h == 0)


class ResidualMlp(nn.Module):
    """``x + drop_path(MLP(x))`` on channels-last maps (B, H, W, C), with no norm: MUSTER's FFN on each
    pyramid level before the stages and on the finest stage's output."""

    def __init__(self, dim: int, hidden: int, drop_path: float) -> None:
        super().__init__()
        self.mlp = Mlp(dim, hidden, dim)
        self.drop_path = drop_path_or_identity(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.mlp(x))


class MusterStage(nn.Module):
    """Skip-attention blocks at one pyramid level, then MUSTER's fuse-and-upsample: concatenate the
    decoder state with the skip, 1x1 conv-norm-GELU (2C -> 2C) and, except at the finest stage, patch
    expanding by PixelShuffle(2) to C/2 channels at twice the resolution.

    Channels-last (B, H, W, C) state and skip -> (B, 2H, 2W, C/2), or (B, H, W, 2C) without ``upsample``.
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        drop_path: Sequence[float],
        upsample: bool,
        norm: str,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            SkipAttentionBlock(dim, num_heads, window_size, i % 2 == 1, mlp_ratio, drop_path[i])
            for i in range(depth)
        )
        self.fuse = ConvNormAct(2 * dim, 2 * dim, 1, norm, act="gelu")
        self.expand = nn.PixelShuffle(2) if upsample else nn.Identity()

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, skip)
        fused = self.fuse(torch.cat([x, skip], dim=-1).permute(0, 3, 1, 2))
        return self.expand(fused).permute(0, 2, 3, 1)


class MUSTER(nn.Module):
    """MUSTER decoder, coarse to fine, as PANGAEA builds it on a ViT.

    A neck of its own turns the encoder output(s) into a Swin-like pyramid at 1/2x, 1x, 2x, 4x of the
    token grid with ``embed_dim``, /2, /4, /8 channels (``embed_dim`` defaults to twice the encoder width,
    as in PANGAEA: the 1/2x level is pooled then widened by a 1x1 conv, the 2x and 4x levels narrowed by
    their last transposed conv). By default (``pyramid_strategy: head``) every level is made from the LAST
    selected encoder layer. Each level passes a residual MLP. Stage i runs ``depths[i]`` blocks of windowed
    skip attention (queries from its level, keys and values from the decoder state), fuses state and level,
    and expands the patches (twice the resolution, half the width) for the next stage. The finest stage's
    output (2 x embed_dim/8 channels) passes a residual MLP (hidden ``mlp_ratio * channels``), dropout, a
    1x1 conv with bias + GELU to ``channels`` and the 1x1 classifier.

    Windows are ``window_size`` tokens, clipped per axis to small grids; grids that are not window
    multiples are padded and the padding is masked out of attention, so any (non-square) grid works.

    Args:
        in_dims: channels of the encoder outputs.
        num_classes: output classes.
        channels: width of the head (and, times ``mlp_ratio``, of the output MLP's hidden layer).
        embed_dim: width of the coarsest stage, halved at each later stage (default: twice the last encoder
            output's channels); must be divisible by 2 ** (stages - 1).
        window_size: attention window side in tokens.
        depths: blocks per stage, coarse to fine.
        num_heads: attention heads per stage, coarse to fine. A count that does not divide its stage width
            is lowered to the largest one that does (logged): e.g. 32 heads on a 48-wide stage become 24.
        mlp_ratio: MLP hidden width over stage width.
        drop_path_rate: stochastic depth, rising linearly over the blocks from 0 to this rate; the residual
            MLPs on the levels and on the output use the full rate (as PANGAEA and MUSTER's code do).
        dropout: Dropout2d rate before the head conv (active in training only).
        norm: ``batch`` or ``group`` for the conv layers (attention blocks use LayerNorm).
        pyramid_strategy: ``head`` (or its synonym ``head_only``) or ``intermediate`` (level i from the
            i-th selected encoder layer, finest first).
    Returns raw logits (B, num_classes, H, W) at ``output_size``.
    """

    def __init__(
        self,
        in_dims: Sequence[int],
        num_classes: int,
        channels: int = 256,
        embed_dim: int | None = None,
        window_size: int = 12,
        depths: Sequence[int] = (2, 2, 2, 2),
        num_heads: Sequence[int] = (32, 16, 8, 4),
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.1,
        dropout: float = 0.1,
        norm: str = "batch",
        pyramid_strategy: str = "head",
    ) -> None:
        super().__init__()
        self.pyramid_strategy = pyramid_strategy
        neck_in = pyramid_dims(in_dims, pyramid_strategy)
        widths = self._stage_widths(embed_dim or 2 * list(in_dims)[-1], len(neck_in), depths, num_heads)
        heads = [clip_heads(width, h) for width, h in zip(widths, num_heads)]
        if heads != list(num_heads):
            log.info("MUSTER: num_heads %s lowered to %s to divide stage widths %s", list(num_heads), heads, widths)
        self.neck = FeaturePyramidNeck(neck_in, norm=norm, out_dims=widths[::-1])
        self.level_mlps = nn.ModuleList(ResidualMlp(w, int(w * mlp_ratio), drop_path_rate) for w in widths)
        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()  # also under a meta device
        starts = [sum(depths[:i]) for i in range(len(widths))]
        self.stages = nn.ModuleList(
            MusterStage(
                widths[i],
                depths[i],
                heads[i],
                window_size,
                mlp_ratio,
                rates[starts[i] : starts[i] + depths[i]],
                upsample=i < len(widths) - 1,
                norm=norm,
            )
            for i in range(len(widths))
        )
        out_dim = 2 * widths[-1]
        self.out_mlp = ResidualMlp(out_dim, int(channels * mlp_ratio), drop_path_rate)
        self.dropout = nn.Dropout2d(dropout)
        # PANGAEA's head: a 1x1 conv with bias and GELU, no norm
        self.head = nn.Sequential(nn.Conv2d(out_dim, channels, 1), nn.GELU())
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    @staticmethod
    def _stage_widths(
        embed_dim: int, levels: int, depths: Sequence[int], num_heads: Sequence[int]
    ) -> list[int]:
        """Stage widths, coarse to fine: ``embed_dim`` halved per stage."""
        if len(depths) != levels or len(num_heads) != levels:
            raise ValueError(
                f"MUSTER has one stage per pyramid level: depths {list(depths)} and num_heads {list(num_heads)} "
                f"need {levels} entries each"
            )
        factor = 2 ** (levels - 1)
        if embed_dim % factor:
            suggestion = max(factor, embed_dim // factor * factor)
            raise ValueError(
                f"MUSTER halves its width at each of its {levels} stages, so embed_dim must be divisible by "
                f"{factor}; got {embed_dim}. Set decoder.embed_dim to e.g. {suggestion}"
            )
        return [embed_dim // 2**i for i in range(levels)]

    def forward(self, features: Sequence[torch.Tensor], output_size: tuple[int, int]) -> torch.Tensor:
        levels = self.neck(pyramid_inputs(features, self.pyramid_strategy))[::-1]
        skips = [mlp(level.permute(0, 2, 3, 1)) for mlp, level in zip(self.level_mlps, levels)]
        x = skips[0]
        for stage, skip in zip(self.stages, skips):
            # Patch expanding doubles the size; cropping undoes the neck's ceil-mode pooling of odd grids
            # (15 -> 8 -> 16 -> 15), whose last cell came from the last row/column.
            x = stage(x[:, : skip.shape[1], : skip.shape[2]], skip)
        x = self.out_mlp(x).permute(0, 3, 1, 2)
        return resize(self.classifier(self.head(self.dropout(x))), output_size)
