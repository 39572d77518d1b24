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
