"""Which error a failed run reports: the one of the process that failed first, not its echo on the others.

Under ``torchrun``, when one rank raises, the others fail in their next collective with "Connection
closed by peer" (gloo) or an NCCL error, or are stopped by torchrun with SIGTERM. Each rank therefore
records its own failure in ``<run dir>/.failures/rank<r>.json``; rank 0 reports the first failure that is
not such an echo, naming its rank, in the log, in the exception it raises and in ``results.json``.
"""

from __future__ import annotations

import contextlib
import json
import signal
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

from benchmark.atomic import write_json
from benchmark.distributed import RankFailedError

FAILURES = ".failures"
# Messages of errors that a rank gets because another rank stopped, not because of its own work.
ECHO_MARKERS = ("connection closed by peer", "connection reset by peer", "broken pipe")


class TerminatedError(RuntimeError):
    """The process received SIGTERM (torchrun stopping the other ranks after a failure, or a scheduler)."""


class PeerFailedError(RuntimeError):
    """Another rank of the run failed first; the message carries its error."""


@dataclass(frozen=True)
class Failure:
    rank: int
    error: str  # "<type>: <message>"
    traceback: str
    time: float
    echo: bool  # caused by another rank's failure


def is_echo(error: BaseException) -> bool:
    """Whether ``error`` looks like the consequence of another rank's failure."""
    if isinstance(error, (TerminatedError, PeerFailedError, RankFailedError)):
        return True
    text = f"{type(error).__name__}: {error}".lower()
    return "distbackenderror" in text or any(marker in text for marker in ECHO_MARKERS)


def record(run_dir: Path, rank: int, error: BaseException) -> Failure:
    """Write this rank's failure into the run folder (every rank) and return it."""
    failure = Failure(
        rank=rank,
        error=f"{type(error).__name__}: {error}",
        traceback="".join(traceback.format_exception(error)),
        time=time.time(),
        echo=is_echo(error),
    )
    write_json(run_dir / FAILURES / f"rank{rank}.json", asdict(failure))
    return failure


def first_failure(run_dir: Path, own: Failure, since: float, wait_s: float = 15.0) -> Failure:
    """The failure to report (rank 0): its own unless that is an echo; then the earliest genuine failure
    another rank recorded after ``since``, waiting up to ``wait_s`` seconds for it to appear."""
    if not own.echo:
        return own
    deadline = time.monotonic() + wait_s
    while True:
        found = []
        for path in sorted((run_dir / FAILURES).glob("rank*.json")):
            with contextlib.suppress(OSError, ValueError, TypeError):
                found.append(Failure(**json.loads(path.read_text())))
        genuine = [f for f in found if not f.echo and f.time >= since]
        if genuine:
            return min(genuine, key=lambda f: f.time)
        if time.monotonic() > deadline:
            return own
        time.sleep(0.2)


def clear(run_dir: Path) -> None:
    """Remove the per-rank records once rank 0 has reported the failure."""
    for path in (run_dir / FAILURES).glob("*"):
        path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        (run_dir / FAILURES).rmdir()


def ignore_sigterm() -> None:
    """From now on SIGTERM is ignored (main thread only): called once a failure is being reported, since a
    SIGTERM that torchrun sends while rank 0 waits for the other ranks' records would otherwise cut the
    report short and leave no ``results.json``."""
    with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within this block the first SIGTERM raises :class:`TerminatedError` (later ones are ignored), so that
    a stopped rank still records its failure and rank 0 still writes ``results.json`` (torchrun waits
    before it sends SIGKILL)."""

    def handler(signum: int, frame: object) -> None:
        ignore_sigterm()  # a repeated SIGTERM must not cut the report short
        raise TerminatedError("terminated by SIGTERM (torchrun stops every rank when one fails)")

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
