"""The sweeper of ``python -m benchmark.sweep`` (hydra_plugins/geofm_bench/job_file_sweeper.py): a job file's
lines expanded with their own experiment's lists, every job checked before the first runs, and each job's
config composed once."""

from __future__ import annotations

import functools
from pathlib import Path
from types import SimpleNamespace

import pytest
from hydra.errors import HydraException
from omegaconf import OmegaConf

from conftest import tiny_overrides
from hydra_plugins.geofm_bench.job_file_sweeper import ComposedOnce, JobFileSweeper, check_line, read_job_file
from test_sweep_shared import sweep


def shared_overrides(synthetic_root: Path, work_dir: Path) -> list[str]:
    return [o for o in tiny_overrides(synthetic_root, work_dir) if not o.startswith("decoder")]


def test_each_line_of_a_job_file_is_a_sweep_with_its_own_experiment_lists(synthetic_root: Path, tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.txt"
    jobs.write_text("decoder=seg_fcn seed=4,5   # a comment\n\n# a line of comment only\n"
                    "experiment=decoders decoder=seg_linear\n")
    listed = sweep(["--jobs", str(jobs), *shared_overrides(synthetic_root, tmp_path / "wd"), "dry_run=true"])
    assert listed.returncode == 0, listed.stdout[-3000:] + listed.stderr[-3000:]
    assert "Launching 5 jobs" in listed.stdout  # one batch for both lines
    to_run = [line.split("job ", 1)[1] for line in listed.stdout.splitlines() if line.endswith(": to run in the sweep's process")]
    # the command line's lists, then experiment=decoders' seeds (0,1,2) with the line's decoder
    assert [(o.split("decoder=")[1].split()[0], o.split("seed=")[1].split()[0]) for o in to_run] == [
        ("seg_fcn", "4"), ("seg_fcn", "5"), ("seg_linear", "0"), ("seg_linear", "1"), ("seg_linear", "2")]
    assert not list((tmp_path / "wd").glob("*/config.yaml")), "a dry run runs nothing"


def test_a_mistake_on_the_last_line_stops_the_sweep_before_any_job_runs(synthetic_root: Path, tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.txt"
    jobs.write_text("decoder=seg_fcn\ndecoder=seg_fcnn\n")
    failed = sweep(["--jobs", str(jobs), *shared_overrides(synthetic_root, tmp_path / "wd")])
    assert failed.returncode != 0 and "seg_fcnn" in failed.stdout + failed.stderr
    assert "Launching" not in failed.stdout and not list((tmp_path / "wd").glob("*/config.yaml"))


def test_a_job_failing_its_start_up_checks_stops_the_sweep_before_any_job_runs(synthetic_root: Path, tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.txt"
    jobs.write_text("decoder=seg_fcn seed=0,1\ndecoder=seg_linear batch_size=0\n")
    for dry_run in ([], ["dry_run=true"]):  # a dry run checks every job too
        failed = sweep(["--jobs", str(jobs), *shared_overrides(synthetic_root, tmp_path / "wd"), *dry_run])
        out = failed.stdout + failed.stderr
        assert failed.returncode != 0 and "1 job(s) of the sweep cannot run; nothing was started" in out
        assert "decoder=seg_linear:\n      batch_size=0: must be an integer >= 1" in out
        assert "Launching" not in failed.stdout
    assert not list((tmp_path / "wd").glob("*/config.yaml"))


def test_a_missing_job_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(HydraException, match=f"--jobs {tmp_path / 'jobs.txt'}: no such file"):
        read_job_file(tmp_path / "jobs.txt")


def test_hydra_options_on_a_line_of_a_job_file_are_refused() -> None:
    check_line(["decoder=seg_fcn", "seed=0,1"], "jobs.txt")
    with pytest.raises(HydraException, match="jobs.txt: hydra/launcher=local_parallel: Hydra's options apply to the whole"):
        check_line(["decoder=seg_fcn", "hydra/launcher=local_parallel"], "jobs.txt")


class CountingLoader:
    def __init__(self) -> None:
        self.calls = 0

    def load_sweep_config(self, master_config: object, sweep_overrides: list[str]) -> object:
        self.calls += 1
        return OmegaConf.create({"overrides": list(sweep_overrides), "call": self.calls})

    def get_search_path(self) -> str:
        return "search path"


def test_the_launcher_gets_the_config_the_sweeper_checked_once_then_a_new_one() -> None:
    loader = CountingLoader()
    once = ComposedOnce(loader)  # type: ignore[arg-type]
    checked = once.load_sweep_config(None, ["seed=1"])  # type: ignore[arg-type]
    assert once.load_sweep_config(None, ["seed=1"]) is checked and loader.calls == 1  # type: ignore[arg-type]
    assert once.load_sweep_config(None, ["seed=1"]).call == 2 and once.get_search_path() == "search path"  # type: ignore[arg-type]


def test_a_line_without_an_experiment_takes_the_command_lines_lists_without_a_compose() -> None:
    # The sweeper's state only (Hydra's plugin scan may have reloaded the class's base); not set up, so
    # that a compose would fail.
    sweeper = SimpleNamespace(params={"seed": "0,1"}, job_file="jobs.txt", hydra_context=None, config=None)
    line_params = functools.partial(JobFileSweeper.line_params, sweeper)
    assert line_params(["decoder=seg_fcn", "decoder.channels=16"], ["mode=frozen"]) == {"seed": "0,1"}
    assert line_params([], []) == {"seed": "0,1"}
    with pytest.raises(AssertionError):  # a line that selects an experiment is composed for its lists
        line_params(["experiment=decoders"], [])
