"""Speed of benchmark runs under several variants (cache off/on, fp32/bf16, compile off/on), compared in one invocation;
with ``--sweep``, the wall time of the whole sweep as separate processes vs one shared process (sweep_speed.py).

    python scripts/benchmark_speed.py --variants "cache=false" "cache=true" \\
        --decoders seg_linear "seg_fcn decoder.channels=64" seg_upernet --seeds 0 1 \\
        --random-weights -- mode=frozen dataset=synthetic_burnscars ...

Every variant runs the same jobs (decoders x seeds) through ``benchmark/run.py``, one process per job
as ``python -m benchmark.sweep`` runs them (``--nproc N``: each under torchrun with N processes). A
decoder may carry its own overrides (``"seg_fcn decoder.channels=64"``). Each variant starts in a
fresh work_dir, so its caches start cold and building them is part of its time. Variants take turns
job by job, so that load from other users of the machine spreads over all of them; the table shows
the median over repeats.

The wall time of a variant is the sum of the wall times of its job processes, its CPU time the
user + system time of those processes and their children (less sensitive to other load on the
machine than the wall time); the other figures come from each run's
``results.json`` (averaged over the runs of a variant): train images/s (all epochs, and the last
epoch alone: after compiling and warming up), epoch time (training only),
validation + test time, feature cache time (building or opening it) and peak memory (largest
resident set size of a run's main process on CPU, max allocated on CUDA). Speed-ups compare each
variant with the first. A second table splits wall and epoch time by decoder.

Frozen runs need the encoder's weights file; ``--random-weights`` writes one in the release layout,
with random values, where it is missing (timings do not depend on the values; SSL4EO encoders).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from benchmark import builders
from benchmark.distributed import DistContext
from benchmark.models.encoders.base import architecture_config
from benchmark.results import RunResult, read_results

REPO = Path(__file__).resolve().parents[1]
COLUMNS = {
    "variant": "variant",
    "runs": "runs",
    "wall_s": "wall (s)",
    "cpu_s": "CPU (s)",
    "epoch_s": "epoch (s)",
    "images_per_s": "train img/s",
    "last_epoch_images_per_s": "last epoch img/s",
    "eval_s": "val+test (s/run)",
    "cache_s": "feature cache (s/run)",
    "peak_mb": "peak memory (MiB)",
    "val_miou": "val mIoU",
}
SPEEDUPS = {"wall_s": "wall", "cpu_s": "CPU", "epoch_s": "epoch", "images_per_s": "img/s", "eval_s": "val+test"}
HIGHER_IS_BETTER = {"images_per_s", "last_epoch_images_per_s"}


def machine() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (CUDA {torch.version.cuda}), torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        lines = cpuinfo.read_text().splitlines()
        names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return f"{cpu}, {os.cpu_count()} cores, no GPU, torch {torch.__version__}"


def prepare(common: Sequence[str], random_weights: bool) -> None:
    """Generate the (synthetic) data and, if asked, a random weights file before anything is timed."""
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=list(common))
    builders.build_datasets(cfg, DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu")))
    weights = Path(cfg.encoder.encoder_weights)
    if random_weights and not weights.is_file():
        encoder = instantiate(architecture_config(cfg.encoder), _convert_="all")
        layout = encoder.release_layouts[0]  # every family describes its release file
        weights.parent.mkdir(parents=True, exist_ok=True)
        torch.save(layout.to_release(encoder.state_dict()), weights)
        print(f"wrote random weights (for timing only) to {weights}")


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def source_at(revision: str, folder: Path) -> Path:
    """This repository's files at git ``revision``, extracted into ``folder`` (to time an earlier version)."""
    folder.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", revision], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def run_job(overrides: Sequence[str], work_dir: Path, nproc: int, source: Path = REPO) -> tuple[float, float, RunResult]:
    """Run one job in its own process(es) (with the code of ``source``, this repository by default); returns
    its wall and CPU time in seconds and its results."""
    launcher = [sys.executable]
    if nproc > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    command = [*launcher, str(source / "benchmark" / "run.py"), *overrides, f"work_dir={work_dir}"]
    before = set(work_dir.glob("*/results.json"))
    started, cpu = time.perf_counter(), children_cpu_seconds()
    env = {**os.environ, "HYDRA_FULL_ERROR": "1", **({"PYTHONPATH": str(source)} if source != REPO else {})}
    result = subprocess.run(command, cwd=source, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stdout[-4000:]}")
    wall, cpu = time.perf_counter() - started, children_cpu_seconds() - cpu
    written = set(work_dir.glob("*/results.json")) - before
    results = [read_results(p) for p in written]
    if len(results) != 1 or results[0].status != "completed":
        raise SystemExit(f"{' '.join(command)}: expected one completed run in {work_dir}, found {len(results)}")
    return wall, cpu, results[0]


def summarize(variant: str, wall: float, cpu: float, results: Sequence[RunResult]) -> dict[str, Any]:
    """One table row: a variant's times and the mean (max for memory) of its runs' results.json figures."""
    costs = [r.cost for r in results]

    def mean(key: str) -> float:
        return statistics.fmean(getattr(c, key) for c in costs)

    return {
        "variant": variant,
        "runs": len(results),
        "wall_s": wall,
        "cpu_s": cpu,
        "epoch_s": mean("epoch_time_s"),
        "images_per_s": mean("train_images_per_s"),
        "last_epoch_images_per_s": statistics.fmean(last_epoch_images_per_s(REPO / r.run_dir) for r in results),
        "eval_s": statistics.fmean(c.val_time_s + c.test_time_s for c in costs),
        "cache_s": mean("feature_cache_time_s"),
        "peak_mb": max(c.peak_memory_mb for c in costs),
        "val_miou": statistics.fmean(r.val["mIoU"] for r in results),
    }


def last_epoch_images_per_s(run_dir: Path) -> float:
    """Training images/s of a run's last epoch (``metrics.jsonl``): after compiling and warming up."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return json.loads(lines[-1])["train_images_per_s"]


def median_rows(repeats: Sequence[Sequence[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per variant: the median of each figure over the repeats."""
    rows = []
    for per_repeat in zip(*repeats):
        row = dict(per_repeat[0])
        for key in COLUMNS:
            if key not in ("variant", "runs"):
                row[key] = statistics.median(r[key] for r in per_repeat)
        rows.append(row)
    return rows


def speedup(key: str, row: dict[str, Any], base: dict[str, Any]) -> float:
    """How many times better ``row`` does than ``base`` on ``key`` (> 1: faster)."""
    return row[key] / base[key] if key in HIGHER_IS_BETTER else base[key] / row[key]


def cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    header = [*COLUMNS.values(), *(f"{name} speed-up" for name in SPEEDUPS.values())]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        speedups = [f"{speedup(key, row, rows[0]):.2f}x" for key in SPEEDUPS]
        lines.append("| " + " | ".join([*(cell(row[key]) for key in COLUMNS), *speedups]) + " |")
    return "\n".join(lines)


def per_decoder(jobs: Sequence[dict[str, Any]], variants: Sequence[str]) -> str:
    """Wall and epoch time of each decoder (mean over its seeds, median over repeats) under each variant."""
    decoders = list(dict.fromkeys(job["decoder"] for job in jobs))

    def figure(decoder: str, variant: str, key: str) -> float:
        runs = [j for j in jobs if (j["decoder"], j["variant"]) == (decoder, variant)]
        repeats = sorted({j["repeat"] for j in runs})
        return statistics.median(statistics.fmean(j[key] for j in runs if j["repeat"] == r) for r in repeats)

    header = ["decoder"]
    for key in ("wall_s", "epoch_s"):
        header += [f"{COLUMNS[key]} {variant or '(config)'}" for variant in variants]
        header += [f"{SPEEDUPS[key]} speed-up {variant or '(config)'}" for variant in variants[1:]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for decoder in decoders:
        cells = [decoder]
        for key in ("wall_s", "epoch_s"):
            values = [figure(decoder, variant, key) for variant in variants]
            cells += [cell(v) for v in values] + [f"{values[0] / v:.2f}x" for v in values[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--variants", nargs="+", default=[],
        help='one string of space-separated overrides per variant, e.g. "cache=false" "cache=true"',
    )
    parser.add_argument("--sweep", action="store_true",
                        help="instead of variants: the jobs as separate processes vs one shared process (sweep_speed.py)")
    parser.add_argument(
        "--decoders", nargs="*", default=[],
        help='decoder configs, each with optional overrides ("seg_fcn decoder.channels=64"); default: the config\'s',
    )
    parser.add_argument("--seeds", nargs="*", default=[], help="seeds (default: the config's)")
    parser.add_argument("--baseline", metavar="REV", help="with --sweep: also time the jobs as separate processes "
                        "with the code of git revision REV (e.g. the commit a speed-up is claimed against)")
    parser.add_argument("--nproc", type=int, default=1, help="processes per job (torchrun)")
    parser.add_argument("--repeat", type=int, default=1, help="run all variants this many times, alternating")
    parser.add_argument("--random-weights", action="store_true", help="write random release-layout weights if missing")
    parser.add_argument("--output", type=Path, help="keep the work_dirs and benchmark_speed.json here")
    parser.add_argument("overrides", nargs="*", help="run.py overrides shared by all variants (after --)")
    args = parser.parse_args(argv)
    if not args.variants and not args.sweep:
        parser.error("give --variants, or --sweep")

    decoders = [f"decoder={d}".split() for d in args.decoders] or [[]]
    jobs = [[*decoder, *([f"seed={s}"] if s else [])] for decoder in decoders for s in args.seeds or [None]]
    prepare(args.overrides, args.random_weights)
    root = args.output or Path(tempfile.mkdtemp(prefix="benchmark_speed-"))
    print(f"{machine()}; load average {os.getloadavg()[0]:.1f} at the start")
    if args.sweep:
        from sweep_speed import compare  # beside this script

        print(f"{len(jobs)} job(s), {args.repeat} repeat(s)\n")
        baseline = None
        if args.baseline:
            source = source_at(args.baseline, root / f"source_{args.baseline}")
            baseline = (args.baseline, lambda job, wd: run_job(job, wd, 1, source)[0])
        print(compare(args.overrides, decoders, args.seeds, root, args.repeat, lambda job, wd: run_job(job, wd, 1)[0],
                      baseline))
        print(f"load average {os.getloadavg()[0]:.1f} at the end")
        return []
    print(f"{len(jobs)} job(s) per variant, {args.nproc} process(es) per job, {args.repeat} repeat(s)\n")
    repeats, job_records = [], []
    for repeat in range(args.repeat):
        work_dirs = [root / f"repeat{repeat}_variant{number}" for number in range(len(args.variants))]
        walls, cpus = [0.0] * len(args.variants), [0.0] * len(args.variants)
        results: list[list[RunResult]] = [[] for _ in args.variants]
        for job in jobs:
            for number, variant in enumerate(args.variants):
                wall, cpu, result = run_job([*args.overrides, *variant.split(), *job], work_dirs[number], args.nproc)
                walls[number] += wall
                cpus[number] += cpu
                results[number].append(result)
                job_records.append({
                    "repeat": repeat, "variant": variant, "job": job, "decoder": result.config.decoder,
                    "wall_s": wall, "cpu_s": cpu, "epoch_s": result.cost.epoch_time_s,
                })
                print(f"repeat {repeat + 1}, {variant}, {' '.join(job)}: {wall:.1f} s (CPU {cpu:.1f} s)", flush=True)
        rows = [
            summarize(variant or "(config)", wall, cpu, runs)
            for variant, wall, cpu, runs in zip(args.variants, walls, cpus, results)
        ]
        repeats.append(rows)
    table = median_rows(repeats)
    for number, variant in enumerate(table[1:], start=1):
        walls = ", ".join(f"{speedup('wall_s', rows[number], rows[0]):.2f}x" for rows in repeats)
        print(f"wall speed-up of {variant['variant']!r} per repeat: {walls}")
    print(f"load average {os.getloadavg()[0]:.1f} at the end\n")
    print(f"median over {args.repeat} repeat(s); speed-ups relative to {table[0]['variant']!r}\n")
    print(markdown(table))
    print(f"\nper decoder: mean over its {len(args.seeds) or 1} seed(s), median over repeats\n")
    print(per_decoder(job_records, args.variants))
    if args.output:
        record = {"machine": machine(), "argv": sys.argv, "repeats": repeats, "jobs": job_records}
        (root / "benchmark_speed.json").write_text(json.dumps(record, indent=1))
    else:
        shutil.rmtree(root, ignore_errors=True)
    return table


if __name__ == "__main__":
    main()
