"""Client-level differential privacy for federated averaging.

DP-FedAvg (McMahan et al. 2018, "Learning Differentially Private Recurrent Language Models"): each client
update is clipped to L2 norm ``C``; the server averages with a fixed denominator ``m`` (the expected number
of sampled clients) and adds ``N(0, (z C / m)^2)`` per coordinate, which is the sampled Gaussian mechanism
with noise multiplier ``z`` on the sum. Adaptive clipping follows Andrew et al. 2021 ("Differentially
Private Learning with Adaptive Clipping", Alg. 1 and Thm. 1).

The round-level layer that puts these together (bounded weights, Poisson sampling, secret noise, distributed
Skellam noise under secure aggregation, accounting) is :mod:`pftray.privacy.layer`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["AdaptiveClipping", "central_noise", "clip_update", "split_noise_multiplier"]


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


def _check_noise_args(noise_multiplier: float, clipping_norm: float) -> None:
    if not (math.isfinite(noise_multiplier) and noise_multiplier >= 0):
        raise ValueError(f"noise_multiplier must be finite and >= 0, got {noise_multiplier!r}")
    if not (math.isfinite(clipping_norm) and clipping_norm > 0):
        raise ValueError(f"clipping_norm must be finite and > 0, got {clipping_norm!r}")


class AdaptiveClipping:
    """Geometric quantile tracking of the clipping norm (Andrew et al. 2021, Alg. 1), on the CENTRED count.

    Each round, with ``b_i = 1[||Delta_i|| <= C]`` (the update was NOT clipped) over the ``n`` participants and the
    fixed denominator ``m`` (the expected cohort)::

        b_tilde = (sum_i (b_i - 1/2) + N(0, sigma_b^2)) / m + 1/2
        C <- C * exp(-eta_C * (b_tilde - gamma))

    The released quantity is the centred count ``sum_i (b_i - 1/2)``: adding or removing one participant moves it by
    exactly 1/2, which is the sensitivity behind the noise split of :func:`split_noise_multiplier`. (Releasing the
    plain count ``sum_i b_i``, whose sensitivity is 1, with that split overstates the noise.) If more than a fraction
    ``gamma`` of the updates fit under ``C`` the bound shrinks, otherwise it grows, so ``C`` tracks the
    ``gamma``-quantile of the update norms. (Counting the *clipped* fraction with this sign, as Flower 1.42 does,
    moves ``C`` away from the quantile.)

    Args:
        initial_clipping_norm: ``C_0 > 0``.
        target_quantile: ``gamma`` in (0, 1).
        clip_lr: ``eta_C > 0``.
        clipped_count_stddev: ``sigma_b >= 0`` (noise on the centred count; 0 = not private).
        rng: generator of the count noise. Default: keyed from the OS's CSPRNG, never stored (pass one only in
            tests that need a fixed draw).
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
        self._rng = rng

    def noised_centred_count(self, centred_count: float) -> float:
        """``sum_i (b_i - 1/2) + N(0, sigma_b^2)``: the value this mechanism releases."""
        if self.clipped_count_stddev == 0:
            return float(centred_count)
        from pftray.privacy.layer import secure_generator

        rng = self._rng if self._rng is not None else secure_generator()
        return float(centred_count + rng.normal(0.0, self.clipped_count_stddev))

    def step(self, *, noised_centred_count: float, num_updates: float) -> float:
        """Apply one step from an already-noised centred count over the fixed denominator ``m``."""
        if not num_updates > 0:
            raise ValueError(f"num_updates must be > 0, got {num_updates!r}")
        b_tilde = noised_centred_count / num_updates + 0.5
        self.clipping_norm *= math.exp(-self.clip_lr * (b_tilde - self.target_quantile))
        return self.clipping_norm

    def update(self, *, unclipped_count: float, num_updates: float, num_participants: float | None = None) -> float:
        """One step from ``sum_i b_i`` over ``num_participants`` clients (default ``m``) and the denominator ``m``.

        Returns the new clipping norm. Without noise and with ``n = m`` this is ``b_tilde = sum_i b_i / m``.
        """
        n = num_updates if num_participants is None else num_participants
        if not 0 <= unclipped_count <= n:
            raise ValueError(f"unclipped_count must be in [0, {n}], got {unclipped_count!r}")
        noised = self.noised_centred_count(unclipped_count - n / 2)
        return self.step(noised_centred_count=noised, num_updates=num_updates)

    def update_from_norms(self, norms: np.ndarray, *, num_updates: float | None = None) -> float:
        """Convenience: count ``norm <= C`` over ``norms`` and call :meth:`update`."""
        norms = np.asarray(norms, dtype=np.float64)
        if norms.ndim != 1 or not np.all(np.isfinite(norms)):
            raise ValueError("norms must be a finite 1-D array")
        count = float(np.sum(norms <= self.clipping_norm))
        return self.update(unclipped_count=count, num_updates=num_updates or len(norms), num_participants=len(norms))

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state. The noise generator is deliberately not part of it: a resumed run draws fresh
        noise (old noise is never needed again)."""
        return {
            "clipping_norm": self.clipping_norm,
            "target_quantile": self.target_quantile,
            "clip_lr": self.clip_lr,
            "clipped_count_stddev": self.clipped_count_stddev,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = {"clipping_norm", "target_quantile", "clip_lr", "clipped_count_stddev"} - set(state)
        if missing:
            raise ValueError(f"AdaptiveClipping state is missing keys {sorted(missing)}")
        self.clipping_norm = float(state["clipping_norm"])
        self.target_quantile = float(state["target_quantile"])
        self.clip_lr = float(state["clip_lr"])
        self.clipped_count_stddev = float(state["clipped_count_stddev"])
