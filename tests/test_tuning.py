"""Tune, then repeat: an Optuna search of the learning rates scored on validation (``hydra/sweeper=tune``
through ``benchmark.sweep``), the best trial repeated over seeds (``benchmark.tuning``), tuned rows marked in
the report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmark.report import write_report
from benchmark.tuning import best_trials
from conftest import REPO, run_benchmark, tiny_overrides
from test_report import table

pytestmark = pytest.mark.slow
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "1"}


def python_m(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-4000:]}"
    return result


def settings_of(folder: Path) -> dict[str, str]:
    results = json.loads((folder / "results.json").read_text())
    return dict(s.split("=", 1) for s in results["config"]["settings"])


@pytest.mark.acceptance  # a study of trials, then its repeats over seeds: with the acceptance runs
def test_tune_on_validation_then_repeat_the_best_over_seeds_and_mark_it_tuned(synthetic_root: Path, tmp_path: Path) -> None:
    fixed = [o for o in tiny_overrides(synthetic_root, tmp_path / "tuning") if not o.startswith("optimizer.lr=")]
    python_m("benchmark.sweep", "hydra/sweeper=tune", "hydra.sweeper.n_trials=3", "task.trainer.n_epochs=1", *fixed)
    trials = sorted(p for p in (tmp_path / "tuning").iterdir() if (p / "results.json").is_file())
    assert len(trials) == 3
    searched = [settings_of(t) for t in trials]
    assert len({s["optimizer.lr"] for s in searched}) == 3, "each trial its own learning rate"
    assert all(1e-5 <= float(s["optimizer.lr"]) <= 1e-2 and 0.01 <= float(s["encoder_lr_scale"]) <= 1 for s in searched)
    scores = {t.name: json.loads((t / "results.json").read_text())["val"]["mIoU"] for t in trials}

    (best,) = best_trials(tmp_path / "tuning")
    assert best.trials == 3 and best.score == max(scores.values()) and scores[best.run.folder.name] == best.score

    python_m("benchmark.tuning", str(tmp_path / "tuning"), "--seeds", "0,1", f"work_dir={tmp_path / 'study'}", "num_workers=0", "test_num_workers=0")
    repeats = sorted(p for p in (tmp_path / "study").iterdir() if (p / "results.json").is_file())
    assert [json.loads((r / "results.json").read_text())["config"]["seed"] for r in repeats] == [0, 1]
    for repeat in repeats:
        settings = settings_of(repeat)
        assert settings["tuned_from"] == best.run.folder.name
        assert {k: v for k, v in settings.items() if k != "tuned_from"} == settings_of(best.run.folder)

    write_report([tmp_path / "study", tmp_path / "tuning"], tmp_path / "report")
    titles, rows = table((tmp_path / "report" / "leaderboard.md").read_text(), "synthetic_burnscars")
    tuned = [dict(zip(titles, row))["tuned"] for row in rows]
    assert sorted(tuned) == ["no", "no", "no", "yes"], "three trials (one seed each) and the tuned repeat"


def test_run_py_refuses_an_optuna_sweep_it_could_not_score(synthetic_root: Path, tmp_path: Path) -> None:
    result = run_benchmark(["-m", "hydra/sweeper=tune", "hydra.sweeper.n_trials=1", *tiny_overrides(synthetic_root, tmp_path / "wd")], check=False)
    assert result.returncode != 0
    assert "python -m benchmark.sweep hydra/sweeper=tune" in result.stdout + result.stderr
    assert not any((tmp_path / "wd").glob("*/config.yaml")), "refused before any run folder"
