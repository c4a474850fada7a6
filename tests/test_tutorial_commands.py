"""The commands of the HLS Burn Scars tutorial written for the PANGAEA fork run unchanged.

Each command is the tutorial's own, run with ``torchrun`` from a working folder that holds
``pretrained_models/`` (full-size encoders saved in their release layouts by :func:`release_weights`)
plus two added overrides: one epoch instead of 16 and a small HLS-like data folder. The encoders
stay frozen, as in the tutorial. The tutorial's slip of passing the DOFA file to ``croma_optical``
must stop with a message that names the file's layout, before anything is trained.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from benchmark.data.synthetic import generate_burn_scars
from conftest import REPO
from release_layouts import build_encoder, write_release_file

pytestmark = [pytest.mark.slow, pytest.mark.tutorial]

TUTORIAL = {  # torchrun benchmark/run.py --config-name=train key=value ...
    "work_dir": "checkpoints", "dataset": "hlsburnscars", "encoder": "dofa", "decoder": "seg_fcn",
    "preprocessing": "seg_default", "criterion": "cross_entropy", "task": "segmentation", "task.trainer.n_epochs": "16",
    "task.trainer.use_wandb": "true", "task.trainer.log_interval": "1", "task.trainer.ckpt_interval": "16",
    "encoder.encoder_weights": "pretrained_models/DOFA_ViT_base_e100.pth",
}
PRITHVI = {"encoder": "prithvi", "encoder.encoder_weights": "pretrained_models/Prithvi_EO_V1_100M.pt"}
RELEASE_FILES = {  # encoder config -> (file, Prithvi layout)
    "dofa": ("DOFA_ViT_base_e100.pth", "prefixed"),
    "prithvi": ("Prithvi_EO_V1_100M.pt", "flat"),
    "croma_optical": ("CROMA_large.pt", "prefixed"),
}


def stem(command: dict[str, str]) -> str:
    """The job part of the run folder name (a hash of the other settings may follow)."""
    return f"{command['dataset']}_{command['encoder']}_{command['decoder']}_frozen_s0"


def release_weights(encoder: str, folder: Path) -> Path:
    """A full-size ``encoder`` built as the tutorial composes it, saved in its release layout."""
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["dataset=hlsburnscars", f"encoder={encoder}"])
    file, layout = RELEASE_FILES[encoder]
    torch.manual_seed(0)
    return write_release_file(encoder, build_encoder(cfg.encoder), folder / file, layout)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tutorial's working folder: ``pretrained_models/`` and an HLS-like data folder ``hls/``.

    9 training scenes leave 8 for training after the 90/10 split: one batch of the default size 8.
    The runs share ``checkpoints/`` (work_dir), so each frozen encoder's feature cache is built once.
    """
    folder = tmp_path_factory.mktemp("tutorial")
    generate_burn_scars(folder / "hls", num_train=9, num_test=1, img_size=64, seed=0)
    for encoder in RELEASE_FILES:
        release_weights(encoder, folder / "pretrained_models")
    yield folder
    shutil.rmtree(folder / "pretrained_models")  # 2 GB of weights


def torchrun(command: dict[str, str], workspace: Path) -> tuple[subprocess.CompletedProcess, Path | None]:
    """``torchrun benchmark/run.py --config-name=train <command>`` in the workspace, with one epoch and
    the test data added: the process and the run folder it made."""
    before = set((workspace / "checkpoints").glob("2*"))
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "2"}
    env.pop("HYDRA_FULL_ERROR", None)  # what a user sees by default
    command = [
        str(Path(sys.executable).with_name("torchrun")), str(REPO / "benchmark" / "run.py"), "--config-name=train",
        *(f"{key}={value}" for key, value in command.items()), "task.trainer.n_epochs=1", "dataset.root_path=hls",
    ]
    result = subprocess.run(command, cwd=workspace, env=env, capture_output=True, text=True, timeout=600)
    made = set((workspace / "checkpoints").glob("2*")) - before
    assert len(made) <= 1, made
    return result, made.pop() if made else None


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"decoder": "seg_linear"},
        {"decoder": "seg_muster"},
        {"decoder": "seg_upernet"},
        {"decoder": "seg_segformer", "preprocessing": "seg_resize_input_layer"},
        PRITHVI,
        {"encoder": "croma_optical", "encoder.encoder_weights": "pretrained_models/CROMA_large.pt"},
    ],
    ids=["dofa-fcn", "dofa-linear", "dofa-muster", "dofa-upernet", "dofa-segformer-resize", "prithvi-fcn", "croma-fcn"],
)
def test_tutorial_command_trains_and_tests(changes: dict[str, str], workspace: Path) -> None:
    command = TUTORIAL | changes
    result, folder = torchrun(command, workspace)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert folder is not None and f"_{stem(command)}" in folder.name
    results = json.loads((folder / "results.json").read_text())
    assert results["status"] == "completed"
    config = results["config"]
    assert config["mode"] == "frozen" and config["encoder_weights"] == command["encoder.encoder_weights"]
    assert config["preprocessing"] == command["preprocessing"] and config["n_epochs"] == 1
    assert 0.0 <= results["test"]["mIoU"] <= 1.0 and 0 < results["test"]["pixels"] <= 64 * 64
    assert results["cost"]["trainable_params"] == results["cost"]["total_params"] - results["cost"]["encoder_params"]
    assert "loaded" in (folder / "train.log").read_text(), "the release file was read"
    assert (folder / "wandb").is_dir(), "wandb logged offline"
    for checkpoint in folder.glob("checkpoints/*.pt"):  # 350 MB each: a full frozen encoder
        checkpoint.unlink()


def test_dofa_file_given_to_croma_stops_with_a_clear_message(workspace: Path) -> None:
    command = TUTORIAL | {"encoder": "croma_optical"}  # the tutorial's command, DOFA file included
    result, folder = torchrun(command, workspace)
    assert result.returncode != 0
    terminal = result.stdout + result.stderr
    assert "looks like a DOFA" in terminal and "pretrained_models/DOFA_ViT_base_e100.pth" in terminal, terminal[-3000:]
    assert folder is not None and f"_{stem(command)}" in folder.name
    results = json.loads((folder / "results.json").read_text())
    assert results["status"] == "failed" and "DOFA" in results["error"]
    assert not (folder / "metrics.jsonl").exists(), "nothing was trained"
