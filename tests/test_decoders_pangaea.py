"""UPerNet, SegFormer and MUSTER built as PANGAEA builds them.

The expected parameter counts come from PANGAEA's own decoder classes (sig-gis/pangaea-bench:
pangaea/decoders/upernet.py @41127398, segformer.py @3feb17d2, muster.py @beef8246, with
configs/decoder/seg_{upernet,segformer,muster}.yaml of those commits), instantiated outside this repository
with a stub encoder (``output_dim`` [C] * 4, ``output_layers`` [3, 5, 7, 11], ``embed_dim`` C,
``output_shape`` (14, 14, C), no pyramid output) and counted with
``sum(p.numel() for p in decoder.parameters() if p.requires_grad)`` (the encoder excluded): numbers recorded
from that one-off run, which this repository cannot rerun. In the same run, loading the oracle's random weights
into these modules gave the same logits to float precision wherever the attention windows tile the grid; no
test here checks that (see README "Differences from PANGAEA" for the window handling we keep).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from benchmark.models.decoders.muster import MUSTER
from benchmark.models.decoders.segformer import SegFormer
from benchmark.models.decoders.upernet import UPerNet

ROOT = Path(__file__).resolve().parents[1]
NAMES = ("seg_upernet", "seg_segformer", "seg_muster")

# (encoder width C, classes, decoder overrides) -> PANGAEA's counts for (UPerNet, SegFormer, MUSTER)
PANGAEA_COUNTS = [
    # SSL4EO ViT-S/16 with the five decoders at 64 channels (the side-by-side comparison of issue 10)
    ((384, 2, {"channels": 64}), (2_572_546, 1_886_850, 29_766_906)),
    # ViT-S with each config's default channels: UPerNet 512, SegFormer 512, MUSTER 256
    ((384, 2, {}), (30_888_834, 3_612_546, 30_100_026)),
    # a tiny width (what the other decoder tests use)
    ((32, 3, {"channels": 16}), (46_611, 15_731, 276_331)),
]


def from_config(name: str, in_dims: list[int], num_classes: int, **overrides) -> torch.nn.Module:
    """configs/decoder/<name>.yaml instantiated as build_segmentor does."""
    cfg = OmegaConf.create({"dataset": {"num_classes": num_classes}, "encoder": {"patch_size": 16}})
    cfg.decoder = OmegaConf.merge(OmegaConf.load(ROOT / "configs" / "decoder" / f"{name}.yaml"), overrides)
    return instantiate(cfg.decoder, in_dims=in_dims, _convert_="all")


def trainable(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


@pytest.mark.parametrize("config,expected", PANGAEA_COUNTS, ids=["vits-64ch", "vits-default", "tiny"])
def test_parameter_counts_equal_pangaeas(config, expected):
    dim, num_classes, overrides = config
    with torch.device("meta"):  # build only: no memory, no initialisation
        counts = tuple(trainable(from_config(name, [dim] * 4, num_classes, **overrides)) for name in NAMES)
    assert counts == expected


def test_upernet_convs_carry_a_bias_before_their_norm():
    """PANGAEA's UPerNet uses nn.Conv2d's default bias=True before each SyncBatchNorm: 12 * channels more."""
    decoder = UPerNet([32] * 4, 3, channels=16)
    convs = [m for m in decoder.modules() if isinstance(m, torch.nn.Conv2d) and m is not decoder.classifier]
    assert len(convs) == 12 and all(conv.bias is not None for conv in convs)


def test_segformer_projections_are_conv_norm_relu():
    """PANGAEA projects each level with timm's ConvBnAct (1x1 conv without bias, BatchNorm, ReLU)."""
    decoder = SegFormer([32] * 4, 3, channels=16).eval()
    x = torch.randn(2, 32, 6, 6)
    for projection in decoder.projections:
        out = projection(x)
        assert (out >= 0).all() and (out > 0).any()
        assert projection[0].bias is None and isinstance(projection[1], torch.nn.BatchNorm2d)


@pytest.mark.parametrize("name", ["seg_segformer", "seg_muster"])
def test_pyramid_from_the_last_layer_by_default(name):
    """PANGAEA's pyramid_strategy (SegFormer: head_only, MUSTER: head) builds every level from the last
    selected layer; ``intermediate`` reads one layer per level."""
    torch.manual_seed(0)
    tiny = {"channels": 8, "embed_dim": 32, "num_heads": [4, 4, 2, 2]} if name == "seg_muster" else {"channels": 8}
    features = [torch.randn(2, 16, 6, 6) for _ in range(4)]
    changed = [f + torch.randn_like(f) for f in features[:-1]] + [features[-1]]
    for strategy, depends_on_early_layers in (("default", False), ("intermediate", True)):
        overrides = tiny if strategy == "default" else {**tiny, "pyramid_strategy": strategy}
        decoder = from_config(name, [16] * 4, 3, **overrides).eval()
        with torch.no_grad():
            differs = not torch.equal(decoder(features, (96, 96)), decoder(changed, (96, 96)))
        assert differs == depends_on_early_layers, strategy


def test_pyramid_strategy_is_checked():
    with pytest.raises(ValueError, match="pyramid_strategy"):
        SegFormer([32] * 4, 3, pyramid_strategy="last")


def test_muster_pyramid_is_swin_like():
    """PANGAEA's MUSTER neck: 4x and 2x levels narrowed to C/4 and C/2 by their last transposed conv, the 1x
    level kept, the 1/2x level pooled then widened to 2C by a 1x1 conv; stages 2C, C, C/2, C/4 wide."""
    decoder = MUSTER([32] * 4, 3, channels=8, num_heads=[4, 4, 2, 2])
    levels = decoder.neck([torch.randn(1, 32, 6, 6)] * 4)
    assert [tuple(level.shape[1:]) for level in levels] == [(8, 24, 24), (16, 12, 12), (32, 6, 6), (64, 3, 3)]
    assert [stage.blocks[0].norm1.normalized_shape[0] for stage in decoder.stages] == [64, 32, 16, 8]


def record_outputs(modules: dict[str, torch.nn.Module]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Forward hooks: each module's output (channels-first or -last) and the order modules ran in."""
    outputs, order = {}, []
    for name, module in modules.items():
        module.register_forward_pre_hook(lambda m, args, name=name: order.append(name))
        module.register_forward_hook(lambda m, args, out, name=name: outputs.__setitem__(name, out))
    return outputs, order


def test_muster_fuse_and_head_use_gelu_and_dropout_comes_first():
    """Fuse convs and the head end in GELU (PANGAEA's act_cfg), not ReLU; the head is a 1x1 conv with bias and
    no norm; dropout acts on the output MLP's map, before the head conv (PANGAEA's forward order)."""
    torch.manual_seed(0)
    decoder = MUSTER([32] * 4, 3, channels=8, embed_dim=32, num_heads=[4, 4, 2, 2]).eval()
    assert isinstance(decoder.head[0], torch.nn.Conv2d) and decoder.head[0].bias is not None
    assert [type(m) for m in decoder.head] == [torch.nn.Conv2d, torch.nn.GELU]
    watched = {f"stage{i}": stage for i, stage in enumerate(decoder.stages)}
    watched |= {"out_mlp": decoder.out_mlp, "dropout": decoder.dropout, "head": decoder.head}
    watched["classifier"] = decoder.classifier
    outputs, order = record_outputs(watched)
    with torch.no_grad():
        decoder([torch.randn(2, 32, 6, 6) for _ in range(4)], (96, 96))
    assert order[-4:] == ["out_mlp", "dropout", "head", "classifier"]
    gelu_minimum = -0.1701  # GELU's minimum is about -0.16997
    for name in ("stage0", "stage1", "stage2", "stage3", "head"):
        assert (outputs[name] < 0).any() and outputs[name].min() >= gelu_minimum, name


def test_muster_residual_mlps_on_levels_and_output():
    """One residual MLP per pyramid level (hidden mlp_ratio x width) and one on the finest output (hidden
    mlp_ratio x channels), with the full drop-path rate; with their last layer zeroed they pass maps through."""
    decoder = MUSTER([32] * 4, 3, channels=8, embed_dim=32, num_heads=[4, 4, 2, 2], drop_path_rate=0.2)
    hidden = [mlp.mlp.fc1.out_features for mlp in decoder.level_mlps]
    assert hidden == [128, 64, 32, 16] and decoder.out_mlp.mlp.fc1.out_features == 4 * 8
    assert decoder.out_mlp.mlp.fc1.in_features == 2 * 4
    assert all(mlp.drop_path.drop_prob == 0.2 for mlp in [*decoder.level_mlps, decoder.out_mlp])
    mlp = decoder.out_mlp.eval()
    torch.nn.init.zeros_(mlp.mlp.fc2.weight)
    torch.nn.init.zeros_(mlp.mlp.fc2.bias)
    x = torch.randn(2, 5, 5, 8)
    assert torch.equal(mlp(x), x)


@pytest.mark.parametrize("grid", [(14, 14), (15, 15), (7, 10)])
def test_muster_as_pangaea_works_on_small_odd_and_non_square_grids(grid):
    decoder = from_config("seg_muster", [32] * 4, 3, channels=8, num_heads=[4, 4, 2, 2]).eval()
    with torch.no_grad():
        logits = decoder([torch.randn(1, 32, *grid) for _ in range(4)], (16 * grid[0], 16 * grid[1]))
    assert logits.shape == (1, 3, 16 * grid[0], 16 * grid[1]) and torch.isfinite(logits).all()
