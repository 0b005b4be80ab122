"""The packaged recipes on the synthetic cohort's phenotype and truth-IDP tables (``synth --no-images``).

Each recipe runs end to end; and the planted generative effects are recovered: the vbm recipe's joint
model of marrow PDFF and log iron on age, log VAT, spine BMD, log TMV and T2D has 95 % intervals that
cover the generator's coefficients in about 95 % of replicate cohorts (the test prints the coverage).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from cohortscale.analysis.recipe import load_recipe, packaged_recipes
from cohortscale.analysis.run import run_recipe
from cohortscale.analysis.table import analysis_table
from cohortscale.pheno.derive import icd10_code_sets
from cohortscale.pheno.read import parse_phenotypes
from cohortscale.synth import simulate_population
from cohortscale.synth.population import GenerativeModel, to_ukbconv, truth_idps

MODEL = GenerativeModel()
SEXES = {"women": 0, "men": 1}
#: The generator's coefficients of the vbm recipe's joint models: (outcome, exposure) → (women, men).
PLANTED: dict[tuple[str, str], tuple[float, float]] = {
    ("vbm_pdff", "age"): MODEL.vbm_pdff_age,
    ("vbm_pdff", "log_vat"): (MODEL.vbm_pdff_vat,) * 2,
    ("vbm_pdff", "spine_bmd"): (MODEL.vbm_pdff_bmd,) * 2,
    ("vbm_pdff", "log_tmv"): (MODEL.vbm_pdff_tmv,) * 2,
    ("vbm_pdff", "t2d"): MODEL.vbm_pdff_t2d,
    ("log_iron", "age"): MODEL.vbm_iron_age,
    ("log_iron", "log_vat"): (0.0, 0.0),
    ("log_iron", "spine_bmd"): (0.0, 0.0),
    ("log_iron", "log_tmv"): (0.0, 0.0),
    ("log_iron", "t2d"): (MODEL.vbm_iron_t2d,) * 2,
}


def synthetic(n: int, seed: int) -> tuple[pd.DataFrame, pd.Series]:
    """The analysis table and ICD-10 code sets of a phenotype-only synthetic cohort."""
    population = simulate_population(n, seed=seed)
    phenos = parse_phenotypes(to_ukbconv(population, seed))
    idps = truth_idps(population).assign(instance=2).set_index("instance", append=True)
    return analysis_table(idps, phenos), icd10_code_sets(phenos)


def test_packaged_recipes_run(tmp_path) -> None:
    """Every packaged recipe runs on a 2000-participant cohort, with the study's headline results in
    range: Table 1 by sex, T2D raising marrow PDFF, TMV tracking DXA lean mass, PAD uncorrelated with age
    after correction, E11 (T2D) among the PheWAS categories with marrow PDFF raising its odds."""
    table, codes = synthetic(2000, seed=11)
    assert packaged_recipes() == ["phewas", "spine-age", "thigh", "vbm"]
    results = {
        name: run_recipe(load_recipe(name), table, tmp_path, codes).tables for name in packaged_recipes()
    }
    table1 = results["vbm"]["table1"]
    assert list(table1.columns[2:4]) == ["women", "men"]
    model = results["vbm"]["determinants"]
    t2d = model[(model["outcome"] == "vbm_pdff") & (model["exposure"] == "t2d")]
    assert (t2d["beta"] > 0).all() and len(t2d) == 2
    concordance = results["thigh"]["concordance"]
    r = concordance[(concordance["x"] == "tmv_cm3") & (concordance["y"] == "alm_kg")]["r"].item()
    assert r > 0.8
    assert set(results["thigh"]["pa_tertiles"]["outcome"]) == {
        "low_muscle", "weak_grip", "sarcopenia_confirmed", "died", "any_fall"
    }  # fmt: skip
    age_model = results["spine-age"]["age_model"].set_index("set")
    assert abs(age_model.at["test", "r_corrected_pad_age"]) < 0.1 < abs(age_model.at["test", "r_pad_age"])
    phewas = results["phewas"]["phewas"].set_index("code")
    assert phewas.at["E11", "or_"] > 1
    assert (tmp_path / "phewas" / "regenie.pheno").exists() and (
        tmp_path / "phewas" / "plink2.pheno"
    ).exists()
    for name in packaged_recipes():
        assert (tmp_path / name / "results.json").exists()


def coverage(replicates: int, n: int, out) -> pd.DataFrame:
    """Share of replicate cohorts whose 95 % interval covers each planted coefficient, by sex."""
    recipe = load_recipe("vbm")
    joint = dataclasses.replace(recipe, steps=tuple(s for s in recipe.steps if s.name == "determinants"))
    hits = {(o, e, sex): 0 for (o, e) in PLANTED for sex in SEXES}
    for seed in range(replicates):
        table, _ = synthetic(n, seed=1000 + seed)
        fits = run_recipe(joint, table, out).tables["determinants"]
        for row in fits.itertuples(index=False):
            truth = PLANTED[(row.outcome, row.exposure)][SEXES[row.stratum]]
            hits[(row.outcome, row.exposure, row.stratum)] += int(row.ci_low <= truth <= row.ci_high)
    rows = [
        {
            "outcome": o,
            "exposure": e,
            "sex": sex,
            "truth": PLANTED[(o, e)][SEXES[sex]],
            "coverage": h / replicates,
        }
        for (o, e, sex), h in hits.items()
    ]
    return pd.DataFrame(rows)


def test_planted_effects_are_covered(tmp_path) -> None:
    """20 replicate cohorts of 2000: the 95 % intervals of the 20 planted coefficients (marrow PDFF and
    log iron on age, log VAT, spine BMD, log TMV and T2D, by sex) cover the truth in 95 % ± 3.5 % of the
    400 intervals pooled (binomial SD 1.1 %)."""
    table = coverage(20, 2000, tmp_path)
    print("\n" + table.to_string(index=False))
    pooled = table["coverage"].mean()
    print(f"pooled coverage {pooled:.3f}")
    assert 0.915 <= pooled <= 0.985


@pytest.mark.slow
def test_planted_effects_coverage_100_replicates(tmp_path) -> None:
    """100 replicate cohorts: each coefficient's coverage within the binomial range of 95 % (≥ 88 %), and
    the pooled coverage within 95 % ± 1.5 %."""
    table = coverage(100, 3000, tmp_path)
    print("\n" + table.to_string(index=False))
    assert (table["coverage"] >= 0.88).all(), table
    assert abs(table["coverage"].mean() - 0.95) <= 0.015
    assert np.isfinite(table["truth"]).all()


def test_a_step_the_data_cannot_support_is_recorded_and_the_rest_runs(tmp_path) -> None:
    """Eight participants: the imaging-age model cannot be cross-validated (and the steps that use it have
    no PAD), so they are recorded as not run, with why, while the vbm recipe's steps still run."""
    table, codes = synthetic(8, seed=1)
    spine = run_recipe(load_recipe("spine-age"), table, tmp_path, codes)
    assert "n_folds" in spine.failures["age_model"] and "mortality" in spine.failures
    manifest = (tmp_path / "spine-age" / "results.json").read_text()
    assert '"error"' in manifest and not (tmp_path / "spine-age" / "age_model.csv").exists()
    vbm = run_recipe(load_recipe("vbm"), table, tmp_path, codes)
    assert "table1" in vbm.tables and "table1" not in vbm.failures
