"""HTTP downloads with a progress bar, resume of partial files, atomic completion and one downloader.

Several processes may ask for the same file at once (the ranks of a torchrun job, parallel jobs that share
``pretrained_models/``): an OS file lock on ``<file>.lock`` lets one of them download while the others
wait, and then find the file complete.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

from tqdm import tqdm

try:
    import fcntl
except ImportError:  # not POSIX (Windows): no inter-process lock, each process downloads on its own
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)


class DownloadError(RuntimeError):
    """The file could not be fetched (offline, refused, HTTP error)."""


@contextlib.contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive OS lock on ``<path>.lock`` (blocking; logs when another process holds it).

    ``flock`` locks are released by the OS when their holder exits, also when it is killed, so a crashed
    downloader never blocks the others. The lock file stays: deleting it could let two processes lock
    two different files of the same name.
    """
    path = Path(path)
    if fcntl is None:
        yield
        return
    lock_path = path.with_name(path.name + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for %s being downloaded by another process", path)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def download_file(url: str, destination: str | os.PathLike, timeout: float = 30.0) -> Path:
    """Download ``url`` to ``destination`` unless it is there, resuming a ``.part`` file of an earlier attempt.

    One process at a time downloads a given destination; the others wait for it and return the finished
    file (or, when its attempt failed, try in turn). The file appears under its final name only once
    complete. Raises :class:`DownloadError`.
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(destination):
        if destination.is_file():  # finished by another process while this one waited
            return destination
        _fetch(url, destination, timeout)
    return destination


def _fetch(url: str, destination: Path, timeout: float) -> None:
    """Stream ``url`` into ``<destination>.part`` (resuming it when the server allows), then rename it."""
    partial = destination.with_name(destination.name + ".part")
    offset = partial.stat().st_size if partial.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "geofm-bench"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            resumed = offset and response.status == 206
            mode = "ab" if resumed else "wb"
            length = response.headers.get("Content-Length")
            total = int(length) + (offset if resumed else 0) if length else None
            with open(partial, mode) as handle, tqdm(
                total=total,
                initial=offset if resumed else 0,
                unit="B",
                unit_scale=True,
                desc=destination.name,
            ) as bar:
                while chunk := response.read(1 << 20):
                    handle.write(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, http.client.HTTPException, OSError, TimeoutError) as error:
        raise DownloadError(f"could not download {url}: {error}") from error
    received = partial.stat().st_size
    if total is not None and received != total:  # the server closed the connection early
        raise DownloadError(f"could not download {url}: got {received} of {total} bytes; rerun to resume")
    os.replace(partial, destination)
