"""Design matrices for many regressions (cohortscale.stats.design): dummy coding and names as statsmodels
formulas give them, complete cases, strata, standardisation, weighted Gram matrices, dependent columns and
the grouping of outcomes by missingness pattern."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf

from cohortscale.stats.design import (
    INTERCEPT,
    PairProducts,
    column_sets,
    complete_rows,
    independent_columns,
    is_categorical,
    missingness_patterns,
    model_frame,
    name_list,
    strata_rows,
    term_columns,
)

TIGHT = 1e-12  # relative tolerance for float64 arithmetic


@pytest.fixture
def table() -> pd.DataFrame:
    """Twelve participants with numeric, text, category and bool columns, some missing."""
    return pd.DataFrame(
        {
            "age": [50.0, 61, 72, 55, np.nan, 66, 58, 70, 49, 63, 57, 68],
            "site": ["b", "a", "c", "a", "b", "c", "a", "b", None, "c", "a", "b"],
            "smoking": pd.Categorical(
                ["never", "current", "never", "previous", "never", "current"] * 2,
                categories=["never", "previous", "current", "unknown"],
            ),
            "t2d": [True, False, False, True, False, False, True, False, False, True, False, False],
            "sex": ["F", "M", "F", "M", "F", "M", None, "M", "F", "M", "F", "M"],
            "y1": np.arange(12.0),
            "y2": [np.nan, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11.0],
        }
    )


def test_categorical_dtypes(table: pd.DataFrame) -> None:
    assert [is_categorical(table[c]) for c in ("age", "site", "smoking", "t2d")] == [False, True, True, True]
    assert is_categorical(table["site"].astype(object))
    assert not is_categorical(pd.Series([1, 2], dtype="Int64"))


def test_name_list() -> None:
    assert name_list("fat") == ["fat"]
    assert name_list(("fat", "iron")) == ["fat", "iron"]
    assert name_list(pd.Index(["a", "b"])) == ["a", "b"]


def test_complete_rows(table: pd.DataFrame) -> None:
    expected = table["age"].notna() & table["site"].notna()
    np.testing.assert_array_equal(complete_rows(table, ["age", "site"]), expected.to_numpy())
    assert complete_rows(table, []).all()


def test_strata_sorted_and_missing_left_out(table: pd.DataFrame) -> None:
    strata = strata_rows(table, "sex")
    assert [level for level, _ in strata] == ["F", "M"]
    np.testing.assert_array_equal(strata[0][1], (table["sex"] == "F").to_numpy())
    assert sum(rows.sum() for _, rows in strata) == 11  # the participant without sex is in neither
    assert strata_rows(table, None)[0][0] is None


def test_dummies_first_level_reference_named_as_statsmodels(table: pd.DataFrame) -> None:
    rows = np.ones(len(table), dtype=bool)
    rows[8] = False  # the missing site
    columns, names = term_columns(table["site"], rows)
    assert names == ["site[T.b]", "site[T.c]"]
    np.testing.assert_array_equal(columns[:, 0], (table["site"][rows] == "b").to_numpy(dtype=float))
    # the same names as a statsmodels formula gives the same columns (levels all present)
    formula = smf.ols("y1 ~ site + t2d", table.iloc[:8]).fit().params.index.tolist()
    assert names[0] in formula and "t2d[T.True]" in formula
    assert term_columns(table["t2d"], rows)[1] == ["t2d[T.True]"]


def test_category_order_and_absent_levels(table: pd.DataFrame) -> None:
    rows = np.ones(len(table), dtype=bool)
    columns, names = term_columns(table["smoking"], rows)
    assert names == ["smoking[T.previous]", "smoking[T.current]"]  # category order; "unknown" absent
    only_never = (table["smoking"] == "never").to_numpy()
    columns, names = term_columns(table["smoking"], only_never)
    assert columns.shape == (only_never.sum(), 0) and names == []


def test_numeric_term(table: pd.DataFrame) -> None:
    rows = table["age"].notna().to_numpy()
    columns, names = term_columns(table["age"], rows)
    assert names == ["age"]
    np.testing.assert_array_equal(columns[:, 0], table["age"].dropna().to_numpy())


def test_model_frame_standardised_design(table: pd.DataFrame) -> None:
    frame = model_frame(table, ["y1", "y2"], "age", ["site", "t2d"])
    assert frame.names == (INTERCEPT, "site[T.b]", "site[T.c]", "t2d[T.True]", "age")
    assert frame.exposure == 4
    keep = complete_rows(table, ["age", "site", "t2d"])
    np.testing.assert_array_equal(frame.rows, keep)
    ages = table["age"][keep].to_numpy()
    np.testing.assert_allclose(frame.x[:, -1] * frame.scale[-1], ages - ages.mean(), rtol=TIGHT, atol=1e-12)
    np.testing.assert_allclose(frame.scale[-1], ages.std(), rtol=TIGHT)
    np.testing.assert_allclose(frame.x[:, 1:].mean(axis=0), 0.0, atol=1e-14)
    assert frame.x[:, 0].tolist() == [1.0] * keep.sum()
    np.testing.assert_array_equal(frame.present[:, 1], ~np.isnan(table["y2"][keep].to_numpy()))


def test_model_frame_rejects_categorical_exposure(table: pd.DataFrame) -> None:
    with pytest.raises(TypeError, match="numeric or bool"):
        model_frame(table, ["y1"], "site")
    frame = model_frame(table, ["y1"], "t2d")  # bool exposure enters as 0/1
    assert frame.names[-1] == "t2d"


def test_weighted_gram_matches_explicit_product() -> None:
    rng = np.random.default_rng(3)
    x, w = rng.normal(size=(40, 4)), rng.random((40, 3))
    gram = PairProducts.of(x).gram(w)
    for g in range(3):
        np.testing.assert_allclose(gram[g], x.T @ (w[:, g, None] * x), rtol=TIGHT)


def test_gram_of_rows_dense_and_sparse_agree_with_explicit_products() -> None:
    """Masks missing few rows (all rows less a sparse sum over the missing) and many (dense product) give
    xᵀx over each mask's rows to 1e-12."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(400, 5))
    pairs = PairProducts.of(x)
    for absent_share in (0.03, 0.6):
        present = rng.random((400, 7)) >= absent_share
        gram = pairs.gram_of_rows(present)
        for g in range(7):
            rows = x[present[:, g]]
            np.testing.assert_allclose(gram[g], rows.T @ rows, rtol=1e-12, atol=1e-9)


def test_dependent_columns_are_dropped() -> None:
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=50), rng.normal(size=50)
    designs = {
        "full rank": np.column_stack([np.ones(50), a, b]),
        "constant": np.column_stack([np.ones(50), np.full(50, 3.0), b]),
        "zero": np.column_stack([np.ones(50), np.zeros(50), b]),
        "combination": np.column_stack([np.ones(50), a, 2 * a - 1]),
    }
    grams = np.stack([x.T @ x for x in designs.values()])
    keep = independent_columns(grams)
    assert keep.tolist() == [
        [True, True, True],
        [True, False, True],
        [True, False, True],
        [True, True, False],
    ]


def test_outcomes_grouped_by_missingness_pattern() -> None:
    rng = np.random.default_rng(5)
    n = 30
    data = pd.DataFrame({"x": rng.normal(size=n), "group": rng.choice(["a", "b"], n)})
    data.loc[data.index[:2], "group"] = "c"  # a rare level
    shared = rng.random(n) < 0.2
    for i in range(4):
        data[f"y{i}"] = np.where(shared, np.nan, rng.normal(size=n))
    data["own"] = np.where(rng.random(n) < 0.3, np.nan, 1.0)
    data["no_c"] = np.where(data["group"] == "c", np.nan, 2.0)  # the rare level missing
    frame = model_frame(data, ["y0", "own", "y1", "y2", "no_c", "y3"], "x", ["group"])
    patterns = missingness_patterns(frame)
    assert patterns.of_outcome.tolist() == [0, 1, 0, 0, 2, 0]
    for g in range(3):
        rows = patterns.rows[:, g]
        np.testing.assert_allclose(patterns.gram[g], frame.x[rows].T @ frame.x[rows], rtol=TIGHT, atol=1e-12)
    c_level = frame.names.index("group[T.c]")
    assert patterns.keep[:2].all() and not patterns.keep[2, c_level] and patterns.keep[2].sum() == 3
    sets = sorted((cols.tolist(), outs.tolist()) for cols, outs in column_sets(patterns))
    assert sets == [([0, 1, 2, 3], [0, 1, 2, 3, 5]), ([0, 1, 3], [4])]
