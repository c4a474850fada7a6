"""Tune, then repeat: re-run the best trial of each tuning study over several seeds.

``python -m benchmark.sweep hydra/sweeper=tune work_dir=work_dir/tuning ...`` leaves one run folder per
Optuna trial. ``python -m benchmark.tuning work_dir/tuning --seeds 0,1,2 [sweep overrides]`` then groups
the completed trials into studies (same dataset, encoder, decoder, mode, label fraction, crop protocol and
the same overridden keys; their values are what was searched), takes each study's trial with the best
validation metric (the one the trials were scored on) and runs its exact settings once per seed through
:mod:`benchmark.sweep`, with ``tuned_from=<trial folder>``: the report marks those rows as tuned. The test
split is never used to choose.
"""

from __future__ import annotations

import argparse
import logging
import math
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from omegaconf import OmegaConf

from benchmark.report.runs import Run, collect
from benchmark.results import CHOICE_GROUPS

log = logging.getLogger("benchmark.tuning")


@dataclass(frozen=True)
class Best:
    """A study's best trial: its run, its validation score and how many trials it was chosen from."""

    run: Run
    score: float
    trials: int

    def overrides(self) -> list[str]:
        """The trial's job, written as overrides: dataset, encoder, decoder, mode, its settings (other group
        choices it overrode among them) and the data folder it read (``dataset.root_path`` says where, not
        what, so it is no setting)."""
        config = self.run.result.config  # type: ignore[union-attr]  # completed runs have one
        named = [f"dataset={config.dataset}", f"encoder={config.encoder}", f"decoder={config.decoder}", f"mode={config.mode}"]
        settings = [s for s in config.settings if s.partition("=")[0] != "tuned_from"]
        root = OmegaConf.select(OmegaConf.load(self.run.folder / "config.yaml"), "dataset.root_path")
        return [*named, *settings, f"dataset.root_path={root}", f"tuned_from={self.run.folder.name}"]


def study_key(run: Run) -> tuple:
    config = run.result.config  # type: ignore[union-attr]
    keys = tuple(sorted(s.partition("=")[0] for s in config.settings))
    return (*(getattr(config, g) for g in CHOICE_GROUPS), config.mode, config.train_crop_stride, run.train_fraction, config.subset_draw, keys)


def trial_score(run: Run, metric: str) -> float:
    value = (run.result.val or {}).get(metric) if run.result is not None else None
    return float(value) if isinstance(value, (int, float)) and not math.isnan(value) else -math.inf


def best_trials(trials_dir: Path, metric: str = "mIoU") -> list[Best]:
    """The best completed trial of each study under ``trials_dir`` (ties: the earlier folder)."""
    studies: dict[tuple, list[Run]] = defaultdict(list)
    for run in collect([trials_dir]):
        if run.status == "completed" and run.result is not None and run.result.config is not None:
            studies[study_key(run)].append(run)
    if not studies:
        raise SystemExit(f"no completed trial under {trials_dir}: run the tuning sweep first (README 'Tune, then repeat')")
    found = []
    for runs in studies.values():
        best = max(sorted(runs, key=lambda r: r.folder.name), key=lambda r: trial_score(r, metric))
        found.append(Best(best, trial_score(best, metric), len(runs)))
    return found


def repeat_command(best: Best, seeds: str, extra: Sequence[str]) -> list[str]:
    """The sweep that repeats ``best`` over ``seeds``; an override in ``extra`` replaces the trial's own."""
    given = {o.partition("=")[0].lstrip("+~") for o in extra}
    own = [o for o in best.overrides() if o.partition("=")[0].lstrip("+~") not in given]
    return [sys.executable, "-m", "benchmark.sweep", *own, f"seed={seeds}", *extra]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmark.tuning", description=__doc__.split("\n\n")[0])
    parser.add_argument("trials_dir", type=Path, help="the work_dir of the tuning sweep")
    parser.add_argument("--seeds", default="0,1,2", help="seeds to repeat the best setting with (default 0,1,2)")
    parser.add_argument("--metric", default="mIoU", help="validation metric the trials were scored on")
    parser.add_argument("--dry-run", action="store_true", help="print the commands without running them")
    args, extra = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s] %(message)s", stream=sys.stdout)
    for best in best_trials(args.trials_dir, args.metric):
        command = repeat_command(best, args.seeds, extra)
        log.info("best of %d trial(s): val %s %.4f in %s", best.trials, args.metric, best.score, best.run.folder)
        print(" ".join(command), flush=True)
        if not args.dry_run and subprocess.run(command).returncode != 0:
            raise SystemExit(f"the repeat of {best.run.folder.name} failed (see its run folders)")


if __name__ == "__main__":
    main()
