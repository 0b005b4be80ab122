"""Batched logistic regression (cohortscale.stats.logistic) against statsmodels ``Logit`` (Newton, tol 1e-12),
model by model: β, SE, z, p and Wald intervals within 1e-8 relative, with missingness patterns, strata and
categorical covariates; profile-likelihood odds-ratio intervals against a direct computation (statsmodels
fits with the exposure as an offset, bracketed on a grid and solved by brentq); separation and empty
outcomes flagged, not raised."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
import statsmodels.formula.api as smf
from scipy import optimize, stats

from cohortscale.backend import gpu_available
from cohortscale.stats import design
from cohortscale.stats.logistic import LOGIT_COLUMNS, logit_many

RTOL = 1e-8  # relative agreement with statsmodels
N = 2000
COVARIATES = ("age", "bmi", "site")
SITES = ("Cheadle", "Newcastle", "Reading", "Bristol")
#: Outcomes refitted with statsmodels (all are fitted together by logit_many).
CHECKED = ("out0", "out3", "out6", "out9", "out12", "out15", "rare", "common")
PROFILED = ("out0", "out9", "rare")


def cohort(seed: int = 21, n: int = N) -> tuple[pd.DataFrame, list[str]]:
    """Participants with a continuous exposure and 20 binary outcomes in four missingness groups
    (prevalence 7–40 %), plus a rare (≈3 %) and a common (≈50 %) outcome."""
    rng = np.random.default_rng(seed)
    data = pd.DataFrame(
        {
            "pa_ratio": rng.normal(0.45, 0.06, n),
            "age": rng.normal(64.0, 7.8, n),
            "bmi": rng.normal(26.5, 4.3, n),
            "site": rng.choice(SITES, n),
            "sex": rng.choice(["female", "male"], n),
        }
    )
    data.loc[rng.random(n) < 0.03, "bmi"] = np.nan
    site_effect = data["site"].map(dict(zip(SITES, (0.0, 0.3, -0.4, 0.2), strict=True))).to_numpy()
    centred = (data["pa_ratio"].to_numpy() - 0.45) / 0.06
    shared = [rng.random(n) < 0.1, rng.random(n) < 0.2]
    names = []
    for j, intercept in enumerate(np.linspace(-2.6, -0.4, 20)):
        eta = intercept + 0.35 * centred + 0.03 * (data["age"] - 64) + site_effect
        y = (rng.random(n) < 1 / (1 + np.exp(-eta))).astype(float)
        gaps = shared[0] if j < 6 else shared[1] if j < 12 else rng.random(n) < 0.06 if j < 18 else None
        if gaps is not None:
            y[gaps] = np.nan
        names.append(f"out{j}")
        data[names[-1]] = y
    data["rare"] = (rng.random(n) < 1 / (1 + np.exp(-(-3.5 + 0.5 * centred)))).astype(float)
    data["common"] = (rng.random(n) < 1 / (1 + np.exp(-0.2 * centred))).astype(float)
    return data, [*names, "rare", "common"]


@pytest.fixture(scope="module")
def data() -> tuple[pd.DataFrame, list[str]]:
    return cohort()


@pytest.fixture(scope="module")
def fitted(data) -> dict[str | None, pd.DataFrame]:
    frame, outcomes = data
    return {
        strata: logit_many(frame, outcomes, "pa_ratio", COVARIATES, strata=strata) for strata in (None, "sex")
    }


def statsmodels_fit(rows: pd.DataFrame, outcome: str, exposure: str = "pa_ratio"):
    """The same model by a statsmodels formula on the complete cases, Newton to tol 1e-12."""
    complete = rows.dropna(subset=[outcome, exposure, *COVARIATES])
    formula = f"{outcome} ~ " + " + ".join([*COVARIATES, exposure])
    return smf.logit(formula, complete).fit(method="newton", tol=1e-12, maxiter=100, disp=0)


def profile_interval(fit, exposure: str = "pa_ratio", level: float = 0.95) -> tuple[float, float]:
    """Profile-likelihood interval directly: offset fits of the other coefficients, grid bracket, brentq."""
    model = fit.model
    column = model.exog_names.index(exposure)
    others = np.delete(model.exog, column, axis=1)
    exposure_values = model.exog[:, column]
    target = stats.chi2.ppf(level, 1)

    def excess(value: float) -> float:
        refit = sm.Logit(model.endog, others, offset=value * exposure_values).fit(
            start_params=np.delete(fit.params.to_numpy(), column), method="newton", tol=1e-12, disp=0
        )
        return 2.0 * (fit.llf - refit.llf) - target

    ends = []
    beta, se = fit.params[exposure], fit.bse[exposure]
    for side in (-1.0, 1.0):
        grid = beta + side * se * np.arange(1.0, 6.0, 0.5)
        outer = next(value for value in grid if excess(value) > 0)
        ends.append(optimize.brentq(excess, beta, outer, xtol=1e-14, rtol=1e-14))
    return ends[0], ends[1]


@pytest.mark.parametrize("strata", [None, "sex"])
def test_wald_statistics_equal_statsmodels(data, fitted, strata) -> None:
    frame, outcomes = data
    table = fitted[strata]
    assert list(table.columns) == list(LOGIT_COLUMNS)
    assert len(table) == len(outcomes) * (1 if strata is None else 2) and table["converged"].all()
    for _, row in table[table["outcome"].isin(CHECKED)].iterrows():
        rows = frame if strata is None else frame[frame[strata] == row["stratum"]]
        fit = statsmodels_fit(rows, row["outcome"])
        low, high = fit.conf_int().loc["pa_ratio"]
        ours = row[["beta", "se", "z", "p", "ci_low", "ci_high", "or_"]].to_numpy(dtype=float)
        theirs = [
            fit.params["pa_ratio"],
            fit.bse["pa_ratio"],
            fit.tvalues["pa_ratio"],
            fit.pvalues["pa_ratio"],
            low,
            high,
            np.exp(fit.params["pa_ratio"]),
        ]
        np.testing.assert_allclose(ours, theirs, rtol=RTOL, err_msg=row["outcome"])
        assert row["n"] == fit.nobs and row["n_events"] == fit.model.endog.sum()


def test_profile_interval_equals_direct_computation(data, fitted) -> None:
    frame, _ = data
    table = fitted[None].set_index("outcome")
    for outcome in PROFILED:
        low, high = profile_interval(statsmodels_fit(frame, outcome))
        np.testing.assert_allclose(
            np.log(table.loc[outcome, ["or_ci_low", "or_ci_high"]].to_numpy(dtype=float)),
            [low, high],
            rtol=RTOL,
            err_msg=outcome,
        )
        wald = table.loc[outcome, ["ci_low", "ci_high"]].to_numpy(dtype=float)
        assert not np.allclose([low, high], wald, rtol=1e-4)  # a different interval, not the Wald one


def test_profile_ends_of_a_rare_outcome_lie_on_the_chi2_boundary(data) -> None:
    """15 events and a strong effect (statsmodels' own offset refits fail at the lower end here): at each
    end, the constrained maximum found independently (BFGS) is χ²₁(0.95)/2 below the maximum."""
    frame, _ = data
    rng = np.random.default_rng(3)
    centred = ((frame["pa_ratio"] - 0.45) / 0.06).to_numpy()
    y = (rng.random(len(frame)) < 1 / (1 + np.exp(5.5 - centred))).astype(float)
    row = logit_many(frame.assign(rare=y), "rare", "pa_ratio", ("age",)).iloc[0]
    assert row["n_events"] == 15 and row["converged"]
    x = sm.add_constant(frame[["age", "pa_ratio"]].to_numpy())
    full = sm.Logit(y, x).fit(method="newton", tol=1e-12, disp=0)

    def deviance(value: float) -> float:
        def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
            eta = x[:, :2] @ theta + value * x[:, 2]
            return -(y * eta - np.logaddexp(0.0, eta)).sum(), -x[:, :2].T @ (y - 1 / (1 + np.exp(-eta)))

        fit = optimize.minimize(loss, full.params[:2], jac=True, method="BFGS", options={"gtol": 1e-9})
        return 2.0 * (full.llf + fit.fun)

    ends = np.log(row[["or_ci_low", "or_ci_high"]].to_numpy(dtype=float))
    np.testing.assert_allclose([deviance(end) for end in ends], stats.chi2.ppf(0.95, 1), rtol=1e-8)


def test_wald_interval_without_profile(data, fitted) -> None:
    frame, outcomes = data
    wald = logit_many(frame, outcomes[:4], "pa_ratio", COVARIATES, profile_ci=False)
    np.testing.assert_allclose(wald["or_ci_low"], np.exp(wald["ci_low"]), rtol=1e-14)
    np.testing.assert_allclose(wald["or_ci_high"], np.exp(wald["ci_high"]), rtol=1e-14)
    full = fitted[None].iloc[:4]
    np.testing.assert_allclose(wald["beta"], full["beta"], rtol=1e-12)


def test_blocks_give_the_same_fits(data, fitted, monkeypatch) -> None:
    frame, outcomes = data
    monkeypatch.setattr(design, "BLOCK_BYTES", 6 * 8 * N)  # three outcomes (six profile ends) per block
    small_blocks = logit_many(frame, outcomes, "pa_ratio", COVARIATES)
    pd.testing.assert_frame_equal(small_blocks, fitted[None], rtol=1e-10)


def test_bool_exposure_top_tertile(data) -> None:
    """A top-vs-bottom comparison coded as bool, as in STUDIES.md §2."""
    frame, _ = data
    cut = frame["pa_ratio"].quantile([1 / 3, 2 / 3]).to_numpy()
    extremes = frame[(frame["pa_ratio"] <= cut[0]) | (frame["pa_ratio"] >= cut[1])]
    extremes = extremes.assign(top=extremes["pa_ratio"] >= cut[1])
    row = logit_many(extremes, "out10", "top", ("age", "sex"), profile_ci=False).iloc[0]
    fit = smf.logit(
        "out10 ~ age + sex + top",
        extremes.dropna(subset=["out10"]).assign(top=lambda d: d["top"].astype(float)),
    ).fit(method="newton", tol=1e-12, disp=0)
    np.testing.assert_allclose(
        [row["beta"], row["se"], row["p"]], [fit.params["top"], fit.bse["top"], fit.pvalues["top"]], rtol=RTOL
    )


def test_separation_and_empty_outcomes_are_flagged(data) -> None:
    frame, outcomes = data
    frame = frame.assign(
        separated=(frame["pa_ratio"] > 0.45).astype(float),
        no_events=0.0,
        all_events=1.0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow or runtime warnings either
        table = logit_many(
            frame, ["separated", "no_events", outcomes[0], "all_events"], "pa_ratio", COVARIATES, max_iter=30
        ).set_index("outcome")
    assert not table.loc["separated", "converged"]
    assert np.isnan(table.loc["separated", ["or_ci_low", "or_ci_high"]].to_numpy(dtype=float)).all()
    for empty in ("no_events", "all_events"):
        assert not table.loc[empty, "converged"] and np.isnan(table.loc[empty, "beta"])
    assert table.loc["no_events", "n_events"] == 0
    alone = logit_many(frame, outcomes[0], "pa_ratio", COVARIATES).iloc[0]
    np.testing.assert_allclose(table.loc[outcomes[0], "beta"], alone["beta"], rtol=1e-12)
    assert table.loc[outcomes[0], "converged"]


def test_non_binary_outcome_raises(data) -> None:
    frame, _ = data
    with pytest.raises(ValueError, match="0/1"):
        logit_many(frame, ["out0", "age"], "pa_ratio")


@pytest.mark.gpu
@pytest.mark.skipif(not gpu_available(), reason="needs CuPy and a CUDA GPU")
def test_cupy_equals_numpy(data, fitted) -> None:
    cupy = pytest.importorskip("cupy")
    frame, outcomes = data
    gpu = logit_many(frame, outcomes, "pa_ratio", COVARIATES, xp=cupy)
    pd.testing.assert_frame_equal(gpu, fitted[None], rtol=1e-9)
