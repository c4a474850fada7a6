"""The jobs of a sweep that need several processes each (``nproc_per_node=N``), run one after another in one
``torchrun`` launch of N processes: process start-up, imports and the process group are paid once per sweep,
not once per job.

``python -m benchmark.sweep`` queues them (:func:`defer`) while it expands the sweep, then
:func:`run_queued` launches ``torchrun --standalone --nproc_per_node=N -m benchmark.torchrun_jobs QUEUE``.
Every process of the launch runs every job of the queue in order (:func:`main`), each as
``benchmark/run.py`` runs it under ``torchrun``: its own run folder, seeds, logs, checkpoints,
``results.json`` and resume. A job that fails ends the launch, since another process may be waiting for the
failed one in a collective: its run folder records the error (as in a launch of its own), and the jobs after
it run in a new launch.
"""

from __future__ import annotations

import copy
import json
import logging
import subprocess
import sys
import tempfile
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from benchmark.atomic import write_json
from benchmark.distributed import init_distributed, process_group_kept
from benchmark.lockstep import Job
from benchmark.rundir import setup_logging

log = logging.getLogger("benchmark.sweep")

QUEUED: dict[tuple[int, str], list[Job]] = {}  # (processes per job, device): the jobs, in sweep order
STARTED = "started.txt"  # beside the queue: the jobs the launch has begun, one name per line (rank 0)


def defer(nproc: int, job_cfg: DictConfig, name: str) -> None:
    """Queue a job (its config as ``benchmark/run.py`` gets it) for a launch of ``nproc`` processes."""
    key = (nproc, str(job_cfg.device))
    QUEUED.setdefault(key, []).append(Job(job_cfg, copy.deepcopy(HydraConfig.instance().cfg), name))


def run_queued() -> list[str]:
    """Run the queued jobs, one launch per number of processes (and device); the names of those that failed."""
    failed: list[str] = []
    for (nproc, _), jobs in QUEUED.items():
        failed += run_in_one_launch(jobs, nproc)
    QUEUED.clear()
    return failed


def launch_command(queue: Path, nproc: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", __name__, str(queue)]


def run_in_one_launch(jobs: list[Job], nproc: int) -> list[str]:
    """Run ``jobs`` in one launch of ``nproc`` processes, and the jobs after a failed one in a new launch."""
    failed: list[str] = []
    with tempfile.TemporaryDirectory(prefix="geofm-torchrun-jobs-") as folder:
        queue, started = Path(folder) / "queue.json", Path(folder) / STARTED
        while jobs:
            write_json(queue, [{"name": job.name, "config": OmegaConf.to_yaml(job.cfg),
                                "hydra": OmegaConf.to_yaml(job.hydra)} for job in jobs])
            started.unlink(missing_ok=True)
            command = launch_command(queue, nproc)
            log.info("run %d job(s) in one launch: %s", len(jobs), " ".join(command))
            if subprocess.run(command).returncode == 0:
                break
            begun = len(started.read_text().splitlines()) if started.is_file() else 0
            if begun == 0:  # not even the first job began (no process group?): nothing to go on with
                log.error("the launch failed before its first job: %d job(s) not run", len(jobs))
                failed += [job.name for job in jobs]
                break
            failed.append(jobs[begun - 1].name)
            log.error("job %s failed: its run folder holds the error; the jobs after it run in a new launch",
                      jobs[begun - 1].name)
            jobs = jobs[begun:]
    return failed


def main() -> None:
    """Every process of the launch: run the jobs of the queue ``sys.argv[1]`` in order; exit 1 at the first
    that fails (on any process)."""
    from benchmark.sweep import run_in_process  # the sweep imports this module

    queue = Path(sys.argv[1])
    jobs = [Job(OmegaConf.create(e["config"]), OmegaConf.create(e["hydra"]), e["name"]) for e in json.loads(queue.read_text())]
    ctx = init_distributed(str(jobs[0].cfg.device))
    setup_logging(ctx, None)  # rank 0 logs; the others only errors
    with process_group_kept():
        for job in jobs:
            if ctx.is_main:
                with open(queue.with_name(STARTED), "a") as handle:
                    handle.write(job.name + "\n")
            log.info("run %s (job of this launch, %d processes)", job.name, ctx.world_size)
            with job.composed():
                if not run_in_process(job.cfg):
                    sys.exit(1)


if __name__ == "__main__":
    main()
