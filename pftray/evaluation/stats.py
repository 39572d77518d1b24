"""Small-sample statistics for comparing federated methods over (seed, client) units.

* :func:`t_interval` — Student-t confidence interval of a mean: x̄ ± t_{1−α/2, n−1} · s / √n with s the sample
  standard deviation (ddof = 1).
* :func:`paired_tests` — two paired tests on the same units: the paired t-test
  (t = d̄ / (s_d / √n), two-sided p from t_{n−1}) and the Wilcoxon signed-rank test (Wilcoxon 1945; zero
  differences dropped, "wilcox" convention; exact null distribution for small n without ties, as scipy chooses).

Inputs with NaN are rejected (callers drop missing units first and say so); too few units give NaN with no
exception, because a comparison table must still be printable with one seed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Interval:
    """A mean with its two-sided t confidence interval; ``half_width`` is NaN when n < 2."""

    mean: float
    low: float
    high: float
    half_width: float
    n: int
    sd: float


@dataclass(frozen=True)
class PairedTest:
    """Paired comparison of ``a`` against ``b`` over the same units (``mean_diff`` = mean of a − b)."""

    n: int
    mean_diff: float
    t_stat: float
    t_pvalue: float
    wilcoxon_stat: float
    wilcoxon_pvalue: float


def _as_vector(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values; drop missing units before testing")
    return x


def t_interval(values: Sequence[float] | np.ndarray, *, confidence: float = 0.95) -> Interval:
    """Mean and Student-t confidence interval ``mean ± t_{(1+confidence)/2, n−1} · sd / √n``.

    n = 0 gives NaN everywhere; n = 1 gives the value with a NaN half-width (no spread can be estimated).
    """
    from scipy import stats

    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    x = _as_vector(values, "values")
    n = int(x.size)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, math.nan, 0, math.nan)
    mean = float(x.mean())
    if n == 1:
        return Interval(mean, math.nan, math.nan, math.nan, 1, math.nan)
    sd = float(x.std(ddof=1))
    half = float(stats.t.ppf((1.0 + confidence) / 2.0, df=n - 1)) * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, half, n, sd)


def paired_tests(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> PairedTest:
    """Paired t-test and Wilcoxon signed-rank test of ``a`` vs ``b`` (same units, same order), two-sided.

    The t-test needs n >= 2 and non-zero spread of the differences; the Wilcoxon test needs at least one
    non-zero difference. Where a test is undefined its statistic and p-value are NaN.
    """
    from scipy import stats

    x, y = _as_vector(a, "a"), _as_vector(b, "b")
    if x.shape != y.shape:
        raise ValueError(f"a and b must pair up one to one, got lengths {x.size} and {y.size}")
    d = x - y
    n = int(d.size)
    mean_diff = float(d.mean()) if n else math.nan
    t_stat = t_p = w_stat = w_p = math.nan
    if n >= 2 and float(d.std(ddof=1)) > 0.0:
        t_stat = mean_diff / (float(d.std(ddof=1)) / math.sqrt(n))
        t_p = float(2.0 * stats.t.sf(abs(t_stat), df=n - 1))
    if np.any(d != 0.0):
        res = stats.wilcoxon(d, zero_method="wilcox", alternative="two-sided")
        w_stat, w_p = float(res.statistic), float(res.pvalue)
    return PairedTest(n, mean_diff, t_stat, t_p, w_stat, w_p)


def paired_difference(a, b, *, confidence: float = 0.95) -> dict[str, float | int]:
    """``a − b`` over the units both have: two pandas Series indexed by unit (e.g. ``(seed, client_id)``), paired
    on their common index with the units missing (absent or NaN) in either dropped.

    Returns ``n_pairs``, ``mean_diff`` with its t-interval ``ci_low``/``ci_high`` (:func:`t_interval` of the
    differences) and the two tests' p-values ``t_pvalue``/``wilcoxon_pvalue`` (:func:`paired_tests`; NaN below
    2 pairs). The one pairing rule of every comparison table, so that no table pairs units differently.
    """
    import pandas as pd

    pairs = pd.concat([a.rename("a"), b.rename("b")], axis=1, join="inner").dropna()
    x, y = pairs["a"].to_numpy(np.float64), pairs["b"].to_numpy(np.float64)
    ci = t_interval(x - y, confidence=confidence)
    res = paired_tests(x, y) if len(pairs) >= 2 else None
    return {"n_pairs": int(len(pairs)), "mean_diff": ci.mean, "ci_low": ci.low, "ci_high": ci.high,
            "t_pvalue": res.t_pvalue if res else math.nan, "wilcoxon_pvalue": res.wilcoxon_pvalue if res else math.nan}
