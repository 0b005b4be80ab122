"""Design matrices for many regressions at once: terms from a pandas table, complete cases, strata, and the
grouping of outcomes that share their rows (missingness pattern).

Conventions shared by :mod:`cohortscale.stats.ols` and :mod:`cohortscale.stats.logistic`:

- A model is ``outcome ~ 1 + covariates + exposure`` over the rows complete for the outcome, the exposure
  and every covariate (within a stratum). Design columns: :data:`INTERCEPT` first, the covariates in the
  order given, the exposure last.
- Numeric columns enter as they are; a bool exposure enters as 0/1. Covariates of object, string,
  category or bool dtype are categorical: treatment (dummy) coding with the first level as reference and one
  column per other level, named ``x[T.level]`` as a statsmodels formula names the levels of a text column
  ``x`` (``x[T.True]`` for a bool column). Levels are the category order of a ``category`` column, else
  the sorted distinct values, among the rows the design is built on.
- The matrix is kept standardised: every column but the intercept is centred and scaled by its mean and
  SD over the design's rows, so the Gram matrices are well conditioned. Centring changes only the
  intercept; an exposure coefficient is divided by the exposure's :attr:`ModelFrame.scale` to return to
  the exposure's units.
- Over one model's rows, a column whose residual sum of squares after projection on the columns before it
  is at most :data:`DEPENDENCE_TOL` times its own sum of squares is dropped from that model: a covariate
  constant within a stratum, a level absent from an outcome's rows, a duplicated covariate. statsmodels
  fits such designs with a pseudo-inverse, which gives the same exposure estimate, standard error and
  residual degrees of freedom. An exposure that is dependent on the intercept and covariates is not
  estimable; its results are NaN.
- Outcomes missing in the same rows share their rows, Gram matrix and dropped columns: they are grouped by
  the bytes of their packed presence masks (:func:`missingness_patterns`).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from cohortscale.backend import array_module, to_numpy

__all__ = [
    "BLOCK_BYTES",
    "CI_LEVEL",
    "DEPENDENCE_TOL",
    "INTERCEPT",
    "ModelFrame",
    "PairProducts",
    "Patterns",
    "column_sets",
    "complete_rows",
    "independent_columns",
    "is_categorical",
    "missingness_patterns",
    "model_frame",
    "name_list",
    "outcome_blocks",
    "strata_rows",
    "term_columns",
]

#: Default confidence level of the intervals the regressions report.
CI_LEVEL = 0.95
#: Size of one (rows × outcomes) float64 work array: outcomes are processed in blocks this large, which
#: keeps the many element-wise passes in memory the allocator reuses (fresh pages are slow to fault in).
BLOCK_BYTES = 4 * 2**20
#: Size of the (rows × row sets) float64 masks of one Gram product: large enough for the BLAS to run near its
#: peak (a 4 MiB block holds only ~17 row sets of 30,000 participants).
GRAM_BLOCK_BYTES = 64 * 2**20
#: Name of the intercept column (as statsmodels formulas name it).
INTERCEPT = "Intercept"
#: Largest share of a column's sum of squares left after projection on the columns before it (over a
#: model's rows) at which the column counts as linearly dependent on them and is dropped from the model.
DEPENDENCE_TOL = 1e-10


def name_list(names: Hashable | Iterable[Hashable]) -> list[Hashable]:
    """Column names as a list: a single name (e.g. a string) becomes a list of one."""
    if isinstance(names, str | bytes) or not isinstance(names, Iterable):
        return [names]
    return list(names)


def is_categorical(values: pd.Series) -> bool:
    """Whether a column is coded with dummies: object, string, category or bool (incl. nullable) dtype."""
    dtype = values.dtype
    return (
        isinstance(dtype, pd.CategoricalDtype)
        or pd.api.types.is_bool_dtype(dtype)
        or pd.api.types.is_object_dtype(dtype)
        or pd.api.types.is_string_dtype(dtype)
    )


def complete_rows(data: pd.DataFrame, columns: Sequence[Hashable]) -> np.ndarray:
    """Rows of ``data`` with a value in every one of ``columns`` (bool, one entry per row)."""
    if not columns:
        return np.ones(len(data), dtype=bool)
    return data[list(columns)].notna().all(axis=1).to_numpy(dtype=bool)


def _levels(values: pd.Series) -> list[Any]:
    """Distinct non-missing values of a categorical column, in reference-first order."""
    present = values.dropna()
    if isinstance(values.dtype, pd.CategoricalDtype):
        seen = set(present.unique())
        return [level for level in values.cat.categories if level in seen]
    return sorted(present.unique())


def strata_rows(data: pd.DataFrame, strata: Hashable | None) -> list[tuple[Any, np.ndarray]]:
    """The strata of ``data`` as ``(level, rows)`` pairs; ``[(None, all rows)]`` without ``strata``.

    Levels are ordered as :func:`term_columns` orders categorical levels (sorted values, or category order);
    rows whose stratum is missing belong to no stratum.
    """
    if strata is None:
        return [(None, np.ones(len(data), dtype=bool))]
    column = data[strata]
    return [(level, (column == level).fillna(False).to_numpy(dtype=bool)) for level in _levels(column)]


def term_columns(values: pd.Series, rows: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Design columns of one term over ``rows`` (a bool mask of the series' rows, all of them complete).

    Returns
    -------
    columns : ndarray of float64, (rows, c)
        The values of a numeric term (c = 1), or one 0/1 dummy per non-reference level of a categorical
        term (c = levels − 1; 0 when a single level is present).
    names : list of str
        ``name`` for a numeric term; ``name[T.level]`` per dummy.
    """
    name = str(values.name)
    subset = values[rows]
    if not is_categorical(values):
        return subset.to_numpy(dtype=np.float64, na_value=np.nan)[:, None], [name]
    levels = _levels(subset)[1:]
    dummies = np.zeros((len(subset), len(levels)))
    for column, level in enumerate(levels):
        dummies[:, column] = (subset == level).to_numpy(dtype=np.float64)
    return dummies, [f"{name}[T.{level}]" for level in levels]


def _exposure_column(values: pd.Series, rows: np.ndarray) -> np.ndarray:
    """The exposure over ``rows`` as float64 (numeric, or bool as 0/1), shape (rows, 1)."""
    if is_categorical(values) and not pd.api.types.is_bool_dtype(values.dtype):
        raise TypeError(
            f"exposure {values.name!r} has dtype {values.dtype}: it must be numeric or bool (code a "
            "two-group comparison as 0/1, or enter a categorical variable as a covariate)"
        )
    return values[rows].to_numpy(dtype=np.float64, na_value=np.nan)[:, None]


@dataclass(frozen=True)
class ModelFrame:
    """Standardised design and outcomes of one exposure (and stratum) for many outcomes.

    Attributes
    ----------
    x : ndarray of float64, (n, k)
        Intercept (ones), standardised covariate columns, standardised exposure (last), over the ``n``
        rows complete for the exposure and covariates.
    names : tuple of str
        Column names of ``x`` (:data:`INTERCEPT`, covariate terms, exposure).
    scale : ndarray of float64, (k,)
        Divisor of each column (its SD over the rows; 1 for the intercept and for constant columns): a
        coefficient of ``x`` divided by its scale is the coefficient per unit of the original column.
    y : ndarray of float64, (n, m)
        The outcomes over the same rows, NaN where missing.
    present : ndarray of bool, (n, m)
        Where ``y`` has a value.
    rows : ndarray of bool, (len(data),)
        The rows of the table that ``x`` covers.
    """

    x: np.ndarray
    names: tuple[str, ...]
    scale: np.ndarray
    y: np.ndarray
    present: np.ndarray
    rows: np.ndarray

    @property
    def exposure(self) -> int:
        """Column index of the exposure in :attr:`x` (the last)."""
        return self.x.shape[1] - 1


def model_frame(
    data: pd.DataFrame,
    outcomes: Sequence[Hashable],
    exposure: Hashable,
    covariates: Sequence[Hashable] = (),
    rows: np.ndarray | None = None,
) -> ModelFrame:
    """Build the standardised design of ``outcome ~ 1 + covariates + exposure`` for many outcomes.

    Parameters
    ----------
    data : pandas.DataFrame
        One row per participant.
    outcomes : sequence of column names
        Numeric outcomes (bool allowed); their missing values stay NaN in :attr:`ModelFrame.y`.
    exposure : column name
        Numeric or bool.
    covariates : sequence of column names
        Numeric or categorical (see the module notes).
    rows : ndarray of bool, optional
        Rows of ``data`` to use (a stratum); default all. Rows missing the exposure or a covariate are
        dropped from them.
    """
    base = np.ones(len(data), dtype=bool) if rows is None else np.asarray(rows, dtype=bool)
    base = base & complete_rows(data, [*covariates, exposure])
    blocks, names = [np.ones((int(base.sum()), 1))], [INTERCEPT]
    for covariate in covariates:
        columns, labels = term_columns(data[covariate], base)
        blocks.append(columns)
        names += labels
    blocks.append(_exposure_column(data[exposure], base))
    names.append(str(exposure))
    raw = np.concatenate(blocks, axis=1)
    centre, scale = _standardisation(raw)
    y = data.loc[base, list(outcomes)].to_numpy(dtype=np.float64, na_value=np.nan)
    return ModelFrame((raw - centre) / scale, tuple(names), scale, y, ~np.isnan(y), base)


def _standardisation(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column means and SDs of a design (0 and 1 for the intercept; SD 1 where a column is constant)."""
    centre = raw.mean(axis=0) if len(raw) else np.zeros(raw.shape[1])
    scale = raw.std(axis=0) if len(raw) else np.ones(raw.shape[1])
    centre[0], scale[0] = 0.0, 1.0
    scale[scale == 0] = 1.0
    return centre, scale


@dataclass(frozen=True)
class PairProducts:
    """Row-wise products of a design's column pairs, for many weighted Gram matrices in one product.

    ``gram(w)[i] = Σ_rows w[:, i] · x xᵀ`` costs one matrix product over the ``k(k+1)/2`` distinct pairs.
    """

    values: Any
    upper: tuple[Any, Any]
    k: int

    @classmethod
    def of(cls, x: Any) -> PairProducts:
        """Pair products of the design ``x`` (n, k), in its array module."""
        xp = array_module(x)
        n, k = x.shape
        i, j = np.triu_indices(k)
        values = xp.empty((n, len(i)))
        start = 0
        for column in range(k):  # pairs (column, column..k-1) are adjacent in row-major upper order
            xp.multiply(x[:, column, None], x[:, column:], out=values[:, start : start + k - column])
            start += k - column
        return cls(values, (xp.asarray(i), xp.asarray(j)), k)

    def gram(self, weights: Any) -> Any:
        """Weighted Gram matrices ``xᵀ diag(w) x`` for every column of ``weights`` (n, g): shape (g, k, k)."""
        return self._unpack(weights.T @ self.values)

    def gram_of_rows(self, present: np.ndarray) -> Any:
        """Gram matrices over the rows of each column of the boolean mask ``present`` (n, g), in blocks of
        :data:`GRAM_BLOCK_BYTES` (one large matrix product per block runs near the BLAS peak)."""
        xp = array_module(self.values)
        gram = xp.empty((present.shape[1], self.k, self.k))
        for block in outcome_blocks(np.arange(present.shape[1]), len(present), block_bytes=GRAM_BLOCK_BYTES):
            gram[xp.asarray(block)] = self.gram(xp.asarray(present[:, block], dtype=np.float64))
        return gram

    def _unpack(self, flat: Any) -> Any:
        """(g, k, k) symmetric matrices from their upper triangles (g, k(k+1)/2)."""
        xp = array_module(flat)
        out = xp.empty((flat.shape[0], self.k, self.k))
        i, j = self.upper
        out[:, i, j] = flat
        out[:, j, i] = flat
        return out


def outcome_blocks(
    outcomes: np.ndarray, n_rows: int, per_outcome: int = 1, block_bytes: int = BLOCK_BYTES
) -> list[np.ndarray]:
    """Split outcome indices into blocks whose (rows × outcomes) float64 work arrays fit ``block_bytes``.

    ``per_outcome`` work columns are counted per outcome (2 for the two ends of a profile interval).
    """
    size = max(1, block_bytes // (np.dtype(np.float64).itemsize * max(n_rows, 1) * per_outcome))
    return [outcomes[start : start + size] for start in range(0, len(outcomes), size)]


def independent_columns(gram: Any, tol: float = DEPENDENCE_TOL) -> Any:
    """Which columns of each design are linearly independent of the columns before them.

    Symmetric Gaussian elimination (Cholesky) of each Gram matrix in column order: column ``j`` is kept
    when its residual sum of squares after projection on the kept columns before it exceeds ``tol`` times
    its own sum of squares; a dependent column is skipped, not eliminated.

    Parameters
    ----------
    gram : array, (g, k, k)
        Gram matrices ``xᵀx`` of ``g`` designs over their rows.
    tol : float
        Relative residual sum of squares at or below which a column counts as dependent.

    Returns
    -------
    array of bool, (g, k)
    """
    xp = array_module(gram)
    work = xp.array(gram, dtype=np.float64, copy=True)
    own = xp.diagonal(gram, axis1=1, axis2=2).copy()
    keep = xp.zeros(own.shape, dtype=bool)
    for j in range(own.shape[1]):
        pivot = work[:, j, j]
        keep[:, j] = pivot > tol * own[:, j]
        column = work[:, :, j] * keep[:, j, None]
        work -= column[:, :, None] * column[:, None, :] / xp.where(keep[:, j], pivot, 1.0)[:, None, None]
    return keep


@dataclass(frozen=True)
class Patterns:
    """Outcomes grouped by the rows they are observed in.

    Attributes
    ----------
    rows : ndarray of bool, (n, g)
        The distinct row sets (presence masks) among the outcomes.
    of_outcome : ndarray of int, (m,)
        Index of each outcome's row set.
    gram : array of float64, (g, k, k)
        Gram matrix of the design over each row set (in the array module of the fit).
    keep : array of bool, (g, k)
        Columns of the design kept over each row set (:func:`independent_columns`).
    """

    rows: np.ndarray
    of_outcome: np.ndarray
    gram: Any
    keep: Any


def missingness_patterns(frame: ModelFrame, pairs: PairProducts | None = None) -> Patterns:
    """Group a frame's outcomes by presence mask (hash of the packed mask bytes) and factor each group.

    Parameters
    ----------
    frame : ModelFrame
    pairs : PairProducts, optional
        Pair products of ``frame.x`` if already computed (in the array module to work in); NumPy if not.
    """
    packed = np.ascontiguousarray(np.packbits(frame.present, axis=0).T)
    index: dict[bytes, int] = {}
    of_outcome = np.array([index.setdefault(mask.tobytes(), len(index)) for mask in packed], dtype=np.int64)
    first = np.unique(of_outcome, return_index=True)[1]
    rows = frame.present[:, first]
    if pairs is None:
        pairs = PairProducts.of(frame.x)
    gram = pairs.gram_of_rows(rows)
    return Patterns(rows, of_outcome, gram, independent_columns(gram))


def column_sets(patterns: Patterns) -> list[tuple[np.ndarray, np.ndarray]]:
    """Outcomes grouped by the design columns kept for them.

    Returns
    -------
    list of (columns, outcomes)
        ``columns``: int indices of the kept design columns (ascending, so the exposure is last when kept);
        ``outcomes``: int indices of the outcomes fitted on those columns. Usually a single set; outcomes
        with no rows are in none.
    """
    keep = to_numpy(patterns.keep)
    signatures, of_pattern = np.unique(keep, axis=0, return_inverse=True)
    of_outcome = of_pattern.reshape(-1)[patterns.of_outcome]
    return [
        (np.flatnonzero(sig), np.flatnonzero(of_outcome == s))
        for s, sig in enumerate(signatures)
        if sig.any()
    ]
