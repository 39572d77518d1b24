"""Audit statistics: AUC, TPR at low FPR, one-run epsilon lower bound (Steinke, Nasr, Jagielski 2023)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pftray.privacy import one_run_epsilon_lower_bound, roc_auc, tpr_at_fpr
from pftray.privacy.audit_stats import one_run_p_value


def _auc_by_pairs(pos: np.ndarray, neg: np.ndarray) -> float:
    diff = pos[:, None] - neg[None, :]
    return float(np.mean((diff > 0) + 0.5 * (diff == 0)))


def test_auc_known_cases() -> None:
    assert roc_auc([2.0, 3.0], [0.0, 1.0]) == 1.0
    assert roc_auc([0.0, 1.0], [2.0, 3.0]) == 0.0
    assert roc_auc([1.0, 1.0], [1.0, 1.0]) == 0.5
    assert roc_auc([3.0, 1.0], [2.0, 0.0]) == 0.75  # pairs: (3>2, 3>0, 1<2, 1>0)


def test_auc_matches_pairwise_definition_with_ties() -> None:
    rng = np.random.default_rng(0)
    pos = rng.integers(0, 10, size=57).astype(float)
    neg = rng.integers(0, 8, size=43).astype(float)
    assert roc_auc(pos, neg) == pytest.approx(_auc_by_pairs(pos, neg), abs=1e-12)


def test_auc_identical_distributions_is_half_in_expectation() -> None:
    rng = np.random.default_rng(1)
    aucs = [roc_auc(rng.normal(size=200), rng.normal(size=200)) for _ in range(50)]
    # sd of one AUC ~ sqrt((n+m+1)/(12 n m)) ~ 0.029; the mean of 50 has sd ~ 0.004
    assert abs(np.mean(aucs) - 0.5) < 0.015


def test_tpr_at_fpr() -> None:
    neg = np.arange(100, dtype=float)  # 0..99
    pos = np.array([98.5, 99.5, 120.0, 50.0])
    # fpr=0.01 allows one false positive: threshold is 98 (only 99 > 98) -> 98.5, 99.5, 120 detected
    assert tpr_at_fpr(pos, neg, fpr=0.01) == 0.75
    assert tpr_at_fpr(pos, neg, fpr=0.0) == 0.5  # threshold 99
    assert tpr_at_fpr(np.array([200.0]), neg, fpr=0.0) == 1.0
    assert tpr_at_fpr(pos, neg, fpr=1.0) == 1.0
    with pytest.raises(ValueError, match="fpr"):
        tpr_at_fpr(pos, neg, fpr=1.5)


def test_epsilon_lower_bound_zero_at_chance_and_grows_with_accuracy() -> None:
    m = 1000
    assert one_run_epsilon_lower_bound(num_guesses=m, num_correct=500, num_canaries=m, delta=1e-5) == 0.0
    bounds = [
        one_run_epsilon_lower_bound(num_guesses=m, num_correct=v, num_canaries=m, delta=1e-5)
        for v in (550, 650, 750, 850, 950)
    ]
    assert all(b > 0 for b in bounds)
    assert all(a < b for a, b in zip(bounds, bounds[1:]))
    # never above the point estimate log(acc / (1 - acc)) of randomized response
    assert all(b < math.log(v / (m - v)) for b, v in zip(bounds, (550, 650, 750, 850, 950)))


def test_p_value_is_binomial_tail_when_delta_zero() -> None:
    from scipy import stats

    p = one_run_p_value(num_canaries=100, num_guesses=100, num_correct=70, epsilon=0.5, delta=0.0)
    q = math.exp(0.5) / (1 + math.exp(0.5))
    assert p == pytest.approx(stats.binom.sf(69, 100, q), rel=1e-12)


def test_lower_bound_valid_for_randomized_response_eps_1() -> None:
    """Guesses from eps=1 randomized response: the 95% lower bound exceeds 1 in at most ~5% of runs."""
    rng = np.random.default_rng(2)
    m, eps_true = 2000, 1.0
    p = math.exp(eps_true) / (1 + math.exp(eps_true))
    bounds = []
    for _ in range(40):
        correct = int(rng.binomial(m, p))
        bounds.append(
            one_run_epsilon_lower_bound(num_guesses=m, num_correct=correct, num_canaries=m, delta=0.0)
        )
    bounds = np.asarray(bounds)
    assert np.mean(bounds > eps_true) <= 0.125  # 5 of 40
    assert np.median(bounds) > 0.7  # and the audit is not vacuous


def test_lower_bound_validation() -> None:
    with pytest.raises(ValueError, match="num_correct"):
        one_run_epsilon_lower_bound(num_guesses=10, num_correct=11, num_canaries=10, delta=0.0)
    with pytest.raises(ValueError, match="confidence"):
        one_run_epsilon_lower_bound(num_guesses=10, num_correct=5, num_canaries=10, delta=0.0, confidence=1.0)
