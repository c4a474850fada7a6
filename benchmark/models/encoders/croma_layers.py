"""CROMA's building blocks: 2-D ALiBi attention biases, patch flattening, pre-norm (cross-)attention
layers and the per-sensor ViT, named as in the release files (Fuller et al. 2023,
https://github.com/antofuller/CROMA).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def alibi_slopes(num_heads: int) -> list[float]:
    """Per-head ALiBi slopes (Press et al. 2022).

    For a power of two n: the geometric sequence 2^(-8/n), 2^(-16/n), ...; otherwise the slopes of the
    power of two below, then every other slope of the power of two above.
    """
    if math.log2(num_heads).is_integer():
        start = 2 ** (-8 / num_heads)
        return [start ** (i + 1) for i in range(num_heads)]
    lower = 2 ** math.floor(math.log2(num_heads))
    return alibi_slopes(lower) + alibi_slopes(2 * lower)[0::2][: num_heads - lower]


def alibi_2d(grid_hw: tuple[int, int], num_heads: int) -> torch.Tensor:
    """CROMA's 2-D ALiBi bias (1, heads, h*w, h*w): -slope x Euclidean distance between patch centres.

    Distances are in patches, tokens in row-major order (the order :func:`patchify` produces).
    """
    h, w = grid_hw
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    centres = torch.stack([rows.flatten(), cols.flatten()], dim=1).double()
    distance = torch.cdist(centres, centres, compute_mode="donot_use_mm_for_euclid_dist")
    slopes = torch.tensor(alibi_slopes(num_heads), dtype=torch.float64)
    return (-slopes[:, None, None] * distance).unsqueeze(0).float()


def patchify(image: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, h*w, C*p*p): each patch flattened in (channel, row, col) order."""
    b, c, height, width = image.shape
    h, w = height // patch_size, width // patch_size
    x = image.reshape(b, c, h, patch_size, w, patch_size)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(b, h * w, c * patch_size * patch_size)


def attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, num_heads: int
) -> torch.Tensor:
    """Multi-head softmax attention with an additive bias (1, heads, N, M); (B, N|M, D) in, (B, N, D) out."""
    b, n, d = q.shape
    q, k, v = (t.reshape(b, -1, num_heads, d // num_heads).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
    return out.transpose(1, 2).reshape(b, n, d)


class PreNorm(nn.Module):
    """What self- and cross-attention share: the head count and the ``input_norm`` applied first."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.input_norm = nn.LayerNorm(dim)


class Attention(PreNorm):
    """Pre-norm self-attention: ``input_norm``, bias-free ``to_qkv``, ``to_out`` with bias."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__(dim, num_heads)
        self.to_qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.to_out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor) -> torch.Tensor:
        q, k, v = self.to_qkv(self.input_norm(x)).chunk(3, dim=-1)
        return self.to_out(attend(q, k, v, attn_bias, self.num_heads))


class CrossAttention(PreNorm):
    """Pre-norm cross-attention from ``x`` to ``context``; one ``input_norm`` normalises both."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__(dim, num_heads)
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.to_out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor, attn_bias: torch.Tensor) -> torch.Tensor:
        x, context = self.input_norm(x), self.input_norm(context)
        out = attend(self.to_q(x), self.to_k(context), self.to_v(context), attn_bias, self.num_heads)
        return self.to_out(out)


class FeedForward(nn.Module):
    """Pre-norm MLP: ``input_norm``, Linear dim -> 4 dim, GELU, Linear back."""

    def __init__(self, dim: int, mult: int = 4) -> None:
        super().__init__()
        self.input_norm = nn.LayerNorm(dim)
        # The release's net.2 is a Dropout(0); the Identity keeps the second Linear at net.3 as in the file.
        self.net = nn.Sequential(
            nn.Linear(dim, mult * dim), nn.GELU(), nn.Identity(), nn.Linear(mult * dim, dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.input_norm(x))


class Layer(nn.ModuleList):
    """One residual layer: [self-attention, (cross-attention,) feed-forward], children 0, 1(, 2)."""

    def __init__(self, dim: int, num_heads: int, cross: bool) -> None:
        cross_attention = [CrossAttention(dim, num_heads)] if cross else []
        super().__init__([Attention(dim, num_heads), *cross_attention, FeedForward(dim)])

    def forward(
        self, x: torch.Tensor, attn_bias: torch.Tensor, context: torch.Tensor | None = None
    ) -> torch.Tensor:
        x = x + self[0](x, attn_bias)
        if len(self) == 3:
            x = x + self[1](x, context, attn_bias)
        return x + self[-1](x)


class Transformer(nn.Module):
    """``layers`` of :class:`Layer` and the final LayerNorm ``norm_out`` (release names)."""

    def __init__(self, dim: int, depth: int, num_heads: int, cross: bool = False) -> None:
        super().__init__()
        self.layers = nn.ModuleList(Layer(dim, num_heads, cross) for _ in range(depth))
        self.norm_out = nn.LayerNorm(dim)

    def forward(
        self, x: torch.Tensor, attn_bias: torch.Tensor, context: torch.Tensor | None = None
    ) -> torch.Tensor:
        """All layers, then ``norm_out``: the encodings the release's cross-encoder consumes."""
        for layer in self.layers:
            x = layer(x, attn_bias, context)
        return self.norm_out(x)


class ViT(nn.Module):
    """One sensor's encoder: ``linear_input`` over flattened 8x8 patches, then a :class:`Transformer`."""

    def __init__(self, in_channels: int, patch_size: int, dim: int, depth: int, num_heads: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.linear_input = nn.Linear(in_channels * patch_size * patch_size, dim)
        self.transformer = Transformer(dim, depth, num_heads)

    def embed(self, image: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> tokens (B, h*w, dim)."""
        return self.linear_input(patchify(image, self.patch_size))
