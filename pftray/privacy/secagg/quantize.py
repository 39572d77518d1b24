"""Fixed-point quantisation for secure aggregation (modular arithmetic mod ``2**k``).

A float vector is clipped to ``[-c, c]`` and mapped affinely onto the integer grid ``{0, ..., L}``::

    q(x) = round((clip(x, -c, c) + c) * s),   s = L / (2c),   L = floor((2**k - 1) / n)

where ``n`` is the largest number of clients whose vectors can enter one sum. Each quantised vector lies
in ``[0, L]`` and the sum of at most ``n`` of them is at most ``n * L <= 2**k - 1``, so the modular sum
never wraps and :func:`dequantize_sum` recovers ``sum_i x_i`` as ``S / s - m * c`` for ``m`` contributors.

Error bound (per coordinate, on the dequantised SUM of ``m`` clipped vectors), see
:func:`quantization_error_bound`:

* deterministic (round-to-nearest): ``|err| <= m / (2 s) = m * c / L``;
* stochastic rounding: every client's error is in ``(-1/s, 1/s)`` and has mean zero, so the sum is
  unbiased and ``|err| < m / s = 2 m c / L`` (with standard deviation at most ``sqrt(m) / (2 s)``).

Clipping to ``[-c, c]`` is a separate, data-dependent error that the bound does not include; with DP
clipping of the L2 norm to ``C`` choosing ``c >= C`` makes it zero.

:class:`SignedQuantization` is the alternative signed encoding for distributed discrete DP: ``x * scale`` is
rounded stochastically to an integer, integer noise may be added, and the modular sum is lifted to the centred
range ``(-2**(k-1), 2**(k-1)]``. It does not clip: the caller guarantees the bound on every sum it decodes.

The modulus is limited to ``k <= MAX_MODULUS_BITS`` (53) in both encodings, the config key being
``privacy.secagg_modulus_bits``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from pftray.privacy.secagg.primitives import uint_dtype

__all__ = [
    "MAX_MODULUS_BITS",
    "QuantizationSpec",
    "SignedQuantization",
    "dequantize_sum",
    "quantization_error_bound",
    "quantize",
]

#: float64 represents every integer below 2**53 exactly; a wider modulus would break the exact decoding
MAX_MODULUS_BITS = 53

Rounding = Literal["stochastic", "deterministic"]


def _check_modulus_bits(modulus_bits: object) -> None:
    """``ValueError`` naming the config key unless ``modulus_bits`` is an int in ``[2, MAX_MODULUS_BITS]``."""
    if isinstance(modulus_bits, bool) or not isinstance(modulus_bits, int) \
            or not 2 <= modulus_bits <= MAX_MODULUS_BITS:
        # float64 represents every integer below 2**53 exactly; a wider modulus would break the exact decoding
        raise ValueError(f"privacy.secagg_modulus_bits (modulus_bits) must be an int in [2, {MAX_MODULUS_BITS}], "
                         f"got {modulus_bits!r}")


@dataclass(frozen=True)
class QuantizationSpec:
    """Parameters of the fixed-point grid shared by the server and every client of one round.

    Attributes:
        clip_range: ``c``; each coordinate is clipped to ``[-c, c]`` before quantisation.
        num_clients: ``n``; the largest number of vectors that may be summed (the round's sample size).
        modulus_bits: ``k`` in [2, 53]; arithmetic is modulo ``2**k`` (uint32 words for k <= 32).
        rounding: ``"stochastic"`` (unbiased, default) or ``"deterministic"`` (round to nearest).
    """

    clip_range: float
    num_clients: int
    modulus_bits: int = 32
    rounding: Rounding = "stochastic"

    def __post_init__(self) -> None:
        if not (np.isfinite(self.clip_range) and self.clip_range > 0):
            raise ValueError(f"clip_range must be a finite positive float, got {self.clip_range!r}")
        if not isinstance(self.num_clients, int) or self.num_clients < 1:
            raise ValueError(f"num_clients must be a positive int, got {self.num_clients!r}")
        _check_modulus_bits(self.modulus_bits)
        if self.rounding not in ("stochastic", "deterministic"):
            raise ValueError(f"rounding must be 'stochastic' or 'deterministic', got {self.rounding!r}")
        if self.levels < 1:
            raise ValueError(
                f"modulus_bits={self.modulus_bits} leaves no room for num_clients={self.num_clients}: "
                f"need 2**k - 1 >= num_clients"
            )

    @property
    def levels(self) -> int:
        """``L = floor((2**k - 1) / n)``: the largest quantised value of one client."""
        return ((1 << self.modulus_bits) - 1) // self.num_clients

    @property
    def scale(self) -> float:
        """``s = L / (2c)``: quantisation steps per unit."""
        return self.levels / (2.0 * self.clip_range)


def quantize(x: np.ndarray, spec: QuantizationSpec, *, rng: np.random.Generator | None = None) -> np.ndarray:
    """Map a float vector onto ``{0..L}`` as :func:`uint_dtype` words (see module docstring).

    ``rng`` drives stochastic rounding (required when ``spec.rounding == "stochastic"``). Non-finite
    input raises ``ValueError``.
    """
    x = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(x)):
        raise ValueError("quantize: input contains NaN or inf")
    v = (np.clip(x, -spec.clip_range, spec.clip_range) + spec.clip_range) * spec.scale
    np.clip(v, 0.0, float(spec.levels), out=v)
    if spec.rounding == "deterministic":
        q = np.rint(v)
    else:
        if rng is None:
            raise ValueError("quantize: stochastic rounding needs an rng")
        q = np.floor(v)
        q += rng.random(v.shape) < (v - q)
        np.minimum(q, float(spec.levels), out=q)
    return q.astype(uint_dtype(spec.modulus_bits))


def dequantize_sum(total: np.ndarray, spec: QuantizationSpec, *, num_summed: int) -> np.ndarray:
    """Invert the affine map on a sum of ``num_summed`` quantised vectors: ``S / s - num_summed * c``."""
    if not isinstance(num_summed, int) or not 1 <= num_summed <= spec.num_clients:
        raise ValueError(f"num_summed must be an int in [1, {spec.num_clients}], got {num_summed!r}")
    return np.asarray(total, dtype=np.float64) / spec.scale - num_summed * spec.clip_range


def quantization_error_bound(spec: QuantizationSpec, *, num_summed: int) -> float:
    """Worst-case absolute per-coordinate error of the dequantised sum of ``num_summed`` vectors in range.

    ``m / (2 s)`` for deterministic rounding and ``m / s`` for stochastic rounding (strict).
    """
    if not isinstance(num_summed, int) or num_summed < 1:
        raise ValueError(f"num_summed must be a positive int, got {num_summed!r}")
    per_client = 0.5 / spec.scale if spec.rounding == "deterministic" else 1.0 / spec.scale
    return num_summed * per_client


@dataclass(frozen=True)
class SignedQuantization:
    """Signed fixed point mod ``2**k`` with room for integer noise (distributed DP under secure aggregation).

    A client encodes ``x`` as ``round_stochastic(x * scale)`` (int64), adds its integer noise, and reduces mod
    ``2**k``; the server lifts the modular sum back to ``(-2**(k-1), 2**(k-1)]`` and divides by ``scale``. Nothing is
    clipped: the caller guarantees, through :meth:`for_bound`, that every coordinate of any sum it will decode lies
    within ``bound`` (float units), rounding and noise included, so the lift is exact.
    """

    scale: float
    modulus_bits: int

    def __post_init__(self) -> None:
        _check_modulus_bits(self.modulus_bits)
        if not (np.isfinite(self.scale) and self.scale >= 1):
            raise ValueError(f"scale must be finite and >= 1, got {self.scale!r}")

    @classmethod
    def for_bound(cls, bound: float, modulus_bits: int) -> SignedQuantization:
        """The largest integer scale at which any sum with ``|value| <= bound`` per coordinate lifts back exactly.

        ``scale = floor((2**(k-1) - 1) / bound)``: an integer sum ``S`` with ``|S| <= bound * scale <= 2**(k-1) - 1``
        lies inside the lift's range. ``bound`` must cover the stochastic rounding (up to one integer unit per
        summand) and the integer noise; a ``scale`` below 1 raises ``ValueError`` (raise the modulus).
        """
        _check_modulus_bits(modulus_bits)
        if isinstance(bound, bool) or not isinstance(bound, int | float | np.integer | np.floating) \
                or not (np.isfinite(bound) and bound > 0):
            raise ValueError(f"bound must be finite and > 0, got {bound!r}")
        scale = float(((1 << (modulus_bits - 1)) - 1) // bound)
        if scale < 1:
            raise ValueError(f"privacy.secagg_modulus_bits={modulus_bits} cannot hold sums up to {bound:g}: "
                             "raise the modulus")
        return cls(scale=scale, modulus_bits=modulus_bits)

    def encode(self, x: np.ndarray, rng: np.random.Generator, *,
               integer_noise: np.ndarray | None = None) -> np.ndarray:
        """``(round_stochastic(x * scale) + noise) mod 2**k`` as the protocol's word type."""
        x = np.asarray(x, dtype=np.float64)
        if not np.all(np.isfinite(x)):
            raise ValueError("encode: input contains NaN or inf")
        v = x * self.scale
        if v.size and np.max(np.abs(v)) >= 2.0**62:
            raise ValueError(f"encode: |x| * scale reaches 2**62 (max |x| = {np.max(np.abs(x)):g}), far beyond "
                             f"the range of a 2**{self.modulus_bits} modulus")
        q = np.floor(v)
        q += rng.random(v.shape) < (v - q)
        q = q.astype(np.int64)
        if integer_noise is not None:
            noise = np.asarray(integer_noise)
            if noise.shape != q.shape or noise.dtype.kind not in "iu":
                raise ValueError(f"integer_noise must be an int array of shape {q.shape}")
            q = q + noise.astype(np.int64)
        return np.mod(q, np.int64(1) << self.modulus_bits).astype(uint_dtype(self.modulus_bits))

    def decode_sum(self, total: np.ndarray) -> np.ndarray:
        """Centred lift of a modular sum to ``(-2**(k-1), 2**(k-1)]``, divided by ``scale`` (float64)."""
        t = np.asarray(total).astype(np.int64) & ((np.int64(1) << self.modulus_bits) - 1)
        t = np.where(t > (np.int64(1) << (self.modulus_bits - 1)), t - (np.int64(1) << self.modulus_bits), t)
        return t.astype(np.float64) / self.scale
