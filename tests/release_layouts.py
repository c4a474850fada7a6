"""Checkpoints in the published release layouts, written from a model's own weights, and encoders
built and loaded from their configs as ``build_segmentor`` does.

The layout is the one the family describes beside its model (``release_layouts``, read by the loader
too); this helper only adds what the real files carry that is not the encoder (one small tensor per
ignored prefix: pretraining decoders, heads, momentum encoders, the DINO student), so that loading is
tested against the real structure without downloading anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from benchmark.models.encoders.base import Encoder, architecture_config
from benchmark.models.encoders.layout import ReleaseLayout
from benchmark.models.encoders.prithvi import FLAT_LAYOUT, PREFIXED_LAYOUT, Prithvi
from benchmark.models.encoders.vit import sincos_pos_embed_3d
from benchmark.models.encoders.weights import load_pretrained

# Frames the Prithvi releases were pretrained on (their pos_embed covers this many dates).
RELEASE_FRAMES = {"prithvi": 3, "prithvi_eo_v2_300": 4, "prithvi_eo_v2_600": 4}
PRITHVI_LAYOUTS = {"flat": FLAT_LAYOUT, "prefixed": PREFIXED_LAYOUT}


def extra_path(prefix: str) -> str:
    """A key path under an ignored ``prefix`` (the prefix itself when it names one key)."""
    return prefix + "weight" if prefix.endswith((".", "/", "_")) else prefix


def release_checkpoint(name: str, model: Encoder, layout: str = "prefixed") -> Any:
    """The object the release file of encoder config ``name`` holds, with ``model``'s weights.

    ``layout`` chooses between Prithvi's ``flat`` and ``prefixed`` files; other families have one.
    """
    state_dict = dict(model.state_dict())
    if isinstance(model, Prithvi):
        chosen: ReleaseLayout = PRITHVI_LAYOUTS[layout]
        # The release's fixed table covers the frames it was pretrained on; loading recomputes it.
        state_dict["pos_embed"] = sincos_pos_embed_3d(model.embed_dim, (RELEASE_FRAMES[name], *model.grid_size))
    else:
        (chosen,) = type(model).release_layouts
    extras = {extra_path(prefix): torch.randn(2) for prefix in chosen.ignored}
    return chosen.to_release(state_dict, extras)


def write_release_file(name: str, model: Encoder, path: Path, layout: str = "prefixed") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(release_checkpoint(name, model, layout), path)
    return path


def build_encoder(config: DictConfig, pretrained: bool = False) -> Encoder:
    """Encoder config ``config`` built (no file read) and, when ``pretrained``, loaded from its
    ``encoder_weights`` (downloaded from ``download_url`` if missing), in eval mode."""
    encoder = instantiate(architecture_config(config), _convert_="all").eval()
    if pretrained:
        load_pretrained(encoder, config.get("encoder_weights"), config.get("download_url"))
    return encoder
