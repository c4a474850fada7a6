"""Multi-temporal input (B, C, T, H, W), frames oldest first: single-date encoders run per frame behind a
temporal head (``temporal=ltae|linear|mean``), Prithvi reads the frames at once; frame order matters to
the heads that should see it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from benchmark import builders
from benchmark.config_checks import config_problems
from benchmark.distributed import DistContext
from benchmark.models.temporal import LTAE, TemporalDecoder, TemporalLinear, TemporalMean
from benchmark.predict.model_inputs import ModelInputs
from benchmark.predict.scenes import SceneError
from conftest import REPO, TINY_ENCODERS, TINY_VIT

CPU = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def tiny(tmp_path: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        return compose("train", overrides=[
            "dataset=synthetic_burnintensity", f"dataset.root_path={tmp_path / 'data'}",
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
    ltae, linear, mean = LTAE(32, 3, heads=4).eval(), TemporalLinear(32, 3), TemporalMean(32, 3)
    with torch.no_grad():
        linear.weight.copy_(torch.rand(3, 32))  # as after training: frames weigh differently
        assert not torch.allclose(ltae(x), ltae(swapped), atol=1e-4)
        assert not torch.allclose(linear(x), linear(swapped), atol=1e-4)
        assert torch.allclose(mean(x), mean(swapped), atol=1e-6)
        ltae.frame_code.zero_()  # without the frame code (PANGAEA's L-TAE) attention pooling is order-blind
        assert torch.allclose(ltae(x), ltae(swapped), atol=1e-5)


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
        assert model({"optical": x}, (32, 32)).shape == (2, 5, 32, 32)
    assert "heads.0.weight" in model.trainable_state_dict()["decoder"], "the head is saved with the decoder"


def test_prithvi_reads_the_dataset_s_frames_at_once(tmp_path: Path) -> None:
    cfg = tiny(tmp_path, "encoder=prithvi")
    assert cfg.encoder.num_frames == 3
    torch.manual_seed(0)
    model = builders.build_segmentor(cfg, "random", CPU).eval()
    assert not model.per_frame and isinstance(model.decoder, TemporalDecoder)
    x = torch.randn(1, 6, 3, 32, 32)
    with torch.no_grad():  # one map per frame; the frame index is in the position embedding, so order matters
        features = model.encoder({"optical": x})[-1]
        assert features.shape == (1, 3, 32, 2, 2)
        swapped = model.encoder({"optical": x[:, :, [2, 1, 0]]})[-1]
        assert not torch.allclose(swapped, features[:, [2, 1, 0]], atol=1e-4)
        assert model({"optical": x}, (32, 32)).shape == (1, 5, 32, 32)
    per_frame = builders.build_segmentor(tiny(tmp_path, "encoder=prithvi", "encoder.num_frames=1"), "random", CPU)
    assert per_frame.per_frame, "num_frames=1: Prithvi per frame, behind the temporal head"
    assert config_problems(tiny(tmp_path, "encoder=prithvi", "encoder.num_frames=2"), check_work_dir=False) == [
        "encoder.num_frames=2: the dataset has 3 frame(s) per sample; set encoder.num_frames=3 (all at once) or 1 "
        "(each frame alone, merged by the temporal head)"]


def test_a_frozen_encoder_leaves_the_temporal_head_training(tmp_path: Path) -> None:
    cfg = tiny(tmp_path, "optimizer.lr=1e-3")
    model = builders.build_segmentor(cfg, "random", CPU)
    model.encoder.requires_grad_(False)
    optimizer = builders.build_optimizer(cfg, model)
    trained = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert all(id(p) in trained for p in model.decoder.heads.parameters())


def test_multi_temporal_must_match_the_dataset_s_frames(tmp_path: Path) -> None:
    assert config_problems(tiny(tmp_path), check_work_dir=False) == []
    problems = config_problems(tiny(tmp_path, "dataset.multi_temporal=false"), check_work_dir=False)
    assert problems == ["dataset.multi_temporal=False: benchmark.data.synthetic_burnintensity.SyntheticHLSBurnIntensity "
                        "samples have 3 frame(s); set dataset.multi_temporal=3"]
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        single = compose("train", overrides=["dataset=synthetic_burnscars", "dataset.multi_temporal=3"])
    assert config_problems(single, check_work_dir=False) == [
        "dataset.multi_temporal=3: benchmark.data.synthetic.SyntheticBurnScars samples have 1 frame(s); set "
        "dataset.multi_temporal=false"]


def test_mapping_a_scene_refuses_a_run_trained_on_several_dates(tmp_path: Path) -> None:
    with pytest.raises(SceneError, match="trained on 3 dates per sample .*mapping takes single-date scenes"):
        ModelInputs(tiny(tmp_path), window=32)


@pytest.mark.parametrize("encoder,decoder", [
    *[(name, "seg_upernet") for name in TINY_ENCODERS], ("unet", "seg_unet"), ("dofa", "seg_segformer"),
])
def test_every_encoder_family_reads_three_frames_through_the_head(encoder: str, decoder: str, tmp_path: Path) -> None:
    tiny = {**TINY_ENCODERS, "unet": ["encoder.topology=[8,16,32,32]"]}[encoder]
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=[
            "dataset=synthetic_burnintensity", f"dataset.root_path={tmp_path / 'data'}", "dataset.img_size=32",
            "dataset.num_train=2", "dataset.num_test=1", f"encoder={encoder}", *tiny, f"decoder={decoder}",
            *([] if decoder == "seg_unet" else ["decoder.channels=16"]), "temporal.heads=4", "mode=random",
            f"work_dir={tmp_path / 'wd'}", "cache=false",
        ])
    assert config_problems(cfg, check_work_dir=False) == []
    sample = builders.build_dataset(cfg, "val", CPU)[0]
    model = builders.build_segmentor(cfg, "random", CPU).eval()
    with torch.no_grad():
        logits = model({m: x[None] for m, x in sample["image"].items()}, (32, 32))
    assert logits.shape == (1, 5, 32, 32) and torch.isfinite(logits).all()
