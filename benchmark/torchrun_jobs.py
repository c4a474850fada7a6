"""The jobs of a sweep that need several processes each (``nproc_per_node=N``), run one after another in one
``torchrun`` launch of N processes: process start-up, imports and the process group are paid once per sweep,
not once per job.

``python -m benchmark.sweep`` queues them (:func:`defer`) while it expands the sweep, then
:func:`run_queued` launches ``torchrun --standalone --nproc_per_node=N -m benchmark.torchrun_jobs QUEUE``.
Every process of the launch runs every job of the queue in order (:func:`main`), each as
``benchmark/run.py`` runs it under ``torchrun``: its own run folder, seeds, logs, checkpoints,
``results.json`` and resume. Frozen-encoder jobs that differ only in the decoder train together as lockstep
heads (:mod:`benchmark.lockstep`). A job (or group) that fails ends the launch, since another process may
be waiting for the failed one in a collective: a failed job's run folder records the error (as in a
launch of its own), a failed group's jobs run alone in the next launch, and the jobs after them too.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from benchmark.atomic import write_json
from benchmark.distributed import init_distributed, process_group_kept
from benchmark.lockstep import Job, composed_job, group_key, run_group
from benchmark.rundir import setup_logging

log = logging.getLogger("benchmark.sweep")

QUEUED: dict[tuple[int, str], list[Queued]] = {}  # (processes per job, device): the jobs, in sweep order
STARTED = "started.txt"  # beside the queue: per line, the queue positions of a job or group the launch began


@dataclass
class Queued:
    job: Job
    shares_encoder: bool  # may train as a lockstep head (lockstep.may_share_encoder)


def defer(nproc: int, job_cfg: DictConfig, name: str, shares_encoder: bool) -> None:
    """Queue a job (its config as ``benchmark/run.py`` gets it) for a launch of ``nproc`` processes."""
    QUEUED.setdefault((nproc, str(job_cfg.device)), []).append(Queued(composed_job(job_cfg, name), shares_encoder))


def run_queued() -> list[str]:
    """Run the queued jobs, one launch per number of processes (and device); the names of those that failed."""
    failed: list[str] = []
    for (nproc, _), queued in QUEUED.items():
        failed += run_in_one_launch(queued, nproc)
    QUEUED.clear()
    return failed


def launch_command(queue: Path, nproc: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", __name__, str(queue)]


def run_in_one_launch(queued: list[Queued], nproc: int) -> list[str]:
    """Run ``queued`` in one launch of ``nproc`` processes, and what follows a failure in a new launch."""
    failed: list[str] = []
    with tempfile.TemporaryDirectory(prefix="geofm-torchrun-jobs-") as folder:
        queue, started = Path(folder) / "queue.json", Path(folder) / STARTED
        while queued:
            write_json(queue, [{"name": q.job.name, "config": OmegaConf.to_yaml(q.job.cfg), "hydra": OmegaConf.to_yaml(q.job.hydra),
                                "shares_encoder": q.shares_encoder} for q in queued])
            started.unlink(missing_ok=True)
            command = launch_command(queue, nproc)
            log.info("run %d job(s) in one launch: %s", len(queued), " ".join(command))
            if subprocess.run(command).returncode == 0:
                break
            begun = [[int(i) for i in line.split()] for line in started.read_text().splitlines()] if started.is_file() else []
            if not begun:  # not even the first job began (no process group?): nothing to go on with
                log.error("the launch failed before its first job: %d job(s) not run", len(queued))
                failed += [q.job.name for q in queued]
                break
            done = {i for unit in begun for i in unit}
            rest = [q for i, q in enumerate(queued) if i not in done]
            if len(begun[-1]) == 1:
                failed.append(queued[begun[-1][0]].job.name)
                log.error("job %s failed: its run folder holds the error; the jobs not begun run in a new launch",
                          failed[-1])
            else:  # which job of the group failed shows when they run alone (finished epochs are resumed)
                log.error("a lockstep group failed: its jobs run one by one in a new launch")
                rest = [Queued(queued[i].job, shares_encoder=False) for i in begun[-1]] + rest
            queued = rest
    return failed


def units(queued: list[Queued]) -> list[list[int]]:
    """Queue positions, grouped: jobs that may train as lockstep heads of one group together (at the place of
    the first), every other job alone."""
    groups: dict[str, list[int]] = {}
    for index, entry in enumerate(queued):
        groups.setdefault(group_key(entry.job) if entry.shares_encoder else str(index), []).append(index)
    return sorted(groups.values())


def main() -> None:
    """Every process of the launch: run the jobs of the queue ``sys.argv[1]`` in order (lockstep groups at the
    place of their first job); exit 1 at the first job or group that fails (on any process)."""
    from benchmark.sweep import run_in_process  # the sweep imports this module

    queue = Path(sys.argv[1])
    queued = [Queued(Job(OmegaConf.create(e["config"]), OmegaConf.create(e["hydra"]), e["name"]), e["shares_encoder"])
              for e in json.loads(queue.read_text())]
    ctx = init_distributed(str(queued[0].job.cfg.device))
    setup_logging(ctx, None)  # rank 0 logs; the others only errors
    with process_group_kept():
        for unit in units(queued):
            if ctx.is_main:
                with open(queue.with_name(STARTED), "a") as handle:
                    handle.write(" ".join(map(str, unit)) + "\n")
            alone = [queued[i].job for i in unit]
            if len(unit) > 1:
                alone = run_group(alone, fall_back=False)
            for job in alone:
                log.info("run %s (job of this launch, %d processes)", job.name, ctx.world_size)
                with job.composed():
                    if not run_in_process(job.cfg):
                        sys.exit(1)


if __name__ == "__main__":
    main()
