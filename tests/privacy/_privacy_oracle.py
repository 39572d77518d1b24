"""Independent reference for the sampled Gaussian mechanism's RDP, by numerical integration (scipy).

Mironov, Talwar, Zhang 2019 ("Renyi Differential Privacy of the Sampled Gaussian Mechanism"), Sec. 3:
with mu0 = N(0, sigma^2), mu1 = N(1, sigma^2) and mu = (1 - q) mu0 + q mu1,

    A_alpha = E_{z ~ mu0}[(mu(z) / mu0(z))^alpha] = E_{z ~ mu0}[((1 - q) + q exp((2z - 1) / (2 sigma^2)))^alpha]

and the RDP of one step at order alpha is log(A_alpha) / (alpha - 1) (valid for real alpha > 1; the paper
shows this direction dominates). T steps compose additively. Conversion to (eps, delta) is Balle et al.
2020, Thm. 21 (the conversion Opacus >= 1.0 uses):

    eps = min_alpha  T rdp(alpha) + log((alpha - 1) / alpha) - (log delta + log alpha) / (alpha - 1)

The integrand is evaluated in log space and rescaled by its maximum before quadrature, so orders up to 63
do not overflow. This file shares no code with Opacus (which sums a binomial / erfc series); only the grid
of orders is the same list of numbers.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import integrate

ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))


def log_a(q: float, sigma: float, alpha: float) -> float:
    """log A_alpha by adaptive quadrature over a split real line (mass near 0 and near alpha)."""
    s2 = sigma**2
    log_1mq, log_q = math.log1p(-q), math.log(q)

    def log_f(z):
        log_ratio = np.logaddexp(log_1mq, log_q + (2 * z - 1) / (2 * s2))
        return -(z**2) / (2 * s2) - 0.5 * math.log(2 * math.pi * s2) + alpha * log_ratio

    peak = float(np.max(log_f(np.linspace(-12 * sigma, alpha + 12 * sigma, 4001))))
    width = 12 * sigma
    points = sorted({-width, 0.0, 0.5, width, alpha - width, alpha, alpha + width})
    total = 0.0
    edges = [-np.inf, *points, np.inf]
    for lo, hi in zip(edges[:-1], edges[1:]):
        val, _ = integrate.quad(
            lambda z: math.exp(log_f(z) - peak), lo, hi, epsabs=0.0, epsrel=1e-12, limit=200
        )
        total += val
    return peak + math.log(total)


def epsilon(*, q: float, sigma: float, steps: int, delta: float) -> float:
    best = math.inf
    for a in ORDERS:
        r = steps * log_a(q, sigma, a) / (a - 1)
        best = min(best, r + math.log((a - 1) / a) - (math.log(delta) + math.log(a)) / (a - 1))
    return best
