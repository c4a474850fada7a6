"""``python -m benchmark.sweep`` running the jobs of one process in its own process: the same results as
jobs in fresh processes (``isolate=true``), a failing job recorded as failed while the others complete,
and a second run of the sweep skipping what completed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import REPO, tiny_overrides

pytestmark = pytest.mark.slow


def sweep(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1", "WANDB_MODE": "offline"}
    return subprocess.run([sys.executable, "-m", "benchmark.sweep", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)


def results(work_dir: Path) -> dict[tuple, dict]:
    """``{(decoder, seed, batch size): results.json}`` of the run folders in ``work_dir`` (the job read from
    config.yaml, which failed runs have too)."""
    found = {}
    for path in work_dir.glob("*/results.json"):
        config = OmegaConf.load(path.with_name("config.yaml"))
        found[(config.choices.decoder, config.seed, config.batch_size)] = json.loads(path.read_text())
    return found


def test_jobs_in_the_sweep_s_process_give_the_results_of_jobs_in_fresh_processes(synthetic_root: Path, tmp_path: Path) -> None:
    jobs = ["decoder=seg_fcn,seg_upernet", "seed=1", "task.trainer.n_epochs=2"]
    isolated = sweep([*tiny_overrides(synthetic_root, tmp_path / "isolated"), *jobs, "isolate=true"])
    shared = sweep([*tiny_overrides(synthetic_root, tmp_path / "shared"), *jobs])
    assert isolated.returncode == 0 and shared.returncode == 0, shared.stdout[-3000:] + shared.stderr[-3000:]
    assert shared.stdout.count("(in this process)") == 2 and "(in this process)" not in isolated.stdout
    apart, together = results(tmp_path / "isolated"), results(tmp_path / "shared")
    assert len(apart) == 2 and apart.keys() == together.keys()
    for job, result in apart.items():
        other = together[job]
        assert other["status"] == result["status"] == "completed"
        # the same computation from the same seeds, in the same kind of process: the same numbers
        assert other["test"] == result["test"] and other["val"] == result["val"], job
        assert other["config"]["settings_hash"] == result["config"]["settings_hash"], "isolate is not a setting"
    folders = {p.name for p in (tmp_path / "shared").iterdir() if (p / "train.log").is_file()}
    for name in folders:  # each job logs to its own folder, and only its own
        log = (tmp_path / "shared" / name / "train.log").read_text()
        assert log.count("Run folder ") == 1 and name in log


def test_a_failing_job_is_recorded_and_the_others_complete_and_a_rerun_skips_them(synthetic_root: Path, tmp_path: Path) -> None:
    args = [*tiny_overrides(synthetic_root, tmp_path / "wd"), "decoder=seg_fcn", "batch_size=64,4", "seed=0,1",
            "task.trainer.n_epochs=1"]
    first = sweep(args)
    assert first.returncode == 1
    assert "2 job(s) failed" in first.stdout and "batch_size=64" in first.stdout.split("2 job(s) failed")[1]
    runs = results(tmp_path / "wd")
    assert {job: r["status"] for job, r in runs.items()} == {
        ("seg_fcn", 0, 64): "failed", ("seg_fcn", 1, 64): "failed",
        ("seg_fcn", 0, 4): "completed", ("seg_fcn", 1, 4): "completed",
    }
    assert "fewer than one batch" in runs[("seg_fcn", 0, 64)]["error"]
    again = sweep(args)
    assert again.returncode == 1 and again.stdout.count("skip ") == 2 and again.stdout.count("(in this process)") == 2
    assert len(list((tmp_path / "wd").glob("*/results.json"))) == 4, "the failed jobs ran again in their folders"


@pytest.mark.acceptance  # three torchrun launches (test_sweep.py runs one launch in the default suite)
def test_jobs_of_two_processes_share_one_torchrun_launch_and_a_failing_one_starts_a_new_launch(synthetic_root: Path, tmp_path: Path) -> None:
    # batch_size=64 leaves fewer than one batch per process: that job fails at start-up, on both processes
    jobs = ["decoder=seg_fcn", "batch_size=64,4", "seed=1", "task.trainer.n_epochs=2", "nproc_per_node=2"]
    shared = sweep([*tiny_overrides(synthetic_root, tmp_path / "shared"), *jobs])
    isolated = sweep([*tiny_overrides(synthetic_root, tmp_path / "isolated"), *jobs[:1], "batch_size=4", *jobs[2:],
                      "isolate=true"])
    assert isolated.returncode == 0, isolated.stdout[-3000:] + isolated.stderr[-3000:]
    assert shared.returncode == 1 and "1 job(s) failed" in shared.stdout, shared.stdout[-3000:] + shared.stderr[-3000:]
    assert "batch_size=64" in shared.stdout.split("1 job(s) failed")[1]
    # one launch for both jobs; the failing first one ends it, and the job after it runs in a second launch
    assert shared.stdout.count("-m benchmark.torchrun_jobs") == 2
    assert "run 2 job(s) in one launch" in shared.stdout and "run 1 job(s) in one launch" in shared.stdout
    runs = results(tmp_path / "shared")
    assert {job: r["status"] for job, r in runs.items()} == {("seg_fcn", 1, 64): "failed", ("seg_fcn", 1, 4): "completed"}
    assert "fewer than one batch" in runs[("seg_fcn", 1, 64)]["error"]
    # the same computation from the same seeds, on two processes each time: the same numbers
    together, alone = runs[("seg_fcn", 1, 4)], results(tmp_path / "isolated")[("seg_fcn", 1, 4)]
    assert together["config"]["world_size"] == alone["config"]["world_size"] == 2
    assert together["test"] == alone["test"] and together["val"] == alone["val"]


@pytest.mark.acceptance  # Ray's start-up: with the acceptance runs
def test_a_sweep_on_the_ray_launcher_in_local_mode_completes_its_jobs(synthetic_root: Path, tmp_path: Path) -> None:
    ray = ["hydra/launcher=ray_cluster", "hydra.launcher.ray.init.address=null", "+hydra.launcher.ray.init.local_mode=true",
           "hydra.launcher.ray.remote.num_gpus=0"]
    done = sweep([*tiny_overrides(synthetic_root, tmp_path / "wd"), "decoder=seg_fcn", "seed=0,1", "task.trainer.n_epochs=1", *ray])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Ray Launcher is launching 2 jobs" in done.stdout + done.stderr
    assert {(job[1], r["status"]) for job, r in results(tmp_path / "wd").items()} == {(0, "completed"), (1, "completed")}
