"""Privacy accounting of client-level DP-FedAvg as a composition of Poisson-sampled noise mechanisms.

Sampling. ``sample_rate`` is always the probability ``q`` of **Poisson sampling**: every client (or example)
takes part in a round independently with probability ``q``, so the number of participants is random. This is the
neighbouring relation and amplification that both accountants assume. A round with a fixed number of participants
(``fed.clients_per_round``) is *not* Poisson sampling and its guarantee is different; :class:`PrivacyEvent` carries a
``sampling`` field and the ledger refuses anything but ``"poisson"`` (configure ``fed.sample_rate > 0`` under DP).

Gaussian events (kinds ``client-level``, ``sample-level``): each round releases the sum of clipped updates with
Gaussian noise of multiplier ``z``; ``T`` rounds compose. Epsilon comes from Opacus: the RDP accountant
(Mironov, Talwar, Zhang 2019 for the sampled Gaussian; RDP -> (eps, delta) conversion of Balle et al. 2020,
Thm. 21) or the PRV accountant (Gopi, Lee, Wutschitz 2021, numerical composition of privacy loss distributions).

Skellam events (kind ``skellam``, distributed DP in the integer domain under secure aggregation): the sum of the
integer updates carries Skellam noise ``Poisson(mu) - Poisson(mu)`` per coordinate (variance ``2 mu``).
For integer orders ``alpha > 1`` (Agarwal, Kairouz, Liu 2021, Thm. 3.5, rewritten for variance ``2 mu``)::

    eps(alpha) <= alpha D2^2 / (4 mu) + min(((2 alpha - 1) D2^2 + 6 D1) / (16 mu^2), 3 D1 / (4 mu))

with ``D2``, ``D1`` the L2 / L1 sensitivities in integer units. Poisson subsampling with ``q < 1`` uses the general
upper bound of Zhu & Wang 2019 (Thm. 6), capped by the unsampled curve (subsampling never hurts). A non-integer
order uses the value at ``ceil(alpha)`` (Renyi divergence is non-decreasing in the order). Histories holding a
Skellam event are composed by summing RDP on :data:`MIXED_ORDERS` (Opacus' orders and the integers 2..256; the
Gaussian events by Opacus' ``compute_rdp``) and converted with Opacus' ``get_privacy_spent``. The PRV accountant
cannot represent Skellam noise: with ``accountant="prv"`` such a history is accounted **entirely with RDP** (a valid,
slightly looser upper bound); the ledger records why in :attr:`PrivacyLedger.last_note` and warns.

Cost. Composition is commutative, so the history is compressed before accounting (events that differ only in
``steps`` are merged, steps summed) and the last results are cached on the compressed history, ``delta`` and the
accountant: a ledger of 1000 one-round events with a few distinct multipliers costs a few distinct PRV events, and an
identical repeated call is a dictionary look-up. The ledger only stores frozen :class:`PrivacyEvent` values, so it is
JSON-serialisable.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from typing import Any, Literal

import numpy as np
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.analysis import rdp as opacus_rdp
from scipy.special import gammaln, logsumexp

__all__ = [
    "GAUSSIAN_KINDS",
    "MIXED_ORDERS",
    "SKELLAM_KIND",
    "SUPPORTED_KINDS",
    "PrivacyEvent",
    "PrivacyLedger",
    "calibrate_noise",
    "compute_epsilon",
    "poisson_subsampled_rdp",
    "skellam_event",
    "skellam_event_rdp",
    "skellam_mu_for",
    "skellam_rdp",
]

Accountant = Literal["rdp", "prv"]
#: Event kinds that are (Poisson-)sampled Gaussian mechanisms, which both accountants can compose.
GAUSSIAN_KINDS: frozenset[str] = frozenset({"client-level", "sample-level"})
#: Event kind of the (Poisson-)sampled Skellam mechanism (RDP only).
SKELLAM_KIND = "skellam"
#: Every event kind the ledger composes.
SUPPORTED_KINDS: frozenset[str] = GAUSSIAN_KINDS | {SKELLAM_KIND}
#: The only sampling scheme the accountants cover.
POISSON = "poisson"
#: Largest integer Renyi order used for histories with a Skellam event.
MAX_INTEGER_ORDER = 256
#: Renyi orders of the mixed (Gaussian + Skellam) RDP composition.
MIXED_ORDERS: tuple[float, ...] = tuple(
    sorted({float(a) for a in RDPAccountant.DEFAULT_ALPHAS} | {float(a) for a in range(2, MAX_INTEGER_ORDER + 1)})
)
_SKELLAM_ONLY = ("mu", "l2_sensitivity", "l1_sensitivity")


@dataclass(frozen=True)
class PrivacyEvent:
    """``steps`` compositions of a Poisson-sampled noise mechanism.

    ``sample_rate`` is the probability ``q`` of Poisson sampling (each participant independently); ``sampling``
    names the scheme and must be ``"poisson"`` for the ledger to accept the event (a fixed-size round is refused).

    Gaussian kinds (``client-level``, ``sample-level``): ``noise_multiplier`` is ``z`` (noise std / L2 sensitivity).
    Kind ``skellam``: ``mu`` is the Skellam parameter of the *sum* (per coordinate ``Poisson(mu) - Poisson(mu)``,
    variance ``2 mu``), ``l2_sensitivity`` / ``l1_sensitivity`` are in integer units, and ``noise_multiplier`` must be
    the equivalent Gaussian multiplier ``sqrt(2 mu) / l2_sensitivity`` (informational; build with
    :func:`skellam_event`). The Skellam fields must stay 0 for other kinds.
    """

    noise_multiplier: float
    sample_rate: float
    steps: int
    kind: str = "client-level"
    sampling: str = POISSON
    mu: float = 0.0
    l2_sensitivity: float = 0.0
    l1_sensitivity: float = 0.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier >= 0):
            raise ValueError(f"noise_multiplier must be finite and >= 0, got {self.noise_multiplier!r}")
        if not 0 < self.sample_rate <= 1:
            raise ValueError(f"sample_rate must be in (0, 1], got {self.sample_rate!r}")
        if not isinstance(self.steps, int) or isinstance(self.steps, bool) or self.steps < 1:
            raise ValueError(f"steps must be a positive int, got {self.steps!r}")
        if not isinstance(self.kind, str) or not self.kind:
            raise ValueError(f"kind must be a non-empty str, got {self.kind!r}")
        if not isinstance(self.sampling, str) or not self.sampling:
            raise ValueError(f"sampling must be a non-empty str, got {self.sampling!r}")
        if self.kind == SKELLAM_KIND:
            if not (math.isfinite(self.mu) and self.mu >= 0):
                raise ValueError(f"skellam mu must be finite and >= 0, got {self.mu!r}")
            for name in ("l2_sensitivity", "l1_sensitivity"):
                value = getattr(self, name)
                if not (math.isfinite(value) and value > 0):
                    raise ValueError(f"skellam {name} must be finite and > 0, got {value!r}")
            z = math.sqrt(2 * self.mu) / self.l2_sensitivity
            if not math.isclose(self.noise_multiplier, z, rel_tol=1e-9, abs_tol=1e-300):
                raise ValueError(
                    f"skellam noise_multiplier must be sqrt(2 mu) / l2_sensitivity = {z!r}, got "
                    f"{self.noise_multiplier!r}; build the event with skellam_event()"
                )
        else:
            for name in _SKELLAM_ONLY:
                if getattr(self, name) != 0:
                    raise ValueError(f"{name} applies to kind={SKELLAM_KIND!r} only, got kind={self.kind!r}")


def skellam_mu_for(noise_multiplier: float, l2_sensitivity: float) -> float:
    """Skellam parameter ``mu = (z D2)^2 / 2``: variance ``2 mu`` equals that of Gaussian noise ``z D2``."""
    if not (math.isfinite(noise_multiplier) and noise_multiplier >= 0):
        raise ValueError(f"noise_multiplier must be finite and >= 0, got {noise_multiplier!r}")
    if not (math.isfinite(l2_sensitivity) and l2_sensitivity > 0):
        raise ValueError(f"l2_sensitivity must be finite and > 0, got {l2_sensitivity!r}")
    return (noise_multiplier * l2_sensitivity) ** 2 / 2


def skellam_event(
    *, mu: float, l2_sensitivity: float, l1_sensitivity: float, sample_rate: float, steps: int = 1
) -> PrivacyEvent:
    """A Poisson-sampled Skellam event (``noise_multiplier`` set to the equivalent ``sqrt(2 mu) / D2``)."""
    mu, l2, l1 = float(mu), float(l2_sensitivity), float(l1_sensitivity)
    z = math.sqrt(2 * mu) / l2 if (math.isfinite(mu) and mu >= 0 and math.isfinite(l2) and l2 > 0) else 0.0
    return PrivacyEvent(noise_multiplier=z, sample_rate=sample_rate, steps=steps, kind=SKELLAM_KIND,
                        mu=mu, l2_sensitivity=l2, l1_sensitivity=l1)


# ----------------------------------------------------------------------------------------------- Skellam RDP
def skellam_rdp(orders: Sequence[int] | np.ndarray, *, mu: float, l2_sensitivity: float,
                l1_sensitivity: float) -> np.ndarray:
    """RDP of one unsampled Skellam release at integer ``orders > 1`` (Agarwal et al. 2021, Thm. 3.5).

    ``eps(a) = a D2^2 / (4 mu) + min(((2a - 1) D2^2 + 6 D1) / (16 mu^2), 3 D1 / (4 mu))``; ``inf`` when ``mu == 0``.
    """
    a = np.asarray(orders, dtype=float)
    if a.ndim != 1 or np.any(a <= 1) or np.any(a != np.round(a)):
        raise ValueError(f"skellam_rdp needs integer orders > 1, got {orders!r}")
    if mu == 0:
        return np.full(a.shape, np.inf)
    d2sq, d1 = float(l2_sensitivity) ** 2, float(l1_sensitivity)
    return a * d2sq / (4 * mu) + np.minimum(((2 * a - 1) * d2sq + 6 * d1) / (16 * mu**2), 3 * d1 / (4 * mu))


def poisson_subsampled_rdp(rdp: Sequence[float] | np.ndarray, sample_rate: float) -> np.ndarray:
    """Zhu & Wang 2019, Thm. 6: RDP of a Poisson-subsampled mechanism at the integer orders ``2..len(rdp) + 1``.

    ``rdp[i]`` is the mechanism's RDP at order ``i + 2``. For ``alpha >= 2`` and ``q < 1``::

        (alpha - 1) eps_sub(alpha) <= log((1-q)^(alpha-1) (alpha q - q + 1) + C(alpha,2) q^2 (1-q)^(alpha-2) e^eps(2)
                                          + 3 sum_{l=3..alpha} C(alpha,l) (1-q)^(alpha-l) q^l e^((l-1) eps(l)))

    evaluated in log space. With ``q == 1`` this is the mechanism itself: ``rdp`` is returned unchanged.
    """
    eps = np.asarray(rdp, dtype=float)
    if eps.ndim != 1 or eps.size == 0:
        raise ValueError("rdp must be a non-empty 1-D sequence (orders 2, 3, ...)")
    if not 0 < sample_rate <= 1:
        raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate!r}")
    if sample_rate == 1:
        return eps.copy()
    q = float(sample_rate)
    log_q, log_1mq = math.log(q), math.log1p(-q)
    alpha = np.arange(2, eps.size + 2, dtype=float)[:, None]  # rows: alpha
    ell = np.arange(3, eps.size + 2, dtype=float)[None, :]  # columns: l = 3..max
    log_comb = gammaln(alpha + 1) - gammaln(ell + 1) - gammaln(np.maximum(alpha - ell, 0) + 1)
    with np.errstate(invalid="ignore"):
        terms = (math.log(3) + log_comb + (alpha - ell) * log_1mq + ell * log_q + (ell - 1) * eps[None, 1:])
    terms = np.where(ell <= alpha, terms, -np.inf)
    a = alpha[:, 0]
    t0 = (a - 1) * log_1mq + np.log1p((a - 1) * q)
    t2 = np.log(a * (a - 1) / 2) + 2 * log_q + (a - 2) * log_1mq + eps[0]
    total = logsumexp(np.concatenate([t0[:, None], t2[:, None], terms], axis=1), axis=1)
    return total / (a - 1)


def _integer_curve(event: PrivacyEvent) -> np.ndarray:
    """One step of a (sampled) Skellam event at orders 2..MAX_INTEGER_ORDER."""
    return _integer_curve_cached(event.mu, event.l2_sensitivity, event.l1_sensitivity, event.sample_rate)


@lru_cache(maxsize=256)
def _integer_curve_cached(mu: float, l2: float, l1: float, q: float) -> np.ndarray:
    base = skellam_rdp(np.arange(2, MAX_INTEGER_ORDER + 1), mu=mu, l2_sensitivity=l2, l1_sensitivity=l1)
    curve = base if q == 1 or not np.all(np.isfinite(base)) else np.minimum(poisson_subsampled_rdp(base, q), base)
    curve.flags.writeable = False
    return curve


def skellam_event_rdp(event: PrivacyEvent, orders: Sequence[float] = MIXED_ORDERS) -> np.ndarray:
    """RDP of a Skellam event (all its steps) at ``orders`` (each > 1, at most ``MAX_INTEGER_ORDER``)."""
    if event.kind != SKELLAM_KIND:
        raise ValueError(f"not a skellam event: {event!r}")
    curve = _integer_curve(event)
    idx = []
    for a in orders:
        if not 1 < a <= MAX_INTEGER_ORDER:
            raise ValueError(f"orders must lie in (1, {MAX_INTEGER_ORDER}], got {a!r}")
        idx.append(max(math.ceil(a - 1e-9), 2) - 2)  # non-integer order: the value at ceil(alpha) bounds it
    return event.steps * curve[np.asarray(idx)]


# ------------------------------------------------------------------------------------------------ composition
def _check_delta(delta: float) -> None:
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta!r}")


def _check_accountant(name: str) -> None:
    if name not in ("rdp", "prv"):
        raise ValueError(f"accountant must be 'rdp' or 'prv', got {name!r}")


def _refusal(event: Any) -> str | None:
    """Why the ledger refuses ``event`` (None when it accepts it)."""
    if not isinstance(event, PrivacyEvent) or event.kind not in SUPPORTED_KINDS:
        return f"unsupported privacy event {event!r}; supported kinds: {sorted(SUPPORTED_KINDS)}"
    if event.sampling != POISSON:
        return (
            f"unsupported privacy event {event!r}: the accountants cover Poisson sampling only (each client "
            f"independently with probability sample_rate), not sampling={event.sampling!r}; a fixed-size round "
            "(fed.clients_per_round) must not be recorded as Poisson: under DP set fed.sample_rate > 0"
        )
    return None


_Key = tuple[str, float, float, float, float, float]


def _compress(events: Iterable[PrivacyEvent]) -> tuple[tuple[_Key, int], ...]:
    """Merge events equal up to ``steps`` (steps summed); sorted, so the result is order-independent."""
    steps: dict[_Key, int] = {}
    for e in events:
        reason = _refusal(e)
        if reason is not None:
            raise ValueError(reason)
        key = (e.kind, float(e.noise_multiplier), float(e.sample_rate), float(e.mu), float(e.l2_sensitivity),
               float(e.l1_sensitivity))
        steps[key] = steps.get(key, 0) + e.steps
    return tuple(sorted(steps.items()))


def _expand(compressed: tuple[tuple[_Key, int], ...]) -> list[PrivacyEvent]:
    return [PrivacyEvent(noise_multiplier=z, sample_rate=q, steps=n, kind=kind, mu=mu, l2_sensitivity=l2,
                         l1_sensitivity=l1) for (kind, z, q, mu, l2, l1), n in compressed]


_PRV_NOTE = ("the PRV accountant cannot compose Skellam events: the whole history was accounted with RDP "
             "(Skellam RDP bound + Opacus sampled-Gaussian RDP), a valid but looser upper bound")


@lru_cache(maxsize=128)
def _epsilon_compressed(compressed: tuple[tuple[_Key, int], ...], delta: float,
                        accountant: str) -> tuple[float, str | None]:
    """(epsilon, note) of a compressed history; cached, since the same history is asked for repeatedly."""
    if not compressed:
        return 0.0, None
    events = _expand(compressed)
    gauss = [e for e in events if e.kind != SKELLAM_KIND]
    skellam = [e for e in events if e.kind == SKELLAM_KIND]
    if any(e.noise_multiplier == 0 for e in gauss) or any(e.mu == 0 for e in skellam):
        return math.inf, None
    if not skellam:
        acc = RDPAccountant() if accountant == "rdp" else PRVAccountant()
        acc.history = [(e.noise_multiplier, e.sample_rate, e.steps) for e in gauss]
        with warnings.catch_warnings():
            # Opacus warns when the optimal RDP order is at the edge of its grid; the value is still an upper bound.
            warnings.simplefilter("ignore", UserWarning)
            return float(acc.get_epsilon(delta=delta)), None
    orders = list(MIXED_ORDERS)
    rdp = np.zeros(len(orders))
    for e in gauss:
        rdp += np.asarray(opacus_rdp.compute_rdp(q=e.sample_rate, noise_multiplier=e.noise_multiplier,
                                                 steps=e.steps, orders=orders))
    for e in skellam:
        rdp += skellam_event_rdp(e, orders)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        eps, _ = opacus_rdp.get_privacy_spent(orders=orders, rdp=rdp, delta=delta)
    return float(eps), (_PRV_NOTE if accountant == "prv" else None)


def _epsilon(events: Iterable[PrivacyEvent], delta: float, accountant: str) -> tuple[float, str | None]:
    _check_delta(delta)
    _check_accountant(accountant)
    return _epsilon_compressed(_compress(events), float(delta), accountant)


class PrivacyLedger:
    """Append-only list of :class:`PrivacyEvent`; epsilon of their composition (Opacus, plus Skellam RDP).

    :attr:`last_note` says how the last :meth:`epsilon` / :meth:`predict` deviated from the requested accountant
    (``None`` when it did not): a PRV request on a history with a Skellam event is answered by RDP.
    """

    def __init__(self) -> None:
        self.events: list[PrivacyEvent] = []
        self.last_note: str | None = None

    @staticmethod
    def supports(event: PrivacyEvent) -> bool:
        """Whether ``event`` is a Poisson-sampled mechanism (Gaussian or Skellam) that the ledger can compose."""
        return _refusal(event) is None

    def record(self, event: PrivacyEvent) -> None:
        reason = _refusal(event)
        if reason is not None:
            raise ValueError(reason)
        self.events.append(event)

    def history(self) -> list[tuple[float, float, int]]:
        """Opacus accountant history of the Gaussian events: ``[(noise_multiplier, sample_rate, steps), ...]``.

        Skellam events have no Opacus representation and are left out; see :meth:`compressed` for all events.
        """
        return [(e.noise_multiplier, e.sample_rate, e.steps) for e in self.events if e.kind != SKELLAM_KIND]

    def compressed(self) -> list[PrivacyEvent]:
        """The events with equal parameters merged (steps summed): what the accountants compose."""
        return _expand(_compress(self.events))

    def _account(self, events: Iterable[PrivacyEvent], delta: float, accountant: str) -> float:
        eps, note = _epsilon(events, delta, accountant)
        self.last_note = note
        if note is not None:
            warnings.warn(note, UserWarning, stacklevel=3)
        return eps

    def epsilon(self, delta: float, *, accountant: Accountant = "rdp") -> float:
        """Epsilon of all recorded events at ``delta`` (0 for an empty ledger, inf if any ``z == 0`` / ``mu == 0``)."""
        return self._account(self.events, delta, accountant)

    def predict(self, extra_events: Iterable[PrivacyEvent], delta: float, *, accountant: Accountant = "rdp") -> float:
        """Epsilon of the recorded events plus ``extra_events``, without recording them (the ledger is unchanged).

        Raises ``ValueError`` for an extra event that :meth:`record` would refuse. A later :meth:`epsilon` after
        recording exactly these events is a cache hit.
        """
        return self._account([*self.events, *extra_events], delta, accountant)

    def state_dict(self) -> dict[str, Any]:
        """``{"events": [...]}``; fields at their defaults beyond the original four are left out (old format)."""
        defaults = {f.name: f.default for f in fields(PrivacyEvent)[4:]}
        return {"events": [{k: v for k, v in asdict(e).items() if k not in defaults or v != defaults[k]}
                           for e in self.events]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "events" not in state:
            raise ValueError("PrivacyLedger state is missing the key 'events'")
        events = [PrivacyEvent(**e) for e in state["events"]]
        for e in events:
            reason = _refusal(e)
            if reason is not None:
                raise ValueError(f"PrivacyLedger state holds an unsupported event: {reason}")
        self.events = events


def compute_epsilon(
    *, noise_multiplier: float, sample_rate: float, rounds: int, delta: float, accountant: Accountant = "rdp"
) -> float:
    """Epsilon after ``rounds`` Poisson-sampled Gaussian steps with multiplier ``noise_multiplier`` and rate ``q``."""
    event = PrivacyEvent(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=rounds)
    return _epsilon([event], delta, accountant)[0]


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
