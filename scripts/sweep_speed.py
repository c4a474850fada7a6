"""Wall time of a whole sweep: every job in its own process vs all jobs in one process, one by one or as
lockstep heads.

    python scripts/benchmark_speed.py --sweep --decoders seg_linear "seg_fcn decoder.channels=16" ... \\
        --seeds 0 1 --random-weights -- mode=frozen dataset=synthetic_burnscars ...

The same jobs (decoders x seeds) run twice, in fresh work_dirs: ``separate``, one ``benchmark/run.py``
process per job, as sweeps ran before ``benchmark.sweep`` shared its process (and as
``isolate=true`` still runs them); ``shared``, one ``python -m benchmark.sweep --jobs FILE lockstep=false``
process for all of them (a line per decoder, its seeds as a comma list), jobs one by one; ``lockstep``,
the same process with the frozen-encoder jobs of each seed trained together on one encoder pass. Per job, ``train`` is the training
epochs (``cost.train_time_s`` of its results.json) and ``fixed`` everything else of the variant's
wall time divided among its jobs: start-up, imports, data and model building, validation, test,
writing. The table also says whether every job's test metrics came out the same in both variants.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from benchmark.results import RunResult, read_results

REPO = Path(__file__).resolve().parents[1]


def job_file(decoders: Sequence[list[str]], seeds: Sequence[str], path: Path) -> Path:
    """One sweep line per decoder (its overrides, its seeds as a comma list)."""
    seed = [f"seed={','.join(seeds)}"] if seeds else []
    path.write_text("".join(" ".join([*decoder, *seed]) + "\n" for decoder in decoders))
    return path


def run_shared(overrides: Sequence[str], decoders: Sequence[list[str]], seeds: Sequence[str], work_dir: Path,
               lockstep: bool) -> float:
    """All jobs in one ``python -m benchmark.sweep`` process; its wall time in seconds."""
    work_dir.mkdir(parents=True, exist_ok=True)
    jobs = job_file(decoders, seeds, work_dir.with_name(work_dir.name + "_jobs.txt"))
    command = [sys.executable, "-m", "benchmark.sweep", "--jobs", str(jobs), *overrides, f"work_dir={work_dir}",
               f"lockstep={str(lockstep).lower()}"]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, env={**os.environ, "HYDRA_FULL_ERROR": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stdout[-4000:]}")
    return time.perf_counter() - started


def runs_of(work_dir: Path) -> dict[tuple, RunResult]:
    """``{(decoder, seed, settings hash): results}`` of the completed runs in ``work_dir``."""
    runs = {}
    for path in work_dir.glob("*/results.json"):
        result = read_results(path)
        if result.status == "completed":
            runs[(result.config.decoder, result.config.seed, result.config.settings_hash)] = result
    return runs


def row(variant: str, wall: float, runs: dict[tuple, RunResult]) -> dict[str, Any]:
    per_job = wall / len(runs)
    train = statistics.fmean(r.cost.train_time_s for r in runs.values())
    return {"variant": variant, "jobs": len(runs), "wall_s": wall, "per_job_s": per_job, "train_s": train,
            "fixed_s": per_job - train, "fixed_share": (per_job - train) / per_job}


def compare(overrides: Sequence[str], decoders: Sequence[list[str]], seeds: Sequence[str], root: Path, repeat: int,
            run_separately: Any) -> str:
    """Run both variants ``repeat`` times (alternating) and return the markdown table of their medians.
    ``run_separately(overrides, work_dir)`` runs one job in its own process and returns its wall time."""
    jobs = [[*decoder, *([f"seed={s}"] if s else [])] for decoder in decoders for s in seeds or [None]]
    tables, same = [], True
    for number in range(repeat):
        dirs = [root / f"repeat{number}_{name}" for name in ("separate", "shared", "lockstep")]
        walls = [sum(run_separately([*overrides, *job], dirs[0]) for job in jobs),
                 run_shared(overrides, decoders, seeds, dirs[1], lockstep=False),
                 run_shared(overrides, decoders, seeds, dirs[2], lockstep=True)]
        found = [runs_of(folder) for folder in dirs]
        if any(f.keys() != found[0].keys() for f in found) or len(found[0]) != len(jobs):
            raise SystemExit(f"expected the same {len(jobs)} completed jobs in {', '.join(map(str, dirs))}")
        same &= all(f[key].test == found[0][key].test for f in found[1:] for key in found[0])
        names = ("separate processes", "one shared process", "lockstep heads")
        tables.append([row(name, wall, runs) for name, wall, runs in zip(names, walls, found)])
        print(f"repeat {number + 1}: " + ", ".join(f"{n} {w:.1f} s" for n, w in zip(names, walls)), flush=True)
    medians = [{key: (statistics.median(t[i][key] for t in tables) if key not in ("variant", "jobs") else tables[0][i][key])
                for key in tables[0][i]} for i in range(3)]
    lines = ["| variant | jobs | sweep wall (s) | per job (s) | training per job (s) | fixed per job (s) | fixed share | "
             "speed-up |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in medians:
        lines.append(f"| {r['variant']} | {r['jobs']} | {r['wall_s']:.1f} | {r['per_job_s']:.2f} | {r['train_s']:.2f} | "
                     f"{r['fixed_s']:.2f} | {100 * r['fixed_share']:.0f} % | {medians[0]['wall_s'] / r['wall_s']:.2f}x |")
    lines.append(f"\nsame test metrics in every job of all variants: {'yes' if same else 'NO'}")
    return "\n".join(lines)
