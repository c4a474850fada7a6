"""SSL4EO-S12 (MAE SAR, DINO, MoCo-v3, data2vec) and CROMA encoders.

Tests build each architecture from its Hydra config, write a checkpoint in the release layout
(wrappers, prefixes and the extra networks the real file carries) from a model's own random weights,
and load it back as the builders do (build, then ``load_pretrained``). Nothing is downloaded.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hydra.errors import InstantiationException
from omegaconf import OmegaConf
from torch import nn

from benchmark.models.encoders.croma_layers import alibi_2d, alibi_slopes
from benchmark.models.encoders.vit import resize_pos_embed
from benchmark.models.encoders.weights import CheckpointLayoutError
from release_layouts import build_encoder, release_checkpoint

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "encoder"

SSL4EO = ["ssl4eo_mae_sar", "ssl4eo_dino", "ssl4eo_moco", "ssl4eo_data2vec"]
CROMA = ["croma_optical", "croma_sar", "croma_joint"]

# Tiny shapes keep the tests fast; every structural part is still there.
TINY_VIT = {"input_size": 32, "embed_dim": 32, "depth": 3, "num_heads": 2, "output_layers": [0, 2]}
# CROMA's depth is the optical depth: the SAR encoder and the cross-encoder get 2 layers.
TINY_CROMA = {
    "size": "base", "input_size": 32, "embed_dim": 32, "depth": 4, "num_heads": 4, "output_layers": [0, 1]
}
TINY = {**{name: TINY_VIT for name in SSL4EO}, **{name: TINY_CROMA for name in CROMA}}


def build(name: str, pretrained: bool = False, **overrides: Any) -> nn.Module:
    """Build ``configs/encoder/<name>.yaml`` with ``overrides`` (and load it), as the pipeline does."""
    cfg = OmegaConf.merge(OmegaConf.load(CONFIG_DIR / f"{name}.yaml"), overrides)
    return build_encoder(cfg, pretrained)


def build_error(name: str, error: type[Exception], pattern: str, **overrides: Any) -> None:
    """Building or loading ``name`` raises ``error`` matching ``pattern`` (Hydra wraps constructor
    errors: check the cause)."""
    with pytest.raises((InstantiationException, error)) as info:
        build(name, **overrides)
    cause = info.value.__cause__ if isinstance(info.value, InstantiationException) else info.value
    assert isinstance(cause, error), repr(cause)
    assert re.search(pattern, str(cause)), str(cause)


def load_error(name: str, path: Path, pattern: str, **overrides: Any) -> None:
    """Loading ``path`` into the tiny ``name`` model raises a CheckpointLayoutError matching ``pattern``."""
    overrides = {**TINY[name], **overrides}
    build_error(name, CheckpointLayoutError, pattern, pretrained=True, encoder_weights=str(path), **overrides)


def randomize(model: nn.Module) -> nn.Module:
    """Fill every parameter with random values, so that no zero/one init can hide a mix-up."""
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn_like(parameter))
    return model


def sample_input(model: nn.Module, size: int, batch: int = 2) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {m: torch.randn(batch, len(bands), 1, size, size) for m, bands in model.input_bands.items()}


def make_donor(name: str, **overrides: Any) -> nn.Module:
    donor_name = "croma_joint" if name.startswith("croma") else name
    return randomize(build(donor_name, **{**TINY[name], **overrides}))


def write(checkpoint: Any, path: Path) -> Path:
    torch.save(checkpoint, path)
    return path


@pytest.mark.parametrize("name", SSL4EO + CROMA)
def test_release_checkpoint_round_trip(name: str, tmp_path: Path) -> None:
    donor = make_donor(name)
    path = write(release_checkpoint(name, donor), tmp_path / "release.pth")
    # Outputs [0, 1] build fewer layers than the file holds (SSL4EO: 2 of 3 blocks, CROMA optical: 2 of
    # 4); the file's deeper layers must be ignored.
    overrides = {**TINY[name], "output_layers": [0, 1]}
    loaded = build(name, pretrained=True, encoder_weights=str(path), **overrides)
    reference = build(name, **overrides)
    donor_state = donor.state_dict()
    reference.load_state_dict({key: donor_state[key] for key in reference.state_dict()})

    loaded_state, reference_state = loaded.state_dict(), reference.state_dict()
    assert loaded_state.keys() == reference_state.keys()
    for key, value in reference_state.items():
        assert torch.equal(loaded_state[key], value), key
    image = sample_input(loaded, 32)
    with torch.no_grad():
        outputs, expected = loaded(image), reference(image)
    assert len(outputs) == 2
    for output, target in zip(outputs, expected):
        assert output.shape == (2, 32, *loaded.grid_size)
        assert torch.equal(output, target)


def test_croma_builds_only_layers_up_to_last_output(tmp_path: Path) -> None:
    path = write(release_checkpoint("croma_optical", make_donor("croma_optical")), tmp_path / "CROMA_base.pt")
    overrides = {**TINY_CROMA, "output_layers": [0]}
    loaded = build("croma_optical", pretrained=True, encoder_weights=str(path), **overrides)
    assert len(loaded.s2_encoder.transformer.layers) == 1  # of the file's 4
    assert not hasattr(loaded, "s1_encoder") and not hasattr(loaded, "joint_encoder")


DOFA_CHECKPOINT = {
    "cls_token": torch.randn(1, 1, 32),
    "pos_embed": torch.randn(1, 5, 32),
    "patch_embed.weight_generator.weight_tokens": torch.randn(128, 128),
    "patch_embed.fclayer.weight": torch.randn(32, 128),
    "blocks.0.norm1.weight": torch.randn(32),
    "norm.weight": torch.randn(32),
    "mask_token": torch.randn(1, 1, 32),
}


@pytest.mark.parametrize(
    ("name", "other", "message"),
    [
        ("croma_optical", "dofa", "expected a CROMA checkpoint.*looks like a DOFA"),
        ("ssl4eo_dino", "ssl4eo_mae_sar", "expected an SSL4EO DINO checkpoint.*looks like a SSL4EO MAE"),
        ("ssl4eo_moco", "ssl4eo_dino", "expected an SSL4EO MoCo-v3 checkpoint.*looks like a SSL4EO DINO"),
        ("croma_sar", "ssl4eo_moco", "expected a CROMA checkpoint.*looks like a SSL4EO MoCo"),
    ],
)
def test_checkpoint_of_another_family_is_named(name: str, other: str, message: str, tmp_path: Path) -> None:
    checkpoint = DOFA_CHECKPOINT if other == "dofa" else release_checkpoint(other, make_donor(other))
    load_error(name, write(checkpoint, tmp_path / "other.pth"), message)


@pytest.mark.parametrize("name", ["ssl4eo_data2vec", "croma_joint"])
def test_truncated_file(name: str, tmp_path: Path) -> None:
    path = write(release_checkpoint(name, make_donor(name)), tmp_path / "release.pth")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    load_error(name, path, "truncated or corrupted.*fetch it again")


@pytest.mark.parametrize(
    ("name", "wrapper", "file_key", "model_key"),
    [
        # DINO's ViT-S has qkv biases: a file without them must not load (a peer project drops them).
        ("ssl4eo_dino", "teacher", "backbone.blocks.0.attn.qkv.bias", "blocks.0.attn.qkv.bias"),
        ("ssl4eo_data2vec", "model", "blocks.1.attn.q_bias", "blocks.1.attn.q_bias"),
        ("croma_joint", "joint_encoder", "layers.0.1.to_k.weight", "joint_encoder.layers.0.1.to_k.weight"),
    ],
)
def test_file_missing_one_key(name: str, wrapper: str, file_key: str, model_key: str, tmp_path: Path) -> None:
    checkpoint = release_checkpoint(name, make_donor(name))
    del checkpoint[wrapper][file_key]
    path = write(checkpoint, tmp_path / "release.pth")
    load_error(name, path, r"missing keys \(1\): " + re.escape(model_key) + "\n")


def test_ssl4eo_file_for_other_bands(tmp_path: Path) -> None:
    # The 2-band SAR MAE file given to the 13-band optical MAE config.
    path = write(release_checkpoint("ssl4eo_mae_sar", make_donor("ssl4eo_mae_sar")), tmp_path / "B2.pth")
    build_error(
        "ssl4eo_mae_optical", CheckpointLayoutError, "takes 2 bands, but SSL4EOMAE is configured for 13",
        pretrained=True, encoder_weights=str(path), **TINY_VIT,
    )


def test_croma_file_for_other_bands_or_size(tmp_path: Path) -> None:
    path = write(release_checkpoint("croma_optical", make_donor("croma_optical")), tmp_path / "CROMA_base.pt")
    rgb = {"optical": ["B2", "B3", "B4"]}
    load_error("croma_optical", path, "takes 12 bands, but CROMA optical is configured for 3", input_bands=rgb)
    load_error("croma_optical", path, "32-dim tokens.*set encoder.size", embed_dim=64)


@pytest.mark.parametrize("name", SSL4EO + CROMA)
def test_random_mode_needs_no_file(name: str, tmp_path: Path) -> None:
    model = build(name, encoder_weights=str(tmp_path / "absent.pth"), download_url=None, **TINY[name])
    with torch.no_grad():
        assert len(model(sample_input(model, 32, batch=1))) == 2


@pytest.mark.parametrize("name", SSL4EO)
def test_ssl4eo_full_size(name: str) -> None:
    model = build(name)
    assert sum(p.numel() for p in model.parameters()) > 21e6  # ViT-S/16
    with torch.no_grad():
        outputs = model(sample_input(model, 224, batch=1))
    assert [tuple(o.shape) for o in outputs] == [(1, 384, 14, 14)] * 4


@pytest.mark.parametrize("name", CROMA)
def test_croma_default_output_layers_are_pangaeas(name: str) -> None:
    # sig-gis/pangaea-bench configs/encoder/croma_{optical,sar,joint}.yaml: all large, all [3, 5, 7, 11].
    cfg = OmegaConf.load(CONFIG_DIR / f"{name}.yaml")
    assert (cfg.size, list(cfg.output_layers)) == ("large", [3, 5, 7, 11])


def test_croma_large_optical_full_size() -> None:
    model = build("croma_optical")  # PANGAEA's layers: only the first 12 of 24 layers are needed
    assert len(model.s2_encoder.transformer.layers) == 12
    with torch.no_grad():
        outputs = model(sample_input(model, 120, batch=1))
    assert [tuple(o.shape) for o in outputs] == [(1, 1024, 15, 15)] * 4
    spread = build("croma_optical", output_layers=[7, 11, 15, 23])  # the documented option
    assert len(spread.s2_encoder.transformer.layers) == 24


@pytest.mark.parametrize("name", ["croma_sar", "croma_joint"])
def test_croma_base_sar_and_joint_full_size(name: str) -> None:
    # The large joint model (48 layers) is too slow for a unit test; base has the same structure.
    model = build(name, size="base", output_layers=[1, 3, 5])
    if name == "croma_joint":
        assert [len(model.s2_encoder.transformer.layers), len(model.s1_encoder.transformer.layers)] == [12, 6]
    with torch.no_grad():
        outputs = model(sample_input(model, 120, batch=1))
    assert [tuple(o.shape) for o in outputs] == [(1, 768, 15, 15)] * 3


def test_croma_rejects_output_layers_beyond_depth() -> None:
    build_error("croma_sar", ValueError, "exceed the 6 layers of the CROMA-base sar encoder", size="base")


def test_vit_pos_embed_interpolated_to_512(tmp_path: Path) -> None:
    # A file pretrained at 224 (14x14 tokens) loaded into a 512 window (32x32 tokens).
    overrides = {**TINY_VIT, "input_size": 224, "depth": 1, "output_layers": [0]}
    donor = make_donor("ssl4eo_dino", **overrides)
    path = write(release_checkpoint("ssl4eo_dino", donor), tmp_path / "dino.pth")
    overrides["input_size"] = 512
    model = build("ssl4eo_dino", pretrained=True, encoder_weights=str(path), **overrides)
    assert torch.equal(model.pos_embed, resize_pos_embed(donor.pos_embed, (14, 14), (32, 32)))
    with torch.no_grad():
        (output,) = model(sample_input(model, 512, batch=1))
    assert output.shape == (1, 32, 32, 32)


def test_data2vec_rel_pos_table_resized_to_512(tmp_path: Path) -> None:
    overrides = {**TINY_VIT, "input_size": 224, "depth": 1, "output_layers": [0]}
    donor = make_donor("ssl4eo_data2vec", **overrides)
    path = write(release_checkpoint("ssl4eo_data2vec", donor), tmp_path / "data2vec.pth")
    overrides["input_size"] = 512
    model = build("ssl4eo_data2vec", pretrained=True, encoder_weights=str(path), **overrides)
    old = donor.rel_pos_bias.relative_position_bias_table
    new = model.rel_pos_bias.relative_position_bias_table
    assert old.shape == ((2 * 14 - 1) ** 2 + 3, 2)
    assert new.shape == ((2 * 32 - 1) ** 2 + 3, 2)
    assert torch.equal(new[-3:], old[-3:])  # the cls-token rows are kept
    torch.testing.assert_close(new[31 * 63 + 31], old[13 * 27 + 13])  # zero offset stays in place
    with torch.no_grad():
        (output,) = model(sample_input(model, 512, batch=1))
        (other_grid,) = model(sample_input(model, 224, batch=1))  # table resized on the fly
    assert output.shape == (1, 32, 32, 32)
    assert other_grid.shape == (1, 32, 14, 14)


def test_data2vec_layer_scale_init() -> None:
    model = build("ssl4eo_data2vec", **TINY_VIT)
    assert all(torch.all(block.gamma_1 == 0.1) and torch.all(block.gamma_2 == 0.1) for block in model.blocks)


def test_mocov3_pos_embed_convention() -> None:
    model = build("ssl4eo_moco", **{**TINY_VIT, "input_size": 64})  # 4x4 grid, 32 channels
    table, quarter = model.pos_embed[0], 8
    omega = 1.0 / 10000 ** (torch.arange(quarter) / quarter)
    row, col = 1, 3
    token = table[1 + row * 4 + col]
    assert torch.equal(table[0], torch.zeros(32))
    torch.testing.assert_close(token[:quarter], torch.sin(row * omega))
    torch.testing.assert_close(token[quarter : 2 * quarter], torch.cos(row * omega))
    torch.testing.assert_close(token[2 * quarter : 3 * quarter], torch.sin(col * omega))
    torch.testing.assert_close(token[3 * quarter :], torch.cos(col * omega))
    assert not model.pos_embed.requires_grad


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, heads: int):
    b, n, d = q.shape
    q, k, v = (t.reshape(b, -1, heads, d // heads).permute(0, 2, 1, 3) for t in (q, k, v))
    scores = torch.einsum("bhid,bhjd->bhij", q, k) * (d // heads) ** -0.5 + bias
    return torch.einsum("bhij,bhjd->bhid", scores.softmax(dim=-1), v).permute(0, 2, 1, 3).reshape(b, n, d)


def reference_layer(layer: nn.Module, x: torch.Tensor, bias: torch.Tensor, heads: int, context=None):
    """CROMA's layer as published: x + attn(norm x); [x + cross(norm x, norm context)]; x + ffn(norm x)."""
    attention, ffn = layer[0], layer[-1]
    q, k, v = attention.to_qkv(attention.input_norm(x)).chunk(3, dim=-1)
    x = x + attention.to_out(reference_attention(q, k, v, bias, heads))
    if context is not None:
        cross = layer[1]
        h, c = cross.input_norm(x), cross.input_norm(context)
        x = x + cross.to_out(reference_attention(cross.to_q(h), cross.to_k(c), cross.to_v(c), bias, heads))
    return x + ffn.net[3](F.gelu(ffn.net[0](ffn.input_norm(x))))


def test_croma_matches_published_formulation() -> None:
    """Patchify order, 2-D ALiBi, layer structure and norm placement, against a loop-based reference."""
    # float64 keeps the comparison tight despite the large random weights.
    joint = randomize(build("croma_joint", **{**TINY_CROMA, "input_size": 24})).double()  # 3x3 patches
    optical = build("croma_optical", **{**TINY_CROMA, "input_size": 24}).double()
    joint_state = joint.state_dict()
    optical.load_state_dict({key: joint_state[key] for key in optical.state_dict()})
    image = {m: x.double() for m, x in sample_input(joint, 24).items()}
    heads = 4
    points = [(row, col) for row in range(3) for col in range(3)]
    slopes = [2 ** (-8 / heads * (h + 1)) for h in range(heads)]
    bias = torch.tensor([[[-slope * math.dist(p, q) for q in points] for p in points] for slope in slopes])

    def encode(vit: nn.Module, pixels: torch.Tensor) -> list[torch.Tensor]:
        """Per-layer outputs of one sensor's encoder; each patch flattened as (channel, row, col)."""
        pixels = pixels[:, :, 0]
        patches = [pixels[:, :, r * 8 : (r + 1) * 8, c * 8 : (c + 1) * 8].reshape(2, -1) for r, c in points]
        x, outputs = vit.linear_input(torch.stack(patches, dim=1)), []
        for layer in vit.transformer.layers:
            x = reference_layer(layer, x, bias, heads)
            outputs.append(x)
        return outputs

    with torch.no_grad():
        optical_layers = encode(joint.s2_encoder, image["optical"])
        context = joint.s2_encoder.transformer.norm_out(optical_layers[-1])
        x = joint.s1_encoder.transformer.norm_out(encode(joint.s1_encoder, image["sar"])[-1])
        joint_layers = []
        for layer in joint.joint_encoder.layers:
            x = reference_layer(layer, x, bias, heads, context)
            joint_layers.append(x)
        # Raw layer outputs, norm_out on the last requested one only.
        expected = [
            optical_layers[0],
            optical.s2_encoder.transformer.norm_out(optical_layers[1]),
            joint_layers[0],
            joint.joint_encoder.norm_out(joint_layers[1]),
        ]
        outputs = optical(image) + joint(image)
    for output, target in zip(outputs, expected):
        torch.testing.assert_close(output.flatten(2).transpose(1, 2), target)


def test_alibi_slopes_and_distances() -> None:
    assert alibi_slopes(16) == pytest.approx([2 ** (-0.5 * (i + 1)) for i in range(16)])
    assert alibi_slopes(12)[:9] == pytest.approx([2 ** -(i + 1) for i in range(8)] + [2**-0.5])
    bias = alibi_2d((3, 4), 16)
    assert bias.shape == (1, 16, 12, 12)
    slope = 2**-0.5
    assert bias[0, 0, 0, 0] == 0
    assert bias[0, 0, 0, 1] == pytest.approx(-slope)  # right neighbour
    assert bias[0, 0, 0, 4] == pytest.approx(-slope)  # neighbour below
    assert bias[0, 0, 0, 11] == pytest.approx(-slope * math.hypot(2, 3))
    assert torch.equal(bias, bias.transpose(-1, -2))


def test_croma_alibi_recomputed_for_other_grids() -> None:
    model = randomize(build("croma_optical", **{**TINY_CROMA, "input_size": 96}))
    assert model.attn_bias.shape == (1, 4, 144, 144)  # cached for the configured 12x12 grid
    # No learned position parameters: a 64 px window gives what a model built for 64 px gives.
    other = build("croma_optical", **{**TINY_CROMA, "input_size": 64})
    other.load_state_dict(model.state_dict())
    image = sample_input(model, 64)
    with torch.no_grad():
        outputs, expected = model(image), other(image)
    assert outputs[0].shape == (2, 32, 8, 8)
    for output, target in zip(outputs, expected):
        assert torch.equal(output, target)


def test_croma_joint_needs_both_modalities() -> None:
    model = build("croma_joint", **TINY_CROMA)
    image = sample_input(model, 32)
    with pytest.raises(ValueError, match="needs a 'sar' image"):
        model({"optical": image["optical"]})
    image["sar"] = torch.randn(2, 2, 1, 40, 40)
    with pytest.raises(ValueError, match="one size"):
        model(image)
