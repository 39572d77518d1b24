"""Benchmark of the in-process SecAgg(+) round: compute time, bytes and expansion over plain float32."""

from __future__ import annotations

import math

import numpy as np

from pftray.privacy.secagg.inprocess import run_secagg

__all__ = ["benchmark_secagg"]


def benchmark_secagg(
    n: int,
    d: int,
    *,
    degree: int | None,
    threshold: int,
    reps: int = 1,
    modulus_bits: int = 32,
    dropout_rate: float = 0.0,
    seed: int = 0,
) -> dict:
    """Time ``reps`` rounds of :func:`run_secagg` over ``n`` random vectors of length ``d``.

    ``dropout_rate`` of the clients (the first ``round(rate * n)`` ids) drop before sending their masked
    input, which exercises the server's costliest path (mask-key reconstruction and mask regeneration).

    Returns a dict with ``client_seconds`` (mean total compute per client per round), ``server_seconds``
    (server compute per round), ``bytes_per_client`` (upload per client per round),
    ``bytes_down_per_client``, ``expansion`` (upload bytes / the ``4 d`` bytes of a plain float32 vector),
    ``max_abs_error`` of the unmasked sum and the parameters.
    """
    if reps < 1:
        raise ValueError(f"reps must be >= 1, got {reps}")
    if not 0 <= dropout_rate < 1:
        raise ValueError(f"dropout_rate must be in [0, 1), got {dropout_rate!r}")
    rng = np.random.default_rng(seed)
    vectors = [rng.uniform(-1.0, 1.0, size=int(d)).astype(np.float32) for _ in range(n)]
    drops = dict.fromkeys(range(round(dropout_rate * n)), "masked_input")
    plain = np.sum(np.asarray(vectors[len(drops) :], dtype=np.float64), axis=0)
    client_s, server_s, errs = [], [], []
    result = None
    for r in range(reps):
        result = run_secagg(
            vectors,
            clip_range=1.0,
            threshold=threshold,
            degree=degree,
            modulus_bits=modulus_bits,
            drop_before=drops,
            seed=seed + r,
        )
        client_s.append(result.timings["client_mean"])
        server_s.append(result.timings["server_total"])
        errs.append(float(np.max(np.abs(result.sum - plain))))
    assert result is not None
    return {
        "n": n,
        "d": int(d),
        "degree": degree if degree is not None else n - 1,
        "threshold": threshold,
        "modulus_bits": modulus_bits,
        "dropout_rate": dropout_rate,
        "client_seconds": float(np.mean(client_s)),
        "server_seconds": float(np.mean(server_s)),
        "bytes_per_client": result.bytes_per_client,
        "bytes_down_per_client": result.bytes_down_per_client,
        "expansion": result.bytes_per_client / (4.0 * d),
        "max_abs_error": max(errs),
    }


def default_degree(n: int) -> int:
    """An even degree of about ``2 log2 n`` (SecAgg+ uses O(log n) neighbours), capped at ``n - 1``."""
    k = 2 * math.ceil(math.log2(max(n, 2)))
    return min(k + (k % 2), n - 1)


if __name__ == "__main__":  # pragma: no cover - manual benchmark entry point
    for n in (10, 100):
        for d in (10_000, 100_000):
            k = default_degree(n)
            print(benchmark_secagg(n, d, degree=k, threshold=k // 2 + 1))
