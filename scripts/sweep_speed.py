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
writing. The table also says whether every job's test metrics came out the same in all variants.

``--baseline REV`` adds a first row: the same jobs as separate processes with the code of git revision
REV (the version a speed-up is claimed against; its metrics may differ where the protocol changed since).
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
            run_separately: Any, baseline: tuple[str, Any] | None = None) -> str:
    """Run the variants ``repeat`` times (alternating) and return the markdown table of their medians.
    ``run_separately(overrides, work_dir)`` runs one job in its own process and returns its wall time;
    ``baseline``: (its revision, the same for the code of that revision), timed as a first row."""
    jobs = [[*decoder, *([f"seed={s}"] if s else [])] for decoder in decoders for s in seeds or [None]]
    variants: list[tuple[str, Any]] = [
        ("separate processes", lambda folder: sum(run_separately([*overrides, *job], folder) for job in jobs)),
        ("one shared process", lambda folder: run_shared(overrides, decoders, seeds, folder, lockstep=False)),
        ("lockstep heads", lambda folder: run_shared(overrides, decoders, seeds, folder, lockstep=True))]
    if baseline:
        revision, run_at_revision = baseline
        variants.insert(0, (f"separate processes at {revision}",
                            lambda folder: sum(run_at_revision([*overrides, *job], folder) for job in jobs)))
    tables, same, same_as_baseline = [], True, True
    for number in range(repeat):
        dirs = [root / f"repeat{number}_variant{index}" for index in range(len(variants))]
        walls = [run(folder) for (_, run), folder in zip(variants, dirs)]
        found = [runs_of(folder) for folder in dirs]
        if any(f.keys() != found[-1].keys() for f in found) or len(found[-1]) != len(jobs):
            raise SystemExit(f"expected the same {len(jobs)} completed jobs in {', '.join(map(str, dirs))}")
        today = found[1:] if baseline else found
        same &= all(f[key].test == today[0][key].test for f in today[1:] for key in today[0])
        same_as_baseline &= not baseline or all(found[0][key].test == found[1][key].test for key in found[0])
        tables.append([row(name, wall, runs) for (name, _), wall, runs in zip(variants, walls, found)])
        print(f"repeat {number + 1}: " + ", ".join(f"{n} {w:.1f} s" for (n, _), w in zip(variants, walls)), flush=True)
    return table(tables, baseline is not None) + (
        f"\n\nsame test metrics in every job of today's variants: {'yes' if same else 'NO'}"
        + (f"; at {baseline[0]}: {'the same' if same_as_baseline else 'other metrics (the protocol changed since)'}"
           if baseline else ""))


def table(tables: list[list[dict[str, Any]]], with_baseline: bool) -> str:
    """Markdown table of the medians over repeats; speed-ups against today's separate processes (and the
    baseline's, when there is one)."""
    medians = [{key: (statistics.median(t[i][key] for t in tables) if key not in ("variant", "jobs") else tables[0][i][key])
                for key in tables[0][i]} for i in range(len(tables[0]))]
    today = medians[1 if with_baseline else 0]["wall_s"]
    extra = " speed-up against the baseline |" if with_baseline else ""
    lines = ["| variant | jobs | sweep wall (s) | per job (s) | training per job (s) | fixed per job (s) | fixed share | "
             "speed-up |" + extra, "|---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if with_baseline else "")]
    for r in medians:
        lines.append(f"| {r['variant']} | {r['jobs']} | {r['wall_s']:.1f} | {r['per_job_s']:.2f} | {r['train_s']:.2f} | "
                     f"{r['fixed_s']:.2f} | {100 * r['fixed_share']:.0f} % | {today / r['wall_s']:.2f}x |"
                     + (f" {medians[0]['wall_s'] / r['wall_s']:.2f}x |" if with_baseline else ""))
    return "\n".join(lines)
