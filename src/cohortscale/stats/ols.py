"""Ordinary least squares of many outcomes on many exposures at once, matching statsmodels ``OLS``.

Each model is ``outcome ~ 1 + covariates + exposure`` on the rows complete for that outcome, exposure and
covariates, within a stratum (design rules: :mod:`cohortscale.stats.design`). Outcomes observed in the same
rows share one design: its Gram matrix ``xᵀx`` (float64, standardised columns) is formed and inverted once
per row set and applied to all their outcomes as a matrix right-hand side; the Gram matrices of all row
sets come from one matrix product of the presence masks with the design's column-pair products.

Numbers are those of ``statsmodels.api.OLS(y, X).fit()`` on the same rows (t-distribution p-values and
intervals; R² about the mean; adjusted R² ``1 − (n − 1)/df_resid · (1 − R²)``), within float64 rounding:
the residual sum of squares is ``TSS − bᵀβ`` from the normal equations, whose relative error grows as
``1/(1 − R²)`` (about 1e-13 at R² = 0.99).

Degenerate models give NaN estimates (``n`` and ``df_resid`` still reported): an exposure constant over
the model's rows or dependent on the covariates, or fewer rows than coefficients (``df_resid < 1``).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from cohortscale.backend import to_numpy
from cohortscale.stats.design import (
    CI_LEVEL,
    ModelFrame,
    PairProducts,
    column_sets,
    missingness_patterns,
    model_frame,
    name_list,
    outcome_blocks,
    strata_rows,
)

__all__ = ["OLS_COLUMNS", "YEARS_PER_DECADE", "decline_per_decade", "ols_many"]

#: Columns of the table :func:`ols_many` returns.
OLS_COLUMNS = (
    "outcome",
    "exposure",
    "stratum",
    "n",
    "beta",
    "se",
    "t",
    "p",
    "ci_low",
    "ci_high",
    "std_beta",
    "std_ci_low",
    "std_ci_high",
    "r2",
    "adj_r2",
    "df_resid",
)
#: Years per decade: :func:`decline_per_decade` reports slopes per this many years of age.
YEARS_PER_DECADE = 10.0


def ols_many(
    data: pd.DataFrame,
    outcomes: Hashable | Sequence[Hashable],
    exposures: Hashable | Sequence[Hashable],
    covariates: Sequence[Hashable] = (),
    strata: Hashable | None = None,
    xp: ModuleType | None = None,
    ci_level: float = CI_LEVEL,
) -> pd.DataFrame:
    """Fit ``outcome ~ 1 + exposure + covariates`` for every outcome × exposure × stratum.

    Parameters
    ----------
    data : pandas.DataFrame
        One row per participant.
    outcomes : column name or sequence of names
        Numeric outcomes (IDPs), each fitted on its own complete rows.
    exposures : column name or sequence of names
        Numeric or bool exposures, one model per exposure (the others are not adjusted for).
    covariates : sequence of column names
        Adjustment terms, numeric or categorical (dummies, first level as reference).
    strata : column name, optional
        Fit separately within each level of this column (e.g. sex); rows with no level are left out.
    xp : module, optional
        Array module for the arithmetic (``numpy``, the default, or ``cupy``); the table is built with
        pandas either way.
    ci_level : float
        Confidence level of the intervals (0.95 → 95 %).

    Returns
    -------
    pandas.DataFrame
        One row per stratum × exposure × outcome (in that nesting, outcomes in the order given), with
        :data:`OLS_COLUMNS`: ``n`` rows used; ``beta`` (outcome units per exposure unit), ``se``, ``t``,
        two-sided ``p`` and ``ci_low``/``ci_high`` of the exposure coefficient (t distribution on
        ``df_resid`` degrees of freedom); ``std_beta`` = beta · SD(exposure) / SD(outcome) over the model's
        rows, with its interval scaled by the same factor; ``r2`` and ``adj_r2`` of the model. ``stratum``
        is the level, or None without strata.
    """
    xp = np if xp is None else xp
    outcomes = name_list(outcomes)
    tables = []
    for level, rows in strata_rows(data, strata):
        for exposure in name_list(exposures):
            frame = model_frame(data, outcomes, exposure, covariates, rows)
            table = _tidy(_fit(frame, xp), frame, ci_level)
            table.insert(0, "outcome", outcomes)
            table.insert(1, "exposure", exposure)
            table.insert(2, "stratum", level)
            tables.append(table)
    return pd.concat(tables, ignore_index=True)[list(OLS_COLUMNS)]


@dataclass(frozen=True)
class _Fit:
    """Per-outcome sums of one frame's fits (NumPy arrays of length m); coefficients on the standardised
    design (:class:`~cohortscale.stats.design.ModelFrame`)."""

    n: np.ndarray  # rows of each model
    rank: np.ndarray  # design columns kept
    beta: np.ndarray  # exposure coefficient (NaN where the exposure is not estimable)
    unscaled_var: np.ndarray  # [(xᵀx)⁻¹] of the exposure: variance / residual variance
    rss: np.ndarray  # residual sum of squares
    tss: np.ndarray  # total sum of squares about the outcome's mean
    exposure_ss: np.ndarray  # sum of squares of the exposure about its mean over the model's rows


def _fit(frame: ModelFrame, xp: ModuleType) -> _Fit:
    """Least-squares fits of all outcomes of a frame, one Gram inverse per row set and column set."""
    x = xp.asarray(frame.x)
    patterns = missingness_patterns(frame, PairProducts.of(x))
    gram = to_numpy(patterns.gram)[patterns.of_outcome]  # (m, k, k), each outcome's rows
    n = gram[:, 0, 0]
    tss, cross = _centred_sums(frame, x, n, gram[:, 0, :], xp)
    m = frame.y.shape[1]
    beta, unscaled, explained = (np.full(m, np.nan) for _ in range(3))
    rank = np.zeros(m, dtype=np.int64)
    for columns, outcomes in column_sets(patterns):
        sets, local = np.unique(patterns.of_outcome[outcomes], return_inverse=True)
        kept = xp.asarray(columns)
        inverse = xp.linalg.inv(patterns.gram[xp.asarray(sets)][:, kept][:, :, kept])[xp.asarray(local)]
        rhs = xp.asarray(cross[columns][:, outcomes])
        coef = xp.einsum("mij,jm->im", inverse, rhs)
        explained[outcomes] = to_numpy((coef * rhs).sum(axis=0))
        rank[outcomes] = len(columns)
        if columns[-1] == frame.exposure:
            beta[outcomes] = to_numpy(coef[-1])
            unscaled[outcomes] = to_numpy(inverse[:, -1, -1])
    e = frame.exposure
    with np.errstate(invalid="ignore", divide="ignore"):
        exposure_ss = gram[:, e, e] - gram[:, 0, e] ** 2 / n
    return _Fit(n.astype(np.int64), rank, beta, unscaled, np.maximum(tss - explained, 0.0), tss, exposure_ss)


def _centred_sums(
    frame: ModelFrame, x: Any, n: np.ndarray, column_sums: np.ndarray, xp: ModuleType
) -> tuple[np.ndarray, np.ndarray]:
    """Each outcome's sum of squares about its mean and the cross-products ``xᵀ(y − ȳ)`` over its rows.

    One pass per block of outcomes on ``y − c`` (missing values 0), ``c`` the outcome's first value, then
    exact corrections for the mean (``column_sums``: (m, k) sums of the design columns over each outcome's
    rows); shifting by ``c`` keeps the sums of squares free of cancellation when the mean is far from 0.

    Returns
    -------
    tss : ndarray, (m,)
    cross : ndarray, (k, m)
    """
    m = frame.y.shape[1]
    first = np.argmax(frame.present, axis=0)
    shift = np.nan_to_num(frame.y[first, np.arange(m)])
    squares, cross = np.empty(m), np.empty((x.shape[1], m))
    for block in outcome_blocks(np.arange(m), len(frame.y)):
        y = xp.asarray(frame.y[:, block])
        y -= xp.asarray(shift[block])
        xp.copyto(y, 0.0, where=xp.asarray(~frame.present[:, block]))
        cross[:, block] = to_numpy(x.T @ y)
        squares[block] = to_numpy(xp.einsum("nm,nm->m", y, y))
    with np.errstate(invalid="ignore", divide="ignore"):
        offset = cross[0] / n  # mean − c
    return squares - n * offset**2, cross - offset * column_sums.T


def _tidy(fit: _Fit, frame: ModelFrame, ci_level: float) -> pd.DataFrame:
    """Exposure statistics in the exposure's units from a frame's fits (NaN where not estimable)."""
    df_resid = fit.n - fit.rank
    scale = frame.scale[frame.exposure]
    with np.errstate(invalid="ignore", divide="ignore"):
        valid = np.isfinite(fit.beta) & (df_resid > 0)
        beta = np.where(valid, fit.beta / scale, np.nan)
        se = np.sqrt(fit.rss / df_resid * fit.unscaled_var) / scale
        t = beta / se
        quantile = stats.t.ppf(0.5 + ci_level / 2, np.where(valid, df_resid, np.nan))
        r2 = 1.0 - fit.rss / fit.tss
        to_std = scale * np.sqrt(fit.exposure_ss / fit.tss)
        adj_r2 = 1.0 - (fit.n - 1) / df_resid * (1.0 - r2)
    ci_low, ci_high = beta - quantile * se, beta + quantile * se
    return pd.DataFrame(
        {
            "n": fit.n,
            "beta": beta,
            "se": np.where(valid, se, np.nan),
            "t": t,
            "p": 2.0 * stats.t.sf(np.abs(t), np.where(valid, df_resid, np.nan)),
            "ci_low": ci_low,
            "ci_high": ci_high,
            "std_beta": beta * to_std,
            "std_ci_low": ci_low * to_std,
            "std_ci_high": ci_high * to_std,
            "r2": np.where(valid, r2, np.nan),
            "adj_r2": np.where(valid, adj_r2, np.nan),
            "df_resid": df_resid,
        }
    )


def decline_per_decade(
    data: pd.DataFrame,
    outcome: Hashable | Iterable[Hashable],
    age: Hashable,
    strata: Hashable | None = None,
    ci_level: float = CI_LEVEL,
) -> pd.DataFrame:
    """Change of an outcome per decade of age, ``10·β₁`` of ``outcome = β₀ + β₁·age``, by stratum.

    Parameters
    ----------
    data : pandas.DataFrame
    outcome : column name or names
        E.g. thigh muscle volume (cm³); one row per outcome × stratum.
    age : column name
        Age in years.
    strata : column name, optional
        E.g. sex.
    ci_level : float
        Level of the normal-approximation interval ``10·(β₁ ± z·SE)``; z = 1.95996 at 0.95 (the 1.96 of
        STUDIES.md §2).

    Returns
    -------
    pandas.DataFrame
        Columns ``outcome``, ``stratum``, ``n``, ``per_decade`` (outcome units per 10 years; negative for a
        decline), ``ci_low``, ``ci_high``, ``p`` (t test of β₁).
    """
    fits = ols_many(data, outcome, age, strata=strata, ci_level=ci_level)
    z = stats.norm.ppf(0.5 + ci_level / 2)
    return pd.DataFrame(
        {
            "outcome": fits["outcome"],
            "stratum": fits["stratum"],
            "n": fits["n"],
            "per_decade": YEARS_PER_DECADE * fits["beta"],
            "ci_low": YEARS_PER_DECADE * (fits["beta"] - z * fits["se"]),
            "ci_high": YEARS_PER_DECADE * (fits["beta"] + z * fits["se"]),
            "p": fits["p"],
        }
    )
