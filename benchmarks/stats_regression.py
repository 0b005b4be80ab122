"""Vectorised regressions (issue 8) against a statsmodels loop on the same synthetic cohort.

Measures, in one run on the same data:

1. Linear: 1,000 IDP-like outcomes on n = 30,000 participants, ``outcome ~ 1 + age + 10 covariates``
   (6 numeric, site with 4 levels, smoking with 3, sex; 14 design columns). Missingness is mixed: 500
   outcomes in 10 groups of 50 that share a pattern (≈5 % missing, e.g. a failed series), 500 with their
   own ≈5 % random gaps, and the covariates ≈1 % missing. ``ols_many`` fits all 1,000; statsmodels
   (``sm.OLS(y, X).fit()`` on the complete rows of a prebuilt design, reading β, SE, p, the interval,
   R² and adjusted R²) is timed on 50 of them (25 of each kind) and its time extrapolated linearly
   (× 1000 / 50); for context, the formula interface most scripts use (``smf.ols("y ~ ...", data)``,
   which builds the design and drops missing rows itself) on 10 of them (× 1000 / 10).
2. Logistic, PheWAS-like: 500 binary outcomes (prevalence 0.5–20 %, no missing values, as case status
   from ICD-10 codes) on the ≈29,900 of the 30,000 with every covariate,
   ``logit P ~ 1 + idp + age + sex + BMI + Townsend + site``.
   ``logit_many`` without and with profile-likelihood intervals; statsmodels ``sm.Logit(y, X).fit()``
   (Newton, its defaults) timed on 25 outcomes and extrapolated (× 500 / 25); with profile intervals, the
   statsmodels reference adds the direct computation (offset fits on a grid + brentq, as the tests do),
   timed on 3 outcomes and extrapolated (× 500 / 3).

Agreement with statsmodels on the timed subsets is printed as the largest relative difference over β, SE,
p, intervals (and R² for OLS). Times are the best wall-clock seconds of three calls (of one
``ols_many``/``logit_many`` call, or of the whole statsmodels loop over the timed outcomes), after a
warm-up on a small problem, in one process, with the BLAS/OpenMP thread pools set to ``--threads`` before
NumPy is imported.
Run: ``cd benchmarks && ../.venv/bin/python stats_regression.py [--threads N]``.
"""

from __future__ import annotations

# isort: off
from threads import THREADS  # first: pins the BLAS/OpenMP pools before NumPy loads
# isort: on

import argparse
import time
import warnings
from collections.abc import Callable

import numpy as np
import pandas as pd
import statsmodels.api as sm
import statsmodels.formula.api as smf
from scipy import optimize, stats

from cohortscale.stats.logistic import logit_many
from cohortscale.stats.ols import ols_many
from common import write_results

PARTICIPANTS = 30_000
LINEAR_OUTCOMES = 1_000
SHARED_GROUPS = 10  # groups of outcomes sharing one missingness pattern (half the linear outcomes)
MISSING = 0.05  # share of an outcome's values missing
COVARIATE_MISSING = 0.002  # share of each numeric covariate's values missing (≈1 % of rows lack one)
LINEAR_TIMED = 50  # outcomes statsmodels fits (half shared-pattern, half own-pattern)
FORMULA_TIMED = 10  # of those, outcomes also fitted through a statsmodels formula
BINARY_OUTCOMES = 500
LOGIT_TIMED = 25
PROFILE_TIMED = 3
REPEATS = 3  # timings are the best of this many calls
SITES = ("Cheadle", "Newcastle", "Reading", "Bristol")
NUMERIC = ("bmi", "townsend", "height", "vat", "asat", "grip")
LINEAR_COVARIATES = (*NUMERIC, "site", "smoking", "sex")
LOGIT_COVARIATES = ("age", "sex", "bmi", "townsend", "site")


def cohort(rng: np.random.Generator, n: int) -> pd.DataFrame:
    """Exposures and covariates of ``n`` synthetic participants (UK Biobank-like scales)."""
    data = pd.DataFrame(
        {
            "age": rng.normal(64.0, 7.8, n),
            "idp": rng.normal(50.0, 10.8, n),
            "bmi": rng.normal(26.5, 4.3, n),
            "townsend": rng.normal(-1.5, 3.0, n),
            "height": rng.normal(169.0, 9.0, n),
            "vat": rng.gamma(4.0, 1.0, n),
            "asat": rng.gamma(6.0, 1.0, n),
            "grip": rng.normal(31.0, 10.0, n),
            "site": rng.choice(SITES, n),
            "smoking": pd.Categorical(rng.choice(["never", "previous", "current"], n, p=(0.55, 0.35, 0.1))),
            "sex": rng.choice(["female", "male"], n),
        }
    )
    for column in NUMERIC:
        data.loc[rng.random(n) < COVARIATE_MISSING, column] = np.nan
    return data


def linear_outcomes(rng: np.random.Generator, data: pd.DataFrame, m: int) -> pd.DataFrame:
    """``m`` continuous outcomes: linear in age and the covariates plus noise, with mixed missingness."""
    n = len(data)
    numeric = np.column_stack([data[c].fillna(data[c].mean()) for c in ("age", *NUMERIC)])
    numeric = (numeric - numeric.mean(axis=0)) / numeric.std(axis=0)
    y = numeric @ rng.normal(0.0, 0.3, (numeric.shape[1], m)) + rng.normal(0.0, 1.0, (n, m))
    shared = rng.random((n, SHARED_GROUPS)) < MISSING
    half = m // 2
    y[:, :half][shared[:, np.arange(half) % SHARED_GROUPS]] = np.nan
    y[:, half:][rng.random((n, m - half)) < MISSING] = np.nan
    return pd.DataFrame(y, columns=[f"y{j}" for j in range(m)], index=data.index)


def binary_outcomes(rng: np.random.Generator, data: pd.DataFrame, m: int) -> pd.DataFrame:
    """``m`` binary outcomes of prevalence 0.5–20 %, some associated with the IDP and age."""
    z = ((data["idp"] - 50.0) / 10.8).to_numpy()[:, None]
    age = ((data["age"] - 64.0) / 7.8).to_numpy()[:, None]
    intercepts = np.log(np.geomspace(0.005, 0.2, m) / (1 - np.geomspace(0.005, 0.2, m)))
    eta = intercepts + z * rng.normal(0.0, 0.15, m) + age * 0.3
    cases = (rng.random((len(data), m)) < 1 / (1 + np.exp(-eta))).astype(np.float64)
    return pd.DataFrame(cases, columns=[f"c{j}" for j in range(m)], index=data.index)


def dummy_design(data: pd.DataFrame, covariates: tuple[str, ...], exposure: str) -> pd.DataFrame:
    """The design a statsmodels user builds once: intercept, numeric columns, dummies, exposure last."""
    parts = [pd.Series(1.0, index=data.index, name="const")]
    for column in covariates:
        values = data[column]
        if values.dtype.kind in "fi":
            parts.append(values)
        else:
            parts.append(pd.get_dummies(values, prefix=column, drop_first=True, dtype=float))
    parts.append(data[exposure])
    return pd.concat(parts, axis=1)


def timed(function: Callable[[], object]) -> tuple[float, object]:
    """Best wall-clock seconds of :data:`REPEATS` calls, and the result."""
    best = float("inf")
    for _ in range(REPEATS):
        start = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - start)
    return best, result


def max_relative(ours: np.ndarray, theirs: np.ndarray) -> float:
    """Largest |ours − theirs| / |theirs| over finite entries."""
    ours, theirs = np.asarray(ours, dtype=float), np.asarray(theirs, dtype=float)
    return float(np.nanmax(np.abs(ours - theirs) / np.abs(theirs)))


def statsmodels_ols(design: pd.DataFrame, outcomes: pd.DataFrame) -> np.ndarray:
    """β, SE, p, interval, R², adjusted R² of the last design column, one statsmodels fit per outcome."""
    x = design.to_numpy()
    complete = ~np.isnan(x).any(axis=1)
    rows = []
    for name in outcomes.columns:
        y = outcomes[name].to_numpy()
        keep = complete & ~np.isnan(y)
        fit = sm.OLS(y[keep], x[keep]).fit()
        low, high = fit.conf_int()[-1]
        rows.append([fit.params[-1], fit.bse[-1], fit.pvalues[-1], low, high, fit.rsquared, fit.rsquared_adj])
    return np.array(rows)


def statsmodels_logit(design: np.ndarray, outcomes: pd.DataFrame) -> np.ndarray:
    """β, SE, p, Wald interval of the last design column, one statsmodels Logit fit per outcome."""
    rows = []
    for name in outcomes.columns:
        fit = sm.Logit(outcomes[name].to_numpy(), design).fit(disp=0)
        low, high = fit.conf_int()[-1]
        rows.append([fit.params[-1], fit.bse[-1], fit.pvalues[-1], low, high])
    return np.array(rows)


def statsmodels_profile(design: np.ndarray, outcomes: pd.DataFrame, level: float = 0.95) -> np.ndarray:
    """Profile-likelihood interval of the last column by offset fits on a grid + brentq, per outcome."""
    others, exposure = design[:, :-1], design[:, -1]
    rows = []
    for name in outcomes.columns:
        y = outcomes[name].to_numpy()
        fit = sm.Logit(y, design).fit(disp=0)
        beta, se = fit.params[-1], fit.bse[-1]

        def excess(value: float, y=y, fit=fit) -> float:
            refit = sm.Logit(y, others, offset=value * exposure).fit(start_params=fit.params[:-1], disp=0)
            return 2.0 * (fit.llf - refit.llf) - stats.chi2.ppf(level, 1)

        ends = []
        for side in (-1.0, 1.0):
            outer = next(v for v in beta + side * se * np.arange(1.0, 6.0, 0.5) if excess(v) > 0)
            ends.append(optimize.brentq(excess, beta, outer, xtol=1e-12))
        rows.append(ends)
    return np.array(rows)


def statsmodels_formula(table: pd.DataFrame, outcomes: list[str]) -> np.ndarray:
    """β, SE, p, interval, R², adjusted R² of age by statsmodels formulas (rows with NaN dropped)."""
    rows = []
    for name in outcomes:
        fit = smf.ols(f"{name} ~ " + " + ".join([*LINEAR_COVARIATES, "age"]), table).fit()
        low, high = fit.conf_int().loc["age"]
        rows.append(
            [fit.params["age"], fit.bse["age"], fit.pvalues["age"], low, high, fit.rsquared, fit.rsquared_adj]
        )
    return np.array(rows)


def linear_cases(data: pd.DataFrame, outcomes: pd.DataFrame) -> list[dict]:
    table = pd.concat([data, outcomes], axis=1)
    half = LINEAR_OUTCOMES // 2
    subset = [*outcomes.columns[: LINEAR_TIMED // 2], *outcomes.columns[half : half + LINEAR_TIMED // 2]]
    formula_subset = subset[:: len(subset) // FORMULA_TIMED][:FORMULA_TIMED]
    ours_s, ours = timed(lambda: ols_many(table, list(outcomes.columns), "age", LINEAR_COVARIATES))
    design = dummy_design(data, LINEAR_COVARIATES, "age")
    arrays_s, arrays = timed(lambda: statsmodels_ols(design, outcomes[subset]))
    formula_s, formula = timed(lambda: statsmodels_formula(table, formula_subset))
    columns = ["beta", "se", "p", "ci_low", "ci_high", "r2", "adj_r2"]
    picked = ours.set_index("outcome")[columns]
    rows = []
    for case, names, theirs_s, theirs in (
        ("sm.OLS on arrays", subset, arrays_s, arrays),
        ("smf.ols formula", formula_subset, formula_s, formula),
    ):
        extrapolated = theirs_s * LINEAR_OUTCOMES / len(names)
        rows.append(
            {
                "case": f"OLS, {LINEAR_OUTCOMES} outcomes, mixed missingness; vs {case}",
                "n": len(data),
                "design_columns": design.shape[1],
                "cohortscale_s": round(ours_s, 3),
                "statsmodels_timed_outcomes": len(names),
                "statsmodels_timed_s": round(theirs_s, 3),
                "statsmodels_all_s (extrapolated)": round(extrapolated, 1),
                "ratio": round(extrapolated / ours_s, 1),
                "max_rel_diff": f"{max_relative(picked.loc[names].to_numpy(), theirs):.1e}",
            }
        )
    return rows


def logistic_cases(data: pd.DataFrame, outcomes: pd.DataFrame) -> list[dict]:
    data = data.dropna(subset=[*LOGIT_COVARIATES, "idp"])  # the analysed participants, as in a PheWAS
    outcomes = outcomes.loc[data.index]
    table = pd.concat([data, outcomes], axis=1)
    names = list(outcomes.columns)
    timed_names = names[:: len(names) // LOGIT_TIMED][:LOGIT_TIMED]
    profiled_names = timed_names[:: len(timed_names) // PROFILE_TIMED][:PROFILE_TIMED]
    design = dummy_design(data, LOGIT_COVARIATES, "idp").to_numpy()
    wald_s, wald = timed(lambda: logit_many(table, names, "idp", LOGIT_COVARIATES, profile_ci=False))
    profile_s, profile = timed(lambda: logit_many(table, names, "idp", LOGIT_COVARIATES))
    theirs_s, theirs = timed(lambda: statsmodels_logit(design, outcomes[timed_names]))
    ends_s, ends = timed(lambda: statsmodels_profile(design, outcomes[profiled_names]))
    columns = ["beta", "se", "p", "ci_low", "ci_high"]
    diff = max_relative(wald.set_index("outcome").loc[timed_names, columns].to_numpy(), theirs)
    ours_ends = np.log(profile.set_index("outcome").loc[profiled_names, ["or_ci_low", "or_ci_high"]])
    profile_diff = max_relative(ours_ends.to_numpy(), ends)
    fit_s = theirs_s / len(timed_names)
    ends_per_outcome = ends_s / len(profiled_names)  # includes its own fit of the outcome
    common = {"n": len(data), "design_columns": design.shape[1]}
    return [
        {
            "case": f"Logit, {BINARY_OUTCOMES} outcomes, Wald",
            **common,
            "cohortscale_s": round(wald_s, 3),
            "statsmodels_timed_outcomes": len(timed_names),
            "statsmodels_timed_s": round(theirs_s, 3),
            "statsmodels_all_s (extrapolated)": round(fit_s * BINARY_OUTCOMES, 1),
            "ratio": round(fit_s * BINARY_OUTCOMES / wald_s, 1),
            "max_rel_diff": f"{diff:.1e}",
        },
        {
            "case": f"Logit, {BINARY_OUTCOMES} outcomes, profile CI",
            **common,
            "cohortscale_s": round(profile_s, 3),
            "statsmodels_timed_outcomes": len(profiled_names),
            "statsmodels_timed_s": round(ends_s, 3),
            "statsmodels_all_s (extrapolated)": round(ends_per_outcome * BINARY_OUTCOMES, 1),
            "ratio": round(ends_per_outcome * BINARY_OUTCOMES / profile_s, 1),
            "max_rel_diff": f"{profile_diff:.1e}",
        },
    ]


def warm_up(rng: np.random.Generator) -> None:
    """One small call of each path (imports, first-call costs) before timing."""
    data = cohort(rng, 500)
    small = pd.concat([data, linear_outcomes(rng, data, 4), binary_outcomes(rng, data, 4)], axis=1)
    ols_many(small, ["y0", "y1"], "age", LINEAR_COVARIATES)
    logit_many(small, ["c3"], "idp", LOGIT_COVARIATES)
    sm.OLS(small["age"].to_numpy(), np.ones((len(small), 1))).fit()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=THREADS, help="BLAS/OpenMP threads")
    parser.add_argument("--seed", type=int, default=8)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    warnings.simplefilter("ignore")  # statsmodels convergence chatter on the rarest outcomes
    warm_up(rng)
    data = cohort(rng, PARTICIPANTS)
    rows = linear_cases(data, linear_outcomes(rng, data, LINEAR_OUTCOMES))
    rows += logistic_cases(data, binary_outcomes(rng, data, BINARY_OUTCOMES))
    for row in rows:
        row["threads"] = args.threads
    write_results(
        "stats_regression",
        rows,
        notes=(
            "Times: best of three calls. statsmodels times are measured on the timed outcomes and "
            "extrapolated linearly to all outcomes (statsmodels_all_s); ratio = extrapolated statsmodels / "
            "cohortscale. The statsmodels loops get a prebuilt NumPy design (no formula parsing), except the "
            "smf.ols row (formula and data frame, as most analysis scripts call it). Profile CI reference: "
            "statsmodels Logit fits with the exposure as an offset over a grid of ±1–5.5 SE, then brentq "
            "(xtol 1e-12), per outcome. max_rel_diff: largest relative difference from statsmodels on the "
            "timed outcomes (β, SE, p, interval ends; R² and adjusted R² for OLS; the log profile ends for "
            "the profile row)."
        ),
    )


if __name__ == "__main__":
    main()
