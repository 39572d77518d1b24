"""One secure-aggregation round run in this process (tests, benchmarks, and a reference for the Ray layer)."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from pftray.privacy.secagg.client import SecAggClient
from pftray.privacy.secagg.messages import STAGES, RejectedShare
from pftray.privacy.secagg.quantize import Rounding
from pftray.privacy.secagg.server import SecAggParams, SecAggServer

__all__ = ["SecAggResult", "run_secagg"]


@dataclass(frozen=True)
class SecAggResult:
    """Outcome of :func:`run_secagg`.

    Attributes:
        sum: dequantised sum of the survivors' (clipped) vectors, float64.
        survivors: ids whose vectors are in the sum.
        dropped: ``{id: reason}`` for every client that left the round.
        bytes_per_client: mean bytes uploaded per surviving client over all stages.
        bytes_down_per_client: mean bytes downloaded per surviving client over all stages.
        timings: seconds; ``client_<stage>`` summed over clients, ``server_<stage>``, ``client_mean``
            (mean total per surviving client) and ``server_total``.
        rejected_shares: shares discarded during unmasking, with reasons.
    """

    sum: np.ndarray = field(repr=False)
    survivors: tuple[int, ...]
    dropped: Mapping[int, str]
    bytes_per_client: float
    bytes_down_per_client: float
    timings: Mapping[str, float]
    rejected_shares: tuple[RejectedShare, ...] = ()


def run_secagg(
    vectors: Sequence[np.ndarray],
    *,
    clip_range: float,
    threshold: int,
    degree: int | None = None,
    modulus_bits: int = 32,
    rounding: Rounding = "stochastic",
    drop_before: Mapping[int, str] | None = None,
    seed: int = 0,
) -> SecAggResult:
    """Run SecAgg(+) over ``vectors`` (client ``i`` holds ``vectors[i]``) with simulated dropouts.

    ``drop_before`` maps a client index to the stage it never answers (one of
    ``"advertise_keys"``, ``"share_keys"``, ``"masked_input"``, ``"unmask"``); the client is silent from then
    on. ``seed`` fixes the neighbour graph and the quantisation rounding (keys are always fresh).
    Raises :class:`SecAggAbort` when too few clients survive.
    """
    n = len(vectors)
    drop_before = dict(drop_before or {})
    for cid, stage in drop_before.items():
        if cid not in range(n):
            raise ValueError(f"drop_before: client {cid} is not in range({n})")
        if stage not in STAGES:
            raise ValueError(f"drop_before[{cid}]={stage!r}; allowed stages: {STAGES}")
    d = int(np.asarray(vectors[0]).size)
    params = SecAggParams(
        sample=tuple(range(n)),
        vector_length=d,
        clip_range=clip_range,
        threshold=threshold,
        degree=degree,
        modulus_bits=modulus_bits,
        rounding=rounding,
        graph_seed=seed,
    )
    server = SecAggServer(params)
    rngs = np.random.default_rng(seed).spawn(n)
    clients = {u: SecAggClient(u, rng=rngs[u]) for u in range(n)}
    timings: dict[str, float] = {}
    up = dict.fromkeys(range(n), 0)
    down = dict.fromkeys(range(n), 0)
    client_time = dict.fromkeys(range(n), 0.0)

    def live(stage: str, messages: Mapping[int, object]) -> list[int]:
        return [u for u in messages if not _dropped_by(drop_before.get(u), stage)]

    def client_round(stage: str, messages: Mapping[int, object], call) -> list[object]:
        replies = []
        t_stage = 0.0
        for u in live(stage, messages):
            down[u] += messages[u].nbytes  # type: ignore[attr-defined]
            t0 = time.perf_counter()
            reply = call(u, messages[u])
            dt = time.perf_counter() - t0
            client_time[u] += dt
            t_stage += dt
            up[u] += reply.nbytes
            replies.append(reply)
        timings[f"client_{stage}"] = t_stage
        return replies

    def server_step(stage: str, fn, arg):
        t0 = time.perf_counter()
        out = fn(arg)
        timings[f"server_{stage}"] = time.perf_counter() - t0
        return out

    setup_msgs = server_step("setup", lambda _: server.setup(), None)
    replies = client_round("advertise_keys", setup_msgs, lambda u, m: clients[u].setup(m))
    directory = server_step("advertise_keys", server.advertise_keys, replies)
    replies = client_round("share_keys", directory, lambda u, m: clients[u].share_keys(m))
    deliveries = server_step("share_keys", server.share_keys, replies)
    replies = client_round(
        "masked_input", deliveries, lambda u, m: clients[u].masked_input(m, np.asarray(vectors[u]).ravel())
    )
    requests = server_step("masked_input", server.masked_input, replies)
    replies = client_round("unmask", requests, lambda u, m: clients[u].unmask(m))
    outcome = server_step("unmask", server.unmask, replies)

    survivors = outcome.survivors
    timings["client_mean"] = float(np.mean([client_time[u] for u in survivors]))
    timings["server_total"] = sum(v for key, v in timings.items() if key.startswith("server_"))
    return SecAggResult(
        sum=outcome.sum,
        survivors=survivors,
        dropped=outcome.dropped,
        bytes_per_client=float(np.mean([up[u] for u in survivors])),
        bytes_down_per_client=float(np.mean([down[u] for u in survivors])),
        timings=timings,
        rejected_shares=outcome.rejected_shares,
    )


def _dropped_by(drop_stage: str | None, stage: str) -> bool:
    """Whether a client scheduled to drop before ``drop_stage`` is silent at ``stage``."""
    return drop_stage is not None and STAGES.index(stage) >= STAGES.index(drop_stage)
