"""The two jobs behind ``benchmark/run.py``: train (then test the best checkpoint) and test a saved run."""

from __future__ import annotations

import json
import logging
import time
import traceback
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from benchmark import builders
from benchmark.distributed import DistContext, barrier, init_distributed, shutdown
from benchmark.engine.checkpoint import load_checkpoint, seed_everything, write_json
from benchmark.engine.trainer import Trainer, peak_memory_mb
from benchmark.models.segmentor import resolve_mode
from benchmark.rundir import choose_run_dir, package_versions, save_config, setup_logging, summary

log = logging.getLogger(__name__)

GROUPS = ("dataset", "encoder", "decoder", "preprocessing", "criterion", "task", "optimizer", "lr_scheduler")
TEST_KEYS = ("ckpt_dir", "ckpt", "split", "output_path")


def hydra_choices() -> dict[str, str]:
    """The config-group options this run was composed from (e.g. ``{"encoder": "dofa", ...}``)."""
    choices = HydraConfig.get().runtime.choices
    return {group: str(choices[group]) for group in GROUPS if group in choices}


def completed_results(run_dir: Path) -> dict[str, Any] | None:
    """The results of a run folder whose run finished, else None."""
    path = run_dir / "results.json"
    if not path.is_file():
        return None
    results = json.loads(path.read_text())
    return results if results.get("status") == "completed" else None


def start_wandb(cfg: DictConfig, run_dir: Path) -> Any:
    import wandb

    return wandb.init(
        project=cfg.wandb_project,
        name=run_dir.name,
        id=run_dir.name.replace(".", "-"),
        dir=str(run_dir),
        config=OmegaConf.to_container(cfg, resolve=True),
        resume="allow",
    )


def train(cfg: DictConfig) -> dict[str, Any] | None:
    """Fine-tune, validate, test the best checkpoint and write ``results.json`` in the run folder."""
    started = time.time()
    ctx = init_distributed(cfg.device)
    run_dir: Path | None = None
    wandb_run = None
    try:
        setup_logging(ctx, None)
        mode = resolve_mode(cfg.mode, cfg.finetune)
        cfg.train_crop_stride = builders.resolve_train_crop_stride(cfg, mode)
        choices = hydra_choices()
        run_dir, resuming = choose_run_dir(cfg, choices, mode, ctx)
        finished = completed_results(run_dir) if cfg.resume else None
        if finished is not None:
            log.info("%s has already completed (resume=true): nothing to do", run_dir)
            run_dir = None  # leave its results.json as it is
            return finished
        setup_logging(ctx, run_dir / "train.log")
        log.info("Run folder %s (%d process(es) on %s, mode=%s)", run_dir, ctx.world_size, ctx.device, mode)
        if ctx.is_main:
            save_config(cfg, choices, mode, run_dir)
        seed_everything(int(cfg.seed))

        model = builders.build_segmentor(cfg, mode, ctx)
        builders.check_train_batch(cfg, model, ctx)
        counts = model.parameter_counts()
        log.info("Parameters: %s total, %s trainable", f"{counts['total_params']:,}", f"{counts['trainable_params']:,}")
        features = builders.build_feature_cache(cfg, mode, model, ctx)
        train_loader = builders.train_loader(cfg, ctx, features)
        window = model.encoder.input_size
        val_evaluator = builders.build_evaluator(cfg, builders.eval_loader(cfg, "val", ctx, features), window, ctx)
        optimizer = builders.build_optimizer(cfg, model)
        scheduler = instantiate(cfg.lr_scheduler)(optimizer, total_iters=len(train_loader) * cfg.task.trainer.n_epochs)
        criterion = instantiate(cfg.criterion).to(ctx.device)
        trainer_cfg = cfg.task.trainer
        if trainer_cfg.use_wandb and ctx.is_main:
            wandb_run = start_wandb(cfg, run_dir)
        trainer = Trainer(
            model, criterion, optimizer, scheduler, train_loader, val_evaluator, ctx, run_dir,
            n_epochs=trainer_cfg.n_epochs,
            eval_interval=trainer_cfg.eval_interval,
            log_interval=trainer_cfg.log_interval,
            ckpt_interval=trainer_cfg.ckpt_interval,
            grad_clip=trainer_cfg.grad_clip,
            precision=trainer_cfg.precision,
            best_metric_key=trainer_cfg.best_metric_key,
            use_wandb=trainer_cfg.use_wandb,
            wandb_run=wandb_run,
        )
        if resuming:
            trainer.resume(run_dir / "checkpoints" / "last.pt")
        best_val = trainer.fit()

        barrier()  # rank 0 has written best.pt
        best = load_checkpoint(run_dir / "checkpoints" / "best.pt")
        model.load_trainable_state_dict(best["model"])
        test_evaluator = builders.build_evaluator(cfg, builders.eval_loader(cfg, "test", ctx, features), window, ctx)
        test_started = time.perf_counter()
        test_metrics = test_evaluator.evaluate(model, desc="test")
        test_seconds = time.perf_counter() - test_started
        log.info(
            "Test (best epoch %d): mIoU %.4f  %s",
            best["epoch"] + 1, test_metrics["mIoU"],
            "  ".join(f"IoU[{k}] {v:.4f}" for k, v in test_metrics["IoU"].items()),
        )
        results = {
            "status": "completed",
            "run_dir": str(run_dir),
            "config": summary(cfg, choices, mode, ctx),
            "best_epoch": best["epoch"] + 1,
            "val": best_val,
            "test": test_metrics,
            "cost": {
                **counts,
                "wall_time_s": time.time() - started,
                "train_time_s": trainer.train_seconds,
                "epoch_time_s": trainer.train_seconds / trainer.n_epochs,
                "train_images_per_s": trainer.train_images / max(trainer.train_seconds, 1e-9),
                "val_time_s": trainer.eval_seconds,
                "test_time_s": test_seconds,
                "feature_cache_time_s": features.seconds if features is not None else 0.0,
                "peak_memory_mb": peak_memory_mb(ctx.device),
            },
            "versions": package_versions(),
        }
        if ctx.is_main:
            write_json(run_dir / "results.json", results)
            if wandb_run is not None:
                wandb_run.summary.update({f"test/{k}": v for k, v in test_metrics.items() if isinstance(v, float)})
            log.info("Results written to %s", run_dir / "results.json")
        return results
    except BaseException as error:
        if ctx.is_main and run_dir is not None:
            write_json(
                run_dir / "results.json",
                {
                    "status": "failed",
                    "run_dir": str(run_dir),
                    "error": f"{type(error).__name__}: {error}",
                    "traceback": traceback.format_exc(),
                    "versions": package_versions(),
                },
            )
        raise
    finally:
        if wandb_run is not None:
            wandb_run.finish()
        shutdown()


def merge_overrides(saved: DictConfig, overrides: list[str]) -> DictConfig:
    """Apply command-line ``key=value`` overrides to a saved run config (they win)."""
    dotlist = []
    for override in overrides:
        key, _, value = override.lstrip("+").partition("=")
        if key in TEST_KEYS:
            continue
        if key.startswith("~") or not _:
            raise ValueError(f"cannot apply override {override!r} at test time; use key=value")
        if key in GROUPS or (key in saved and OmegaConf.is_dict(saved[key]) and "." not in key):
            raise ValueError(
                f"{override!r} would swap a whole config group; a saved run is evaluated with the groups "
                f"it was trained with ({key}={saved.choices.get(key, '?')}). Override single keys instead, "
                f"e.g. {key}.<name>=<value>."
            )
        dotlist.append(f"{key}={value}")
    merged = OmegaConf.merge(saved, OmegaConf.from_dotlist(dotlist))
    return merged


def test(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate ``cfg.ckpt_dir``'s checkpoint on ``cfg.split`` and write the metrics as JSON."""
    run_dir = Path(cfg.ckpt_dir)
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found: ckpt_dir must be a run folder made by benchmark/run.py")
    run_cfg = merge_overrides(OmegaConf.load(config_path), list(HydraConfig.get().overrides.task))
    ctx = init_distributed(run_cfg.device)
    try:
        setup_logging(ctx, run_dir / "test.log" if ctx.is_main else None)
        checkpoint_path = Path(cfg.ckpt) if cfg.ckpt not in ("best", "last") else run_dir / "checkpoints" / f"{cfg.ckpt}.pt"
        model = builders.build_segmentor(run_cfg, run_cfg.mode, ctx)
        checkpoint = load_checkpoint(checkpoint_path)
        model.load_trainable_state_dict(checkpoint["model"])
        features = builders.build_feature_cache(run_cfg, run_cfg.mode, model, ctx)
        loader = builders.eval_loader(run_cfg, cfg.split, ctx, features)
        evaluator = builders.build_evaluator(run_cfg, loader, model.encoder.input_size, ctx)
        metrics = evaluator.evaluate(model, desc=cfg.split)
        log.info("%s on %s (%d process(es)): mIoU %.4f", checkpoint_path, cfg.split, ctx.world_size, metrics["mIoU"])
        output = Path(cfg.output_path) if cfg.output_path else run_dir / "evaluations" / f"{time.strftime('%Y%m%d-%H%M%S')}_{cfg.split}.json"
        payload = {
            "status": "completed",
            "checkpoint": str(checkpoint_path),
            "epoch": checkpoint["epoch"] + 1,
            "split": cfg.split,
            "dataset_root": str(run_cfg.dataset.root_path),
            "batch_size_per_process": int(run_cfg.test_batch_size),
            "world_size": ctx.world_size,
            "device": str(ctx.device),
            "metrics": metrics,
            "versions": package_versions(),
        }
        if ctx.is_main:
            write_json(output, payload)
            log.info("Metrics written to %s", output)
        return payload
    finally:
        shutdown()
