"""The synthetic client workload shared by both sides of the overhead benchmark (numpy only: Flower's venv
imports this very file, so pftray and Flower clients run the identical function).

A client receives the global vector ``w`` (``d`` float32), burns a fixed number of ``n x n`` float64 matmuls
(calibrated once by the parent process to take a target number of seconds on one thread) and returns an update of
the same size, ``delta = (k + 1) * 1e-3 * ones(d)`` for client ``k``, so that the FedAvg of the round is known
in closed form and both frameworks can be checked to aggregate the same thing.
"""

from __future__ import annotations

import time

import numpy as np

#: side of the square matrices of the busy loop: ~0.2 ms a product on one core, fine-grained enough to
#: calibrate to 1 % of a second, small enough to stay in cache (no memory-bandwidth noise between clients)
MATMUL_N = 64


def busy_work(iters: int, *, n: int = MATMUL_N) -> tuple[float, float]:
    """Run ``iters`` products of two ``n x n`` matrices; return ``(wall_seconds, cpu_seconds)`` of the loop.

    The wall time is what the overhead benchmark subtracts as client compute: a core shared with other
    processes slows the client, not the framework. The CPU time (of the calling thread) is reported beside it."""
    if iters < 0:
        raise ValueError(f"iters must be >= 0, got {iters}")
    if iters == 0:
        return 0.0, 0.0
    a = np.full((n, n), 1.0 / n)
    b = np.eye(n)
    w0, c0 = time.perf_counter(), time.thread_time()
    for _ in range(iters):
        a = a @ b  # a stays 1/n everywhere: no overflow, no denormals, constant cost per product
    return time.perf_counter() - w0, time.thread_time() - c0


def calibrate(seconds: float, *, n: int = MATMUL_N, probe: int = 400) -> int:
    """Number of iterations of :func:`busy_work` that take ``seconds`` of CPU on this machine (0 for 0 s).

    Uses the best of three probes (the least disturbed by other processes sharing the core)."""
    if seconds < 0:
        raise ValueError(f"seconds must be >= 0, got {seconds}")
    if seconds == 0:
        return 0
    per_iter = min(busy_work(probe, n=n)[1] for _ in range(3)) / probe
    return max(1, round(seconds / per_iter))


def client_update(client_id: int, global_vec: np.ndarray, iters: int) -> tuple[np.ndarray, float, float]:
    """One client's round: the busy work, then the update ``(client_id + 1) * 1e-3`` of ``global_vec``'s shape.

    Returns ``(delta, compute_wall_seconds, compute_cpu_seconds)``."""
    wall, cpu = busy_work(iters)
    delta = np.full(global_vec.shape, (client_id + 1) * 1e-3, dtype=np.float32)
    return delta, wall, cpu


def expected_fedavg(client_ids: list[int]) -> float:
    """The value of every coordinate of the equal-weight FedAvg of the clients' updates."""
    return float(np.mean([(k + 1) * 1e-3 for k in client_ids]))
