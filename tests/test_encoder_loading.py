"""Release-checkpoint loading for the pipeline encoder (SSL4EO MAE optical): strict, never silently random."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from benchmark.models.encoders import weights
from benchmark.models.encoders.weights import CheckpointLayoutError, WeightsNotFoundError
from conftest import REPO
from release_layouts import build_encoder, write_release_file

TINY = {"embed_dim": 32, "depth": 4, "num_heads": 2, "output_layers": [0, 1, 2, 3], "input_size": 32}


def build(pretrained: bool, **overrides):
    cfg = OmegaConf.merge(OmegaConf.load(REPO / "configs/encoder/ssl4eo_mae_optical.yaml"), TINY, overrides)
    return build_encoder(cfg, pretrained)


def test_release_layout_round_trip_gives_identical_weights_and_outputs(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = build(pretrained=False)
    with torch.no_grad():
        source.cls_token.normal_()
    path = write_release_file("ssl4eo_mae_optical", source, tmp_path / "B13_vits16_mae_0099_ckpt.pth")
    loaded = build(pretrained=True, encoder_weights=str(path))
    for (name, a), (_, b) in zip(source.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    x = {"optical": torch.randn(2, 13, 1, 32, 32)}
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(source(x), loaded(x)))


def test_missing_weights_offline_names_file_url_and_command(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/B13_vits16_mae_0099_ckpt.pth"
    target = tmp_path / "pretrained_models" / "B13_vits16_mae_0099_ckpt.pth"
    with pytest.raises(WeightsNotFoundError) as info:
        build(pretrained=True, encoder_weights=str(target), download_url=url)
    message = str(info.value)
    assert str(target) in message and url in message
    assert "scripts/download_weights.py" in message and "mode=random" in message
    assert not target.exists()


def test_random_mode_needs_no_weights_file(tmp_path: Path) -> None:
    model = build(pretrained=False, encoder_weights=str(tmp_path / "nothing.pth"))
    assert [o.shape for o in model({"optical": torch.randn(1, 13, 1, 32, 32)})] == [(1, 32, 2, 2)] * 4


def test_wrong_layout_is_named(tmp_path: Path) -> None:
    source = build(pretrained=False)
    flat = tmp_path / "flat.pth"
    torch.save({"patch_embed.weight_generator.weight_tokens": torch.zeros(128, 128)}, flat)
    with pytest.raises(CheckpointLayoutError) as info:
        build(pretrained=True, encoder_weights=str(flat))
    assert "top-level key 'model'" in str(info.value) and "DOFA" in str(info.value)

    missing = tmp_path / "missing.pth"
    write_release_file("ssl4eo_mae_optical", source, missing)
    state = torch.load(missing)
    del state["model"]["blocks.1.attn.qkv.bias"]
    torch.save(state, missing)
    with pytest.raises(CheckpointLayoutError) as info:
        build(pretrained=True, encoder_weights=str(missing))
    assert "missing keys (1): blocks.1.attn.qkv.bias" in str(info.value)

    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(missing.read_bytes()[:2000])
    with pytest.raises(CheckpointLayoutError) as info:
        build(pretrained=True, encoder_weights=str(truncated))
    assert "truncated or corrupted" in str(info.value)


def test_a_release_file_is_read_once_per_process_until_it_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The jobs of a sweep in one process read the encoder's file once; adapting its keys leaves the kept copy whole."""
    path = tmp_path / "release.pt"
    torch.save({"model": {"a": torch.ones(2), "b": torch.zeros(3)}}, path)
    reads = []
    real_load = weights.safe_torch_load
    monkeypatch.setattr(weights, "safe_torch_load", lambda *a, **k: reads.append(1) or real_load(*a, **k))
    first = weights.read_checkpoint(path)
    first["model"].pop("a")  # as a layout renaming keys would
    second = weights.read_checkpoint(path)
    assert len(reads) == 1 and set(second["model"]) == {"a", "b"}
    torch.save({"model": {"a": torch.full((2,), 5.0)}}, path)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000))
    assert weights.read_checkpoint(path)["model"]["a"].tolist() == [5.0, 5.0] and len(reads) == 2
