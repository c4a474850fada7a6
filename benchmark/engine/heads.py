"""Lockstep heads: several decoders trained on one frozen encoder and one stream of training batches.

Runs that differ only in the decoder draw the same crops in the same order (crops and shuffling are
seeded by the run's seed, never by the process). Here each batch goes through the encoder once (or
comes from the feature cache) and every head then takes its own optimisation step with its own
random state swapped in, so its dropout masks are those of its run alone; each head keeps its own
optimizer, schedule, validation, best checkpoint and metrics log. A head's result is the one its run
gives alone (tests/test_lockstep.py).
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Callable, ContextManager, Iterator, Sequence

from tqdm import tqdm

from benchmark.engine.checkpoint import restore_rng_state, rng_state
from benchmark.engine.evaluator import Evaluator
from benchmark.engine.precision import autocast_context, to_device
from benchmark.engine.trainer import Trainer

Focus = Callable[[int], ContextManager[Any]]


class InputModifiedError(RuntimeError):
    """A decoder changed the shared encoder features in place."""


class HeadRandomState:
    """The random state of one head (python, numpy, torch, CUDA), swapped in while the head works."""

    def __init__(self) -> None:
        self.state = rng_state()

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        outside = rng_state()
        restore_rng_state(self.state)
        try:
            yield
        finally:
            self.state = rng_state()
            restore_rng_state(outside)


def fit_in_lockstep(
    trainers: Sequence[Trainer], states: Sequence[HeadRandomState], evaluator: Evaluator, focus: Focus | None = None
) -> None:
    """Train ``trainers`` (one frozen encoder, one training loader, all started afresh or resumed after the
    same epoch; ``states[i]``: head ``i``'s random state from there) to their ``n_epochs``, validating
    them together on ``evaluator``.

    ``focus(i)``: a context entered around the work of head ``i`` (e.g. routing its log lines).
    """
    lead = trainers[0]
    apart = [t for t in trainers if t.train_loader is not lead.train_loader or t.model.encoder is not lead.model.encoder]
    if apart or any(t.model.encoder_trains or t.start_epoch != lead.start_epoch for t in trainers):
        raise ValueError("lockstep heads share one frozen encoder and one loader, and start at the same epoch")
    focus = focus or (lambda index: contextlib.nullcontext())
    for epoch in range(lead.start_epoch, lead.n_epochs):
        losses = train_epoch(trainers, states, epoch, focus)
        metrics: list[dict[str, Any] | None] = [None] * len(trainers)
        seconds = 0.0
        if lead.is_eval_epoch(epoch):
            started = time.perf_counter()
            metrics = list(evaluator.evaluate_heads([t.model for t in trainers], desc=f"val {epoch + 1}"))
            seconds = (time.perf_counter() - started) / len(trainers)
        write_last = lead.resume_due(epoch)  # one decision for all heads: they resume together
        for index, (trainer, state) in enumerate(zip(trainers, states)):
            with state.active(), focus(index):
                trainer.finish_epoch(epoch, losses[index], metrics[index], seconds, write_last)


def train_epoch(trainers: Sequence[Trainer], states: Sequence[HeadRandomState], epoch: int, focus: Focus) -> list[float]:
    """One epoch of every head over the shared loader; each head is charged its own steps plus an equal
    share of loading and encoding. Returns each head's mean loss."""
    lead, device = trainers[0], trainers[0].ctx.device
    for index, (trainer, state) in enumerate(zip(trainers, states)):
        with state.active(), focus(index):
            trainer.begin_epoch(epoch)
    own = [0.0] * len(trainers)
    started = time.perf_counter()
    bar = tqdm(lead.train_loader, desc=f"epoch {epoch + 1}/{lead.n_epochs} ({len(trainers)} heads)",
               disable=not lead.ctx.is_main, leave=False)
    for batch in bar:
        inputs = to_device(batch, device)
        target = batch["target"].to(device, non_blocking=True)
        if "features" in inputs:
            features = inputs["features"]
        else:
            with autocast_context(device, lead.precision):
                features = lead.model.encode(inputs["image"])
        versions = [f._version for f in features]
        for index, (trainer, state) in enumerate(zip(trainers, states)):
            step_started = time.perf_counter()
            with state.active(), focus(index):
                trainer.train_step({"features": list(features)}, target, epoch)
            own[index] += time.perf_counter() - step_started
            if [f._version for f in features] != versions:
                raise InputModifiedError(
                    f"{type(trainer.model.decoder).__name__} changed its input features in place; heads that "
                    "share an encoder pass need decoders that leave their inputs unchanged (run with lockstep=false)"
                )
    common = (time.perf_counter() - started - sum(own)) / len(trainers)
    losses = []
    for index, (trainer, state) in enumerate(zip(trainers, states)):
        with state.active(), focus(index):
            losses.append(trainer.end_epoch(own[index] + common))
    return losses
