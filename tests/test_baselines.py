"""The from-scratch baselines: PANGAEA's U-Net (encoder=unet + decoder=seg_unet) and a ViT-B/16 from random
init (encoder=vit_scratch). Their sizes, their shapes, that they learn end to end, and that asking for a
mode other than random stops at start-up with the fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from benchmark import builders
from benchmark.config_checks import config_problems
from benchmark.distributed import DistContext
from benchmark.models.decoders.unet import UNetDecoder
from benchmark.models.encoders.unet import UNetEncoder
from conftest import REPO, TINY_DECODERS, TINY_VIT, run_benchmark, tiny_overrides
from test_model_runs import LEARN, finished

CPU = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
HLS_BANDS = {"optical": ["B2", "B3", "B4", "B8A", "B11", "B12"]}
# Narrow widths, all four levels: the U-Net's every part, a run in seconds (64 px tiles: 4 px deepest map).
TINY_UNET = ["encoder.topology=[8,16,32,32]"]
TINY_BASELINES = {"unet": TINY_UNET, "vit_scratch": TINY_VIT}
BASELINE_MESSAGE = "encoder=unet has no pretrained weights: it is a from-scratch baseline; run it with mode=random"


def composed(overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        return compose("train", overrides=["dataset=hlsburnscars", *overrides])


def double_conv_params(c_in: int, c_out: int) -> int:
    """Two 3x3 convs with bias, each followed by BatchNorm (weight and bias)."""
    return 9 * c_in * c_out + c_out + 2 * c_out + 9 * c_out * c_out + c_out + 2 * c_out


def pangaea_unet_params(bands: int, classes: int, topology: list[int]) -> tuple[int, int]:
    """(encoder, decoder) parameters of PANGAEA's UNet (pangaea/encoders/unet_encoder.py: stem DoubleConv,
    then MaxPool + DoubleConv per level to the next width, the last keeping its width; pangaea/decoders/
    unet.py: per level ConvTranspose2d(c, c, 2) + DoubleConv(2c, next narrower width), 1x1 OutConv)."""
    widths = topology + topology[-1:]  # PANGAEA's down path; its decoder's ``up_topo`` is the same list
    encoder = double_conv_params(bands, widths[0])
    encoder += sum(double_conv_params(widths[i], widths[i + 1]) for i in range(len(topology)))
    decoder = classes * widths[0] + classes
    for level in range(len(topology)):
        c = widths[level]
        decoder += 4 * c * c + c + double_conv_params(2 * c, widths[max(level - 1, 0)])
    return encoder, decoder


def test_unet_full_size_matches_pangaea_parameter_count() -> None:
    """Build only: topology 64-128-256-512, 6 HLS bands, 2 classes."""
    model = builders.build_segmentor(composed(["encoder=unet", "decoder=seg_unet", "mode=random"]), "random", CPU)
    counts = model.parameter_counts()
    assert pangaea_unet_params(6, 2, [64, 128, 256, 512]) == (9_412_608, 5_378_114)
    assert counts["encoder_params"] == 9_412_608
    assert counts["total_params"] - counts["encoder_params"] == 5_378_114
    assert counts["total_params"] == counts["trainable_params"] == 14_790_722
    assert model.encoder.input_size == 512 and model.encoder.patch_size == 16  # PANGAEA: input_size = tile side


def test_vit_scratch_is_a_vit_b16_on_the_dataset_bands() -> None:
    """Build only. Patch embedding 6*16*16*768 + 768, cls token 768, fixed sin-cos table 197*768 (a
    parameter without gradient), 12 blocks of 7,087,872 (2 LayerNorms, qkv, proj, 2 MLP layers)."""
    model = builders.build_segmentor(composed(["encoder=vit_scratch", "mode=random"]), "random", CPU)
    encoder = model.encoder
    assert encoder.input_bands == HLS_BANDS and encoder.output_dims == [768] * 4
    assert model.parameter_counts()["encoder_params"] == 1_180_416 + 768 + 151_296 + 12 * 7_087_872 == 86_386_944


@pytest.mark.parametrize("side", [64, 50])
def test_unet_maps_halve_and_the_decoder_returns_the_input_size(side: int) -> None:
    """Finest first, each level half the one before; odd sides (50 -> 25 -> 12) are padded back."""
    encoder = UNetEncoder(HLS_BANDS, input_size=side, topology=[4, 8, 16, 16])
    decoder = UNetDecoder(encoder.output_dims, num_classes=3)
    features = encoder({"optical": torch.randn(2, 6, 1, side, side)})
    sides = [side]
    for _ in range(4):
        sides.append(sides[-1] // 2)
    assert [tuple(f.shape) for f in features] == [(2, c, s, s) for c, s in zip([4, 8, 16, 16, 16], sides)]
    assert decoder(features, (side, side)).shape == (2, 3, side, side)


def test_unet_refuses_a_patch_size_that_is_not_its_downsampling() -> None:
    with pytest.raises(ValueError, match="patch_size=8 must be 2 \\*\\* len\\(topology\\) = 16"):
        UNetEncoder(HLS_BANDS, input_size=64, patch_size=8)


@pytest.mark.parametrize("decoder", list(TINY_DECODERS))
def test_vit_scratch_works_with_every_decoder(decoder: str) -> None:
    cfg = composed(["encoder=vit_scratch", *TINY_VIT, f"decoder={decoder}", *TINY_DECODERS[decoder], "mode=random"])
    assert config_problems(cfg, check_work_dir=False) == []
    model = builders.build_segmentor(cfg, "random", CPU).eval()
    with torch.no_grad():
        assert model({"optical": torch.randn(2, 6, 1, 32, 32)}, (32, 32)).shape == (2, 2, 32, 32)


@pytest.mark.parametrize(
    "overrides, asked",
    [([], "mode=frozen, the default"), (["mode=unfrozen"], "mode=unfrozen"), (["finetune=true"], "finetune=true, i.e. mode=unfrozen")],
)
@pytest.mark.parametrize("encoder", ["unet", "vit_scratch"])
def test_scratch_baselines_refuse_every_mode_but_random(encoder: str, overrides: list[str], asked: str) -> None:
    problems = config_problems(composed([f"encoder={encoder}", *overrides]), check_work_dir=False)
    assert problems == [
        f"encoder {'UNetEncoder' if encoder == 'unet' else 'SSL4EOMAE'} has no pretrained weights: it is a "
        f"from-scratch baseline; run it with mode=random (got {asked})"
    ]
    assert config_problems(composed([f"encoder={encoder}", "mode=random", "finetune=true"]), check_work_dir=False) == []


def test_seg_unet_refuses_an_encoder_without_a_pyramid() -> None:
    problems = config_problems(composed(["encoder=vit_scratch", "decoder=seg_unet", "mode=random"]), check_work_dir=False)
    assert len(problems) == 1 and "needs an encoder whose maps halve in size" in problems[0]


def baseline_overrides(data_root: Path, work_dir: Path, encoder: str, decoder: str) -> list[str]:
    """tiny_overrides with a tiny scratch baseline in place of its encoder and decoder."""
    common = [a for a in tiny_overrides(data_root, work_dir) if not a.startswith(("encoder", "decoder"))]
    return [*common, f"encoder={encoder}", *TINY_BASELINES[encoder], f"decoder={decoder}", *TINY_DECODERS.get(decoder, [])]


@pytest.mark.slow
@pytest.mark.parametrize("encoder, decoder", [("unet", "seg_unet"), ("vit_scratch", "seg_upernet")])
def test_baseline_learns_end_to_end(encoder: str, decoder: str, synthetic_root: Path, tmp_path: Path) -> None:
    run_benchmark(baseline_overrides(synthetic_root, tmp_path, encoder, decoder) + LEARN)
    results = finished(tmp_path)  # test mIoU above the majority class's + 0.03
    assert results["config"]["mode"] == "random" and results["config"]["encoder_weights"] is None
    assert results["cost"]["trainable_params"] > 0.99 * results["cost"]["total_params"]


@pytest.mark.slow
def test_frozen_unet_stops_before_a_run_folder_naming_the_fix(synthetic_root: Path, tmp_path: Path) -> None:
    args = [a for a in baseline_overrides(synthetic_root, tmp_path, "unet", "seg_unet") if a != "mode=random"]
    result = run_benchmark(args, check=False)  # frozen: the default mode
    assert result.returncode != 0
    assert f"{BASELINE_MESSAGE} (got mode=frozen, the default)" in result.stderr
    assert not any(tmp_path.iterdir()), "nothing but the checked work_dir is created"
