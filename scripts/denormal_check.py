"""Guard against subnormal (denormal) floats slowing a decoder's training on CPU.

    python scripts/denormal_check.py [--decoders seg_muster seg_upernet ...] [--steps 30]

Each decoder trains for a few steps on small random features (cached frozen features are often small),
as is and with ``torch.set_flush_denormal(True)`` (which makes subnormal arithmetic as fast as any
other), the two taking turns; the best time of each counts. Equal times mean no subnormal floats on the hot path; a ratio well above 1 means some
computation produces them (MUSTER's masked attention did, with Swin's -100 logits: exp(-100) is
subnormal in float32). Prints a table and exits non-zero when a decoder is slower than ``--limit`` times
its flushed self.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Sequence

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
DECODERS = ("seg_linear", "seg_fcn", "seg_upernet", "seg_segformer", "seg_muster")


def train_seconds(decoder: str, steps: int, repeats: int, dim: int = 32, grid: int = 14, batch: int = 2) -> tuple[float, float]:
    """Best wall time of ``steps`` AdamW steps of ``decoder`` (16 channels) on features of scale 1e-3, as is
    and flushing denormals, the two taking turns ``repeats`` times after two untimed steps. A 14 x 14 grid
    (a ViT-B/16 at 224 px) is larger than MUSTER's 12-token window, so its windows are padded, shifted and
    masked."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"decoder={decoder}"] + ([] if decoder == "seg_linear" else ["decoder.channels=16"]))
    torch.manual_seed(0)
    model = instantiate(cfg.decoder, in_dims=[dim] * 4, _convert_="all")
    features = [torch.randn(batch, dim, grid, grid) * 1e-3 for _ in range(4)]
    optimizer = torch.optim.AdamW(model.parameters(), 1e-3)

    def run(n: int) -> float:
        started = time.perf_counter()
        for _ in range(n):
            loss = model(features, (16 * grid, 16 * grid)).float().mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return time.perf_counter() - started

    run(2)
    best = {False: math.inf, True: math.inf}
    try:
        for _ in range(repeats):
            for flush in best:
                torch.set_flush_denormal(flush)
                best[flush] = min(best[flush], run(steps))
    finally:
        torch.set_flush_denormal(False)  # PyTorch's default
    return best[False], best[True]


def check(decoders: Sequence[str], steps: int, repeats: int, limit: float) -> list[str]:
    """Print each decoder's times and ratio; return those slower than ``limit`` x their flushed time."""
    if not torch.set_flush_denormal(False):
        print("this CPU cannot flush denormals (no SSE3): nothing to compare")
        return []
    torch.set_num_threads(1)  # the flush setting is the calling thread's: other threads would compute as is
    print("| decoder | as is (s) | flushing denormals (s) | ratio |\n|---|---:|---:|---:|")
    slow = []
    for decoder in decoders:
        plain, flushed = train_seconds(decoder, steps, repeats)
        ratio = plain / max(flushed, 1e-9)
        print(f"| {decoder} | {plain:.2f} | {flushed:.2f} | {ratio:.2f} |")
        if ratio > limit:
            slow.append(decoder)
    return slow


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--decoders", nargs="*", default=list(DECODERS))
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3, help="turns of each mode; the best time counts")
    parser.add_argument("--limit", type=float, default=1.3, help="largest acceptable ratio")
    args = parser.parse_args(argv)
    slow = check(args.decoders, args.steps, args.repeats, args.limit)
    if slow:
        print(f"subnormal floats slow {', '.join(slow)} down (ratio above {args.limit}): find the computation that "
              "produces them (tiny exponentials, products of tiny values) and fix it there")
    return 1 if slow else 0


if __name__ == "__main__":
    sys.exit(main())
