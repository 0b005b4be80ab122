"""Synthetic UK Biobank population: marginals, effects, prevalences and the ukbconv table.

The published figures come from ``shared/STUDIES.md`` §1–2. One 100,000-participant cohort is drawn once
per module (its generation time is itself a tested product requirement).
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import json
import re
import time
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf

from cohortscale.synth import population as population_module
from cohortscale.synth.population import (
    FIELD_SPINE_TSCORE,
    MEDICATION_CODES,
    PUBLISHED_MARGINALS,
    SELF_REPORT_CODES,
    TRUTH_IDP_COLUMNS,
    GenerativeModel,
    ObservationModel,
    simulate_population,
    to_ukbconv,
    truth_idps,
)
from cohortscale.synth.relaxation import dixon_fat_fraction

N = 100_000
SEED = 2024
TOLERANCE = 0.05  # relative, on means and SDs


REQUIRED_COLUMNS = (
    "sex age height_cm weight_kg bmi waist_cm hip_cm centre imaging_date baseline_date ethnicity "
    "townsend igf1 smoking alcohol met_vigorous days_vigorous grip_left_kg grip_right_kg grip_kg "
    "lean_arms_kg lean_legs_kg lean_trunk_kg lean_total_kg alm_kg almi spine_bmd spine_tscore t2d "
    "osteoporosis back_pain low_grip low_muscle sarcopenia frail weight_loss exhaustion low_activity "
    "slow_walking falls died death_date repeat_visit repeat_date repeat_age vbm_pdff vbm_ff "
    "marrow_t1_water_s vbm_iron vbm_r2star femur_pdff liver_pdff liver_r2star tmv_cm3 pa_ratio "
    "thigh_asymmetry vat_l asat_l muscle_fat_infiltration_pct"
).split()

T2D_ICD = re.compile(r"^E11")
OSTEO_ICD = re.compile(r"^M8[0-2]")


@pytest.fixture(scope="module")
def cohort() -> SimpleNamespace:
    start = time.perf_counter()
    pop = simulate_population(N, SEED)
    mid = time.perf_counter()
    table = to_ukbconv(pop, SEED)
    end = time.perf_counter()
    return SimpleNamespace(
        pop=pop,
        table=table.set_index("eid", drop=False),
        raw=table,
        simulate_s=mid - start,
        total_s=end - start,
    )


@pytest.fixture(scope="module")
def small() -> pd.DataFrame:
    return simulate_population(2_000, 7)


def _fields(table: pd.DataFrame, field_id: int, instance: int) -> pd.DataFrame:
    prefix = f"{field_id}-{instance}."
    return table[[c for c in table.columns if c.startswith(prefix)]]


def _has_code(table: pd.DataFrame, field_id: int, instance: int, codes) -> pd.Series:
    block = _fields(table, field_id, instance)
    return block.isin(list(codes)).any(axis=1)


def _tertile_odds_ratio(pop: pd.DataFrame, outcome: pd.Series) -> float:
    """OR of ``outcome`` for the top vs the bottom P/A tertile, adjusted for age and sex."""
    q1, q2 = pop["pa_ratio"].quantile([1 / 3, 2 / 3])
    keep = (pop["pa_ratio"] <= q1) | (pop["pa_ratio"] >= q2)
    data = pd.DataFrame(
        {
            "y": outcome[keep].astype(float),
            "top": (pop.loc[keep, "pa_ratio"] >= q2).astype(float),
            "age": pop.loc[keep, "age"],
            "sex": pop.loc[keep, "sex"].astype(float),
        }
    )
    fit = smf.logit("y ~ top + age + sex", data=data).fit(disp=0)
    return float(np.exp(fit.params["top"]))


# -- speed, determinism, identifiers ---------------------------------------------------------------------


def test_generation_time_100k(cohort: SimpleNamespace) -> None:
    print(f"\nsimulate_population({N}): {cohort.simulate_s:.2f} s; with to_ukbconv: {cohort.total_s:.2f} s")
    assert cohort.total_s < 60.0
    assert len(cohort.pop) == N and len(cohort.raw) == N


def test_same_seed_same_frames_and_different_seed_differs(small: pd.DataFrame) -> None:
    again = simulate_population(2_000, 7)
    pd.testing.assert_frame_equal(small, again)
    pd.testing.assert_frame_equal(to_ukbconv(small, 7), to_ukbconv(again, 7))
    other = simulate_population(2_000, 8)
    assert not np.array_equal(other.index, small.index)
    assert not np.allclose(other["vbm_pdff"].to_numpy(), small["vbm_pdff"].to_numpy())
    assert not to_ukbconv(small, 8).equals(to_ukbconv(small, 7))


def test_eids_unique_seven_digit_sorted(cohort: SimpleNamespace) -> None:
    eid = cohort.pop.index
    assert eid.name == "eid"
    assert eid.is_unique and eid.is_monotonic_increasing
    assert eid.min() >= 1_000_000 and eid.max() <= 6_025_000
    assert (eid.astype(str).str.len() == 7).all()


def test_required_columns_and_truth_idps(cohort: SimpleNamespace) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in cohort.pop.columns]
    assert not missing
    truth = truth_idps(cohort.pop)
    assert tuple(truth.columns) == TRUTH_IDP_COLUMNS
    assert truth.index.name == "eid"
    pd.testing.assert_frame_equal(truth, cohort.pop[list(TRUTH_IDP_COLUMNS)])
    assert truth.notna().all().all()


def test_invalid_arguments_raise() -> None:
    with pytest.raises(ValueError):
        simulate_population(0, 1)
    with pytest.raises(ValueError):
        simulate_population(10, -1)
    with pytest.raises(ValueError):
        simulate_population(10, 1, repeat_visit_rate=1.5)


def test_every_model_coefficient_is_documented_and_serialisable() -> None:
    tree = ast.parse(inspect.getsource(population_module))
    for cls in (GenerativeModel, ObservationModel):
        node = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls.__name__)
        body = node.body
        documented = {
            stmt.target.id
            for stmt, nxt in zip(body, [*body[1:], None], strict=True)
            if isinstance(stmt, ast.AnnAssign)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        }
        names = {f.name for f in dataclasses.fields(cls)}
        assert names == documented, sorted(names - documented)
    json.dumps(dataclasses.asdict(GenerativeModel()))


# -- marginals and prevalences ---------------------------------------------------------------------------


def test_marginals_match_published_by_sex(cohort: SimpleNamespace) -> None:
    pop = cohort.pop
    rows, failures = [], []
    for column, by_sex in PUBLISHED_MARGINALS.items():
        for sex, (mean, sd) in enumerate(by_sex):
            values = pop.loc[pop["sex"] == sex, column]
            got_mean, got_sd = values.mean(), values.std()
            rows.append(
                f"{column:10s} {'FM'[sex]} mean {got_mean:9.3f} vs {mean:9.3f} "
                f"({got_mean / mean - 1:+.3f})  SD {got_sd:8.3f} vs {sd:8.3f} "
                f"({got_sd / sd - 1:+.3f})"
            )
            if abs(got_mean / mean - 1) > TOLERANCE or abs(got_sd / sd - 1) > TOLERANCE:
                failures.append(rows[-1])
    print("\n" + "\n".join(rows))
    assert not failures, failures
    women = (pop["sex"] == 0).mean()
    assert 0.49 <= women <= 0.53
    # BMI right-skewed, grip left-skewed
    for sex in (0, 1):
        sub = pop[pop["sex"] == sex]
        assert sub["bmi"].skew() > 0.3
        assert sub["grip_kg"].skew() < -0.2


def test_prevalences(cohort: SimpleNamespace) -> None:
    pop = cohort.pop
    bands = {
        "t2d": (0.047, 0.061),
        "osteoporosis": (0.084, 0.104),
        "back_pain": (0.17, 0.21),
        "frail": (0.006, 0.016),
        "sarcopenia": (0.007, 0.016),
        "low_grip": (0.08, 0.13),
        "low_muscle": (0.03, 0.08),
        "died": (0.015, 0.05),
        "repeat_visit": (0.045, 0.055),
    }
    rates = {k: pop[k].mean() for k in bands}
    print("\n" + "  ".join(f"{k} {v:.2%}" for k, v in rates.items()))
    for k, (lo, hi) in bands.items():
        assert lo <= rates[k] <= hi, (k, rates[k])
    women = pop["sex"] == 0
    assert pop.loc[women, "osteoporosis"].mean() > 2.5 * pop.loc[~women, "osteoporosis"].mean()
    assert pop["ethnicity"].eq(1001).mean() > 0.8
    assert 0.15 <= (pop["falls"] > 1).mean() <= 0.3


def test_liver_and_adipose_marginals(cohort: SimpleNamespace) -> None:
    pop = cohort.pop
    assert 2.0 <= pop["liver_pdff"].median() <= 3.0
    assert 0.15 <= (pop["liver_pdff"] > 5).mean() <= 0.25
    assert pop["liver_pdff"].skew() > 1.0
    assert 33.0 <= pop["liver_r2star"].mean() <= 37.0 and 6.5 <= pop["liver_r2star"].std() <= 9.5
    women, men = pop[pop["sex"] == 0], pop[pop["sex"] == 1]
    assert abs(men["vat_l"].mean() - 4.5) < 0.3 and abs(men["vat_l"].std() - 2.0) < 0.3
    assert abs(women["vat_l"].mean() - 2.5) < 0.3 and abs(women["vat_l"].std() - 1.4) < 0.3
    assert women["asat_l"].mean() > men["asat_l"].mean()
    mfi = pop["muscle_fat_infiltration_pct"]
    assert abs(mfi.mean() - 7.0) < 0.7 and abs(mfi.std() - 2.0) < 0.5
    assert abs(pop["thigh_asymmetry"].mean()) < 0.01 and 0.02 < pop["thigh_asymmetry"].std() < 0.04
    assert (pop["femur_pdff"].between(60, 98)).all() and 80 <= pop["femur_pdff"].mean() <= 90


# -- internal consistency --------------------------------------------------------------------------------


def test_derived_columns_are_consistent(cohort: SimpleNamespace) -> None:
    pop = cohort.pop
    h2 = (pop["height_cm"] / 100) ** 2
    np.testing.assert_allclose(pop["weight_kg"], pop["bmi"] * h2, rtol=1e-9)
    np.testing.assert_allclose(pop["alm_kg"], pop["lean_arms_kg"] + pop["lean_legs_kg"], rtol=1e-9)
    np.testing.assert_allclose(pop["almi"], pop["alm_kg"] / h2, rtol=1e-9)
    assert (pop["lean_total_kg"] > pop["alm_kg"] + pop["lean_trunk_kg"]).all()
    np.testing.assert_array_equal(pop["grip_kg"], np.maximum(pop["grip_left_kg"], pop["grip_right_kg"]))
    men = pop["sex"] == 1
    assert (pop["low_grip"] == np.where(men, pop["grip_kg"] < 27, pop["grip_kg"] < 16)).all()
    assert (pop["low_muscle"] == np.where(men, pop["almi"] < 7.0, pop["almi"] < 5.5)).all()
    assert (pop["sarcopenia"] == (pop["low_grip"] & pop["low_muscle"])).all()
    count = pop[["weight_loss", "exhaustion", "low_activity", "slow_walking", "low_grip"]].sum(axis=1)
    assert (pop["frail"] == (count >= 3)).all()
    assert (pop.loc[pop["low_activity"], "days_vigorous"] == 0).all()
    assert ((pop["met_vigorous"] > 0) == (pop["days_vigorous"] > 0)).all()
    np.testing.assert_allclose(pop["vbm_r2star"], (pop["vbm_iron"] - 0.202) / 0.0254, rtol=1e-9)
    t1 = pop["marrow_t1_water_s"]
    assert t1.between(0.4, 1.2).all()
    ff = 100 * dixon_fat_fraction(pop["vbm_pdff"] / 100, t1, tr_s=6.69e-3, flip_angle_deg=10.0)
    np.testing.assert_allclose(pop["vbm_ff"], ff, rtol=1e-9)
    assert (pop["vbm_ff"] > pop["vbm_pdff"]).all()
    assert (pop["femur_pdff"] > pop["vbm_pdff"]).mean() > 0.99
    osteo = pop["osteoporosis_clinical"] | (pop["spine_tscore"] <= -2.5)
    assert (pop["osteoporosis"] == osteo).all()


def test_dates_and_visits(cohort: SimpleNamespace) -> None:
    pop = cohort.pop
    assert pop["imaging_date"].dt.year.between(2014, 2020).all()
    assert pop["baseline_date"].dt.year.between(2006, 2010).all()
    interval = (pop["imaging_date"] - pop["baseline_date"]).dt.days / 365.25
    assert 8.5 <= interval.mean() <= 10.0 and 1.5 <= interval.std() <= 2.5
    baseline_age = pop["age"] - interval
    assert baseline_age.between(39.9, 70.1).all()
    assert pop["age"].between(45, 82).all()
    assert pop["centre"].isin([11025, 11026, 11027, 11028]).all()
    died = pop["died"]
    assert (pop["death_date"].notna() == died).all()
    assert (pop.loc[died, "death_date"] > pop.loc[died, "imaging_date"]).all()
    assert (pop.loc[died, "death_date"] <= pd.Timestamp("2023-03-31")).all()
    rep = pop["repeat_visit"]
    assert (pop["repeat_date"].notna() == rep).all() and (pop["repeat_age"].notna() == rep).all()
    gap = pop.loc[rep, "repeat_age"] - pop.loc[rep, "age"]
    assert gap.between(1.8, 3.5).all() and 2.0 <= gap.mean() <= 3.0
    assert not (rep & died & (pop["death_date"] <= pop["repeat_date"])).any()
    assert pop.loc[~rep, ["repeat_height_cm", "repeat_weight_kg", "repeat_grip_kg"]].isna().all().all()
    assert pop.loc[rep, ["repeat_height_cm", "repeat_weight_kg", "repeat_grip_kg"]].notna().all().all()


# -- effects -----------------------------------------------------------------------------------------------


def test_vbm_pdff_rises_with_age_within_sex(cohort: SimpleNamespace) -> None:
    for sex in (0, 1):
        sub = cohort.pop[cohort.pop["sex"] == sex]
        r = np.corrcoef(sub["age"], sub["vbm_pdff"])[0, 1]
        print(f"\ncorr(age, vbm_pdff) sex={sex}: {r:.3f}")
        assert 0.2 <= r <= 0.35


def test_t2d_raises_pdff_by_published_amount(cohort: SimpleNamespace) -> None:
    for sex, published in ((0, 2.4), (1, 1.7)):
        sub = cohort.pop[cohort.pop["sex"] == sex].assign(
            t2d=lambda d: d["t2d"].astype(float),
            log_vat=lambda d: np.log(d["vat_l"]),
            log_tmv=lambda d: np.log(d["tmv_cm3"]),
        )
        age_only = smf.ols("vbm_pdff ~ t2d + age", data=sub).fit().params["t2d"]
        full = smf.ols("vbm_pdff ~ t2d + age + log_vat + spine_bmd + log_tmv", data=sub).fit()
        print(
            f"\nT2D PDFF effect sex={sex}: age-adjusted {age_only:.2f}, "
            f"fully adjusted {full.params['t2d']:.2f} (published {published})"
        )
        assert abs(age_only - published) <= 0.6
        assert abs(full.params["t2d"] - published) <= 0.6
        # the other generative effects: up with VAT, down with BMD and muscle
        assert full.params["log_vat"] > 0 and full.pvalues["log_vat"] < 1e-6
        assert full.params["spine_bmd"] < 0 and full.pvalues["spine_bmd"] < 1e-6
        assert full.params["log_tmv"] < 0 and full.pvalues["log_tmv"] < 1e-6


def test_iron_lower_with_t2d(cohort: SimpleNamespace) -> None:
    for sex in (0, 1):
        sub = cohort.pop[cohort.pop["sex"] == sex].assign(t2d=lambda d: d["t2d"].astype(float))
        fit = smf.ols("np.log(vbm_iron) ~ t2d + age", data=sub).fit()
        assert fit.params["t2d"] < 0 and fit.pvalues["t2d"] < 1e-6
        assert sub.loc[sub["t2d"] == 1, "vbm_iron"].mean() < sub.loc[sub["t2d"] == 0, "vbm_iron"].mean()


def test_ff_tracks_pdff(cohort: SimpleNamespace) -> None:
    for sex in (0, 1):
        sub = cohort.pop[cohort.pop["sex"] == sex]
        r = np.corrcoef(sub["vbm_pdff"], sub["vbm_ff"])[0, 1]
        print(f"\ncorr(vbm_pdff, vbm_ff) sex={sex}: {r:.3f}")
        assert 0.83 <= r <= 0.93


def test_thigh_muscle_concordance_with_dxa_and_age_decline(cohort: SimpleNamespace) -> None:
    pop = cohort.pop
    r_legs = np.corrcoef(pop["tmv_cm3"], pop["lean_legs_kg"])[0, 1]
    tvi = pop["tmv_cm3"] / (pop["height_cm"] / 100) ** 2
    r_almi = np.corrcoef(tvi, pop["almi"])[0, 1]
    print(f"\ncorr(TMV, leg lean) {r_legs:.3f} (0.936); corr(TVI, ALMI) {r_almi:.3f} (0.885)")
    assert abs(r_legs - 0.936) <= 0.03
    assert abs(r_almi - 0.885) <= 0.03
    for sex in (0, 1):
        sub = pop[pop["sex"] == sex]
        slope = smf.ols("tmv_cm3 ~ age", data=sub).fit().params["age"]
        per_decade = 10 * slope / sub["tmv_cm3"].mean()
        assert -0.08 <= per_decade <= -0.02
        fit = smf.ols("tmv_cm3 ~ height_cm + weight_kg + age", data=sub).fit()
        assert fit.params["height_cm"] > 0 and fit.params["weight_kg"] > 0
    assert pop.loc[pop["sex"] == 1, "tmv_cm3"].mean() > 1.3 * pop.loc[pop["sex"] == 0, "tmv_cm3"].mean()


def test_grip_depends_on_muscle_age_and_sex(cohort: SimpleNamespace) -> None:
    fit = smf.ols("grip_kg ~ np.log(tmv_cm3) + age + sex", data=cohort.pop).fit()
    assert fit.params["np.log(tmv_cm3)"] > 0 and fit.params["age"] < 0 and fit.params["sex"] > 0


def test_pa_ratio_tertile_odds_ratios(cohort: SimpleNamespace) -> None:
    pop = cohort.pop
    odds = {
        "weak grip": (_tertile_odds_ratio(pop, pop["low_grip"]), 1.60, (1.3, 1.95)),
        "sarcopenia": (_tertile_odds_ratio(pop, pop["sarcopenia"]), 1.42, (1.1, 1.9)),
        "mortality": (_tertile_odds_ratio(pop, pop["died"]), 1.49, (1.2, 1.85)),
        "falls": (_tertile_odds_ratio(pop, pop["falls"] > 1), 1.12, (1.02, 1.25)),
        "low muscle": (_tertile_odds_ratio(pop, pop["low_muscle"]), 1.02, (0.85, 1.2)),
    }
    print("\n" + "  ".join(f"{k} OR {v:.2f} (published {p})" for k, (v, p, _) in odds.items()))
    for name, (value, _, (lo, hi)) in odds.items():
        assert lo <= value <= hi, (name, value)


def test_disease_risk_factors(cohort: SimpleNamespace) -> None:
    pop = cohort.pop.assign(
        t2d=lambda d: d["t2d"].astype(float),
        osteoporosis=lambda d: d["osteoporosis"].astype(float),
        log_vat=lambda d: np.log(d["vat_l"]),
    )
    t2d = smf.logit("t2d ~ log_vat + bmi + age + sex", data=pop).fit(disp=0)
    assert t2d.params["log_vat"] > 0 and t2d.pvalues["log_vat"] < 1e-6
    crude = smf.logit("t2d ~ bmi", data=pop).fit(disp=0)
    assert crude.params["bmi"] > 0
    osteo = smf.logit("osteoporosis ~ age + sex", data=pop).fit(disp=0)
    assert osteo.params["age"] > 0 and osteo.params["sex"] < 0
    assert pop.loc[pop["osteoporosis"] == 1, "spine_bmd"].mean() < pop["spine_bmd"].mean() - 0.15


# -- ukbconv table ---------------------------------------------------------------------------------------


def test_ukbconv_columns_and_identifiers(cohort: SimpleNamespace) -> None:
    raw = cohort.raw
    assert raw.columns[0] == "eid"
    pattern = re.compile(r"^\d+-\d+\.\d+$")
    bad = [c for c in raw.columns[1:] if not pattern.match(c)]
    assert not bad
    np.testing.assert_array_equal(raw["eid"].to_numpy(), cohort.pop.index.to_numpy())
    for column in (
        "31-0.0",
        "21003-2.0",
        "21003-3.0",
        "53-0.0",
        "53-2.0",
        "53-3.0",
        "54-2.0",
        "50-2.0",
        "12144-2.0",
        "21002-2.0",
        "21001-2.0",
        "48-2.0",
        "49-2.0",
        "46-2.0",
        "47-2.0",
        "23258-2.0",
        "23275-2.0",
        "23280-2.0",
        "23285-2.0",
        "22402-2.0",
        "22407-2.0",
        "22408-2.0",
        "22409-2.0",
        "41270-0.0",
        "41280-0.0",
        "40000-0.0",
        "20002-2.0",
        "20003-2.0",
        "6177-2.0",
        "6153-2.0",
        "189-0.0",
        "30770-0.0",
        "2296-2.0",
        "20116-2.0",
        "1558-2.0",
        "22039-2.0",
        "904-2.0",
        "21000-0.0",
        "2306-2.0",
        "2080-2.0",
        "924-2.0",
        "6159-2.0",
        "23226-2.0",
        f"{FIELD_SPINE_TSCORE}-2.0",
        "46-3.0",
        "47-3.0",
        "50-3.0",
        "21002-3.0",
        "21001-3.0",
    ):
        assert column in raw.columns, column
    dates = raw["53-2.0"].dropna()
    assert dates.str.fullmatch(r"\d{4}-\d{2}-\d{2}").all()
    assert (pd.to_datetime(dates) == cohort.pop["imaging_date"].to_numpy()).all()
    np.testing.assert_array_equal(raw["31-0.0"].to_numpy(dtype=int), cohort.pop["sex"].to_numpy())


def test_ukbconv_csv_round_trip(small: pd.DataFrame) -> None:
    table = to_ukbconv(small, 7)
    buffer = io.StringIO()
    table.to_csv(buffer, index=False)
    back = pd.read_csv(
        io.StringIO(buffer.getvalue()),
        dtype={
            c: str
            for c in table.columns
            if table[c].dtype == object or pd.api.types.is_string_dtype(table[c])
        },
    )
    assert list(back.columns) == list(table.columns)
    for column in table.columns:
        left, right = table[column], back[column]
        if pd.api.types.is_numeric_dtype(left):
            np.testing.assert_array_equal(
                left.to_numpy(dtype=float, na_value=np.nan), right.to_numpy(dtype=float), err_msg=column
            )
        else:
            assert (left.isna() == right.isna()).all(), column
            assert (left.dropna().astype(str) == right.dropna()).all(), column


def test_ukbconv_special_codes_and_missingness(cohort: SimpleNamespace) -> None:
    t = cohort.table
    for column, code in (
        ("20116-2.0", -3),
        ("2080-2.0", -1),
        ("2080-2.0", -3),
        ("2306-2.0", -1),
        ("924-2.0", -7),
        ("904-2.0", -1),
        ("21000-0.0", -3),
        ("6159-2.0", -7),
        ("6159-2.0", -3),
        ("6164-2.0", -7),
        ("6153-2.0", -7),
        ("6177-2.0", -7),
        ("2296-2.0", -3),
    ):
        assert (t[column] == code).sum() > 0, (column, code)
    assert (t["20116-2.0"] < 0).mean() < 0.01
    shares = {
        "23226-2.0": (0.27, 0.33),
        "23275-2.0": (0.27, 0.33),
        "46-2.0": (0.01, 0.03),
        "30770-0.0": (0.05, 0.09),
        "22407-2.0": (0.08, 0.12),
        "22402-2.0": (0.08, 0.12),
        "50-2.0": (0.0, 0.01),
        "21003-2.0": (0.0, 0.0),
    }
    for column, (lo, hi) in shares.items():
        assert lo <= t[column].isna().mean() <= hi, column
    # 6177 is asked of men, 6153 of women
    men = cohort.pop["sex"] == 1
    assert t.loc[men.to_numpy(), "6153-2.0"].isna().all()
    assert t.loc[~men.to_numpy(), "6177-2.0"].isna().all()


def test_ukbconv_measurements_follow_the_population(cohort: SimpleNamespace) -> None:
    pop, t = cohort.pop, cohort.table
    ok = t["22409-2.0"].notna().to_numpy()
    assert np.corrcoef(t.loc[ok, "22409-2.0"], pop.loc[ok, "tmv_cm3"] / 1000)[0, 1] > 0.99
    assert abs(t.loc[ok, "22409-2.0"].median() / (pop.loc[ok, "tmv_cm3"].median() / 1000) - 1) < 0.01
    ok = t["22407-2.0"].notna().to_numpy()
    assert np.corrcoef(t.loc[ok, "22407-2.0"], pop.loc[ok, "vat_l"])[0, 1] > 0.99
    ok = t["22402-2.0"].notna().to_numpy()
    assert np.corrcoef(t.loc[ok, "22402-2.0"], pop.loc[ok, "liver_pdff"])[0, 1] > 0.99
    ok = t["23275-2.0"].notna().to_numpy()
    np.testing.assert_allclose(
        t.loc[ok, "23275-2.0"].astype(float) / 1000, pop.loc[ok, "lean_legs_kg"], atol=6e-4
    )
    ok = t["46-2.0"].notna().to_numpy()
    np.testing.assert_array_equal(t.loc[ok, "46-2.0"].astype(float), pop.loc[ok, "grip_left_kg"])
    ok = t["21001-2.0"].notna().to_numpy()
    np.testing.assert_allclose(t.loc[ok, "21001-2.0"], pop.loc[ok, "bmi"], rtol=5e-3)
    np.testing.assert_array_equal(t["21003-2.0"].astype(float), np.floor(pop["age"]))
    died = pop["died"].to_numpy()
    assert (t["40000-0.0"].notna().to_numpy() == died).all()


def test_ukbconv_disease_definitions_match_latent_states(cohort: SimpleNamespace) -> None:
    pop, t = cohort.pop, cohort.table
    icd = _fields(t, 41270, 0)
    icd_dates = _fields(t, 41280, 0)
    assert (icd.notna().to_numpy() == icd_dates.notna().to_numpy()).all()
    icd_t2d = icd.apply(lambda c: c.str.match(T2D_ICD, na=False)).any(axis=1)
    self_t2d = _has_code(t, 20002, 2, [SELF_REPORT_CODES["type2_diabetes"], SELF_REPORT_CODES["diabetes"]])
    meds = _has_code(
        t,
        20003,
        2,
        [MEDICATION_CODES["metformin"], MEDICATION_CODES["gliclazide"], MEDICATION_CODES["insulin"]],
    )
    insulin = _has_code(t, 6177, 2, [3]) | _has_code(t, 6153, 2, [3])
    table_t2d = (icd_t2d | self_t2d | meds | insulin).to_numpy()
    latent = pop["t2d"].to_numpy()
    sensitivity = table_t2d[latent].mean()
    ppv = latent[table_t2d].mean()
    print(
        f"\nT2D from table: sensitivity {sensitivity:.3f}, PPV {ppv:.3f}; "
        f"E11 among T2D {icd_t2d.to_numpy()[latent].mean():.2f}"
    )
    assert sensitivity == 1.0 and ppv >= 0.9
    assert icd_t2d.to_numpy()[~latent].mean() == 0.0

    icd_osteo = icd.apply(lambda c: c.str.match(OSTEO_ICD, na=False)).any(axis=1).to_numpy()
    tscore = t[f"{FIELD_SPINE_TSCORE}-2.0"].to_numpy(dtype=float)
    table_osteo = icd_osteo | (tscore <= -2.5)
    latent = pop["osteoporosis"].to_numpy()
    assert latent[table_osteo].mean() == 1.0
    assert 0.6 <= table_osteo[latent].mean() < 1.0

    back = _has_code(t, 6159, 2, [4]).to_numpy()
    declined = (t["6159-2.0"] == -3).to_numpy()
    assert (back[~declined] == pop["back_pain"].to_numpy()[~declined]).all()
    slow = (t["924-2.0"] == 1).to_numpy()
    answered = (t["924-2.0"] > 0).to_numpy()
    assert (slow[answered] == pop["slow_walking"].to_numpy()[answered]).all()
    lost = (t["2306-2.0"] == 3).to_numpy()
    answered = (t["2306-2.0"] >= 0).to_numpy()
    assert (lost[answered] == pop["weight_loss"].to_numpy()[answered]).all()


def test_ukbconv_instance_3_only_for_repeat_visitors(cohort: SimpleNamespace) -> None:
    t, rep = cohort.table, cohort.pop["repeat_visit"].to_numpy()
    instance3 = [c for c in t.columns if re.match(r"^\d+-3\.\d+$", c)]
    assert {"21003-3.0", "53-3.0", "50-3.0", "21002-3.0", "21001-3.0", "46-3.0", "47-3.0"} <= set(instance3)
    filled = t[instance3].notna().any(axis=1).to_numpy()
    assert not filled[~rep].any()
    assert t["21003-3.0"].notna().to_numpy()[rep].all()
    assert t["53-3.0"].notna().to_numpy()[rep].all()
    assert t["50-3.0"].notna().to_numpy()[rep].mean() > 0.98
