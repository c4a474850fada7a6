"""Multi-temporal input (B, C, T, H, W), frames oldest first: single-date encoders run per frame behind a
temporal head (``temporal=ltae|linear|mean``), Prithvi reads the frames at once; frame order matters to
the heads that should see it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from benchmark import builders
from benchmark.distributed import DistContext
from benchmark.models.temporal import LTAE, TemporalDecoder, TemporalLinear, TemporalMean
from conftest import REPO, TINY_VIT

CPU = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def tiny(tmp_path: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        return compose("train", overrides=[
            "dataset=synthetic_burnscars", f"dataset.root_path={tmp_path / 'data'}", "dataset.multi_temporal=3",
            *TINY_VIT, "decoder.channels=16", "mode=random", f"work_dir={tmp_path / 'wd'}", *overrides,
        ])


@pytest.mark.parametrize("head", [TemporalMean, TemporalLinear, LTAE])
def test_heads_merge_frames_into_one_map_per_level(head: type) -> None:
    merged = head(channels=32, frames=3)(torch.randn(2, 3, 32, 5, 7))
    assert merged.shape == (2, 32, 5, 7)


def test_frame_order_changes_what_ltae_and_a_trained_linear_head_see_but_not_the_mean() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 4, 4)
    swapped = x[:, [2, 1, 0]]
    ltae, linear, mean = LTAE(32, 3), TemporalLinear(32, 3), TemporalMean(32, 3)
    with torch.no_grad():
        linear.weight.copy_(torch.rand(3, 32))  # as after training: frames weigh differently
        assert not torch.allclose(ltae(x), ltae(swapped), atol=1e-4)
        assert not torch.allclose(linear(x), linear(swapped), atol=1e-4)
        assert torch.allclose(mean(x), mean(swapped), atol=1e-6)


def test_a_single_date_encoder_runs_per_frame_behind_the_temporal_head(tmp_path: Path) -> None:
    cfg = tiny(tmp_path, "temporal=linear")
    torch.manual_seed(0)
    model = builders.build_segmentor(cfg, "random", CPU).eval()
    assert model.per_frame and isinstance(model.decoder, TemporalDecoder)
    x = torch.randn(2, len(model.encoder.input_bands["optical"]), 3, 32, 32)
    with torch.no_grad():
        per_frame = model.encode({"optical": x})
        for t in range(3):
            alone = model.encoder({"optical": x[:, :, t : t + 1]})
            for level, features in enumerate(per_frame):
                assert torch.allclose(features[:, t], alone[level], atol=1e-5)
        assert model({"optical": x}, (32, 32)).shape == (2, 2, 32, 32)
    assert "heads.0.weight" in model.trainable_state_dict()["decoder"], "the head is saved with the decoder"


def test_prithvi_reads_the_dataset_s_frames_at_once(tmp_path: Path) -> None:
    cfg = tiny(tmp_path, "encoder=prithvi")
    assert cfg.encoder.num_frames == 3
    model = builders.build_segmentor(cfg, "random", CPU)
    assert not model.per_frame and not isinstance(model.decoder, TemporalDecoder)
    per_frame = builders.build_segmentor(tiny(tmp_path, "encoder=prithvi", "encoder.num_frames=1"), "random", CPU)
    assert per_frame.per_frame, "num_frames=1: Prithvi per frame, behind the temporal head"
    with pytest.raises(ValueError, match="reads 2 frames, the dataset has 3 per sample: set encoder.num_frames=3"):
        builders.build_segmentor(tiny(tmp_path, "encoder=prithvi", "encoder.num_frames=2"), "random", CPU)


def test_a_frozen_encoder_leaves_the_temporal_head_training(tmp_path: Path) -> None:
    cfg = tiny(tmp_path, "optimizer.lr=1e-3")
    model = builders.build_segmentor(cfg, "random", CPU)
    model.encoder.requires_grad_(False)
    optimizer = builders.build_optimizer(cfg, model)
    trained = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert all(id(p) in trained for p in model.decoder.heads.parameters())
