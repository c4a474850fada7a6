"""Decoded rasters kept as ``.npy`` files, so that each GeoTIFF is decoded once per machine, not once per epoch.

An entry is named after the source file's resolved path, size and modification time: a file that is
replaced or touched gets a new entry (stale entries are never read; delete the folder to reclaim the
space). Entries are written to a temporary file and renamed into place, so processes and DataLoader
workers sharing the folder never read a half-written entry; an unreadable entry is decoded again.

:class:`FactsMemo` keeps small per-file results (what the start-up check of a dataset learnt of each
file) the same way, in one JSON file per data folder, keyed by the same file identity.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from benchmark.atomic import write_atomically

log = logging.getLogger(__name__)


def file_identity(path: Path) -> str:
    """``<resolved path>|<size>|<mtime ns>``: changes when the file is replaced or touched."""
    stat = path.stat()
    return f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"


class RasterCache:
    """``load(path, decode)`` returns ``decode(path)``, read from ``root`` when it was decoded before."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def entry(self, path: Path) -> Path:
        return self.root / f"{path.stem}.{hashlib.sha256(file_identity(path).encode()).hexdigest()[:16]}.npy"

    def load(self, path: Path, decode: Callable[[Path], np.ndarray]) -> np.ndarray:
        entry = self.entry(path)
        try:
            return np.load(entry)
        except FileNotFoundError:
            pass
        except (OSError, ValueError, EOFError) as error:
            log.warning("Raster cache entry %s is unreadable (%s): decoding %s again", entry, error, path)
        array = decode(path)
        # not fsynced: an entry lost in a crash is unreadable, and then decoded again
        write_atomically(entry, lambda handle: np.save(handle, array), durable=False)
        return array


class FactsMemo:
    """``{key: JSON-able facts}`` for the files of ``folder``, kept in ``<cache_dir>/checks/``; None keeps nothing.

    A key starts with a :func:`file_identity` (``<path>|...``): when a file changes, its new key misses and
    the entry of its old identity is dropped at the next :meth:`save`. ``version`` invalidates every entry.
    Concurrent jobs may each save: the last one wins, and a lost entry is only computed again.
    """

    def __init__(self, cache_dir: str | Path | None, folder: Path, version: int) -> None:
        digest = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:12]
        self.path = None if cache_dir is None else Path(cache_dir) / "checks" / f"{folder.name}-{digest}.json"
        self.version = version
        self.entries = self.read()

    def read(self) -> dict[str, Any]:
        if self.path is None:
            return {}
        try:
            record = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as error:
            log.warning("Memo %s is unreadable (%s): its files are checked again", self.path, error)
            return {}
        return record.get("entries", {}) if record.get("version") == self.version else {}

    def save(self, new: dict[str, Any], current: Iterable[str]) -> None:
        """Add ``new``; drop the entries of ``current`` keys' paths under another identity."""
        self.entries.update(new)
        if self.path is None or not new:
            return
        keys = set(current)
        paths = {key.split("|")[0] for key in keys}
        merged = {k: v for k, v in self.read().items() if k in keys or k.split("|")[0] not in paths}
        merged.update(new)
        payload = json.dumps({"version": self.version, "entries": merged}).encode()
        write_atomically(self.path, lambda handle: handle.write(payload), durable=False)
