"""Our transformer layers against timm's: same parameter names, the same numbers drawn by a seeded
initialisation, the same outputs; and the benchmark's entry points import neither timm nor torchvision
(their import is what these layers save)."""

from __future__ import annotations

import subprocess
import sys
from functools import partial

import pytest
import torch
from timm.layers import DropPath as TimmDropPath
from timm.layers import Mlp as TimmMlp
from timm.layers import PatchEmbed as TimmPatchEmbed
from timm.layers import resize_rel_pos_bias_table
from timm.layers import trunc_normal_ as timm_trunc_normal_
from timm.models.beit import Block as TimmBeitBlock
from timm.models.beit import gen_relative_position_index
from timm.models.swin_transformer import window_partition as timm_window_partition
from timm.models.swin_transformer import window_reverse as timm_window_reverse
from timm.models.vision_transformer import Block as TimmBlock
from torch import nn

from benchmark.models.decoders.skip_attention import window_partition, window_reverse
from benchmark.models.encoders.beit import (
    BeitBlock,
    RelativePositionBias,
    relative_position_index,
    resize_relative_position_table,
    table_rows,
)
from benchmark.models.layers import DropPath, Mlp, PatchEmbed, ViTBlock, trunc_normal_

# Same operations in the same order: outputs agree to float32 rounding.
ATOL = 1e-6


def seeded(build, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build()


def assert_same_state(ours: nn.Module, theirs: nn.Module) -> None:
    mine, timm_state = ours.state_dict(), theirs.state_dict()
    assert list(mine) == list(timm_state)
    for key in mine:
        assert torch.equal(mine[key], timm_state[key]), key


def test_vit_block_has_timm_names_init_and_outputs() -> None:
    ours = seeded(lambda: ViTBlock(48, 3, 4.0, qkv_bias=True, eps=1e-6, drop_path=0.1))
    theirs = seeded(lambda: TimmBlock(48, 3, 4.0, qkv_bias=True, drop_path=0.1,
                                      norm_layer=partial(nn.LayerNorm, eps=1e-6)))
    assert_same_state(ours, theirs)
    x = torch.randn(2, 17, 48)
    torch.testing.assert_close(ours.eval()(x), theirs.eval()(x), atol=ATOL, rtol=0)
    ours.train(), theirs.train()
    torch.manual_seed(3)
    out = ours(x)
    torch.manual_seed(3)
    torch.testing.assert_close(out, theirs(x), atol=ATOL, rtol=0)  # the same samples dropped


def test_beit_block_has_timm_names_init_and_outputs() -> None:
    ours = seeded(lambda: BeitBlock(32, 4, 4.0, init_values=0.1, eps=1e-6))
    theirs = seeded(lambda: TimmBeitBlock(32, 4, qkv_bias=True, mlp_ratio=4.0, init_values=0.1,
                                          norm_layer=partial(nn.LayerNorm, eps=1e-6)))
    assert_same_state(ours, theirs)
    with torch.no_grad():
        for block in (ours, theirs):  # non-zero q/v biases, so their placement matters
            block.attn.q_bias.normal_(generator=torch.Generator().manual_seed(1))
            block.attn.v_bias.normal_(generator=torch.Generator().manual_seed(2))
    bias_module = RelativePositionBias((3, 3), 4)
    nn.init.normal_(bias_module.relative_position_bias_table)
    bias = bias_module()
    assert bias.shape == (4, 10, 10)
    x = torch.randn(2, 10, 32)
    torch.testing.assert_close(ours.eval()(x, bias), theirs.eval()(x, shared_rel_pos_bias=bias), atol=ATOL, rtol=0)


def test_patch_embed_mlp_drop_path_and_trunc_normal_match_timm() -> None:
    ours = seeded(lambda: PatchEmbed(8, 5, 24))
    theirs = seeded(lambda: TimmPatchEmbed(img_size=32, patch_size=8, in_chans=5, embed_dim=24, strict_img_size=False))
    assert_same_state(ours, theirs)
    image = torch.randn(2, 5, 16, 24)
    torch.testing.assert_close(ours(image), theirs(image), atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match="not a whole number of 8 px patches"):
        ours(torch.randn(1, 5, 20, 24))

    mlp, timm_mlp = seeded(lambda: Mlp(12, 30, 7)), seeded(lambda: TimmMlp(12, 30, 7))
    assert_same_state(mlp, timm_mlp)
    tokens = torch.randn(3, 12)
    torch.testing.assert_close(mlp(tokens), timm_mlp(tokens), atol=ATOL, rtol=0)

    torch.manual_seed(5)
    dropped = DropPath(0.5).train()(torch.ones(64, 3))
    torch.manual_seed(5)
    assert torch.equal(dropped, TimmDropPath(0.5).train()(torch.ones(64, 3)))
    assert set(dropped.unique().tolist()) == {0.0, 2.0}
    assert torch.equal(DropPath(0.5).eval()(dropped), dropped)

    drawn, timm_drawn = torch.empty(1000), torch.empty(1000)
    torch.manual_seed(7)
    trunc_normal_(drawn, std=0.02)
    torch.manual_seed(7)
    timm_trunc_normal_(timm_drawn, std=0.02)
    assert torch.equal(drawn, timm_drawn)
    assert 0.015 < drawn.std().item() < 0.025


@pytest.mark.parametrize("grid", [(1, 1), (3, 5), (4, 4)])
def test_relative_position_index_matches_timm(grid: tuple[int, int]) -> None:
    index = relative_position_index(grid)
    assert torch.equal(index, gen_relative_position_index(grid))
    assert index.max().item() == table_rows(grid) - 1


@pytest.mark.parametrize(("old", "new"), [(14, (8, 8)), (4, (6, 6)), (6, (4, 4))])
def test_table_resize_matches_timm_on_square_grids(old: int, new: tuple[int, int]) -> None:
    table = torch.randn(table_rows((old, old)), 6, generator=torch.Generator().manual_seed(old))
    resized = resize_relative_position_table(table, new)
    expected = resize_rel_pos_bias_table(table, new_window_size=new, new_bias_shape=(table_rows(new), 6))
    torch.testing.assert_close(resized, expected, atol=1e-5, rtol=0)
    assert torch.equal(resized[-3:], table[-3:])  # the cls rows are kept


def test_table_resize_keeps_an_unchanged_axis_and_refuses_a_foreign_table() -> None:
    table = torch.randn(table_rows((4, 4)), 2)
    resized = resize_relative_position_table(table, (4, 6))
    assert resized.shape == (table_rows((4, 6)), 2)
    plane, new_plane = table[:-3].view(7, 7, 2), resized[:-3].view(7, 11, 2)
    torch.testing.assert_close(new_plane[:, 5], plane[:, 3], atol=1e-6, rtol=0)  # zero offset, all rows kept
    with pytest.raises(ValueError, match="fits no square token grid"):
        resize_relative_position_table(torch.randn(50, 2), (4, 4))


def test_windows_match_timm_and_round_trip() -> None:
    maps = torch.randn(2, 6, 8, 5)
    windows = window_partition(maps, (3, 4))
    assert torch.equal(windows, timm_window_partition(maps, (3, 4)))
    assert torch.equal(window_reverse(windows, (3, 4), 6, 8), maps)
    assert torch.equal(timm_window_reverse(windows, (3, 4), 6, 8), maps)


def test_entry_points_import_neither_timm_nor_torchvision() -> None:
    """Their import took about 2 s of every process's start-up (torchvision also imports torch's compiler)."""
    code = ("import sys, benchmark.run, benchmark.sweep, benchmark.lockstep, benchmark.predict.app, "
            "benchmark.torchrun_jobs; print(sorted(m for m in ('timm', 'torchvision', 'torch._dynamo') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]", result.stdout
