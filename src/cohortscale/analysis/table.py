"""The analysis table: one row per participant at a visit, IDPs joined with derived phenotypes.

IDPs come from the pipeline's table (``idps.parquet``: columns per multi-echo field such as
``vbm_pdff_20254``) or from a synthetic cohort's truth (``truth/idps.csv``: ``vbm_pdff``); the field
suffix of the chosen field is dropped so recipes name ``vbm_pdff`` either way. Phenotypes come from any
UK Biobank export layout (:func:`cohortscale.pheno.read.read_phenotypes`) and are derived at the same visit
(:mod:`cohortscale.pheno.derive`). Fat fractions are in %, volumes as the IDP table has them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from cohortscale.pheno import derive
from cohortscale.pheno.read import Phenotypes, read_phenotypes
from cohortscale.pheno.values import IMAGING_VISIT, array_values, choose_instance

#: Multi-echo field whose slice measures the recipes use by default (the IDEAL liver slice).
DEFAULT_FIELD = 20254
#: End of follow-up for death records (the synthetic cohort's censoring date).
FOLLOW_UP_END = "2023-03-31"
#: Phenotype fields taken as they are: column name → (field, read at the visit or at baseline).
FIELDS: dict[str, tuple[int, bool]] = {
    "bmi": (21001, True),
    "weight_kg": (21002, True),
    "townsend": (189, False),
    "igf1": (30770, False),
    "ethnicity": (21000, False),
    "smoking": (20116, True),
    "alcohol": (1558, True),
    "met_vigorous": (22039, True),
    "spine_bmd": (23226, True),
    "centre": (54, True),
}
#: Field 6159 (pain in the last month) answer "back pain".
PAIN_FIELD, BACK_PAIN = 6159, 4
#: Labels of field 31's codes (0 female, 1 male).
SEX_GROUPS = {0: "women", 1: "men"}
#: Field 20116 answer "current smoker".
CURRENT_SMOKER = 2


def read_idps(path: str | Path) -> pd.DataFrame:
    """An IDP table (parquet or CSV) indexed by (eid, instance); only measured rows of a pipeline table."""
    path = Path(path)
    table = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    if isinstance(table.index, pd.MultiIndex) and list(table.index.names) == ["eid", "instance"]:
        table = table.reset_index()
    if "status" in table.columns:
        table = table[table["status"] == "measured"]
    return table.set_index(["eid", "instance"]).sort_index()


def idps_at_visit(idps: pd.DataFrame, visit: int = IMAGING_VISIT, field: int = DEFAULT_FIELD) -> pd.DataFrame:
    """The numeric IDPs of ``visit`` by eid, with the suffix ``_<field>`` dropped from slice measures."""
    rows = idps.xs(visit, level="instance") if "instance" in (idps.index.names or []) else idps
    numeric = rows.select_dtypes(include=[np.number, "bool"])
    suffix = f"_{field}"
    renamed = {c: c[: -len(suffix)] for c in numeric.columns if str(c).endswith(suffix)}
    return numeric.drop(columns=[c for c in renamed.values() if c in numeric.columns]).rename(columns=renamed)


def phenotype_variables(
    phenos: Phenotypes, visit: int = IMAGING_VISIT, end: str = FOLLOW_UP_END
) -> pd.DataFrame:
    """Derived phenotypes by eid: demographics, body size, lifestyle, conditions, frailty, falls, survival.

    Booleans are 0/1 floats with NaN for unknown (so they enter regressions as they are); ``sarcopenia``
    and ``frailty`` are ordered categories.
    """
    sarcopenia = derive.sarcopenia_at_visit(phenos, visit)
    frailty = derive.frailty(phenos, visit)
    survival = derive.survival(phenos, end, visit)
    height = derive.height_cm(phenos, visit)
    columns: dict[str, pd.Series] = {
        "sex": choose_instance(phenos, derive.FIELD_SEX),
        "age": derive.age_at_visit(phenos, visit),
        "height_cm": height,
        "height_m2": derive.height_m2(height),
        "grip_kg": sarcopenia["grip_kg"],
        "alm_kg": sarcopenia["alm_kg"],
        "almi": sarcopenia["almi_kg_m2"],
        "sarcopenia": sarcopenia["status"],
        "t2d": derive.t2d(phenos, visit),
        "osteoporosis": derive.osteoporosis(phenos, visit),
        "frailty": frailty["frailty"],
        "any_fall": derive.any_fall(phenos, visit),
        "died": survival["died"],
        "followup_y": survival["followup_y"],
    }
    fields = set(phenos.columns.get_level_values(0))
    for name, (field, at_visit) in FIELDS.items():
        if field in fields:
            columns[name] = choose_instance(phenos, field, visit if at_visit else 0)
    if PAIN_FIELD in fields:
        columns["back_pain"] = _has_answer(phenos, PAIN_FIELD, BACK_PAIN, visit)
    table = pd.DataFrame(columns)
    # Sex as a labelled group for tables and strata; ``sex`` stays 0/1 for models.
    table["sex_group"] = pd.Categorical(table["sex"].map(SEX_GROUPS), categories=list(SEX_GROUPS.values()))
    for name in ("t2d", "osteoporosis", "any_fall", "died", "back_pain"):
        if name in table:
            table[name] = _as_float(table[name])
    table["sarcopenia_probable"] = _flag(table["sarcopenia"], lambda s: s != "none")
    table["sarcopenia_confirmed"] = _flag(table["sarcopenia"], lambda s: s == "confirmed")
    table["frail"] = _flag(table["frailty"], lambda s: s == "frail")
    if "smoking" in table:
        table["current_smoker"] = _flag(table["smoking"], lambda s: s == CURRENT_SMOKER)
    return table


def _has_answer(phenos: Phenotypes, field: int, answer: int, visit: int) -> pd.Series:
    """Whether any array value of ``field`` at ``visit`` is ``answer`` (NaN when the field is unanswered)."""
    values = array_values(phenos, field, visit)
    answered = values.notna().any(axis=1)
    return (values == answer).any(axis=1).astype(float).where(answered)


def _as_float(values: pd.Series) -> pd.Series:
    """A (nullable) boolean as 0/1 floats with NaN for unknown."""
    return values.astype("Float64").astype(float)


def _flag(values: pd.Series, test: Callable[[pd.Series], pd.Series]) -> pd.Series:
    """0/1 of ``test`` on a categorical or coded column, NaN where it is missing."""
    return test(values).astype(float).where(values.notna())


def analysis_table(
    idps: pd.DataFrame,
    phenos: Phenotypes,
    visit: int = IMAGING_VISIT,
    field: int = DEFAULT_FIELD,
    end: str = FOLLOW_UP_END,
) -> pd.DataFrame:
    """IDPs of ``visit`` joined (inner, by eid) with the participants' derived phenotypes.

    Parameters
    ----------
    idps : pandas.DataFrame
        Indexed by (eid, instance), e.g. :func:`read_idps`.
    phenos : Phenotypes
        Canonical phenotype table.
    visit : int
        Visit instance (2: first imaging visit).
    field : int
        Multi-echo field whose slice measures are used.
    end : str
        End of follow-up, ``YYYY-MM-DD``.
    """
    measured = idps_at_visit(idps, visit, field)
    derived = phenotype_variables(phenos, visit, end).drop(columns=measured.columns, errors="ignore")
    return measured.join(derived, how="inner")


def load_analysis_table(
    idps: str | Path, phenotypes: str | Path, visit: int = IMAGING_VISIT, field: int = DEFAULT_FIELD
) -> pd.DataFrame:
    """:func:`analysis_table` from files: an IDP table and a phenotype export."""
    return analysis_table(read_idps(idps), read_phenotypes(phenotypes), visit, field)
