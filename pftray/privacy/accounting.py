"""Privacy accounting of client-level DP-FedAvg as a composition of sampled Gaussian mechanisms.

Each round samples clients with probability ``q = m / N`` and releases the sum of clipped updates with
Gaussian noise of multiplier ``z``; ``T`` rounds compose. Epsilon comes from Opacus: the RDP accountant
(Mironov, Talwar, Zhang 2019 for the sampled Gaussian; RDP -> (eps, delta) conversion of Balle et al. 2020,
Thm. 21) or the PRV accountant (Gopi, Lee, Wutschitz 2021, numerical composition of privacy loss
distributions). The ledger only stores frozen :class:`PrivacyEvent` values, so it is JSON-serialisable.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Literal

from opacus.accountants import PRVAccountant, RDPAccountant

__all__ = ["SUPPORTED_KINDS", "PrivacyEvent", "PrivacyLedger", "calibrate_noise", "compute_epsilon"]

Accountant = Literal["rdp", "prv"]
#: Event kinds that are (Poisson-)sampled Gaussian mechanisms, which both accountants can compose.
SUPPORTED_KINDS: frozenset[str] = frozenset({"client-level", "sample-level"})


@dataclass(frozen=True)
class PrivacyEvent:
    """``steps`` compositions of a sampled Gaussian mechanism with multiplier ``noise_multiplier``."""

    noise_multiplier: float
    sample_rate: float
    steps: int
    kind: str = "client-level"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier >= 0):
            raise ValueError(f"noise_multiplier must be finite and >= 0, got {self.noise_multiplier!r}")
        if not 0 < self.sample_rate <= 1:
            raise ValueError(f"sample_rate must be in (0, 1], got {self.sample_rate!r}")
        if not isinstance(self.steps, int) or isinstance(self.steps, bool) or self.steps < 1:
            raise ValueError(f"steps must be a positive int, got {self.steps!r}")
        if not isinstance(self.kind, str) or not self.kind:
            raise ValueError(f"kind must be a non-empty str, got {self.kind!r}")


def _accountant(name: str) -> RDPAccountant | PRVAccountant:
    if name == "rdp":
        return RDPAccountant()
    if name == "prv":
        return PRVAccountant()
    raise ValueError(f"accountant must be 'rdp' or 'prv', got {name!r}")


def _check_delta(delta: float) -> None:
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta!r}")


def _epsilon(history: list[tuple[float, float, int]], delta: float, accountant: str) -> float:
    _check_delta(delta)
    acc = _accountant(accountant)
    if not history:
        return 0.0
    if any(z == 0 for z, _, _ in history):
        return math.inf
    acc.history = list(history)
    with warnings.catch_warnings():
        # Opacus warns when the optimal RDP order is at the edge of its grid; the value is still an upper bound.
        warnings.simplefilter("ignore", UserWarning)
        return float(acc.get_epsilon(delta=delta))


class PrivacyLedger:
    """Append-only list of :class:`PrivacyEvent`; epsilon of their composition via Opacus."""

    def __init__(self) -> None:
        self.events: list[PrivacyEvent] = []

    @staticmethod
    def supports(event: PrivacyEvent) -> bool:
        """Whether ``event`` is a sampled Gaussian mechanism that the accountants can compose."""
        return isinstance(event, PrivacyEvent) and event.kind in SUPPORTED_KINDS

    def record(self, event: PrivacyEvent) -> None:
        if not self.supports(event):
            raise ValueError(
                f"unsupported privacy event {event!r}; supported kinds: {sorted(SUPPORTED_KINDS)}"
            )
        self.events.append(event)

    def history(self) -> list[tuple[float, float, int]]:
        """Opacus accountant history: ``[(noise_multiplier, sample_rate, steps), ...]``."""
        return [(e.noise_multiplier, e.sample_rate, e.steps) for e in self.events]

    def epsilon(self, delta: float, *, accountant: Accountant = "rdp") -> float:
        """Epsilon of all recorded events at ``delta`` (0 for an empty ledger, inf if any ``z == 0``)."""
        return _epsilon(self.history(), delta, accountant)

    def state_dict(self) -> dict[str, Any]:
        return {"events": [asdict(e) for e in self.events]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "events" not in state:
            raise ValueError("PrivacyLedger state is missing the key 'events'")
        events = [PrivacyEvent(**e) for e in state["events"]]
        for e in events:
            if not self.supports(e):
                raise ValueError(f"PrivacyLedger state holds an unsupported event {e!r}")
        self.events = events


def compute_epsilon(
    *, noise_multiplier: float, sample_rate: float, rounds: int, delta: float, accountant: Accountant = "rdp"
) -> float:
    """Epsilon after ``rounds`` sampled Gaussian steps with multiplier ``noise_multiplier`` and rate ``q``."""
    event = PrivacyEvent(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=rounds)
    return _epsilon([(event.noise_multiplier, event.sample_rate, event.steps)], delta, accountant)


def calibrate_noise(
    *,
    target_epsilon: float,
    sample_rate: float,
    rounds: int,
    delta: float,
    accountant: Accountant = "rdp",
    rtol: float = 1e-4,
) -> float:
    """Smallest noise multiplier (to relative tolerance ``rtol``) with ``epsilon <= target_epsilon``.

    Bisection on ``log z``; epsilon is decreasing in ``z``. The returned ``z`` always satisfies the target.
    """
    if not (math.isfinite(target_epsilon) and target_epsilon > 0):
        raise ValueError(f"target_epsilon must be finite and > 0, got {target_epsilon!r}")

    def eps(z: float) -> float:
        return compute_epsilon(
            noise_multiplier=z, sample_rate=sample_rate, rounds=rounds, delta=delta, accountant=accountant
        )

    lo, hi = 0.0, 1.0
    while eps(hi) > target_epsilon:
        lo, hi = hi, hi * 2
        if hi > 1e6:
            raise ValueError(f"target_epsilon={target_epsilon} unreachable with noise_multiplier <= 1e6")
    if lo == 0.0:
        lo = hi / 2
        while lo > 1e-3 and eps(lo) <= target_epsilon:
            hi, lo = lo, lo / 2
    while hi - lo > rtol * hi:
        mid = math.sqrt(lo * hi)
        if eps(mid) <= target_epsilon:
            hi = mid
        else:
            lo = mid
    return hi
