"""Logistic regression of many binary outcomes at once, matching statsmodels ``Logit``, with
profile-likelihood intervals of the exposure's odds ratio.

Each model is ``logit P(outcome = 1) = 1 + covariates + exposure`` on the rows complete for that outcome,
exposure and covariates, within a stratum (design rules: :mod:`cohortscale.stats.design`). The fit is
Newton–Raphson (IRLS) run for a block of outcomes together: the outcomes are the columns of one matrix
over the rows complete for the exposure and covariates, a missing outcome value has weight 0, and each
iteration computes every outcome's linear predictor in one matrix product and every outcome's information
matrix ``xᵀ diag(w μ(1 − μ)) x`` in one product of the weights with the design's column-pair products,
then solves the ``k × k`` systems as one batch. An outcome leaves the iteration once its largest
coefficient step (on the standardised design) is below ``tol``; the block ends when all have.

Numbers are those of ``statsmodels.api.Logit(y, X).fit(method="newton")``: maximum-likelihood β, standard
errors from the inverse information, Wald z, two-sided normal p-values and Wald intervals.

Profile-likelihood interval of the exposure coefficient β₁: the values where
``2·(ℓ̂ − ℓ_p(β₁)) = χ²₁(level)``, ℓ_p being the log-likelihood maximised over the other coefficients with
β₁ fixed (β₁·exposure entering as an offset). Each end of each outcome is a problem of its own and all
of a block's are iterated together, from the Wald ends: every iteration evaluates score and information
once and takes two coupled Newton steps, one of the other coefficients towards the constrained maximum at
the current β₁, one of β₁ on the signed root ``r(β₁) = ±√(2·(ℓ̂ − ℓ_p))`` (nearly linear in β₁) with
slope ``−(dℓ_p/dβ₁)/r``, where ``dℓ_p/dβ₁`` is the score of β₁ at the constrained maximum. ℓ_p and its
slope are taken to first order in the pending step of the other coefficients, so they are exact once
that step vanishes: an end is accepted when both steps are below ``tol``, i.e. at the constrained fit
with β₁ on the χ² boundary, the same point a root search over offset refits finds.

Degenerate cases are flagged, not raised: an outcome with no events or no non-events among its rows, with
no more rows than coefficients, or whose exposure is not estimable (constant, or dependent on the
covariates) gets NaN results, and so does a fit that does not converge within ``max_iter`` steps
(separation or quasi-separation: some estimate runs off to infinity, e.g. the dummy of a covariate level
without events), with ``converged`` False; statsmodels returns its last iterate there with a warning.
Refit such an outcome with fewer covariate levels or a penalised method. A profile end not found within
``max_iter`` steps (a profile that never drops by χ²/2 on that side) is NaN.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from cohortscale.backend import array_module, to_numpy
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

__all__ = ["LOGIT_COLUMNS", "MAX_ITER", "TOL", "logit_many"]

#: Default convergence tolerance: largest absolute Newton step of a coefficient of the standardised
#: design (and of a profile-interval end on the same scale).
TOL = 1e-10
#: Default cap on Newton steps per fit (and per profile-interval search).
MAX_ITER = 50
#: Largest factor by which one profile step may move an interval end away from the estimate.
MAX_PROFILE_GROWTH = 10.0
#: Columns of the table :func:`logit_many` returns.
LOGIT_COLUMNS = (
    "outcome",
    "stratum",
    "n",
    "n_events",
    "beta",
    "se",
    "z",
    "p",
    "ci_low",
    "ci_high",
    "or_",
    "or_ci_low",
    "or_ci_high",
    "converged",
)


def logit_many(
    data: pd.DataFrame,
    outcomes: Hashable | Sequence[Hashable],
    exposure: Hashable,
    covariates: Sequence[Hashable] = (),
    strata: Hashable | None = None,
    profile_ci: bool = True,
    ci_level: float = CI_LEVEL,
    tol: float = TOL,
    max_iter: int = MAX_ITER,
    xp: ModuleType | None = None,
) -> pd.DataFrame:
    """Fit ``logit P(outcome) = 1 + exposure + covariates`` for every outcome × stratum.

    Parameters
    ----------
    data : pandas.DataFrame
        One row per participant.
    outcomes : column name or sequence of names
        Binary outcomes: 0/1 (or bool) where present, missing elsewhere.
    exposure : column name
        Numeric or bool.
    covariates : sequence of column names
        Adjustment terms, numeric or categorical (dummies, first level as reference).
    strata : column name, optional
        Fit separately within each level of this column.
    profile_ci : bool
        Odds-ratio interval from the profile likelihood (True) or from the Wald interval (False, faster).
    ci_level : float
        Confidence level of the intervals (0.95 → 95 %).
    tol : float
        Convergence tolerance (see :data:`TOL`).
    max_iter : int
        Most Newton steps per fit and per profile search.
    xp : module, optional
        Array module for the arithmetic (``numpy``, the default, or ``cupy``).

    Returns
    -------
    pandas.DataFrame
        One row per stratum × outcome with :data:`LOGIT_COLUMNS`: ``n`` rows and ``n_events`` ones used;
        the exposure's log odds ratio per exposure unit ``beta``, ``se``, Wald ``z`` and two-sided ``p``,
        Wald interval ``ci_low``/``ci_high`` (log scale); odds ratio ``or_`` = exp(beta) and its interval
        ``or_ci_low``/``or_ci_high`` (profile likelihood, or exp of the Wald ends without
        ``profile_ci``); ``converged``. ``stratum`` is the level, or None without strata.
    """
    xp = np if xp is None else xp
    outcomes = name_list(outcomes)
    tables = []
    for level, rows in strata_rows(data, strata):
        frame = model_frame(data, outcomes, exposure, covariates, rows)
        _check_binary(frame, outcomes)
        fit = _fit_frame(frame, profile_ci, stats.norm.ppf(0.5 + ci_level / 2), tol, max_iter, xp)
        table = _tidy(fit, frame, ci_level, profile_ci)
        table.insert(0, "outcome", outcomes)
        table.insert(1, "stratum", level)
        tables.append(table)
    return pd.concat(tables, ignore_index=True)[list(LOGIT_COLUMNS)]


def _check_binary(frame: ModelFrame, outcomes: Sequence[Hashable]) -> None:
    """Raise ValueError naming the outcomes with a present value other than 0 or 1."""
    binary = (frame.y == 0) | (frame.y == 1) | ~frame.present
    bad = [name for name, ok in zip(outcomes, binary.all(axis=0), strict=True) if not ok]
    if bad:
        raise ValueError(f"logistic outcomes must be 0/1 where present; not so: {bad}")


@dataclass
class _Estimates:
    """Per-outcome results of one frame on the standardised design (NumPy arrays of length m)."""

    n: np.ndarray
    events: np.ndarray
    beta: np.ndarray
    var: np.ndarray
    converged: np.ndarray
    low: np.ndarray
    high: np.ndarray

    @classmethod
    def empty(cls, n: np.ndarray, events: np.ndarray) -> _Estimates:
        """No outcome fitted yet: NaN estimates, not converged."""
        nan = np.full(len(n), np.nan)
        return cls(n, events, nan.copy(), nan.copy(), np.zeros(len(n), bool), nan.copy(), nan.copy())


def _fit_frame(
    frame: ModelFrame, profile_ci: bool, z: float, tol: float, max_iter: int, xp: ModuleType
) -> _Estimates:
    """Fit every outcome of a frame, block by block within each set of kept design columns."""
    x = xp.asarray(frame.x)
    pairs = PairProducts.of(x)
    patterns = missingness_patterns(frame, pairs)
    n = to_numpy(patterns.gram[:, 0, 0])[patterns.of_outcome].astype(np.int64)
    out = _Estimates.empty(n, (frame.y == 1).sum(axis=0))
    for columns, outcomes in column_sets(patterns):
        fittable = (
            (out.events[outcomes] > 0) & (out.events[outcomes] < n[outcomes]) & (n[outcomes] > len(columns))
        )
        if columns[-1] != frame.exposure or not fittable.any():
            continue
        every = len(columns) == x.shape[1]
        design = x if every else x[:, xp.asarray(columns)]
        design_pairs = pairs if every else PairProducts.of(design)
        for block in outcome_blocks(outcomes[fittable], len(frame.y), 2 if profile_ci else 1):
            data = _Outcomes.of(frame, block, xp)
            _fit_block(design, design_pairs, data, block, out, profile_ci, z, tol, max_iter)
    return out


@dataclass(frozen=True)
class _Outcomes:
    """A block of outcomes as work arrays: ``y`` (n, b) 0/1 with 0 where missing, and the row weights ``w``
    (1 on the model's rows, 0 elsewhere), None when every outcome has every row."""

    y: Any
    w: Any | None

    @classmethod
    def of(cls, frame: ModelFrame, block: np.ndarray, xp: ModuleType) -> _Outcomes:
        """The outcomes ``block`` (indices) of a frame, in the array module ``xp``."""
        present = frame.present[:, block]
        if present.all():
            return cls(xp.asarray(frame.y[:, block]), None)
        return cls(
            xp.asarray(np.where(present, frame.y[:, block], 0.0)), xp.asarray(present, dtype=np.float64)
        )

    def take(self, columns: Any) -> _Outcomes:
        """The outcomes ``columns`` (indices or a bool mask) of the block."""
        return _Outcomes(self.y[:, columns], None if self.w is None else self.w[:, columns])

    def weighted(self, values: Any) -> Any:
        """``values`` (n, b) times the row weights, in place."""
        if self.w is not None:
            values *= self.w
        return values


def _fit_block(
    x: Any,
    pairs: PairProducts,
    data: _Outcomes,
    block: np.ndarray,
    out: _Estimates,
    profile_ci: bool,
    z: float,
    tol: float,
    max_iter: int,
) -> None:
    """Fit the outcomes ``block`` and store their exposure results in ``out``."""
    xp = array_module(x)
    rows = data.y.shape[0] if data.w is None else data.w.sum(axis=0)
    prevalence = data.y.sum(axis=0) / rows
    beta = xp.zeros((x.shape[1], data.y.shape[1]))
    beta[0] = xp.log(prevalence / (1.0 - prevalence))  # the intercept-only fit
    beta, information, converged = _newton(x, pairs, data, beta, tol, max_iter)
    last = xp.zeros(beta.shape[::-1] + (1,))
    last[:, -1] = 1.0
    var = _solve(information, last)[:, -1, 0]  # [information⁻¹] of the exposure
    out.beta[block] = to_numpy(xp.where(converged, beta[-1], np.nan))
    out.var[block] = to_numpy(xp.where(converged, var, np.nan))
    out.converged[block] = to_numpy(converged)
    if profile_ci and bool(converged.any()):
        done = xp.flatnonzero(converged)
        ends = _profile_ends(x, pairs, data.take(done), beta[:, done], xp.sqrt(var[done]), z, tol, max_iter)
        fitted = block[to_numpy(done)]
        out.low[fitted], out.high[fitted] = (to_numpy(end) for end in ends)


def _evaluate(
    x: Any, pairs: PairProducts, data: _Outcomes, coef: Any, loglik: bool = False
) -> tuple[Any, Any, Any | None]:
    """Score, information and (optionally) log-likelihood of each outcome at its coefficients.

    Parameters
    ----------
    x : array, (n, k)
    pairs : PairProducts
        Column-pair products of ``x``.
    data : _Outcomes
        ``b`` outcomes.
    coef : array, (k, b)

    Returns
    -------
    score : array, (k, b)
        ``xᵀ w (y − μ)``.
    information : array, (b, k, k)
        ``xᵀ diag(w μ (1 − μ)) x``.
    loglik : array (b,) or None
        ``Σ w (y η − log(1 + e^η))``; −inf where some ``η < −709`` (e^−η overflows).
    """
    xp = array_module(x)
    negative = x @ -coef  # −η
    with np.errstate(over="ignore"):
        mu = xp.exp(negative)
    softplus = xp.log1p(mu) if loglik else None  # log(1 + e^−η)
    mu += 1.0
    xp.reciprocal(mu, out=mu)  # μ = 1 / (1 + e^−η)
    residual = data.weighted(data.y - mu)
    score = x.T @ residual
    weight = xp.subtract(1.0, mu, out=residual)
    weight *= mu
    information = pairs.gram(data.weighted(weight))
    if softplus is None:
        return score, information, None
    negative -= xp.multiply(negative, data.y, out=mu)  # (1 − y)(−η)
    negative -= softplus  # y η − log(1 + e^η)
    return score, information, data.weighted(negative).sum(axis=0)


def _newton(
    x: Any, pairs: PairProducts, data: _Outcomes, beta: Any, tol: float, max_iter: int
) -> tuple[Any, Any, Any]:
    """Batched Newton–Raphson for the logistic log-likelihood of every outcome of ``data``.

    An outcome leaves the working set when its largest step is below ``tol`` (converged) or not finite
    (singular information); the work arrays are compacted to the outcomes still iterating.

    Parameters
    ----------
    x : array, (n, k)
    pairs : PairProducts
        Column-pair products of ``x``.
    data : _Outcomes
        ``b`` outcomes.
    beta : array, (k, b)
        Starting coefficients.
    tol, max_iter : float, int
        Convergence tolerance on the largest step; most steps.

    Returns
    -------
    beta : array, (k, b)
        Estimates (``beta`` is updated in place).
    information : array, (b, k, k)
        The information matrix at the start of each outcome's last step.
    converged : array of bool, (b,)
        False where ``max_iter`` ran out or a step was not finite; such an outcome keeps its last finite
        iterate.
    """
    xp = array_module(x)
    m, k = beta.shape[1], x.shape[1]
    information = xp.full((m, k, k), np.nan)
    converged = xp.zeros(m, dtype=bool)
    index, coef = xp.arange(m), beta.copy()
    for _ in range(max_iter):
        if index.size == 0:
            break
        score, info, _ = _evaluate(x, pairs, data, coef)
        step = _solve(info, score.T[..., None])[..., 0].T
        finite = xp.isfinite(step).all(axis=0)
        coef += xp.where(finite, step, 0.0)
        beta[:, index], information[index] = coef, info
        done = finite & (xp.abs(step).max(axis=0) < tol)
        converged[index[done]] = True
        going = finite & ~done
        if not bool(going.all()):
            index, coef, data = index[going], coef[:, going], data.take(going)
    return beta, information, converged


def _solve(a: Any, b: Any) -> Any:
    """``a[i]⁻¹ b[i]`` for a stack (a: (m, k, k), b: (m, k, r)); NaN where ``a[i]`` is singular."""
    xp = array_module(a)
    try:
        return xp.linalg.solve(a, b)
    except np.linalg.LinAlgError:
        return xp.stack([_solve_one(a_i, b_i) for a_i, b_i in zip(a, b, strict=True)])


def _solve_one(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a⁻¹ b``, or NaN if ``a`` is singular."""
    try:
        return np.linalg.solve(a, b)
    except np.linalg.LinAlgError:
        return np.full_like(b, np.nan)


def _profile_ends(
    x: Any, pairs: PairProducts, data: _Outcomes, beta: Any, se: Any, z: float, tol: float, max_iter: int
) -> tuple[Any, Any]:
    """Profile-likelihood interval ends of the last coefficient of ``x`` for every outcome of ``data``.

    Each end is a problem of its own (the lower ends of all outcomes, then the upper ends), iterated
    together: a Newton step of the other coefficients with the profiled one fixed, and a Newton step of
    the profiled one on the signed root, both from the same score and information (the profile
    log-likelihood and its slope corrected to first order for the pending step of the others).

    Parameters
    ----------
    x : array, (n, k)
        Design, the profiled coefficient last.
    pairs : PairProducts
        Column-pair products of ``x``.
    data : _Outcomes
    beta : array, (k, m)
        Maximum-likelihood estimates.
    se : array, (m,)
        Wald standard error of the profiled coefficient (sets the starting points, ± z·se).
    z : float
        Normal quantile of the level: the ends are where ``2·(ℓ̂ − ℓ_p) = z²``.

    Returns
    -------
    low, high : array, (m,)
        NaN where the search did not converge.
    """
    xp = array_module(x)
    m = beta.shape[1]
    side = xp.concatenate([-xp.ones(m), xp.ones(m)])
    source = xp.concatenate([xp.arange(m), xp.arange(m)])
    peak = _evaluate(x, pairs, data, beta, loglik=True)[2][source]
    centre = beta[-1][source]
    coef = beta[:, source]
    coef[-1] += side * z * se[source]
    ends = xp.full(2 * m, np.nan)
    index, work = xp.arange(2 * m), data.take(source)
    for _ in range(max_iter):
        if index.size == 0:
            break
        score, information, loglik = _evaluate(x, pairs, work, coef, loglik=True)
        profiled, others = _profile_step(
            score, information, loglik - peak[index], side[index], coef[-1] - centre[index], z
        )
        coef[-1] += profiled
        coef[:-1] += others
        finite = xp.isfinite(profiled) & xp.isfinite(others).all(axis=0)
        done = finite & (xp.abs(profiled) < tol) & (xp.abs(others).max(axis=0) < tol)
        ends[index[done]] = coef[-1, done]
        going = finite & ~done
        if not bool(going.all()):
            index, coef, work = index[going], coef[:, going], work.take(going)
    return ends[:m], ends[m:]


def _profile_step(
    score: Any, information: Any, drop: Any, side: Any, offset: Any, z: float
) -> tuple[Any, Any]:
    """One joint Newton step of a profile-interval search (see :func:`_profile_ends`).

    Parameters
    ----------
    score, information : array, (k, a) and (a, k, k)
        At the current coefficients, the profiled one last.
    drop : array, (a,)
        ``ℓ − ℓ̂`` at the current coefficients.
    side : array, (a,)
        −1 for a lower end, +1 for an upper end.
    offset : array, (a,)
        Current profiled coefficient minus its estimate.

    Returns
    -------
    profiled : array, (a,)
        Step of the profiled coefficient: Newton's, halved towards the estimate where it would cross it,
        at most :data:`MAX_PROFILE_GROWTH` times the distance from it; NaN where not finite.
    others : array, (k − 1, a)
        Step of the other coefficients.
    """
    xp = array_module(score)
    cross = information[:, :-1, -1]
    solved = _solve(information[:, :-1, :-1], xp.stack([score[:-1].T, cross], axis=2))
    pending, response = solved[..., 0], solved[..., 1]  # I_oo⁻¹ s_o, I_oo⁻¹ I_oe
    profile_drop = drop + 0.5 * (score[:-1].T * pending).sum(axis=1)
    slope = score[-1] - (cross * pending).sum(axis=1)  # dℓ_p / dβ₁
    root = side * xp.sqrt(xp.maximum(-2.0 * profile_drop, 0.0))
    distance = side * offset
    with np.errstate(divide="ignore", invalid="ignore"):  # a flat profile: a non-finite step ends the search
        moved = distance + side * (side * z - root) * root / -slope
    bounded = xp.clip(xp.where(moved > 0, moved, distance / 2), 0.0, MAX_PROFILE_GROWTH * distance)
    profiled = side * (xp.where(xp.isfinite(moved), bounded, np.nan) - distance)
    return profiled, (pending - response * profiled[:, None]).T


def _tidy(fit: _Estimates, frame: ModelFrame, ci_level: float, profile_ci: bool) -> pd.DataFrame:
    """Exposure statistics in the exposure's units from a frame's estimates."""
    scale = frame.scale[frame.exposure]
    z_level = stats.norm.ppf(0.5 + ci_level / 2)
    with np.errstate(invalid="ignore", over="ignore"):
        beta, se = fit.beta / scale, np.sqrt(fit.var) / scale
        z = beta / se
        ci_low, ci_high = beta - z_level * se, beta + z_level * se
        ends = (fit.low / scale, fit.high / scale) if profile_ci else (ci_low, ci_high)
        return pd.DataFrame(
            {
                "n": fit.n,
                "n_events": fit.events.astype(np.int64),
                "beta": beta,
                "se": se,
                "z": z,
                "p": 2.0 * stats.norm.sf(np.abs(z)),
                "ci_low": ci_low,
                "ci_high": ci_high,
                "or_": np.exp(beta),
                "or_ci_low": np.exp(ends[0]),
                "or_ci_high": np.exp(ends[1]),
                "converged": fit.converged,
            }
        )
