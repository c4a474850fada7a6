"""Images/s of the training loader alone (reading, cropping, normalising, flipping, collating; no model), for
several worker counts: whether the data path can feed a measured training rate.

    python scripts/loader_speed.py --workers 0 2 8 --epochs 2 -- dataset=synthetic_burnscars \\
        dataset.img_size=224 dataset.num_train=256 batch_size=32 cache=false

The overrides are ``benchmark/run.py``'s; the loader is built as a run builds it (same sampler, steps and
raster cache). The first epoch includes starting the workers and, with ``cache=true``, decoding the
rasters into the cache; later epochs show the steady rate. ``--resident`` adds a row for the training split
held on ``--device`` (``data_on_device=true``: read once before the first epoch, not timed; crops there).
"""

from __future__ import annotations

import argparse
import time
from typing import Sequence

import torch
from hydra import compose, initialize_config_dir

from benchmark import CONFIG_DIR, builders
from benchmark.distributed import DistContext


def loader_epochs(overrides: Sequence[str], workers: int, epochs: int, device: str = "cpu") -> list[tuple[int, float]]:
    """``(images, seconds)`` of each epoch of the training loader with ``workers`` worker processes."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, f"num_workers={workers}"])
    ctx = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device(device))
    loader = builders.train_loader(cfg, ctx, builders.build_dataset(cfg, "train", ctx), None)
    counts = []
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)
        started, images = time.perf_counter(), 0
        for batch in loader:
            images += batch["target"].shape[0]
        if ctx.device.type == "cuda":
            torch.cuda.synchronize(ctx.device)  # crops on the device run asynchronously
        counts.append((images, time.perf_counter() - started))
    return counts


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="loader worker counts to measure")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per worker count (at least 2: the first warms up)")
    parser.add_argument("--resident", action="store_true", help="also the training split held on the device")
    parser.add_argument("--device", default="cpu", help="where the split is held with --resident (cpu, cuda)")
    parser.add_argument("overrides", nargs="*", help="benchmark/run.py overrides (after --)")
    args = parser.parse_args(argv)
    print(f"| workers | {' | '.join(f'epoch {e + 1} img/s' for e in range(args.epochs))} |")
    print(f"|---:|{'---:|' * args.epochs}")
    rows = [(str(workers), workers, []) for workers in args.workers]
    if args.resident:
        rows.append((f"split on {args.device}", 0, ["data_on_device=true"]))
    for label, workers, extra in rows:
        epochs = loader_epochs([*args.overrides, *extra], workers, args.epochs, args.device if extra else "cpu")
        print(f"| {label} | {' | '.join(f'{images / seconds:.0f}' for images, seconds in epochs)} |", flush=True)


if __name__ == "__main__":
    main()
