"""CROMA encoders (Fuller et al. 2023, "CROMA: Remote Sensing Representations with Contrastive
Radar-Optical Masked Autoencoders"): a Sentinel-2 ViT, a Sentinel-1 ViT and a radar-optical
cross-encoder, with 2-D ALiBi attention biases instead of position embeddings.
Release files: https://huggingface.co/antofuller/CROMA (``CROMA_base.pt``, ``CROMA_large.pt``).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.models.encoders.base import Encoder
from benchmark.models.encoders.vit import collect_block_outputs, single_frame
from benchmark.models.encoders.weights import CheckpointLayoutError, check_band_count, unwrap

# size -> (token dim, optical encoder depth); the SAR encoder and the cross-encoder have half the depth.
SIZES = {"base": (768, 12), "large": (1024, 24)}

# Release sub-state-dict (and our attribute) holding each modality's encoder.
MODALITY_ENCODERS = {"optical": "s2_encoder", "sar": "s1_encoder"}

RELEASE_LAYOUT = "a CROMA checkpoint (dict of s1_encoder / s2_encoder / joint_encoder state_dicts)"


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


class Attention(nn.Module):
    """Pre-norm self-attention: ``input_norm``, bias-free ``to_qkv``, ``to_out`` with bias."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.input_norm = nn.LayerNorm(dim)
        self.to_qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.to_out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor) -> torch.Tensor:
        q, k, v = self.to_qkv(self.input_norm(x)).chunk(3, dim=-1)
        return self.to_out(attend(q, k, v, attn_bias, self.num_heads))


class CrossAttention(nn.Module):
    """Pre-norm cross-attention from ``x`` to ``context``; one ``input_norm`` normalises both."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.input_norm = nn.LayerNorm(dim)
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


class CROMA(Encoder):
    """CROMA encoder; ``input_bands`` picks the variant.

    - ``{optical: 12 bands}``: the Sentinel-2 encoder (``croma_optical``);
    - ``{sar: [VV, VH]}``: the Sentinel-1 encoder (``croma_sar``);
    - both: the cross-encoder (``croma_joint``): SAR tokens attend to the optical encodings; the two
      sensor encoders run in full (with their ``norm_out``) and outputs come from cross-encoder layers.

    No cls token and no position embedding: every attention adds a fixed 2-D ALiBi bias computed for
    the token grid in use (15x15 at 120 px, any multiple of ``patch_size`` works). Features are the raw
    layer outputs, except that ``norm_out`` is applied to the last requested one (as PANGAEA does).
    Only the layers up to the last requested output are built; the file's deeper layers are ignored.

    Args:
        input_bands: ``{modality: [bands]}`` as above, bands in the release order.
        size: ``base`` (768 dim, 12 optical / 6 SAR / 6 cross layers) or ``large`` (1024, 24 / 12 / 12).
        input_size: window side in pixels (120 in pretraining).
        patch_size: patch side in pixels (8 in the release).
        output_layers: 0-based layers (of the output encoder) whose outputs are returned.
        embed_dim, depth: override the size's token dim and optical depth (SAR and cross: half).
        num_heads: attention heads (16 in both releases).
        encoder_weights: path of ``CROMA_<size>.pt``; download_url: where to fetch it when missing.
        pretrained: load ``encoder_weights`` (False for ``mode=random``).
    """

    def __init__(
        self,
        input_bands: Mapping[str, Sequence[str]],
        size: str = "large",
        input_size: int = 120,
        patch_size: int = 8,
        output_layers: Sequence[int] = (3, 5, 7, 11),
        embed_dim: int | None = None,
        depth: int | None = None,
        num_heads: int = 16,
        encoder_weights: str | None = None,
        download_url: str | None = None,
        pretrained: bool = True,
    ) -> None:
        if size not in SIZES:
            raise ValueError(f"CROMA size must be one of {list(SIZES)}, got {size!r}")
        dim, optical_depth = SIZES[size]
        dim, optical_depth = embed_dim or dim, depth or optical_depth
        super().__init__(input_bands, input_size, patch_size, output_layers, [dim] * len(output_layers))
        modalities = sorted(self.input_bands)
        if not modalities or not set(modalities) <= set(MODALITY_ENCODERS):
            raise ValueError(
                f"CROMA takes input_bands for 'optical', 'sar' or both (joint), got {modalities}"
            )
        if self.input_size % patch_size:
            raise ValueError(
                f"CROMA input_size {self.input_size} is not a multiple of patch_size {patch_size}"
            )
        self.size = size
        self.embed_dim = dim
        self.joint = len(modalities) == 2
        full_depth = {"optical": optical_depth, "sar": optical_depth // 2}
        self.output_depth = optical_depth // 2 if self.joint else full_depth[modalities[0]]
        output_name = "cross-encoder" if self.joint else f"{modalities[0]} encoder"
        if max(self.output_layers) >= self.output_depth:
            raise ValueError(
                f"output_layers {self.output_layers} exceed the {self.output_depth} layers of the "
                f"CROMA-{size} {output_name}; use indices 0..{self.output_depth - 1}"
            )
        built = max(self.output_layers) + 1
        for modality in modalities:
            encoder = ViT(
                len(self.input_bands[modality]),
                patch_size,
                dim,
                full_depth[modality] if self.joint else built,
                num_heads,
            )
            self.add_module(MODALITY_ENCODERS[modality], encoder)
        if self.joint:
            self.joint_encoder = Transformer(dim, built, num_heads, cross=True)
        # Path of the transformer whose layers give the outputs (kept as a name: a second attribute
        # holding the module would register its parameters twice).
        self.output_path = (
            "joint_encoder" if self.joint else f"{MODALITY_ENCODERS[modalities[0]]}.transformer"
        )
        self.num_heads = num_heads
        # Cached for the configured grid; other grids get theirs computed in forward.
        self.register_buffer("attn_bias", alibi_2d(self.grid_size, num_heads), persistent=False)
        self.init_pretrained(pretrained, encoder_weights, download_url)

    @property
    def output_transformer(self) -> Transformer:
        return self.get_submodule(self.output_path)

    def convert_release_checkpoint(self, checkpoint: Any) -> dict[str, torch.Tensor]:
        """Prefix each needed sub-state-dict with its name; drop GAP heads and layers not built here."""
        state_dict: dict[str, torch.Tensor] = {}
        for part, _ in self.named_children():  # each child is one release sub-state-dict
            for key, value in unwrap(checkpoint, part, RELEASE_LAYOUT).items():
                state_dict[f"{part}.{key}"] = value
        for modality, bands in self.input_bands.items():
            weight = state_dict.get(f"{MODALITY_ENCODERS[modality]}.linear_input.weight")
            if weight is None:
                continue  # strict loading reports it as missing
            if weight.shape[0] != self.embed_dim:
                raise CheckpointLayoutError(
                    f"the file's {MODALITY_ENCODERS[modality]} has {weight.shape[0]}-dim tokens, but this "
                    f"encoder is CROMA-{self.size} with {self.embed_dim}; set encoder.size to match the "
                    "file (CROMA_base.pt: base, CROMA_large.pt: large)."
                )
            check_band_count(weight.shape[1] // self.patch_size**2, bands, f"CROMA {modality}")
        built = len(self.output_transformer.layers)
        unbuilt = tuple(f"{self.output_path}.layers.{i}." for i in range(built, self.output_depth))
        return {key: value for key, value in state_dict.items() if not key.startswith(unbuilt)}

    def _bias_for(self, grid: tuple[int, int]) -> torch.Tensor:
        if grid == self.grid_size:
            return self.attn_bias
        return alibi_2d(grid, self.num_heads).to(self.attn_bias.device)

    def _tokens(
        self, image: dict[str, torch.Tensor], modality: str
    ) -> tuple[torch.Tensor, tuple[int, int]]:
        """One modality's tokens (B, h*w, dim) and token grid."""
        if modality not in image:
            raise ValueError(
                f"CROMA with input_bands {list(self.input_bands)} needs a {modality!r} image, but the input "
                f"has only {list(image)}; use a dataset with this modality or another CROMA variant"
            )
        x = single_frame(image[modality], f"CROMA {modality}")
        if x.shape[-2] % self.patch_size or x.shape[-1] % self.patch_size:
            raise ValueError(
                f"CROMA needs {modality} image sides divisible by {self.patch_size}, "
                f"got {tuple(x.shape[-2:])}"
            )
        grid = (x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size)
        return self.get_submodule(MODALITY_ENCODERS[modality]).embed(x), grid

    def forward(self, image: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        modalities = sorted(self.input_bands)  # ["optical"], ["sar"] or ["optical", "sar"]
        tokens, grids = zip(*(self._tokens(image, modality) for modality in modalities))
        if len(set(grids)) > 1:
            raise ValueError(
                f"CROMA joint needs optical and SAR windows of one size, got token grids {grids}"
            )
        grid = grids[0]
        bias = self._bias_for(grid)
        block_kwargs = {"attn_bias": bias}
        if self.joint:
            optical, sar = tokens
            x = self.s1_encoder.transformer(sar, bias)
            block_kwargs["context"] = self.s2_encoder.transformer(optical, bias)
        else:
            x = tokens[0]
        transformer = self.output_transformer
        return collect_block_outputs(
            x, transformer.layers, self.output_layers, 0, grid, transformer.norm_out, **block_kwargs
        )
