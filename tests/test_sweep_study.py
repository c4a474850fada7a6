"""scripts/sweep_study.sh: modes x decoders x label fractions x seeds, the scratch U-Net on the same fractions
and seeds, then the report, on tiny synthetic settings."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from benchmark.results import read_results
from conftest import REPO, TINY_DECODERS, TINY_VIT, tiny_overrides
from test_baselines import TINY_UNET
from test_pipeline import tiny_weights_file
from test_report import table

pytestmark = [pytest.mark.slow, pytest.mark.acceptance]  # the whole study script: with the acceptance runs


def test_the_study_script_runs_every_combination_and_the_baseline_then_reports(synthetic_root: Path, tmp_path: Path) -> None:
    weights = tiny_weights_file(tmp_path / "mae.pth")
    shared = [o for o in tiny_overrides(synthetic_root, tmp_path / "unused") if o.split("=")[0] in (
        "dataset.root_path", "dataset.img_size", "dataset.num_train", "dataset.num_test", "batch_size",
        "test_batch_size", "num_workers", "test_num_workers", "optimizer.lr", "task.trainer.eval_interval")]
    env = {
        **os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "1",
        "DATASET": "synthetic_burnscars", "ENCODERS": "ssl4eo_mae_optical", "DECODERS": "seg_fcn",
        "MODES": "frozen,lora", "FRACTIONS": "0.5,1.0", "SEEDS": "0", "WORK_DIR": str(tmp_path / "study"),
        "ENCODER_ARGS": " ".join([*TINY_VIT, *TINY_DECODERS["seg_fcn"], f"encoder.encoder_weights={weights}"]),
        "BASELINE_ARGS": " ".join(TINY_UNET),
    }
    result = subprocess.run(["scripts/sweep_study.sh", *shared, "task.trainer.n_epochs=1"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-4000:]}"
    runs = [read_results(p) for p in (tmp_path / "study").glob("*/results.json")]
    jobs = sorted((r.config.encoder, r.config.mode, r.config.train_fraction) for r in runs if r.status == "completed")
    assert jobs == sorted([("ssl4eo_mae_optical", m, f) for m in ("frozen", "lora") for f in (0.5, 1.0)]
                          + [("unet", "random", 0.5), ("unet", "random", 1.0)])
    markdown = (tmp_path / "study" / "leaderboard.md").read_text()
    titles, rows = table(markdown, "synthetic_burnscars")
    assert sum(row[0] == "unet" for row in rows) == 2
    assert (tmp_path / "study" / "miou_vs_label_fraction.png").stat().st_size > 10_000
