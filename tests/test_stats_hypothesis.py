"""Group comparisons (cohortscale.stats.hypothesis) against scipy and statsmodels variable by variable, with
different missingness per variable and ties; Cochran–Armitage and chi-square worked out by hand; Table 1."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from statsmodels.stats.contingency_tables import Table
from statsmodels.stats.diagnostic import lilliefors

from cohortscale.stats.hypothesis import (
    chi_square,
    cochran_armitage,
    cochran_armitage_counts,
    mann_whitney,
    normality,
    one_way_anova,
    t_test,
    table_one,
)

RTOL = 1e-8  # relative tolerance against scipy / statsmodels
EXACT = 1e-12  # relative tolerance for values worked out by hand
SEED = 26524
N = 300
CONTINUOUS = ["age", "ff", "iron", "activity"]
SEXES = ["female", "male"]


@pytest.fixture(scope="module")
def cohort() -> pd.DataFrame:
    """Participants with sex (some missing), an ordered age group, continuous variables with their own
    missingness and ties, binary outcomes and a categorical variable."""
    rng = np.random.default_rng(SEED)
    sex = rng.choice(SEXES, N).astype(object)
    male = sex == "male"
    age = rng.normal(65, 7.5, N).round()  # whole years: ties
    frame = pd.DataFrame(
        {
            "sex": sex,
            "age_group": pd.Categorical(
                np.select([age < 60, age < 70], ["<60", "60-69"], "70+"),
                ["<60", "60-69", "70+"],
                ordered=True,
            ),
            "age": age,
            "ff": (52.5 - 5.2 * male + 0.3 * (age - 65) + rng.normal(0, 10.8, N)).round(1),
            "iron": np.exp(rng.normal(0.6 + 0.05 * male, 0.2, N)),
            "activity": rng.integers(0, 5, N).astype(float),  # five levels: heavy ties
            "weak_grip": (rng.random(N) < 0.05 + 0.006 * (age - 50)).astype(float),
            "t2d": (rng.random(N) < 0.054 + 0.03 * male).astype(float),
            "smoking": rng.choice(["never", "previous", "current"], N, p=[0.55, 0.35, 0.10]).astype(object),
        }
    )
    frame.loc[rng.random(N) < 0.04, "sex"] = None
    frame.loc[rng.random(N) < 0.15, "ff"] = np.nan
    frame.loc[rng.random(N) < 0.30, "iron"] = np.nan
    frame.loc[rng.random(N) < 0.08, "weak_grip"] = np.nan
    frame.loc[rng.random(N) < 0.05, "smoking"] = None
    return frame


def by_group(frame: pd.DataFrame, variable: str, by: str, groups: list) -> list[np.ndarray]:
    """The non-missing values of ``variable`` in each group, in order."""
    return [frame.loc[frame[by] == g, variable].dropna().to_numpy() for g in groups]


# --- two groups ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("equal_var", [False, True])
def test_t_test_matches_scipy(cohort: pd.DataFrame, equal_var: bool) -> None:
    """t, df and p within 1e-8 of ttest_ind (Welch / Student); group sizes and means per variable."""
    result = t_test(cohort, CONTINUOUS, "sex", equal_var=equal_var)
    assert list(result["variable"]) == CONTINUOUS
    assert (result["group_1"] == "female").all() and (result["group_2"] == "male").all()
    for row in result.itertuples():
        women, men = by_group(cohort, row.variable, "sex", SEXES)
        expected = stats.ttest_ind(women, men, equal_var=equal_var)
        np.testing.assert_allclose(
            [row.statistic, row.df, row.p], [expected.statistic, expected.df, expected.pvalue], rtol=RTOL
        )
        np.testing.assert_allclose([row.mean_1, row.mean_2], [women.mean(), men.mean()], rtol=EXACT)
        assert (row.n_1, row.n_2) == (women.size, men.size)
    assert result["n_1"].nunique() > 1  # missingness differs per variable


def test_mann_whitney_matches_scipy(cohort: pd.DataFrame) -> None:
    """U (group 1's) and p within 1e-8 of mannwhitneyu(method='asymptotic'), ties included."""
    result = mann_whitney(cohort, CONTINUOUS, "sex")
    for row in result.itertuples():
        women, men = by_group(cohort, row.variable, "sex", SEXES)
        expected = stats.mannwhitneyu(women, men, method="asymptotic", use_continuity=True)
        np.testing.assert_allclose([row.statistic, row.p], [expected.statistic, expected.pvalue], rtol=RTOL)
        assert (row.n_1, row.n_2) == (women.size, men.size)


def test_mann_whitney_by_hand() -> None:
    """x = 1 2 3 against y = 4 5: no pair where x is larger, U = 0; ranks 1..5 without ties give
    σ = √(3·2·6/12) = √3 and z = (6 − 3 − 0.5) / √3 for U = max(0, 6) = 6."""
    frame = pd.DataFrame({"value": [1.0, 2, 3, 4, 5], "group": ["x", "x", "x", "y", "y"]})
    result = mann_whitney(frame, ["value"], "group").iloc[0]
    assert result["statistic"] == 0.0
    assert result["p"] == pytest.approx(2 * stats.norm.sf(2.5 / np.sqrt(3)), rel=EXACT)


def test_group_order_is_respected(cohort: pd.DataFrame) -> None:
    """Naming the groups in the other order flips t and turns U into n₁n₂ − U; p is unchanged."""
    forward = mann_whitney(cohort, ["ff"], "sex").iloc[0]
    backward = mann_whitney(cohort, ["ff"], "sex", groups=["male", "female"]).iloc[0]
    assert backward["statistic"] == forward["n_1"] * forward["n_2"] - forward["statistic"]
    assert backward["p"] == pytest.approx(forward["p"], rel=EXACT)
    t_forward = t_test(cohort, ["ff"], "sex").iloc[0]
    t_backward = t_test(cohort, ["ff"], "sex", groups=["male", "female"]).iloc[0]
    assert t_backward["statistic"] == pytest.approx(-t_forward["statistic"], rel=EXACT)


def test_two_group_tests_need_two_groups(cohort: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="exactly two groups"):
        t_test(cohort, ["ff"], "age_group")
    with pytest.raises(ValueError, match="exactly two groups"):
        mann_whitney(cohort, ["ff"], "age_group")


def test_nullable_columns(cohort: pd.DataFrame) -> None:
    """pandas NA in nullable columns is missing, like NaN."""
    nullable = cohort.astype({"ff": "Float64", "activity": "Int64", "sex": "string"})
    for function in (t_test, mann_whitney):
        pd.testing.assert_frame_equal(
            function(nullable, ["ff", "activity"], "sex"), function(cohort, ["ff", "activity"], "sex")
        )


# --- k groups -----------------------------------------------------------------------------------------------


def test_anova_matches_scipy(cohort: pd.DataFrame) -> None:
    """F and p within 1e-8 of f_oneway over the three age groups, per variable's own rows."""
    groups = ["<60", "60-69", "70+"]
    result = one_way_anova(cohort, ["ff", "iron", "activity"], "age_group")
    for row in result.itertuples():
        samples = by_group(cohort, row.variable, "age_group", groups)
        expected = stats.f_oneway(*samples)
        np.testing.assert_allclose([row.statistic, row.p], [expected.statistic, expected.pvalue], rtol=RTOL)
        assert (row.groups, row.n, row.df_between, row.df_within) == (3, sum(map(len, samples)), 2, row.n - 3)


def test_anova_leaves_out_empty_groups(cohort: pd.DataFrame) -> None:
    """A variable with no values in one group is tested across the others; a constant one gives NaN."""
    frame = cohort.assign(ff=cohort["ff"].where(cohort["age_group"] != "70+"), flat=1.0)
    result = one_way_anova(frame, ["ff", "flat"], "age_group").set_index("variable")
    expected = stats.f_oneway(*by_group(frame, "ff", "age_group", ["<60", "60-69"]))
    assert result.loc["ff", "groups"] == 2
    np.testing.assert_allclose(
        result.loc["ff", ["statistic", "p"]], [expected.statistic, expected.pvalue], rtol=RTOL
    )
    assert np.isnan(result.loc["flat", "statistic"]) and np.isnan(result.loc["flat", "p"])


def test_anova_of_two_groups_is_the_student_t_test(cohort: pd.DataFrame) -> None:
    """F = t² and the same p for two groups."""
    anova = one_way_anova(cohort, CONTINUOUS, "sex")
    student = t_test(cohort, CONTINUOUS, "sex", equal_var=True)
    np.testing.assert_allclose(anova["statistic"], student["statistic"] ** 2, rtol=RTOL)
    np.testing.assert_allclose(anova["p"], student["p"], rtol=RTOL)


# --- normality ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("test", "reference"),
    [
        ("lilliefors", lambda x: lilliefors(x, dist="norm", pvalmethod="table")),
        ("ks", lambda x: tuple(stats.kstest(x, stats.norm(x.mean(), x.std(ddof=1)).cdf))),
        ("shapiro", lambda x: tuple(stats.shapiro(x))),
    ],
)
def test_normality_matches_references(cohort: pd.DataFrame, test: str, reference) -> None:
    """Statistic and p within 1e-8 of the reference, per variable and sex, on non-missing values."""
    result = normality(cohort, ["ff", "iron"], by="sex", test=test)
    assert len(result) == 4 and list(result["group"]) == SEXES * 2
    for row in result.itertuples():
        x = cohort.loc[cohort["sex"] == row.group, row.variable].dropna().to_numpy()
        statistic, p = reference(x)
        np.testing.assert_allclose([row.statistic, row.p], [statistic, p], rtol=RTOL)
        assert row.n == x.size


def test_normality_over_all_rows_and_small_samples(cohort: pd.DataFrame) -> None:
    """Without ``by`` one test over all rows (no group column); below the minimum size NaN."""
    result = normality(cohort, ["iron"], test="shapiro")
    assert list(result.columns) == ["variable", "n", "statistic", "p"]
    np.testing.assert_allclose(
        result.loc[0, "statistic"], stats.shapiro(cohort["iron"].dropna()).statistic, rtol=RTOL
    )
    tiny = pd.DataFrame({"x": [1.0, 2.0, 4.0, np.nan]})
    assert np.isnan(normality(tiny, ["x"], test="lilliefors").loc[0, "p"])  # 3 values < 4
    assert not np.isnan(normality(tiny, ["x"], test="shapiro").loc[0, "p"])  # 3 values suffice
    with pytest.raises(ValueError, match="unknown normality test"):
        normality(tiny, ["x"], test="anderson")  # type: ignore[arg-type]


# --- categorical: chi-square and trend ----------------------------------------------------------------------


@pytest.mark.parametrize("correction", [True, False])
def test_chi_square_matches_scipy(cohort: pd.DataFrame, correction: bool) -> None:
    """χ², dof and p within 1e-8 of chi2_contingency on the crosstab of non-missing rows."""
    result = chi_square(cohort, ["smoking", "t2d", "age_group"], "sex", correction=correction)
    for row in result.itertuples():
        table = pd.crosstab(cohort[row.variable], cohort["sex"]).to_numpy()
        expected = stats.chi2_contingency(table, correction=correction)
        np.testing.assert_allclose([row.statistic, row.p], [expected.statistic, expected.pvalue], rtol=RTOL)
        assert (row.dof, row.n) == (expected.dof, table.sum())
        assert row.corrected == (correction and expected.dof == 1)


def frame_from_table(table: list[list[int]], rows: list, columns: list) -> pd.DataFrame:
    """One row per participant of a ``rows × columns`` contingency table."""
    records = [(r, c) for i, r in enumerate(rows) for j, c in enumerate(columns) for _ in range(table[i][j])]
    return pd.DataFrame(records, columns=["outcome", "group"])


def test_chi_square_by_hand() -> None:
    """[[10, 20], [30, 40]]: expected 12, 18, 28, 42 so χ² = 4 (1/12 + 1/18 + 1/28 + 1/42); with Yates
    each |o − e| = 2 shrinks to 1.5, χ² = 2.25 (1/12 + 1/18 + 1/28 + 1/42)."""
    frame = frame_from_table([[10, 20], [30, 40]], ["yes", "no"], ["a", "b"])
    inverse_expected = 1 / 12 + 1 / 18 + 1 / 28 + 1 / 42
    plain = chi_square(frame, ["outcome"], "group", correction=False).iloc[0]
    yates = chi_square(frame, ["outcome"], "group", correction=True).iloc[0]
    assert plain["statistic"] == pytest.approx(4 * inverse_expected, rel=EXACT)
    assert yates["statistic"] == pytest.approx(2.25 * inverse_expected, rel=EXACT)
    assert yates["p"] == pytest.approx(stats.chi2.sf(2.25 * inverse_expected, 1), rel=EXACT)


def test_cochran_armitage_by_hand() -> None:
    """Successes 1, 3, 6 of 10 each at scores 0, 1, 2: p̄ = 1/3, s̄ = 1, T = Σ(s − s̄)x = −1 + 6 = 5,
    Var = p̄(1 − p̄)·Σn(s − s̄)² = (2/9)·20 = 40/9, so z = 15/√40 and z² = 5.625."""
    trend = cochran_armitage_counts([1, 3, 6], [10, 10, 10])
    assert trend.statistic == pytest.approx(15 / np.sqrt(40), rel=EXACT)
    assert trend.p == pytest.approx(stats.chi2.sf(5.625, 1), rel=1e-10)
    falling = cochran_armitage_counts([6, 3, 1], [10, 10, 10])
    assert falling.statistic == pytest.approx(-15 / np.sqrt(40), rel=EXACT)


def test_cochran_armitage_against_statsmodels_and_correlation() -> None:
    """Unequal groups and scores: statsmodels' ordinal association z (permutation variance) times
    √(N / (N − 1)), and √N · Pearson r of score and outcome over the participants, both equal z."""
    successes, totals, scores = (
        np.array([3, 9, 14, 20]),
        np.array([40, 55, 48, 37]),
        np.array([45, 55, 65, 75]),
    )
    trend = cochran_armitage_counts(successes, totals, scores)
    total = totals.sum()
    table = np.column_stack([totals - successes, successes])
    ordinal = Table(table, shift_zeros=False).test_ordinal_association(
        row_scores=scores, col_scores=np.array([0, 1])
    )
    np.testing.assert_allclose(trend.statistic, ordinal.zscore * np.sqrt(total / (total - 1)), rtol=RTOL)
    person_score = np.repeat(scores, totals)
    person_outcome = np.concatenate(
        [np.r_[np.zeros(n - x), np.ones(x)] for x, n in zip(successes, totals, strict=True)]
    )
    r = stats.pearsonr(person_score, person_outcome).statistic
    np.testing.assert_allclose(trend.statistic, np.sqrt(total) * r, rtol=RTOL)
    rescaled = cochran_armitage_counts(successes, totals, 2.5 * scores - 7)
    np.testing.assert_allclose([rescaled.statistic, rescaled.p], [trend.statistic, trend.p], rtol=RTOL)


def test_cochran_armitage_from_data(cohort: pd.DataFrame) -> None:
    """Per outcome: counts per ordered age group from its own non-missing rows, then the counts test;
    several outcomes at once; undefined (all or no successes) is NaN; non-binary outcomes are refused."""
    groups = ["<60", "60-69", "70+"]
    result = cochran_armitage(cohort, ["weak_grip", "t2d"], "age_group")
    for row in result.itertuples():
        samples = by_group(cohort, row.variable, "age_group", groups)
        expected = cochran_armitage_counts([s.sum() for s in samples], [s.size for s in samples])
        np.testing.assert_allclose([row.statistic, row.p], [expected.statistic, expected.p], rtol=RTOL)
        assert row.n == sum(s.size for s in samples)
    vectorised = cochran_armitage_counts([[1, 3, 6], [6, 3, 1]], [[10, 10, 10], [10, 10, 10]])
    np.testing.assert_allclose(vectorised.statistic, [15 / np.sqrt(40), -15 / np.sqrt(40)], rtol=EXACT)
    all_success = cochran_armitage(cohort.assign(all=1.0), ["all"], "age_group")
    assert np.isnan(all_success.loc[0, "statistic"]) and np.isnan(all_success.loc[0, "p"])
    with pytest.raises(ValueError, match="0/1"):
        cochran_armitage(cohort, ["activity"], "age_group")


# --- Table 1 ------------------------------------------------------------------------------------------------


def test_table_one_by_sex(cohort: pd.DataFrame) -> None:
    """n per sex, mean ± SD of non-missing values, Welch p for continuous and chi-square for categorical
    variables (bool columns categorical without being named), n (%) per level among non-missing."""
    frame = cohort.assign(t2d=cohort["t2d"].astype(bool))
    table = table_one(frame, "sex", ["age", "ff", "smoking", "t2d"], categorical=["smoking"], digits=2)
    assert list(table.columns) == ["variable", "level", "female", "male", "p", "test"]
    assert table.iloc[0][["female", "male"]].tolist() == frame["sex"].value_counts()[SEXES].tolist()
    rows = table.set_index(["variable", "level"])
    welch = t_test(frame, ["age", "ff"], "sex").set_index("variable")["p"]
    for variable in ("age", "ff"):
        for sex in SEXES:
            values = frame.loc[frame["sex"] == sex, variable]
            assert rows.loc[(variable, ""), sex] == f"{values.mean():.2f} ± {values.std():.2f}"
        assert rows.loc[(variable, ""), "p"] == welch[variable]
        assert rows.loc[(variable, ""), "test"] == "Welch t-test"
    chi = chi_square(frame, ["smoking", "t2d"], "sex").set_index("variable")
    assert rows.loc[("smoking", ""), "p"] == chi.loc["smoking", "p"]
    assert rows.loc[("t2d", ""), "test"] == "chi-square (Yates)"
    for sex in SEXES:
        smoking = frame.loc[frame["sex"] == sex, "smoking"].dropna()
        current = (smoking == "current").sum()
        assert rows.loc[("smoking", "current"), sex] == f"{current} ({100 * current / smoking.size:.2f}%)"
    assert [level for variable, level in rows.index if variable == "smoking"] == [
        "",
        "current",
        "never",
        "previous",
    ]


@pytest.mark.parametrize(("test", "name"), [("mannwhitney", "Mann–Whitney U"), ("student", "Student t-test")])
def test_table_one_continuous_test_is_a_parameter(cohort: pd.DataFrame, test: str, name: str) -> None:
    table = table_one(cohort, "sex", ["iron"], continuous_test=test).set_index("variable")
    function = {"mannwhitney": mann_whitney, "student": lambda *a: t_test(*a, equal_var=True)}[test]
    assert table.loc["iron", "p"] == function(cohort, ["iron"], "sex").loc[0, "p"]
    assert table.loc["iron", "test"] == name


def test_table_one_across_several_groups(cohort: pd.DataFrame) -> None:
    """ANOVA for more than two groups; the two-group tests refuse them."""
    table = table_one(cohort, "age_group", ["ff"], continuous_test="anova")
    assert list(table.columns) == ["variable", "level", "<60", "60-69", "70+", "p", "test"]
    assert table.loc[1, "p"] == one_way_anova(cohort, ["ff"], "age_group").loc[0, "p"]
    with pytest.raises(ValueError, match="exactly two groups"):
        table_one(cohort, "age_group", ["ff"])


def test_table_one_marks_what_cannot_be_computed() -> None:
    """A group without participants shows "– ± –" and "0 (–%)"; one value has a mean but no SD."""
    frame = pd.DataFrame(
        {
            "arm": pd.Categorical(["a", "a", "a", "b"], categories=["a", "b", "c"]),
            "x": [1.0, 2.0, 3.0, 5.0],
            "level": ["u", "v", "u", "v"],
        }
    )
    table = table_one(frame, "arm", ["x", "level"], continuous_test="anova").set_index(["variable", "level"])
    assert table.loc[("n", ""), ["a", "b", "c"]].tolist() == [3, 1, 0]
    assert table.loc[("x", ""), ["a", "b", "c"]].tolist() == ["2.0 ± 1.0", "5.0 ± –", "– ± –"]
    assert table.loc[("level", "u"), ["a", "b", "c"]].tolist() == ["2 (66.7%)", "0 (0.0%)", "0 (–%)"]
