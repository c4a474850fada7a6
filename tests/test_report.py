"""benchmark/report on run folders written with the results.json schema: the csv and markdown carry
the runs' own numbers, groups give mean ± std and the bootstrap interval of the mean over seeds of one
experiment only (runs that differ in
a setting are groups of their own, the setting shown), failed / incomplete / invalid / repeated runs
are listed as such, undefined metrics show as "–", the plots are real images that tell groups apart,
and a folder without runs is an error that says so."""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib.image import imread

from benchmark.report import ReportError, collect, group_runs, plots, write_report
from benchmark.results import Cost, RunConfig, RunResult, completed_result, failed_result, settings_hash, write_results
from conftest import REPO

CLASSES = ("Not burned", "Burn scar")
SCALARS = ("mIoU", "mF1", "mPrecision", "mRecall", "oAcc", "mAcc")
JOB = ("dataset", "encoder", "decoder", "mode", "seed")


def metrics(rng: np.random.Generator) -> dict[str, Any]:
    per_class = {name: dict(zip(CLASSES, rng.uniform(0.2, 0.95, 2))) for name in ("IoU", "F1", "Precision", "Recall")}
    scalars = {name: float(rng.uniform(0.3, 0.9)) for name in SCALARS}
    scalars["mIoU"] = statistics.fmean(per_class["IoU"].values())
    return {**scalars, **per_class, "pixels": 100, "confusion_matrix": [[60, 10], [5, 25]]}


class NonFiniteLossError(RuntimeError):
    """Stands for the trainer's error in failed runs."""


def write_run(
    work_dir: Path, name: str, job: dict[str, Any], rng: np.random.Generator, status: str = "completed",
    settings: tuple[str, ...] = (), test: dict[str, Any] | None = None, **config: Any,
) -> RunResult | None:
    """A run folder as benchmark/run.py leaves it, results.json through the schema's writer (``status``
    ``incomplete``: none). ``settings`` and ``config`` (e.g. ``preprocessing``) change the experiment."""
    folder = work_dir / name
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "config.yaml").write_text(
        "choices:\n" + "".join(f"  {k}: {job[k]}\n" for k in ("dataset", "encoder", "decoder")) + f"mode: {job['mode']}\nseed: {job['seed']}\n"
    )
    curve = [{"epoch": e, "train_loss": 1.0 / e, "split": "val", **metrics(rng)} for e in (1, 2, 3)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in curve))
    if status == "incomplete":
        return None
    if status == "failed":
        result = failed_result(folder, NonFiniteLossError("non-finite | loss"), {})
    else:
        defaults = dict(
            preprocessing="seg_default", criterion="cross_entropy", task="segmentation", optimizer="adamw",
            lr_scheduler="multi_step_lr", train_crop_stride=1, n_epochs=3, world_size=1, device="cpu",
        )
        run_config = RunConfig(**job, **{**defaults, **config}, settings=settings, settings_hash=settings_hash(settings))
        cost = Cost(
            total_params=1000, trainable_params=int(rng.integers(100, 900)), encoder_params=500,
            wall_time_s=float(rng.uniform(10, 20)), train_time_s=float(rng.uniform(1, 9)),
            train_images_per_s=float(rng.uniform(5, 50)), peak_memory_mb=float(rng.uniform(100, 900)),
        )
        val = {k: v for k, v in curve[1].items() if k not in ("epoch", "train_loss", "split")}
        result = completed_result(folder, run_config, best_epoch=2, val=val, test=test or metrics(rng), cost=cost, versions={})
    write_results(folder, result)
    return result


@pytest.fixture
def sweep(tmp_path: Path) -> dict[str, Any]:
    """2 decoders x 2 modes x 2 seeds completed, plus a failed run, an incomplete run, and an older
    repeat of one job."""
    rng = np.random.default_rng(0)
    work_dir = tmp_path / "work_dir"
    completed = {}
    for decoder in ("seg_upernet", "seg_linear"):
        for mode in ("frozen", "random"):
            for seed in (0, 1):
                job = {"dataset": "synthetic_burnscars", "encoder": "dofa", "decoder": decoder, "mode": mode, "seed": seed}
                name = f"20260101-00000{seed}_synthetic_burnscars_dofa_{decoder}_{mode}_s{seed}"
                completed[name] = write_run(work_dir, name, job, rng)
    job = {"dataset": "synthetic_burnscars", "encoder": "dofa", "decoder": "seg_fcn", "mode": "frozen", "seed": 0}
    write_run(work_dir, "failed_run", job, rng, status="failed")
    write_run(work_dir / "nested", "killed_run", {**job, "seed": 1}, rng, status="incomplete")
    old = work_dir / "old_repeat"
    (work_dir / next(iter(completed))).rename(old)  # the first job ran twice; this is the older one
    os.utime(old / "results.json", ns=(1, 1))
    newest = next(iter(completed))
    completed[newest] = write_run(work_dir, newest, {k: getattr(completed[newest].config, k) for k in JOB}, rng)
    return {"work_dir": work_dir, "completed": completed, "old": old}


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_csv_has_one_row_per_run_with_the_numbers_of_its_results_json(sweep: dict[str, Any], tmp_path: Path) -> None:
    write_report([sweep["work_dir"]], tmp_path / "report")
    rows = {Path(row["run_dir"]).name: row for row in read_csv(tmp_path / "report" / "leaderboard.csv")}
    assert len(rows) == 8 + 3
    for name, results in sweep["completed"].items():
        row = rows[name]
        assert row["status"] == "completed"
        assert {k: row[k] for k in JOB} == {k: str(getattr(results.config, k)) for k in JOB}
        assert (row["preprocessing"], row["optimizer"], row["train_crop_stride"]) == ("seg_default", "adamw", "1")
        for split in ("test", "val"):
            for metric in SCALARS:
                assert float(row[f"{split}_{metric}"]) == getattr(results, split)[metric]
        for metric in ("IoU", "F1", "Precision", "Recall"):
            for cls in CLASSES:
                assert float(row[f"test_{metric}_{cls}"]) == results.test[metric][cls]
        for key, value in dataclasses.asdict(results.cost).items():
            assert row[key] == "" if value is None else float(row[key]) == value
        assert row["group_n"] == "2" and row["train_fraction"] == "1.0", "its group's statistics follow"
    assert rows["failed_run"]["status"] == "failed" and "NonFiniteLossError" in rows["failed_run"]["note"]
    assert rows["failed_run"]["group_n"] == rows["old_repeat"]["group_test_mIoU_mean"] == "", "in no group"
    assert rows["killed_run"]["status"] == "incomplete" and rows["killed_run"]["test_mIoU"] == ""
    assert rows["old_repeat"]["status"] == "superseded"


def table(markdown: str, section: str) -> tuple[list[str], list[list[str]]]:
    """Header and body rows of the table under the heading ``## section``."""
    lines = itertools.dropwhile(lambda l: not l.startswith("|"), markdown.split(f"## {section}\n", 1)[1].splitlines())
    rows = [[c.strip() for c in line.strip("|").split(" | ")] for line in itertools.takewhile(lambda l: l.startswith("|"), lines)]
    return rows[0], rows[2:]


def test_markdown_groups_seeds_into_mean_and_std_and_lists_runs_left_out(sweep: dict[str, Any], tmp_path: Path) -> None:
    write_report([sweep["work_dir"]], tmp_path / "report")
    markdown = (tmp_path / "report" / "leaderboard.md").read_text()
    titles, rows = table(markdown, "synthetic_burnscars")
    assert titles[:5] == ["encoder", "decoder", "mode", "train crops", "n"], "no settings differ: no columns for them"
    assert [r[:5] for r in rows] == [
        ["dofa", "seg_linear", "frozen", "random", "2"], ["dofa", "seg_linear", "random", "random", "2"],
        ["dofa", "seg_upernet", "frozen", "random", "2"], ["dofa", "seg_upernet", "random", "random", "2"],
    ]
    assert "Same in all rows: `preprocessing=seg_default`, `criterion=cross_entropy`" in markdown
    miou = titles.index("test mIoU")
    means = []
    for row in rows:
        runs = [r for r in sweep["completed"].values() if (r.config.decoder, r.config.mode) == (row[1], row[2])]
        values = [r.test["mIoU"] for r in runs]
        expected = f"{100 * statistics.fmean(values):.2f} ± {100 * statistics.stdev(values):.2f}"
        assert row[miou].strip("*") == expected
        # two seeds: the 95 % bootstrap interval of the mean is their range (each has 1/4 >= 2.5 % alone)
        assert row[titles.index("test mIoU 95% CI")] == f"[{100 * min(values):.2f}, {100 * max(values):.2f}]"
        burn = [r.test["IoU"]["Burn scar"] for r in runs]
        assert row[titles.index("IoU Burn scar")].strip("*") == f"{100 * statistics.fmean(burn):.2f} ± {100 * statistics.stdev(burn):.2f}"
        means.append(statistics.fmean(values))
    best = int(np.argmax(means))
    assert [row[miou].startswith("**") for row in rows] == [i == best for i in range(4)], "the best mIoU is bold"
    times = [float(row[titles.index("train time (s)")].strip("*").split(" ± ")[0]) for row in rows]
    assert rows[int(np.argmin(times))][titles.index("train time (s)")].startswith("**"), "the fastest is bold"

    left_out = {row[0]: row for row in table(markdown, "Runs not in the means")[1]}
    assert set(left_out) == {"failed", "incomplete", "superseded"}
    assert left_out["failed"][1:6] == ["synthetic_burnscars", "dofa", "seg_fcn", "frozen", "0"]
    assert "non-finite \\| loss" in left_out["failed"][-1]
    assert left_out["incomplete"][5] == "1" and "last finished epoch 3" in left_out["incomplete"][-1]
    assert left_out["superseded"][6] == str(sweep["old"].resolve())


def test_plots_are_images_with_content(sweep: dict[str, Any], tmp_path: Path) -> None:
    written = write_report([sweep["work_dir"]], tmp_path / "report")
    pngs = [path for path in written if path.suffix == ".png"]
    assert [p.name for p in pngs] == ["miou_by_decoder_mode.png", "val_miou_curves.png", "miou_vs_cost.png"]
    for path in pngs:
        image = imread(path)
        assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 300
        colours = np.unique((image[..., :3] * 255).astype(np.uint8).reshape(-1, 3), axis=0)
        assert len(colours) > 50, f"{path.name} is (nearly) blank"
        coloured = np.abs(image[..., 0] - image[..., 2]) > 0.2  # bars, lines and markers in colour
        assert coloured.mean() > 0.002, f"{path.name} draws no data"


def test_report_of_failed_runs_only_lists_them_without_plots(tmp_path: Path) -> None:
    job = {"dataset": "hlsburnscars", "encoder": "prithvi", "decoder": "seg_upernet", "mode": "frozen", "seed": 0}
    write_run(tmp_path / "wd", "crashed", job, np.random.default_rng(1), status="failed")
    written = write_report([tmp_path / "wd"], tmp_path / "wd")
    assert [p.name for p in written] == ["leaderboard.csv", "leaderboard.md"]
    assert "| failed | hlsburnscars | prithvi | seg_upernet | frozen | 0 |" in (tmp_path / "wd" / "leaderboard.md").read_text()


def test_folder_without_runs_is_an_error_that_says_so(tmp_path: Path) -> None:
    (tmp_path / "empty" / "multirun").mkdir(parents=True)
    with pytest.raises(ReportError, match="no run folders"):
        write_report([tmp_path / "empty"], tmp_path / "out")
    result = subprocess.run(
        [sys.executable, "-m", "benchmark.report", str(tmp_path / "empty")], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode != 0 and "no run folders" in result.stderr and "Traceback" not in result.stderr


EXPERIMENTS = {  # setting name -> (write_run keyword arguments of the changed experiment, its cell, the default's cell)
    "optimizer.lr": ({"settings": ("optimizer.lr=1e-3",)}, "1e-3", "(default)"),
    "preprocessing": ({"settings": ("preprocessing=seg_minmax",), "preprocessing": "seg_minmax"}, "seg_minmax", "seg_default"),
    "train crops": ({"settings": ("train_crop_stride=16",), "train_crop_stride": 16}, "grid 16", "random"),
}


def two_experiments(work_dir: Path, changed: dict[str, Any]) -> None:
    """The same job with and without ``changed``, seeds 0 and 1 each."""
    rng = np.random.default_rng(2)
    for seed in (0, 1):
        job = {"dataset": "hlsburnscars", "encoder": "prithvi", "decoder": "seg_upernet", "mode": "frozen", "seed": seed}
        write_run(work_dir, f"default_s{seed}", job, rng)
        write_run(work_dir, f"changed_s{seed}", job, rng, **changed)


@pytest.mark.parametrize("setting", EXPERIMENTS)
def test_runs_that_differ_in_a_setting_are_two_groups_with_the_setting_shown(tmp_path: Path, setting: str) -> None:
    changed, changed_cell, default_cell = EXPERIMENTS[setting]
    two_experiments(tmp_path / "wd", changed)
    write_report([tmp_path / "wd"], tmp_path / "report")
    markdown = (tmp_path / "report" / "leaderboard.md").read_text()
    titles, rows = table(markdown, "hlsburnscars")
    assert len(rows) == 2 and [row[titles.index("n")] for row in rows] == ["2", "2"], "never averaged together"
    assert sorted(row[titles.index(setting)] for row in rows) == sorted([changed_cell, default_cell])
    assert "Runs not in the means" not in markdown, "a run of another experiment is no repeat"
    csv_rows = read_csv(tmp_path / "report" / "leaderboard.csv")
    assert [row["status"] for row in csv_rows] == ["completed"] * 4
    assert len({row["settings_hash"] for row in csv_rows}) == 2


def test_plots_tell_groups_that_differ_only_in_settings_apart(tmp_path: Path) -> None:
    two_experiments(tmp_path / "wd", EXPERIMENTS["optimizer.lr"][0])
    groups = group_runs(collect([tmp_path / "wd"]))
    assert sorted(g.label for g in groups) == ["optimizer.lr=(default)", "optimizer.lr=1e-3"]
    bars = plots.miou_by_decoder_and_mode(groups)
    assert sorted(t.get_text() for t in bars.axes[0].get_legend().get_texts()) == [
        "frozen · optimizer.lr=(default)", "frozen · optimizer.lr=1e-3"
    ]
    curves = plots.validation_curves(groups)
    assert len({line.get_label() for line in curves.axes[0].get_lines()}) == 2
    scatter = plots.miou_against_cost(groups)
    assert {t.get_text() for t in scatter.axes[0].texts} == {"optimizer.lr=(default)", "optimizer.lr=1e-3"}


def test_an_override_equal_to_the_default_is_told_apart_by_its_settings_hash(tmp_path: Path) -> None:
    two_experiments(tmp_path / "wd", {"settings": ("preprocessing=seg_default",)})
    write_report([tmp_path / "wd"], tmp_path / "report")
    titles, rows = table((tmp_path / "report" / "leaderboard.md").read_text(), "hlsburnscars")
    assert len(rows) == 2 and sorted(row[titles.index("settings hash")] for row in rows) == sorted(
        ["none", settings_hash(["preprocessing=seg_default"])]
    )


def test_undefined_metrics_show_as_a_dash_and_crash_nothing(tmp_path: Path) -> None:
    """A class absent from truth and prediction has NaN metrics; a run may lack a whole metric."""
    rng = np.random.default_rng(3)
    job = {"dataset": "hlsburnscars", "encoder": "prithvi", "decoder": "seg_fcn", "mode": "random", "seed": 0}
    undefined = {**metrics(rng), "oAcc": float("nan")}
    undefined["IoU"] = {"Not burned": 0.9, "Burn scar": float("nan")}
    write_run(tmp_path / "wd", "nan_s0", job, rng, test=undefined)
    write_run(tmp_path / "wd", "nan_s1", {**job, "seed": 1}, rng, test={**undefined, "mIoU": float("nan")})
    written = write_report([tmp_path / "wd"], tmp_path / "report")
    titles, rows = table((tmp_path / "report" / "leaderboard.md").read_text(), "hlsburnscars")
    assert rows[0][titles.index("IoU Burn scar")] == rows[0][titles.index("oAcc")] == "–"
    assert rows[0][titles.index("test mIoU")] == f"{100 * undefined['mIoU']:.2f}", "the defined value alone"
    assert rows[0][titles.index("IoU Not burned")] == "90.00 ± 0.00"
    assert len(written) == 5


def test_a_malformed_results_json_is_listed_as_invalid_naming_the_file(sweep: dict[str, Any], tmp_path: Path) -> None:
    broken = sweep["work_dir"] / "old_repeat" / "results.json"
    broken.write_text(json.dumps({"status": "completed", "run_dir": "x"}))
    write_report([sweep["work_dir"]], tmp_path / "report")
    left_out = {row[0]: row for row in table((tmp_path / "report" / "leaderboard.md").read_text(), "Runs not in the means")[1]}
    assert str(broken) in left_out["invalid"][-1] and "a completed run needs config" in left_out["invalid"][-1]
