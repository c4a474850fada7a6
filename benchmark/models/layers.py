"""Transformer layers shared by the encoders and MUSTER: the pre-norm ViT block and its parts, patch
embedding, stochastic depth.

Parameter names and creation order are those of timm's equivalents (``timm.models.vision_transformer.Block``,
``timm.layers.Mlp``, ``PatchEmbed``, ``DropPath``), which the MAE-lineage releases were trained with, so
their state_dicts load unchanged and a seeded random initialisation draws the same numbers
(``tests/test_layers.py`` checks both against timm). They live here rather than being imported from
timm because importing timm also imports torchvision and torch's compiler: about 2 s of every process's
start-up, for five small modules.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Attention", "DropPath", "Mlp", "PatchEmbed", "ViTBlock", "drop_path_or_identity", "trunc_normal_"]


@torch.no_grad()
def trunc_normal_(tensor: torch.Tensor, std: float, low: float = -2.0, high: float = 2.0) -> torch.Tensor:
    """Fill ``tensor`` in place from N(0, std^2) cut to [low, high] (absolute bounds) by the inverse of the
    normal CDF on uniform draws, as timm's ``trunc_normal_`` (torch's own draws other numbers)."""
    def cdf(x: float) -> float:
        return (1.0 + math.erf(x / std / math.sqrt(2.0))) / 2.0

    tensor.uniform_(2 * cdf(low) - 1, 2 * cdf(high) - 1).erfinv_().mul_(std * math.sqrt(2.0))
    return tensor.clamp_(min=low, max=high)


class DropPath(nn.Module):
    """Stochastic depth: in training, zero a whole sample's residual branch with probability ``drop_prob`` and
    scale the kept ones by ``1 / (1 - drop_prob)``."""

    def __init__(self, drop_prob: float) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        if keep > 0.0:
            mask.div_(keep)
        return x * mask

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


def drop_path_or_identity(p: float) -> nn.Module:
    return DropPath(p) if p > 0 else nn.Identity()


class Mlp(nn.Module):
    """Linear -> GELU -> Linear on the last dimension (``fc1``, ``fc2``); ``out_features`` defaults to the
    input width."""

    def __init__(self, in_features: int, hidden_features: int, out_features: int | None = None,
                 drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_features, out_features or in_features)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class Attention(nn.Module):
    """Multi-head self-attention on tokens (B, N, dim): one ``qkv`` projection, scaled dot-product
    attention (an additive ``attn_mask`` broadcast to (B, heads, N, N) if given), ``proj``."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = False, attn_drop: float = 0.0,
                 proj_drop: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention width {dim} is not divisible by its {num_heads} heads")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        dropout = self.attn_drop.p if self.training else 0.0
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(b, n, c)))


class ViTBlock(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``; (B, N, dim) in and
    out. ``eps`` is the LayerNorms' epsilon (1e-6 in the MAE lineage)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 eps: float = 1e-6, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.drop_path1 = drop_path_or_identity(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path2 = drop_path_or_identity(drop_path)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x), attn_mask=attn_mask))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    """Non-overlapping patches to tokens: (B, C, H, W) -> (B, H/p * W/p, dim) by a ``proj`` convolution
    with kernel and stride ``p``. H and W must be multiples of ``p`` (any size otherwise)."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"input of {h}x{w} px is not a whole number of {self.patch_size} px patches")
        return self.proj(x).flatten(2).transpose(1, 2)
