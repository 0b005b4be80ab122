"""A readable text summary of the tidy result tables, in the spirit of statsmodels' ``summary()``.

The tables of :func:`~cohortscale.stats.ols.ols_many`, :func:`~cohortscale.stats.logistic.logit_many`,
:func:`~cohortscale.stats.survival.cox_ph` and :func:`~cohortscale.stats.phewas.phewas` share column names
for their estimate, interval and p-value; :func:`summary` finds which of them a table has and prints one
line per model, grouped by outcome: the estimate with its interval, p, and n.
"""

from __future__ import annotations

import math

import pandas as pd

#: Estimate columns, in order of preference, with their interval columns and the label printed.
ESTIMATES: tuple[tuple[str, str, str, str], ...] = (
    ("or_", "or_ci_low", "or_ci_high", "OR"),
    ("hr", "hr_ci_low", "hr_ci_high", "HR"),
    ("beta", "ci_low", "ci_high", "β"),
    ("per_decade", "ci_low", "ci_high", "per decade"),
)
#: Columns naming a model's row, when present.
KEYS = ("exposure", "code", "stratum")
#: Significant digits of estimates and intervals.
DIGITS = 3


def _number(value: float) -> str:
    return (
        "nan" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{DIGITS}g}"
    )


def _p(value: float) -> str:
    if value is None or math.isnan(value):
        return "nan"
    return "<1e-300" if value == 0 else f"{value:.2g}"


def summary(table: pd.DataFrame, title: str = "") -> str:
    """One line per row of a result table: its keys, the estimate [interval], p and n, under its outcome.

    Parameters
    ----------
    table : pandas.DataFrame
        A tidy result of the regressions, Cox or PheWAS.
    title : str
        First line of the summary.

    Raises
    ------
    ValueError
        The table has none of the estimate columns (:data:`ESTIMATES`).
    """
    found = next((entry for entry in ESTIMATES if entry[0] in table.columns), None)
    if found is None:
        raise ValueError(f"no estimate column among {[e[0] for e in ESTIMATES]} in {list(table.columns)}")
    estimate, low, high, label = found
    ci = "95% CI" if {low, high} <= set(table.columns) else ""
    keys = [k for k in KEYS if k in table.columns and table[k].notna().any()]
    lines = [title] if title else []
    groups = table.groupby("outcome", sort=False) if "outcome" in table.columns else [("", table)]
    for outcome, rows in groups:
        # Models named by their outcome alone get one line each; others list their keys under it.
        if outcome != "" and keys:
            lines.append(f"{outcome}")
        for row in rows.itertuples(index=False):
            values = row._asdict()
            name = "  " + " · ".join(str(values[k]) for k in keys) if keys else str(outcome)
            interval = f" [{_number(values[low])}, {_number(values[high])}]" if ci else ""
            n = f"  n={values['n']}" if "n" in values else ""
            lines.append(f"{name:<32} {label} {_number(values[estimate])}{interval}  p={_p(values['p'])}{n}")
    return "\n".join(lines)
