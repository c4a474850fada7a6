"""Sweeps end to end on tiny configs: ``benchmark/run.py -m experiment=modes`` (2 modes x 2 decoders
x 2 seeds), re-run without redoing finished jobs, the torchrun-per-job driver ``benchmark.sweep``
extending the same sweep, and the report of it. Plus the shipped experiment and launcher configs."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra import compose, initialize_config_dir
from matplotlib.image import imread
from omegaconf import OmegaConf

from benchmark.report import write_report
from benchmark.results import Cost, ResultsError, RunConfig, RunResult, completed_result, failed_result, read_results, write_results
from benchmark import lockstep
from benchmark.sweep import completed_run, job_route
from conftest import REPO, run_benchmark, tiny_overrides
from release_layouts import build_encoder, write_release_file

DECODERS = ["seg_linear", "seg_fcn", "seg_upernet", "seg_segformer", "seg_muster"]


def compose_sweep(overrides: list[str], config_name: str = "train") -> Any:
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides, return_hydra_config=True)


def results_of(work_dir: Path) -> dict[str, RunResult]:
    """``{run folder name: results.json}`` of the run folders in ``work_dir``, read through the schema."""
    return {p.parent.name: read_results(p) for p in work_dir.glob("*/results.json")}


def stamps(work_dir: Path) -> dict[str, int]:
    return {p.parent.name: p.stat().st_mtime_ns for p in work_dir.glob("*/results.json")}


@pytest.fixture(scope="module")
def sweep_args(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """experiment=modes over frozen/random x fcn/upernet x seeds 0,1 on tiny models (frozen from a
    release-layout file of the tiny encoder)."""
    folder = tmp_path_factory.mktemp("sweep")
    base = tiny_overrides(synthetic_root, folder / "work_dir")
    torch.manual_seed(0)
    encoder = build_encoder(compose_sweep(base).encoder)
    weights = write_release_file("ssl4eo_mae_optical", encoder, folder / "mae.pth")
    return ["experiment=modes", *base, f"encoder.encoder_weights={weights}", "mode=frozen,random", "decoder=seg_fcn,seg_upernet", "seed=0,1"]


@pytest.fixture(scope="module")
def work_dir(sweep_args: list[str]) -> Path:
    """The sweep run once through Hydra's basic launcher (one process, jobs one after another)."""
    run_benchmark(["-m", *sweep_args])
    return Path(next(a for a in sweep_args if a.startswith("work_dir=")).split("=", 1)[1])


@pytest.mark.slow
def test_multirun_makes_one_run_folder_per_job_and_nothing_else(work_dir: Path) -> None:
    results = results_of(work_dir)
    assert len(results) == 8 and all(r.status == "completed" for r in results.values())
    jobs = {(r.config.mode, r.config.decoder, r.config.seed) for r in results.values()}
    assert jobs == {(m, d, s) for m in ("frozen", "random") for d in ("seg_fcn", "seg_upernet") for s in (0, 1)}
    others = {p.name for p in work_dir.iterdir()} - set(results)
    assert others <= {"multirun", "cache"}, others  # cache: frozen-encoder features shared by the runs
    assert [p.name for p in (work_dir / "multirun").iterdir()] == ["multirun.yaml"], "Hydra's record of the sweep only"


@pytest.mark.slow
def test_rerunning_the_sweep_skips_finished_jobs(work_dir: Path, sweep_args: list[str]) -> None:
    before = stamps(work_dir)
    result = run_benchmark(["-m", *sweep_args])
    assert result.stdout.count("already completed") == 8
    assert stamps(work_dir) == before, "no results.json was rewritten"


@pytest.mark.slow
def test_report_of_the_sweep_has_four_groups_of_two_seeds_with_the_runs_numbers(work_dir: Path, tmp_path: Path) -> None:
    results = {r.run_dir: r for r in results_of(work_dir).values()}
    written = write_report([work_dir], tmp_path)
    markdown = (tmp_path / "leaderboard.md").read_text()
    groups = [line for line in markdown.splitlines() if line.startswith("| ssl4eo_mae_optical |")]
    assert len(groups) == 4 and all(" | 2 | " in line for line in groups), groups
    with (tmp_path / "leaderboard.csv").open(newline="") as handle:
        rows = {row["run_dir"]: row for row in csv.DictReader(handle)}
    for run_dir, run in results.items():
        row = rows[str(Path(run_dir).resolve())]
        assert float(row["test_mIoU"]) == run.test["mIoU"] and float(row["val_mIoU"]) == run.val["mIoU"]
        assert float(row["test_IoU_Burn scar"]) == run.test["IoU"]["Burn scar"]
        assert float(row["train_time_s"]) == run.cost.train_time_s and int(row["trainable_params"]) == run.cost.trainable_params
        assert row["train_crop_stride"] == "1" and row["optimizer"] == "adamw"
    for png in (p for p in written if p.suffix == ".png"):
        assert imread(png).shape[0] > 200


@pytest.mark.slow
def test_driver_runs_new_jobs_under_torchrun_and_skips_finished_ones(work_dir: Path, sweep_args: list[str]) -> None:
    """``python -m benchmark.sweep nproc_per_node=2``: seed 1 is done, seed 2 runs on two processes."""
    before = stamps(work_dir)
    args = [a for a in sweep_args if not a.startswith(("mode=", "decoder=", "seed="))]
    driver = [sys.executable, "-m", "benchmark.sweep", *args, "mode=random", "decoder=seg_fcn", "seed=1,2", "nproc_per_node=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1"}
    result = subprocess.run(driver, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.count("skip ") == 1 and "random_s1" in result.stdout.split("skip ", 1)[1].splitlines()[0]
    assert "run 1 job(s) in one launch" in result.stdout and "-m benchmark.torchrun_jobs" in result.stdout
    after = stamps(work_dir)
    assert {k: v for k, v in after.items() if k in before} == before
    new = [results_of(work_dir)[name] for name in set(after) - set(before)]
    assert len(new) == 1 and new[0].status == "completed"
    assert (new[0].config.seed, new[0].config.world_size) == (2, 2)


def test_experiments_sweep_modes_and_the_five_decoders() -> None:
    modes = compose_sweep(["experiment=modes", "encoder=dofa"])
    assert dict(modes.hydra.sweeper.params) == {"mode": "frozen,unfrozen,random,lora", "seed": "0,1,2"}
    assert modes.resume and modes.hydra.runtime.choices.encoder == "dofa"
    decoders = compose_sweep(["experiment=decoders", "dataset=synthetic_burnscars"])
    assert decoders.hydra.sweeper.params.decoder.split(",") == DECODERS and decoders.resume
    for decoder in DECODERS:  # every swept value is a decoder config
        assert compose_sweep(["experiment=decoders", f"decoder={decoder}"]).decoder._target_


def test_launcher_configs_compose() -> None:
    slurm = compose_sweep(["hydra/launcher=slurm", "nproc_per_node=4"], config_name="sweep").hydra.launcher
    assert slurm._target_.endswith("SlurmLauncher") and (slurm.tasks_per_node, slurm.gpus_per_node) == (1, 4)
    local = compose_sweep(["hydra/launcher=local_parallel"], config_name="sweep").hydra.launcher
    assert local._target_.endswith("JoblibLauncher") and local.n_jobs == 2
    ray = compose_sweep(["hydra/launcher=ray_cluster", "nproc_per_node=4"], config_name="sweep").hydra.launcher
    assert ray._target_.endswith("RayLauncher") and ray.ray.remote.num_gpus == 4 and ray.ray.init.address == "auto"
    alone = compose_sweep(["hydra/launcher=ray_cluster"], config_name="train").hydra.launcher  # benchmark/run.py -m
    assert alone.ray.remote.num_gpus == 1


def test_driver_skips_a_job_only_when_its_results_json_reads_as_completed(tmp_path: Path) -> None:
    """``benchmark.sweep.completed_run`` reads the job's results.json through the schema."""
    cfg = OmegaConf.create({"run_dir": str(tmp_path), "work_dir": str(tmp_path.parent), "mode": "frozen", "finetune": None, "seed": 0})
    assert completed_run(cfg) is None, "no results.json: run it"
    write_results(tmp_path, failed_result(tmp_path, RuntimeError("out of memory"), {}))
    assert completed_run(cfg) is None, "failed: run it again"
    config = RunConfig(dataset="synthetic_burnscars", encoder="dofa", decoder="seg_fcn", mode="frozen", seed=0, train_crop_stride=1)
    done = completed_result(tmp_path, config, best_epoch=1, val={"mIoU": 0.5}, test={"mIoU": 0.4},
                            cost=Cost(total_params=2, trainable_params=1), versions={})
    write_results(tmp_path, done)
    assert completed_run(cfg) == tmp_path
    (tmp_path / "results.json").write_text(json.dumps({**done.to_dict(), "best_epoch": "one"}))
    with pytest.raises(ResultsError, match=f"{tmp_path / 'results.json'} .*best_epoch"):
        completed_run(cfg)


def test_each_job_goes_the_route_its_settings_and_the_launcher_allow(monkeypatch: pytest.MonkeyPatch) -> None:
    frozen = {"lockstep": True, "mode": "frozen", "finetune": None, "use_wandb": False, "isolate": False, "nproc_per_node": 1}
    monkeypatch.setattr(lockstep, "jobs_may_wait", lambda: True)  # the basic sweeper and launcher
    assert job_route(OmegaConf.create(frozen)) == "lockstep"
    assert job_route(OmegaConf.create({**frozen, "lockstep": False})) == "here"
    assert job_route(OmegaConf.create({**frozen, "mode": "unfrozen"})) == "here"
    assert job_route(OmegaConf.create({**frozen, "nproc_per_node": 2})) == "launch"
    assert job_route(OmegaConf.create({**frozen, "nproc_per_node": 2, "isolate": True})) == "fresh"
    monkeypatch.setattr(lockstep, "jobs_may_wait", lambda: False)  # e.g. hydra/launcher=slurm or a tuning sweeper
    assert job_route(OmegaConf.create(frozen)) == "here"
    assert job_route(OmegaConf.create({**frozen, "nproc_per_node": 2})) == "fresh"
