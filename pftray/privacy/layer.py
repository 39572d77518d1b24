"""Client-level DP as a layer around any aggregation strategy (pure numpy: no Ray, no torch, no ``fed``).

The strategy only says how much each client *wants* to count, as a weight ``omega_k`` computed from that client's
own report; this layer turns the round into a mechanism whose sensitivity no report can break:

* **bounded contribution**: ``omega_k`` is forced into ``[0, 1]`` (NaN counts as 0) and each client sends
  ``c_k = clip(omega_k * Delta_k, C)``; the server divides the sum by the fixed denominator ``m = q N`` (the expected
  cohort), never by anything a client reports. Adding or removing one client therefore moves the sum by at most
  ``C``, whatever the other clients report.
* **Poisson sampling** with rate ``q`` (each registered client independently), which is what the accountant
  assumes. Fixed-size sampling under DP is refused by the config.
* **secret randomness**: the sample, the Gaussian / Skellam noise and the adaptive-clipping count noise are drawn
  from generators keyed afresh from the OS's CSPRNG (:func:`secure_generator`), never from the experiment seed, and
  their state is never stored. A DP run is therefore deliberately not bit-reproducible; resume works because it
  never needs old noise.
* **noise**: central (the trusted driver adds ``N(0, (z_Delta C)^2)`` to the sum) or distributed (each client adds
  integer Skellam noise to its fixed-point vector under secure aggregation; the survivors' shares add up to a
  Skellam of known parameter, accounted exactly).
* **adaptive clipping** (Andrew et al. 2021) on the *centred* count ``sum_k (b_k - 1/2)``, whose add/remove
  sensitivity is 1/2, which is what the noise split ``z_Delta = (z^-2 - (2 sigma_b)^-2)^-1/2`` assumes.
* **accounting**: every released round is one event of the ledger, built from the noise actually added; a round
  that would take the ledger past ``target_epsilon`` is not released (:meth:`DPLayer.would_exceed`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from pftray.privacy.accounting import PrivacyEvent, PrivacyLedger
from pftray.privacy.dp import AdaptiveClipping, split_noise_multiplier

__all__ = ["DPLayer", "DistributedNoisePlan", "bounded_weight", "secure_generator", "skellam_noise"]

#: per-coordinate headroom of the fixed-point range for the distributed noise, in noise standard deviations
NOISE_TAIL_SIGMAS = 14.0


def secure_generator() -> np.random.Generator:
    """A numpy generator keyed with 128 fresh bits from the OS's CSPRNG (``os.urandom``): nothing in the config, the
    run directory or an earlier draw determines it. Philox is a counter-based generator built on a block cipher;
    its key is never stored, so the draw cannot be regenerated."""
    return np.random.Generator(np.random.Philox(key=int.from_bytes(os.urandom(16), "little")))


def bounded_weight(omega: Any) -> float:
    """The weight the DP layer lets a client use: ``omega`` clamped to ``[0, 1]``; NaN, inf or junk count as 0."""
    try:
        w = float(omega)
    except (TypeError, ValueError):
        return 0.0
    if not math.isfinite(w):
        return 0.0
    return min(max(w, 0.0), 1.0)


def skellam_noise(shape: int | tuple[int, ...], mu: float, rng: np.random.Generator) -> np.ndarray:
    """Integer noise ``Poisson(mu) - Poisson(mu)`` per coordinate (variance ``2 mu``), as int64."""
    if not (math.isfinite(mu) and mu >= 0):
        raise ValueError(f"skellam mu must be finite and >= 0, got {mu!r}")
    if mu == 0:
        return np.zeros(shape, dtype=np.int64)
    return rng.poisson(mu, size=shape).astype(np.int64) - rng.poisson(mu, size=shape).astype(np.int64)


@dataclass(frozen=True)
class DistributedNoisePlan:
    """What every client of one distributed-DP round needs, and what the round will have released.

    The vector a client encodes is ``[clip(omega Delta, C), kappa (b - 1/2)]``, ``d + 1`` coordinates, at ``scale``
    integer units per 1.0; it adds ``Skellam(mu_share)`` to each coordinate. ``threshold`` is the fewest survivors the
    secure aggregation accepts, and ``mu_share = mu / threshold``, so any accepted sum carries at least ``mu``.
    """

    dim: int
    clipping_norm: float
    count_scale: float  # kappa: the indicator's weight in the vector (0 without adaptive clipping)
    scale: float
    threshold: int
    mu: float  # Skellam parameter of the sum with exactly ``threshold`` survivors
    signed_bound: float  # per-coordinate bound (float units) of any sum the fixed-point range must hold

    @property
    def mu_share(self) -> float:
        return self.mu / self.threshold

    @property
    def l2_sensitivity(self) -> float:
        """Add/remove-one L2 sensitivity in integer units: the client's vector norm, plus the rounding of each of
        its ``d + 1`` coordinates (stochastic rounding moves each by less than 1)."""
        vec = math.hypot(self.clipping_norm, self.count_scale / 2)
        return vec * self.scale + math.sqrt(self.dim + 1)

    @property
    def l1_sensitivity(self) -> float:
        """For an integer vector ``||v||_1 <= ||v||_2^2`` and ``||v||_1 <= sqrt(d) ||v||_2``."""
        d2 = self.l2_sensitivity
        return min(math.sqrt(self.dim + 1) * d2, d2 * d2)

    def sum_mu(self, survivors: int) -> float:
        return survivors * self.mu_share

    def noise_std(self, survivors: int) -> float:
        """Std (float units, per coordinate of the sum) of the noise that ``survivors`` shares add."""
        return math.sqrt(2 * self.sum_mu(survivors)) / self.scale


class DPLayer:
    """Clip, noise, sample and account one federated run (see the module docstring).

    Args:
        noise_multiplier: ``z``, the joint multiplier of everything a round releases (sum and, when adaptive, count).
        clipping_norm: ``C`` (``C_0`` when adaptive).
        sample_rate: Poisson rate ``q``.
        num_registered: ``N``; the fixed denominator is ``m = q N``.
        placement: ``"central"`` or ``"distributed"`` (the latter needs secure aggregation).
        adaptive / target_quantile / clip_lr / clipped_count_stddev: Andrew et al. 2021 (``sigma_b``; 0 = m / 20).
        delta, accountant, target_epsilon: the guarantee and its budget (0 = none).
        modulus_bits: SecAgg's modulus, for the fixed-point range of distributed noise.
    """

    def __init__(self, *, noise_multiplier: float, clipping_norm: float, sample_rate: float, num_registered: int,
                 placement: str = "central", adaptive: bool = False, target_quantile: float = 0.5,
                 clip_lr: float = 0.2, clipped_count_stddev: float = 0.0, delta: float = 1e-5,
                 accountant: str = "rdp", target_epsilon: float = 0.0, modulus_bits: int = 32) -> None:
        if not (math.isfinite(noise_multiplier) and noise_multiplier > 0):
            raise ValueError(f"privacy.noise_multiplier must be > 0 for the DP layer, got {noise_multiplier!r}")
        if not (math.isfinite(clipping_norm) and clipping_norm > 0):
            raise ValueError(f"privacy.clipping_norm must be > 0 under DP, got {clipping_norm!r}")
        if not 0 < sample_rate <= 1:
            raise ValueError(f"fed.sample_rate must be in (0, 1] under DP (Poisson sampling), got {sample_rate!r}")
        if placement not in ("central", "distributed"):
            raise ValueError(f"privacy.noise_placement must be 'central' or 'distributed', got {placement!r}")
        self.z = float(noise_multiplier)
        self.sample_rate = float(sample_rate)
        self.num_registered = int(num_registered)
        self.denominator = self.sample_rate * self.num_registered
        self.placement = placement
        self.delta, self.accountant, self.target_epsilon = float(delta), accountant, float(target_epsilon)
        self.modulus_bits = int(modulus_bits)
        self._fixed_norm = float(clipping_norm)
        self.adaptive: AdaptiveClipping | None = None
        if adaptive:
            sigma_b = float(clipped_count_stddev) or self.denominator / 20
            if 2 * sigma_b <= self.z:
                raise ValueError(
                    f"privacy.clipped_count_stddev: {sigma_b:g} (0 means m/20 with m = {self.denominator:g}) must "
                    f"exceed noise_multiplier / 2 = {self.z / 2:g} for the noise split of Andrew et al. 2021")
            self.adaptive = AdaptiveClipping(clipping_norm, target_quantile=target_quantile, clip_lr=clip_lr,
                                             clipped_count_stddev=sigma_b)
        self.ledger = PrivacyLedger()

    # ------------------------------------------------------------------------------------------ multipliers
    @property
    def clipping_norm(self) -> float:
        return self.adaptive.clipping_norm if self.adaptive is not None else self._fixed_norm

    @property
    def sigma_b(self) -> float:
        """Std of the noise on the centred unclipped count (0 without adaptive clipping)."""
        return self.adaptive.clipped_count_stddev if self.adaptive is not None else 0.0

    @property
    def update_noise_multiplier(self) -> float:
        """``z_Delta``: the multiplier on the update sum (``z`` itself without adaptive clipping)."""
        if self.adaptive is None:
            return self.z
        return split_noise_multiplier(noise_multiplier=self.z, clipped_count_stddev=self.sigma_b)

    @staticmethod
    def joint_noise_multiplier(update_noise_multiplier: float, count_stddev: float) -> float:
        """Multiplier of the joint release of the sum (``z_Delta``, sensitivity C) and the centred count
        (std ``sigma_b``, sensitivity 1/2): ``(z_Delta^-2 + (2 sigma_b)^-2)^-1/2``."""
        inv = update_noise_multiplier**-2 + ((2 * count_stddev) ** -2 if count_stddev > 0 else 0.0)
        return inv**-0.5

    # ------------------------------------------------------------------------------------------- sampling
    def sample(self) -> list[int]:
        """Poisson sampling: each registered client independently with probability ``q``, from secret randomness."""
        draw = secure_generator().random(self.num_registered)
        return [int(i) for i in np.flatnonzero(draw < self.sample_rate)]

    # ------------------------------------------------------------------------------------------- central
    def central_noise(self, dim: int) -> np.ndarray:
        """``N(0, (z_Delta C)^2)`` per coordinate of the SUM (float64), from secret randomness."""
        return secure_generator().normal(0.0, self.update_noise_multiplier * self.clipping_norm, size=dim)

    def central_event(self) -> PrivacyEvent:
        return PrivacyEvent(noise_multiplier=self.z, sample_rate=self.sample_rate, steps=1)

    # --------------------------------------------------------------------------------------- distributed
    def distributed_plan(self, *, dim: int, num_clients: int, threshold: int) -> DistributedNoisePlan:
        """Fixed-point scale, Skellam parameter and range for a round with ``num_clients`` entering SecAgg."""
        from pftray.privacy.secagg.quantize import SignedQuantization

        if not 1 <= threshold <= num_clients:
            raise ValueError(f"need 1 <= threshold <= num_clients, got {threshold}, {num_clients}")
        C, z_d = self.clipping_norm, self.update_noise_multiplier
        kappa = z_d * C / self.sigma_b if self.adaptive is not None else 0.0
        # noise std (float units) of the sum when every one of the n clients survives: the largest it can be
        std_max = z_d * C * math.sqrt(num_clients / threshold)
        bound = num_clients * max(C, kappa / 2) + NOISE_TAIL_SIGMAS * std_max
        scale = SignedQuantization.for_bound(bound, self.modulus_bits).scale
        # no finer than needed: the rounding term sqrt(d + 1) of the sensitivity stays ~1 % of C * scale, and the
        # Poisson parameters stay where numpy's sampler is accurate (its variance drifts by several % above ~1e14)
        scale = float(min(scale, max(1.0, math.ceil(100 * math.sqrt(dim + 1) / C))))
        mu = (z_d * C * scale) ** 2 / 2  # variance 2 mu = (z_Delta C scale)^2 with `threshold` survivors
        return DistributedNoisePlan(dim=dim, clipping_norm=C, count_scale=kappa, scale=scale, threshold=threshold,
                                    mu=mu, signed_bound=bound)

    def distributed_event(self, plan: DistributedNoisePlan, survivors: int) -> PrivacyEvent:
        from pftray.privacy.accounting import skellam_event

        return skellam_event(mu=plan.sum_mu(survivors), l2_sensitivity=plan.l2_sensitivity,
                             l1_sensitivity=plan.l1_sensitivity, sample_rate=self.sample_rate)

    # --------------------------------------------------------------------------------------- accounting
    def epsilon(self) -> float:
        return self.ledger.epsilon(self.delta, accountant=self.accountant) if self.ledger.events else 0.0

    def would_exceed(self, event: PrivacyEvent) -> tuple[bool, float]:
        """Whether releasing ``event`` would take epsilon past ``target_epsilon`` (never, without a target)."""
        if self.target_epsilon <= 0:
            return False, math.nan
        eps = self.ledger.predict([event], self.delta, accountant=self.accountant)
        return eps > self.target_epsilon, eps

    def record(self, event: PrivacyEvent) -> None:
        self.ledger.record(event)

    # -------------------------------------------------------------------------------------- adaptive clip
    def update_clipping(self, centred_count: float, *, noised: bool = False) -> float:
        """Adaptive step from the centred unclipped count ``sum_k (b_k - 1/2)``; ``noised`` when the count already
        carries its noise (distributed DP: the Skellam shares on the indicator coordinate)."""
        if self.adaptive is None:
            return self.clipping_norm
        value = centred_count if noised else self.adaptive.noised_centred_count(centred_count)
        return self.adaptive.step(noised_centred_count=value, num_updates=self.denominator)

    # ------------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {"adaptive": self.adaptive.state_dict() if self.adaptive is not None else None,
                "ledger": self.ledger.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.adaptive is not None and state.get("adaptive"):
            self.adaptive.load_state_dict(state["adaptive"])
        self.ledger.load_state_dict(state["ledger"])
