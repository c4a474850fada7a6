"""Every encoder family and every decoder end to end through benchmark/run.py (tiny shapes, synthetic
data): frozen from a release-layout file, random init, unfrozen, and under torchrun on two CPU processes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from conftest import REPO, TINY_DECODERS, TINY_ENCODERS, only_run_dir, run_benchmark, tiny_overrides
from benchmark.engine.checkpoint import load_checkpoint
from release_layouts import build_encoder, write_release_file

pytestmark = pytest.mark.slow
# Long enough for every tiny model to beat the majority class (one validation, at the end).
LEARN = ["task.trainer.n_epochs=16", "task.trainer.eval_interval=16", "optimizer.lr=3e-3"]
FAMILY_FILES = {
    "ssl4eo_mae_optical": "B13_vits16_mae_0099_ckpt.pth",
    "dofa": "DOFA_ViT_base_e100.pth",
    "prithvi": "Prithvi_EO_V1_100M.pt",
    "croma_optical": "CROMA_base.pt",
}


def release_weights(overrides: list[str], name: str, path: Path, trained_run: Path | None = None) -> Path:
    """Build the encoder exactly as run.py composes it and save it in its release layout: random weights,
    or those a random-mode run learned (``trained_run``), a stand-in for real pretraining."""
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    torch.manual_seed(3)
    encoder = build_encoder(cfg.encoder)
    if trained_run is not None:
        encoder.load_state_dict(load_checkpoint(trained_run / "checkpoints" / "best.pt")["model"]["encoder"])
    return write_release_file(name, encoder, path)


def majority_class_miou(confusion: list[list[int]]) -> float:
    """The test mIoU of a model that predicts the most frequent class everywhere (classes present only)."""
    support = torch.tensor(confusion).sum(dim=1)
    return float(support.max() / support.sum()) / int((support > 0).sum())


def finished(work_dir: Path) -> dict:
    """The completed run's results, after checking that it learned more than the majority class."""
    results = json.loads((only_run_dir(work_dir) / "results.json").read_text())
    assert results["status"] == "completed"
    test = results["test"]
    baseline = majority_class_miou(test["confusion_matrix"])
    assert test["mIoU"] > baseline + 0.03, f"test mIoU {test['mIoU']:.3f} vs majority class {baseline:.3f}"
    return results


@pytest.mark.parametrize("encoder", list(TINY_ENCODERS))
def test_encoder_family_learns_from_scratch_then_frozen_from_its_release_file(encoder: str, synthetic_root: Path, tmp_path: Path) -> None:
    random_args = tiny_overrides(synthetic_root, tmp_path / "random", encoder=encoder) + [
        *LEARN, f"encoder.encoder_weights={tmp_path / 'absent.pth'}",
    ]
    run_benchmark(random_args)
    assert finished(tmp_path / "random")["config"]["encoder_weights"] is None

    # what the random run learned, written in the family's release layout, then read back frozen
    base = tiny_overrides(synthetic_root, tmp_path / "frozen", encoder=encoder) + LEARN
    path = tmp_path / "pretrained_models" / FAMILY_FILES[encoder]
    weights = release_weights(base, encoder, path, trained_run=only_run_dir(tmp_path / "random"))
    run_benchmark(base + ["mode=frozen", f"encoder.encoder_weights={weights}"])
    frozen = finished(tmp_path / "frozen")
    assert frozen["config"]["encoder"] == encoder and frozen["config"]["mode"] == "frozen"
    assert frozen["cost"]["trainable_params"] == frozen["cost"]["total_params"] - frozen["cost"]["encoder_params"]


@pytest.fixture(scope="module")
def pretrained_mae(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SSL4EO MAE encoder trained from scratch on the synthetic data, in its release layout."""
    work_dir = tmp_path_factory.mktemp("pretraining")
    args = tiny_overrides(synthetic_root, work_dir) + LEARN
    run_benchmark(args)
    return release_weights(args, "ssl4eo_mae_optical", work_dir / "mae.pth", trained_run=only_run_dir(work_dir))


@pytest.mark.acceptance  # 5 x 40 s: kept out of the default suite, run by .ci/run with -m acceptance
@pytest.mark.parametrize("decoder", list(TINY_DECODERS))
def test_decoder_learns_frozen_and_unfrozen_under_torchrun(decoder: str, synthetic_root: Path, tmp_path: Path, pretrained_mae: Path) -> None:
    base = tiny_overrides(synthetic_root, tmp_path / "frozen", decoder=decoder) + LEARN
    run_benchmark(base + ["mode=frozen", f"encoder.encoder_weights={pretrained_mae}"])
    frozen = finished(tmp_path / "frozen")
    assert frozen["config"]["decoder"] == decoder
    assert frozen["cost"]["trainable_params"] == frozen["cost"]["total_params"] - frozen["cost"]["encoder_params"]

    unfrozen_args = tiny_overrides(synthetic_root, tmp_path / "unfrozen", decoder=decoder) + [
        *LEARN, "mode=unfrozen", f"encoder.encoder_weights={pretrained_mae}",
    ]
    run_benchmark(unfrozen_args, nproc=2)
    unfrozen = finished(tmp_path / "unfrozen")
    assert unfrozen["config"]["mode"] == "unfrozen" and unfrozen["config"]["world_size"] == 2
    assert unfrozen["cost"]["trainable_params"] > frozen["cost"]["trainable_params"]


def test_resize_input_layer_feeds_whole_tiles_to_the_encoder(synthetic_root: Path, tmp_path: Path, pretrained_mae: Path) -> None:
    """seg_resize_input_layer: the encoder is built at the tile size (64 px -> 4x4 grid at patch 16)
    and its release position table (2x2 grid at 32 px) is interpolated when loaded."""
    base = tiny_overrides(synthetic_root, tmp_path / "wd") + LEARN
    weights = pretrained_mae
    # the command line would win over the preprocessing's input size: leave it to the preprocessing
    run_args = [a for a in base if not a.startswith("encoder.input_size=")]
    args = run_args + ["mode=frozen", f"encoder.encoder_weights={weights}", "preprocessing=seg_resize_input_layer"]
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[a for a in args if not a.startswith("work_dir")])
    assert cfg.encoder.input_size == cfg.dataset.img_size == 64
    assert all(step["_target_"].endswith(("NormalizeMeanStd", "BandAdapter", "RandomCrop", "RandomFlip")) for step in cfg.preprocessing.train)
    result = run_benchmark(args)
    assert "interpolating pos_embed from a 2x2 to a 4x4 token grid" in result.stdout
    finished(tmp_path / "wd")
