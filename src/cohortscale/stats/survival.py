"""Time-to-event analysis: Cox proportional hazards per exposure and Kaplan–Meier curves.

Durations are follow-up times in whatever unit the caller derived them in (years or days); every time
in the output is in that unit, and hazard ratios do not depend on it.
Events are 1 (event at the duration, e.g. death or incident fracture) or 0 (censored at the duration).

- :func:`cox_ph` fits one statsmodels ``PHReg`` per exposure, each adjusted for the same covariates, and
  reports the exposure's hazard ratio per SD (per unit with ``per_sd=False``).
- :func:`kaplan_meier` is the product-limit estimator with Greenwood's standard error and the log–log
  (complementary log–log) confidence interval, computed with NumPy and equal to statsmodels'
  ``SurvfuncRight`` at its event times.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import norm
from statsmodels.duration.hazard_regression import PHReg

from cohortscale.stats.design import CI_LEVEL, complete_rows, term_columns

#: Tie handling ``PHReg`` offers.
TIES = ("breslow", "efron")
#: Group label of a Kaplan–Meier curve over everyone (``groups=None``).
ALL = "all"
#: Columns of the table :func:`cox_ph` returns.
COX_COLUMNS = ("exposure", "n", "events", "sd", "beta", "se", "z", "p", "hr", "hr_ci_low", "hr_ci_high")


def _z_critical(ci_level: float) -> float:
    """Two-sided standard-normal quantile for a ``ci_level`` interval (1.96 at 0.95)."""
    return float(norm.ppf(0.5 + ci_level / 2))


def _event_indicator(values: pd.Series | np.ndarray) -> np.ndarray:
    """Events as float 0/1; raises on anything else (missing values included)."""
    events = np.asarray(values, dtype=np.float64)
    if not np.isin(events, (0.0, 1.0)).all():
        raise ValueError("events must be 0 (censored) or 1 (event)")
    return events


@dataclass(frozen=True)
class _SurvivalDesign:
    """What every exposure's model shares, built once over the participants with a duration, an event,
    every covariate and a stratum (``complete``, a mask of the data's rows)."""

    time: np.ndarray
    status: np.ndarray
    adjust: np.ndarray
    stratum: np.ndarray | None
    complete: np.ndarray

    @classmethod
    def from_frame(
        cls, data: pd.DataFrame, duration: str, event: str, covariates: Sequence[str], strata: str | None
    ) -> _SurvivalDesign:
        """Rows complete for duration, event, covariates and stratum; covariates coded over those rows as
        the regressions code them (:func:`cohortscale.stats.design.term_columns`)."""
        complete = complete_rows(
            data, [duration, event, *covariates, *([strata] if strata is not None else [])]
        )
        adjust = [term_columns(data[name], complete)[0] for name in covariates]
        return cls(
            time=data[duration].to_numpy(dtype=np.float64)[complete],
            status=_event_indicator(data[event].to_numpy()[complete]),
            adjust=np.hstack(adjust) if adjust else np.empty((int(complete.sum()), 0)),
            stratum=data[strata].to_numpy()[complete] if strata is not None else None,
            complete=complete,
        )

    def fit(self, x: np.ndarray, ties: str, per_sd: bool) -> dict[str, float]:
        """PHReg of exposure ``x`` (centred, per SD or unit) and the covariates over the complete cases."""
        x = x[self.complete]
        keep = np.isfinite(x)
        x, status = x[keep], self.status[keep]
        if status.sum() == 0:
            raise ValueError("no events among the complete cases")
        sd = float(np.std(x, ddof=1))
        if not sd > 0:
            raise ValueError("the exposure is constant among the complete cases")
        exog = np.column_stack([(x - x.mean()) / (sd if per_sd else 1.0), self.adjust[keep]])
        stratum = self.stratum[keep] if self.stratum is not None else None
        fit = PHReg(self.time[keep], exog, status=status, strata=stratum, ties=ties).fit()
        return {
            "n": x.size,
            "events": int(status.sum()),
            "sd": sd,
            "beta": float(fit.params[0]),
            "se": float(fit.bse[0]),
        }


def cox_ph(
    data: pd.DataFrame,
    duration: str,
    event: str,
    exposures: str | Sequence[str],
    covariates: Sequence[str] = (),
    per_sd: bool = True,
    strata: str | None = None,
    ties: str = "breslow",
    ci_level: float = CI_LEVEL,
) -> pd.DataFrame:
    """Cox proportional-hazards model of each exposure in turn, adjusted for the same covariates.

    For every exposure a statsmodels ``PHReg`` is fitted on the participants with the duration, the event,
    the exposure, every covariate and the stratum present (complete cases of that model, so exposures with
    different missingness use different rows). With ``per_sd`` the exposure is divided by its standard
    deviation (``ddof=1``) over those rows, so ``beta`` is the log hazard ratio per SD (STUDIES.md §3: HR
    per SD of PAD); the exposure is also centred, which changes nothing but the optimiser's start.

    Parameters
    ----------
    data : DataFrame
        One row per participant.
    duration : str
        Column of follow-up time (years or days; the HR does not depend on the unit).
    event : str
        Column of 1 (event at the duration) / 0 (censored).
    exposures : str or sequence of str
        Numeric columns, one model each.
    covariates : sequence of str
        Adjustment columns; numeric ones enter as they are, object/string/category/bool ones (e.g. sex as
        text) as 0/1 dummies of every level but the reference (the first sorted value, or category).
    per_sd : bool
        Report per SD of the exposure (True) or per unit of its column (False).
    strata : str, optional
        Column whose levels get their own baseline hazard.
    ties : {"breslow", "efron"}
        Tied event times, as ``PHReg``.
    ci_level : float
        Coverage of the hazard-ratio confidence interval.

    Returns
    -------
    DataFrame
        One row per exposure: ``exposure``, ``n`` (participants in the model), ``events``, ``sd`` (of the
        exposure over those participants), ``beta`` and ``se`` (log hazard ratio per SD or unit, Wald SE),
        ``z``, two-sided ``p``, ``hr = exp(beta)`` and its Wald interval ``hr_ci_low``, ``hr_ci_high``.
    """
    if ties not in TIES:
        raise ValueError(f"ties must be one of {TIES}, not {ties!r}")
    exposures = [exposures] if isinstance(exposures, str) else list(exposures)
    design = _SurvivalDesign.from_frame(data, duration, event, covariates, strata)
    rows = [
        {"exposure": name, **design.fit(data[name].to_numpy(dtype=np.float64), ties, per_sd)}
        for name in exposures
    ]
    return _hazard_ratios(pd.DataFrame(rows), ci_level)


def _hazard_ratios(table: pd.DataFrame, ci_level: float) -> pd.DataFrame:
    """Add z, p, HR and its Wald interval to a table of ``beta``, ``se``."""
    half = _z_critical(ci_level) * table["se"]
    table["z"] = table["beta"] / table["se"]
    table["p"] = 2 * norm.sf(np.abs(table["z"]))
    table["hr"] = np.exp(table["beta"])
    table["hr_ci_low"] = np.exp(table["beta"] - half)
    table["hr_ci_high"] = np.exp(table["beta"] + half)
    return table[list(COX_COLUMNS)]


def _product_limit(time: np.ndarray, status: np.ndarray) -> dict[str, np.ndarray]:
    """Kaplan–Meier estimate of one group at its distinct event times.

    At risk just before ``t`` = participants with duration ≥ ``t``; ``S(t) = Π (1 − d / n)``; Greenwood
    ``SE = S · sqrt(Σ d / (n (n − d)))``, undefined (NaN) from the time everyone at risk has the event
    (S = 0), as statsmodels.
    """
    times, index = np.unique(time, return_inverse=True)
    deaths = np.bincount(index, weights=status, minlength=times.size)
    at_risk = np.cumsum(np.bincount(index, minlength=times.size)[::-1])[::-1]
    kept = deaths > 0
    times, deaths, at_risk = times[kept], deaths[kept], at_risk[kept]
    survival = np.cumprod(1.0 - deaths / at_risk)
    with np.errstate(divide="ignore", invalid="ignore"):
        greenwood = np.cumsum(np.where(at_risk > deaths, deaths / (at_risk * (at_risk - deaths)), np.nan))
    return {
        "time": times,
        "at_risk": at_risk,
        "events": deaths.astype(np.int64),
        "survival": survival,
        "survival_se": survival * np.sqrt(greenwood),
    }


def _log_log_interval(survival: np.ndarray, se: np.ndarray, ci_level: float) -> tuple[np.ndarray, np.ndarray]:
    """Interval for S from a Wald interval of ``log(−log S)``: ``S^exp(±z · se / (S |log S|))``.

    Stays inside (0, 1); NaN where S is 0 (the SE is undefined there).
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        spread = _z_critical(ci_level) * se / (survival * np.abs(np.log(survival)))
        return survival ** np.exp(spread), survival ** np.exp(-spread)


def kaplan_meier(
    durations: np.ndarray | pd.Series,
    events: np.ndarray | pd.Series,
    groups: np.ndarray | pd.Series | None = None,
    ci_level: float = CI_LEVEL,
) -> pd.DataFrame:
    """Kaplan–Meier survival and cumulative failure, per group, at each distinct event time.

    Parameters
    ----------
    durations : array, (n,)
        Follow-up time, years or days (the output's ``time`` is in the same unit); finite.
    events : array of 0/1 or bool, (n,)
        1 = event at the duration, 0 = censored at the duration.
    groups : array, (n,), optional
        Group label per participant (e.g. "older / accelerated"); one curve per distinct label, in sorted
        order. ``None``: one curve labelled ``"all"``.
    ci_level : float
        Coverage of the pointwise confidence intervals.

    Returns
    -------
    DataFrame
        One row per group and event time (the curve is 1 before the first): ``group``, ``time``,
        ``at_risk`` (duration ≥ time), ``events`` (at that time), ``survival`` S, ``survival_se``
        (Greenwood), ``survival_ci_low`` / ``survival_ci_high`` (log–log), ``failure`` = 1 − S and its
        interval ``failure_ci_low`` = 1 − ``survival_ci_high``, ``failure_ci_high`` = 1 − ``survival_ci_low``.
    """
    time = np.asarray(durations, dtype=np.float64)
    status = _event_indicator(events)
    if time.shape != status.shape or not np.isfinite(time).all():
        raise ValueError("durations must be finite and as many as the events")
    labels = np.full(time.shape, ALL, dtype=object) if groups is None else np.asarray(groups)
    if labels.shape != time.shape:
        raise ValueError("groups must be as many as the durations")
    curves = []
    for label in np.unique(labels):
        member = labels == label
        curve = pd.DataFrame(_product_limit(time[member], status[member]))
        curve.insert(0, "group", label)
        curves.append(curve)
    return _add_intervals(pd.concat(curves, ignore_index=True), ci_level)


def _add_intervals(table: pd.DataFrame, ci_level: float) -> pd.DataFrame:
    """Add the survival and failure intervals to a table of ``survival``, ``survival_se``."""
    low, high = _log_log_interval(table["survival"].to_numpy(), table["survival_se"].to_numpy(), ci_level)
    table["survival_ci_low"], table["survival_ci_high"] = low, high
    table["failure"] = 1.0 - table["survival"]
    table["failure_ci_low"], table["failure_ci_high"] = 1.0 - high, 1.0 - low
    return table
