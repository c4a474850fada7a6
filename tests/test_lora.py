"""mode=lora: adapters injected into the frozen encoder, trained with the decoder, saved and resumed alone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from benchmark import builders
from benchmark.distributed import DistContext
from benchmark.models.lora import LoraSettings, add_lora, adapter_state_dict, load_adapter_state_dict
from conftest import REPO, TINY_ENCODERS, run_benchmark, tiny_overrides
from test_pipeline import tiny_weights_file

CPU = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def compose_run(overrides: list[str]) -> OmegaConf:
    with initialize_config_dir(str(REPO / "configs"), version_base="1.3"):
        return compose("train", overrides=overrides)


def tiny_encoder(name: str) -> torch.nn.Module:
    cfg = compose_run(["dataset=synthetic_burnscars", f"encoder={name}", *TINY_ENCODERS[name]])
    return builders.instantiate_plain(builders.architecture_config(cfg.encoder), _convert_="all")


@pytest.mark.parametrize("name, attention_layers", [("ssl4eo_mae_optical", 2), ("dofa", 2), ("croma_optical", 2)])
def test_adapters_go_on_the_attention_projections_and_start_as_the_identity(name: str, attention_layers: int) -> None:
    encoder = tiny_encoder(name).eval()
    image = {"optical": torch.randn(2, len(encoder.input_bands["optical"]), 1, 32, 32)}
    before = [f.clone() for f in encoder(image)]
    adapted = add_lora(encoder, encoder.lora_targets, LoraSettings(rank=4))
    assert adapted == attention_layers * 4  # 4 blocks; a fused qkv is one layer
    trainable = {n for n, p in encoder.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert all(torch.equal(a, b) for a, b in zip(before, encoder(image)))  # B starts at zero


def test_mlp_adapters_are_an_option() -> None:
    encoder = tiny_encoder("ssl4eo_mae_optical")
    assert add_lora(encoder, encoder.lora_targets, LoraSettings(rank=2, mlp=True)) == 4 * 4


def test_training_changes_only_adapters_and_decoder_and_the_base_stays_bit_identical(tmp_path: Path) -> None:
    weights = tiny_weights_file(tmp_path / "mae.pth")
    cfg = compose_run(tiny_overrides(tmp_path / "d", tmp_path / "w") + ["mode=lora", f"encoder.encoder_weights={weights}", "lora.rank=4"])
    model = builders.build_segmentor(cfg, "lora", CPU)
    base = {k: v.clone() for k, v in model.encoder.state_dict().items() if "lora_" not in k}
    adapters = {k: v.clone() for k, v in adapter_state_dict(model.encoder).items()}
    decoder = {k: v.clone() for k, v in model.decoder.state_dict().items()}
    optimizer = builders.build_optimizer(cfg, model)
    model.train()
    for _ in range(3):
        image = {"optical": torch.randn(2, len(model.encoder.input_bands["optical"]), 1, 32, 32)}
        loss = torch.nn.functional.cross_entropy(model(image, (32, 32)), torch.randint(0, 2, (2, 32, 32)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = model.encoder.state_dict()
    assert all(torch.equal(after[k], v) for k, v in base.items())
    assert any(not torch.equal(after[k], v) for k, v in adapters.items() if "lora_B" in k)
    assert any(not torch.equal(model.decoder.state_dict()[k], v) for k, v in decoder.items())
    state = model.trainable_state_dict()
    assert set(state) == {"decoder", "encoder_adapters"} and set(state["encoder_adapters"]) == set(adapters)


def test_adapters_of_another_rank_are_refused() -> None:
    encoder = tiny_encoder("ssl4eo_mae_optical")
    add_lora(encoder, encoder.lora_targets, LoraSettings(rank=4))
    other = tiny_encoder("ssl4eo_mae_optical")
    add_lora(other, other.lora_targets, LoraSettings(rank=4, mlp=True))
    with pytest.raises(ValueError, match="LoRA adapters do not fit"):
        load_adapter_state_dict(encoder, adapter_state_dict(other))


@pytest.mark.acceptance  # two runs and a kill (30 s): run by .ci/run with -m acceptance
def test_lora_run_resumed_after_a_kill_ends_as_the_uninterrupted_one(synthetic_root: Path, tmp_path: Path) -> None:
    weights = tiny_weights_file(tmp_path / "mae.pth")
    args = tiny_overrides(synthetic_root, tmp_path / "wd") + ["mode=lora", f"encoder.encoder_weights={weights}", "task.trainer.n_epochs=3"]
    run_benchmark(args + [f"run_dir={tmp_path / 'straight'}"])
    checkpoint = torch.load(tmp_path / "straight" / "checkpoints" / "best.pt", weights_only=True)
    assert set(checkpoint["model"]) == {"decoder", "encoder_adapters"}  # no base encoder weights saved
    killed = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    process = subprocess.Popen([sys.executable, "benchmark/run.py", *args, f"run_dir={killed}"], cwd=REPO, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (killed / "checkpoints" / "last.pt").exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "results.json").exists()
    run_benchmark(args + [f"run_dir={killed}", "resume=true"])
    a, b = (json.loads((folder / "results.json").read_text()) for folder in (tmp_path / "straight", killed))
    assert a["test"]["confusion_matrix"] == b["test"]["confusion_matrix"] and a["val"] == b["val"]
