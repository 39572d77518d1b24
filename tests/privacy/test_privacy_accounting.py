"""Accounting: epsilon against an independent numerical-integration oracle, monotonicity, calibration."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pftray.privacy import PrivacyEvent, PrivacyLedger, calibrate_noise, compute_epsilon

DELTA = 1e-5


def _load_oracle():
    """Load the sibling oracle module by path, independent of pytest's import mode."""
    spec = importlib.util.spec_from_file_location(
        "_privacy_oracle", Path(__file__).with_name("_privacy_oracle.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_oracle = _load_oracle()


@pytest.mark.parametrize(
    ("z", "q", "rounds"),
    [(1.0, 0.01, 1000), (0.8, 0.05, 200), (1.5, 0.1, 100), (2.0, 0.001, 10_000)],
)
def test_rdp_epsilon_matches_integration_oracle(z: float, q: float, rounds: int) -> None:
    expected = _oracle.epsilon(q=q, sigma=z, steps=rounds, delta=DELTA)
    got = compute_epsilon(noise_multiplier=z, sample_rate=q, rounds=rounds, delta=DELTA)
    assert got == pytest.approx(expected, rel=1e-3)


def test_known_value_pinned() -> None:
    # Oracle value for z=1, q=0.01, T=1000, delta=1e-5 (Balle et al. 2020 conversion): 2.10137.
    assert compute_epsilon(noise_multiplier=1.0, sample_rate=0.01, rounds=1000, delta=DELTA) == pytest.approx(
        2.10137, rel=1e-4
    )


def test_prv_is_close_to_and_below_rdp() -> None:
    rdp = compute_epsilon(noise_multiplier=1.0, sample_rate=0.01, rounds=1000, delta=DELTA)
    prv = compute_epsilon(noise_multiplier=1.0, sample_rate=0.01, rounds=1000, delta=DELTA, accountant="prv")
    # PRV is numerically tight; RDP conversion is an upper bound, loose by ~10-20% here.
    assert 0.7 * rdp < prv < rdp


@settings(max_examples=15, deadline=None)
@given(
    z=st.floats(0.5, 3.0),
    q=st.floats(0.001, 0.2),
    rounds=st.integers(1, 2000),
    factor=st.floats(1.05, 2.0),
)
def test_epsilon_monotone(z: float, q: float, rounds: int, factor: float) -> None:
    def eps(z_: float = z, q_: float = q, t_: int = rounds) -> float:
        return compute_epsilon(noise_multiplier=z_, sample_rate=q_, rounds=t_, delta=DELTA)

    base = eps()
    assert eps(z_=z * factor) < base
    assert eps(q_=min(1.0, q * factor)) > base
    assert eps(t_=int(rounds * factor) + 1) > base


@pytest.mark.parametrize("target", [0.5, 3.0, 10.0])
def test_calibrate_noise_round_trip(target: float) -> None:
    z = calibrate_noise(target_epsilon=target, sample_rate=0.02, rounds=500, delta=DELTA)
    eps = compute_epsilon(noise_multiplier=z, sample_rate=0.02, rounds=500, delta=DELTA)
    assert eps <= target
    assert eps == pytest.approx(target, rel=2e-3)
    # a slightly smaller multiplier would violate the target
    assert compute_epsilon(noise_multiplier=z * 0.99, sample_rate=0.02, rounds=500, delta=DELTA) > target


def test_ledger_composes_like_single_event_and_round_trips() -> None:
    ledger = PrivacyLedger()
    for _ in range(3):
        ledger.record(PrivacyEvent(noise_multiplier=1.1, sample_rate=0.05, steps=100))
    assert ledger.epsilon(DELTA) == pytest.approx(
        compute_epsilon(noise_multiplier=1.1, sample_rate=0.05, rounds=300, delta=DELTA), rel=1e-12
    )
    ledger.record(PrivacyEvent(noise_multiplier=2.0, sample_rate=0.01, steps=50))
    state = json.loads(json.dumps(ledger.state_dict()))
    restored = PrivacyLedger()
    restored.load_state_dict(state)
    assert restored.events == ledger.events
    assert restored.epsilon(DELTA) == ledger.epsilon(DELTA)
    assert restored.epsilon(DELTA, accountant="prv") == pytest.approx(ledger.epsilon(DELTA, accountant="prv"))


def test_ledger_edge_cases_and_validation() -> None:
    ledger = PrivacyLedger()
    assert ledger.epsilon(DELTA) == 0.0
    assert not ledger.supports(PrivacyEvent(noise_multiplier=1.0, sample_rate=0.1, steps=1, kind="laplace"))
    with pytest.raises(ValueError, match="unsupported privacy event"):
        ledger.record(PrivacyEvent(noise_multiplier=1.0, sample_rate=0.1, steps=1, kind="laplace"))
    ledger.record(PrivacyEvent(noise_multiplier=0.0, sample_rate=0.1, steps=1))
    assert ledger.epsilon(DELTA) == float("inf")
    with pytest.raises(ValueError, match="accountant"):
        ledger.epsilon(DELTA, accountant="gdp")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="sample_rate"):
        PrivacyEvent(noise_multiplier=1.0, sample_rate=0.0, steps=1)
    with pytest.raises(ValueError, match="steps"):
        PrivacyEvent(noise_multiplier=1.0, sample_rate=0.1, steps=0)
    with pytest.raises(ValueError, match="delta"):
        compute_epsilon(noise_multiplier=1.0, sample_rate=0.1, rounds=1, delta=0.0)
    with pytest.raises(ValueError, match="events"):
        PrivacyLedger().load_state_dict({})


# ------------------------------------------------------------------------------ compression, cache, predict
def _opacus_uncompressed(history: list[tuple[float, float, int]], accountant: str) -> float:
    """Opacus on the raw history, one entry per recorded event (no merging)."""
    import warnings

    from opacus.accountants import PRVAccountant, RDPAccountant

    acc = RDPAccountant() if accountant == "rdp" else PRVAccountant()
    acc.history = list(history)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return float(acc.get_epsilon(delta=DELTA))


def _rounds(zs: list[float], qs: list[float], n: int) -> list[PrivacyEvent]:
    return [PrivacyEvent(noise_multiplier=zs[i % len(zs)], sample_rate=qs[i % len(qs)], steps=1) for i in range(n)]


@pytest.mark.parametrize(("accountant", "rtol"), [("rdp", 1e-6), ("prv", 1e-3)])
def test_compressed_history_equals_uncompressed(accountant: str, rtol: float) -> None:
    events = _rounds([0.9, 1.2, 1.5], [0.05, 0.1], 12)
    ledger = PrivacyLedger()
    for e in events:
        ledger.record(e)
    compressed = ledger.compressed()
    assert len(compressed) == 6 and sum(e.steps for e in compressed) == 12
    expected = _opacus_uncompressed([(e.noise_multiplier, e.sample_rate, 1) for e in events], accountant)
    assert ledger.epsilon(DELTA, accountant=accountant) == pytest.approx(expected, rel=rtol)
    reversed_ledger = PrivacyLedger()
    for e in reversed(events):
        reversed_ledger.record(e)
    assert reversed_ledger.epsilon(DELTA, accountant=accountant) == ledger.epsilon(DELTA, accountant=accountant)


def test_prv_epsilon_of_1000_rounds_is_fast() -> None:
    import time

    # multipliers used nowhere else, so the first call really computes
    ledger = PrivacyLedger()
    for e in _rounds([0.9137, 1.0137, 1.1137, 1.2137, 1.3137], [0.01], 1000):
        ledger.record(e)
    t0 = time.perf_counter()
    first = ledger.epsilon(DELTA, accountant="prv")
    t1 = time.perf_counter()
    for _ in range(5):
        assert ledger.epsilon(DELTA, accountant="prv") == first
    t2 = time.perf_counter()
    assert t1 - t0 < 2.0  # measured ~0.5 s (was ~12 s for a 100-round ledger without compression)
    assert (t2 - t1) / 5 < 0.1  # a cache hit: measured < 1 ms
    assert 0.7 * ledger.epsilon(DELTA) < first < ledger.epsilon(DELTA)


def test_cache_tracks_history_delta_and_accountant() -> None:
    ledger = PrivacyLedger()
    ledger.record(PrivacyEvent(noise_multiplier=1.0, sample_rate=0.02, steps=100))
    e1 = ledger.epsilon(DELTA)
    assert ledger.epsilon(1e-6) > e1
    assert ledger.epsilon(DELTA, accountant="prv") < e1
    ledger.events.append(PrivacyEvent(noise_multiplier=1.0, sample_rate=0.02, steps=100))  # even a direct append
    assert ledger.epsilon(DELTA) == pytest.approx(
        compute_epsilon(noise_multiplier=1.0, sample_rate=0.02, rounds=200, delta=DELTA), rel=1e-12
    )


def test_predict_does_not_mutate() -> None:
    ledger = PrivacyLedger()
    ledger.record(PrivacyEvent(noise_multiplier=1.0, sample_rate=0.05, steps=10))
    before = ledger.state_dict()
    extra = [PrivacyEvent(noise_multiplier=0.8, sample_rate=0.05, steps=1)] * 3
    for accountant in ("rdp", "prv"):
        predicted = ledger.predict(extra, DELTA, accountant=accountant)
        assert ledger.state_dict() == before
        reference = _opacus_uncompressed([(1.0, 0.05, 10), (0.8, 0.05, 3)], accountant)
        assert predicted == pytest.approx(reference, rel=1e-3 if accountant == "prv" else 1e-9)
        assert predicted > ledger.epsilon(DELTA, accountant=accountant)
    assert ledger.predict([], DELTA) == ledger.epsilon(DELTA)
    with pytest.raises(ValueError, match="unsupported privacy event"):
        ledger.predict([PrivacyEvent(noise_multiplier=1.0, sample_rate=0.1, steps=1, kind="laplace")], DELTA)
    assert ledger.state_dict() == before


# ------------------------------------------------------------------------------------------- sampling
def test_only_poisson_sampling_is_accounted() -> None:
    fixed = PrivacyEvent(noise_multiplier=1.0, sample_rate=0.1, steps=1, sampling="fixed-size")
    ledger = PrivacyLedger()
    assert PrivacyEvent(noise_multiplier=1.0, sample_rate=0.1, steps=1).sampling == "poisson"
    assert not ledger.supports(fixed)
    with pytest.raises(ValueError, match=r"fed\.sample_rate"):
        ledger.record(fixed)
    with pytest.raises(ValueError, match=r"fed\.sample_rate"):
        ledger.predict([fixed], DELTA)
    state = {"events": [{"noise_multiplier": 1.0, "sample_rate": 0.1, "steps": 1, "sampling": "fixed-size"}]}
    with pytest.raises(ValueError, match=r"fed\.sample_rate"):
        ledger.load_state_dict(state)
    assert ledger.events == []
    with pytest.raises(ValueError, match="sampling"):
        PrivacyEvent(noise_multiplier=1.0, sample_rate=0.1, steps=1, sampling="")


def test_old_format_state_loads() -> None:
    ledger = PrivacyLedger()
    ledger.load_state_dict({"events": [{"noise_multiplier": 1.1, "sample_rate": 0.05, "steps": 300,
                                        "kind": "client-level"}]})
    assert ledger.events[0].sampling == "poisson"
    assert ledger.state_dict() == {"events": [{"noise_multiplier": 1.1, "sample_rate": 0.05, "steps": 300,
                                               "kind": "client-level"}]}
    assert ledger.epsilon(DELTA) == pytest.approx(
        compute_epsilon(noise_multiplier=1.1, sample_rate=0.05, rounds=300, delta=DELTA), rel=1e-12
    )
