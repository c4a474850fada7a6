"""End to end through benchmark/run.py: run folders, frozen/random modes, torchrun on CPU, test-time
evaluation under 1 and 2 processes, resume after SIGKILL, and failures that say what went wrong."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest
import torch
from omegaconf import OmegaConf

from benchmark.engine.checkpoint import load_checkpoint
from benchmark.engine.trainer import Trainer
from benchmark.models.segmentor import resolve_mode
from conftest import REPO, only_run_dir, run_benchmark, tiny_overrides
from release_layouts import build_encoder, write_release_file

pytestmark = pytest.mark.slow


def read_results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


@pytest.fixture(scope="module")
def trained_run(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished random-mode run reused by the evaluation tests. One tile per forward pass, so that
    evaluations on 1 and 2 processes run the very same computations (identical results on any CPU)."""
    work_dir = tmp_path_factory.mktemp("trained")
    run_benchmark(tiny_overrides(synthetic_root, work_dir) + ["test_batch_size=1"])
    return only_run_dir(work_dir)


def test_run_folder_holds_config_logs_metrics_results_and_checkpoints(trained_run: Path) -> None:
    assert "synthetic_burnscars_ssl4eo_mae_optical_seg_upernet_random_s0" in trained_run.name
    for name in ("config.yaml", "train.log", "metrics.jsonl", "results.json", "checkpoints/best.pt", "checkpoints/last.pt"):
        assert (trained_run / name).is_file(), name
    lines = [json.loads(l) for l in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert [l["epoch"] for l in lines] == [1, 2] and all("mIoU" in l for l in lines)
    results = read_results(trained_run)
    assert results["status"] == "completed"
    expected = {"dataset": "synthetic_burnscars", "mode": "random", "world_size": 1, "device": "cpu"}
    assert {k: results["config"][k] for k in expected} == expected
    test = results["test"]
    assert 0 <= test["mIoU"] <= 1 and set(test["IoU"]) == {"Not burned", "Burn scar"}
    cm = torch.tensor(test["confusion_matrix"])
    assert cm.sum() == test["pixels"] > 0
    cost = results["cost"]
    # everything trains in random mode except the fixed sin-cos position table (1 + 2x2 tokens x 32)
    assert cost["total_params"] - cost["trainable_params"] == 5 * 32 and cost["train_images_per_s"] > 0
    assert results["versions"]["torch_build"] == torch.__version__
    saved = OmegaConf.load(trained_run / "config.yaml")
    assert saved.mode == "random" and saved.choices.encoder == "ssl4eo_mae_optical"
    checkpoint = torch.load(trained_run / "checkpoints" / "last.pt", weights_only=True)
    assert set(checkpoint["model"]) == {"encoder", "decoder"}  # random mode trains the encoder


def tiny_weights_file(path: Path) -> Path:
    """A release-layout SSL4EO MAE file for the tiny encoder of tiny_overrides."""
    cfg = OmegaConf.load(REPO / "configs/encoder/ssl4eo_mae_optical.yaml")
    cfg = OmegaConf.merge(cfg, {"input_size": 32, "embed_dim": 32, "depth": 4, "num_heads": 2, "output_layers": [0, 1, 2, 3]})
    torch.manual_seed(1)
    return write_release_file("ssl4eo_mae_optical", build_encoder(cfg), path)


def test_frozen_run_trains_only_the_decoder(synthetic_root: Path, tmp_path: Path) -> None:
    weights = tiny_weights_file(tmp_path / "mae.pth")
    args = tiny_overrides(synthetic_root, tmp_path / "wd") + ["mode=frozen", f"encoder.encoder_weights={weights}", "task.trainer.n_epochs=1"]
    run_benchmark(args)
    run_dir = only_run_dir(tmp_path / "wd")
    results = read_results(run_dir)
    assert results["config"]["mode"] == "frozen" and results["config"]["encoder_weights"] == str(weights)
    cost = results["cost"]
    assert cost["trainable_params"] == cost["total_params"] - cost["encoder_params"]
    checkpoint = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    assert set(checkpoint["model"]) == {"decoder"}, "a frozen encoder is not copied into checkpoints"
    assert "loaded" in (run_dir / "train.log").read_text()


def test_finetune_alias() -> None:
    assert resolve_mode("frozen", True) == "unfrozen"
    assert resolve_mode("frozen", False) == "frozen"
    assert resolve_mode("random", None) == "random"
    with pytest.raises(ValueError, match="contradicts"):
        resolve_mode("unfrozen", False)


def evaluate(run_dir: Path, output: Path, nproc: int | None, *extra: str) -> dict:
    run_benchmark(["--config-name=test", f"ckpt_dir={run_dir}", f"output_path={output}", *extra], nproc=nproc)
    return json.loads(output.read_text())


def test_test_config_gives_identical_confusion_matrices_on_one_and_two_processes(trained_run: Path, tmp_path: Path) -> None:
    one = evaluate(trained_run, tmp_path / "one.json", None)
    two = evaluate(trained_run, tmp_path / "two.json", 2)
    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert one["metrics"]["confusion_matrix"] == two["metrics"]["confusion_matrix"]
    assert one["metrics"]["pixels"] > 0
    # the test split evaluated again equals the test metrics of the training run itself
    assert one["metrics"]["confusion_matrix"] == read_results(trained_run)["test"]["confusion_matrix"]


def test_command_line_overrides_win_over_the_saved_config(trained_run: Path, tmp_path: Path) -> None:
    saved_root = Path(OmegaConf.load(trained_run / "config.yaml").dataset.root_path)
    moved = tmp_path / "moved_data"
    shutil.copytree(saved_root, moved)
    result = evaluate(trained_run, tmp_path / "o.json", None, f"dataset.root_path={moved}", "test_batch_size=3")
    assert result["dataset_root"] == str(moved) and result["batch_size_per_process"] == 3
    bad = run_benchmark(["--config-name=test", f"ckpt_dir={trained_run}", "dataset=hlsburnscars"], check=False)
    assert bad.returncode != 0 and "would swap a whole config group" in bad.stdout + bad.stderr


def test_torchrun_two_cpu_processes_complete_a_run_with_wandb_offline(synthetic_root: Path, tmp_path: Path) -> None:
    run_benchmark(tiny_overrides(synthetic_root, tmp_path / "wd") + ["task.trainer.use_wandb=true"], nproc=2)
    run_dir = only_run_dir(tmp_path / "wd")
    results = read_results(run_dir)
    assert results["status"] == "completed" and results["config"]["world_size"] == 2
    assert (run_dir / "wandb").is_dir(), "rank 0 logged to wandb (offline)"
    folders = [p for p in tmp_path.joinpath("wd").iterdir() if p.name != "cache"]  # cache: shared by runs
    assert len(folders) == 1, "both ranks share one run folder"


def kill_when(args: list[str], run_dir: Path, ready: Callable[[], bool]) -> None:
    """Start ``benchmark/run.py ARGS run_dir=RUN_DIR`` and SIGKILL it as soon as ``ready()``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    process = subprocess.Popen(
        [sys.executable, "benchmark/run.py", *args, f"run_dir={run_dir}"],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while not ready() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (run_dir / "results.json").exists(), "the run was killed before it finished"


def logged_epochs(run_dir: Path) -> int:
    metrics = run_dir / "metrics.jsonl"
    return len(metrics.read_text().splitlines()) if metrics.exists() else 0


def test_resume_after_sigkill_ends_with_the_same_metrics(synthetic_root: Path, tmp_path: Path) -> None:
    args = tiny_overrides(synthetic_root, tmp_path / "wd") + ["task.trainer.n_epochs=4", "decoder.dropout=0.3"]
    run_benchmark(args + [f"run_dir={tmp_path / 'straight'}"])
    reference = read_results(tmp_path / "straight")

    killed = tmp_path / "killed"
    kill_when(args, killed, (killed / "checkpoints" / "last.pt").exists)
    first_epochs = logged_epochs(killed)
    assert 1 <= first_epochs < 4

    run_benchmark(args + [f"run_dir={killed}", "resume=true"])
    resumed = read_results(killed)
    assert resumed["status"] == "completed"
    assert resumed["test"]["confusion_matrix"] == reference["test"]["confusion_matrix"]
    assert resumed["val"] == reference["val"] and resumed["best_epoch"] == reference["best_epoch"]
    lines = [json.loads(l)["epoch"] for l in (killed / "metrics.jsonl").read_text().splitlines()]
    assert lines == [1, 2, 3, 4]

    stamp = (killed / "results.json").stat().st_mtime_ns
    again = run_benchmark(args + [f"run_dir={killed}", "resume=true"])
    assert "already completed" in again.stdout
    assert (killed / "results.json").stat().st_mtime_ns == stamp, "a finished run is not redone"


def test_last_pt_after_validations_and_every_resume_every_s_and_a_resume_redoes_the_epochs_after_it(
    synthetic_root: Path, tmp_path: Path
) -> None:
    args = tiny_overrides(synthetic_root, tmp_path / "wd") + [
        "task.trainer.n_epochs=4", "task.trainer.eval_interval=2", "task.trainer.resume_every_s=1000", "decoder.dropout=0.3"]
    run_benchmark(args + [f"run_dir={tmp_path / 'straight'}"])
    reference = read_results(tmp_path / "straight")
    killed = tmp_path / "killed"
    kill_when(args, killed, lambda: logged_epochs(killed) >= 3)  # epoch 3: logged, not validated, no last.pt
    assert logged_epochs(killed) == 3
    assert load_checkpoint(killed / "checkpoints" / "last.pt")["epoch"] == 1  # written after epoch 2 only
    run_benchmark(args + [f"run_dir={killed}", "resume=true"])
    resumed = read_results(killed)
    assert resumed["test"]["confusion_matrix"] == reference["test"]["confusion_matrix"] and resumed["val"] == reference["val"]
    assert [json.loads(l)["epoch"] for l in (killed / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]


def test_last_pt_is_due_after_validations_or_once_resume_every_s_passed() -> None:
    trainer = Trainer.__new__(Trainer)  # the cadence alone: no model needed
    trainer.__dict__.update(n_epochs=6, eval_interval=3, resume_every_s=60.0, last_written=time.monotonic())
    assert [trainer.resume_due(epoch) for epoch in range(6)] == [False, False, True, False, False, True]
    trainer.last_written -= 61
    assert all(trainer.resume_due(epoch) for epoch in range(6))
    trainer.resume_every_s, trainer.last_written = 0.0, time.monotonic()
    assert all(trainer.resume_due(epoch) for epoch in range(6))


def test_existing_run_dir_is_not_overwritten_without_resume(trained_run: Path, tmp_path: Path) -> None:
    result = run_benchmark(tiny_overrides(tmp_path / "d", tmp_path / "wd") + [f"run_dir={trained_run}"], check=False)
    assert result.returncode != 0 and "already holds a run; pass resume=true" in result.stdout + result.stderr


def test_non_finite_loss_stops_the_run_and_marks_it_failed(synthetic_root: Path, tmp_path: Path) -> None:
    result = run_benchmark(tiny_overrides(synthetic_root, tmp_path / "wd") + ["optimizer.lr=1e30"], check=False)
    assert result.returncode != 0
    assert "non-finite loss" in result.stdout + result.stderr
    results = read_results(only_run_dir(tmp_path / "wd"))
    assert results["status"] == "failed" and "NonFiniteLossError" in results["error"]
    assert "test" not in results


def test_frozen_run_without_weights_offline_fails_and_names_the_file(synthetic_root: Path, tmp_path: Path) -> None:
    missing = tmp_path / "pretrained_models" / "B13_vits16_mae_0099_ckpt.pth"
    args = tiny_overrides(synthetic_root, tmp_path / "wd") + ["mode=frozen", f"encoder.encoder_weights={missing}", "encoder.download_url=null"]
    result = run_benchmark(args, check=False)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert str(missing) in output and "mode=random" in output
    assert read_results(only_run_dir(tmp_path / "wd"))["status"] == "failed"


def test_resume_tells_jobs_apart_by_their_other_settings(synthetic_root: Path, tmp_path: Path) -> None:
    args = tiny_overrides(synthetic_root, tmp_path / "wd") + ["task.trainer.n_epochs=1", "resume=true"]
    run_benchmark(args)
    other_lr = run_benchmark(args + ["optimizer.lr=0.01"])
    assert "already completed" not in other_lr.stdout, "a run with another learning rate is another job"
    runs = sorted(p for p in (tmp_path / "wd").iterdir() if (p / "results.json").is_file())
    assert len(runs) == 2
    settings = [read_results(r)["config"]["settings"] for r in runs]
    assert any("optimizer.lr=0.01" in s for s in settings)
    again = run_benchmark(args + ["optimizer.lr=0.01", "num_workers=1"])
    assert "already completed" in again.stdout, "execution-only keys do not make a new job"
