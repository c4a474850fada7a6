"""The two jobs behind ``benchmark/run.py``: train (then test the best checkpoint) and test a saved run."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from benchmark import builders, compat, failures
from benchmark.atomic import write_json
from benchmark.config_checks import check_config
from benchmark.distributed import DistContext, barrier, init_distributed, process_seed, shutdown
from benchmark.engine.checkpoint import load_checkpoint, seed_everything
from benchmark.engine.precision import peak_memory_mb
from benchmark.engine.trainer import Trainer
from benchmark.failures import PeerFailedError
from benchmark.models.segmentor import resolve_mode
from benchmark.results import CHOICE_GROUPS, Cost, completed_result, completed_results, failed_result, write_results
from benchmark.saved_run import checkpoint_file, load_run_config, load_trained_model
from benchmark.rundir import choose_run_dir, package_versions, save_config, setup_logging, summary

log = logging.getLogger(__name__)

TEST_KEYS = ("ckpt_dir", "ckpt", "split", "output_path")


def hydra_choices() -> dict[str, str]:
    """The config-group options this run was composed from (e.g. ``{"encoder": "dofa", ...}``)."""
    choices = HydraConfig.get().runtime.choices
    return {group: str(choices[group]) for group in CHOICE_GROUPS if group in choices}


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
    """Fine-tune, validate, test the best checkpoint and write ``results.json`` in the run folder.

    Settings are checked before anything starts; every file of every split before any model work. A run
    that fails leaves a failed ``results.json`` with the error of the process that failed first.
    """
    started = time.time()
    check_config(cfg)
    compat.apply_aliases(cfg)  # PANGAEA spellings set our keys before anything reads them or saves the config
    ctx = init_distributed(cfg.device)
    run_dir: Path | None = None
    with failures.sigterm_raises():
        try:
            setup_logging(ctx, None)
            mode = resolve_mode(cfg.mode, cfg.finetune)
            choices = hydra_choices()
            folder, resuming = choose_run_dir(cfg, choices, mode, ctx)
            finished = completed_results(folder) if cfg.resume else None
            if finished is not None:
                log.info("%s has already completed (resume=true): nothing to do", folder)
                return finished.to_dict()
            run_dir = folder
            return fit_and_test(cfg, ctx, run_dir, resuming, choices, mode, started)
        except BaseException as error:
            if run_dir is not None:
                report_failure(ctx, run_dir, error, started)
            raise
        finally:
            shutdown()


def fit_and_test(
    cfg: DictConfig, ctx: DistContext, run_dir: Path, resuming: bool, choices: dict[str, str], mode: str, started: float
) -> dict[str, Any]:
    """The run itself: build, train (or continue), test the best checkpoint, write ``results.json``."""
    setup_logging(ctx, run_dir / "train.log")
    log.info("Run folder %s (%d process(es) on %s, mode=%s)", run_dir, ctx.world_size, ctx.device, mode)
    compat.log_pangaea_keys(cfg)
    if ctx.is_main:
        save_config(cfg, choices, mode, run_dir)
    seed_everything(int(cfg.seed))
    datasets = builders.build_datasets(cfg, ctx)  # every file of every split checked before the work
    builders.check_train_size(cfg, ctx, len(datasets["train"]))
    model = builders.build_segmentor(cfg, mode, ctx)
    builders.check_train_batch(cfg, model, ctx)
    counts = model.parameter_counts()
    log.info("Parameters: %s total, %s trainable", f"{counts['total_params']:,}", f"{counts['trainable_params']:,}")
    features = builders.build_feature_cache(cfg, mode, model, ctx)
    evaluators = {
        split: builders.build_evaluator(
            cfg, builders.eval_loader(cfg, split, ctx, datasets[split], features), model.encoder.input_size, ctx
        )
        for split in ("val", "test")
    }
    wandb_run = start_wandb(cfg, run_dir) if cfg.use_wandb and ctx.is_main else None
    try:
        trainer = build_trainer(cfg, ctx, run_dir, model, builders.train_loader(cfg, ctx, datasets["train"], features),
                                evaluators["val"], wandb_run)
        # Model weights were drawn from the shared seed; dropout and drop-path masks differ per rank.
        seed_everything(process_seed(int(cfg.seed), ctx.rank))
        if resuming:
            trainer.resume(run_dir / "checkpoints" / "last.pt", trusted=cfg.trusted_pickle_files)
        else:
            trainer.start_afresh()
        best_val = trainer.fit()
        best_epoch, test_metrics, test_seconds = evaluate_best_checkpoint(cfg, run_dir, model, evaluators["test"])
        cost = run_cost(trainer, counts, wall_s=time.time() - started, test_s=test_seconds,
                        cache_s=features.seconds if features is not None else 0.0, device=ctx.device)
        result = completed_result(
            run_dir, summary(cfg, choices, mode, ctx), best_epoch=best_epoch, val=best_val, test=test_metrics,
            cost=cost, versions=package_versions(),
        )
        if ctx.is_main:
            write_results(run_dir, result)
            if wandb_run is not None:
                wandb_run.summary.update({f"test/{k}": v for k, v in test_metrics.items() if isinstance(v, float)})
            log.info("Results written to %s", run_dir / "results.json")
        return result.to_dict()
    finally:
        if wandb_run is not None:
            wandb_run.finish()


def run_cost(trainer: Trainer, counts: dict[str, int], *, wall_s: float, test_s: float, cache_s: float, device: Any) -> Cost:
    """What a run cost: its parameter ``counts``, the trainer's time and images, and the given wall, test and
    feature-cache seconds (a lockstep head's share of them)."""
    return Cost(
        **counts,
        wall_time_s=wall_s,
        train_time_s=trainer.train_seconds,
        epoch_time_s=trainer.train_seconds / trainer.n_epochs,
        train_images_per_s=trainer.train_images / max(trainer.train_seconds, 1e-9),
        val_time_s=trainer.eval_seconds,
        test_time_s=test_s,
        feature_cache_time_s=cache_s,
        peak_memory_mb=peak_memory_mb(device),
    )


def evaluate_best_checkpoint(cfg: DictConfig, run_dir: Path, model: Any, evaluator: Any) -> tuple[int, dict[str, Any], float]:
    """``(best epoch, test metrics, seconds)`` of the run's best checkpoint."""
    barrier()  # rank 0 has written best.pt
    best = load_checkpoint(run_dir / "checkpoints" / "best.pt", trusted=cfg.trusted_pickle_files)
    model.load_trainable_state_dict(best["model"])
    started = time.perf_counter()
    metrics = evaluator.evaluate(model, desc="test")
    log.info(
        "Test (best epoch %d): mIoU %.4f  %s", best["epoch"] + 1, metrics["mIoU"],
        "  ".join(f"IoU[{k}] {v:.4f}" for k, v in metrics["IoU"].items()),
    )
    return best["epoch"] + 1, metrics, time.perf_counter() - started


def build_trainer(
    cfg: DictConfig, ctx: DistContext, run_dir: Path, model: Any, train_loader: Any, val_evaluator: Any, wandb_run: Any
) -> Trainer:
    optimizer = builders.build_optimizer(cfg, model)
    scheduler = instantiate(cfg.lr_scheduler)(optimizer, total_iters=len(train_loader) * cfg.task.trainer.n_epochs)
    criterion = instantiate(cfg.criterion).to(ctx.device)
    trainer_cfg = cfg.task.trainer
    return Trainer(
        model, criterion, optimizer, scheduler, train_loader, val_evaluator, ctx, run_dir,
        n_epochs=trainer_cfg.n_epochs,
        eval_interval=trainer_cfg.eval_interval,
        log_interval=trainer_cfg.log_interval,
        ckpt_interval=trainer_cfg.ckpt_interval,
        resume_every_s=trainer_cfg.resume_every_s,
        grad_clip=trainer_cfg.grad_clip,
        precision=trainer_cfg.precision,
        best_metric_key=trainer_cfg.best_metric_key,
        use_wandb=cfg.use_wandb,
        wandb_run=wandb_run,
    )


def report_failure(ctx: DistContext, run_dir: Path, error: BaseException, since: float) -> None:
    """Record ``error`` and, on rank 0, write the failed ``results.json`` with the error of the rank that
    failed first (raising it as :class:`~benchmark.failures.PeerFailedError` when it was another rank's)."""
    failures.ignore_sigterm()
    own = failures.record(run_dir, ctx.rank, error) if ctx.distributed else None
    if not ctx.is_main:
        return
    cause = failures.first_failure(run_dir, own, since) if own is not None else None
    if cause is None or cause.rank == ctx.rank:
        write_results(run_dir, failed_result(run_dir, error, package_versions()))
        failures.clear(run_dir)
        return
    reported = PeerFailedError(f"rank {cause.rank} failed first: {cause.error}")
    log.error("Run failed: %s\n%s", reported, cause.traceback)
    write_results(run_dir, failed_result(run_dir, reported, package_versions(), traceback_text=cause.traceback))
    failures.clear(run_dir)
    raise reported from error


def test(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate ``cfg.ckpt_dir``'s checkpoint on ``cfg.split`` and write the metrics as JSON."""
    run_dir = Path(cfg.ckpt_dir)
    run_cfg = load_run_config(cfg, TEST_KEYS)
    ctx = init_distributed(run_cfg.device)
    try:
        setup_logging(ctx, run_dir / "test.log" if ctx.is_main else None)
        checkpoint_path = checkpoint_file(run_dir, cfg.ckpt)
        model, checkpoint = load_trained_model(run_cfg, checkpoint_path, ctx)
        features = builders.build_feature_cache(run_cfg, run_cfg.mode, model, ctx)
        loader = builders.eval_loader(run_cfg, cfg.split, ctx, builders.build_dataset(run_cfg, cfg.split, ctx), features)
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
