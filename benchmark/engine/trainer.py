"""Training loop: DDP, bf16 autocast on CUDA, per-iteration LR schedule, evaluation, checkpoints, resume."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from benchmark.distributed import DistContext, all_gather_object, all_reduce_max
from benchmark.engine.checkpoint import (
    clear_run_folder, keep_epochs_of, load_checkpoint, restore_rng_state, rng_state, save_checkpoint,
)
from benchmark.engine.evaluator import Evaluator
from benchmark.engine.precision import autocast_context, resolve_precision, to_device
from benchmark.models.segmentor import Segmentor

log = logging.getLogger(__name__)
# What a checkpoint carries of the run's progress besides weights, optimizer, schedule and RNG.
COUNTERS = ("best_metric", "best_epoch", "best_val_metrics", "train_images", "train_seconds", "eval_seconds")


class ResumeError(RuntimeError):
    """The checkpoint cannot be continued by this run."""


class NonFiniteLossError(FloatingPointError):
    """The loss or the gradients became NaN or infinite."""


def training_forward(model: Segmentor, ctx: DistContext) -> Callable[[dict[str, Any], tuple[int, int]], torch.Tensor]:
    """``forward(inputs, output_size)`` for training, with DDP over the trainable part only: with a frozen
    encoder only the decoder is wrapped, and ``inputs`` may hold cached ``features`` (:func:`to_device`)."""
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    if model.encoder_trains:
        net = DistributedDataParallel(model, device_ids=device_ids) if ctx.distributed else model
        return lambda inputs, output_size: net(inputs["image"], output_size)
    decoder = DistributedDataParallel(model.decoder, device_ids=device_ids) if ctx.distributed else model.decoder

    def forward(inputs: dict[str, Any], output_size: tuple[int, int]) -> torch.Tensor:
        features = inputs["features"] if "features" in inputs else model.encode(inputs["image"])
        return decoder(features, output_size)

    return forward


class Trainer:
    """Fits a :class:`Segmentor`, evaluating every ``eval_interval`` epochs and keeping the best.

    Args:
        model: the segmentor (already on ``ctx.device``; SyncBatchNorm conversion done by the caller).
        criterion: loss on (logits (B, K, H, W), target (B, H, W)).
        optimizer, scheduler: the scheduler is stepped every iteration.
        train_loader: yields preprocessed training batches (or, frozen, cached encoder ``features``
            instead of the ``image``); its sampler has ``set_epoch``.
        evaluator: validation evaluator; run_dir: the run directory (``checkpoints/``, ``metrics.jsonl``).
        n_epochs, eval_interval, log_interval, ckpt_interval: in epochs / iterations (log).
        resume_every_s: seconds between ``last.pt`` writes (:meth:`resume_due`); 0 = every epoch.
        grad_clip: max gradient norm, or None; precision: ``auto``, ``fp32`` or ``bf16``.
        best_metric_key: validation metric to maximise; use_wandb: log to Weights & Biases (rank 0).
    """

    def __init__(
        self,
        model: Segmentor,
        criterion: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        train_loader: DataLoader,
        evaluator: Evaluator,
        ctx: DistContext,
        run_dir: Path,
        n_epochs: int,
        eval_interval: int = 1,
        log_interval: int = 10,
        ckpt_interval: int | None = None,
        resume_every_s: float = 0.0,
        grad_clip: float | None = None,
        precision: str = "auto",
        best_metric_key: str = "mIoU",
        use_wandb: bool = False,
        wandb_run: Any = None,
    ) -> None:
        self.model = model
        self.criterion = criterion
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.train_loader = train_loader
        self.evaluator = evaluator
        self.ctx = ctx
        self.run_dir = Path(run_dir)
        self.n_epochs = int(n_epochs)
        self.eval_interval = max(1, int(eval_interval))
        self.log_interval = max(1, int(log_interval))
        self.ckpt_interval = int(ckpt_interval) if ckpt_interval else None
        self.resume_every_s = float(resume_every_s)
        self.last_written = time.monotonic()
        self.grad_clip = grad_clip
        self.precision = resolve_precision(precision, ctx.device)
        self.best_metric_key = best_metric_key
        self.wandb_run = wandb_run if (use_wandb and ctx.is_main) else None
        self.forward = training_forward(model, ctx)
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        self.start_epoch = 0
        self.best_metric = -math.inf
        self.best_epoch = -1
        self.best_val_metrics: dict[str, Any] = {}
        self.train_images = 0
        self.train_seconds = 0.0
        self.eval_seconds = 0.0

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    def state(self, epoch: int, rng: list[dict[str, Any]]) -> dict[str, Any]:
        """A checkpoint after ``epoch``; ``rng`` holds the random state of every rank, by rank."""
        return {
            "model": self.model.trainable_state_dict(),
            "mode": self.model.mode,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": epoch,
            **{key: getattr(self, key) for key in COUNTERS},
            "world_size": self.ctx.world_size,
            "rng": rng,
        }

    def resume(self, path: Path, trusted: Sequence[str | Path] = ()) -> None:
        """Continue from a ``last.pt`` checkpoint: weights, optimizer, schedule, counters and RNG.

        ``trusted``: files the user allows to be unpickled in full (``trusted_pickle_files``).
        """
        state = load_checkpoint(path, trusted=trusted)
        saved_world = state.get("world_size", 1)
        if saved_world != self.ctx.world_size:
            raise ResumeError(
                f"{path} was written by a run of {saved_world} process(es); this one has {self.ctx.world_size}. "
                f"Resume with torchrun --nproc_per_node={saved_world} (the data shards and per-process random "
                "states depend on it), or start a new run without resume=true"
            )
        self.model.load_trainable_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.start_epoch = state["epoch"] + 1
        for key in COUNTERS:
            setattr(self, key, state[key])
        rng = state["rng"]  # by rank; a single dict in checkpoints written before per-rank states
        restore_rng_state(rng[self.ctx.rank] if isinstance(rng, list) else rng)
        if self.ctx.is_main:
            keep_epochs_of(self.run_dir, state["epoch"])
        log.info("Resumed from %s after epoch %d", path, state["epoch"] + 1)

    def start_afresh(self) -> None:
        """Remove what an earlier attempt that never wrote ``last.pt`` left in the run folder (rank 0), so
        that the folder ends as an uninterrupted run's would: no epoch logged twice, no stale best.pt."""
        if self.ctx.is_main:
            clear_run_folder(self.run_dir)

    def follow_schedule(self, epoch: int) -> None:
        """Under ``mode=progressive``, let what the schedule says train from ``epoch`` on (DDP is rebuilt
        over the new set of trainable parameters)."""
        change = self.model.set_epoch(epoch)
        if change is not None:
            log.info("epoch %d: %s", epoch + 1, change)
            self.forward = training_forward(self.model, self.ctx)
            self.trainable = [p for p in self.model.parameters() if p.requires_grad]

    def begin_epoch(self, epoch: int) -> None:
        self.follow_schedule(epoch)
        self.model.train()
        self.train_loader.sampler.set_epoch(epoch)
        self.epoch_loss, self.epoch_steps, self.epoch_images = 0.0, 0, 0

    def train_step(self, inputs: dict[str, Any], target: torch.Tensor, epoch: int) -> float:
        """One optimisation step on a batch already on the device (``inputs`` may hold encoder ``features``
        instead of the ``image``, frozen mode); returns the loss."""
        with autocast_context(self.ctx.device, self.precision):
            logits = self.forward(inputs, tuple(target.shape[-2:]))
        loss = self.criterion(logits.float(), target)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.trainable, self.grad_clip if self.grad_clip else math.inf)
        # Under DDP the gradients are already averaged over ranks, so every rank sees the same
        # non-finite norm and stops at the same step.
        if not (torch.isfinite(loss) and torch.isfinite(grad_norm)):
            raise NonFiniteLossError(
                f"non-finite loss ({loss.item()}) or gradient norm ({grad_norm.item()}) at epoch "
                f"{epoch + 1}, iteration {self.epoch_steps + 1}. Lower optimizer.lr, set task.trainer.grad_clip, "
                "use precision=fp32, or check the input data for NaN values."
            )
        self.optimizer.step()
        self.scheduler.step()
        value = loss.item()
        self.epoch_loss += value
        self.epoch_steps += 1
        self.epoch_images += target.shape[0] * self.ctx.world_size
        if self.ctx.is_main and self.epoch_steps % self.log_interval == 0:
            lr = self.optimizer.param_groups[0]["lr"]
            log.debug("epoch %d iter %d loss %.4f lr %.3e", epoch + 1, self.epoch_steps, value, lr)
            if self.wandb_run is not None:
                self.wandb_run.log({"train/loss": value, "train/lr": lr, "epoch": epoch + 1})
        return value

    def end_epoch(self, seconds: float) -> float:
        """Count the epoch's ``seconds`` of training (the slowest rank's); returns its mean loss."""
        seconds = all_reduce_max(seconds, self.ctx.device)
        self.train_seconds += seconds
        self.train_images += self.epoch_images
        self.epoch_images_per_s = self.epoch_images / max(seconds, 1e-9)
        return self.epoch_loss / max(1, self.epoch_steps)

    def train_epoch(self, epoch: int) -> float:
        self.begin_epoch(epoch)
        start = time.perf_counter()
        bar = tqdm(self.train_loader, desc=f"epoch {epoch + 1}/{self.n_epochs}", disable=not self.ctx.is_main, leave=False)
        for batch in bar:
            loss = self.train_step(to_device(batch, self.ctx.device), batch["target"].to(self.ctx.device, non_blocking=True), epoch)
            bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        return self.end_epoch(time.perf_counter() - start)

    def is_eval_epoch(self, epoch: int) -> bool:
        return (epoch + 1) % self.eval_interval == 0 or epoch == self.n_epochs - 1

    def resume_due(self, epoch: int) -> bool:
        """Whether ``last.pt`` is written after ``epoch``: after every validation (so the last epoch, and any
        new best.pt), else once ``resume_every_s`` passed since the last write (a resume redoes the rest)."""
        return self.is_eval_epoch(epoch) or time.monotonic() - self.last_written >= self.resume_every_s

    def fit(self) -> dict[str, Any]:
        """Train to ``n_epochs``; returns the best validation metrics seen."""
        for epoch in range(self.start_epoch, self.n_epochs):
            train_loss = self.train_epoch(epoch)
            metrics, seconds = None, 0.0
            if self.is_eval_epoch(epoch):
                started = time.perf_counter()
                metrics = self.evaluator.evaluate(self.model, desc=f"val {epoch + 1}")
                seconds = time.perf_counter() - started
            self.finish_epoch(epoch, train_loss, metrics, seconds)
        return self.best_val_metrics

    def finish_epoch(self, epoch: int, train_loss: float, metrics: dict[str, Any] | None, eval_seconds: float,
                     write_last: bool | None = None) -> None:
        """Log the epoch (with its validation ``metrics``, if it had one) and write its checkpoints (``last.pt``
        if ``write_last``; None: if :meth:`resume_due`)."""
        line: dict[str, Any] = {"epoch": epoch + 1, "train_loss": train_loss, "train_images_per_s": self.epoch_images_per_s}
        improved = False
        if metrics is not None:
            improved = self.record_validation(epoch, train_loss, metrics, eval_seconds)
            line.update({"split": "val", **metrics})
        else:
            log.info("epoch %d/%d  train loss %.4f", epoch + 1, self.n_epochs, train_loss)
        self.save(epoch, line, improved, self.resume_due(epoch) if write_last is None else write_last)

    def record_validation(self, epoch: int, train_loss: float, metrics: dict[str, Any], seconds: float) -> bool:
        """Keep the validation ``metrics`` after ``epoch`` if they are the best so far (returns whether)."""
        self.eval_seconds += seconds
        # The first validation always gives best.pt, even with a NaN metric; NaN never beats a number.
        value = metrics[self.best_metric_key]
        value = -math.inf if math.isnan(value) else value
        improved = self.best_epoch < 0 or value > self.best_metric
        if improved:
            self.best_metric, self.best_epoch = value, epoch + 1
            self.best_val_metrics = metrics
        log.info(
            "epoch %d/%d  train loss %.4f  val mIoU %.4f  %s  (best %.4f @ %d)",
            epoch + 1, self.n_epochs, train_loss, metrics["mIoU"],
            "  ".join(f"IoU[{k}] {v:.4f}" for k, v in metrics["IoU"].items()),
            self.best_metric, self.best_epoch,
        )
        if self.wandb_run is not None:
            self.wandb_run.log({f"val/{k}": v for k, v in metrics.items() if isinstance(v, float)} | {"epoch": epoch + 1})
        return improved

    def save(self, epoch: int, line: dict[str, Any], improved: bool, write_last: bool) -> None:
        """Log the epoch's line, then write best.pt (if improved), epoch_N.pt and last.pt (if ``write_last``) on
        rank 0. Every rank's random state goes into them, so a resumed run draws what each rank would have
        drawn. ``last.pt`` comes last: a resume truncates ``metrics.jsonl`` to its epoch."""
        rng = all_gather_object(rng_state())
        if not self.ctx.is_main:
            return
        with open(self.run_dir / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps(line) + "\n")
        kept = bool(self.ckpt_interval) and (epoch + 1) % self.ckpt_interval == 0
        names = ["best.pt"] * improved + [f"epoch_{epoch + 1}.pt"] * kept + ["last.pt"] * write_last
        state = self.state(epoch, rng) if names else {}
        for name in names:
            save_checkpoint(self.checkpoint_dir / name, state)
        if write_last:
            self.last_written = time.monotonic()
