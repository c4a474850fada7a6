"""One job as two torchrun "nodes" on this machine (``--nnodes=2``, c10d rendezvous on localhost, one
process each) gives the metrics of one node with two processes: nothing in a run assumes one node."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmark.distributed import select_device
from conftest import REPO, only_run_dir, run_benchmark, tiny_overrides


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def node_command(args: list[str], port: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1", "--rdzv_backend=c10d",
            f"--rdzv_endpoint=127.0.0.1:{port}", "--rdzv_id=geofm-two-nodes", str(REPO / "benchmark" / "run.py"), *args]


@pytest.mark.slow
@pytest.mark.acceptance  # three torchrun launches: with the acceptance runs
def test_two_nodes_of_one_process_match_one_node_of_two(synthetic_root: Path, tmp_path: Path) -> None:
    args = [*tiny_overrides(synthetic_root, tmp_path / "unused"), "decoder=seg_fcn", "task.trainer.n_epochs=2"]
    run_benchmark([*args, f"work_dir={tmp_path / 'one_node'}"], nproc=2)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "1"}
    command = node_command([*args, f"work_dir={tmp_path / 'two_nodes'}"], free_port())
    nodes = [subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outputs = [node.communicate(timeout=300)[0] for node in nodes]
    assert all(node.returncode == 0 for node in nodes), "\n".join(output[-3000:] for output in outputs)
    one, two = (json.loads((only_run_dir(tmp_path / name) / "results.json").read_text()) for name in ("one_node", "two_nodes"))
    assert one["config"]["world_size"] == two["config"]["world_size"] == 2
    # the same two ranks on the same shards, whatever the nodes: the same computation
    assert two["test"]["confusion_matrix"] == one["test"]["confusion_matrix"] and two["test"]["mIoU"] == one["test"]["mIoU"]
    assert two["val"] == one["val"]


def test_more_processes_than_gpus_stop_with_the_nproc_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    """NCCL refuses two processes on one GPU: the second process of a one-GPU node is stopped before any work."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(RuntimeError, match="--nproc_per_node to at most 1"):
        select_device("auto", local_rank=1)
