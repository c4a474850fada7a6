"""benchmark/results.py: results.json round-trips through the schema, malformed files are errors that
name the file, files written before the schema still read, and the config block carries the full
job identity (rundir.summary) whose settings hash is the run folder's suffix."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra import compose, initialize_config_dir

from benchmark import rundir
from benchmark.rundir import canonical_overrides
from benchmark.distributed import DistContext
from benchmark.results import (
    CHOICE_GROUPS, SCHEMA_VERSION, Cost, ResultsError, RunConfig, completed_result, completed_results,
    failed_result, read_results, settings_hash, write_results,
)
from conftest import REPO

METRICS = {
    "mIoU": 0.5, "mF1": 0.6, "mPrecision": 0.7, "mRecall": 0.55, "oAcc": 0.9, "mAcc": 0.55,
    "IoU": {"Not burned": 0.8, "Burn scar": 0.2}, "F1": {"Not burned": 0.9, "Burn scar": 0.3},
    "Precision": {"Not burned": 0.9, "Burn scar": 0.5}, "Recall": {"Not burned": 0.9, "Burn scar": 0.2},
    "pixels": 100, "confusion_matrix": [[80, 5], [10, 5]],
}


def config(**changes: Any) -> RunConfig:
    settings = tuple(changes.pop("settings", ("optimizer.lr=1e-3",)))
    fields = dict(
        dataset="synthetic_burnscars", encoder="dofa", decoder="seg_upernet", preprocessing="seg_default",
        criterion="cross_entropy", task="segmentation", optimizer="adamw", lr_scheduler="multi_step_lr",
        mode="frozen", seed=0, settings=settings, settings_hash=settings_hash(settings), train_crop_stride=1,
        encoder_weights="weights/dofa.pth", n_epochs=3, batch_size_per_process=8, world_size=1, device="cpu",
    )
    return RunConfig(**{**fields, **changes})


def completed(run_dir: Path, **changes: Any) -> Any:
    cost = Cost(total_params=1000, trainable_params=200, encoder_params=800, wall_time_s=12.5, train_time_s=8.0,
                epoch_time_s=2.7, train_images_per_s=30.0, val_time_s=1.0, test_time_s=0.5, feature_cache_time_s=0.0,
                peak_memory_mb=512.0)
    return completed_result(run_dir, config(**changes), best_epoch=2, val=METRICS, test=METRICS, cost=cost,
                            versions={"torch": torch.__version__})


def test_completed_result_round_trips_through_results_json(tmp_path: Path) -> None:
    result = completed(tmp_path)
    path = write_results(tmp_path, result)
    assert path == tmp_path / "results.json"
    assert read_results(tmp_path) == result and read_results(path) == result
    data = json.loads(path.read_text())
    assert data["schema_version"] == SCHEMA_VERSION and data["status"] == "completed"
    assert data["config"]["settings"] == ["optimizer.lr=1e-3"] and data["config"]["train_crop_stride"] == 1
    assert set(data) == {"schema_version", "status", "run_dir", "versions", "config", "best_epoch", "val", "test", "cost"}
    assert completed_results(tmp_path) == result


def test_undefined_metrics_are_written_and_read_as_nan(tmp_path: Path) -> None:
    metrics = {**METRICS, "Precision": {"Not burned": 0.9, "Burn scar": float("nan")}}
    result = completed_result(tmp_path, config(), best_epoch=1, val=metrics, test=metrics,
                              cost=Cost(total_params=1, trainable_params=1), versions={})
    write_results(tmp_path, result)
    assert math.isnan(read_results(tmp_path).test["Precision"]["Burn scar"])


def test_failed_result_keeps_the_error_and_traceback_and_is_not_completed(tmp_path: Path) -> None:
    try:
        raise FloatingPointError("non-finite loss")
    except FloatingPointError as error:
        result = failed_result(tmp_path, error, {"torch": torch.__version__})
    write_results(tmp_path, result)
    read = read_results(tmp_path)
    assert read == result and read.error == "FloatingPointError: non-finite loss"
    assert "Traceback" in read.traceback and "non-finite loss" in read.traceback
    assert "test" not in json.loads((tmp_path / "results.json").read_text())
    assert completed_results(tmp_path) is None
    assert completed_results(tmp_path / "nothing_here") is None


def malform(data: dict[str, Any], case: str) -> Any:
    config = data["config"]
    return {
        "seed as text": {**data, "config": {**config, "seed": "zero"}},
        "no test metrics": {k: v for k, v in data.items() if k != "test"},
        "unknown status": {**data, "status": "done"},
        "unknown field": {**data, "cost": {**data["cost"], "gpu_hours": 1.0}},
        "newer schema": {**data, "schema_version": SCHEMA_VERSION + 1},
        "no crop protocol": {**data, "config": {k: v for k, v in config.items() if k != "train_crop_stride"}},
        "hash of other settings": {**data, "config": {**config, "settings_hash": "deadbeef"}},
        "fraction above one": {**data, "config": {**config, "train_fraction": 1.5}},
        "subset hash of the whole split": {**data, "config": {**config, "subset_sha256": "ab" * 32}},
        "a list": [data],
    }[case]


@pytest.mark.parametrize("case, message", [
    ("seed as text", "config.seed is \"zero\", expected int"),
    ("no test metrics", "a completed run needs test"),
    ("unknown status", "status is 'done'"),
    ("unknown field", "unknown field(s) cost.gpu_hours"),
    ("newer schema", f"schema_version {SCHEMA_VERSION + 1}"),
    ("no crop protocol", "config.train_crop_stride is missing"),
    ("hash of other settings", "does not match config.settings"),
    ("fraction above one", "config.train_fraction is 1.5, expected a number in (0, 1]"),
    ("subset hash of the whole split", "config.subset_sha256 is 'abab"),
    ("a list", "expected a JSON object"),
])
def test_a_malformed_results_json_is_an_error_that_names_the_file_and_the_problem(tmp_path: Path, case: str, message: str) -> None:
    path = write_results(tmp_path, completed(tmp_path))
    path.write_text(json.dumps(malform(json.loads(path.read_text()), case)))
    with pytest.raises(ResultsError) as raised:
        read_results(tmp_path)
    assert str(path) in str(raised.value) and message in str(raised.value)
    with pytest.raises(ResultsError, match="results.json"):
        completed_results(tmp_path)


def test_a_results_json_that_is_not_json_is_an_error_that_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "results.json").write_text('{"status": "completed", ')
    with pytest.raises(ResultsError, match=f"{tmp_path / 'results.json'} is not a valid results.json: not JSON"):
        read_results(tmp_path)


def test_files_written_before_the_schema_still_read(tmp_path: Path) -> None:
    """Version 1 (no schema_version): fewer config and cost fields; the settings hash is derived."""
    legacy = {
        "status": "completed", "run_dir": str(tmp_path), "best_epoch": 2, "val": METRICS, "test": METRICS,
        "config": {"dataset": "hlsburnscars", "encoder": "prithvi", "decoder": "seg_upernet", "preprocessing": "seg_default",
                   "criterion": "cross_entropy", "mode": "frozen", "seed": 1, "n_epochs": 3, "world_size": 1,
                   "device": "cpu", "settings": ["optimizer.lr=1e-4"], "batch_size_per_process": 8, "encoder_weights": None},
        "cost": {"total_params": 10, "trainable_params": 2, "encoder_params": 8, "wall_time_s": 3.0, "images_per_s": 1.0},
        "versions": {"torch": "2.0"},
    }
    (tmp_path / "results.json").write_text(json.dumps(legacy))
    result = read_results(tmp_path)
    assert result.schema_version == 1 and result.config.train_crop_stride is None and result.config.optimizer is None
    assert result.config.settings_hash == settings_hash(["optimizer.lr=1e-4"]) and result.cost.train_time_s is None
    assert (result.config.train_fraction, result.config.subset_draw, result.config.subset_sha256) == (1.0, 0, None)


def test_version_2_files_without_label_fractions_read_as_the_whole_split(tmp_path: Path) -> None:
    path = write_results(tmp_path, completed(tmp_path))
    data = json.loads(path.read_text())
    for name in ("train_fraction", "subset_draw", "subset_sha256"):
        del data["config"][name]
    path.write_text(json.dumps(data))
    config = read_results(tmp_path).config
    assert (config.train_fraction, config.subset_draw, config.subset_sha256) == (1.0, 0, None)
    subset = completed(tmp_path, train_fraction=0.1, subset_draw=2, subset_sha256="0f" * 32)
    write_results(tmp_path, subset)
    assert read_results(tmp_path) == subset and subset.config.identity() != config.identity()


def test_the_run_folder_suffix_is_the_settings_hash() -> None:
    choices = {"dataset": "d", "encoder": "e", "decoder": "x"}
    settings = ["optimizer.lr=1e-3", "preprocessing=other"]
    assert rundir.run_stem(choices, "frozen", 0, settings) == f"d_e_x_frozen_s0_{settings_hash(settings)}"
    assert rundir.run_stem(choices, "frozen", 0, []) == "d_e_x_frozen_s0" and settings_hash([]) == ""


def test_summary_carries_the_full_job_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    overrides = ["dataset=synthetic_burnscars", "optimizer.lr=1e-3", "train_crop_stride=16", "seed=3"]
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    choices = {group: f"{group}_choice" for group in CHOICE_GROUPS}
    monkeypatch.setattr(rundir, "setting_overrides", lambda: ["optimizer.lr=1e-3", "train_crop_stride=16"])
    summary = rundir.summary(cfg, choices, "frozen", DistContext(0, 2, 0, torch.device("cpu")))
    assert {group: getattr(summary, group) for group in CHOICE_GROUPS} == {**choices, "temporal": None}  # one frame
    assert (summary.mode, summary.seed, summary.train_crop_stride, summary.world_size) == ("frozen", 3, 16, 2)
    assert (summary.train_fraction, summary.subset_draw, summary.subset_sha256) == (1.0, 0, None)  # the whole split
    assert summary.settings == ("optimizer.lr=1e-3", "train_crop_stride=16")
    assert summary.settings_hash == settings_hash(summary.settings)
    assert summary.identity(seed=False) + (3,) == summary.identity()


@pytest.mark.parametrize("encoder", ["dofa", "prithvi"])  # per frame, and all frames at once
def test_the_temporal_head_is_recorded_on_multi_temporal_data(encoder: str) -> None:
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=["dataset=synthetic_burnintensity", f"encoder={encoder}"])
    choices = {group: f"{group}_choice" for group in CHOICE_GROUPS}
    summary = rundir.summary(cfg, choices, "frozen", DistContext(0, 1, 0, torch.device("cpu")))
    assert summary.temporal == "temporal_choice"


def test_a_job_has_one_identity_alone_and_in_a_sweep() -> None:
    """A sweep passes ``optimizer.lr=0.001`` where the command line said ``1e-3``, one value per key."""
    alone = canonical_overrides(["optimizer.lr=1e-3", "task.trainer.n_epochs=2", "task.trainer.n_epochs=1", "~foo"])
    in_sweep = canonical_overrides(["optimizer.lr=0.001", "task.trainer.n_epochs=1", "~foo"])
    assert alone == in_sweep == ["optimizer.lr=0.001", "task.trainer.n_epochs=1", "~foo"]
