"""Decoded rasters kept as ``.npy`` files, so that each GeoTIFF is decoded once per machine, not once per epoch.

An entry is named after the source file's resolved path, size and modification time: a file that is
replaced or touched gets a new entry (stale entries are never read; delete the folder to reclaim the
space). Entries are written to a temporary file and renamed into place, so processes and DataLoader
workers sharing the folder never read a half-written entry; an unreadable entry is decoded again.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

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
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=f".{entry.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                np.save(handle, array)
            os.replace(tmp, entry)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return array
