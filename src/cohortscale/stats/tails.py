"""−log10 p from test statistics, exact beyond where p itself underflows float64.

At cohort scale p-values leave float64: over 40,000 participants a correlation of 0.5 has p ≈ 10⁻²⁵⁰⁰,
so p is 0, its −log10 is inf, and a heatmap or Manhattan plot can only saturate. These functions work in
log space from the statistic instead:

- normal z (Wald tests): ``log p = log 2 + log Φ(−|z|)`` (:func:`scipy.special.log_ndtr`);
- Student's t and Pearson's r: ``p`` is a regularized incomplete beta function ``I_x(a, b)``, whose
  logarithm is ``a log x + b log(1 − x) − log a − log B(a, b)`` plus the log of its continued fraction
  (:func:`log_betainc`).

Where p is above :data:`UNDERFLOW_P` these return ``−log10 p`` of scipy's own p, so they agree with the
tables' ``p`` column to round-off.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from scipy import special

#: p below which −log10 p is taken from the log-space formulas rather than from p (float64 keeps ~15
#: digits down to 1e-308 and loses them in the subnormals below).
UNDERFLOW_P = 1e-300
#: Continued-fraction convergence: relative change of the last factor.
CF_TOLERANCE = 1e-15
#: Continued-fraction terms at most; it needs about √(max(a, b)) of them (≈ 150 at a = 20,000).
CF_MAX_TERMS = 100_000
#: Magnitude below which a Lentz denominator is replaced, so that no division is by zero.
LENTZ_FLOOR = 1e-300

LN10 = np.log(10.0)


def log_betainc(a: ArrayLike, b: ArrayLike, x: ArrayLike) -> np.ndarray:
    """Natural log of the regularized incomplete beta function ``I_x(a, b)``, where it underflows too.

    Evaluates the continued fraction of ``I_x(a, b)`` by the modified Lentz method, which converges fast
    for ``x < (a + 1) / (a + b + 2)``, the lower tail (NaN elsewhere). ``log 0 = −inf`` at ``x = 0``.

    Parameters
    ----------
    a, b : array_like
        Shape parameters, > 0; broadcast with ``x``.
    x : array_like
        Points in [0, 1).
    """
    a, b, x = (np.asarray(v, dtype=np.float64) for v in np.broadcast_arrays(a, b, x))
    with np.errstate(divide="ignore", invalid="ignore"):
        front = a * np.log(x) + b * np.log1p(-x) - np.log(a) - special.betaln(a, b)
    inside = (x > 0) & (x < (a + 1) / (a + b + 2))

    def floored(value: np.ndarray) -> np.ndarray:
        return np.where(np.abs(value) < LENTZ_FLOOR, LENTZ_FLOOR, value)

    ai, bi, xi = a[inside], b[inside], x[inside]
    c = np.ones_like(xi)
    d = 1.0 / floored(1.0 - (ai + bi) * xi / (ai + 1.0))
    fraction = d.copy()
    for m in range(1, CF_MAX_TERMS + 1):
        even = m * (bi - m) * xi / ((ai + 2 * m - 1) * (ai + 2 * m))
        odd = -(ai + m) * (ai + bi + m) * xi / ((ai + 2 * m) * (ai + 2 * m + 1))
        for numerator in (even, odd):
            d = 1.0 / floored(1.0 + numerator * d)
            c = floored(1.0 + numerator / c)
            fraction *= c * d
        if np.all(np.abs(c * d - 1.0) < CF_TOLERANCE):
            break
    out = np.where(x == 0, -np.inf, np.nan)
    out[inside] = front[inside] + np.log(fraction)
    return out


def _from_log_where_underflowing(p: np.ndarray, log_p) -> np.ndarray:
    """``−log10 p``, from ``log_p(mask)`` (natural log of p at the entries of ``mask``) where p underflows."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.array(-np.log10(p), dtype=np.float64)
    tiny = p < UNDERFLOW_P
    if tiny.any():
        out[tiny] = -log_p(tiny) / LN10
    return out


def neg_log10_p_normal(z: ArrayLike) -> np.ndarray:
    """Two-sided ``−log10 p`` of standard normal statistics ``z`` (Wald tests)."""
    z = np.abs(np.asarray(z, dtype=np.float64))
    return -(np.log(2.0) + special.log_ndtr(-z)) / LN10


def p_t(t: ArrayLike, dof: ArrayLike) -> np.ndarray:
    """Two-sided p of Student's t statistics ``t`` with ``dof`` degrees of freedom (0 where it underflows)."""
    return 2 * special.stdtr(dof, -np.abs(t))


def neg_log10_p_t(t: ArrayLike, dof: ArrayLike) -> np.ndarray:
    """Two-sided ``−log10 p`` of Student's t statistics ``t`` with ``dof`` degrees of freedom.

    ``p = I_{dof / (dof + t²)}(dof / 2, 1 / 2)``.
    """
    t, dof = (np.asarray(v, dtype=np.float64) for v in np.broadcast_arrays(t, dof))
    x = dof / (dof + t**2)
    return _from_log_where_underflowing(p_t(t, dof), lambda m: log_betainc(dof[m] / 2, 0.5, x[m]))


def p_pearson(r: ArrayLike, n: ArrayLike) -> np.ndarray:
    """Two-sided p of Pearson correlations ``r`` over ``n`` observations (0 where it underflows).

    Under the null, ``(r + 1) / 2`` is Beta(n/2 − 1, n/2 − 1): ``p = 2 (1 − I_{(1 + |r|) / 2}(a, a))`` with
    ``a = n/2 − 1``, as :func:`scipy.stats.pearsonr` computes it.
    """
    shape = np.asarray(n, dtype=np.float64) / 2 - 1
    return 2 * special.betaincc(shape, shape, (np.abs(r) + 1) / 2)


def neg_log10_p_pearson(r: ArrayLike, n: ArrayLike) -> np.ndarray:
    """Two-sided ``−log10 p`` of Pearson correlations ``r`` over ``n`` observations (:func:`p_pearson`).

    By the Beta's symmetry ``p = 2 I_{(1 − |r|) / 2}(a, a)``, the lower tail :func:`log_betainc` takes.
    """
    r, n = (np.asarray(v, dtype=np.float64) for v in np.broadcast_arrays(r, n))
    shape, x = n / 2 - 1, (1 - np.abs(r)) / 2
    return _from_log_where_underflowing(
        p_pearson(r, n), lambda m: np.log(2.0) + log_betainc(shape[m], shape[m], x[m])
    )
