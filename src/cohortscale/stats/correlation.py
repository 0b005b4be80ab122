"""Pearson and Spearman correlation matrices with pairwise-complete observations, vectorised.

Each pair of columns ``(x_i, y_j)`` is correlated over the rows where both are finite (NaN and ±inf are
missing), so ``n`` differs per pair when columns have different missingness; every pair gives what
``scipy.stats.pearsonr`` / ``scipy.stats.spearmanr`` give on those rows (two-sided p-values).

How it is vectorised:

- both methods reduce a pair to six sums over its complete rows — ``n``, ``Σa``, ``Σb``, ``Σa²``,
  ``Σb²``, ``Σab`` — and ``r = (Σab − ΣaΣb/n) / √((Σa² − (Σa)²/n)(Σb² − (Σb)²/n))``;
- Pearson: with ``M`` the 0/1 finite masks and ``X0`` the values centred on their column mean (which
  keeps the one-pass sums free of cancellation) and zero where missing, all pairs' sums are six matrix
  products: ``n = MxᵀMy``, ``Σa = X0ᵀMy``, ``Σb = MxᵀY0``, ``Σa² = (X0²)ᵀMy``, ``Σb² = Mxᵀ(Y0²)``,
  ``Σab = X0ᵀY0``;
- Spearman: ranks depend on the pair's complete rows, so each column is sorted once
  (:class:`SortedVariables`) and, for each column of ``x`` in turn, the average ranks of ``x_i`` within
  every ``y_j``'s complete rows and of every ``y_j`` within ``x_i``'s come from cumulative counts of the
  kept rows along the sorted order (O(n) per pair, no re-sorting), all ``y`` columns at once. Ranks are
  centred on ``(n + 1) / 2``, so the sums of these half-integers are exact.

p-values: Pearson from the Beta(n/2 − 1, n/2 − 1) distribution of r on (−1, 1) (what scipy uses); Spearman
from Student's t with ``n − 2`` degrees of freedom, ``t = r √((n − 2) / ((1 + r)(1 − r)))``. A pair with
fewer than :data:`MIN_OBSERVATIONS` complete rows, or constant on them, has NaN r and p (scipy returns
r = ±1, p = 1 for two rows).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypeAlias, TypeVar

import numpy as np
import pandas as pd

from cohortscale.stats.multiple import ALPHA, Method, adjust, family_size
from cohortscale.stats.tails import neg_log10_p_pearson, neg_log10_p_t, p_pearson, p_t

CorrelationMethod: TypeAlias = Literal["pearson", "spearman"]
#: Fewest complete rows a pair needs for r and p (two points always lie on a line).
MIN_OBSERVATIONS = 3
#: A column whose spread over a pair's rows is below this share of its sum of squares is constant there.
CONSTANT_RTOL = 1e-12

P = TypeVar("P", np.ndarray, pd.Series, pd.DataFrame)


def neg_log10_p(p: P) -> P:
    """``−log10 p`` (the heatmap's colour scale), in the input's container; ``inf`` where p is 0."""
    with np.errstate(divide="ignore"):
        return -np.log10(p)


# --- ranks within row subsets -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SortedVariables:
    """Variables sorted once, for average ranks within any subset of observations.

    Arrays are variable-major, ``(variables, observations)`` (contiguous gathers along the last axis):
    ``order`` the observations in ascending order of each variable (missing values last); ``position``
    its inverse (each observation's place in that order); ``first`` / ``last`` the places of the first
    and last member of each place's run of equal values; ``finite`` which values are present.
    """

    order: np.ndarray
    position: np.ndarray
    first: np.ndarray
    last: np.ndarray
    finite: np.ndarray

    @classmethod
    def of(cls, values: np.ndarray) -> SortedVariables:
        """Sort each row of ``values`` (variables, observations); non-finite values are missing."""
        finite = np.isfinite(values)
        clean = np.where(finite, values, np.nan)
        order = np.argsort(clean, axis=-1, kind="stable")
        ordered = np.take_along_axis(clean, order, axis=-1)
        count = values.shape[-1]
        place = np.broadcast_to(np.arange(count), values.shape)
        starts = np.ones(values.shape, dtype=bool)
        starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]  # NaN != NaN: missing values never join a run
        ends = np.ones(values.shape, dtype=bool)
        ends[:, :-1] = starts[:, 1:]
        first = np.maximum.accumulate(np.where(starts, place, 0), axis=-1)
        last = np.minimum.accumulate(np.where(ends, place, count - 1)[:, ::-1], axis=-1)[:, ::-1]
        return cls(order, np.argsort(order, axis=-1), first, last, finite)

    def variable(self, index: int) -> SortedVariables:
        """The sort of one variable, shaped ``(1, observations)`` to broadcast against many subsets."""
        one = slice(index, index + 1)
        return SortedVariables(
            self.order[one], self.position[one], self.first[one], self.last[one], self.finite[one]
        )

    def _counts(self, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per sorted place: whether kept, and the kept observations before its run and up to its end."""
        kept = np.take_along_axis(keep & self.finite, self.order, axis=-1)
        cumulative = np.zeros((kept.shape[0], kept.shape[1] + 1))
        np.cumsum(kept, axis=-1, out=cumulative[:, 1:])  # cumulative[:, k]: kept at places < k
        before = np.take_along_axis(cumulative, self.first, axis=-1)
        through = np.take_along_axis(cumulative, self.last + 1, axis=-1)
        return kept, before, through

    def ranks(self, keep: np.ndarray) -> np.ndarray:
        """Average ranks (1-based, ties share their mean rank) of each variable among its kept values.

        Parameters
        ----------
        keep : ndarray of bool, (subsets, observations)
            Observations of each subset; broadcasts against the variables (one variable against many
            subsets, or many variables against one subset each). Missing values are never kept.

        Returns
        -------
        ndarray of float, (subsets, observations)
            Ranks as ``scipy.stats.rankdata(method="average")`` gives on the kept values; NaN elsewhere.
        """
        kept, before, through = self._counts(keep)
        in_sorted_order = np.where(kept, (before + through + 1) / 2, np.nan)
        return np.take_along_axis(in_sorted_order, self.position, axis=-1)

    def tie_term(self, keep: np.ndarray) -> np.ndarray:
        """``Σ (t³ − t)`` over the runs of equal values among each subset's kept values (t: run length)."""
        kept, before, through = self._counts(keep)
        run = through - before
        return np.where(kept, run**2 - 1, 0).sum(axis=-1)  # each of a run's t members adds t² − 1


# --- pair sums and r ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _PairSums:
    """Sums over each pair's complete rows, ``(x columns, y columns)``: n, Σa, Σb, Σa², Σb², Σab."""

    n: np.ndarray
    a: np.ndarray
    b: np.ndarray
    aa: np.ndarray
    bb: np.ndarray
    ab: np.ndarray

    def r(self) -> np.ndarray:
        """Correlation of each pair; NaN below :data:`MIN_OBSERVATIONS` rows or with a constant column."""
        with np.errstate(divide="ignore", invalid="ignore"):
            spread_a = self.aa - self.a**2 / self.n
            spread_b = self.bb - self.b**2 / self.n
            r = np.clip((self.ab - self.a * self.b / self.n) / np.sqrt(spread_a * spread_b), -1.0, 1.0)
        constant = (spread_a <= CONSTANT_RTOL * self.aa) | (spread_b <= CONSTANT_RTOL * self.bb)
        return np.where(constant | (self.n < MIN_OBSERVATIONS), np.nan, r)


def _centred(values: np.ndarray, finite: np.ndarray) -> np.ndarray:
    """Values minus their column's mean over its finite rows, zero where missing."""
    count = np.maximum(finite.sum(axis=0), 1)
    mean = np.where(finite, values, 0.0).sum(axis=0) / count
    return np.where(finite, values - mean, 0.0)


def _pearson_sums(x: np.ndarray, y: np.ndarray) -> _PairSums:
    """Pair sums of the raw values, as six matrix products over the finite masks."""
    finite_x, finite_y = np.isfinite(x), np.isfinite(y)
    mx, my = finite_x.astype(np.float64), finite_y.astype(np.float64)
    x0, y0 = _centred(x, finite_x), _centred(y, finite_y)
    return _PairSums(mx.T @ my, x0.T @ my, mx.T @ y0, (x0**2).T @ my, mx.T @ y0**2, x0.T @ y0)


def _row_sums(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, ...]:
    """n, Σa, Σb, Σa², Σb², Σab along the rows of ``a`` and ``b`` over places where both are present."""
    both = ~np.isnan(a) & ~np.isnan(b)
    a0, b0 = np.where(both, a, 0.0), np.where(both, b, 0.0)
    return both.sum(-1), a0.sum(-1), b0.sum(-1), (a0**2).sum(-1), (b0**2).sum(-1), (a0 * b0).sum(-1)


def _spearman_sums(x: np.ndarray, y: np.ndarray) -> _PairSums:
    """Pair sums of the centred ranks within each pair's complete rows (one pass per column of ``x``)."""
    sorted_x, sorted_y = SortedVariables.of(x.T), SortedVariables.of(y.T)
    rows = []
    for i in range(x.shape[1]):
        keep = sorted_x.finite[i : i + 1] & sorted_y.finite  # (y columns, rows): each pair's rows
        middle = (keep.sum(axis=-1, keepdims=True) + 1) / 2
        rank_x = sorted_x.variable(i).ranks(keep) - middle
        rank_y = sorted_y.ranks(keep) - middle
        rows.append(_row_sums(rank_x, rank_y))
    return _PairSums(*(np.array(sums) for sums in zip(*rows, strict=True)))


def _p_values(r: np.ndarray, n: np.ndarray, method: CorrelationMethod) -> np.ndarray:
    """Two-sided p-values of correlations ``r`` over ``n`` rows, as scipy computes them."""
    with np.errstate(divide="ignore", invalid="ignore"):
        if method == "pearson":
            return p_pearson(r, n)
        return p_t(_spearman_t(r, n), n - 2.0)


def _spearman_t(r: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Student's t of Spearman correlations ``r`` over ``n`` rows (``n − 2`` degrees of freedom)."""
    dof = n - 2.0
    with np.errstate(divide="ignore", invalid="ignore"):
        return r * np.sqrt((dof / ((r + 1.0) * (1.0 - r))).clip(0))


def _neg_log10_p(r: np.ndarray, n: np.ndarray, method: CorrelationMethod) -> np.ndarray:
    """``−log10 p`` of correlations ``r`` over ``n`` rows, from r itself: finite where p underflows to 0."""
    if method == "pearson":
        return neg_log10_p_pearson(r, n)
    return neg_log10_p_t(_spearman_t(r, n), n - 2.0)


# --- public API ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Correlation:
    """A correlation matrix: ``r``, two-sided ``p`` and ``n`` (complete rows) per pair, as wide frames.

    Rows are the columns of ``x``, columns those of ``y`` (of ``x`` again when ``symmetric``, where the
    diagonal is each column with itself and every pair appears twice).
    """

    r: pd.DataFrame
    p: pd.DataFrame
    n: pd.DataFrame
    method: CorrelationMethod
    symmetric: bool

    def tidy(self) -> pd.DataFrame:
        """One row per pair: ``x``, ``y``, ``r``, ``p``, ``n``, ``neg_log10_p``.

        ``neg_log10_p`` comes from r and n (:mod:`cohortscale.stats.tails`), so it stays finite where
        ``p`` underflows to 0 (|r| = 0.5 over 40,000 rows has p ≈ 10⁻²⁵⁰⁰).

        For a symmetric matrix only the pairs above the diagonal (each distinct pair once).
        """
        stacked = {name: getattr(self, name).stack(future_stack=True) for name in ("r", "p", "n")}
        table = pd.DataFrame(stacked).rename_axis(["x", "y"]).reset_index()
        if self.symmetric:
            rows, columns = np.triu_indices(len(self.r.index), k=1)
            table = table.iloc[rows * len(self.r.columns) + columns].reset_index(drop=True)
        r, n = (table[name].to_numpy(dtype=np.float64, na_value=np.nan) for name in ("r", "n"))
        table["neg_log10_p"] = _neg_log10_p(r, n, self.method)
        return table


def _float_values(frame: pd.DataFrame) -> np.ndarray:
    """A frame's values as float64, NaN for missing (nullable dtypes included)."""
    return frame.to_numpy(dtype=np.float64, na_value=np.nan)


def correlation_matrix(
    x: pd.DataFrame, y: pd.DataFrame | None = None, method: CorrelationMethod = "pearson"
) -> Correlation:
    """Correlations of every column of ``x`` with every column of ``y`` (or of ``x``), pairwise complete.

    Parameters
    ----------
    x : DataFrame, (participants, variables)
        Numeric columns; NaN (or ±inf, or pandas NA) is missing.
    y : DataFrame, optional
        Numeric columns on the same rows (same index) as ``x``; default ``x`` itself.
    method : {"pearson", "spearman"}

    Returns
    -------
    Correlation
        ``r`` (in [−1, 1]), two-sided ``p`` and ``n`` (rows where both columns are present) for each pair,
        as ``x.columns × y.columns`` frames; NaN r and p for pairs with fewer than
        :data:`MIN_OBSERVATIONS` rows or a column constant over them.
    """
    if method not in ("pearson", "spearman"):
        raise ValueError(f"unknown method {method!r}; expected 'pearson' or 'spearman'")
    if y is not None and not x.index.equals(y.index):
        raise ValueError("x and y must have the same rows (index)")
    other = x if y is None else y
    xv, yv = _float_values(x), _float_values(other)
    sums = _pearson_sums(xv, yv) if method == "pearson" else _spearman_sums(xv, yv)
    r = sums.r()
    p = _p_values(r, sums.n, method)

    def frame(values: np.ndarray) -> pd.DataFrame:
        return pd.DataFrame(values, index=x.columns.copy(), columns=other.columns.copy())

    return Correlation(frame(r), frame(p), frame(sums.n.astype(np.int64)), method, y is None)


@dataclass(frozen=True)
class Significance:
    """Pairs of a correlation matrix tested against a multiple-testing threshold.

    ``table``: :meth:`Correlation.tidy` plus ``p_adjusted`` and ``significant`` (raw p ≤ ``threshold``);
    ``tests``: the family size (pairs with a p-value); ``threshold``: the raw p-value threshold.
    """

    table: pd.DataFrame
    tests: int
    threshold: float

    @property
    def neg_log10_threshold(self) -> float:
        """The threshold on the heatmap's ``−log10 p`` scale."""
        return float(neg_log10_p(np.float64(self.threshold)))


def significant(result: Correlation, alpha: float = ALPHA, correction: Method = "bonferroni") -> Significance:
    """Which pairs of ``result`` are significant after correcting for the number of pairs tested.

    The family is every distinct pair with a p-value (for a symmetric matrix, the pairs above the
    diagonal): e.g. 5 IDPs × 61 variables give the Bonferroni threshold 0.05 / 305.

    Parameters
    ----------
    result : Correlation
    alpha : float
        Family-wise error rate (``"bonferroni"``) or false discovery rate (``"fdr_bh"``).
    correction : {"bonferroni", "fdr_bh"}
    """
    table = result.tidy()
    correction_result = adjust(table["p"], correction, alpha)
    table["p_adjusted"] = correction_result.adjusted
    table["significant"] = table["p"] <= correction_result.threshold
    return Significance(table, family_size(table["p"]), correction_result.threshold)
