"""The jobs of a sweep that differ only in the decoder, run as lockstep heads on one frozen encoder.

``python -m benchmark.sweep`` (one process per job, basic sweeper) queues its frozen-encoder jobs with
:func:`defer`, then :func:`run_deferred` groups them: jobs whose configs are equal but for ``decoder``
build the data and the encoder once and train their decoders together
(:mod:`benchmark.engine.heads`); every job still gets its own run folder, ``train.log``, checkpoints
and ``results.json``, with the metrics it gets when run alone. Interrupted jobs that stopped after the
same epoch resume together. A job left alone, and every job of a group that failed, run one by one as
before (a failed group's finished epochs are resumed, so the job that failed is recorded as failed and
the others complete)."""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from benchmark import builders, compat
from benchmark.config_checks import check_config
from benchmark.distributed import DistContext, barrier, init_distributed, process_seed
from benchmark.engine.checkpoint import load_checkpoint, restore_rng_state, rng_state, seed_everything
from benchmark.engine.heads import HeadRandomState, fit_in_lockstep
from benchmark.engine.trainer import Trainer
from benchmark.models.segmentor import resolve_mode
from benchmark.pipeline import build_trainer, hydra_choices, run_cost
from benchmark.results import RunConfig, completed_result, completed_results, write_results
from benchmark.rundir import (
    LOG_DATE_FORMAT, LOG_FORMAT, choose_run_dir, package_versions, save_config, setup_logging, summary,
)

log = logging.getLogger("benchmark.sweep")


@dataclass
class Job:
    """A job of the sweep as Hydra composed it: its config and its Hydra settings (overrides, choices)."""

    cfg: DictConfig
    hydra: DictConfig
    name: str

    @contextlib.contextmanager
    def composed(self) -> Iterator[None]:
        """Hydra's view of this job (its overrides, choices) while it is set up."""
        before = HydraConfig.instance().cfg
        HydraConfig.instance().cfg = self.hydra
        try:
            yield
        finally:
            HydraConfig.instance().cfg = before


@dataclass
class Head:
    job: Job
    cfg: DictConfig  # the job's config with PANGAEA's spellings applied
    choices: dict[str, str]
    run_dir: Path
    last_epoch: int  # after which epoch its run stopped (0-based); -1: a new run
    summary: RunConfig | None = None  # what results.json says of the job's config (made while it is composed)


DEFERRED: list[Job] = []


def jobs_may_wait() -> bool:
    """The sweep's jobs are launched from this process, one after another, and nothing needs a job's score
    before the sweep ends (basic sweeper and launcher): a job may be queued and run later."""
    hydra_cfg = HydraConfig.get()
    sweeper = str(hydra_cfg.sweeper.get("_target_", ""))
    basic = "JobFileSweeper" in sweeper or "BasicSweeper" in sweeper
    return basic and "BasicLauncher" in str(hydra_cfg.launcher.get("_target_", ""))


def may_share_encoder(cfg: DictConfig) -> bool:
    """``lockstep=true``, a frozen encoder and no Weights & Biases run (a run of its own per job)."""
    return bool(cfg.lockstep) and resolve_mode(cfg.mode, cfg.finetune) == "frozen" and not cfg.use_wandb


def composed_job(job_cfg: DictConfig, name: str) -> Job:
    """The job Hydra is composing now (its config as ``benchmark/run.py`` gets it), kept to run later."""
    return Job(job_cfg, copy.deepcopy(HydraConfig.instance().cfg), name)


def defer(job_cfg: DictConfig, name: str) -> None:
    DEFERRED.append(composed_job(job_cfg, name))


def group_key(job: Job) -> str:
    """What must be equal for jobs to share the encoder pass: everything but the decoder."""
    cfg = copy.deepcopy(job.cfg)
    with open_dict(cfg):
        del cfg["decoder"]
    choices = {k: v for k, v in job.hydra.hydra.runtime.choices.items() if k != "decoder"}
    return OmegaConf.to_yaml(cfg) + str(sorted(choices.items()))


def run_deferred(run_alone: Callable[[Job], bool]) -> list[str]:
    """Run the deferred jobs, groups of several as lockstep heads; the names of the jobs that failed."""
    groups: dict[str, list[Job]] = {}
    for job in DEFERRED:
        groups.setdefault(group_key(job), []).append(job)
    DEFERRED.clear()
    failed = []
    for jobs in groups.values():
        alone = jobs if len(jobs) == 1 else run_group(jobs)
        for job in alone:
            log.info("run %s (in this process)", job.name)
            with job.composed():
                if not run_alone(job):
                    failed.append(job.name)
    return failed


def run_group(jobs: list[Job], fall_back: bool = True) -> list[Job]:
    """Train the jobs of one group as heads; returns the jobs still to run alone. A group that fails falls
    back to its jobs one by one, or (``fall_back=False``: under torchrun, where the other ranks may be
    waiting in a collective) raises."""
    ctx = init_distributed(jobs[0].cfg.device)
    setup_logging(ctx, None)
    heads, alone = [], []
    for job in jobs:
        cfg = copy.deepcopy(job.cfg)
        try:
            with job.composed():
                check_config(cfg)
                compat.apply_aliases(cfg)
                choices = hydra_choices()
                folder, resuming = choose_run_dir(cfg, choices, "frozen", ctx)
        except Exception:  # run alone, it fails there with its own message and results.json
            alone.append(job)
            continue
        if cfg.resume and completed_results(folder) is not None:
            log.info("skip %s: completed in %s", job.name, folder)
        else:
            heads.append(Head(job, cfg, choices, folder, saved_epoch(folder) if resuming else -1))
    for start in sorted({head.last_epoch for head in heads}):  # heads resume together from the same epoch
        together = [head for head in heads if head.last_epoch == start]
        if len(together) < 2:
            alone += [head.job for head in together]
            continue
        log.info("%d jobs in lockstep on one encoder pass%s: %s", len(together),
                 f", resumed after epoch {start + 1}" if start >= 0 else "", "; ".join(h.job.name for h in together))
        try:
            with head_logs(together, ctx.is_main) as focus:
                fit_and_test_heads(together, ctx, time.time(), focus)
        except Exception:
            if not fall_back:
                raise
            log.exception("lockstep group failed: its jobs run one by one (finished epochs are resumed)")
            alone += [head.job for head in together]
    return alone


def start_heads(heads: list[Head], trainers: list[Trainer], focus: Callable[[int], Any]) -> list[HeadRandomState]:
    """Start each trainer afresh or resume it from its ``last.pt``, as its run alone would after seeding the
    process; returns each head's random state from there."""
    seeded, states = rng_state(), []
    for index, (head, trainer) in enumerate(zip(heads, trainers)):
        restore_rng_state(seeded)
        with focus(index):
            if head.last_epoch >= 0:  # its checkpoint holds its random state too
                trainer.resume(head.run_dir / "checkpoints" / "last.pt", trusted=head.cfg.trusted_pickle_files)
            else:
                trainer.start_afresh()
        states.append(HeadRandomState())
    return states


def saved_epoch(run_dir: Path) -> int:
    """The epoch (0-based) after which ``run_dir``'s ``last.pt`` was written."""
    return int(load_checkpoint(run_dir / "checkpoints" / "last.pt")["epoch"])


def fit_and_test_heads(heads: list[Head], ctx: DistContext, started: float, focus: Callable[[int], Any]) -> None:
    """:func:`benchmark.pipeline.fit_and_test` for several heads: data and encoder built once, every
    decoder built from the random state its run alone would build it from."""
    lead = heads[0].cfg
    for index, head in enumerate(heads):
        with focus(index), head.job.composed():
            log.info("Run folder %s (lockstep head %d of %d, mode=frozen)", head.run_dir, index + 1, len(heads))
            compat.log_pangaea_keys(head.cfg)
            if ctx.is_main:
                save_config(head.cfg, head.choices, "frozen", head.run_dir)
            head.summary = summary(head.cfg, head.choices, "frozen", ctx)
    seed_everything(int(lead.seed))
    datasets = builders.build_datasets(lead, ctx)
    builders.check_train_size(lead, ctx, len(datasets["train"]))
    encoder = builders.build_encoder(lead, "frozen")
    after_encoder = rng_state()
    models = []
    for head in heads:
        restore_rng_state(after_encoder)
        models.append(builders.assemble_segmentor(head.cfg, "frozen", ctx, encoder))
        builders.check_train_batch(head.cfg, models[-1], ctx)
    features = builders.build_feature_cache(lead, "frozen", models[0], ctx)
    loaders = {split: builders.eval_loader(lead, split, ctx, datasets[split], features) for split in ("val", "test")}
    evaluators = {split: builders.build_evaluator(lead, loader, encoder.input_size, ctx) for split, loader in loaders.items()}
    train_loader = builders.train_loader(lead, ctx, datasets["train"], features)
    trainers = [
        build_trainer(h.cfg, ctx, h.run_dir, model, train_loader, evaluators["val"], None) for h, model in zip(heads, models)
    ]
    seed_everything(process_seed(int(lead.seed), ctx.rank))
    fit_in_lockstep(trainers, start_heads(heads, trainers, focus), evaluators["val"], focus)
    barrier()  # rank 0 has written every best.pt
    best = [load_checkpoint(h.run_dir / "checkpoints" / "best.pt", trusted=lead.trusted_pickle_files) for h in heads]
    for model, checkpoint in zip(models, best):
        model.load_trainable_state_dict(checkpoint["model"])
    test_started = time.perf_counter()
    tests = evaluators["test"].evaluate_heads(models, desc="test")
    test_seconds = (time.perf_counter() - test_started) / len(heads)
    for index, (head, model, trainer, checkpoint, metrics) in enumerate(zip(heads, models, trainers, best, tests)):
        cost = run_cost(trainer, model.parameter_counts(), wall_s=(time.time() - started) / len(heads), test_s=test_seconds,
                        cache_s=features.seconds / len(heads) if features is not None else 0.0, device=ctx.device)
        result = completed_result(
            head.run_dir, head.summary, best_epoch=checkpoint["epoch"] + 1,
            val=trainer.best_val_metrics, test=metrics, cost=cost, versions=package_versions(),
        )
        with focus(index):
            log.info("Test (best epoch %d): mIoU %.4f", checkpoint["epoch"] + 1, metrics["mIoU"])
            if ctx.is_main:
                write_results(head.run_dir, result)
                log.info("Results written to %s", head.run_dir / "results.json")


ACTIVE: list[int | None] = [None]  # the head whose work is under way; None: work shared by all


class OneHead(logging.Filter):
    """Lets through the records of one head (and those of shared work) to that head's ``train.log``."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def filter(self, record: logging.LogRecord) -> bool:
        return ACTIVE[0] in (None, self.index)


class HeadLabel(logging.Filter):
    """Names the head (its decoder) in the console lines of its work."""

    def __init__(self, names: list[str]) -> None:
        super().__init__()
        self.names = names

    def filter(self, record: logging.LogRecord) -> bool:
        record.head = "" if ACTIVE[0] is None else f"[{self.names[ACTIVE[0]]}]"
        return True


@contextlib.contextmanager
def head_logs(heads: list[Head], main: bool) -> Iterator[Callable[[int], Any]]:
    """A ``train.log`` per head (written by the ``main`` process); yields ``focus(i)``, the context in which
    log records are head ``i``'s."""
    root = logging.getLogger()
    console = root.handlers[0]  # setup_logging's; its lines name the head
    formatter = console.formatter
    label = HeadLabel([head.choices.get("decoder", str(index)) for index, head in enumerate(heads)])
    console.addFilter(label)
    console.setFormatter(logging.Formatter(LOG_FORMAT.replace("] %(message)s", "]%(head)s %(message)s"), LOG_DATE_FORMAT))
    files = []
    for index, head in enumerate(heads if main else []):
        handler = logging.FileHandler(head.run_dir / "train.log", mode="a")
        handler.setFormatter(formatter)
        handler.addFilter(OneHead(index))
        root.addHandler(handler)
        files.append(handler)

    @contextlib.contextmanager
    def focus(index: int) -> Iterator[None]:
        ACTIVE[0] = index
        try:
            yield
        finally:
            ACTIVE[0] = None

    try:
        yield focus
    finally:
        console.removeFilter(label)
        console.setFormatter(formatter)
        for handler in files:
            root.removeHandler(handler)
            handler.close()
