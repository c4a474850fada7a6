"""Sweeps with one ``torchrun`` per job: ``python -m benchmark.sweep [nproc_per_node=N] key=a,b ...``.

Hydra expands the sweep exactly as ``benchmark/run.py -m`` does (comma lists on the command line and
an experiment's ``hydra.sweeper.params``); each job then runs in its own processes as
``torchrun --standalone --nproc_per_node=N benchmark/run.py <job overrides> resume=true`` (plain
``python`` when N=1). Jobs run one after another with Hydra's basic launcher, side by side with
``hydra/launcher=local_parallel`` and as Slurm jobs with ``hydra/launcher=slurm``. A job whose run
already completed is skipped without starting anything, so running the same sweep again finishes
what is missing (interrupted runs continue from their last checkpoint).
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from benchmark import CONFIG_DIR
from benchmark.models.segmentor import resolve_mode
from benchmark.pipeline import hydra_choices
from benchmark.results import completed_results
from benchmark.rundir import find_resumable, run_stem, setting_overrides

log = logging.getLogger("benchmark.sweep")  # also when run as __main__

RUN_PY = Path(__file__).resolve().with_name("run.py")
DRIVER_KEYS = ("nproc_per_node",)  # keys of configs/sweep.yaml that run.py does not know
MODE_FLAGS = ("-m", "--multirun", "-r", "--run", "-c", "--cfg", "-i", "--info", "-h", "--help", "--hydra-help")


class JobFailedError(RuntimeError):
    """A job of the sweep exited with an error (its run folder holds the failed results.json)."""


def override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def run_overrides(task_overrides: list[str]) -> list[str]:
    """The job's overrides for ``run.py``: driver keys dropped, ``resume=true`` unless given."""
    overrides = [o for o in task_overrides if override_key(o) not in DRIVER_KEYS]
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


@hydra.main(config_path=CONFIG_DIR, config_name="sweep", version_base="1.3")
def run_job(cfg: DictConfig) -> float:
    """One job of the sweep: skip it if it completed, else run it in fresh processes. Returns its
    :func:`validation_score` (the objective of ``hydra/sweeper=tune``; the basic sweeper ignores it)."""
    log_to_console()  # again here: parallel and Slurm launchers run jobs in other processes
    overrides = run_overrides(list(HydraConfig.get().overrides.task))
    done = completed_run(cfg) if "resume=true" in overrides or cfg.resume else None
    if done is not None:
        log.info("skip %s: completed in %s", " ".join(overrides), done)
        return validation_score(cfg, done)
    command = job_command(overrides, int(cfg.nproc_per_node))
    log.info("run %s", " ".join(command))
    returncode = subprocess.run(command).returncode
    if returncode != 0:
        raise JobFailedError(f"job {' '.join(overrides)} exited with code {returncode}")
    return validation_score(cfg, completed_run(cfg))


def log_to_console() -> None:
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s] %(message)s", stream=sys.stdout)


def main() -> None:
    """Console entry point: always a multirun (``-m`` is implied)."""
    log_to_console()
    if not any(arg in MODE_FLAGS for arg in sys.argv[1:]):
        sys.argv.insert(1, "--multirun")
    run_job()


if __name__ == "__main__":
    main()
