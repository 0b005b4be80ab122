"""Cox models and Kaplan–Meier curves (cohortscale.stats.survival) against statsmodels' PHReg and
SurvfuncRight, a hand-worked curve, and a planted hazard ratio in simulated exponential survival."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from statsmodels.duration.hazard_regression import PHReg
from statsmodels.duration.survfunc import SurvfuncRight

from cohortscale.stats.survival import cox_ph, kaplan_meier

SAME_FIT = 1e-8  # two PHReg fits of the same model, differently scaled
KM_EXACT = 1e-10  # Kaplan–Meier against statsmodels

PLANTED_HR_PER_SD = 1.3
BASE_RATE = 0.02  # events per year at the mean exposure
ADMINISTRATIVE_CENSOR = 10.0  # years of follow-up at most


def cohort(seed: int, n: int = 3000) -> pd.DataFrame:
    """Exponential event times with a hazard ratio of 1.3 per SD of ``pad`` (SD 4 years), 1.5 for men and
    1.05 per year of age; censored by drop-out (exponential, 0.03/year) and at 10 years."""
    rng = np.random.default_rng(seed)
    age = rng.normal(65, 7.5, n)
    sex = rng.choice(["female", "male"], n)
    pad = rng.normal(0, 4.0, n)
    log_hazard = (
        np.log(BASE_RATE)
        + math.log(PLANTED_HR_PER_SD) * pad / 4.0
        + math.log(1.5) * (sex == "male")
        + math.log(1.05) * (age - 65)
    )
    event_time = rng.exponential(1 / np.exp(log_hazard))
    censor_time = np.minimum(rng.exponential(1 / 0.03, n), ADMINISTRATIVE_CENSOR)
    return pd.DataFrame(
        {
            "years": np.minimum(event_time, censor_time),
            "died": (event_time <= censor_time).astype(int),
            "age": age,
            "sex": sex,
            "pad": pad,
            "noise": rng.normal(10, 3, n),
            "site": rng.choice(["a", "b", "c"], n),
        }
    )


# --- Cox ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ties", ["breslow", "efron"])
def test_hr_per_sd_equals_raw_fit_scaled(ties: str) -> None:
    """HR per SD = exp(β_raw · SD) of a PHReg on the raw exposure, with missing rows dropped per model."""
    data = cohort(0)
    data["years"] = np.round(data["years"], 1)  # tied event times, where Breslow and Efron differ
    data.loc[::7, "pad"] = np.nan  # exposures missing on different rows
    data.loc[::11, "noise"] = np.nan
    data.loc[5, "age"] = np.nan  # a missing covariate drops the row from every model
    table = cox_ph(data, "years", "died", ["pad", "noise"], covariates=["age", "sex"], ties=ties)
    assert list(table["exposure"]) == ["pad", "noise"]
    for row in table.itertuples():
        rows = data[["years", "died", "age", "sex", row.exposure]].dropna()
        exog = np.column_stack([rows[row.exposure], rows["age"], rows["sex"] == "male"]).astype(float)
        raw = PHReg(rows["years"].to_numpy(), exog, status=rows["died"].to_numpy(), ties=ties).fit()
        sd = rows[row.exposure].std(ddof=1)
        assert (row.n, row.events) == (len(rows), int(rows["died"].sum()))
        assert row.sd == pytest.approx(sd, rel=1e-12)
        assert row.hr == pytest.approx(math.exp(raw.params[0] * sd), rel=SAME_FIT)
        assert row.se == pytest.approx(raw.bse[0] * sd, rel=SAME_FIT)
        assert row.p == pytest.approx(raw.pvalues[0], rel=SAME_FIT)
        low, high = np.exp(raw.conf_int()[0] * sd)
        assert (row.hr_ci_low, row.hr_ci_high) == pytest.approx((low, high), rel=SAME_FIT)


def test_per_unit_and_strata_match_phreg() -> None:
    data = cohort(1)
    table = cox_ph(data, "years", "died", "pad", covariates=["age"], per_sd=False, strata="site")
    exog = data[["pad", "age"]].to_numpy()
    raw = PHReg(data["years"].to_numpy(), exog, status=data["died"].to_numpy(), strata=data["site"]).fit()
    assert table.loc[0, "beta"] == pytest.approx(raw.params[0], rel=SAME_FIT)
    assert table.loc[0, "se"] == pytest.approx(raw.bse[0], rel=SAME_FIT)


def test_planted_hazard_ratio_is_recovered() -> None:
    """n = 3000 with about 20 % events: HR per SD of PAD near 1.3, its 95 % CI covering 1.3; an unrelated
    exposure's CI covers 1."""
    data = cohort(2)
    assert 0.1 < data["died"].mean() < 0.35  # censoring is substantial
    table = cox_ph(data, "years", "died", ["pad", "noise"], covariates=["age", "sex"]).set_index("exposure")
    pad, noise = table.loc["pad"], table.loc["noise"]
    assert pad["hr_ci_low"] < PLANTED_HR_PER_SD < pad["hr_ci_high"]
    assert pad["hr"] == pytest.approx(PLANTED_HR_PER_SD, abs=0.08)
    assert pad["p"] < 1e-10
    assert noise["hr_ci_low"] < 1.0 < noise["hr_ci_high"]
    unadjusted = cox_ph(data, "years", "died", "pad")
    assert unadjusted.loc[0, "hr_ci_low"] < PLANTED_HR_PER_SD < unadjusted.loc[0, "hr_ci_high"]


def test_cox_refuses_bad_input() -> None:
    data = cohort(3, n=200)
    with pytest.raises(ValueError, match="ties"):
        cox_ph(data, "years", "died", "pad", ties="exact")
    data["flat"] = 1.0
    with pytest.raises(ValueError, match="constant"):
        cox_ph(data, "years", "died", "flat")
    data["died"] = 2
    with pytest.raises(ValueError, match="0 \\(censored\\) or 1"):
        cox_ph(data, "years", "died", "pad")


# --- Kaplan–Meier -------------------------------------------------------------------------------------------


def assert_equals_statsmodels(curve: pd.DataFrame, time: np.ndarray, status: np.ndarray) -> None:
    reference = SurvfuncRight(time, status)
    np.testing.assert_allclose(curve["time"], reference.surv_times, rtol=0, atol=KM_EXACT)
    np.testing.assert_array_equal(curve["at_risk"], reference.n_risk)
    np.testing.assert_array_equal(curve["events"], reference.n_events)
    np.testing.assert_allclose(curve["survival"], reference.surv_prob, rtol=0, atol=KM_EXACT)
    np.testing.assert_allclose(curve["survival_se"], reference.surv_prob_se, rtol=0, atol=KM_EXACT)


def test_kaplan_meier_equals_statsmodels_per_group() -> None:
    """Tied times, censoring tied with events, and a group whose last participant has the event (S = 0)."""
    rng = np.random.default_rng(4)
    n = 500
    time = np.round(rng.exponential(5.0, n), 1)
    status = (rng.random(n) < 0.6).astype(int)
    groups = rng.choice(["young / slow", "old / accelerated"], n)
    last_old = np.flatnonzero(groups == "old / accelerated")[np.argmax(time[groups == "old / accelerated"])]
    time[last_old], status[last_old] = time.max() + 1.0, 1
    table = kaplan_meier(time, status, groups)
    assert list(pd.unique(table["group"])) == ["old / accelerated", "young / slow"]
    for label, curve in table.groupby("group"):
        member = groups == label
        assert_equals_statsmodels(curve, time[member], status[member])
    old = table[table["group"] == "old / accelerated"]
    assert old["survival"].iloc[-1] == 0.0 and np.isnan(old["survival_se"].iloc[-1])
    np.testing.assert_allclose(table["failure"], 1 - table["survival"], rtol=0, atol=0)


def test_kaplan_meier_of_everyone_equals_statsmodels() -> None:
    data = cohort(5, n=800)
    table = kaplan_meier(data["years"], data["died"].astype(bool))
    assert set(table["group"]) == {"all"}
    assert_equals_statsmodels(table, data["years"].to_numpy(), data["died"].to_numpy())


def test_kaplan_meier_worked_by_hand() -> None:
    """Durations 1, 2, 2+, 3, 4+ (+ censored), events at 1, 2, 3.

    t=1: n 5, d 1, S = 4/5;  t=2: n 4, d 1, S = 3/5;  t=3: n 2, d 1, S = 3/10.
    Greenwood Σ d/(n(n−d)): 1/20, 1/20 + 1/12 = 2/15, 2/15 + 1/2 = 19/30.
    Log–log CI at t=1: S^exp(∓1.96 · se / (S |log S|)) with se = 0.8 · √(1/20).
    """
    table = kaplan_meier(np.array([1.0, 2.0, 2.0, 3.0, 4.0]), np.array([1, 1, 0, 1, 0]))
    np.testing.assert_array_equal(table["time"], [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(table["at_risk"], [5, 4, 2])
    np.testing.assert_array_equal(table["events"], [1, 1, 1])
    np.testing.assert_allclose(table["survival"], [0.8, 0.6, 0.3], rtol=1e-15)
    se = np.array([0.8, 0.6, 0.3]) * np.sqrt([1 / 20, 2 / 15, 19 / 30])
    np.testing.assert_allclose(table["survival_se"], se, rtol=1e-14)
    spread = 1.959963984540054 * se[0] / (0.8 * -math.log(0.8))
    assert table.loc[0, "survival_ci_low"] == pytest.approx(0.8 ** math.exp(spread), rel=1e-12)
    assert table.loc[0, "survival_ci_high"] == pytest.approx(0.8 ** math.exp(-spread), rel=1e-12)
    assert table.loc[0, "failure_ci_high"] == pytest.approx(1 - 0.8 ** math.exp(spread), rel=1e-12)
    assert (table["survival_ci_low"] < table["survival"]).all()
    assert (table["survival"] < table["survival_ci_high"]).all()
    assert (table["survival_ci_high"] < 1).all()


def test_kaplan_meier_refuses_missing_durations() -> None:
    with pytest.raises(ValueError, match="finite"):
        kaplan_meier(np.array([1.0, np.nan]), np.array([1, 0]))
