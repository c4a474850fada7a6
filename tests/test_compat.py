"""PANGAEA's config keys (benchmark/compat.py): accepted where PANGAEA users type them, logged as ignored or
mapped to our keys, kept out of the dataset classes, the feature-cache key and the job identity; values that
cannot work are config errors that name the key and what it can be."""

from __future__ import annotations

import inspect
import json
import logging
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from benchmark import compat
from benchmark.builders import cache_key
from benchmark.config_checks import ConfigError, check_config, config_problems
from benchmark.data.hlsburnscars import HLSBurnScars
from benchmark.data.synthetic import SyntheticBurnScars
from benchmark.results import settings_hash
from benchmark.rundir import EXECUTION_KEYS
from conftest import REPO, only_run_dir, run_benchmark, tiny_overrides

ACCEPTED = [
    "dataset.distribution=[0.9,0.1]", "task.evaluator.inference_mode=sliding",
    "task.trainer.use_wandb=false", "use_wandb=false",
]


def compose_train(*overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        return compose("train", overrides=list(overrides))


@pytest.mark.parametrize("dataset", ["hlsburnscars", "synthetic_burnscars"])
def test_every_pangaea_key_is_in_our_configs_so_it_can_be_given_without_a_plus(dataset: str) -> None:
    cfg = compose_train(f"dataset={dataset}")
    missing = [key for key in compat.PANGAEA_KEYS if OmegaConf.select(cfg, key, default="<absent>") == "<absent>"]
    assert missing == []


def test_pangaea_keys_are_accepted_and_each_logged_as_ignored_or_mapped(caplog: pytest.LogCaptureFixture) -> None:
    cfg = compose_train(
        *ACCEPTED, "finetune=true", "limited_label_train=0.5", "limited_label_strategy=stratified", "limited_label_val=1",
        "stratification_bins=3", "data_replicate=1", "use_final_ckpt=false",
    )
    assert config_problems(cfg, check_work_dir=False) == []
    compat.apply_aliases(cfg)
    with caplog.at_level(logging.INFO, logger="benchmark.compat"):
        compat.log_pangaea_keys(cfg)
    lines = {record.getMessage().split("=", 1)[0].removeprefix("PANGAEA key "): record.getMessage() for record in caplog.records}
    assert "dataset.multi_temporal=false is used as the frames per sample T" in lines["dataset.multi_temporal"]
    assert "dataset.distribution=[0.9, 0.1] is ignored" in lines["dataset.distribution"]
    assert "task.evaluator.inference_mode=sliding is ignored" in lines["task.evaluator.inference_mode"]
    assert "dataset.dataset_name=HLSBurnScars is ignored" in lines["dataset.dataset_name"]
    assert "task.trainer.use_wandb=false sets use_wandb=false" in lines["task.trainer.use_wandb"]
    assert "finetune=true sets mode=unfrozen" in lines["finetune"] and cfg.mode == "unfrozen"
    assert "limited_label_train=0.5 sets dataset.train_fraction=0.5" in lines["limited_label_train"]
    assert "limited_label_strategy=stratified is ignored" in lines["limited_label_strategy"]
    assert "stratification_bins=3 is ignored" in lines["stratification_bins"]
    assert "use_final_ckpt=false is ignored: the checkpoint of the best validation epoch is tested" in lines["use_final_ckpt"]
    assert set(lines) == set(compat.PANGAEA_KEYS), "one line per key"


def test_finetune_null_is_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    cfg = compose_train()
    with caplog.at_level(logging.INFO, logger="benchmark.compat"):
        compat.log_pangaea_keys(cfg)
    assert not any("finetune" in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("task.evaluator.inference_mode=whole", "task.evaluator.inference_mode=whole: must be sliding; full tiles"),
        ("dataset.multi_temporal=0", "dataset.multi_temporal=0: must be false or the number of frames per sample"),
        ("dataset.multi_modal=2", "dataset.multi_modal=2: must be false or true;"),
        ("task.trainer.use_wandb=1", "task.trainer.use_wandb=1: must be true or false;"),
        ("finetune=yes", "finetune=yes: must be null or true or false;"),
        ("limited_label_val=0.1", "limited_label_val=0.1: must be null or 1 or 1.0; models are chosen on the whole validation split"),
        ("data_replicate=4", "data_replicate=4: must be null or 1;"),
        ("use_final_ckpt=true", "use_final_ckpt=true: must be null or false; the checkpoint of the best validation epoch"),
    ],
)
def test_an_unsupported_value_is_a_config_error_naming_the_key_and_what_is_supported(override: str, expected: str) -> None:
    cfg = compose_train(override)
    with pytest.raises(ConfigError) as error:
        check_config(cfg, check_work_dir=False)
    assert expected in str(error.value)


def test_contradicting_spellings_are_a_config_error() -> None:
    problems = config_problems(compose_train("use_wandb=true", "task.trainer.use_wandb=false"), check_work_dir=False)
    assert problems == [
        "use_wandb=true contradicts task.trainer.use_wandb=false: they are one switch (task.trainer.use_wandb "
        "is PANGAEA's spelling). Give only one of the two."
    ]
    problems = config_problems(compose_train("mode=random", "finetune=false"), check_work_dir=False)
    assert len(problems) == 1 and "finetune=false contradicts mode=random" in problems[0]


@pytest.mark.parametrize("override", ["use_wandb=true", "task.trainer.use_wandb=true"])
def test_either_wandb_spelling_turns_on_the_one_effective_key(override: str) -> None:
    cfg = compose_train(override)
    assert config_problems(cfg, check_work_dir=False) == []
    compat.apply_aliases(cfg)
    assert cfg.use_wandb is True and cfg.task.trainer.use_wandb is True
    off = compose_train()
    compat.apply_aliases(off)
    assert off.use_wandb is False


def test_dataset_classes_take_no_key_that_does_nothing() -> None:
    hls = inspect.signature(HLSBurnScars).parameters
    assert not set(compat.DATASET_KEYS) & set(hls)
    assert "img_size" in inspect.signature(SyntheticBurnScars).parameters  # the size of the scenes it generates
    assert set(compat.DATASET_KEYS) & set(compat.dataset_arguments(compose_train().dataset)) == set()
    synthetic = compat.dataset_arguments(compose_train("dataset=synthetic_burnscars", "dataset.img_size=64").dataset)
    assert synthetic["img_size"] == 64 and "distribution" not in synthetic and "dataset_name" not in synthetic


def test_ignored_keys_change_neither_the_feature_cache_key_nor_the_job_identity() -> None:
    ignored = ["dataset.distribution=[0.5,0.5]", "dataset.dataset_name=Other",
               "task.evaluator.inference_mode=sliding", "dataset.multi_modal=false"]
    for split in ("train", "test"):
        assert cache_key(compose_train(*ignored), split) == cache_key(compose_train(), split)
        assert cache_key(compose_train("dataset.split_seed=1"), split) != cache_key(compose_train(), split)
    synthetic = ["dataset=synthetic_burnscars", "dataset.img_size=64"]  # the scene size makes other data
    assert cache_key(compose_train(*synthetic), "test")["dataset"]["img_size"] == 64
    assert compat.IGNORED_KEYS <= EXECUTION_KEYS
    assert {"use_wandb", "task.trainer.use_wandb"} <= EXECUTION_KEYS
    assert "dataset.img_size" not in EXECUTION_KEYS  # it changes what a run computes


@pytest.mark.slow
def test_a_pangaea_command_runs_logs_its_keys_and_keeps_the_job_name(synthetic_root: Path, tmp_path: Path) -> None:
    run_benchmark(tiny_overrides(synthetic_root, tmp_path / "wd") + ACCEPTED)
    run_dir = only_run_dir(tmp_path / "wd")
    settings = json.loads((run_dir / "results.json").read_text())["config"]["settings"]
    assert settings and not {s.split("=", 1)[0] for s in settings} & {a.split("=", 1)[0] for a in ACCEPTED}, settings
    assert run_dir.name.endswith(settings_hash(settings)), "the job identity leaves the ignored keys out"
    log = (run_dir / "train.log").read_text()
    for line in ("dataset.multi_temporal=false is used as the frames per sample", "dataset.distribution=[0.9, 0.1] is ignored",
                 "task.evaluator.inference_mode=sliding is ignored", "task.trainer.use_wandb=false sets use_wandb=false"):
        assert line in log, line
    assert not (run_dir / "wandb").exists()
    # at evaluation time too, an unsupported value stops before any work and says what is supported
    bad = run_benchmark(["--config-name=test", f"ckpt_dir={run_dir}", "task.evaluator.inference_mode=whole"], check=False)
    assert bad.returncode != 0 and "task.evaluator.inference_mode=whole: must be sliding" in bad.stdout + bad.stderr
