"""Linear mixed models for repeated measures (STUDIES.md §4) and model-based means.

Data are long: one row per participant and visit (UK Biobank imaging instances 2 and 3, or a trial's
time points), with a participant column (``eid``). The model is statsmodels ``MixedLM`` with fixed
effects from a patsy formula and a random intercept per participant:

    y_ij = x_ij' β + u_i + e_ij,   u_i ~ N(0, σ²_u),   e_ij ~ N(0, σ²_e),

so two visits of one participant correlate by ``σ²_u / (σ²_u + σ²_e)`` whatever their distance in time:
the compound-symmetry covariance of the repeated-measures ANOVA. Fitted by REML by default; inference on
fixed effects is Wald with the normal distribution (as statsmodels; SPSS and SAS use t with approximate
degrees of freedom, which matters only in small trials).

Outcomes keep their unit (e.g. fat fraction in %, uptake in SUV); ``beta`` is in outcome units per unit
of the term.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import patsy
from scipy.stats import norm
from statsmodels.regression.mixed_linear_model import MixedLM, MixedLMResults

from cohortscale.stats.design import CI_LEVEL

#: Name of a Python identifier in a formula term (candidate data column).
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class MixedModelResult:
    """A fitted random-intercept model and its tidy tables.

    Attributes
    ----------
    fixed : DataFrame
        One row per fixed-effect term: ``term``, ``beta``, ``se``, ``z``, two-sided ``p``, ``ci_low``,
        ``ci_high``.
    variance : DataFrame
        ``component`` (``"<group> intercept"``, ``"residual"``), ``variance`` (outcome unit²) and ``sd``.
    within_correlation : float
        σ²_u / (σ²_u + σ²_e): the compound-symmetry correlation of two visits of one participant.
    n_observations, n_groups : int
        Rows and participants the model was fitted on (rows with a missing value are dropped).
    fit : MixedLMResults
        The statsmodels result, for anything else.
    design_info : patsy.DesignInfo
        Fixed-effect design, to build contrasts for new data.
    frame : DataFrame
        The rows the model was fitted on.
    ci_level : float
    """

    fixed: pd.DataFrame
    variance: pd.DataFrame
    within_correlation: float
    n_observations: int
    n_groups: int
    fit: MixedLMResults
    design_info: patsy.DesignInfo
    frame: pd.DataFrame
    ci_level: float


def _long_frame(data: pd.DataFrame, group: str) -> pd.DataFrame:
    """``data`` with ``group`` as a column (it may be the index) and a fresh row index; rows without a
    group are dropped."""
    frame = data.reset_index() if group not in data.columns and data.index.name == group else data
    if group not in frame.columns:
        raise ValueError(f"no column or index named {group!r}")
    return frame[frame[group].notna()].reset_index(drop=True)


def _wald_table(estimate: pd.Series, covariance: np.ndarray, ci_level: float) -> pd.DataFrame:
    """Estimates with SE, z, two-sided p and a normal ``ci_level`` interval."""
    se = np.sqrt(np.diag(covariance))
    half = norm.ppf(0.5 + ci_level / 2) * se
    z = estimate.to_numpy() / se
    return pd.DataFrame(
        {
            "beta": estimate.to_numpy(),
            "se": se,
            "z": z,
            "p": 2 * norm.sf(np.abs(z)),
            "ci_low": estimate.to_numpy() - half,
            "ci_high": estimate.to_numpy() + half,
        },
        index=estimate.index,
    )


def _fixed_covariance(fit: MixedLMResults) -> np.ndarray:
    """Covariance of the fixed-effect estimates (the leading block of statsmodels' ``cov_params``)."""
    k = fit.k_fe
    return np.asarray(fit.cov_params())[:k, :k]


def mixed_model(
    data: pd.DataFrame,
    outcome: str,
    fixed: str | Sequence[str],
    group: str = "eid",
    reml: bool = True,
    ci_level: float = CI_LEVEL,
) -> MixedModelResult:
    """Fit a linear mixed model with a random intercept per participant.

    Parameters
    ----------
    data : DataFrame
        Long table, one row per participant and visit.
    outcome : str
        Column of the repeated measure.
    fixed : str or sequence of str
        Fixed effects: the right-hand side of a patsy formula (e.g. ``"C(instance) * group + age"`` for a
        time × group interaction), or column names entered as main effects.
    group : str
        Participant column (or the index's name): one random intercept per distinct value.
    reml : bool
        REML (default) or maximum likelihood (to compare fixed effects by likelihood ratio).
    ci_level : float
        Coverage of the fixed effects' intervals.

    Returns
    -------
    MixedModelResult
    """
    frame = _long_frame(data, group)
    rhs = fixed if isinstance(fixed, str) else " + ".join(fixed)
    y, x = patsy.dmatrices(f"{outcome} ~ {rhs}", frame, return_type="dataframe")
    frame = frame.loc[x.index]
    fit = MixedLM(y.iloc[:, 0], x, groups=frame[group]).fit(reml=reml)
    fixed_table = _wald_table(fit.fe_params, _fixed_covariance(fit), ci_level)
    between, residual = float(np.asarray(fit.cov_re)[0, 0]), float(fit.scale)
    variance = pd.DataFrame(
        {"component": [f"{group} intercept", "residual"], "variance": [between, residual]}
    ).assign(sd=lambda t: np.sqrt(t["variance"]))
    return MixedModelResult(
        fixed=fixed_table.rename_axis("term").reset_index(),
        variance=variance,
        within_correlation=between / (between + residual),
        n_observations=len(frame),
        n_groups=int(frame[group].nunique()),
        fit=fit,
        design_info=x.design_info,
        frame=frame,
        ci_level=ci_level,
    )


def _model_variables(result: MixedModelResult) -> tuple[set[str], set[str]]:
    """Data columns in the fixed effects, split into (categorical, numeric); a column used as a factor
    anywhere (``C(instance)``, text, booleans) counts as categorical."""
    columns = set(result.frame.columns)
    categorical: set[str] = set()
    numeric: set[str] = set()
    for factor, info in result.design_info.factor_infos.items():
        names = set(_IDENTIFIER.findall(factor.code)) & columns
        (categorical if info.type == "categorical" else numeric).update(names)
    return categorical, numeric - categorical


def _reference_grid(result: MixedModelResult, at: Mapping[str, Sequence]) -> pd.DataFrame:
    """Every combination of the ``at`` levels and of the levels of the model's other categorical
    variables, with its other numeric variables at their mean over the fitted rows."""
    categorical, numeric = _model_variables(result)
    unknown = set(at) - categorical - numeric
    if not at or unknown:
        raise ValueError(f"at must name variables of the fixed effects; unknown: {sorted(unknown)}")
    levels = dict(at) | {v: sorted(result.frame[v].unique()) for v in sorted(categorical - set(at))}
    grid = pd.MultiIndex.from_product(list(levels.values()), names=list(levels)).to_frame(index=False)
    return grid.assign(**{v: result.frame[v].mean() for v in sorted(numeric - set(at))})


def model_means(
    result: MixedModelResult, at: Mapping[str, Sequence], ci_level: float | None = None
) -> pd.DataFrame:
    """Model-based (estimated marginal) means with confidence intervals.

    For every combination of the ``at`` levels, the mean is ``L β`` with ``L`` the design row of that
    combination, averaged with equal weights over the levels of the model's categorical variables not in
    ``at`` and with its numeric variables not in ``at`` at their mean over the fitted rows (the emmeans
    convention); its SE is ``sqrt(L Σ L')`` with Σ the covariance of the fixed effects.

    Parameters
    ----------
    result : MixedModelResult
    at : mapping of str to sequence
        Variable → the levels (or values, for a numeric variable) to report, e.g.
        ``{"instance": [2, 3], "group": ["control", "exercise"]}``.
    ci_level : float, optional
        Coverage of the intervals; the model's by default.

    Returns
    -------
    DataFrame
        One row per combination (in the order of ``at``): the ``at`` columns, ``mean`` (outcome unit),
        ``se``, ``ci_low``, ``ci_high``.
    """
    grid = _reference_grid(result, at)
    rows = patsy.build_design_matrices([result.design_info], grid, return_type="dataframe")[0]
    contrasts = rows.groupby([grid[v] for v in at], sort=False).mean()
    table = _wald_table(
        pd.Series(contrasts.to_numpy() @ result.fit.fe_params.to_numpy(), index=contrasts.index),
        contrasts.to_numpy() @ _fixed_covariance(result.fit) @ contrasts.to_numpy().T,
        result.ci_level if ci_level is None else ci_level,
    )
    return table.rename(columns={"beta": "mean"})[["mean", "se", "ci_low", "ci_high"]].reset_index()
