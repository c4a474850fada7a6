"""Checkpoints in the published release layouts (DESIGN §5), written from a model's own weights.

Each layout carries what the real file carries besides the encoder (pretraining decoders, heads,
momentum encoders, wrapper keys), so that loading through the pipeline is tested against the real
structure without downloading anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from timm.models.beit import gen_relative_position_index
from torch import nn

from benchmark.models.encoders.vit import sincos_pos_embed_3d

# Frames the Prithvi releases were pretrained on (their pos_embed covers this many dates).
RELEASE_FRAMES = {"prithvi": 3, "prithvi_eo_v2_300": 4, "prithvi_eo_v2_600": 4}


def prefixed(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + key: value for key, value in state_dict.items()}


def _dofa(model: nn.Module) -> dict[str, torch.Tensor]:
    """DOFA_ViT_base_e100.pth: flat, no prefix, plus the pretraining-only mask_token and projector."""
    dim = model.cls_token.shape[-1]
    return {
        **model.state_dict(),
        "mask_token": torch.randn(1, 1, dim),
        "projector.weight": torch.randn(dim, dim),
        "projector.bias": torch.randn(dim),
    }


def _prithvi(model: nn.Module, name: str, layout: str) -> dict[str, torch.Tensor]:
    """Prithvi MAE file: ``flat`` (original) or ``prefixed`` (encoder./decoder., TerraTorch era)."""
    dim, decoder_dim = model.embed_dim, 32
    frames = RELEASE_FRAMES[name]
    encoder = {
        **model.state_dict(),
        "pos_embed": sincos_pos_embed_3d(dim, (frames, *model.grid_size)),
        "norm.weight": torch.randn(dim),
        "norm.bias": torch.randn(dim),
    }
    bands = len(model.input_bands["optical"])
    decoder = {
        "mask_token": torch.randn(1, 1, decoder_dim),
        "decoder_embed.weight": torch.randn(decoder_dim, dim),
        "decoder_embed.bias": torch.randn(decoder_dim),
        "decoder_pos_embed": torch.randn(1, encoder["pos_embed"].shape[1], decoder_dim),
        "decoder_blocks.0.norm1.weight": torch.randn(decoder_dim),
        "decoder_norm.weight": torch.randn(decoder_dim),
        "decoder_pred.weight": torch.randn(model.patch_size**2 * bands, decoder_dim),
    }
    if layout == "flat":
        return {**encoder, **decoder}
    return {**prefixed(encoder, "encoder."), **prefixed(decoder, "decoder.")}


def _ssl4eo(model: nn.Module, name: str) -> dict[str, Any]:
    sd, dim, r = model.state_dict(), model.embed_dim, torch.randn
    if name in ("ssl4eo_mae_optical", "ssl4eo_mae_sar"):
        decoder = {
            "decoder_embed.weight": r(16, dim), "decoder_pos_embed": r(1, 5, 16), "mask_token": r(1, 1, 16),
            "decoder_blocks.0.norm1.weight": r(16), "decoder_pred.weight": r(512, 16),
            "norm.weight": r(dim), "norm.bias": r(dim),
        }
        return {"model": {**sd, **decoder}, "optimizer": {"state": {}}, "epoch": 99}
    if name == "ssl4eo_dino":
        head = {"head.mlp.0.weight": r(64, dim), "head.last_layer.weight_g": r(128, 1)}
        backbone = {**sd, "norm.weight": r(dim), "norm.bias": r(dim)}
        return {
            "teacher": {**prefixed(backbone, "backbone."), **head},
            "student": {**prefixed(backbone, "module.backbone."), **prefixed(head, "module.")},
            "dino_loss": {"center": r(1, 128)},
            "epoch": 100,
        }
    if name == "ssl4eo_moco":
        encoder = {**sd, "head.0.weight": r(64, dim), "head.1.running_mean": r(64), "norm.weight": r(dim)}
        state = {
            **prefixed(encoder, "module.base_encoder."),
            **prefixed(encoder, "module.momentum_encoder."),
            "module.predictor.0.weight": r(64, 64),
            "module.predictor.1.running_var": r(64),
        }
        return {"state_dict": state, "arch": "vit_small", "epoch": 100, "optimizer": {"state": {}}}
    if name == "ssl4eo_data2vec":
        extras = {
            "mask_token": r(1, 1, dim), "norm.weight": r(dim), "lm_head.weight": r(dim, dim),
            "rel_pos_bias.relative_position_index": gen_relative_position_index(model.grid_size),
        }
        return {"model": {**sd, **extras}, "epoch": 99, "scaler": {}}
    raise ValueError(f"no SSL4EO release layout for {name!r}")


def _croma(model: nn.Module) -> dict[str, Any]:
    """One sub-state-dict per network, plus the two pooled-representation heads.

    A ``croma_joint`` model holds all three networks; an optical- or SAR-only model fills its own.
    """
    sd, dim, r = model.state_dict(), model.embed_dim, torch.randn
    parts = {
        part: {key[len(part) + 1:]: value for key, value in sd.items() if key.startswith(part + ".")}
        for part in ("s1_encoder", "s2_encoder", "joint_encoder")
    }
    gap_ffn = {"0.weight": r(dim), "1.weight": r(4 * dim, dim), "3.weight": r(dim, 4 * dim), "3.bias": r(dim)}
    return {**parts, "s1_GAP_FFN": gap_ffn, "s2_GAP_FFN": dict(gap_ffn)}


def release_checkpoint(name: str, model: nn.Module, layout: str = "prefixed") -> Any:
    """The object the release file of encoder config ``name`` holds, with ``model``'s weights.

    ``layout`` chooses between Prithvi's ``flat`` and ``prefixed`` files; other families have one.
    """
    if name == "dofa":
        return _dofa(model)
    if name.startswith("prithvi"):
        return _prithvi(model, name, layout)
    if name.startswith("ssl4eo"):
        return _ssl4eo(model, name)
    if name.startswith("croma"):
        return _croma(model)
    raise ValueError(f"no release layout for encoder config {name!r}")


def write_release_file(name: str, model: nn.Module, path: Path, layout: str = "prefixed") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(release_checkpoint(name, model, layout), path)
    return path
