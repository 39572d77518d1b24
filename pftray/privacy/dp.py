"""Client-level differential privacy for federated averaging.

DP-FedAvg (McMahan et al. 2018, "Learning Differentially Private Recurrent Language Models"): each client
update is clipped to L2 norm ``C``; the server averages with a fixed denominator ``m`` (the expected number
of sampled clients) and adds ``N(0, (z C / m)^2)`` per coordinate, which is the sampled Gaussian mechanism
with noise multiplier ``z`` on the sum. Adaptive clipping follows Andrew et al. 2021 ("Differentially
Private Learning with Adaptive Clipping", Alg. 1 and Thm. 1).

Distributed noise: with secure aggregation the server never sees an individual update, so each of ``n``
sampled clients adds ``N(0, (z C)^2 / n)`` itself and the sum carries ``N(0, (z C)^2)``. **Dropout caveat:**
if only ``s < n`` clients survive, the sum carries variance ``s/n (z C)^2`` only, i.e. the effective noise
multiplier is ``z sqrt(s / n)`` (:func:`effective_noise_multiplier`); account with that value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

__all__ = [
    "AdaptiveClipping",
    "DPSpec",
    "central_noise",
    "clip_update",
    "distributed_noise_share",
    "effective_noise_multiplier",
    "split_noise_multiplier",
]

Placement = Literal["central", "distributed"]


def clip_update(delta: np.ndarray, clipping_norm: float) -> tuple[np.ndarray, float, bool]:
    """Scale ``delta`` to L2 norm at most ``clipping_norm``: ``delta * min(1, C / ||delta||)``.

    Returns ``(clipped, original_norm, was_clipped)``; ``was_clipped`` is ``norm > C`` (so
    ``not was_clipped`` is the indicator ``b_i`` of Andrew et al. 2021). Non-finite input raises ``ValueError``.
    """
    if not (math.isfinite(clipping_norm) and clipping_norm > 0):
        raise ValueError(f"clipping_norm must be a finite positive float, got {clipping_norm!r}")
    delta = np.asarray(delta)
    if not np.all(np.isfinite(delta)):
        raise ValueError(
            f"clip_update: delta contains {int(np.sum(~np.isfinite(delta)))} non-finite values (NaN/inf)"
        )
    norm = float(np.linalg.norm(delta.astype(np.float64, copy=False).ravel()))
    if norm > clipping_norm:
        return (delta * (clipping_norm / norm)).astype(delta.dtype, copy=False), norm, True
    return delta.copy(), norm, False


def split_noise_multiplier(*, noise_multiplier: float, clipped_count_stddev: float) -> float:
    """Noise multiplier ``z_Delta`` left for the update sum when the clipped count is also privatised.

    Andrew et al. 2021, Thm. 1: releasing the sum with ``z_Delta`` and the count with stddev ``sigma_b``
    composes to a Gaussian mechanism with multiplier ``z`` when ``z_Delta = (z^-2 - (2 sigma_b)^-2)^-1/2``.
    Requires ``2 sigma_b > z``. ``clipped_count_stddev == 0`` is only valid with ``noise_multiplier == 0``.
    """
    z, sb = noise_multiplier, clipped_count_stddev
    if z < 0 or sb < 0:
        raise ValueError(f"noise_multiplier and clipped_count_stddev must be >= 0, got {z!r}, {sb!r}")
    if z == 0:
        return 0.0
    if 2 * sb <= z:
        raise ValueError(
            f"clipped_count_stddev={sb} too small for noise_multiplier={z}: need 2 * clipped_count_stddev > z"
        )
    return (z**-2 - (2 * sb) ** -2) ** -0.5


def effective_noise_multiplier(*, noise_multiplier: float, num_clients: int, num_survivors: int) -> float:
    """Noise multiplier of the sum when ``num_survivors`` of ``num_clients`` added distributed noise shares.

    Each share has variance ``(z C)^2 / n``; ``s`` of them give ``s/n (z C)^2``, so ``z_eff = z sqrt(s/n)``.
    """
    if num_clients < 1 or not 0 <= num_survivors <= num_clients:
        raise ValueError(f"need 0 <= num_survivors <= num_clients, got {num_survivors}, {num_clients}")
    return noise_multiplier * math.sqrt(num_survivors / num_clients)


def central_noise(
    shape: tuple[int, ...] | int,
    *,
    noise_multiplier: float,
    clipping_norm: float,
    denominator: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Noise for the fixed-denominator average: ``N(0, (z C / m)^2)`` i.i.d. per coordinate (float64)."""
    _check_noise_args(noise_multiplier, clipping_norm)
    if not denominator > 0:
        raise ValueError(f"denominator must be > 0, got {denominator!r}")
    return rng.normal(0.0, noise_multiplier * clipping_norm / denominator, size=shape)


def distributed_noise_share(
    shape: tuple[int, ...] | int,
    *,
    noise_multiplier: float,
    clipping_norm: float,
    num_clients: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """One client's share ``N(0, (z C)^2 / n)`` of the sum-scale noise (see the dropout caveat above)."""
    _check_noise_args(noise_multiplier, clipping_norm)
    if not isinstance(num_clients, int) or num_clients < 1:
        raise ValueError(f"num_clients must be a positive int, got {num_clients!r}")
    return rng.normal(0.0, noise_multiplier * clipping_norm / math.sqrt(num_clients), size=shape)


def _check_noise_args(noise_multiplier: float, clipping_norm: float) -> None:
    if not (math.isfinite(noise_multiplier) and noise_multiplier >= 0):
        raise ValueError(f"noise_multiplier must be finite and >= 0, got {noise_multiplier!r}")
    if not (math.isfinite(clipping_norm) and clipping_norm > 0):
        raise ValueError(f"clipping_norm must be finite and > 0, got {clipping_norm!r}")


class AdaptiveClipping:
    """Geometric quantile tracking of the clipping norm (Andrew et al. 2021, Alg. 1).

    Each round, with ``b_i = 1[||Delta_i|| <= C]`` (the update was NOT clipped) over ``m`` clients::

        b_tilde = (sum_i b_i + N(0, sigma_b^2)) / m
        C <- C * exp(-eta_C * (b_tilde - gamma))

    If more than a fraction ``gamma`` of the updates fit under ``C`` the bound shrinks, otherwise it grows,
    so ``C`` tracks the ``gamma``-quantile of the update norms. (Counting the *clipped* fraction with this
    sign, as Flower 1.42 does, moves ``C`` away from the quantile.)

    Args:
        initial_clipping_norm: ``C_0 > 0``.
        target_quantile: ``gamma`` in (0, 1).
        clip_lr: ``eta_C > 0``.
        clipped_count_stddev: ``sigma_b >= 0`` (noise on the count; 0 = not private).
        rng: generator of the count noise.
    """

    def __init__(
        self,
        initial_clipping_norm: float,
        *,
        target_quantile: float = 0.5,
        clip_lr: float = 0.2,
        clipped_count_stddev: float = 0.0,
        rng: np.random.Generator | None = None,
    ) -> None:
        if not (math.isfinite(initial_clipping_norm) and initial_clipping_norm > 0):
            raise ValueError(f"initial_clipping_norm must be finite and > 0, got {initial_clipping_norm!r}")
        if not 0 < target_quantile < 1:
            raise ValueError(f"target_quantile must be in (0, 1), got {target_quantile!r}")
        if not clip_lr > 0:
            raise ValueError(f"clip_lr must be > 0, got {clip_lr!r}")
        if not clipped_count_stddev >= 0:
            raise ValueError(f"clipped_count_stddev must be >= 0, got {clipped_count_stddev!r}")
        self.clipping_norm = float(initial_clipping_norm)
        self.target_quantile = float(target_quantile)
        self.clip_lr = float(clip_lr)
        self.clipped_count_stddev = float(clipped_count_stddev)
        self.rng = rng if rng is not None else np.random.default_rng()

    def update(self, *, unclipped_count: float, num_updates: float) -> float:
        """Apply one step from ``sum_i b_i`` (e.g. obtained by secure aggregation) over ``m`` updates.

        ``num_updates`` is the fixed denominator ``m``. Returns the new clipping norm.
        """
        if not num_updates > 0:
            raise ValueError(f"num_updates must be > 0, got {num_updates!r}")
        if not 0 <= unclipped_count <= num_updates:
            raise ValueError(f"unclipped_count must be in [0, {num_updates}], got {unclipped_count!r}")
        noise = self.rng.normal(0.0, self.clipped_count_stddev) if self.clipped_count_stddev > 0 else 0.0
        b_tilde = (unclipped_count + noise) / num_updates
        self.clipping_norm *= math.exp(-self.clip_lr * (b_tilde - self.target_quantile))
        return self.clipping_norm

    def update_from_norms(self, norms: np.ndarray, *, num_updates: float | None = None) -> float:
        """Convenience: count ``norm <= C`` over ``norms`` and call :meth:`update`."""
        norms = np.asarray(norms, dtype=np.float64)
        if norms.ndim != 1 or not np.all(np.isfinite(norms)):
            raise ValueError("norms must be a finite 1-D array")
        count = float(np.sum(norms <= self.clipping_norm))
        return self.update(unclipped_count=count, num_updates=num_updates or len(norms))

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state (the rng state included, so a resumed run draws the same noise)."""
        return {
            "clipping_norm": self.clipping_norm,
            "target_quantile": self.target_quantile,
            "clip_lr": self.clip_lr,
            "clipped_count_stddev": self.clipped_count_stddev,
            "rng_state": self.rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = {"clipping_norm", "target_quantile", "clip_lr", "clipped_count_stddev"} - set(state)
        if missing:
            raise ValueError(f"AdaptiveClipping state is missing keys {sorted(missing)}")
        self.clipping_norm = float(state["clipping_norm"])
        self.target_quantile = float(state["target_quantile"])
        self.clip_lr = float(state["clip_lr"])
        self.clipped_count_stddev = float(state["clipped_count_stddev"])
        if "rng_state" in state:
            self.rng.bit_generator.state = state["rng_state"]


@dataclass(frozen=True)
class DPSpec:
    """Client-level DP configuration of a federated run.

    Attributes:
        noise_multiplier: ``z`` of the Gaussian mechanism on the sum (0 disables noise, not clipping).
        clipping_norm: ``C`` (initial ``C_0`` when adaptive).
        adaptive: track a quantile of the update norms (Andrew et al. 2021).
        target_quantile: ``gamma``; 0.5 is the paper's default.
        clip_lr: ``eta_C``; 0.2 is the paper's default.
        clipped_count_stddev: ``sigma_b``; the paper uses ``m / 20``.
        placement: ``"central"`` (server adds noise) or ``"distributed"`` (clients add shares under SecAgg).
        denominator: fixed denominator ``m`` of the average (expected clients per round).
    """

    noise_multiplier: float
    clipping_norm: float
    adaptive: bool = False
    target_quantile: float = 0.5
    clip_lr: float = 0.2
    clipped_count_stddev: float = 0.0
    placement: Placement = "central"
    denominator: float = 1.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier >= 0):
            raise ValueError(f"noise_multiplier must be finite and >= 0, got {self.noise_multiplier!r}")
        if not (math.isfinite(self.clipping_norm) and self.clipping_norm > 0):
            raise ValueError(f"clipping_norm must be finite and > 0, got {self.clipping_norm!r}")
        if not isinstance(self.adaptive, bool):
            raise ValueError(f"adaptive must be a bool, got {self.adaptive!r}")
        if not 0 < self.target_quantile < 1:
            raise ValueError(f"target_quantile must be in (0, 1), got {self.target_quantile!r}")
        if not (math.isfinite(self.clip_lr) and self.clip_lr > 0):
            raise ValueError(f"clip_lr must be finite and > 0, got {self.clip_lr!r}")
        if not (math.isfinite(self.clipped_count_stddev) and self.clipped_count_stddev >= 0):
            raise ValueError(
                f"clipped_count_stddev must be finite and >= 0, got {self.clipped_count_stddev!r}"
            )
        if self.placement not in ("central", "distributed"):
            raise ValueError(f"placement must be 'central' or 'distributed', got {self.placement!r}")
        if not (math.isfinite(self.denominator) and self.denominator > 0):
            raise ValueError(f"denominator must be finite and > 0, got {self.denominator!r}")
        if self.adaptive and self.noise_multiplier > 0:
            self.update_noise_multiplier  # noqa: B018 - validates 2 sigma_b > z

    @property
    def update_noise_multiplier(self) -> float:
        """Multiplier applied to the update sum: ``z_Delta`` when adaptive (noise budget split), else ``z``."""
        if not self.adaptive:
            return self.noise_multiplier
        return split_noise_multiplier(
            noise_multiplier=self.noise_multiplier, clipped_count_stddev=self.clipped_count_stddev
        )
