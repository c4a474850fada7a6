"""CROMA encoders (Fuller et al. 2023, "CROMA: Remote Sensing Representations with Contrastive
Radar-Optical Masked Autoencoders"): a Sentinel-2 ViT, a Sentinel-1 ViT and a radar-optical
cross-encoder, with 2-D ALiBi attention biases instead of position embeddings.
Release files: https://huggingface.co/antofuller/CROMA (``CROMA_base.pt``, ``CROMA_large.pt``).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn

from benchmark.models.encoders.base import Encoder
from benchmark.models.encoders.croma_layers import Transformer, ViT, alibi_2d
from benchmark.models.encoders.layout import CheckpointLayoutError, ReleaseLayout, check_band_count
from benchmark.models.encoders.vit import blocks_to_build, collect_block_outputs, single_frame, unbuilt_blocks

# size -> (token dim, optical encoder depth); the SAR encoder and the cross-encoder have half the depth.
SIZES = {"base": (768, 12), "large": (1024, 24)}

# Release sub-state-dict (and our attribute) holding each modality's encoder.
MODALITY_ENCODERS = {"optical": "s2_encoder", "sar": "s1_encoder"}
NETWORKS = ("s1_encoder", "s2_encoder", "joint_encoder")

# CROMA_base.pt / CROMA_large.pt: one sub-state-dict per network, named as our attributes, beside the
# pooled-representation heads of pretraining.
RELEASE_LAYOUT = ReleaseLayout(
    name="CROMA",
    summary="dict of s1_encoder / s2_encoder / joint_encoder state_dicts",
    signature=("s1_encoder", "s2_encoder"),
    rules=tuple((f"{network}/", f"{network}.") for network in NETWORKS),
    ignored=("s1_GAP_FFN/", "s2_GAP_FFN/"),
)


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
    """

    lora_targets = {"attention": r".*\.(to_qkv|to_q|to_k|to_v|to_out)", "mlp": r".*\.net\.(0|3)"}
    release_layouts = (RELEASE_LAYOUT,)

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
        built = blocks_to_build(self.output_layers, self.output_depth, f"CROMA-{size} {output_name}")
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

    @property
    def output_transformer(self) -> Transformer:
        return self.get_submodule(self.output_path)

    def transformer_blocks(self) -> list[nn.Module]:
        """The layers of the transformer whose outputs are returned (the cross-encoder's for joint input;
        the sensor encoders of a joint model count as coming before them)."""
        return list(self.output_transformer.layers)

    def unbuilt_prefixes(self) -> tuple[str, ...]:
        """The networks this variant does not use, and output layers past the deepest requested one."""
        absent = tuple(f"{network}." for network in NETWORKS if not hasattr(self, network))
        built = len(self.output_transformer.layers)
        return absent + unbuilt_blocks(f"{self.output_path}.layers.", built, self.output_depth)

    def from_release(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Checks that the file's sensor encoders have this size and these bands."""
        state_dict = super().from_release(state_dict)
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
        return state_dict

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
