"""HTTP downloads with a progress bar, resume of partial files and atomic completion."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm


class DownloadError(RuntimeError):
    """The file could not be fetched (offline, refused, HTTP error)."""


def download_file(url: str, destination: str | os.PathLike, timeout: float = 30.0) -> Path:
    """Download ``url`` to ``destination``, resuming a ``.part`` file left by an earlier attempt.

    The file appears under its final name only once complete. Raises :class:`DownloadError`.
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
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
    except (urllib.error.URLError, OSError, TimeoutError) as error:
        raise DownloadError(f"could not download {url}: {error}") from error
    os.replace(partial, destination)
    return destination

