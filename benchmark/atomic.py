"""Atomic file writes: readers (other ranks, DataLoader workers, a resumed run) see the old file or the new
one, never a torn one.

A write goes into a temporary file ``.<name>.<random>.tmp`` beside its target and is renamed over it;
:func:`remove_interrupted_writes` deletes what a killed write left behind under that naming.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable

TEMPORARY_SUFFIX = ".tmp"


def write_atomically(path: str | Path, write: Callable[[IO[bytes]], Any], durable: bool = True) -> None:
    """``write(binary handle)`` into a temporary file of ``path``'s folder, then rename it to ``path``.

    ``durable``: flush the data to disk before the rename, so that a crash right after it cannot leave an
    empty file under ``path`` (checkpoints, run records); caches that are rebuilt when unreadable skip it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        make_readable(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def make_readable(path: str | Path) -> None:
    """Give a temporary file (created private, mode 0600) the permissions of an ordinary new file (umask)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def write_json(path: str | Path, payload: Any) -> None:
    """Write ``payload`` as indented JSON, atomically and durably (non-JSON values through ``str``)."""
    text = json.dumps(payload, indent=2, default=str).encode()
    write_atomically(path, lambda handle: handle.write(text))


def remove_interrupted_writes(folder: str | Path) -> list[Path]:
    """Delete the temporary files of :func:`write_atomically` calls that were killed mid-write in ``folder``."""
    leftovers = [p for p in Path(folder).glob(f".*{TEMPORARY_SUFFIX}") if p.is_file()]
    for path in leftovers:
        path.unlink()
    return leftovers
