"""Loading a file never runs code from it: release weights, run checkpoints and ``--config-name=test``.

A pickle can call anything on load. Files are unpickled tensors-only (plus an allow-list of the harmless
objects real release files carry); anything else stops with an error naming the file and the opt-in
``trusted_pickle_files``. Damaged files and files that are no checkpoint get errors naming them.
"""

from __future__ import annotations

import argparse
import fractions
import io
import os
import pathlib
import random
import shutil
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from benchmark.engine.checkpoint import load_checkpoint, restore_rng_state, rng_state, save_checkpoint
from benchmark.engine.safe_load import CheckpointReadError, UntrustedPickleError, trusted_pickle_files
from benchmark.models.encoders.weights import CheckpointLayoutError
from conftest import REPO, only_run_dir, run_benchmark, tiny_overrides
from release_layouts import build_encoder, release_checkpoint

TINY = {"embed_dim": 32, "depth": 4, "num_heads": 2, "output_layers": [0, 1, 2, 3], "input_size": 32}


class RunsShell:
    """Unpickling this object runs ``touch <marker>`` through the shell."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


class TouchesFile:
    """Unpickling this object creates ``marker`` through ``pathlib.Path.touch``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


PAYLOADS = {"os.system": RunsShell, "pathlib.Path.touch": TouchesFile}


def build(name: str = "ssl4eo_mae_optical", pretrained: bool = True, **overrides: Any) -> torch.nn.Module:
    """Build (and load) a tiny ``configs/encoder/NAME.yaml`` the way the pipeline does."""
    cfg = OmegaConf.merge(OmegaConf.load(REPO / f"configs/encoder/{name}.yaml"), TINY, overrides)
    return build_encoder(cfg, pretrained)


def release_file(path: Path, name: str = "ssl4eo_mae_optical", **extras: Any) -> tuple[Path, torch.nn.Module]:
    """A release-layout file of a tiny ``name`` encoder with ``extras`` added at the top level."""
    torch.manual_seed(0)
    source = build(name, pretrained=False)
    torch.save({**release_checkpoint(name, source), **extras}, path)
    return path, source


def assert_refused(message: str, path: Path, offending: str) -> None:
    assert str(path) in message and offending in message
    assert "trusted_pickle_files" in message


@pytest.mark.parametrize("payload", PAYLOADS)
def test_encoder_weights_that_run_code_are_refused(payload: str, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    path, _ = release_file(tmp_path / "B13_vits16_mae_0099_ckpt.pth", args=PAYLOADS[payload](marker))
    with pytest.raises(UntrustedPickleError) as info:
        build(encoder_weights=str(path))
    assert not marker.exists(), "unpickling the weights file ran its code"
    assert_refused(str(info.value), path, "posix.system" if payload == "os.system" else "getattr")


def test_run_checkpoint_that_runs_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    path = tmp_path / "best.pt"
    torch.save({"model": {"decoder": {}}, "epoch": 0, "extra": RunsShell(marker)}, path)
    with pytest.raises(UntrustedPickleError) as info:
        load_checkpoint(path)
    assert not marker.exists(), "unpickling the checkpoint ran its code"
    assert_refused(str(info.value), path, "posix.system")


def test_numpy_object_arrays_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    torch.save({"model": {}, "epoch": 0, "objects": np.array([1, "a"], dtype=object)}, path)
    with pytest.raises(UntrustedPickleError, match="ObjectDType"):
        load_checkpoint(path)


def numpy1_pickle(path: Path) -> Path:
    """Rewrite a torch.save archive as numpy 1 writes numpy objects (``numpy.core.multiarray``), as in the
    2021-2022 release files."""
    with zipfile.ZipFile(path) as source:
        entries = [(info.filename, source.read(info.filename)) for info in source.infolist()]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as target:
        for name, data in entries:
            target.writestr(name, data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    path.write_bytes(buffer.getvalue())
    return path


@pytest.mark.parametrize("name", ["ssl4eo_mae_optical", "ssl4eo_dino"])
@pytest.mark.parametrize("numpy_version", [1, 2])
def test_release_file_with_training_args_and_numpy_scalars_loads_tensors_only(
    name: str, numpy_version: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MAE/DINO-style files carry ``args`` (argparse.Namespace) and an optimizer whose learning rate and
    weight decay are numpy scalars from a numpy schedule: they load without full unpickling."""
    args = argparse.Namespace(arch="vit_small", lr=0.0005, global_crops_scale=(0.4, 1.0), mode=["s2c"], resume="")
    optimizer = {"state": {}, "param_groups": [{"lr": np.float64(1.5e-4), "weight_decay": np.float64(0.04), "params": [0]}]}
    path, source = release_file(tmp_path / "release.pth", name, args=args, optimizer=optimizer, epoch=np.int64(99))
    if numpy_version == 1:
        numpy1_pickle(path)
    calls: list[Any] = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(k.get("weights_only")) or real_load(*a, **k))
    loaded = build(name, encoder_weights=str(path))
    assert calls and all(flag is True for flag in calls), f"torch.load weights_only flags: {calls}"
    for key, value in source.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key


def test_trusted_files_are_loaded_in_full_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    marker = tmp_path / "marker"
    checkpoint = tmp_path / "last.pt"
    torch.save({"model": {}, "epoch": 3, "extra": RunsShell(marker)}, checkpoint)
    monkeypatch.chdir(tmp_path)  # trusted paths are compared after resolving them
    assert load_checkpoint(checkpoint, trusted=["last.pt"])["epoch"] == 3
    assert marker.exists(), "a trusted file is unpickled in full"
    assert "trusted_pickle_files" in caplog.text and str(checkpoint) in caplog.text

    weights, source = release_file(tmp_path / "weights.pth", args=fractions.Fraction(1, 3))
    with pytest.raises(UntrustedPickleError) as info:
        build(encoder_weights=str(weights))
    assert_refused(str(info.value), weights, "fractions.Fraction")
    with trusted_pickle_files([weights]):
        loaded = build(encoder_weights=str(weights))
    assert torch.equal(loaded.cls_token, source.cls_token)
    with pytest.raises(UntrustedPickleError):  # the trust ends with the block
        build(encoder_weights=str(weights))


def test_text_file_named_pth_is_reported_by_name(tmp_path: Path) -> None:
    path = tmp_path / "B13_vits16_mae_0099_ckpt.pth"
    path.write_text("<html><body>404 Not Found</body></html>\n")
    with pytest.raises(CheckpointLayoutError) as info:
        build(encoder_weights=str(path))
    error = info.value
    assert str(path) in str(error) and "not a PyTorch checkpoint" in str(error)
    with pytest.raises(CheckpointReadError, match="not a PyTorch checkpoint") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


def draws() -> tuple[float, float, float]:
    return random.random(), float(np.random.rand()), float(torch.rand(()))


def test_rng_state_is_tensors_and_plain_values_and_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.normal()  # a cached Gaussian is part of numpy's state
    save_checkpoint(path, {"model": {}, "epoch": 0, "rng": rng_state()})
    expected = draws()
    plain = torch.load(path, weights_only=True)  # no allow-list needed: tensors, ints, floats, tuples
    restore_rng_state(plain["rng"])
    assert draws() == expected

    # run checkpoints written before this change hold numpy's state as an array; they still load
    old = tmp_path / "old_last.pt"
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    torch.save({"model": {}, "epoch": 0, "rng": state}, old)
    expected = draws()
    restore_rng_state(load_checkpoint(old)["rng"])
    assert draws() == expected


# End to end through benchmark/run.py --------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_run(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished 1-epoch run whose checkpoints the tests below tamper with (in copies)."""
    work_dir = tmp_path_factory.mktemp("safe_loading_run")
    run_benchmark(tiny_overrides(synthetic_root, work_dir) + ["task.trainer.n_epochs=1"])
    return only_run_dir(work_dir)


def copy_run(run_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / run_dir.name
    shutil.copytree(run_dir, copy)
    return copy


def output(result: Any) -> str:
    return result.stdout + result.stderr


@pytest.mark.slow
def test_test_config_refuses_a_checkpoint_that_runs_code(trained_run: Path, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    evil = tmp_path / "evil.pt"
    torch.save({**load_checkpoint(trained_run / "checkpoints" / "best.pt"), "x": RunsShell(marker)}, evil)
    result = run_benchmark(["--config-name=test", f"ckpt_dir={trained_run}", f"ckpt={evil}"], check=False)
    assert result.returncode != 0
    assert not marker.exists(), "--config-name=test ran the checkpoint's code"
    assert_refused(output(result), evil, "posix.system")


@pytest.mark.slow
def test_test_config_loads_a_checkpoint_listed_in_trusted_pickle_files(trained_run: Path, tmp_path: Path) -> None:
    trusted = tmp_path / "trusted.pt"
    torch.save({**load_checkpoint(trained_run / "checkpoints" / "best.pt"), "note": fractions.Fraction(1, 3)}, trusted)
    args = ["--config-name=test", f"ckpt_dir={trained_run}", f"ckpt={trusted}", f"output_path={tmp_path / 'eval.json'}"]
    refused = run_benchmark(args, check=False)
    assert refused.returncode != 0 and "fractions.Fraction" in output(refused)
    result = run_benchmark(args + [f'trusted_pickle_files=["{trusted}"]'])  # the form the error message suggests
    assert (tmp_path / "eval.json").is_file()
    assert f"{trusted} is listed in trusted_pickle_files" in output(result)


@pytest.mark.slow
def test_corrupt_best_pt_at_test_is_reported_by_name(trained_run: Path, tmp_path: Path) -> None:
    run_dir = copy_run(trained_run, tmp_path)
    best = run_dir / "checkpoints" / "best.pt"
    best.write_bytes(best.read_bytes()[: best.stat().st_size // 2])  # e.g. a copy cut short
    result = run_benchmark(["--config-name=test", f"ckpt_dir={run_dir}"], check=False)
    assert result.returncode != 0
    assert f"{best} could not be read as a PyTorch checkpoint" in output(result)
    assert "truncated or corrupted" in output(result)


@pytest.mark.slow
def test_truncated_last_pt_on_resume_is_reported_by_name(synthetic_root: Path, trained_run: Path, tmp_path: Path) -> None:
    run_dir = copy_run(trained_run, tmp_path)
    (run_dir / "results.json").unlink()  # an interrupted run: resume=true continues it
    last = run_dir / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:5000])
    args = tiny_overrides(synthetic_root, tmp_path / "wd") + ["task.trainer.n_epochs=1", f"run_dir={run_dir}", "resume=true"]
    result = run_benchmark(args, check=False)
    assert result.returncode != 0
    assert f"{last} could not be read as a PyTorch checkpoint: it is truncated or corrupted" in output(result)
