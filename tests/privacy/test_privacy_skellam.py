"""Skellam accounting against independent references: the exact Skellam Renyi divergence (Bessel functions),
Opacus' Gaussian RDP, a direct (non-log-space) evaluation of the Zhu-Wang bound, and composition laws."""

from __future__ import annotations

import json
import math
from decimal import Decimal, localcontext

import numpy as np
import pytest
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent
from scipy.special import ive, logsumexp

from pftray.privacy.accounting import (
    MIXED_ORDERS,
    PrivacyEvent,
    PrivacyLedger,
    poisson_subsampled_rdp,
    skellam_event,
    skellam_event_rdp,
    skellam_mu_for,
    skellam_rdp,
)

DELTA = 1e-5
ORDERS = np.arange(2, 257)


def _gauss_rdp(q: float, z: float, orders) -> np.ndarray:
    return np.asarray(compute_rdp(q=q, noise_multiplier=z, steps=1, orders=[float(a) for a in orders]))


def _exact_skellam_rdp(mu: float, alpha: int) -> float:
    """D_alpha(Sk(mu) + 1 || Sk(mu)) by summing the pmf e^{-2mu} I_|k|(2mu) = ive(|k|, 2mu) in log space."""
    k = np.arange(-400, 401)
    with np.errstate(divide="ignore"):
        lp, lq = np.log(ive(np.abs(k), 2 * mu)), np.log(ive(np.abs(k - 1), 2 * mu))
    ok = np.isfinite(lp) & np.isfinite(lq)
    terms = alpha * lq[ok] + (1 - alpha) * lp[ok]
    assert max(terms[0], terms[-1]) < terms.max() - 50  # the truncated tails are negligible
    return float(logsumexp(terms) / (alpha - 1))


def test_skellam_mu_for_and_event() -> None:
    assert skellam_mu_for(1.5, 40.0) == pytest.approx((1.5 * 40.0) ** 2 / 2, rel=1e-15)
    e = skellam_event(mu=skellam_mu_for(1.5, 40.0), l2_sensitivity=40.0, l1_sensitivity=400.0, sample_rate=0.1)
    assert (e.kind, e.steps, e.sampling) == ("skellam", 1, "poisson")
    assert e.noise_multiplier == pytest.approx(1.5, rel=1e-12)
    with pytest.raises(ValueError, match="noise_multiplier"):
        PrivacyEvent(noise_multiplier=1.0, sample_rate=0.1, steps=1, kind="skellam", mu=1e4, l2_sensitivity=40.0,
                     l1_sensitivity=400.0)
    with pytest.raises(ValueError, match="l1_sensitivity"):
        skellam_event(mu=10.0, l2_sensitivity=1.0, l1_sensitivity=0.0, sample_rate=0.1)
    with pytest.raises(ValueError, match="mu"):
        skellam_event(mu=-1.0, l2_sensitivity=1.0, l1_sensitivity=1.0, sample_rate=0.1)
    with pytest.raises(ValueError, match="applies to kind='skellam' only"):
        PrivacyEvent(noise_multiplier=1.0, sample_rate=0.1, steps=1, mu=3.0)
    with pytest.raises(ValueError, match="integer orders"):
        skellam_rdp([2.5], mu=1.0, l2_sensitivity=1.0, l1_sensitivity=1.0)


@pytest.mark.parametrize("mu", [1.0, 10.0, 50.0, 500.0])
def test_skellam_rdp_bounds_the_exact_divergence(mu: float) -> None:
    alphas = np.arange(2, 41)
    exact = np.array([_exact_skellam_rdp(mu, int(a)) for a in alphas])
    bound = skellam_rdp(alphas, mu=mu, l2_sensitivity=1.0, l1_sensitivity=1.0)
    assert np.all(bound >= exact * (1 - 1e-9))
    if mu >= 500:  # the bound is tight for large mu
        assert np.all(bound <= exact * 1.01)


def test_large_mu_unsampled_skellam_is_gaussian() -> None:
    # d = 9 coordinates that move by 1: D2 = 3, D1 = 9; huge mu, so the Skellam correction is ~1e-8 relative.
    mu, d2, d1 = 1e7, 3.0, 9.0
    z = math.sqrt(2 * mu) / d2
    reference = _gauss_rdp(1.0, z, ORDERS)  # alpha / (2 z^2), by Opacus
    np.testing.assert_allclose(skellam_rdp(ORDERS, mu=mu, l2_sensitivity=d2, l1_sensitivity=d1), reference, rtol=1e-6)
    event = skellam_event(mu=mu, l2_sensitivity=d2, l1_sensitivity=d1, sample_rate=1.0, steps=1_000_000)
    np.testing.assert_allclose(skellam_event_rdp(event, list(ORDERS)), 1_000_000 * reference, rtol=1e-6)
    ledger = PrivacyLedger()
    ledger.record(event)
    orders = list(MIXED_ORDERS)
    expected, _ = get_privacy_spent(orders=orders, rdp=1_000_000 * _gauss_rdp(1.0, z, orders), delta=DELTA)
    # non-integer orders use the integer order above, so the match is close but not exact
    assert expected <= ledger.epsilon(DELTA) <= expected * 1.01


def test_non_integer_orders_use_the_next_integer() -> None:
    event = skellam_event(mu=30.0, l2_sensitivity=1.0, l1_sensitivity=2.0, sample_rate=0.2)
    got = skellam_event_rdp(event, [1.5, 2.0, 2.5, 3.0])
    assert got[0] == got[1] and got[2] == got[3] and got[1] < got[3]


def _zhu_wang_direct(eps, q: float, alpha: int) -> float:
    """Thm. 6 of Zhu & Wang 2019, summed term by term in 60-digit decimal arithmetic (no log-space tricks)."""
    with localcontext() as ctx:
        ctx.prec = 60
        q_, one = Decimal(q), Decimal(1)
        total = (one - q_) ** (alpha - 1) * (alpha * q_ - q_ + 1)
        total += math.comb(alpha, 2) * q_**2 * (one - q_) ** (alpha - 2) * Decimal(eps(2)).exp()
        for ell in range(3, alpha + 1):
            total += 3 * math.comb(alpha, ell) * (one - q_) ** (alpha - ell) * q_**ell * (
                Decimal((ell - 1) * eps(ell)).exp()
            )
        return float(total.ln() / (alpha - 1))


@pytest.mark.filterwarnings("ignore:Optimal order is the")
@pytest.mark.parametrize(("z", "q"), [(1.0, 0.01), (0.7, 0.05), (2.0, 0.1), (1.0, 0.3), (0.5, 0.01)])
def test_zhu_wang_bound_on_gaussian_vs_opacus(z: float, q: float) -> None:
    curve = ORDERS / (2 * z**2)
    zw = poisson_subsampled_rdp(curve, q)
    for alpha in (2, 3, 7, 20, 40, 120):
        assert zw[alpha - 2] == pytest.approx(_zhu_wang_direct(lambda a: a / (2 * z**2), q, alpha), rel=1e-9)
    tight = _gauss_rdp(q, z, ORDERS)
    ratio = zw / tight
    assert np.all(ratio >= 1 - 1e-9)  # a valid upper bound on the (tight) subsampled Gaussian RDP
    assert ratio[0] == pytest.approx(1.0, rel=1e-9)  # at alpha = 2 the bound is exact
    assert ratio.max() < 3.0  # measured 1.76 .. 2.73 over these cases (the factor 3 of the bound)
    eps_zw, _ = get_privacy_spent(orders=list(ORDERS), rdp=100 * zw, delta=DELTA)
    eps_tight, _ = get_privacy_spent(orders=list(ORDERS), rdp=100 * tight, delta=DELTA)
    assert eps_tight <= eps_zw < 2.0 * eps_tight


def test_subsampling_with_q_one_is_the_mechanism() -> None:
    curve = skellam_rdp(ORDERS, mu=20.0, l2_sensitivity=2.0, l1_sensitivity=3.0)
    np.testing.assert_array_equal(poisson_subsampled_rdp(curve, 1.0), curve)


def _skellam_eps(mu: float = 2e4, steps: int = 100, q: float = 0.05) -> float:
    ledger = PrivacyLedger()
    ledger.record(skellam_event(mu=mu, l2_sensitivity=100.0, l1_sensitivity=1000.0, sample_rate=q, steps=steps))
    return ledger.epsilon(DELTA)


def test_skellam_epsilon_monotone() -> None:
    base = _skellam_eps()
    assert 0 < base < math.inf
    assert _skellam_eps(mu=4e4) < base < _skellam_eps(mu=1e4)
    assert _skellam_eps(steps=50) < base < _skellam_eps(steps=200)
    assert _skellam_eps(q=0.02) < base < _skellam_eps(q=0.1) < _skellam_eps(q=1.0)
    assert _skellam_eps(mu=0.0) == math.inf


def test_skellam_close_to_equivalent_gaussian() -> None:
    # Same variance as Gaussian z = 1; the subsampling bound of Zhu-Wang is looser than Opacus' tight analysis.
    ledger, gauss = PrivacyLedger(), PrivacyLedger()
    ledger.record(skellam_event(mu=skellam_mu_for(1.0, 100.0), l2_sensitivity=100.0, l1_sensitivity=1000.0,
                                sample_rate=0.01, steps=1000))
    gauss.record(PrivacyEvent(noise_multiplier=1.0, sample_rate=0.01, steps=1000))
    assert gauss.epsilon(DELTA) < ledger.epsilon(DELTA) < 1.3 * gauss.epsilon(DELTA)  # measured 1.17


def _mixed() -> tuple[PrivacyLedger, PrivacyLedger, PrivacyLedger]:
    g, s, both = PrivacyLedger(), PrivacyLedger(), PrivacyLedger()
    ge = PrivacyEvent(noise_multiplier=1.1, sample_rate=0.02, steps=300)
    se = skellam_event(mu=skellam_mu_for(1.3, 50.0), l2_sensitivity=50.0, l1_sensitivity=400.0, sample_rate=0.02,
                       steps=200)
    g.record(ge)
    s.record(se)
    for e in (ge, se, ge):
        both.record(e)
    return g, s, both


def test_mixed_ledger_composes() -> None:
    g, s, both = _mixed()
    eg, es = g.epsilon(DELTA), s.epsilon(DELTA)
    # `both` holds ge twice: compare with a ledger of twice the Gaussian steps
    g2 = PrivacyLedger()
    g2.record(PrivacyEvent(noise_multiplier=1.1, sample_rate=0.02, steps=600))
    e2 = g2.epsilon(DELTA)
    e_both = both.epsilon(DELTA)
    assert max(e2, es) <= e_both <= e2 + es
    assert max(eg, es) < e_both
    # the same composition by hand: Opacus RDP of the Gaussian part + the Skellam RDP, on MIXED_ORDERS
    orders = list(MIXED_ORDERS)
    rdp = 600 * np.asarray(compute_rdp(q=0.02, noise_multiplier=1.1, steps=1, orders=orders))
    rdp += skellam_event_rdp(s.events[0], orders)
    assert e_both == pytest.approx(get_privacy_spent(orders=orders, rdp=rdp, delta=DELTA)[0], rel=1e-9)


def test_prv_with_skellam_falls_back_to_rdp_with_a_note() -> None:
    _, _, both = _mixed()
    rdp = both.epsilon(DELTA)
    assert both.last_note is None
    with pytest.warns(UserWarning, match="PRV accountant cannot compose Skellam"):
        prv = both.epsilon(DELTA, accountant="prv")
    assert prv == rdp
    assert both.last_note is not None and "RDP" in both.last_note
    g, _, _ = _mixed()
    g.epsilon(DELTA, accountant="prv")
    assert g.last_note is None


def test_mixed_state_dict_round_trip_and_predict() -> None:
    g, s, both = _mixed()
    state = json.loads(json.dumps(both.state_dict()))
    restored = PrivacyLedger()
    restored.load_state_dict(state)
    assert restored.events == both.events
    assert restored.epsilon(DELTA) == both.epsilon(DELTA)
    assert set(state["events"][0]) == {"noise_multiplier", "sample_rate", "steps", "kind"}  # Gaussian: old format
    assert {"mu", "l2_sensitivity", "l1_sensitivity"} <= set(state["events"][1])
    assert g.predict(s.events, DELTA) == pytest.approx(
        PrivacyLedger.epsilon(_ledger_of(g.events + s.events), DELTA), rel=1e-12
    )
    assert len(g.events) == 1


def _ledger_of(events) -> PrivacyLedger:
    ledger = PrivacyLedger()
    for e in events:
        ledger.record(e)
    return ledger
