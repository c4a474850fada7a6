"""Reading checkpoint files without letting them run code.

Every ``torch.load`` of the project goes through :func:`safe_torch_load`: a pickle can run code, so files
are unpickled with ``weights_only=True`` (tensors, plain containers and the objects of
:data:`SAFE_PICKLE_GLOBALS`), unless the user lists the file in ``trusted_pickle_files``. A file that is no
checkpoint or is damaged raises :class:`CheckpointReadError` with what its first bytes say it is.
"""

from __future__ import annotations

import argparse
import contextlib
import contextvars
import logging
import os
import pickle
import re
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch

log = logging.getLogger(__name__)

PathLike = str | os.PathLike


def _numpy_multiarray_globals() -> list[Any]:
    """numpy scalar and array constructors under the module names of numpy 2 and numpy 1 files."""
    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    names = []
    for function in (multiarray.scalar, multiarray._reconstruct):
        # numpy 1 pickled these as numpy.core.multiarray.*, numpy 2 as numpy._core.multiarray.*
        names += [(function, f"numpy.core.multiarray.{function.__name__}"),
                  (function, f"numpy._core.multiarray.{function.__name__}")]
    return names


# The one allow-list of non-tensor objects that a file may hold and still be loaded without trust. All of
# them are plain data: building them calls no user code and reads no further pickle.
# - argparse.Namespace: the training arguments MAE / data2vec (BEiT) / DINO release files carry ("args").
# - numpy scalars (float64, int64, ...): DINO and BEiT-style training write learning rates and weight
#   decays taken from numpy schedules into their optimizer's param_groups.
# - numpy numeric arrays: the numpy RNG state inside run checkpoints written before our RNG state was
#   stored as tensors. Object arrays stay refused: their dtype class is not listed.
SAFE_PICKLE_GLOBALS: list[Any] = [
    argparse.Namespace,
    *_numpy_multiarray_globals(),
    np.ndarray,
    np.dtype,
    *sorted({type(np.dtype(kind)) for kind in "?bhilqBHILQefd"}, key=lambda cls: cls.__name__),
]

# Files the user trusts to run code when unpickled (config key ``trusted_pickle_files``), for loaders that
# cannot be handed the list (encoders read their weights inside their constructors).
_TRUSTED_FILES: contextvars.ContextVar[tuple[Path, ...]] = contextvars.ContextVar("trusted_pickle_files", default=())


# A legacy (pre-zip) torch.save file opens with the pickled magic number 0x1950a86a20f9469cfc6c.
_LEGACY_TORCH_HEAD = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"


class CheckpointReadError(ValueError):
    """The file is not a readable PyTorch checkpoint (not one at all, truncated or corrupted)."""


class UntrustedPickleError(CheckpointReadError):
    """Unpickling the file would call something outside the allow-list, and the user did not trust it."""


@contextlib.contextmanager
def trusted_pickle_files(paths: Iterable[PathLike] | None) -> Iterator[None]:
    """Within this block, :func:`safe_torch_load` unpickles the files in ``paths`` in full."""
    token = _TRUSTED_FILES.set(_canonical_all(paths))
    try:
        yield
    finally:
        _TRUSTED_FILES.reset(token)


def _canonical(path: PathLike) -> Path:
    return Path(path).expanduser().resolve()


def _canonical_all(paths: Iterable[PathLike] | PathLike | None) -> tuple[Path, ...]:
    """Resolved paths; a single path (``trusted_pickle_files=a.pth`` without brackets) counts as a list of one."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    return tuple(_canonical(p) for p in paths or ())


def is_trusted(path: PathLike, trusted: Iterable[PathLike] | None = None) -> bool:
    """Whether ``path`` is in ``trusted`` (default: the files of the enclosing :func:`trusted_pickle_files`)."""
    listed = _TRUSTED_FILES.get() if trusted is None else _canonical_all(trusted)
    return _canonical(path) in listed


def safe_torch_load(path: PathLike, trusted: Iterable[PathLike] | None = None, damaged_hint: str = "") -> Any:
    """``torch.load`` on CPU that cannot run code, unless ``path`` is trusted.

    Raises :class:`UntrustedPickleError` (naming the file, the offending objects and the opt-in) for a
    file that pickles anything but tensors, plain containers and :data:`SAFE_PICKLE_GLOBALS`, and
    :class:`CheckpointReadError` for a file that is no checkpoint or is damaged (``damaged_hint`` says
    what to do then).
    """
    path = Path(path)
    if is_trusted(path, trusted):
        log.warning("%s is listed in trusted_pickle_files: unpickling it in full (weights_only=False), "
                    "which runs any code it holds", path)
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception as error:  # any failure of a full unpickling means the file is unreadable
            raise CheckpointReadError(_damaged_message(path, error, damaged_hint)) from error
    try:
        with torch.serialization.safe_globals(SAFE_PICKLE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for damaged files; all are sorted out below
        offending = _refused_globals(path, error)
        if offending:
            raise UntrustedPickleError(_untrusted_message(path, offending)) from error
        raise CheckpointReadError(_damaged_message(path, error, damaged_hint)) from error


def _refused_globals(path: Path, error: Exception) -> list[str]:
    """The objects torch's weights-only unpickler refused in ``path``; empty when it failed otherwise."""
    if not isinstance(error, pickle.UnpicklingError):
        return []
    allowed = {name for item in SAFE_PICKLE_GLOBALS for name in _global_names(item)}
    text = str(error)
    try:  # lists every non-default global of a torch.save archive without unpickling anything
        found = [name for name in torch.serialization.get_unsafe_globals_in_checkpoint(path) if name not in allowed]
    except Exception:  # a legacy torch file or a bare pickle: the error names the refused global
        found = [name for name in re.findall(r"GLOBAL ([\w.]+)", text) if _pickles_global(path, name)]
    if not found:  # an object of a class that torch refuses to build (e.g. a numpy object array)
        found = re.findall(r"got <class '([\w.]+)'>", text)
    return list(dict.fromkeys(found))


def _pickles_global(path: Path, dotted: str) -> bool:
    """Whether the pickle in ``path`` holds a complete GLOBAL opcode for ``dotted`` (not one cut by truncation)."""
    data = path.read_bytes()
    parts = dotted.split(".")
    return any(
        b"c%s\n%s\n" % (".".join(parts[:i]).encode(), ".".join(parts[i:]).encode()) in data
        for i in range(1, len(parts))
    )


def _global_names(item: Any) -> list[str]:
    if isinstance(item, tuple):
        return [item[1]]
    return [f"{item.__module__}.{item.__qualname__}"]


def _untrusted_message(path: Path, offending: list[str]) -> str:
    return (
        f"{path} was not loaded: unpickling it would create or call {', '.join(offending)}, which is neither "
        "a tensor, a plain container nor one of the allow-listed objects (argparse.Namespace, numpy "
        "scalars and arrays); a pickle like that can run arbitrary code. If you trust this file (you made "
        "it, or it comes from the model's authors), list it in the config key trusted_pickle_files to "
        f"load it in full, e.g. on the command line: 'trusted_pickle_files=[\"{path}\"]'. Otherwise delete it."
    )


def _damaged_message(path: Path, error: Exception, hint: str) -> str:
    return f"{path} could not be read as a PyTorch checkpoint: {_what_is_wrong(path, error)}.{' ' + hint if hint else ''}"


def _what_is_wrong(path: Path, error: Exception) -> str:
    """Tell a file that is no checkpoint at all from a damaged one, by its first bytes."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(64)
    except OSError as open_error:
        return f"it cannot be opened ({open_error})"
    if not head:
        return "it is empty"
    # torch.save writes a zip archive; before torch 1.6 a pickle that starts with its magic number
    if head[:2] == b"PK" or head.startswith(_LEGACY_TORCH_HEAD):
        return f"it is truncated or corrupted ({_short(error)})"
    if head[:1] == b"\x80":
        return f"it is a Python pickle, but not one written by torch.save ({_short(error)})"
    sample = head[:32].decode("utf-8", errors="replace").split("\n")[0]
    return (f"it is not a PyTorch checkpoint at all (it starts with {sample!r}: a text or HTML file, e.g. an "
            "error page saved in place of a download?)")


def _short(error: Exception) -> str:
    """The gist of a torch.load error, without torch's advice to retry with weights_only=False."""
    text = str(error)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation", 1)[0]
    text = " ".join(text.split())
    if len(text) > 240:
        text = text[:240].rsplit(". ", 1)[0] + ". ..."
    return f"{type(error).__name__}: {text}"
