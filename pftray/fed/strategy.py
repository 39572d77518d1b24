"""Aggregation strategies (pure, no Ray): FedAvg, FedProx, ISFA, and the server optimisers.

A strategy decides the aggregation **weights before aggregation** from the clients' scalar reports, so that each
client can scale its own update before it is clipped, noised and masked: with secure aggregation the server
only ever sees ``sum_k w_k * delta_k``. The server optimiser then applies that aggregated delta.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pftray.config import FedConfig


def aggregate(results: Sequence[tuple[np.ndarray, float]]) -> np.ndarray:
    """Weighted sum ``sum_k w_k x_k`` of ``(vector, weight)`` pairs (weights already normalised)."""
    if not results:
        raise ValueError("aggregate: no results")
    out = np.zeros_like(results[0][0], dtype=np.float64)
    for x, w in results:
        out += w * x.astype(np.float64)
    return out.astype(np.float32)


def fedavg_weights(num_examples: Sequence[float]) -> np.ndarray:
    """FedAvg (McMahan et al. 2017): ``w_k = n_k / sum_j n_j``."""
    n = np.asarray(num_examples, dtype=np.float64)
    if n.ndim != 1 or len(n) == 0 or np.any(n < 0) or n.sum() <= 0:
        raise ValueError(f"fedavg_weights: need non-negative example counts with a positive sum, got {n.tolist()}")
    return n / n.sum()


def isfa_scores(id_sim: Sequence[float], temp_stab: Sequence[float], *, alpha: float) -> np.ndarray:
    """ISFA reliability score ``s_k = alpha * IDSim_k + (1 - alpha) * TempStab_k`` (PrivFedTalk)."""
    i, t = np.asarray(id_sim, dtype=np.float64), np.asarray(temp_stab, dtype=np.float64)
    if not (0.0 <= alpha <= 1.0):
        raise ValueError(f"isfa_scores: alpha must be in [0, 1], got {alpha}")
    if np.any(~np.isfinite(i)) or np.any(~np.isfinite(t)):
        raise ValueError("isfa_scores: non-finite reliability scalar")
    return alpha * i + (1 - alpha) * t


def isfa_weights(num_examples: Sequence[float], scores: Sequence[float], *, gamma: float) -> np.ndarray:
    """ISFA weights ``w_k ∝ n_k * exp(gamma * s_k)``, normalised (computed stably in log space)."""
    n = np.asarray(num_examples, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    if n.shape != s.shape:
        raise ValueError(f"isfa_weights: {n.shape} example counts vs {s.shape} scores")
    fedavg_weights(n)  # validates the counts
    with np.errstate(divide="ignore"):
        logw = np.log(n) + gamma * s
    logw -= logw[np.isfinite(logw)].max()
    w = np.exp(logw)
    return w / w.sum()


#: robust z-scores are clipped to this many MADs, so one wildly off score cannot take a round's whole weight away
ROUND_Z_CLIP = 3.0


def round_z(scores: Sequence[float]) -> np.ndarray:
    """Robust z-scores of a round's scores: ``(s - median) / (1.4826 * MAD)``, clipped to +-:data:`ROUND_Z_CLIP`.

    Scale-free: ISFA's raw scores of reliable and unreliable clients differ by ~1e-3, which ``exp(gamma * s)`` at
    any sensible ``gamma`` leaves uniform; ranked against the round, the same scores spread over a few units. The
    median and MAD resist up to half of the round being unreliable. A round whose scores do not vary (MAD 0, e.g.
    one client) gets z = 0 for everyone, i.e. FedAvg weights."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1 or len(s) == 0 or np.any(~np.isfinite(s)):
        raise ValueError(f"round_z: need finite scores, got {s.tolist()}")
    med = float(np.median(s))
    mad = 1.4826 * float(np.median(np.abs(s - med)))
    if mad <= 1e-12 * max(1.0, abs(med)):
        return np.zeros_like(s)
    return np.clip((s - med) / mad, -ROUND_Z_CLIP, ROUND_Z_CLIP)


def device_weight(scalars: dict[str, Any], spec: dict[str, Any]) -> float:
    """A client's own aggregation weight under DP, from ITS scalars only (computed on the client's host).

    ``omega = min(n, cap) / cap`` (1 when ``example_cap`` is 0: every client counts the same, as in DP-FedAvg), times
    for ISFA ``exp(gamma (s - 1))`` with the score ``s = alpha IDSim + (1 - alpha) TempStab`` clamped to [0, 1]. So
    ``omega`` lies in [0, 1] by construction (the DP layer clamps it again whatever a client reports), and the ratio of
    two clients' ISFA weights is ``(n_i / n_j) exp(gamma (s_i - s_j))``, exactly as in normalised ISFA. What changes is
    the normalisation: the server divides the sum by the fixed expected cohort ``m`` instead of by the round's total
    weight, so a round of low-scoring clients moves the model less instead of being rescaled to a full step.
    """
    cap = float(spec.get("example_cap", 0))
    n = float(scalars.get("num_examples", 0))
    w = 1.0 if cap <= 0 else min(max(n, 0.0), cap) / cap
    if spec.get("kind") == "isfa":
        s = spec["alpha"] * float(scalars["id_sim"]) + (1 - spec["alpha"]) * float(scalars["temp_stab"])
        w *= float(np.exp(spec["gamma"] * (min(max(s, 0.0), 1.0) - 1.0)))
    return w


class Strategy:
    """Base: FedAvg weighting, no client-side extras. Subclasses override :meth:`weights` or :meth:`client_config`.

    Without DP the server normalises :meth:`weights` over the round's successful clients. Under client-level DP a
    client's weight may not depend on any other client's report, so the strategy instead names an on-device rule
    (:meth:`device_weight_spec`, evaluated by :func:`device_weight` on the client's host)."""

    name = "base"
    aggregates = True  # the server sums the round's updates into the global shared adapter
    central = False  # one trainer sees every client's clips (the pooled baseline)

    def __init__(self, cfg: FedConfig):
        self.cfg = cfg

    def client_config(self, server_round: int) -> dict[str, Any]:
        """What travels to clients with the round (FedProx's ``mu``...)."""
        return {"mu": 0.0}

    def weights(self, reports: Sequence[dict[str, Any]]) -> np.ndarray:
        return fedavg_weights([r["num_examples"] for r in reports])

    def scores(self, reports: Sequence[dict[str, Any]]) -> np.ndarray:
        """The per-client score recorded in ``clients.parquet`` (ISFA's s_k; NaN for strategies without one)."""
        return np.full(len(reports), np.nan)

    def device_weight_spec(self, example_cap: int) -> dict[str, Any]:
        return {"kind": "fedavg", "example_cap": int(example_cap)}


class FedAvg(Strategy):
    name = "fedavg"


class FedProx(FedAvg):
    """FedProx (Li et al. 2020) = FedAvg aggregation + the client-side proximal term with ``mu``."""

    name = "fedprox"

    def client_config(self, server_round: int) -> dict[str, Any]:
        return {"mu": self.cfg.mu}


class ISFA(Strategy):
    """Identity-Stability Federated Aggregation (PrivFedTalk): reliability-weighted FedAvg."""

    name = "isfa"

    def client_config(self, server_round: int) -> dict[str, Any]:
        return {"mu": self.cfg.mu}

    def scores(self, reports: Sequence[dict[str, Any]]) -> np.ndarray:
        return isfa_scores([r["id_sim"] for r in reports], [r["temp_stab"] for r in reports],
                           alpha=self.cfg.isfa_alpha)

    def weights(self, reports: Sequence[dict[str, Any]]) -> np.ndarray:
        s = self.scores(reports)
        if self.cfg.isfa_weighting == "round_z":
            s = round_z(s)
        return isfa_weights([r["num_examples"] for r in reports], s, gamma=self.cfg.isfa_gamma)

    def device_weight_spec(self, example_cap: int) -> dict[str, Any]:
        if self.cfg.isfa_weighting != "raw":  # the config refuses it with DP or secure aggregation
            raise ValueError(f"fed.isfa_weighting {self.cfg.isfa_weighting!r} has no on-device weight")
        return {"kind": "isfa", "example_cap": int(example_cap), "alpha": self.cfg.isfa_alpha,
                "gamma": self.cfg.isfa_gamma}


class LocalOnly(FedAvg):
    """Baseline *local only*: every sampled client trains both adapters (its own copy of the shared one, kept in its
    private state) on its own clips, for the same local compute as the federated methods; nothing is uploaded and
    nothing is aggregated, so the global shared adapter stays at its data-independent initialisation."""

    name = "local"
    aggregates = False

    def client_config(self, server_round: int) -> dict[str, Any]:
        return {"mu": 0.0, "local_shared": True}


class Pooled(FedAvg):
    """Baseline *pooled*: the same adapters trained centrally on all clients' clips together (one trainer in one
    process sees every clip; :meth:`pftray.fed.client.ClientTrainer.fit_pooled`), for the federated methods'
    expected compute per round (clients per round x local steps). The non-private upper bound."""

    name = "pooled"
    central = True

    def client_config(self, server_round: int) -> dict[str, Any]:
        return {"mu": 0.0, "pooled": True}


STRATEGIES: dict[str, type[Strategy]] = {"fedavg": FedAvg, "fedprox": FedProx, "isfa": ISFA, "local": LocalOnly,
                                         "pooled": Pooled}
#: the baselines among the strategies (no federated aggregation; no client-level DP or secure aggregation)
BASELINES = ("local", "pooled")


def make_strategy(cfg: FedConfig) -> Strategy:
    try:
        return STRATEGIES[cfg.strategy](cfg)
    except KeyError:
        raise ValueError(f"fed.strategy: {cfg.strategy!r} is not registered; known: {sorted(STRATEGIES)}") from None


@dataclass
class ServerOptimizer:
    """Applies the aggregated delta: ``sgd`` (``w += lr * delta``; lr 1 = FedAvg) or ``adam`` (FedAdam,
    Reddi et al. 2021, Alg. 2: ``m = b1 m + (1-b1) d``, ``v = b2 v + (1-b2) d^2``, ``w += lr m / (sqrt(v) + tau)``)."""

    kind: str = "sgd"
    lr: float = 1.0
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3
    m: np.ndarray | None = None
    v: np.ndarray | None = None

    @classmethod
    def from_config(cls, cfg: FedConfig) -> ServerOptimizer:
        return cls(cfg.server_optimizer, cfg.server_lr, cfg.server_beta1, cfg.server_beta2, cfg.server_tau)

    def step(self, weights: np.ndarray, delta: np.ndarray) -> np.ndarray:
        if delta.shape != weights.shape:
            raise ValueError(f"server step: delta shape {delta.shape} != weights {weights.shape}")
        if self.kind == "sgd":
            return (weights + self.lr * delta).astype(np.float32)
        if self.m is None:
            self.m, self.v = np.zeros_like(delta), np.zeros_like(delta)
        self.m = self.beta1 * self.m + (1 - self.beta1) * delta
        self.v = self.beta2 * self.v + (1 - self.beta2) * delta**2
        return (weights + self.lr * self.m / (np.sqrt(self.v) + self.tau)).astype(np.float32)

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "m": self.m, "v": self.v}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["kind"] != self.kind:
            raise ValueError(f"server optimiser checkpoint is {state['kind']!r}, config says {self.kind!r}")
        self.m, self.v = state["m"], state["v"]
