"""Multi-temporal datasets end to end through benchmark/run.py: Prithvi reading the three frames at once and
DOFA on each frame behind the L-TAE head learn burn severity on the synthetic MTBS and HLS Burn Intensity
twins (better than the majority class)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmark.report import write_report
from conftest import TINY_VIT, run_benchmark
from test_model_runs import LEARN, finished

pytestmark = pytest.mark.slow

# 8 px patches: the severity patches of 64 px cases span several tokens; 4 L-TAE heads of 8 of the 32 channels
ENCODERS = {
    "prithvi": [*TINY_VIT, "encoder.patch_size=8", "temporal.heads=4"],
    "dofa": [*TINY_VIT, "encoder.patch_size=8", "temporal.heads=4"],
}


@pytest.mark.parametrize("dataset", ["synthetic_burnintensity", "synthetic_mtbs"])
@pytest.mark.parametrize("encoder", list(ENCODERS))
def test_burn_severity_is_learned_from_three_frames(dataset: str, encoder: str, tmp_path_factory: pytest.TempPathFactory,
                                                    tmp_path: Path) -> None:
    data = tmp_path_factory.getbasetemp() / f"{dataset}_64"  # shared by the encoders (generated once per settings)
    run_benchmark([
        f"dataset={dataset}", f"dataset.root_path={data}", "dataset.img_size=64", "dataset.num_train=16",
        "dataset.num_test=6", f"encoder={encoder}", *ENCODERS[encoder], "decoder=seg_upernet", "decoder.channels=16",
        "mode=random", "batch_size=4", "test_batch_size=2", "num_workers=0", "test_num_workers=0",
        f"work_dir={tmp_path / 'wd'}", *LEARN, "task.trainer.n_epochs=24", "task.trainer.eval_interval=24",
    ])
    results = finished(tmp_path / "wd")
    assert results["config"]["dataset"] == dataset
    assert results["config"]["temporal"] == "ltae"


def test_a_sweep_over_temporal_heads_is_reported_by_head(tmp_path: Path) -> None:
    work_dir = tmp_path / "wd"
    run_benchmark([
        "-m", "dataset=synthetic_burnintensity", f"dataset.root_path={tmp_path / 'data'}", "dataset.img_size=32",
        "dataset.num_train=4", "dataset.num_test=2", "encoder=dofa", *TINY_VIT, "decoder=seg_fcn", "decoder.channels=16",
        "temporal=ltae,mean", "mode=random", "batch_size=2", "test_batch_size=2", "num_workers=0",
        "test_num_workers=0", "task.trainer.n_epochs=1", f"work_dir={work_dir}",
    ])
    heads = sorted(json.loads(p.read_text())["config"]["temporal"] for p in work_dir.glob("*/results.json"))
    assert heads == ["ltae", "mean"]
    write_report([work_dir], tmp_path / "report")
    report = (tmp_path / "report" / "leaderboard.md").read_text()
    table = report.split("## synthetic_burnintensity", 1)[1].splitlines()  # one section per dataset
    header = next(line for line in table if line.startswith("| encoder |"))
    column = [cell.strip() for cell in header.split("|")].index("temporal")
    rows = [[cell.strip() for cell in line.split("|")] for line in table if line.startswith("| dofa |")]
    assert sorted(row[column] for row in rows) == ["ltae", "mean"]
