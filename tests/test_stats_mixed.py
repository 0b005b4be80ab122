"""Random-intercept mixed models (cohortscale.stats.mixed) against statsmodels' mixedlm, planted effects of
a simulated two-visit design (UK Biobank imaging instances 2 and 3), and model-based means worked out from
the fixed effects and their covariance."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf
from scipy.stats import norm

from cohortscale.stats.mixed import mixed_model, model_means

SAME_FIT = 1e-8  # our numbers against statsmodels' own for the same model
EXACT = 1e-10  # linear algebra on the same fitted numbers

FORMULA = "C(instance) * group + age"
#: Planted fixed effects (outcome in %, age in years): visit 3 adds 1.5, exercise 2.0 at visit 2 and a
#: further 1.0 at visit 3, 0.2 per year of age.
TRUTH = {
    "Intercept": 37.0,
    "C(instance)[T.3]": 1.5,
    "group[T.exercise]": 2.0,
    "C(instance)[T.3]:group[T.exercise]": 1.0,
    "age": 0.2,
}
SD_PARTICIPANT, SD_RESIDUAL = 3.0, 1.5


def repeated_measures(seed: int, n: int = 500, repeat_rate: float = 0.8) -> pd.DataFrame:
    """Long table: every participant at instance 2, a random ``repeat_rate`` of them again at instance 3."""
    rng = np.random.default_rng(seed)
    eid = 1_000_000 + rng.choice(9_000_000, n, replace=False)
    group = rng.choice(["control", "exercise"], n)
    sex = rng.choice(["female", "male"], n)
    age = rng.normal(64, 7.5, n)
    participant = rng.normal(0, SD_PARTICIPANT, n)
    visits = []
    for instance, present in ((2, np.ones(n, bool)), (3, rng.random(n) < repeat_rate)):
        exercise = group == "exercise"
        mean = (
            TRUTH["Intercept"]
            + TRUTH["C(instance)[T.3]"] * (instance == 3)
            + TRUTH["group[T.exercise]"] * exercise
            + TRUTH["C(instance)[T.3]:group[T.exercise]"] * (instance == 3) * exercise
            + TRUTH["age"] * age
            + 0.5 * (sex == "male")
        )
        y = mean + participant + rng.normal(0, SD_RESIDUAL, n)
        visits.append(
            pd.DataFrame({"eid": eid, "instance": instance, "group": group, "sex": sex, "age": age, "y": y})[
                present
            ]
        )
    return pd.concat(visits, ignore_index=True)


@pytest.mark.parametrize("reml", [True, False])
def test_equals_statsmodels_mixedlm(reml: bool) -> None:
    data = repeated_measures(0, n=250)
    data.loc[[3, 17], "y"] = np.nan  # missing outcomes are dropped, as statsmodels' formula interface does
    result = mixed_model(data, "y", FORMULA, reml=reml)
    reference = smf.mixedlm(f"y ~ {FORMULA}", data.dropna(), groups="eid").fit(reml=reml)
    table = result.fixed.set_index("term")
    assert list(table.index) == list(reference.fe_params.index)
    np.testing.assert_allclose(table["beta"], reference.fe_params, rtol=SAME_FIT)
    np.testing.assert_allclose(table["se"], reference.bse_fe, rtol=SAME_FIT)
    k = len(table)
    np.testing.assert_allclose(table["z"], reference.tvalues[:k], rtol=SAME_FIT)
    np.testing.assert_allclose(table["p"], reference.pvalues[:k], rtol=1e-6, atol=1e-300)
    ci = reference.conf_int().iloc[:k]
    np.testing.assert_allclose(table[["ci_low", "ci_high"]], ci, rtol=SAME_FIT)
    variance = result.variance.set_index("component")["variance"]
    assert variance["eid intercept"] == pytest.approx(reference.cov_re.iloc[0, 0], rel=SAME_FIT)
    assert variance["residual"] == pytest.approx(reference.scale, rel=SAME_FIT)
    assert result.n_observations == len(data) - 2
    assert result.n_groups == data.dropna()["eid"].nunique()


def test_planted_effects_are_recovered() -> None:
    """500 participants, 80 % seen again: every 95 % CI covers its planted effect; variances within 15 %."""
    result = mixed_model(repeated_measures(1), "y", FORMULA + " + sex")
    table = result.fixed.set_index("term")
    for term, value in TRUTH.items():
        assert table.loc[term, "ci_low"] < value < table.loc[term, "ci_high"], term
    assert table.loc["C(instance)[T.3]:group[T.exercise]", "p"] < 1e-3
    sd = result.variance.set_index("component")["sd"]
    assert sd["eid intercept"] == pytest.approx(SD_PARTICIPANT, rel=0.15)
    assert sd["residual"] == pytest.approx(SD_RESIDUAL, rel=0.15)
    icc = SD_PARTICIPANT**2 / (SD_PARTICIPANT**2 + SD_RESIDUAL**2)
    assert result.within_correlation == pytest.approx(icc, abs=0.05)


def test_list_of_columns_and_eid_index() -> None:
    """Columns as main effects, participants in the index: the same fit as the formula."""
    data = repeated_measures(2, n=200)
    by_list = mixed_model(data.set_index("eid"), "y", ["group", "age"])
    by_formula = mixed_model(data, "y", "group + age")
    pd.testing.assert_frame_equal(by_list.fixed, by_formula.fixed)
    with pytest.raises(ValueError, match="participant"):
        mixed_model(data, "y", "age", group="participant")


def test_model_means_of_a_saturated_balanced_design_are_cell_means() -> None:
    """Every participant at both visits and only time × group: the model's cell means are the raw ones."""
    data = repeated_measures(3, n=300, repeat_rate=1.0)
    result = mixed_model(data, "y", "C(instance) * group")
    means = model_means(result, {"instance": [2, 3], "group": ["control", "exercise"]})
    raw = data.groupby(["instance", "group"])["y"].mean()
    assert list(zip(means["instance"], means["group"], strict=True)) == list(raw.index)
    np.testing.assert_allclose(means["mean"], raw.to_numpy(), rtol=0, atol=1e-8)
    half = norm.ppf(0.975) * means["se"]
    np.testing.assert_allclose(means["ci_low"], means["mean"] - half, rtol=0, atol=EXACT)


def test_model_means_from_fixed_effects_and_covariance() -> None:
    """With sex and age in the model: L = [1, visit 3, exercise, both, mean age, ½ male], averaging the
    sexes with equal weight; mean = L β, SE = √(L Σ L')."""
    data = repeated_measures(4, n=250)
    result = mixed_model(data, "y", "C(instance) * group + age + sex")
    means = model_means(result, {"group": ["exercise"], "instance": [3, 2]}, ci_level=0.9)
    beta = result.fit.fe_params
    cov = result.fit.cov_params().loc[beta.index, beta.index]
    mean_age = data["age"].mean()  # no row has a missing value, so all rows were fitted
    for row in means.itertuples():
        visit3 = float(row.instance == 3)
        contrast = pd.Series(
            {
                "Intercept": 1.0,
                "C(instance)[T.3]": visit3,
                "group[T.exercise]": 1.0,
                "sex[T.male]": 0.5,
                "C(instance)[T.3]:group[T.exercise]": visit3,
                "age": mean_age,
            }
        )[beta.index]
        assert row.mean == pytest.approx(contrast @ beta, abs=EXACT)
        assert row.se == pytest.approx(np.sqrt(contrast @ cov @ contrast), rel=1e-9)
        assert row.ci_high - row.mean == pytest.approx(norm.ppf(0.95) * row.se, rel=1e-12)
    assert list(means["instance"]) == [3, 2]

    by_sex = model_means(result, {"group": ["exercise"], "instance": [3, 2], "sex": ["female", "male"]})
    np.testing.assert_allclose(
        means["mean"], by_sex.groupby("instance", sort=False)["mean"].mean(), atol=EXACT
    )
    at_age_70 = model_means(result, {"instance": [2], "age": [70.0]})
    at_mean_age = model_means(result, {"instance": [2]})
    assert at_age_70.loc[0, "mean"] - at_mean_age.loc[0, "mean"] == pytest.approx(
        beta["age"] * (70.0 - mean_age), abs=EXACT
    )


def test_model_means_refuse_unknown_variables() -> None:
    result = mixed_model(repeated_measures(5, n=100), "y", "C(instance) + age")
    with pytest.raises(ValueError, match="unknown"):
        model_means(result, {"treatment": ["a"]})
