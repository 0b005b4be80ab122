"""Multiple-testing corrections: Bonferroni and Benjamini–Hochberg, NaN-aware and vectorised.

A *family* of tests is every p-value passed in one call, whatever the container's shape (a 1-D array, a
Series, a wide ``variables × variables`` DataFrame of p-values). NaN marks a test that was not performed:
it stays NaN in the output and does not count in the family size ``m``. The output has the container of
the input (same shape, index and columns).

Both corrections reproduce ``statsmodels.stats.multitest.multipletests`` (methods ``"bonferroni"`` and
``"fdr_bh"``) run on the non-NaN p-values, with the same arithmetic, and its rejection rule: a test is
significant when its raw p-value is at most the correction's ``threshold``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, NamedTuple, TypeAlias

import numpy as np
import pandas as pd

#: Family-wise error rate (Bonferroni) or false discovery rate (Benjamini–Hochberg) by default.
ALPHA = 0.05
#: Corrections :func:`adjust` knows.
METHODS = ("bonferroni", "fdr_bh")

PValues: TypeAlias = np.ndarray | pd.Series | pd.DataFrame
Method: TypeAlias = Literal["bonferroni", "fdr_bh"]


class Correction(NamedTuple):
    """Adjusted p-values of a family and the raw p-value threshold of significance.

    ``adjusted`` has the container of the input p-values (NaN where they are NaN); a test is significant
    when its raw p ≤ ``threshold`` (NaN when the family is empty).
    """

    adjusted: PValues
    threshold: float


def _values(p: PValues | list[float]) -> tuple[np.ndarray, Callable[[np.ndarray], PValues]]:
    """p-values as float64 and a function that puts same-shaped results back in the input's container."""
    values = np.asarray(p, dtype=np.float64)
    tested = values[~np.isnan(values)]
    if ((tested < 0) | (tested > 1)).any():
        raise ValueError("p-values must lie in [0, 1] (NaN for tests not performed)")
    if isinstance(p, pd.DataFrame):
        return values, lambda out: pd.DataFrame(out, index=p.index, columns=p.columns)
    if isinstance(p, pd.Series):
        return values, lambda out: pd.Series(out, index=p.index, name=p.name)
    return values, lambda out: out


def family_size(p: PValues | list[float]) -> int:
    """Number of tests in a family: the non-NaN p-values."""
    return int(np.count_nonzero(~np.isnan(np.asarray(p, dtype=np.float64))))


def bonferroni(p: PValues | list[float], alpha: float = ALPHA) -> Correction:
    """Bonferroni correction: adjusted ``min(1, p · m)`` and the per-test threshold ``alpha / m``.

    Parameters
    ----------
    p : array-like, Series or DataFrame of float
        Raw p-values of one family (any shape); NaN for tests not performed.
    alpha : float
        Family-wise error rate.

    Returns
    -------
    Correction
        ``adjusted``: ``min(1, p · m)`` with ``m`` the number of non-NaN p-values, in the input's
        container; ``threshold``: ``alpha / m`` (significant: raw p ≤ threshold).
    """
    values, rewrap = _values(p)
    m = family_size(values)
    adjusted = np.minimum(values * float(m), 1.0)
    return Correction(rewrap(adjusted), alpha / float(m) if m else float("nan"))


def _sorted_family(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flat positions of the non-NaN p-values in ascending order, those p-values and their ranks ``k / m``."""
    flat = values.ravel()
    tested = np.flatnonzero(~np.isnan(flat))
    order = tested[np.argsort(flat[tested])]
    m = order.size
    return order, flat[order], np.arange(1, m + 1) / float(m)


def fdr_bh(p: PValues | list[float]) -> PValues:
    """Benjamini–Hochberg adjusted p-values (q-values) of a family.

    ``q_(k) = min over j ≥ k of p_(j) · m / j`` (p sorted ascending, ``m`` non-NaN p-values), capped at 1:
    the smallest false discovery rate at which the test would be declared significant.

    Parameters
    ----------
    p : array-like, Series or DataFrame of float
        Raw p-values of one family (any shape); NaN for tests not performed.

    Returns
    -------
    ndarray, Series or DataFrame of float
        q-values in the input's container, NaN where ``p`` is NaN.
    """
    values, rewrap = _values(p)
    order, p_sorted, rank_fraction = _sorted_family(values)
    q_sorted = np.minimum.accumulate((p_sorted / rank_fraction)[::-1])[::-1]
    q = np.full(values.size, np.nan)
    q[order] = np.minimum(q_sorted, 1.0)
    return rewrap(q.reshape(values.shape))


def fdr_bh_threshold(p: PValues | list[float], alpha: float = ALPHA) -> float:
    """Raw p-value threshold of the Benjamini–Hochberg step-up procedure at false discovery rate ``alpha``.

    With p sorted ascending and ``k*`` the largest ``k`` with ``p_(k) ≤ k / m · alpha``, the threshold is
    ``k* / m · alpha``: exactly the tests with raw p ≤ threshold are rejected. Where no test is rejected it
    is the smallest critical value, ``alpha / m``, which no p-value reaches. NaN for an empty family.
    """
    values, _ = _values(p)
    _, p_sorted, rank_fraction = _sorted_family(values)
    if p_sorted.size == 0:
        return float("nan")
    critical = rank_fraction * alpha
    passing = np.flatnonzero(p_sorted <= critical)
    return float(critical[passing[-1] if passing.size else 0])


def adjust(p: PValues | list[float], method: Method = "bonferroni", alpha: float = ALPHA) -> Correction:
    """Adjusted p-values and raw-p threshold of significance by ``method`` (one of :data:`METHODS`).

    ``"bonferroni"`` controls the family-wise error rate (:func:`bonferroni`); ``"fdr_bh"`` the false
    discovery rate (:func:`fdr_bh`, :func:`fdr_bh_threshold`).
    """
    if method == "bonferroni":
        return bonferroni(p, alpha)
    if method == "fdr_bh":
        return Correction(fdr_bh(p), fdr_bh_threshold(p, alpha))
    raise ValueError(f"unknown correction {method!r}; expected one of {METHODS}")
