"""What identifies a feature-cache folder: file digests and fingerprints of the data, weights and code.

The key of a split folder (see :mod:`benchmark.engine.feature_cache`) holds a fingerprint of the source
code that computes the features (:func:`code_fingerprint`), the encoder config, the sha256 of the weights
file (:func:`weights_sha256`), the dataset config with a fingerprint (name, size, mtime) of the split's
files (:func:`files_fingerprint`), the split's preprocessing, the window grid, the device type and
precision, the storage dtype and :data:`CACHE_VERSION`; its sha256 names the folder (:func:`key_digest`).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from torch import nn

from benchmark.atomic import write_json
from benchmark.data.raster_cache import file_identity

CACHE_VERSION = 1
DIGEST_BLOCK = 2**20
DIGEST_WHOLE_FILE_BELOW = 64 * DIGEST_BLOCK
DIGEST_SAMPLES = 33


def file_digest(path: Path) -> str:
    """sha256 of a file's size and content; above 64 MiB, of 33 evenly spaced 1 MiB blocks (the first
    and last included), so that checking a large cache costs little."""
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as handle:
        if size < DIGEST_WHOLE_FILE_BELOW:
            digest.update(handle.read())
        else:
            for offset in np.linspace(0, size - DIGEST_BLOCK, DIGEST_SAMPLES, dtype=np.int64):
                handle.seek(int(offset))
                digest.update(handle.read(DIGEST_BLOCK))
    return digest.hexdigest()


def weights_sha256(path: Path, root: Path) -> str:
    """sha256 of a weights file, computed once and remembered under ``root/hashes`` by path, size, mtime."""
    memo = root / "hashes" / f"{hashlib.sha256(file_identity(path).encode()).hexdigest()[:32]}.json"
    if memo.is_file():
        return json.loads(memo.read_text())["sha256"]
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(16 * DIGEST_BLOCK), b""):
            digest.update(block)
    write_json(memo, {"path": str(path.resolve()), "sha256": digest.hexdigest()})
    return digest.hexdigest()


def files_fingerprint(paths: Sequence[Path]) -> str:
    """sha256 over the name, size and modification time of ``paths`` (in order)."""
    entries = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in paths]
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()


def module_source(name: str) -> bytes:
    """The source file of module ``name``, as bytes."""
    return Path(inspect.getfile(sys.modules[name])).read_bytes()


def code_fingerprint(*parts: Any) -> str:
    """sha256 of the source of every ``benchmark`` module that shapes the cached features: those of the
    classes of ``parts`` (the encoder, the dataset, the preprocessing steps, the window grid, the cache
    itself) and of their sub-modules (encoder blocks) and base classes, and every ``benchmark`` module
    these import from.

    Editing the encoder, a preprocessing step or the dataset reader changes the key, so features computed
    by older code are never reused.
    """
    names = set()
    for part in parts:
        objects = list(part.modules()) if isinstance(part, nn.Module) else [part]
        for obj in objects:
            names.update(cls.__module__ for cls in type(obj).__mro__ if cls.__module__.startswith("benchmark."))
    pending = list(names)
    while pending:  # and the benchmark modules they take functions, classes or constants from
        for value in vars(sys.modules[pending.pop()]).values():
            name = value.__name__ if inspect.ismodule(value) else getattr(value, "__module__", None)
            if isinstance(name, str) and name.startswith("benchmark.") and name not in names:
                names.add(name)
                pending.append(name)
    digest = hashlib.sha256()
    for name in sorted(names):
        digest.update(name.encode() + b"\0" + module_source(name))
    return digest.hexdigest()


def key_digest(key: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """``key`` as it reads back from JSON (tuples become lists) and its sha256 (hex)."""
    normalised = json.loads(json.dumps(key, sort_keys=True))
    return normalised, hashlib.sha256(json.dumps(normalised, sort_keys=True).encode()).hexdigest()
