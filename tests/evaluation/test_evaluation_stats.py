"""Statistics of `pftray compare`: hand values and scipy references."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from pftray.evaluation.stats import paired_tests, t_interval


def test_t_interval_hand_value():
    # 1..5: mean 3, sd sqrt(2.5), t_{0.975,4} = 2.7764451 -> half width 2.7764451 * sqrt(2.5) / sqrt(5)
    ci = t_interval([1, 2, 3, 4, 5])
    assert ci.mean == 3.0 and ci.n == 5
    assert ci.sd == pytest.approx(math.sqrt(2.5))
    assert ci.half_width == pytest.approx(2.7764451 * math.sqrt(0.5), rel=1e-6)
    assert (ci.low, ci.high) == pytest.approx((3 - ci.half_width, 3 + ci.half_width))


def test_t_interval_matches_scipy_and_levels():
    x = np.random.default_rng(3).normal(2.0, 0.7, size=11)
    lo, hi = stats.t.interval(0.9, df=10, loc=x.mean(), scale=stats.sem(x))
    ci = t_interval(x, confidence=0.9)
    assert (ci.low, ci.high) == pytest.approx((lo, hi), rel=1e-12)
    assert t_interval(x, confidence=0.99).half_width > ci.half_width


def test_t_interval_small_samples_and_bad_input():
    assert math.isnan(t_interval([]).mean)
    one = t_interval([4.0])
    assert one.mean == 4.0 and one.n == 1 and math.isnan(one.half_width)
    with pytest.raises(ValueError, match="NaN"):
        t_interval([1.0, float("nan")])
    with pytest.raises(ValueError, match="confidence"):
        t_interval([1.0, 2.0], confidence=1.0)


def test_wilcoxon_exact_hand_values():
    # all 5 differences positive: W- = 0, exact two-sided p = 2 / 2^5
    r = paired_tests([2, 4, 6, 8, 10], [1, 2, 3, 4, 5])
    assert r.n == 5 and r.mean_diff == 3.0
    assert r.wilcoxon_stat == 0.0 and r.wilcoxon_pvalue == pytest.approx(0.0625)
    # differences 1, -2, 3, 4, 5: W- = 2; P(W <= 2) = #{∅, {1}, {2}} / 32, two-sided 6 / 32
    r = paired_tests([1, -2, 3, 4, 5], [0, 0, 0, 0, 0])
    assert r.wilcoxon_stat == 2.0 and r.wilcoxon_pvalue == pytest.approx(6 / 32)


def test_paired_t_hand_value_and_scipy():
    # d = (1, 2, 3): mean 2, sd 1, t = 2 / (1 / sqrt 3) = 2 sqrt 3
    r = paired_tests([2, 4, 6], [1, 2, 3])
    assert r.t_stat == pytest.approx(2 * math.sqrt(3))
    assert r.t_pvalue == pytest.approx(2 * stats.t.sf(2 * math.sqrt(3), df=2))
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=9), rng.normal(size=9)
    ref = stats.ttest_rel(a, b)
    r = paired_tests(a, b)
    assert (r.t_stat, r.t_pvalue) == pytest.approx((ref.statistic, ref.pvalue), rel=1e-10)
    assert r.wilcoxon_pvalue == pytest.approx(stats.wilcoxon(a - b).pvalue)


def test_paired_tests_degenerate():
    same = paired_tests([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert same.mean_diff == 0.0 and math.isnan(same.t_pvalue) and math.isnan(same.wilcoxon_pvalue)
    single = paired_tests([2.0], [1.0])
    assert single.n == 1 and math.isnan(single.t_pvalue)
    with pytest.raises(ValueError, match="pair up"):
        paired_tests([1, 2], [1])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-1e3, 1e3), min_size=2, max_size=30), st.floats(-50, 50))
def test_t_interval_contains_mean_and_is_shift_equivariant(xs, shift):
    ci = t_interval(xs)
    assert ci.low <= ci.mean <= ci.high
    moved = t_interval([x + shift for x in xs])
    assert moved.mean == pytest.approx(ci.mean + shift, abs=1e-6)
    assert moved.half_width == pytest.approx(ci.half_width, rel=1e-6, abs=1e-6)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(-100, 100), min_size=3, max_size=20))
def test_paired_tests_antisymmetric(xs):
    ys = [x * 0.5 + 1.0 for x in xs]
    ab, ba = paired_tests(xs, ys), paired_tests(ys, xs)
    assert ab.mean_diff == pytest.approx(-ba.mean_diff, abs=1e-9)
    if not math.isnan(ab.t_pvalue):
        assert ab.t_pvalue == pytest.approx(ba.t_pvalue)


def test_paired_difference_pairs_on_the_common_units_only():
    import pandas as pd

    from pftray.evaluation.stats import paired_difference

    idx = pd.MultiIndex.from_tuples([(0, 0), (0, 1), (1, 0), (1, 1), (2, 0)], names=["seed", "client_id"])
    a = pd.Series([1.0, 2.0, 4.0, np.nan, 9.0], index=idx)
    # b in another order, without unit (2, 0): pairing is by label, never by position
    b = pd.Series([0.5, 3.0, 1.0, 0.0], index=idx[[3, 2, 1, 0]])
    d = paired_difference(a, b)
    diffs = np.array([1.0 - 0.0, 2.0 - 1.0, 4.0 - 3.0])  # (1, 1) is NaN in a, (2, 0) absent from b
    assert d["n_pairs"] == 3
    assert d["mean_diff"] == pytest.approx(1.0)
    half = stats.t.ppf(0.975, 2) * diffs.std(ddof=1) / np.sqrt(3)
    assert half == 0.0 and d["ci_low"] == d["ci_high"] == pytest.approx(1.0)
    assert math.isnan(d["t_pvalue"])  # zero spread: the t-test is undefined
    b2 = b.copy()
    b2.loc[(0, 0)] = -1.0  # differences 2, 1, 1
    d2 = paired_difference(a, b2)
    ref = stats.ttest_rel([1.0, 2.0, 4.0], [-1.0, 1.0, 3.0])
    assert d2["mean_diff"] == pytest.approx(4 / 3) and d2["t_pvalue"] == pytest.approx(ref.pvalue)
    sd = np.std([2.0, 1.0, 1.0], ddof=1)
    assert d2["ci_high"] - d2["mean_diff"] == pytest.approx(stats.t.ppf(0.975, 2) * sd / np.sqrt(3))
    one = paired_difference(a.iloc[:1], b)
    assert one["n_pairs"] == 1 and one["mean_diff"] == 1.0 and math.isnan(one["ci_low"])
    assert math.isnan(one["t_pvalue"]) and math.isnan(one["wilcoxon_pvalue"])
    none = paired_difference(a.iloc[4:], b)
    assert none["n_pairs"] == 0 and math.isnan(none["mean_diff"])
