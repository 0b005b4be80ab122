"""PheWAS of one IDP over ICD-10 categories (cohortscale.stats.phewas): code normalisation, case status,
every category's odds ratio per SD against statsmodels ``Logit`` within 1e-8 relative, and the Bonferroni
and Benjamini–Hochberg columns against statsmodels ``multipletests``."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from statsmodels.stats.multitest import multipletests

from cohortscale.stats.phewas import PHEWAS_COLUMNS, case_status, icd10_categories, phewas

RTOL = 1e-8  # relative agreement with statsmodels
N = 2500
MIN_CASES = 25


def cohort(seed: int = 31, n: int = N) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, float]]:
    """Participants (indexed by eid) with an IDP, age and sex, and their ICD-10 codes as field-41270-like
    array columns. Returns the table, the codes and each category's true log OR per SD."""
    rng = np.random.default_rng(seed)
    eids = pd.Index(1_000_000 + rng.choice(9_000_000, n, replace=False), name="eid")
    data = pd.DataFrame(
        {
            "ff": rng.normal(50.0, 10.8, n),
            "age": rng.normal(64.0, 7.8, n),
            "sex": rng.choice(["female", "male"], n),
        },
        index=eids,
    )
    data.loc[rng.random(n) < 0.04, "ff"] = np.nan
    z = ((data["ff"] - 50.0) / 10.8).fillna(0.0).to_numpy()
    effects = {}
    arrays = [[] for _ in range(n)]
    for j in range(30):
        category = f"{'EIMK'[j % 4]}{10 + j:02d}"
        effects[category] = effect = (0.5 if j % 3 == 0 else 0.0) * (-1) ** j
        prevalence = 1 / (1 + np.exp(-(-4.2 + 0.08 * j + effect * z + 0.02 * (data["age"].to_numpy() - 64))))
        for row in np.flatnonzero(rng.random(n) < prevalence):
            sub = rng.integers(0, 10)
            arrays[row].append(f"{category}{sub}" if rng.random() < 0.7 else f"{category}.{sub}")
            if rng.random() < 0.2:  # a second code of the same category
                arrays[row].append(f"{category}{(sub + 1) % 10}")
    width = max(map(len, arrays))
    codes = pd.DataFrame(
        [row + [None] * (width - len(row)) for row in arrays],
        index=eids,
        columns=[f"41270-0.{a}" for a in range(width)],
    )
    return data, codes, effects


@pytest.fixture(scope="module")
def study() -> tuple[pd.DataFrame, pd.DataFrame, dict[str, float]]:
    return cohort()


@pytest.fixture(scope="module")
def table(study) -> pd.DataFrame:
    data, codes, _ = study
    return phewas(data, "ff", codes, ("age", "sex"), min_cases=MIN_CASES)


def test_codes_normalised_to_categories() -> None:
    codes = pd.DataFrame(
        {"a": ["E119", " i10 ", "25000", None], "b": ["E11.9", "E117", pd.NA, "M8100"]},
        index=[1, 2, 3, 4],
    )
    pairs = icd10_categories(codes)
    assert sorted(map(tuple, pairs.to_numpy().tolist())) == [(1, "E11"), (2, "E11"), (2, "I10"), (4, "M81")]
    mapping = icd10_categories({1: ["E119", "E11.9"], 2: ["I10", "E117"], 3: ["25000"], 4: ["M8100"]})
    pd.testing.assert_frame_equal(
        mapping.sort_values(["participant", "category"], ignore_index=True),
        pairs.sort_values(["participant", "category"], ignore_index=True),
    )


def test_case_status_counts_and_threshold() -> None:
    codes = {1: ["E119"], 2: ["E112", "I10"], 3: ["I10"], 9: ["E110", "K21"]}
    status = case_status(pd.Index([1, 2, 3, 4]), codes, min_cases=2)
    assert status.columns.tolist() == ["E11", "I10"]  # K21 is only in a participant not analysed
    assert status["E11"].tolist() == [1.0, 1.0, 0.0, 0.0] and status["I10"].tolist() == [0.0, 1.0, 1.0, 0.0]


def test_every_category_equals_statsmodels(study, table) -> None:
    data, codes, _ = study
    assert list(table.columns) == list(PHEWAS_COLUMNS)
    analysed = data.dropna(subset=["ff", "age", "sex"])
    status = case_status(analysed.index, codes)
    expected_codes = sorted(status.columns[status.sum() >= MIN_CASES])
    assert sorted(table["code"]) == expected_codes and len(expected_codes) >= 15
    z = (analysed["ff"] - analysed["ff"].mean()) / analysed["ff"].std()
    design = np.column_stack([np.ones(len(analysed)), analysed["age"], analysed["sex"] == "male", z])
    for _, row in table.iterrows():
        fit = sm.Logit(status[row["code"]].to_numpy(), design.astype(float)).fit(
            method="newton", tol=1e-12, disp=0
        )
        np.testing.assert_allclose(
            row[["beta", "se", "z", "p", "or_"]].to_numpy(dtype=float),
            [fit.params[3], fit.bse[3], fit.tvalues[3], fit.pvalues[3], np.exp(fit.params[3])],
            rtol=RTOL,
            err_msg=row["code"],
        )
        assert row["n"] == len(analysed) and row["n_cases"] == status[row["code"]].sum()
        assert row["or_ci_low"] < row["or_"] < row["or_ci_high"]


def test_sorted_by_p_with_adjusted_columns(table) -> None:
    assert table["p"].is_monotonic_increasing
    p = table["p"].to_numpy()
    np.testing.assert_allclose(table["p_bonferroni"], multipletests(p, method="bonferroni")[1], rtol=1e-14)
    np.testing.assert_allclose(table["p_fdr"], multipletests(p, method="fdr_bh")[1], rtol=1e-14)


def test_true_associations_found(study, table) -> None:
    _, _, effects = study
    hits = set(table.loc[table["p_bonferroni"] < 0.05, "code"])
    strong = {code for code, effect in effects.items() if effect != 0 and code in set(table["code"])}
    assert hits <= set(effects) and len(hits & strong) >= len(strong) - 2
    assert not hits - strong  # no null category survives Bonferroni in this draw


def test_mapping_input_and_threshold(study, table) -> None:
    data, codes, _ = study
    mapping = {
        eid: [c for c in row if c is not None] for eid, row in zip(codes.index, codes.to_numpy(), strict=True)
    }
    from_mapping = phewas(data, "ff", mapping, ("age", "sex"), min_cases=MIN_CASES, profile_ci=False)
    pd.testing.assert_frame_equal(
        from_mapping.drop(columns=["or_ci_low", "or_ci_high"]),
        table.drop(columns=["or_ci_low", "or_ci_high"]),
    )
    assert phewas(data, "ff", codes, ("age", "sex"), min_cases=N).empty
