"""Sweep results -> leaderboard and plots: ``python -m benchmark.report DIR... [--output OUT]``.

Every run folder below the given folders is collected (a folder holding ``results.json``,
``config.yaml``, ``metrics.jsonl`` or ``checkpoints/``). Completed runs feed the leaderboard, grouped
by experiment: runs are averaged over seeds only when everything else is the same (every config-group
choice, mode, settings overrides, training-crop protocol, label fraction; see ``benchmark.results``
and ``benchmark.report.runs``). Failed runs, incomplete ones (no ``results.json``: interrupted or still
running), invalid ones (a malformed ``results.json``) and older repeats of a job (same experiment and
seed: only the newest counts) are listed as such. Writes:

- ``leaderboard.csv``: one row per run folder (status, job identity, test and validation metrics,
  per-class test metrics, cost), with its group's number of seeds and mean, std and 95 % bootstrap
  interval of test mIoU, per-class IoU and normalised mIoU (``benchmark.report.scores``);
- ``leaderboard.md``: per dataset, one row per experiment with mean ± std over seeds, the bootstrap
  interval of the mean test mIoU and the number of seeds, the settings in which the rows differ as
  columns, best value per column in bold; the interquartile mean of each encoder and mode over its
  tasks (``benchmark.report.iqm``); then the runs left out of the means;
- ``miou_by_decoder_mode.png``, ``val_miou_curves.png``, ``miou_vs_cost.png`` (error bars and bands:
  bootstrap intervals of the mean), and ``miou_vs_label_fraction.png`` when runs differ in
  ``dataset.train_fraction``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from benchmark.report.plots import write_plots
from benchmark.report.runs import Group, ReportError, Run, collect, group_runs
from benchmark.report.tables import markdown, write_csv

__all__ = ["Group", "ReportError", "Run", "collect", "group_runs", "main", "write_report"]


def write_report(roots: Sequence[Path], output: Path) -> list[Path]:
    """Collect the runs below ``roots`` and write the leaderboard and plots into ``output``."""
    runs = collect(roots)
    groups = group_runs(runs)
    output.mkdir(parents=True, exist_ok=True)
    written = [output / "leaderboard.csv", output / "leaderboard.md"]
    write_csv(runs, written[0], groups)
    written[1].write_text(markdown(runs, groups))
    if groups:
        written += write_plots(groups, output)
    return written


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmark.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="folders searched for run folders (e.g. a sweep's work_dir)")
    parser.add_argument("--output", "-o", type=Path, help="where the report goes (default: the first folder)")
    args = parser.parse_args(argv)
    try:
        written = write_report(args.dirs, args.output or args.dirs[0])
    except ReportError as error:
        sys.exit(f"error: {error}")
    for path in written:
        print(path)
