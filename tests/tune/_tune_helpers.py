"""Shared helpers of the tune tests: a tiny sweep, free ports, and cleanup of the Ray processes a test started."""

from __future__ import annotations

import copy
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[2]
#: the interpreter running the tests (the project venv's own python): never a bare "python" from PATH
PYTHON = sys.executable

if str(REPO) not in sys.path:  # also imported by _tune_cluster_sweep.py, run as a script
    sys.path.insert(0, str(REPO))
from tests.tinycfg import TINY_TRIAL as TINY_BASE  # noqa: E402  (the tests' one tiny config, cut down for trials)


def sweep_dict(**top: Any) -> dict[str, Any]:
    """A valid sweep mapping over the tiny base; keyword arguments replace top-level sweep keys."""
    d: dict[str, Any] = {
        "name": "t",
        "base": copy.deepcopy(TINY_BASE),
        "space": {
            "privacy.noise_multiplier": {"type": "loguniform", "low": 0.5, "high": 3.0},
            "lora.shared_rank": {"type": "choice", "values": [1, 2]},
            "train.lambda_tdc": {"type": "uniform", "low": 0.0, "high": 0.5},
            "fed.strategy": {"type": "choice", "values": ["fedavg", "fedprox", "isfa"]},
        },
        "objectives": [{"metric": "psnr", "mode": "max"}, {"metric": "epsilon", "mode": "min"}],
        "search": {"num_samples": 4, "max_concurrent": 2, "seed": 0},
        "trial": {"pool": "local", "local_cpus": 1},
    }
    d.update(copy.deepcopy(top))
    return d


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def procs_with(marker: str) -> list[psutil.Process]:
    """Processes of this user whose command line mentions ``marker`` (a test's own Ray temp dir), with their
    descendants."""
    found: dict[int, psutil.Process] = {}
    me = os.getpid()
    for p in psutil.process_iter(["pid", "cmdline", "username"]):
        try:
            if p.pid != me and marker in " ".join(p.info["cmdline"] or []):
                found[p.pid] = p
                for c in p.children(recursive=True):
                    found[c.pid] = c
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return list(found.values())


def kill_procs(procs: list[psutil.Process], *, grace_s: float = 5.0) -> None:
    """SIGTERM the given processes (by pid), then SIGKILL what is left after ``grace_s``."""
    for p in procs:
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=grace_s)


def wait_for(pred, *, timeout_s: float, poll_s: float = 0.5, what: str = "condition"):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        v = pred()
        if v:
            return v
        time.sleep(poll_s)
    raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
