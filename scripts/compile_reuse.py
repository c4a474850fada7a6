"""Whether jobs of one process share what ``task.trainer.compile=true`` compiled: the time of the first training
step of several models built one after another, as the jobs of a sweep build them.

    python scripts/compile_reuse.py --models 3 -- dataset=synthetic_burnscars decoder=seg_fcn mode=random

Each model is built afresh from the config (new weights, ``compile=true``) and takes one forward and backward
pass on a random batch. The first step of the first model compiles; if the later ones are as fast as an
uncompiled step, torch.compile reused the compiled code for the new model of the same shapes.
"""

from __future__ import annotations

import argparse
import time
from typing import Sequence

import torch
from hydra import compose, initialize_config_dir

from benchmark import CONFIG_DIR, builders
from benchmark.distributed import init_distributed


def first_steps(overrides: Sequence[str], models: int, batch_size: int) -> list[float]:
    """Seconds of the first training step of each of ``models`` models built one after another."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, "task.trainer.compile=true"])
    ctx = init_distributed(str(cfg.device))
    size = int(cfg.encoder.input_size)
    seconds = []
    for _ in range(models):
        model = builders.build_segmentor(cfg, str(cfg.mode), ctx)
        inputs = {m: torch.randn(batch_size, len(bands), 1, size, size, device=ctx.device)
                  for m, bands in cfg.encoder.input_bands.items()}
        started = time.perf_counter()
        model(inputs, (size, size)).float().mean().backward()
        if ctx.device.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - started)
    return seconds


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=int, default=3, help="models to build one after another")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("overrides", nargs="*", help="benchmark/run.py overrides (after --)")
    args = parser.parse_args(argv)
    for number, seconds in enumerate(first_steps(args.overrides, args.models, args.batch_size), start=1):
        print(f"model {number}: first training step {seconds:.2f} s", flush=True)


if __name__ == "__main__":
    main()
