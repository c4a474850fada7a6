"""Peak memory of ``--config-name=predict`` against the raster size: it should not grow with the scene.

    python scripts/predict_memory.py                      # trains a tiny run, maps 2000 and 8000 px scenes
    python scripts/predict_memory.py --run-dir <run folder> --sizes 2000 8000 --stride 32

Steps:

1. Train a tiny synthetic-burn-scars run (32 px window, 4-block ViT of width 32, UPerNet with 16 channels,
   2 epochs; about 12 s on CPU) in a temporary folder, or reuse ``--run-dir``.
2. Write one synthetic 6-band scene (B2, B3, B4, B8A, B11, B12) per ``--sizes`` side: int16 reflectance
   x 1e4, tiled 512 x 512, deflate-compressed, EPSG:32610 at 30 m. The content is smooth (low-frequency
   sines mixing vegetation and soil spectra, sine-shaped burn-scar patches, a little noise) and is written
   tile by tile, so this script never holds a whole raster.
3. Map each scene in a fresh child process (``benchmark/run.py --config-name=predict ... scale=0.0001``)
   and read the child's peak resident set size from ``os.wait4``.
4. Print side, pixels, input file size, peak RSS, seconds and windows/s per scene, and the ratio of the
   largest scene's peak to the smallest one's.

Predict's own buffers are bounded by ``block_size`` and ``windows_per_batch``; it also caps GDAL's block
cache (``GDAL_CACHE_MB`` in ``benchmark/predict/app.py``), whose default, 5 % of RAM, would otherwise hold
a whole smaller-than-RAM scene and make the peak grow with the scene (measured: x1.54 from 2000 to 8000 px
before the cap, x1.00 with it).

Stride: the tiny run's encoder window is 32 px. predict's default stride (half the window, 16 px) puts
about 250,000 windows on an 8000 px scene, 4 to 7 minutes per run at the 600-1000 windows/s one CPU core
gives; this script defaults to ``--stride 32`` (no overlap, 62,500 windows, 1 to 2 minutes per run), so
that training, writing and the four runs take about 4 minutes. Memory does not depend on the stride.

Threads: the children run with ``OMP_NUM_THREADS=1`` (``--threads``). On a shared 2-core machine, two
OpenMP threads fell to 14-35 windows/s whenever another process held a core (against 600-1000 with one
thread), which made timings meaningless.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import rasterio
from affine import Affine
from rasterio.windows import Window

from benchmark.data.synthetic import BURN, SURFACES

REPO = Path(__file__).resolve().parents[1]
RUN_PY = REPO / "benchmark" / "run.py"
BANDS = ("B2", "B3", "B4", "B8A", "B11", "B12")
TILE = 512
PIXEL_M = 30.0
TINY_RUN = (
    "dataset=synthetic_burnscars", "dataset.img_size=64", "dataset.num_train=20", "dataset.num_test=6",
    "encoder=ssl4eo_mae_optical", "encoder.input_size=32", "encoder.embed_dim=32", "encoder.depth=4",
    "encoder.num_heads=2", "encoder.output_layers=[0,1,2,3]", "decoder=seg_upernet", "decoder.channels=16",
    "mode=random", "batch_size=4", "test_batch_size=2", "num_workers=0", "test_num_workers=0",
    "task.trainer.n_epochs=2", "task.trainer.eval_interval=1",
)


def child_env(threads: int) -> dict[str, str]:
    """The environment of a child process: ``OMP_NUM_THREADS`` threads, wandb offline."""
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "WANDB_MODE": "offline"}


def run_child(args: Sequence[str], log_path: Path, env: dict[str, str]) -> tuple[float, float]:
    """Run ``python args`` in a fresh process; returns (wall seconds, peak RSS in MB). Raises on failure."""
    started = time.perf_counter()
    with open(log_path, "w") as log:
        child = subprocess.Popen([sys.executable, *args], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - started
    if child.returncode != 0:
        tail = log_path.read_text().splitlines()[-20:]
        raise RuntimeError(f"{' '.join(args[:3])} ... failed ({child.returncode}); end of {log_path}:\n" + "\n".join(tail))
    return seconds, usage.ru_maxrss / 1024  # ru_maxrss is in KiB on Linux


def train_tiny_run(folder: Path, threads: int) -> Path:
    """Train the tiny run under ``folder``; returns its run folder."""
    work = folder / "work"
    overrides = [*TINY_RUN, f"dataset.root_path={folder / 'data'}", f"work_dir={work}"]
    seconds, _ = run_child([str(RUN_PY), *overrides], folder / "train.log", child_env(threads))
    runs = [p.parent for p in work.rglob("config.yaml")]
    if len(runs) != 1:
        raise RuntimeError(f"expected one run folder under {work}, found {len(runs)}")
    print(f"trained the tiny run in {seconds:.0f} s: {runs[0]}", flush=True)
    return runs[0]


def scene_tile(top: int, left: int, height: int, width: int, seed: int) -> np.ndarray:
    """(6, height, width) int16 reflectance x 1e4 of the synthetic scene at rows/columns from (top, left)."""
    rows = np.arange(top, top + height, dtype=np.float32)[:, None]
    columns = np.arange(left, left + width, dtype=np.float32)[None, :]
    vegetation = 0.5 + 0.5 * np.sin(2 * np.pi * columns / 1300) * np.cos(2 * np.pi * rows / 1700)
    burn = np.sin(2 * np.pi * columns / 410 + 1.0) * np.sin(2 * np.pi * rows / 330 + 0.3)
    burn = np.clip((burn - 0.55) / 0.25, 0.0, 1.0)
    spectra = {name: np.asarray(values, dtype=np.float32)[:, None, None] for name, values in SURFACES.items()}
    image = vegetation * spectra["vegetation"] + (1 - vegetation) * spectra["soil"]
    image = (1 - burn) * image + burn * np.asarray(BURN, dtype=np.float32)[:, None, None]
    noise = np.random.default_rng([seed, top, left]).normal(0.0, 0.004, image.shape).astype(np.float32)
    return np.clip((image + noise) * 10_000, 1, 10_000).astype(np.int16)


def write_scene(path: Path, side: int, seed: int = 0) -> None:
    """A ``side`` x ``side`` 6-band GeoTIFF, written one 512 x 512 tile at a time."""
    profile = dict(
        driver="GTiff", width=side, height=side, count=len(BANDS), dtype="int16", tiled=True, blockxsize=TILE,
        blockysize=TILE, compress="deflate", crs="EPSG:32610", bigtiff="if_safer",
        transform=Affine(PIXEL_M, 0.0, 500_000.0, 0.0, -PIXEL_M, 4_200_000.0),
    )
    with rasterio.open(path, "w", **profile) as dst:
        for top in range(0, side, TILE):
            for left in range(0, side, TILE):
                height, width = min(TILE, side - top), min(TILE, side - left)
                dst.write(scene_tile(top, left, height, width, seed), window=Window(left, top, width, height))


def measure(run_dir: Path, image: Path, output_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Map ``image`` in a fresh child process; its peak RSS, times and windows."""
    overrides = [
        "--config-name=predict", f"ckpt_dir={run_dir}", f"inputs={image}", f"output_dir={output_dir}",
        f"bands=[{','.join(BANDS)}]", "scale=0.0001", f"stride={args.stride}", f"block_size={args.block_size}",
        f"windows_per_batch={args.windows_per_batch}",
    ]
    wall, peak_mb = run_child([str(RUN_PY), *overrides], output_dir.with_suffix(".log"), child_env(args.threads))
    sidecar = json.loads((output_dir / f"{image.stem}.json").read_text())
    side = sidecar["size"][0]
    return {
        "side": side, "pixels": side * side, "window": sidecar["window"], "input_mb": image.stat().st_size / 2**20,
        "whole_float32_mb": len(BANDS) * side * side * 4 / 2**20, "peak_rss_mb": peak_mb,
        "seconds": sidecar["inference_seconds"], "wall_s": wall, "windows": sidecar["windows"],
        "windows_per_s": sidecar["windows_per_second"],
    }


def table(rows: Sequence[dict[str, Any]]) -> str:
    """A Markdown table of the measurements."""
    header = ("side (px)", "pixels", "input file (MB)", "whole scene float32 (MB)", "peak RSS (MB)",
              "inference (s)", "process wall (s)", "windows", "windows/s")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = (f"{r['side']}", f"{r['pixels']:,}", f"{r['input_mb']:.1f}", f"{r['whole_float32_mb']:.0f}",
                 f"{r['peak_rss_mb']:.0f}", f"{r['seconds']:.1f}", f"{r['wall_s']:.1f}", f"{r['windows']:,}",
                 f"{r['windows_per_s']:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ratio(rows: Sequence[dict[str, Any]]) -> str:
    """The peak RSS of the largest scene over that of the smallest."""
    small, large = rows[0], rows[-1]
    return (f"peak RSS ratio {large['side']} px / {small['side']} px: {large['peak_rss_mb'] / small['peak_rss_mb']:.2f} "
            f"(pixels x{large['pixels'] / small['pixels']:.0f})")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 8000], help="scene sides in pixels")
    parser.add_argument("--run-dir", type=Path, help="a trained run folder to reuse (default: train the tiny run)")
    parser.add_argument("--stride", type=int, default=32, help="predict's stride (default 32: the tiny window, no overlap)")
    parser.add_argument("--block-size", type=int, default=1024, help="predict's block_size")
    parser.add_argument("--windows-per-batch", type=int, default=8, help="predict's windows_per_batch")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the child processes (see the docstring)")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temporary folder, removed)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    folder = args.keep or Path(tempfile.mkdtemp(prefix="predict_memory_"))
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        run_dir = args.run_dir or train_tiny_run(folder, args.threads)
        for side in sorted(args.sizes):
            image = folder / f"scene_{side}.tif"
            started = time.perf_counter()
            write_scene(image, side)
            print(f"wrote {image.name} ({image.stat().st_size / 2**20:.1f} MB) in {time.perf_counter() - started:.0f} s", flush=True)
            rows.append(measure(run_dir, image, folder / f"out_{side}", args))
            print(f"mapped {side} x {side}: peak RSS {rows[-1]['peak_rss_mb']:.0f} MB, {rows[-1]['wall_s']:.0f} s", flush=True)
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)
    print(f"\npredict, stride={args.stride} (encoder window {rows[0]['window']} px), block_size={args.block_size}, "
          f"windows_per_batch={args.windows_per_batch}, OMP_NUM_THREADS={args.threads}\n")
    print(table(rows))
    if len(rows) > 1:
        print("\n" + ratio(rows))
    return rows


if __name__ == "__main__":
    main()
