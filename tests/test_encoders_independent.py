"""SSL4EO-S12 encoders against an independent implementation: timm's VisionTransformer and Beit.

Round-trip tests (a model's own weights written and read back) cannot catch a wrong key mapping or a
wrong architecture detail. Here each test builds the timm model the release was trained with, gives it
random weights, writes them **in the release layout** (timm's key names are mapped to the release
names by hand below, and the extra networks the real file carries are added), loads the file through
the encoder config as the pipeline does, and compares our output maps with timm's block outputs on the
same input.

Release architectures (all ViT-S/16, 384 dim, LayerNorm eps 1e-6, qkv bias):
- MAE: zhu-xlab/SSL4EO-S12 src/benchmark/pretrain_ssl/models/mae/models_mae.py
  (``mae_vit_small_patch16``: 6 heads, fixed 2-D sin-cos ``pos_embed`` stored in the file).
- DINO: zhu-xlab/SSL4EO-S12 src/benchmark/transfer_classification/models/dino/vision_transformer.py
  ``vit_small`` (6 heads, learnable ``pos_embed``).
- MoCo-v3: zhu-xlab/SSL4EO-S12 src/benchmark/transfer_classification/models/moco_v3/vits.py
  ``vit_small``: 6 heads (the file notes that upstream moco-v3 uses 12), fixed MoCo-v3 sin-cos table.
- data2vec: BEiT blocks (q_bias/v_bias, layer scale gamma_1/gamma_2), one shared relative position
  bias, no absolute position embedding.
"""

from __future__ import annotations

import re
from functools import partial
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from omegaconf import OmegaConf
from timm.models.beit import Beit
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from release_layouts import build_encoder

REPO = Path(__file__).resolve().parents[1]

# Small but complete: the file holds 4 blocks; we request blocks 1 and 2, so our model builds 3 and
# must ignore the file's last one. 64 px / 16 px patches = a 4x4 token grid (no interpolation).
FILE_DEPTH, OUTPUT_LAYERS, SIZE, DIM = 4, [1, 2], 64, 384
# Allowed difference between our features and timm's (features are O(10)). Both run in float64, so
# rounding is ~1e-12 and even a LayerNorm eps of 1e-5 instead of 1e-6 (~1e-5 here) shows.
ATOL = RTOL = 1e-7

# Heads of each release's ViT-S (see the module docstring for the sources).
RELEASE_HEADS = {
    "ssl4eo_mae_optical": 6, "ssl4eo_mae_sar": 6, "ssl4eo_dino": 6, "ssl4eo_moco": 6, "ssl4eo_data2vec": 6,
}
IN_CHANS = {"ssl4eo_mae_sar": 2}  # the others take the 13 Sentinel-2 bands

# timm name -> release name. SSL4EO's MAE, DINO and MoCo-v3 code all use timm-style ViT names, so the
# mapping is one-to-one, but spelled out: a timm key not listed here fails the test instead of being
# carried over unexamined.
VIT_RULES = [
    (r"cls_token", r"cls_token"),
    (r"pos_embed", r"pos_embed"),
    (r"patch_embed\.proj\.(weight|bias)", r"patch_embed.proj.\1"),
    (r"blocks\.(\d+)\.norm([12])\.(weight|bias)", r"blocks.\1.norm\2.\3"),
    (r"blocks\.(\d+)\.attn\.(qkv|proj)\.(weight|bias)", r"blocks.\1.attn.\2.\3"),
    (r"blocks\.(\d+)\.mlp\.fc([12])\.(weight|bias)", r"blocks.\1.mlp.fc\2.\3"),
    (r"norm\.(weight|bias)", r"norm.\1"),
]
# BEiT/data2vec release names: qkv without bias plus q_bias/v_bias, gamma_1/gamma_2, shared table.
BEIT_RULES = [
    (r"cls_token", r"cls_token"),
    (r"patch_embed\.proj\.(weight|bias)", r"patch_embed.proj.\1"),
    (r"rel_pos_bias\.relative_position_bias_table", r"rel_pos_bias.relative_position_bias_table"),
    (r"blocks\.(\d+)\.norm([12])\.(weight|bias)", r"blocks.\1.norm\2.\3"),
    (r"blocks\.(\d+)\.attn\.qkv\.weight", r"blocks.\1.attn.qkv.weight"),
    (r"blocks\.(\d+)\.attn\.([qv])_bias", r"blocks.\1.attn.\2_bias"),
    (r"blocks\.(\d+)\.attn\.proj\.(weight|bias)", r"blocks.\1.attn.proj.\2"),
    (r"blocks\.(\d+)\.mlp\.fc([12])\.(weight|bias)", r"blocks.\1.mlp.fc\2.\3"),
    (r"blocks\.(\d+)\.gamma_([12])", r"blocks.\1.gamma_\2"),
    (r"norm\.(weight|bias)", r"norm.\1"),
]


def rename(state: dict[str, torch.Tensor], rules: list[tuple[str, str]]) -> dict[str, torch.Tensor]:
    """Map every key of ``state`` through the first matching rule; an unmatched key is an error."""
    renamed = {}
    for key, value in state.items():
        for pattern, replacement in rules:
            if re.fullmatch(pattern, key):
                renamed[re.sub(pattern, replacement, key)] = value.clone()
                break
        else:
            raise AssertionError(f"no release name for timm key {key!r}")
    return renamed


# ------------------------------------------------------------------ position tables, from the papers' code


def sincos(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """(N,) -> (N, dim): sines then cosines at frequencies 1 / 10000^(i / (dim/2))."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim // 2))
    angles = positions.double()[:, None] * omega[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def grid_table(dim: int, side: int, rows_first: bool) -> torch.Tensor:
    """(1, 1 + side^2, dim) table, zero cls row; tokens row-major.

    MAE's ``get_2d_sincos_pos_embed`` encodes the column in the first half (``rows_first=False``);
    MoCo-v3's ``build_2d_sincos_position_embedding`` puts (sin, cos) of the slow (row) index first.
    """
    rows = torch.arange(side).repeat_interleave(side)
    cols = torch.arange(side).repeat(side)
    first, second = (rows, cols) if rows_first else (cols, rows)
    table = torch.cat([sincos(first, dim // 2), sincos(second, dim // 2)], dim=1)
    return torch.cat([torch.zeros(1, dim, dtype=table.dtype), table]).unsqueeze(0).float()


FIXED_TABLES: dict[str, Callable[[], torch.Tensor]] = {
    "ssl4eo_mae_optical": lambda: grid_table(DIM, SIZE // 16, rows_first=False),
    "ssl4eo_mae_sar": lambda: grid_table(DIM, SIZE // 16, rows_first=False),
    "ssl4eo_moco": lambda: grid_table(DIM, SIZE // 16, rows_first=True),
}


# ------------------------------------------------------------------ timm reference models


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights everywhere (norm scales around 1), so that no zero/one init hides a mix-up."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            is_norm_scale = re.search(r"norm\d?\.weight$", name) is not None
            scale = 0.5 if name.endswith(("pos_embed", "relative_position_bias_table", "cls_token")) else 0.05
            param.copy_(noise * scale + (1.0 if is_norm_scale else 0.0))
    return model


def timm_model(name: str, num_heads: int | None = None) -> nn.Module:
    """The timm network matching the release of encoder config ``name``, with random weights."""
    common = dict(
        img_size=SIZE, patch_size=16, in_chans=IN_CHANS.get(name, 13), num_classes=0,
        embed_dim=DIM, depth=FILE_DEPTH, num_heads=num_heads or RELEASE_HEADS[name], mlp_ratio=4.0,
        qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6),
    )
    if name == "ssl4eo_data2vec":
        model = Beit(
            **common, global_pool="token", init_values=0.1,
            use_abs_pos_emb=False, use_rel_pos_bias=False, use_shared_rel_pos_bias=True,
        )
    else:
        model = VisionTransformer(**common, global_pool="token", class_token=True)
    model = randomize(model).eval()
    if name in FIXED_TABLES:
        with torch.no_grad():
            model.pos_embed.copy_(FIXED_TABLES[name]())
    return model


def release_file(name: str, model: nn.Module) -> dict[str, Any]:
    """The release checkpoint of ``name`` as the SSL4EO-S12 authors publish it, holding ``model``'s
    weights under release names."""
    r = torch.randn
    if name == "ssl4eo_data2vec":
        encoder = rename(model.state_dict(), BEIT_RULES)
        extras = {
            "mask_token": r(1, 1, DIM), "lm_head.weight": r(DIM, DIM), "lm_head.bias": r(DIM),
            "rel_pos_bias.relative_position_index": model.rel_pos_bias.relative_position_index.clone(),
        }
        return {"model": {**encoder, **extras}, "epoch": 99}
    encoder = rename(model.state_dict(), VIT_RULES)
    if name in ("ssl4eo_mae_optical", "ssl4eo_mae_sar"):
        decoder = {
            "decoder_embed.weight": r(512, DIM), "mask_token": r(1, 1, 512), "decoder_pred.weight": r(256, 512),
        }
        return {"model": {**encoder, **decoder}, "optimizer": {}, "epoch": 99}
    if name == "ssl4eo_dino":
        head = {"head.mlp.0.weight": r(64, DIM), "head.last_layer.weight_g": r(1, 64)}
        return {
            "teacher": {**{f"backbone.{k}": v for k, v in encoder.items()}, **head},
            "student": {f"module.backbone.{k}": v + 1.0 for k, v in encoder.items()},  # must not be read
            "epoch": 100,
        }
    if name == "ssl4eo_moco":
        base = {f"module.base_encoder.{k}": v for k, v in encoder.items()}
        momentum = {f"module.momentum_encoder.{k}": v + 1.0 for k, v in encoder.items()}  # must not be read
        head = {"module.base_encoder.head.0.weight": r(64, DIM), "module.predictor.0.weight": r(64, 64)}
        return {"state_dict": {**base, **momentum, **head}, "arch": "vit_small", "epoch": 100}
    raise ValueError(name)


# ------------------------------------------------------------------ ours, through the config


def ours(name: str, path: Path | None, **overrides: Any) -> nn.Module:
    """configs/encoder/NAME.yaml at the test size, loading ``path`` (random init when None)."""
    cfg = OmegaConf.merge(
        OmegaConf.load(REPO / "configs" / "encoder" / f"{name}.yaml"),
        {"input_size": SIZE, "output_layers": OUTPUT_LAYERS, "encoder_weights": str(path) if path else None},
        overrides,
    )
    return build_encoder(cfg, pretrained=path is not None)


def features(
    name: str, tmp_path: Path, **overrides: Any
) -> tuple[nn.Module, list[torch.Tensor], list[torch.Tensor]]:
    """Write timm's model for ``name`` as a release file, load it into ours; both models' features."""
    reference = timm_model(name)
    path = tmp_path / f"{name}.pth"
    torch.save(release_file(name, reference), path)
    model = ours(name, path, **overrides).double()
    reference = reference.double()
    bands = reference.patch_embed.proj.in_channels
    image = torch.randn(2, bands, SIZE, SIZE, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        expected = reference.forward_intermediates(
            image, indices=OUTPUT_LAYERS, norm=False, output_fmt="NCHW", intermediates_only=True
        )
        actual = model({model.modality: image.unsqueeze(2)})  # (B, C, T=1, H, W)
    return model, actual, expected


SSL4EO = ["ssl4eo_mae_optical", "ssl4eo_mae_sar", "ssl4eo_dino", "ssl4eo_moco", "ssl4eo_data2vec"]


@pytest.mark.parametrize("name", SSL4EO)
def test_features_match_timm_after_loading_the_release_layout(name: str, tmp_path: Path) -> None:
    model, actual, expected = features(name, tmp_path)
    assert len(model.blocks) == max(OUTPUT_LAYERS) + 1  # the file's deeper block was not needed
    assert [tuple(a.shape) for a in actual] == [(2, DIM, 4, 4)] * len(OUTPUT_LAYERS)
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("name", sorted(FIXED_TABLES))
def test_fixed_position_tables_match_the_papers_formulas(name: str) -> None:
    """The table our random-init model builds is the one the release code computes (and stores)."""
    torch.testing.assert_close(ours(name, None).pos_embed.detach(), FIXED_TABLES[name](), atol=1e-6, rtol=0)


def test_heads_are_invisible_to_strict_loading_but_change_the_features(tmp_path: Path) -> None:
    """qkv weights have the same shape for any head count, so only the features can pin it: loading a
    6-head release into a 12-head model succeeds, and its features are far from the release model's."""
    _, actual, expected = features("ssl4eo_moco", tmp_path, num_heads=12)  # loads without complaint
    assert (actual[-1] - expected[-1]).abs().max() > 100 * ATOL


@pytest.mark.parametrize("name", SSL4EO)
def test_configs_use_the_release_head_count(name: str) -> None:
    model = ours(name, None)
    assert {block.attn.num_heads for block in model.blocks} == {RELEASE_HEADS[name]}


def test_data2vec_relative_position_index_follows_beit() -> None:
    """BEiT's index: offsets (dy + h-1) * (2w-1) + (dx + w-1) between patches; the last three table
    rows are cls->patch, patch->cls and cls->cls. Written out here, not taken from timm."""
    side = SIZE // 16
    rows, cols = torch.arange(side).repeat_interleave(side), torch.arange(side).repeat(side)
    dy, dx = rows[:, None] - rows[None, :], cols[:, None] - cols[None, :]
    num = (2 * side - 1) ** 2 + 3
    index = torch.zeros(side * side + 1, side * side + 1, dtype=torch.long)
    index[1:, 1:] = (dy + side - 1) * (2 * side - 1) + (dx + side - 1)
    index[0, :], index[:, 0], index[0, 0] = num - 3, num - 2, num - 1
    model = ours("ssl4eo_data2vec", None)
    assert torch.equal(model.rel_pos_bias.relative_position_index, index)
