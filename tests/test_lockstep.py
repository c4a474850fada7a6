"""Lockstep heads: in ``python -m benchmark.sweep``, frozen-encoder jobs that differ only in the decoder
train together on one encoder pass, and each gives the results of its job run alone; a group with a
failing job falls back to running its jobs one by one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import tiny_overrides
from test_pipeline import tiny_weights_file
from test_sweep_shared import sweep

pytestmark = pytest.mark.slow


def runs(work_dir: Path) -> dict[tuple, Path]:
    """``{(decoder, seed): run folder}`` of the runs in ``work_dir``."""
    found = {}
    for path in work_dir.glob("*/config.yaml"):
        config = OmegaConf.load(path)
        found[(config.choices.decoder, config.seed)] = path.parent
    return found


def epochs(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("cache", ["false", "true"])
def test_heads_in_lockstep_give_the_results_of_their_jobs_run_alone(synthetic_root: Path, tmp_path: Path, cache: str) -> None:
    weights = tiny_weights_file(tmp_path / "mae.pth")
    # UPerNet draws dropout masks: only its own random state gives it the masks of its run alone
    jobs = ["mode=frozen", f"encoder.encoder_weights={weights}", "decoder=seg_fcn,seg_upernet,seg_segformer",
            "task.trainer.n_epochs=3", "task.trainer.eval_interval=2", f"cache={cache}"]
    alone = sweep([*tiny_overrides(synthetic_root, tmp_path / "alone"), *jobs, "lockstep=false"])
    together = sweep([*tiny_overrides(synthetic_root, tmp_path / "together"), *jobs])
    assert alone.returncode == 0 and together.returncode == 0, together.stdout[-3000:] + together.stderr[-3000:]
    assert together.stdout.count("3 jobs in lockstep") == 1 and "jobs in lockstep" not in alone.stdout
    apart, joint = runs(tmp_path / "alone"), runs(tmp_path / "together")
    assert len(apart) == 3 and apart.keys() == joint.keys()
    for job, folder in apart.items():
        mine, theirs = json.loads((folder / "results.json").read_text()), json.loads((joint[job] / "results.json").read_text())
        assert theirs["status"] == mine["status"] == "completed"
        assert theirs["config"]["settings_hash"] == mine["config"]["settings_hash"], "lockstep is not a setting"
        # the same computation from the same seeds and random states, in the same process: the same numbers
        assert theirs["val"] == mine["val"] and theirs["test"] == mine["test"] and theirs["best_epoch"] == mine["best_epoch"], job
        assert [e["train_loss"] for e in epochs(joint[job])] == [e["train_loss"] for e in epochs(folder)], job
        best, best_alone = (torch.load(f / "checkpoints" / "best.pt", weights_only=True) for f in (joint[job], folder))
        for key, tensor in best_alone["model"]["decoder"].items():
            assert torch.equal(best["model"]["decoder"][key], tensor), (job, key)
        log = (joint[job] / "train.log").read_text()  # each head logs its own epochs, once each
        assert log.count("Run folder ") == 1 and log.count("train loss") == 3 and log.count("Test (best epoch") == 1


def test_a_failing_head_sends_its_group_back_to_jobs_one_by_one(synthetic_root: Path, tmp_path: Path) -> None:
    weights = tiny_weights_file(tmp_path / "mae.pth")
    # UPerNet's pooling BatchNorm cannot train on one sample: its job stops once its decoder is built, FCN's completes
    args = [*tiny_overrides(synthetic_root, tmp_path / "wd"), "mode=frozen", f"encoder.encoder_weights={weights}",
            "decoder=seg_fcn,seg_upernet", "batch_size=1", "task.trainer.n_epochs=1"]
    first = sweep(args)
    assert first.returncode == 1 and "lockstep group failed" in first.stdout
    assert "1 job(s) failed" in first.stdout and "decoder=seg_upernet" in first.stdout.split("1 job(s) failed")[1]
    found = {job: json.loads((folder / "results.json").read_text()) for job, folder in runs(tmp_path / "wd").items()}
    assert {job: r["status"] for job, r in found.items()} == {("seg_fcn", 0): "completed", ("seg_upernet", 0): "failed"}
    assert "raise batch_size" in found[("seg_upernet", 0)]["error"]
    again = sweep(args)
    assert again.returncode == 1 and again.stdout.count("skip ") == 1


def test_interrupted_heads_resume_together_and_end_as_uninterrupted(synthetic_root: Path, tmp_path: Path) -> None:
    weights = tiny_weights_file(tmp_path / "mae.pth")
    args = [*tiny_overrides(synthetic_root, tmp_path / "wd"), "mode=frozen", f"encoder.encoder_weights={weights}",
            "decoder=seg_fcn,seg_upernet", "task.trainer.n_epochs=3", "task.trainer.ckpt_interval=1"]
    assert sweep(args).returncode == 0
    folders = runs(tmp_path / "wd")
    straight = {job: json.loads((folder / "results.json").read_text()) for job, folder in folders.items()}
    for folder in folders.values():  # as if killed after epoch 1: its checkpoint is the last one written
        (folder / "results.json").unlink()
        (folder / "checkpoints" / "epoch_1.pt").replace(folder / "checkpoints" / "last.pt")
    again = sweep(args)
    assert again.returncode == 0 and "2 jobs in lockstep on one encoder pass, resumed after epoch 1" in again.stdout
    for job, folder in folders.items():
        resumed = json.loads((folder / "results.json").read_text())
        assert resumed["val"] == straight[job]["val"] and resumed["test"] == straight[job]["test"], job
        assert [e["epoch"] for e in epochs(folder)] == [1, 2, 3], "epochs after the checkpoint were logged once"


@pytest.mark.acceptance  # two torchrun launches: with the acceptance runs
def test_heads_in_lockstep_in_a_torchrun_launch_give_the_results_of_their_jobs_run_alone(synthetic_root: Path, tmp_path: Path) -> None:
    weights = tiny_weights_file(tmp_path / "mae.pth")
    jobs = ["mode=frozen", f"encoder.encoder_weights={weights}", "decoder=seg_fcn,seg_upernet", "task.trainer.n_epochs=2",
            "nproc_per_node=2"]
    alone = sweep([*tiny_overrides(synthetic_root, tmp_path / "alone"), *jobs, "lockstep=false"])
    together = sweep([*tiny_overrides(synthetic_root, tmp_path / "together"), *jobs])
    assert alone.returncode == 0 and together.returncode == 0, together.stdout[-3000:] + together.stderr[-3000:]
    assert together.stdout.count("2 jobs in lockstep") == 1 and "jobs in lockstep" not in alone.stdout
    assert together.stdout.count("-m benchmark.torchrun_jobs") == alone.stdout.count("-m benchmark.torchrun_jobs") == 1
    apart, joint = runs(tmp_path / "alone"), runs(tmp_path / "together")
    assert len(apart) == 2 and apart.keys() == joint.keys()
    for job, folder in apart.items():
        mine, theirs = json.loads((folder / "results.json").read_text()), json.loads((joint[job] / "results.json").read_text())
        assert theirs["status"] == mine["status"] == "completed" and theirs["config"]["world_size"] == 2
        # the same computation on the same two processes, from the same seeds and random states: the same numbers
        assert theirs["val"] == mine["val"] and theirs["test"] == mine["test"], job
        assert [e["train_loss"] for e in epochs(joint[job])] == [e["train_loss"] for e in epochs(folder)], job
        log = (joint[job] / "train.log").read_text()  # written once (rank 0), its own epochs only
        assert log.count("Run folder ") == 1 and log.count("train loss") == 2


@pytest.mark.acceptance  # two torchrun launches: with the acceptance runs
def test_a_failing_group_in_a_torchrun_launch_runs_its_jobs_alone_in_a_new_launch(synthetic_root: Path, tmp_path: Path) -> None:
    weights = tiny_weights_file(tmp_path / "mae.pth")
    # UPerNet's pooling BatchNorm cannot train on one sample per process: its job stops once its decoder is built
    args = [*tiny_overrides(synthetic_root, tmp_path / "wd"), "mode=frozen", f"encoder.encoder_weights={weights}",
            "decoder=seg_fcn,seg_upernet", "batch_size=1", "task.trainer.n_epochs=1", "nproc_per_node=2"]
    first = sweep(args)
    assert first.returncode == 1 and "a lockstep group failed: its jobs run one by one" in first.stdout
    assert "run 2 job(s) in one launch" in first.stdout and first.stdout.count("-m benchmark.torchrun_jobs") == 2
    assert "1 job(s) failed" in first.stdout and "decoder=seg_upernet" in first.stdout.split("1 job(s) failed")[1]
    found = {job: json.loads((folder / "results.json").read_text()) for job, folder in runs(tmp_path / "wd").items()}
    assert {job: r["status"] for job, r in found.items()} == {("seg_fcn", 0): "completed", ("seg_upernet", 0): "failed"}
