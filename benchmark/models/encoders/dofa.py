"""DOFA ViT-B/16 (Xiong et al. 2024, "Neural Plasticity-Inspired Foundation Model for Observing the
Earth Crossing Modalities"): a ViT whose patch embedding is generated from the wavelengths of the input
bands, so one set of weights takes any band list. Release: https://huggingface.co/XShadow/DOFA
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.data.bands import wavelengths_um
from benchmark.models.encoders.base import Encoder
from benchmark.models.encoders.layout import ReleaseLayout
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

WAVE_DIM = 128  # width of the wavelength embedding and of the weight-generator transformer
NUM_WEIGHT_TOKENS = 128  # learned query tokens of the weight generator
KERNEL_SCALE = 0.01  # the release scales generated kernels and bias down by this factor
MODALITY_ORDER = ("optical", "sar")  # bands are stacked in this order (SAR after optical)

# DOFA_ViT_base_e100.pth: the model's own flat state_dict; the mask token and projector were used in
# pretraining only.
RELEASE_LAYOUT = ReleaseLayout(
    name="DOFA",
    summary="flat state_dict with patch_embed.weight_generator",
    signature=("patch_embed.weight_generator.weight_tokens",),
    ignored=("mask_token", "projector."),
)

# eps of every LayerNorm in the release (timm's ViT with partial(nn.LayerNorm, eps=1e-6)).
LAYER_NORM_EPS = 1e-6


class WavelengthMLP(nn.Module):
    """Residual MLP on wavelength embeddings, (C, WAVE_DIM) -> (C, WAVE_DIM): x + relu(w2(relu(w1(x))))."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, dim)
        self.w2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + F.relu(self.w2(F.relu(self.w1(x))))


class WeightGenerator(nn.Module):
    """One post-norm transformer layer over [weight tokens, band tokens, bias token].

    Band tokens (C, WAVE_DIM) -> per-band kernels (C, k*k*embed_dim) and a shared bias (embed_dim,).
    """

    def __init__(self, embed_dim: int, kernel_size: int, num_heads: int = 4) -> None:
        super().__init__()
        self.weight_tokens = nn.Parameter(torch.empty(NUM_WEIGHT_TOKENS, WAVE_DIM))
        self.bias_token = nn.Parameter(torch.empty(1, WAVE_DIM))
        layer = nn.TransformerEncoderLayer(WAVE_DIM, num_heads, activation="gelu", dropout=0.0)
        self.transformer_encoder = nn.TransformerEncoder(layer, num_layers=1, enable_nested_tensor=False)
        self.fc_weight = nn.Linear(WAVE_DIM, kernel_size * kernel_size * embed_dim)
        self.fc_bias = nn.Linear(WAVE_DIM, embed_dim)

    def forward(self, bands: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = torch.cat([self.weight_tokens, bands, self.bias_token])  # one unbatched sequence
        out = self.transformer_encoder(tokens)
        # The band tokens' own embedding is added back before the kernel head, as in the release.
        weights = self.fc_weight(out[NUM_WEIGHT_TOKENS:-1] + bands)
        return weights, self.fc_bias(out[-1])


class DynamicPatchEmbed(nn.Module):
    """Wavelength-conditioned patch embedding: (B, C, H, W) -> (B, embed_dim, h, w).

    The conv kernel slice of each band and the bias are generated from the band embeddings; the conv
    has stride ``patch_size`` and padding 1 (the release's choice: 224 px -> 14x14 tokens).
    """

    def __init__(self, embed_dim: int, patch_size: int) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.patch_size = patch_size
        self.weight_generator = WeightGenerator(embed_dim, patch_size)
        self.fclayer = WavelengthMLP(WAVE_DIM)

    def forward(self, x: torch.Tensor, wave_embed: torch.Tensor) -> torch.Tensor:
        """``wave_embed``: (C, WAVE_DIM) sin-cos embeddings of the C band wavelengths (nm)."""
        weights, bias = self.weight_generator(self.fclayer(wave_embed))
        k = self.patch_size
        # Row c of ``weights`` holds band c's kernel laid out (k, k, embed_dim).
        kernel = weights.view(-1, k, k, self.embed_dim).permute(3, 0, 1, 2) * KERNEL_SCALE
        return F.conv2d(x, kernel, bias * KERNEL_SCALE, stride=k, padding=1)


class DOFA(Encoder):
    """DOFA ViT: dynamic patch embedding, cls token, fixed 2-D sin-cos ``pos_embed``, timm blocks.

    Features are the raw block outputs, except the last block's, which goes through the release's
    final LayerNorm (as in PANGAEA). Release layout: :data:`RELEASE_LAYOUT`; a ``pos_embed`` for
    another grid is interpolated (logged).

    Args:
        input_bands: ``{modality: [bands]}``, ``optical`` and/or ``sar``: usually the dataset's own
            bands. Each band enters through its central wavelength (µm, from the band catalogue);
            SAR bands are stacked after the optical ones.
        input_size: window side in pixels (224 in the release; other sizes interpolate ``pos_embed``).
        patch_size: patch side in pixels.
        embed_dim, depth, num_heads, mlp_ratio: transformer shape (ViT-B: 768, 12, 12, 4).
        output_layers: 0-based blocks whose outputs are returned; only blocks up to the last are built.
    """

    release_layouts = (RELEASE_LAYOUT,)

    def __init__(
        self,
        input_bands: Mapping[str, Sequence[str]],
        input_size: int = 224,
        patch_size: int = 16,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        output_layers: Sequence[int] = (3, 5, 7, 11),
    ) -> None:
        super().__init__(input_bands, input_size, patch_size, output_layers, [embed_dim] * len(output_layers))
        unknown = sorted(set(self.input_bands) - set(MODALITY_ORDER))
        if unknown:
            raise ValueError(f"DOFA takes optical and sar bands, not modalities {unknown}; fix input_bands")
        self.modalities = [m for m in MODALITY_ORDER if self.input_bands.get(m)]
        bands = [band for m in self.modalities for band in self.input_bands[m]]
        if not bands:
            raise ValueError("DOFA needs at least one input band; input_bands is empty")
        self.depth = depth
        self.patch_embed = DynamicPatchEmbed(embed_dim, patch_size)
        # The wavelength embeddings depend on the band list only: computed once, moved with the module.
        wavelengths_nm = torch.tensor(wavelengths_um(bands), dtype=torch.float64) * 1000
        self.register_buffer("wave_embed", sincos_1d(WAVE_DIM, wavelengths_nm), persistent=False)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(
            sincos_pos_embed_2d(embed_dim, self.grid_size, cls_token=True), requires_grad=False
        )
        built = blocks_to_build(self.output_layers, depth, "DOFA encoder")
        self.blocks = nn.ModuleList(vit_block(embed_dim, num_heads, mlp_ratio, LAYER_NORM_EPS) for _ in range(built))
        # The final LayerNorm follows the last block of the full model: without that block it is unused.
        self.norm = nn.LayerNorm(embed_dim, eps=LAYER_NORM_EPS) if built == depth else None
        self._init_weights()

    def _init_weights(self) -> None:
        """The release's initialisation, which matters for ``mode=random``."""
        nn.init.normal_(self.cls_token, std=0.02)
        generator = self.patch_embed.weight_generator
        nn.init.normal_(generator.weight_tokens, std=0.02)
        nn.init.normal_(generator.bias_token, std=0.02)
        for module in self.patch_embed.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.constant_(module.bias, 0.01)

    def unbuilt_prefixes(self) -> tuple[str, ...]:
        unbuilt = unbuilt_blocks("blocks.", len(self.blocks), self.depth)
        return unbuilt if self.norm is not None else (*unbuilt, "norm.")

    def from_release(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        state_dict = super().from_release(state_dict)
        adapt_pos_embed(state_dict, "pos_embed", self.grid_size, 1, type(self).__name__)
        return state_dict

    def forward(self, image: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        x = torch.cat([single_frame(image[m], type(self).__name__) for m in self.modalities], dim=1)
        x = self.patch_embed(x, self.wave_embed)
        grid = (x.shape[-2], x.shape[-1])
        pos_embed = self.pos_embed
        if grid != self.grid_size:
            pos_embed = resize_pos_embed(pos_embed, self.grid_size, grid)
        x = x.flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + pos_embed
        return collect_block_outputs(x, self.blocks, self.output_layers, 1, grid, final_norm=self.norm)
