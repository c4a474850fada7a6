"""One training protocol for every mode: the same crops whether the encoder is frozen, trained or random."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from benchmark import builders
from benchmark.config_checks import ConfigError, check_config, config_problems
from benchmark.distributed import DistContext
from conftest import REPO, tiny_overrides
from test_pipeline import tiny_weights_file

CPU = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
MODES = ("frozen", "unfrozen", "random")


def compose_run(data_root: Path, work_dir: Path, *overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        return compose("train", overrides=[*tiny_overrides(data_root, work_dir), *overrides])


def training_targets(cfg: DictConfig, mode: str, epochs: int = 2) -> list[torch.Tensor]:
    """The target crops a run of ``mode`` trains on, batch by batch, through the builders a run uses."""
    torch.manual_seed(0)
    model = builders.build_segmentor(cfg, mode, CPU)
    features = builders.build_feature_cache(cfg, mode, model, CPU)
    loader = builders.train_loader(cfg, CPU, builders.build_dataset(cfg, "train", CPU), features)
    targets = []
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)
        targets += [batch["target"] for batch in loader]
    return targets


@pytest.mark.parametrize("grid", [None, "train_crop_stride=16"], ids=["default", "crop-grid opt-in"])
def test_the_three_modes_train_on_the_same_crops(synthetic_root: Path, tmp_path: Path, grid: str | None) -> None:
    weights = tiny_weights_file(tmp_path / "mae.pth")
    extra = [f"encoder.encoder_weights={weights}", *([grid] if grid else [])]
    sequences = {mode: training_targets(compose_run(synthetic_root, tmp_path / "wd", *extra), mode) for mode in MODES}
    reference = sequences["random"]
    assert len(reference) == 2 * (18 // 4)  # 18 training tiles, batches of 4, 2 epochs
    for mode in ("frozen", "unfrozen"):
        assert len(sequences[mode]) == len(reference)
        assert all(torch.equal(a, b) for a, b in zip(sequences[mode], reference)), mode
    if grid is None:  # crops anywhere: across two epochs the tiles are not cut the same way
        assert not all(torch.equal(a, b) for a, b in zip(reference[:4], reference[4:]))


def test_default_crops_are_drawn_anywhere_in_every_mode(synthetic_root: Path, tmp_path: Path) -> None:
    cfg = compose_run(synthetic_root, tmp_path / "wd")
    assert cfg.train_crop_stride == 1
    crop = next(step for step in cfg.preprocessing.train if step._target_.endswith("RandomCrop"))
    assert crop.stride == 1


def test_bad_config_values_are_all_reported_before_any_work(synthetic_root: Path, tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    cfg = compose_run(
        synthetic_root, blocked / "work",
        "task.trainer.n_epochs=0", "batch_size=0", "optimizer.lr=-1", "num_workers=-2", "train_crop_stride=99",
    )
    problems = config_problems(cfg)
    for key in ("task.trainer.n_epochs=0", "batch_size=0", "optimizer.lr=-1", "num_workers=-2", "train_crop_stride=99", "work_dir="):
        assert any(p.startswith(key) for p in problems), (key, problems)
    assert len(problems) == 6
    with pytest.raises(ConfigError, match="must be an integer >= 1"):
        check_config(cfg)
    assert config_problems(compose_run(synthetic_root, tmp_path / "wd")) == []


def test_a_decoder_setting_its_decoder_does_not_take_is_reported_with_the_fix(synthetic_root: Path, tmp_path: Path) -> None:
    def composed(*overrides: str) -> DictConfig:
        with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
            return compose("train", overrides=[*tiny_overrides(synthetic_root, tmp_path, decoder="seg_linear"), *overrides])

    # as experiment=quickstart (decoder.channels=64) followed by decoder=seg_linear leaves it: no channels there
    assert config_problems(composed("+decoder.channels=64")) == [
        "decoder.channels=64: LinearProbe has no setting 'channels' (it takes in_dims, num_classes, batch_norm); "
        "drop it with ~decoder.channels"
    ]
    assert config_problems(composed()) == []
