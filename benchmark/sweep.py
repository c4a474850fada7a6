"""Sweeps: ``python -m benchmark.sweep [nproc_per_node=N] [isolate=true] key=a,b ...``, or several sweeps
one after another with ``--jobs FILE`` (one line of overrides per sweep).

Hydra expands the sweep exactly as ``benchmark/run.py -m`` does (comma lists on the command line and
an experiment's ``hydra.sweeper.params``). Jobs of one process (``nproc_per_node=1``) run in the
sweep's own process, one after another: imports and start-up are paid once, and every job still gets
its own run folder, seeds, logs, checkpoints and ``results.json`` (:func:`run_in_process`). Jobs of
several processes are queued and run one after another in one ``torchrun --standalone
--nproc_per_node=N`` launch (:mod:`benchmark.torchrun_jobs`). With ``isolate=true`` each job runs in fresh
processes as ``torchrun --standalone --nproc_per_node=N benchmark/run.py <job overrides> resume=true``
(plain ``python`` when N=1), as do jobs of several processes under other launchers or sweepers.
Frozen-encoder jobs of one process that differ only in the decoder are queued and, once every sweep of
the process is expanded, trained together as lockstep heads on one encoder pass
(:mod:`benchmark.lockstep`; ``lockstep=false`` runs them one by one). Jobs run one after another with Hydra's basic launcher, side by side with
``hydra/launcher=local_parallel`` and as Slurm jobs with ``hydra/launcher=slurm``. A job whose run
already completed is skipped without starting anything, so running the same sweep again finishes
what is missing (interrupted runs continue from their last checkpoint). A job that fails is recorded
as failed in its run folder and the sweep goes on; the sweep exits non-zero at the end.
"""

from __future__ import annotations

import copy
import gc
import logging
import math
import subprocess
import sys
from pathlib import Path

import hydra
import torch
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from omegaconf import DictConfig, open_dict

from benchmark import CONFIG_DIR, lockstep, torchrun_jobs
from benchmark.config_checks import config_problems
from benchmark.models.segmentor import resolve_mode
from benchmark.pipeline import hydra_choices, train
from benchmark.results import completed_results
from benchmark.rundir import SWEEP_DRIVER_KEYS, find_resumable, run_stem, setting_overrides
from hydra_plugins.geofm_bench.job_file_sweeper import read_job_file

log = logging.getLogger("benchmark.sweep")  # also when run as __main__

RUN_PY = Path(__file__).resolve().with_name("run.py")
FAILED: list[str] = []  # the overrides of the jobs of this sweep that failed, in order
MODE_FLAGS = ("-m", "--multirun", "-r", "--run", "-c", "--cfg", "-i", "--info", "-h", "--help", "--hydra-help")


class JobFailedError(RuntimeError):
    """A job of the sweep has no completed run to score."""


def override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def run_overrides(task_overrides: list[str]) -> list[str]:
    """The job's overrides for ``run.py``: driver keys dropped, ``resume=true`` unless given."""
    overrides = [o for o in task_overrides if override_key(o) not in SWEEP_DRIVER_KEYS]
    if not any(override_key(o) == "resume" for o in overrides):
        overrides.append("resume=true")
    return overrides


def job_command(overrides: list[str], nproc: int) -> list[str]:
    """``torchrun`` for several processes, plain ``python`` for one."""
    if nproc > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    else:
        launcher = [sys.executable]
    return [*launcher, str(RUN_PY), *overrides]


def completed_run(cfg: DictConfig) -> Path | None:
    """The folder of this job's completed run, if any (the one ``resume=true`` would find).

    A malformed ``results.json`` there stops the job with ``ResultsError`` naming the file.
    """
    if cfg.run_dir:
        folder: Path | None = Path(cfg.run_dir)
    else:
        stem = run_stem(hydra_choices(), resolve_mode(cfg.mode, cfg.finetune), int(cfg.seed), setting_overrides())
        folder = find_resumable(Path(cfg.work_dir), stem)
    return folder if folder is not None and completed_results(folder) is not None else None


def validation_score(cfg: DictConfig, run_dir: Path | None) -> float:
    """The run's best validation metric (``task.trainer.best_metric_key``): what a tuning sweeper maximises."""
    result = completed_results(run_dir) if run_dir is not None else None
    if result is None or result.val is None:
        raise JobFailedError(f"no completed run of job {' '.join(setting_overrides())} found under {cfg.work_dir}")
    return float(result.val[cfg.task.trainer.best_metric_key])


def job_route(cfg: DictConfig) -> str:
    """How the sweep runs a job: ``lockstep`` (queued for lockstep heads in this process), ``launch`` (queued
    for one torchrun launch of the sweep's multi-process jobs), ``fresh`` (in processes of its own, now) or
    ``here`` (in this process, now)."""
    nproc = int(cfg.nproc_per_node)
    may_wait = lockstep.jobs_may_wait() and not cfg.isolate
    if may_wait and nproc == 1 and lockstep.may_share_encoder(cfg):
        return "lockstep"
    if may_wait and nproc > 1:
        return "launch"
    return "fresh" if cfg.isolate or nproc > 1 else "here"


ROUTES = {  # how a dry run says it
    "lockstep": "as a lockstep head, with the jobs that differ only in the decoder",
    "launch": "in one torchrun launch with the sweep's other jobs of as many processes",
    "fresh": "in processes of its own",
    "here": "in the sweep's process",
}


@hydra.main(config_path=CONFIG_DIR, config_name="sweep", version_base="1.3")
def run_job(cfg: DictConfig) -> float:
    """One job of the sweep: skip it if it completed, else run it or queue it (:func:`job_route`). Returns its
    :func:`validation_score` (the objective of ``hydra/sweeper=tune``; the basic sweeper ignores it), NaN
    for a job that failed or waits in a queue."""
    log_to_console()  # again here: parallel and Slurm launchers run jobs in other processes
    overrides = run_overrides(list(HydraConfig.get().overrides.task))
    name = " ".join(overrides)
    done = completed_run(cfg) if "resume=true" in overrides or cfg.resume else None
    route = job_route(cfg)
    if cfg.dry_run:
        log.info("job %s: %s", name, f"completed in {done}" if done is not None else f"to run {ROUTES[route]}")
        return math.nan
    if done is not None:
        log.info("skip %s: completed in %s", name, done)
        return validation_score(cfg, done)
    if route == "lockstep":
        log.info("queue %s: jobs that differ only in the decoder train as lockstep heads", name)
        lockstep.defer(job_config(cfg), name)
        return math.nan
    if route == "launch":
        log.info("queue %s: jobs of %d processes run in one torchrun launch", name, cfg.nproc_per_node)
        torchrun_jobs.defer(int(cfg.nproc_per_node), job_config(cfg), name, lockstep.may_share_encoder(cfg))
        return math.nan
    if route == "fresh":
        command = job_command(overrides, int(cfg.nproc_per_node))
        log.info("run %s", " ".join(command))
        failed = subprocess.run(command).returncode != 0
    else:
        log.info("run %s (in this process)", name)
        failed = not run_in_process(job_config(cfg))
    if failed:
        FAILED.append(name)
        log.error("job %s failed: its run folder holds the error; the sweep goes on", name)
        return math.nan
    return validation_score(cfg, completed_run(cfg))


def without_driver_keys(cfg: DictConfig) -> DictConfig:
    """A copy of composed sweep config ``cfg`` without the keys only the sweep driver knows."""
    job = copy.deepcopy(cfg)
    with open_dict(job):
        for key in SWEEP_DRIVER_KEYS:
            del job[key]
    return job


def job_problems(cfg: DictConfig) -> str | None:
    """Why the job of composed sweep config ``cfg`` would stop at its start-up checks (one line per problem),
    or None. The sweeper asks it of every job before the first one runs."""
    return "\n      ".join(config_problems(without_driver_keys(cfg))) or None


def job_config(cfg: DictConfig) -> DictConfig:
    """The job's config as ``benchmark/run.py`` gets it: driver keys dropped, ``resume=true`` unless given."""
    job = without_driver_keys(cfg)
    if not any(override_key(o) == "resume" for o in HydraConfig.get().overrides.task):
        job.resume = True
    return job


def run_in_process(job: DictConfig) -> bool:
    """Run one job (:func:`job_config`) as ``benchmark/run.py`` would, in this process; False when it failed.

    The job starts from the same state as in a fresh process: :func:`benchmark.pipeline.train` seeds
    every generator from the job's seed, and what the previous job built is released first.
    """
    try:
        train(copy.deepcopy(job))
        return True
    except Exception:  # recorded in the run folder by train(); the traceback goes to the sweep's log
        log.exception("job failed")
        return False
    finally:
        root = logging.getLogger()  # the job's train.log ends with the job
        for handler in [h for h in root.handlers if isinstance(h, logging.FileHandler)]:
            root.removeHandler(handler)
            handler.close()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def log_to_console() -> None:
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s] %(message)s", stream=sys.stdout)


def sweep(args: list[str]) -> None:
    """Run one Hydra multirun over ``args`` in this process (``-m`` implied)."""
    sys.argv = [sys.argv[0], *(args if any(arg in MODE_FLAGS for arg in args) else ["--multirun", *args])]
    GlobalHydra.instance().clear()  # a process may run several sweeps one after another
    run_job()


def main() -> None:
    """Console entry point: ``python -m benchmark.sweep [overrides]`` (always a multirun), or ``python -m
    benchmark.sweep --jobs FILE [overrides]``: each line of FILE a sweep of its own (its overrides after the
    shared ones), all in one sweep, e.g. decoders that each need their own settings
    (``hydra_plugins/geofm_bench/job_file_sweeper.py``)."""
    log_to_console()
    args = sys.argv[1:]
    if args[:1] == ["--jobs"] and len(args) > 1:
        try:  # read here too, before Hydra starts: a missing file is reported without a traceback
            read_job_file(Path(args[1]))
        except HydraException as error:
            raise SystemExit(str(error)) from None
        if any(arg.startswith("hydra/sweeper=") for arg in args):
            raise SystemExit("--jobs runs with the sweep's own sweeper (configs/hydra/sweeper/job_file.yaml): "
                             "drop hydra/sweeper=..., or run each line as a sweep of its own")
        sweep([*args[2:], f"hydra.sweeper.job_file={Path(args[1]).resolve()}"])
    else:
        sweep(args)
    # The queued jobs, once every job of the sweep (of every line of a job file) was composed and checked:
    # jobs of different lines share a lockstep group or a torchrun launch too.
    FAILED.extend(lockstep.run_deferred(lambda job: run_in_process(job.cfg)))
    FAILED.extend(torchrun_jobs.run_queued())
    if FAILED:
        log.error("%d job(s) failed: %s", len(FAILED), "; ".join(FAILED))
        sys.exit(1)


if __name__ == "__main__":
    main()
