"""Correlation matrices (cohortscale.stats.correlation): every pair against scipy.stats.pearsonr /
spearmanr on the pair's complete rows, with different missingness per column, ties and large offsets;
the rank helper against scipy.stats.rankdata; significance against statsmodels' multipletests."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests

from cohortscale.stats.correlation import (
    MIN_OBSERVATIONS,
    SortedVariables,
    correlation_matrix,
    neg_log10_p,
    significant,
)

RTOL = 1e-8  # relative tolerance against scipy
EXACT = 1e-12  # relative tolerance for values worked out by hand
SEED = 8
N = 240
SCIPY = {"pearson": stats.pearsonr, "spearman": stats.spearmanr}


@pytest.fixture(scope="module")
def idps() -> pd.DataFrame:
    """IDP-like columns with their own missingness; rounding makes ties."""
    rng = np.random.default_rng(SEED)
    age = rng.normal(65, 7.5, N).round()  # whole years: many ties
    ff = 20 + 0.45 * age + rng.normal(0, 8, N)
    frame = pd.DataFrame(
        {
            "age": age,
            "ff": ff.round(1),
            "pdff": 0.8 * ff + rng.normal(0, 3, N),
            "tmv_cm3": 9322 + 2277 * rng.normal(size=N) - 20 * age,  # large offset relative to its spread
        }
    )
    frame.loc[rng.random(N) < 0.15, "ff"] = np.nan
    frame.loc[rng.random(N) < 0.30, "pdff"] = np.nan
    frame.loc[rng.random(N) < 0.05, "age"] = np.nan
    return frame


@pytest.fixture(scope="module")
def covariates(idps: pd.DataFrame) -> pd.DataFrame:
    """Covariates on the same participants: a monotone non-linear one, a coarse score, a sparse one."""
    rng = np.random.default_rng(SEED + 1)
    frame = pd.DataFrame(
        {
            "vat_l": np.exp(idps["age"].fillna(65) / 20) + rng.normal(0, 1, N),
            "activity": rng.integers(0, 4, N).astype(float),  # 4 levels: heavy ties
            "igf1": rng.normal(21, 5, N),
        },
        index=idps.index,
    )
    frame.loc[rng.random(N) < 0.6, "igf1"] = np.nan
    return frame


def reference(x: pd.Series, y: pd.Series, method: str) -> tuple[float, float, int]:
    """scipy's r and p on the rows where both are present, and their number."""
    both = x.notna() & y.notna()
    result = SCIPY[method](x[both], y[both])
    return float(result.statistic), float(result.pvalue), int(both.sum())


@pytest.mark.parametrize("method", ["pearson", "spearman"])
def test_every_pair_matches_scipy(idps: pd.DataFrame, covariates: pd.DataFrame, method: str) -> None:
    """x × y: r and p within 1e-8 of scipy on each pair's complete rows; n is that pair's row count."""
    result = correlation_matrix(idps, covariates, method=method)
    assert list(result.r.index) == list(idps.columns) and list(result.r.columns) == list(covariates.columns)
    ns = set()
    for a in idps:
        for b in covariates:
            r, p, n = reference(idps[a], covariates[b], method)
            np.testing.assert_allclose(result.r.loc[a, b], r, rtol=RTOL, err_msg=f"{a} × {b}")
            np.testing.assert_allclose(result.p.loc[a, b], p, rtol=RTOL, err_msg=f"{a} × {b}")
            assert result.n.loc[a, b] == n
            ns.add(n)
    assert len(ns) >= 5  # missingness differs per pair, so n does


@pytest.mark.parametrize("method", ["pearson", "spearman"])
def test_symmetric_matrix(idps: pd.DataFrame, method: str) -> None:
    """x with itself: symmetric, 1 on the diagonal, each distinct pair once in the tidy table."""
    result = correlation_matrix(idps, method=method)
    np.testing.assert_allclose(result.r.to_numpy(), result.r.to_numpy().T, rtol=EXACT)
    np.testing.assert_allclose(np.diag(result.r), 1.0, rtol=EXACT)
    np.testing.assert_array_equal(np.diag(result.n), idps.notna().sum().to_numpy())
    tidy = result.tidy()
    columns = list(idps.columns)
    assert [(a, b) for a, b in zip(tidy["x"], tidy["y"], strict=True)] == [
        (columns[i], columns[j]) for i in range(len(columns)) for j in range(i + 1, len(columns))
    ]
    for row in tidy.itertuples():
        r, p, n = reference(idps[row.x], idps[row.y], method)
        np.testing.assert_allclose([row.r, row.p], [r, p], rtol=RTOL)
        assert row.n == n


def test_tidy_table_of_a_rectangular_matrix(idps: pd.DataFrame, covariates: pd.DataFrame) -> None:
    """Every (x, y) pair once, values as in the wide frames, −log10 p alongside."""
    result = correlation_matrix(idps, covariates, method="spearman")
    tidy = result.tidy()
    assert list(tidy.columns) == ["x", "y", "r", "p", "n", "neg_log10_p"]
    assert len(tidy) == idps.shape[1] * covariates.shape[1]
    for row in tidy.itertuples():
        assert row.r == result.r.loc[row.x, row.y] and row.n == result.n.loc[row.x, row.y]
        np.testing.assert_allclose(row.neg_log10_p, -np.log10(row.p), rtol=EXACT)


def test_hand_computed_case() -> None:
    """x = 1..5, y = 2 1 4 3 5: deviations give Σxy = 8, Σx² = Σy² = 10, so r = 0.8 for both methods (the
    values are their own ranks); t = 0.8 √(3 / 0.36) on 3 df."""
    frame = pd.DataFrame({"x": [1.0, 2, 3, 4, 5], "y": [2.0, 1, 4, 3, 5]})
    t = 0.8 * np.sqrt(3 / 0.36)
    for method in ("pearson", "spearman"):
        result = correlation_matrix(frame, method=method)
        assert result.r.loc["x", "y"] == pytest.approx(0.8, rel=EXACT)
        assert result.p.loc["x", "y"] == pytest.approx(2 * stats.t.sf(t, 3), rel=1e-10)
        assert result.n.loc["x", "y"] == 5


def test_pearson_is_accurate_far_from_zero() -> None:
    """Values offset by 1e6 with unit spread (sums of raw values would cancel) still match scipy."""
    rng = np.random.default_rng(SEED)
    frame = pd.DataFrame({"a": 1e6 + rng.normal(size=500)})
    frame["b"] = 1e6 + 0.05 * (frame["a"] - 1e6) + rng.normal(size=500)
    frame.loc[::3, "b"] = np.nan
    r, p, _ = reference(frame["a"], frame["b"], "pearson")
    result = correlation_matrix(frame)
    np.testing.assert_allclose([result.r.loc["a", "b"], result.p.loc["a", "b"]], [r, p], rtol=RTOL)


def test_undefined_pairs_are_nan() -> None:
    """A column constant over a pair's rows (though not over all its rows), or fewer than three rows, gives
    NaN r and p (not ±1)."""
    frame = pd.DataFrame(
        {
            "x": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
            "first_four": [1.0, 2.5, 3.0, 4.0, np.nan, np.nan],
            "constant_on_first_four": [0.7, 0.7, 0.7, 0.7, 9.0, 11.0],
            "two_rows": [np.nan, np.nan, np.nan, np.nan, 1.0, 3.0],
            "three_rows": [np.nan, np.nan, np.nan, 2.0, 1.0, 3.0],
        }
    )
    for method in ("pearson", "spearman"):
        result = correlation_matrix(frame, method=method)
        for a, b in [("first_four", "constant_on_first_four"), ("x", "two_rows")]:
            assert np.isnan(result.r.loc[a, b]) and np.isnan(result.p.loc[a, b])
        assert result.n.loc["first_four", "constant_on_first_four"] == 4
        assert result.n.loc["x", "two_rows"] == MIN_OBSERVATIONS - 1
        r, p, _ = reference(frame["x"], frame["three_rows"], method)
        np.testing.assert_allclose([result.r.loc["x", "three_rows"], result.p.loc["x", "three_rows"]], [r, p])


def test_nullable_and_infinite_values_are_missing() -> None:
    """pandas NA (nullable dtypes) and ±inf count as missing, like NaN."""
    rng = np.random.default_rng(SEED)
    a = rng.normal(size=60)
    b = a + rng.normal(size=60)
    plain = pd.DataFrame({"a": a, "b": b})
    plain.loc[:9, "a"] = np.nan
    plain.loc[50:, "b"] = np.nan
    nullable = plain.astype("Float64")
    with_inf = plain.copy()
    with_inf.loc[:9, "a"] = np.inf
    expected = correlation_matrix(plain, method="spearman")
    for frame in (nullable, with_inf):
        result = correlation_matrix(frame, method="spearman")
        pd.testing.assert_frame_equal(result.r, expected.r)
        pd.testing.assert_frame_equal(result.n, expected.n)


def test_invalid_input_is_refused(idps: pd.DataFrame, covariates: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="same rows"):
        correlation_matrix(idps, covariates.iloc[:-1])
    with pytest.raises(ValueError, match="unknown method"):
        correlation_matrix(idps, method="kendall")  # type: ignore[arg-type]


# --- ranks within subsets -----------------------------------------------------------------------------------


def test_ranks_and_ties_within_subsets_match_rankdata() -> None:
    """Average ranks of one variable within many row subsets, and of many variables within one subset each,
    equal rankdata on the kept values; Σ(t³ − t) equals the count of each tie run."""
    rng = np.random.default_rng(SEED)
    values = rng.integers(0, 6, size=(3, 50)).astype(float)  # heavy ties
    values[rng.random(values.shape) < 0.2] = np.nan
    subsets = rng.random((4, 50)) < 0.7
    sort = SortedVariables.of(values)
    one_against_many = sort.variable(1).ranks(subsets)
    many_against_one = sort.ranks(subsets[:3])
    for ranks, rows, variable in [
        (one_against_many, range(4), [1] * 4),
        (many_against_one, range(3), range(3)),
    ]:
        for row, v in zip(rows, variable, strict=True):
            kept = subsets[row] & ~np.isnan(values[v])
            np.testing.assert_array_equal(ranks[row][kept], stats.rankdata(values[v][kept]))
            assert np.isnan(ranks[row][~kept]).all()
    ties = sort.tie_term(subsets[:3])
    for v in range(3):
        _, counts = np.unique(values[v][subsets[v] & ~np.isnan(values[v])], return_counts=True)
        assert ties[v] == (counts**3 - counts).sum()


# --- significance -------------------------------------------------------------------------------------------


def test_bonferroni_threshold_counts_the_pairs(idps: pd.DataFrame, covariates: pd.DataFrame) -> None:
    """Threshold alpha / (pairs with a p-value); significant is p ≤ threshold; −log10 of the threshold."""
    result = correlation_matrix(idps, covariates, method="spearman")
    sig = significant(result, alpha=0.05)
    assert sig.tests == idps.shape[1] * covariates.shape[1]
    assert sig.threshold == pytest.approx(0.05 / sig.tests, rel=EXACT)
    assert sig.neg_log10_threshold == pytest.approx(-np.log10(0.05 / sig.tests), rel=EXACT)
    reject, adjusted, _, _ = multipletests(sig.table["p"], alpha=0.05, method="bonferroni")
    np.testing.assert_array_equal(sig.table["significant"], reject)
    np.testing.assert_allclose(sig.table["p_adjusted"], adjusted, rtol=EXACT)
    assert sig.table["significant"].any() and not sig.table["significant"].all()


def test_fdr_significance_of_a_symmetric_matrix(idps: pd.DataFrame) -> None:
    """Symmetric matrix: the family is the distinct pairs; BH decisions equal statsmodels'."""
    sig = significant(correlation_matrix(idps), alpha=0.05, correction="fdr_bh")
    k = idps.shape[1]
    assert sig.tests == k * (k - 1) // 2
    reject, adjusted, _, _ = multipletests(sig.table["p"], alpha=0.05, method="fdr_bh")
    np.testing.assert_array_equal(sig.table["significant"], reject)
    np.testing.assert_allclose(sig.table["p_adjusted"], adjusted, rtol=EXACT)


def test_neg_log10_p_keeps_the_container() -> None:
    p = pd.DataFrame([[0.01, 1.0], [0.0, np.nan]], columns=["a", "b"])
    out = neg_log10_p(p)
    assert isinstance(out, pd.DataFrame)
    np.testing.assert_allclose(out.to_numpy(), [[2.0, 0.0], [np.inf, np.nan]], rtol=EXACT)
