"""Pure statistics of a membership-inference privacy audit.

* :func:`roc_auc`: area under the ROC curve of "member" scores vs "non-member" scores (Mann-Whitney U,
  ties count 1/2).
* :func:`tpr_at_fpr`: true-positive rate at a false-positive rate of at most ``fpr`` (Carlini et al. 2022).
* :func:`one_run_epsilon_lower_bound`: empirical epsilon lower bound from one training run with ``m``
  randomly included canaries (Steinke, Nasr, Jagielski 2023, "Privacy Auditing with One (1) Training Run").
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

__all__ = ["one_run_epsilon_lower_bound", "one_run_p_value", "roc_auc", "tpr_at_fpr"]


def _scores(name: str, x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64).ravel()
    if x.size == 0:
        raise ValueError(f"{name} must be non-empty")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains non-finite values")
    return x


def roc_auc(scores_members: np.ndarray, scores_nonmembers: np.ndarray) -> float:
    """``P[S_member > S_nonmember] + 1/2 P[S_member = S_nonmember]`` via mid-ranks (Mann-Whitney U)."""
    pos = _scores("scores_members", scores_members)
    neg = _scores("scores_nonmembers", scores_nonmembers)
    ranks = stats.rankdata(np.concatenate([pos, neg]))
    u = ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2
    return float(u / (pos.size * neg.size))


def tpr_at_fpr(scores_members: np.ndarray, scores_nonmembers: np.ndarray, fpr: float = 0.01) -> float:
    """Largest TPR of a threshold rule ``score > tau`` whose FPR on the non-members is at most ``fpr``."""
    if not 0 <= fpr <= 1:
        raise ValueError(f"fpr must be in [0, 1], got {fpr!r}")
    pos = _scores("scores_members", scores_members)
    neg = np.sort(_scores("scores_nonmembers", scores_nonmembers))[::-1]
    allowed = math.floor(fpr * neg.size + 1e-12)
    if allowed >= neg.size:
        return 1.0
    tau = neg[allowed]  # at most `allowed` non-members score strictly above tau
    return float(np.mean(pos > tau))


def one_run_p_value(
    *, num_canaries: int, num_guesses: int, num_correct: int, epsilon: float, delta: float
) -> float:
    """Upper bound on ``P[W >= v]`` for an (epsilon, delta)-DP run (Steinke, Nasr, Jagielski 2023).

    With ``r`` guesses on ``m`` canaries and ``p = e^eps / (e^eps + 1)`` (Thm. 3.1 and its (eps, delta)
    extension; their Appendix D procedure)::

        beta  = P[Binomial(r, p) >= v]
        alpha = max_{1 <= i <= v} P[v - i <= Binomial(r, p) < v] / i
        p_value = min(1, beta + 2 m delta alpha)
    """
    m, r, v = num_canaries, num_guesses, num_correct
    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= num_correct <= num_guesses <= num_canaries, got {v}, {r}, {m}")
    if not epsilon >= 0:
        raise ValueError(f"epsilon must be >= 0, got {epsilon!r}")
    if not 0 <= delta <= 1:
        raise ValueError(f"delta must be in [0, 1], got {delta!r}")
    p = 1.0 / (1.0 + math.exp(-epsilon))
    beta = float(stats.binom.sf(v - 1, r, p))
    if v == 0 or delta == 0:
        return min(1.0, beta)
    pmf = stats.binom.pmf(np.arange(v - 1, -1, -1), r, p)  # P[B = v-1], P[B = v-2], ..., P[B = 0]
    alpha = float(np.max(np.cumsum(pmf) / np.arange(1, v + 1)))
    return min(1.0, beta + alpha * delta * 2 * m)


def one_run_epsilon_lower_bound(
    *, num_guesses: int, num_correct: int, num_canaries: int, delta: float, confidence: float = 0.95
) -> float:
    """Largest epsilon rejected at ``confidence``: sup{eps : p_value(eps) < 1 - confidence} (bisection).

    0 when even epsilon = 0 cannot be rejected (e.g. guesses at chance level).
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    alpha = 1 - confidence

    def pval(eps: float) -> float:
        return one_run_p_value(
            num_canaries=num_canaries,
            num_guesses=num_guesses,
            num_correct=num_correct,
            epsilon=eps,
            delta=delta,
        )

    if pval(0.0) >= alpha:
        return 0.0
    lo, hi = 0.0, 1.0
    while pval(hi) < alpha:
        lo, hi = hi, hi * 2
        if hi > 1e4:
            return lo
    for _ in range(60):
        mid = (lo + hi) / 2
        if pval(mid) < alpha:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-6:
            break
    return lo
