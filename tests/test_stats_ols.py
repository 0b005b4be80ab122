"""Vectorised least squares (cohortscale.stats.ols) against statsmodels, model by model: every estimate, SE,
t, p, interval, R² and adjusted R² within 1e-8 relative, with outcomes of different missingness patterns,
strata, categorical covariates and degenerate models; the age decline per decade against a case worked
out by hand."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
import statsmodels.formula.api as smf
from scipy import stats

from cohortscale.backend import gpu_available
from cohortscale.stats.ols import OLS_COLUMNS, decline_per_decade, ols_many

RTOL = 1e-8  # relative agreement with statsmodels
N = 1500
COVARIATES = ("bmi", "site", "smoking")
EXPOSURES = ("age", "vat")
SITES = ("Cheadle", "Newcastle", "Reading", "Bristol")
#: Outcomes refitted with statsmodels: two of each missingness group and the special ones (all 24 are fitted
#: together by ols_many, so the groups are shared as in a real run).
CHECKED = ("idp0", "idp5", "idp8", "idp12", "idp16", "idp19", "complete", "no_reading", "idp23")


def cohort(seed: int = 11, n: int = N) -> tuple[pd.DataFrame, list[str]]:
    """Synthetic participants with 24 IDP-like outcomes in five missingness groups.

    Outcomes 0–7 share one pattern (a missing slice), 8–15 another, 16–19 have their own random gaps,
    ``complete`` has none, ``no_reading`` is missing at one site (its dummy is absent from the model), and
    ``few`` has three values (fewer rows than coefficients).
    """
    rng = np.random.default_rng(seed)
    data = pd.DataFrame(
        {
            "age": rng.normal(64.0, 7.8, n),
            "vat": rng.gamma(4.0, 1.0, n),
            "bmi": rng.normal(26.5, 4.3, n),
            "site": rng.choice(SITES, n, p=(0.3, 0.3, 0.1, 0.3)),
            "smoking": pd.Categorical(
                rng.choice(["never", "previous", "current"], n, p=(0.55, 0.35, 0.1)),
                categories=["never", "previous", "current"],
            ),
            "sex": rng.choice(["female", "male"], n),
        }
    )
    data.loc[rng.random(n) < 0.03, "bmi"] = np.nan
    data["male"] = (data["sex"] == "male").astype(float)
    site_effect = data["site"].map(dict(zip(SITES, (0.0, 1.5, -2.0, 0.7), strict=True))).to_numpy()
    slice_missing, station_missing = rng.random(n) < 0.08, rng.random(n) < 0.15
    names = []
    for j in range(23):
        y = (
            40.0
            + rng.normal(0.25, 0.05) * data["age"]
            - rng.normal(0.6, 0.2) * data["vat"]
            + 0.3 * data["bmi"].fillna(26.5)
            + site_effect
            + 3.0 * data["male"]
            + rng.normal(0.0, 6.0, n)
        )
        gaps = slice_missing if j < 8 else station_missing if j < 16 else rng.random(n) < 0.05
        name = "complete" if j == 20 else "no_reading" if j == 21 else "few" if j == 22 else f"idp{j}"
        if j < 20:
            y[gaps] = np.nan
        if name == "no_reading":
            y[data["site"] == "Reading"] = np.nan
        if name == "few":
            y[3:] = np.nan
        data[name] = y
        names.append(name)
    data["idp23"] = data["idp0"] * 2.0 + 1.0  # same pattern as idp0 (a derived IDP)
    names.append("idp23")
    return data, names


@pytest.fixture(scope="module")
def data() -> tuple[pd.DataFrame, list[str]]:
    return cohort()


def statsmodels_fit(rows: pd.DataFrame, outcome: str, exposure: str, covariates: tuple[str, ...]):
    """The same model by a statsmodels formula on the complete cases."""
    complete = rows.dropna(subset=[outcome, exposure, *covariates])
    formula = f"{outcome} ~ " + " + ".join([*covariates, exposure])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rank-deficient designs are part of the test
        return smf.ols(formula, complete).fit(), complete


def assert_matches(row: pd.Series, fit, complete: pd.DataFrame, outcome: str, exposure: str) -> None:
    """One tidy row equals the statsmodels fit of its model."""
    low, high = fit.conf_int().loc[exposure]
    ours = row[["beta", "se", "t", "p", "ci_low", "ci_high", "r2", "adj_r2"]].to_numpy(dtype=float)
    theirs = [
        fit.params[exposure],
        fit.bse[exposure],
        fit.tvalues[exposure],
        fit.pvalues[exposure],
        low,
        high,
        fit.rsquared,
        fit.rsquared_adj,
    ]
    np.testing.assert_allclose(ours, theirs, rtol=RTOL, err_msg=f"{outcome} ~ {exposure}")
    assert row["n"] == fit.nobs and row["df_resid"] == fit.df_resid
    to_std = complete[exposure].std() / complete[outcome].std()
    np.testing.assert_allclose(
        row[["std_beta", "std_ci_low", "std_ci_high"]].to_numpy(dtype=float),
        np.array([fit.params[exposure], low, high]) * to_std,
        rtol=RTOL,
    )


@pytest.mark.parametrize("strata", [None, "sex"])
def test_every_model_equals_statsmodels(data, strata) -> None:
    frame, outcomes = data
    table = ols_many(frame, outcomes, EXPOSURES, COVARIATES, strata=strata)
    assert list(table.columns) == list(OLS_COLUMNS)
    levels = [None] if strata is None else ["female", "male"]
    assert len(table) == len(levels) * len(EXPOSURES) * len(outcomes)
    checked = 0
    for _, row in table.iterrows():
        level, exposure, outcome = row["stratum"], row["exposure"], row["outcome"]
        rows = frame if level is None else frame[frame[strata] == level]
        if outcome == "few":
            assert (
                np.isnan(row[["beta", "se", "p", "r2"]].to_numpy(dtype=float)).all()
                and row["n"] == (rows["few"].notna() & rows["bmi"].notna()).sum()
            )
            continue
        if outcome in CHECKED:
            fit, complete = statsmodels_fit(rows, outcome, exposure, COVARIATES)
            assert_matches(row, fit, complete, outcome, exposure)
            checked += 1
    assert checked == len(levels) * len(EXPOSURES) * len(CHECKED)


def test_covariate_constant_within_stratum_matches_pseudo_inverse(data) -> None:
    """Adjusting for sex within a sex stratum: statsmodels' pinv fit and the dropped column agree."""
    frame, outcomes = data
    table = ols_many(frame, outcomes[:6], "age", ("male", "bmi"), strata="sex")
    for _, row in table.iterrows():
        fit, complete = statsmodels_fit(
            frame[frame["sex"] == row["stratum"]], row["outcome"], "age", ("male", "bmi")
        )
        assert np.linalg.matrix_rank(fit.model.exog) == fit.model.exog.shape[1] - 1
        assert_matches(row, fit, complete, row["outcome"], "age")


def test_exposure_not_estimable_gives_nan(data) -> None:
    frame, outcomes = data
    constant = ols_many(frame, outcomes[:3], "male", strata="sex")
    assert constant[["beta", "se", "t", "p", "r2"]].isna().all().all()
    assert (constant["n"] > 0).all()
    frame = frame.assign(age_months=frame["age"] * 12.0)
    collinear = ols_many(frame, outcomes[:3], "age_months", ("age",))
    assert collinear["beta"].isna().all()


def test_all_missing_outcome(data) -> None:
    frame, outcomes = data
    table = ols_many(frame.assign(empty=np.nan), ["empty", outcomes[0]], "age")
    assert table.loc[0, "n"] == 0 and np.isnan(table.loc[0, "beta"])
    assert np.isfinite(table.loc[1, "beta"])


def test_single_names_and_numpy_module(data) -> None:
    frame, outcomes = data
    one = ols_many(frame, outcomes[1], "age", COVARIATES, xp=np)
    many = ols_many(frame, outcomes, "age", COVARIATES)
    pd.testing.assert_frame_equal(one, many.iloc[[1]].reset_index(drop=True))


def test_decline_per_decade_analytic() -> None:
    """Noise orthogonal to (1, age): the slope is exact and its SE has a closed form."""
    rng = np.random.default_rng(2)
    n, slopes = 400, {"female": -18.0, "male": -31.0}
    parts = []
    for sex, slope in slopes.items():
        age = rng.uniform(45.0, 82.0, n)
        design = np.column_stack([np.ones(n), age])
        noise = rng.normal(0.0, 900.0, n)
        noise -= design @ np.linalg.lstsq(design, noise, rcond=None)[0]
        parts.append(pd.DataFrame({"age": age, "sex": sex, "tmv": 9300.0 + slope * age + noise}))
    data = pd.concat(parts, ignore_index=True)
    table = decline_per_decade(data, "tmv", "age", strata="sex")
    z = stats.norm.ppf(0.975)
    for _, row in table.iterrows():
        part = data[data["sex"] == row["stratum"]]
        noise = part["tmv"] - 9300.0 - slopes[row["stratum"]] * part["age"]
        se = np.sqrt((noise**2).sum() / (n - 2) / ((part["age"] - part["age"].mean()) ** 2).sum())
        slope = slopes[row["stratum"]]
        np.testing.assert_allclose(row["per_decade"], 10 * slope, rtol=1e-10)
        np.testing.assert_allclose(
            [row["ci_low"], row["ci_high"]], 10 * (slope + np.array([-z, z]) * se), rtol=1e-10
        )
        assert row["n"] == n


@pytest.mark.gpu
@pytest.mark.skipif(not gpu_available(), reason="needs CuPy and a CUDA GPU")
def test_cupy_equals_numpy(data) -> None:
    cupy = pytest.importorskip("cupy")
    frame, outcomes = data
    cpu = ols_many(frame, outcomes, EXPOSURES, COVARIATES, strata="sex")
    gpu = ols_many(frame, outcomes, EXPOSURES, COVARIATES, strata="sex", xp=cupy)
    pd.testing.assert_frame_equal(cpu, gpu, rtol=1e-10)


def test_direct_statsmodels_arrays(data) -> None:
    """The array interface of statsmodels (no formula) on one model, as the benchmark uses it."""
    frame, outcomes = data
    rows = frame.dropna(subset=[outcomes[0], "age", "bmi"])
    fit = sm.OLS(rows[outcomes[0]], sm.add_constant(rows[["bmi", "age"]])).fit()
    row = ols_many(frame, outcomes[0], "age", ("bmi",)).iloc[0]
    np.testing.assert_allclose(
        [row["beta"], row["se"], row["p"]], [fit.params["age"], fit.bse["age"], fit.pvalues["age"]], rtol=RTOL
    )
