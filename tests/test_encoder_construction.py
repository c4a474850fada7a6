"""Constructing an encoder only builds the module; reading its release file is a separate step.

Every encoder config builds with no weights file anywhere; only the loading step (``load_pretrained``,
which ``build_segmentor`` runs unless ``mode=random``) needs the file, and without it stops with an
error that names the file, the URL and the command that fetches it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf, open_dict

from benchmark import builders
from benchmark.distributed import DistContext
from benchmark.download import DownloadError
from benchmark.models.encoders import weights
from benchmark.models.encoders.weights import WeightsNotFoundError
from conftest import REPO
from release_layouts import build_encoder

CPU = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
# The from-scratch baselines (encoder_weights: null) have no file whose loading could be tested; their
# construction, and the start-up error for any mode but random, are tested in tests/test_baselines.py.
SCRATCH_BASELINES = ("unet", "vit_scratch")
CONFIGS = sorted(
    path.stem for path in (REPO / "configs" / "encoder").glob("*.yaml") if path.stem not in SCRATCH_BASELINES
)
ENCODER_MODULES = sorted(
    f"benchmark.models.encoders.{path.stem}"
    for path in (REPO / "benchmark" / "models" / "encoders").glob("*.py")
    if path.stem not in ("__init__", "weights")
)
# Tiny shapes with every structural part; CROMA's SAR and cross-encoder get half of ``depth``.
TINY_VIT = {"input_size": 32, "embed_dim": 32, "depth": 4, "num_heads": 2, "output_layers": [0, 1, 2, 3]}
TINY_CROMA = {**TINY_VIT, "size": "base", "depth": 8}


def encoder_config(name: str, folder: Path) -> DictConfig:
    """The run config of ``encoder=NAME`` at a tiny size, its weights file named as in the config but in
    ``folder`` (where nothing exists)."""
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=["dataset=synthetic_burnscars", f"encoder={name}"])
    with open_dict(cfg):
        cfg.encoder = OmegaConf.merge(cfg.encoder, TINY_CROMA if name.startswith("croma") else TINY_VIT)
        cfg.encoder.encoder_weights = str(folder / Path(cfg.encoder.encoder_weights).name)
    return cfg


def test_encoder_modules_do_not_import_the_download_machinery() -> None:
    """Building a model needs no network code; the loader imports the families, never the reverse."""
    code = (
        "import sys\n"
        f"for name in {ENCODER_MODULES!r}:\n"
        "    __import__(name)\n"
        "print(sorted(m for m in sys.modules if m in ('benchmark.download', 'benchmark.models.encoders.weights')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert "benchmark.models.encoders.dofa" in ENCODER_MODULES
    assert result.stdout.strip() == "[]", result.stdout


@pytest.mark.parametrize("name", CONFIGS)
def test_every_encoder_config_builds_without_its_file_and_only_loading_needs_it(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = encoder_config(name, tmp_path)
    path, url = Path(cfg.encoder.encoder_weights), cfg.encoder.download_url

    def no_file_reads(*args, **kwargs):
        raise AssertionError("an encoder constructor read a file")

    with monkeypatch.context() as patch:
        patch.setattr(torch, "load", no_file_reads)
        encoder = build_encoder(cfg.encoder)
    with torch.no_grad():
        frames = getattr(encoder, "num_frames", 1)
        image = {m: torch.randn(1, len(b), frames, 32, 32) for m, b in encoder.input_bands.items()}
        assert len(encoder(image)) == len(encoder.output_layers)
    assert not path.exists()

    def offline(url: str, destination: Path) -> Path:
        raise DownloadError(f"no network in tests: {url}")

    monkeypatch.setattr(weights, "download_file", offline)
    with pytest.raises(WeightsNotFoundError) as info:
        weights.load_pretrained(encoder, str(path), url)
    message = str(info.value)
    assert str(path) in message and url in message and "scripts/download_weights.py" in message
    # build_segmentor: random mode builds the same model with no file; frozen mode stops at the file.
    assert builders.build_segmentor(cfg, "random", CPU).encoder.output_dims == encoder.output_dims
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        builders.build_segmentor(cfg, "frozen", CPU)
    assert not path.exists()
