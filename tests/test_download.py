"""Downloads: one process fetches a missing file while the others wait for it (torchrun ranks, parallel
jobs sharing pretrained_models/), and a download cut short never appears as the finished file."""

from __future__ import annotations

import hashlib
import http.server
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from benchmark.download import DownloadError, download_file
from conftest import REPO

PAYLOAD = bytes(range(256)) * 1024  # 256 KiB


class SlowServer(http.server.ThreadingHTTPServer):
    """Serves ``PAYLOAD`` in slow chunks and counts the requests and the complete downloads."""

    daemon_threads = True

    def __init__(self, seconds: float, short_by: int = 0) -> None:
        super().__init__(("127.0.0.1", 0), SlowHandler)
        self.seconds, self.short_by = seconds, short_by
        self.requests = self.completed = 0
        self.counter_lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/weights.pth"


class SlowHandler(http.server.BaseHTTPRequestHandler):
    server: SlowServer

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        with self.server.counter_lock:
            self.server.requests += 1
        body = PAYLOAD[: len(PAYLOAD) - self.server.short_by]  # short_by: announce more than is sent
        self.send_response(200)
        self.send_header("Content-Length", str(len(PAYLOAD)))
        self.end_headers()
        chunks = 16
        step = -(-len(body) // chunks)
        for start in range(0, len(body), step):
            time.sleep(self.server.seconds / chunks)
            self.wfile.write(body[start:start + step])
            self.wfile.flush()
        if not self.server.short_by:  # counted before the client can have the last byte and exit
            with self.server.counter_lock:
                self.server.completed += 1

    def log_message(self, *args: object) -> None:  # keep the test output quiet
        pass


def serve(seconds: float, short_by: int = 0) -> Iterator[SlowServer]:
    server = SlowServer(seconds, short_by)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def slow_server() -> Iterator[SlowServer]:
    yield from serve(seconds=2.0)


# Each process imports first, says it is ready, then waits for "go": both calls start together.
CHILD = """
import hashlib, logging, sys, time
from pathlib import Path
from benchmark.models.encoders.weights import resolve_weights_file
logging.basicConfig(level=logging.INFO, format="%(message)s")
ready, go, dest, url = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4]
ready.touch()
while not go.exists():
    time.sleep(0.01)
path = resolve_weights_file(dest, url)
print("sha256", hashlib.sha256(path.read_bytes()).hexdigest())
"""


def test_two_processes_download_a_missing_weights_file_once(slow_server: SlowServer, tmp_path: Path) -> None:
    dest = tmp_path / "pretrained_models" / "weights.pth"
    go = tmp_path / "go"
    children = []
    for i in range(2):
        ready = tmp_path / f"ready{i}"
        command = [sys.executable, "-c", CHILD, str(ready), str(go), str(dest), slow_server.url]
        children.append((ready, subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
    deadline = time.time() + 120
    while not all(ready.exists() for ready, _ in children) and time.time() < deadline:
        time.sleep(0.05)
    go.touch()
    outputs = [child.communicate(timeout=120) for _, child in children]
    assert [child.returncode for _, child in children] == [0, 0], outputs
    digest = hashlib.sha256(PAYLOAD).hexdigest()
    assert all(f"sha256 {digest}" in out for out, _ in outputs), outputs
    assert (slow_server.requests, slow_server.completed) == (1, 1), "the file was downloaded once, by one process"
    waited = [err for _, err in outputs if f"waiting for {dest} being downloaded by another process" in err]
    assert len(waited) == 1, outputs
    assert dest.read_bytes() == PAYLOAD and not dest.with_name("weights.pth.part").exists()


def test_file_present_after_the_wait_is_not_downloaded_again(slow_server: SlowServer, tmp_path: Path) -> None:
    dest = tmp_path / "weights.pth"
    dest.write_bytes(b"finished by another process")
    assert download_file(slow_server.url, dest) == dest
    assert slow_server.requests == 0 and dest.read_bytes() == b"finished by another process"


def test_download_cut_short_is_not_taken_for_the_file(tmp_path: Path) -> None:
    dest = tmp_path / "weights.pth"
    for server in serve(seconds=0.1, short_by=1000):
        with pytest.raises(DownloadError, match=f"got {len(PAYLOAD) - 1000} of {len(PAYLOAD)} bytes"):
            download_file(server.url, dest)
    assert not dest.exists(), "an incomplete download must not appear under the final name"
    assert dest.with_name("weights.pth.part").stat().st_size == len(PAYLOAD) - 1000  # kept, to resume
