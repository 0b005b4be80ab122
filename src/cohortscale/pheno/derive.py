"""Analysis variables derived from the canonical phenotype table (:mod:`cohortscale.pheno.read`).

Every function returns a Series or DataFrame indexed by ``eid``. Booleans use pandas' nullable
``boolean`` dtype where an answer can be missing (NA = unknown), plain ``bool`` where absence of a record
means "no" (disease definitions from records). Categories are ordered pandas categoricals. Field ids,
codes and cut-offs are named constants or frozen dataclasses (:class:`Ewgsop2Cutoffs`,
:class:`T2dDefinition`, :class:`OsteoporosisDefinition`, :class:`FriedDefinition`); codes marked
*unverified* follow ``shared/UKB.md`` and the synthetic cohort's writer
(:mod:`cohortscale.synth.population`) and should be checked against the UK Biobank showcase before use
on real data. Visit instances follow :mod:`cohortscale.pheno.values` (2 = imaging visit by default).
"""

from __future__ import annotations

import warnings
from collections.abc import Collection
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cohortscale.pheno.read import Phenotypes
from cohortscale.pheno.values import (
    IMAGING_VISIT,
    NONE_OF_THE_ABOVE,
    array_values,
    choose_instance,
    field_instances,
    has_code,
    long_values,
    visit_date,
)

__all__ = [
    "EWGSOP2",
    "FRIED",
    "OSTEOPOROSIS",
    "T2D",
    "Ewgsop2Cutoffs",
    "FriedDefinition",
    "OsteoporosisDefinition",
    "T2dDefinition",
    "Tertiles",
    "age_at_visit",
    "any_fall",
    "appendicular_lean_mass",
    "frailty",
    "frailty_indicators",
    "frailty_status",
    "grip_strength",
    "height_cm",
    "height_m2",
    "icd10_code_sets",
    "icd10_records",
    "icd10_timing",
    "low_grip",
    "max_grip",
    "osteoporosis",
    "per_height2",
    "prevalent_icd10",
    "sarcopenia",
    "sarcopenia_at_visit",
    "survival",
    "t2d",
    "tertiles",
]

# -- fields (shared/UKB.md) ------------------------------------------------------------------------------
FIELD_SEX = 31
FIELD_BIRTH_YEAR = 34
FIELD_BIRTH_MONTH = 52
FIELD_AGE = 21003
FIELD_HEIGHT = 50
FIELD_HEIGHT_IMAGING = 12144
FIELD_GRIP_LEFT = 46
FIELD_GRIP_RIGHT = 47
FIELD_LEAN_ARMS = 23258
FIELD_LEAN_LEGS = 23275
#: L1–L4 BMD T-score: the synthetic writer's choice (unverified, see ``synth.population``).
FIELD_SPINE_TSCORE = 23227
FIELD_WEIGHT_CHANGE = 2306
FIELD_TIREDNESS = 2080
FIELD_ACTIVITY_TYPES = 6164
FIELD_WALKING_PACE = 924
FIELD_FALLS = 2296
FIELD_DEATH_DATE = 40000
FIELD_ICD10 = 41270
FIELD_ICD10_DATE = 41280
FIELD_SELF_REPORT = 20002
FIELD_MEDICATION = 20003
FIELD_MEDICATION_MEN = 6177
FIELD_MEDICATION_WOMEN = 6153
#: Instance of the hospital-record fields (41270, 41280), cumulative over follow-up.
RECORD_INSTANCE = 0

# -- codes and units -------------------------------------------------------------------------------------
SEX_FEMALE, SEX_MALE = 0, 1
#: UK Biobank releases year and month of birth only; the day is taken as mid-month.
ASSUMED_BIRTH_DAY = 15
DAYS_PER_YEAR = 365.25
CM_PER_M = 100.0
#: DXA masses (23258, 23275) are written in grams (as the synthetic writer does; unverified for UK Biobank).
DXA_G_PER_KG = 1000.0
#: Field 2296 answers: no falls, one fall, more than one fall.
FALLS_NONE, FALLS_ONE, FALLS_MORE = 1, 2, 3
#: Field 20003 treatment codes (coding 4): metformin (from the brief), gliclazide and insulin (unverified).
MEDICATION_METFORMIN, MEDICATION_GLICLAZIDE, MEDICATION_INSULIN = 1140884600, 1140874718, 1140883066
#: Field 20002 non-cancer illness codes (coding 6; 1223/1220 per UKB.md, all unverified): type-2 diabetes,
#: diabetes (type unspecified), type-1 diabetes, osteoporosis.
SELF_REPORT_T2D, SELF_REPORT_DIABETES, SELF_REPORT_T1D, SELF_REPORT_OSTEOPOROSIS = 1223, 1220, 1222, 1309
#: Field 6177 / 6153 answer "insulin".
MEDICATION_CATEGORY_INSULIN = 3
#: Field 6164 answer "light DIY" (types of physical activity in the last 4 weeks).
ACTIVITY_LIGHT_DIY = 4

#: Default quantiles of :func:`tertiles` (the 33rd and 67th percentiles: equal thirds).
TERTILE_QUANTILES: tuple[float, float] = (1.0 / 3.0, 2.0 / 3.0)
#: Stratum name of the cut-offs when :func:`tertiles` has no strata.
ALL_STRATA = "all"
#: Characters of an ICD-10 category ("E11").
ICD10_CATEGORY_CHARACTERS = 3

SARCOPENIA_LEVELS: tuple[str, str, str] = ("none", "probable", "confirmed")
FRAILTY_LEVELS: tuple[str, str, str] = ("robust", "pre-frail", "frail")
ICD10_TIMING_LEVELS: tuple[str, str] = ("prevalent", "incident")


@dataclass(frozen=True)
class Ewgsop2Cutoffs:
    """EWGSOP2 sarcopenia cut-offs (Cruz-Jentoft et al., Age Ageing 2019;48:16–31, Table 3).

    Low strength is grip **below** the grip cut-off; low muscle quantity is ALM/height² **below** the
    ALMI cut-off (a value exactly at a cut-off is not low).
    """

    grip_women_kg: float = 16.0
    """Grip strength cut-off of women, kg."""
    grip_men_kg: float = 27.0
    """Grip strength cut-off of men, kg."""
    almi_women_kg_m2: float = 5.5
    """Appendicular lean mass index cut-off of women, kg/m²."""
    almi_men_kg_m2: float = 7.0
    """Appendicular lean mass index cut-off of men, kg/m²."""


EWGSOP2 = Ewgsop2Cutoffs()


@dataclass(frozen=True)
class T2dDefinition:
    """Type-2 diabetes at a visit from hospital records, self-report and medication (STUDIES.md §1).

    A participant has T2D when a **specific** source says so (an ICD-10 record under ``icd10_prefixes``
    not dated after the visit, or a self-reported type-2 diabetes), or when a **non-specific** source does
    (self-reported diabetes of unspecified type, an antidiabetic drug in 20003, insulin in 6177/6153) and
    nothing marks type-1 diabetes (E10 record or self-reported type 1). Self-report and medication count at
    every instance up to the visit. A simplification of the UK Biobank algorithms of Eastwood et al.
    (PLoS One 2016;11:e0162388), which also use age at diagnosis and time to insulin.
    """

    icd10_prefixes: tuple[str, ...] = ("E11",)
    """ICD-10 codes of T2D (prefix match)."""
    self_report_codes: tuple[int, ...] = (SELF_REPORT_T2D,)
    """20002 codes specific to T2D."""
    nonspecific_self_report_codes: tuple[int, ...] = (SELF_REPORT_DIABETES,)
    """20002 codes of diabetes of unspecified type."""
    medication_codes: tuple[int, ...] = (MEDICATION_METFORMIN, MEDICATION_GLICLAZIDE, MEDICATION_INSULIN)
    """20003 codes of antidiabetic drugs."""
    insulin_answer: int = MEDICATION_CATEGORY_INSULIN
    """Answer of 6177 (men) / 6153 (women) meaning insulin."""
    type1_icd10_prefixes: tuple[str, ...] = ("E10",)
    """ICD-10 codes of type-1 diabetes (prefix match)."""
    type1_self_report_codes: tuple[int, ...] = (SELF_REPORT_T1D,)
    """20002 codes of type-1 diabetes."""


T2D = T2dDefinition()


@dataclass(frozen=True)
class OsteoporosisDefinition:
    """Osteoporosis at a visit: ICD-10 M80–M82 not dated after the visit, or a DXA T-score ≤ −2.5 (WHO
    1994 densitometric definition; STUDIES.md §1), or optionally a self-reported code."""

    icd10_prefixes: tuple[str, ...] = ("M80", "M81", "M82")
    """ICD-10 codes of osteoporosis (prefix match)."""
    tscore_field: int = FIELD_SPINE_TSCORE
    """Field of the T-score read at the visit (unverified); ignored when the table lacks it."""
    tscore_max: float = -2.5
    """T-score at or below which osteoporosis is densitometric."""
    self_report_codes: tuple[int, ...] = ()
    """20002 codes that also count (none by default; e.g. ``(1309,)``, unverified)."""


OSTEOPOROSIS = OsteoporosisDefinition()


@dataclass(frozen=True)
class FriedDefinition:
    """Fried frailty phenotype (Fried et al., J Gerontol 2001;56:M146) as operationalised in UK Biobank by
    Hanlon et al. (Lancet Public Health 2018;3:e323), with EWGSOP2 grip cut-offs for weakness (Hanlon used
    Fried's BMI-specific ones; the synthetic cohort uses EWGSOP2's).

    Indicators, each asked at the visit: weight loss (2306 "lost weight"); exhaustion (2080 tired on more
    than half the days or nearly every day in the last two weeks); low physical activity (6164 "none of
    the above" or light DIY as the only activity in the last four weeks); slow walking (924 "slow pace");
    weakness (grip below the EWGSOP2 cut-off). Walking pace −7 ("none of the above", unable to walk) is
    treated as unanswered.
    """

    weight_loss_answers: tuple[int, ...] = (3,)
    """2306 answers meaning weight loss."""
    exhaustion_answers: tuple[int, ...] = (3, 4)
    """2080 answers meaning exhaustion."""
    low_activity_answers: tuple[int, ...] = (NONE_OF_THE_ABOVE, ACTIVITY_LIGHT_DIY)
    """6164 answers that are low activity when all of a participant's answers are among them."""
    slow_pace_answers: tuple[int, ...] = (1,)
    """924 answers meaning slow walking."""
    frail_min: int = 3
    """Frail at this many indicators or more; pre-frail from 1 to one fewer; robust at 0."""
    grip: Ewgsop2Cutoffs = EWGSOP2
    """Weak-grip cut-offs."""


FRIED = FriedDefinition()


@dataclass(frozen=True)
class Tertiles:
    """Result of :func:`tertiles`."""

    labels: pd.Series
    """Int64 tertile 1 (lowest), 2 or 3 per participant; NA where the value or stratum is missing."""
    cutoffs: pd.DataFrame
    """Index the strata (``"all"`` without strata); columns ``low`` and ``high`` (the cut-offs)."""


# -- small helpers ----------------------------------------------------------------------------------------


def _by_sex(sex: pd.Series, women: float, men: float) -> pd.Series:
    """Per-participant value of a sex-specific pair (NaN where sex is missing or not 0/1)."""
    return sex.map({SEX_FEMALE: women, SEX_MALE: men}).astype("float64")


def _below(values: pd.Series, cutoff: pd.Series) -> pd.Series:
    """Nullable boolean ``values < cutoff``; NA where either is missing."""
    return (values < cutoff).astype("boolean").mask(values.isna() | cutoff.isna())


def _answer_in(values: pd.Series, answers: Collection[int]) -> pd.Series:
    """Nullable boolean: the answer is one of ``answers``; NA where unanswered."""
    return values.isin(list(answers)).astype("boolean").mask(values.isna())


def _days_between(start: pd.Series, stop: pd.Series) -> pd.Series:
    """Whole days from ``start`` to ``stop`` (float, NaN where either is missing)."""
    return (stop - start).dt.days.astype("float64")


# -- demographics and body size --------------------------------------------------------------------------


def age_at_visit(phenos: Phenotypes, visit: int = IMAGING_VISIT) -> pd.Series:
    """Decimal age at a visit, years.

    From the visit date (53) and year and month of birth (34, 52), the birth day taken as the 15th (UK
    Biobank releases no day); where any of these is missing, the completed years of field 21003.

    Parameters
    ----------
    phenos : Phenotypes
        Canonical table.
    visit : int
        Visit instance (default 2).

    Returns
    -------
    pandas.Series
        Age in years (float), named ``age``.
    """
    year = choose_instance(phenos, FIELD_BIRTH_YEAR)
    month = choose_instance(phenos, FIELD_BIRTH_MONTH)
    known = year.notna() & month.notna()
    parts = pd.DataFrame({"year": year[known], "month": month[known], "day": ASSUMED_BIRTH_DAY})
    birth = pd.to_datetime(parts.astype("int64")).reindex(phenos.index)
    decimal = _days_between(birth, visit_date(phenos, visit)) / DAYS_PER_YEAR
    completed = choose_instance(phenos, FIELD_AGE, visit)
    return decimal.fillna(completed).rename("age")


def height_cm(phenos: Phenotypes, visit: int = IMAGING_VISIT) -> pd.Series:
    """Standing height at a visit, cm: field 50 (0.1 cm), else 12144 (height at the imaging visit, 1 cm).

    Parameters
    ----------
    phenos : Phenotypes
        Canonical table.
    visit : int
        Visit instance (default 2).

    Returns
    -------
    pandas.Series
        Height in cm, named ``height_cm``.
    """
    height = choose_instance(phenos, FIELD_HEIGHT, visit)
    if field_instances(phenos, FIELD_HEIGHT_IMAGING):
        height = height.fillna(choose_instance(phenos, FIELD_HEIGHT_IMAGING, visit))
    return height.rename("height_cm")


def height_m2(height_cm: pd.Series) -> pd.Series:
    """Height squared, m².

    Parameters
    ----------
    height_cm : pandas.Series
        Height, cm.

    Returns
    -------
    pandas.Series
        (height / 100)², m².
    """
    return (height_cm / CM_PER_M) ** 2


def per_height2(x: pd.Series, height_cm: pd.Series) -> pd.Series:
    """Index a size by height squared (e.g. ALM kg → ALMI kg/m², thigh volume cm³ → cm³/m²).

    Parameters
    ----------
    x : pandas.Series
        The quantity, any unit U.
    height_cm : pandas.Series
        Height, cm.

    Returns
    -------
    pandas.Series
        ``x / (height / 100)²`` in U/m², aligned on the index.
    """
    return x / height_m2(height_cm)


def max_grip(left_kg: pd.Series, right_kg: pd.Series) -> pd.Series:
    """Grip strength as the stronger hand, kg; one hand when the other is missing, NaN when both are.

    Parameters
    ----------
    left_kg, right_kg : pandas.Series
        Left and right hand grip strength, kg.

    Returns
    -------
    pandas.Series
        Maximum of the two, kg, named ``grip_kg``.
    """
    return pd.concat([left_kg, right_kg], axis=1).max(axis=1, skipna=True).rename("grip_kg")


def grip_strength(phenos: Phenotypes, visit: int = IMAGING_VISIT) -> pd.Series:
    """Grip strength at a visit, kg: the stronger of fields 46 (left) and 47 (right), see :func:`max_grip`.

    Parameters
    ----------
    phenos : Phenotypes
        Canonical table.
    visit : int
        Visit instance (default 2).

    Returns
    -------
    pandas.Series
        Grip strength, kg.
    """
    return max_grip(
        choose_instance(phenos, FIELD_GRIP_LEFT, visit), choose_instance(phenos, FIELD_GRIP_RIGHT, visit)
    )


def appendicular_lean_mass(
    phenos: Phenotypes, visit: int = IMAGING_VISIT, grams_per_unit: float = DXA_G_PER_KG
) -> pd.Series:
    """DXA appendicular lean mass (arms 23258 + legs 23275) at a visit, kg.

    Parameters
    ----------
    phenos : Phenotypes
        Canonical table.
    visit : int
        Visit instance (default 2).
    grams_per_unit : float
        Units of the DXA fields per kg (1000: the fields are in grams).

    Returns
    -------
    pandas.Series
        ALM in kg, NaN when either part is missing, named ``alm_kg``.
    """
    arms = choose_instance(phenos, FIELD_LEAN_ARMS, visit)
    legs = choose_instance(phenos, FIELD_LEAN_LEGS, visit)
    return ((arms + legs) / grams_per_unit).rename("alm_kg")


# -- sarcopenia ------------------------------------------------------------------------------------------


def low_grip(grip_kg: pd.Series, sex: pd.Series, cutoffs: Ewgsop2Cutoffs = EWGSOP2) -> pd.Series:
    """EWGSOP2 low muscle strength: grip below the sex-specific cut-off (NA where grip or sex is missing).

    Parameters
    ----------
    grip_kg : pandas.Series
        Grip strength, kg.
    sex : pandas.Series
        Field 31 (0 female, 1 male).
    cutoffs : Ewgsop2Cutoffs
        Cut-offs.

    Returns
    -------
    pandas.Series
        Nullable boolean, named ``low_grip``.
    """
    return _below(grip_kg, _by_sex(sex, cutoffs.grip_women_kg, cutoffs.grip_men_kg)).rename("low_grip")


def sarcopenia(
    grip_kg: pd.Series, almi_kg_m2: pd.Series, sex: pd.Series, cutoffs: Ewgsop2Cutoffs = EWGSOP2
) -> pd.DataFrame:
    """EWGSOP2 sarcopenia from grip strength and appendicular lean mass index.

    Low strength (grip < 27 kg men / 16 kg women) is *probable* sarcopenia; low strength with low muscle
    quantity (ALMI < 7.0 / 5.5 kg/m²) is *confirmed* sarcopenia (EWGSOP2 severity, which needs physical
    performance, is not derived). Values exactly at a cut-off are not low.

    Parameters
    ----------
    grip_kg : pandas.Series
        Grip strength, kg.
    almi_kg_m2 : pandas.Series
        ALM / height², kg/m².
    sex : pandas.Series
        Field 31 (0 female, 1 male).
    cutoffs : Ewgsop2Cutoffs
        Cut-offs.

    Returns
    -------
    pandas.DataFrame
        Index ``eid``; nullable booleans ``low_grip``, ``low_muscle`` and ``confirmed`` (low grip and low
        muscle; False as soon as either is known False, NA when it cannot be decided), and ``status``, an
        ordered category: ``none`` (grip not low, whatever the muscle), ``probable`` (low grip without
        known low muscle, including participants without DXA, as EWGSOP2 defines probable sarcopenia),
        ``confirmed``; NA without grip or sex.
    """
    weak = low_grip(grip_kg, sex, cutoffs)
    low_muscle = _below(almi_kg_m2, _by_sex(sex, cutoffs.almi_women_kg_m2, cutoffs.almi_men_kg_m2))
    confirmed = weak & low_muscle
    none, probable, confirmed_level = SARCOPENIA_LEVELS
    labels = np.select(
        [
            weak.isna().to_numpy(),
            ~weak.fillna(True).to_numpy(dtype=bool),
            confirmed.fillna(False).to_numpy(dtype=bool),
        ],
        [None, none, confirmed_level],
        default=probable,
    )
    status = pd.Categorical(labels, categories=list(SARCOPENIA_LEVELS), ordered=True)
    return pd.DataFrame(
        {"low_grip": weak, "low_muscle": low_muscle, "confirmed": confirmed, "status": status},
        index=grip_kg.index,
    )


def sarcopenia_at_visit(
    phenos: Phenotypes, visit: int = IMAGING_VISIT, cutoffs: Ewgsop2Cutoffs = EWGSOP2
) -> pd.DataFrame:
    """:func:`sarcopenia` from the table: grip (46/47), ALM (23258 + 23275) / height² (50/12144), sex (31).

    Parameters
    ----------
    phenos : Phenotypes
        Canonical table.
    visit : int
        Visit instance (default 2).
    cutoffs : Ewgsop2Cutoffs
        Cut-offs.

    Returns
    -------
    pandas.DataFrame
        As :func:`sarcopenia`, plus ``grip_kg``, ``alm_kg`` and ``almi_kg_m2``.
    """
    grip = grip_strength(phenos, visit)
    alm = appendicular_lean_mass(phenos, visit)
    almi = per_height2(alm, height_cm(phenos, visit)).rename("almi_kg_m2")
    flags = sarcopenia(grip, almi, choose_instance(phenos, FIELD_SEX), cutoffs)
    return pd.concat([grip, alm, almi, flags], axis=1)


# -- hospital records ------------------------------------------------------------------------------------


def _normalise_icd10(codes: pd.Series) -> pd.Series:
    """Upper-case ICD-10 codes without dots or descriptions (``"e11.9 Diabetes"`` → ``"E119"``)."""
    first = codes.astype("string").str.strip().str.split(" ", n=1).str[0]
    return first.str.replace(".", "", regex=False).str.upper()


def icd10_records(phenos: Phenotypes) -> pd.DataFrame:
    """Hospital ICD-10 diagnoses (41270) with their dates (41280, same array position), one row each.

    Parameters
    ----------
    phenos : Phenotypes
        Canonical table with field 41270 (41280 optional: dates NaT without it).

    Returns
    -------
    pandas.DataFrame
        Columns ``eid``, ``array``, ``code`` (e.g. ``"E119"``), ``category`` (3 characters, ``"E11"``),
        ``date`` (datetime64, NaT when unknown); ordered by eid and array.
    """
    codes = long_values(phenos, FIELD_ICD10, [RECORD_INSTANCE])
    records = codes.loc[:, ["eid", "array"]].assign(code=_normalise_icd10(codes["value"]))
    records["category"] = records["code"].str[:ICD10_CATEGORY_CHARACTERS]
    if field_instances(phenos, FIELD_ICD10_DATE):
        dates = long_values(phenos, FIELD_ICD10_DATE, [RECORD_INSTANCE]).loc[:, ["eid", "array", "value"]]
        records = records.merge(dates.rename(columns={"value": "date"}), on=["eid", "array"], how="left")
    else:
        records["date"] = pd.NaT
    records["date"] = pd.to_datetime(records["date"])
    return records


def icd10_code_sets(phenos: Phenotypes, characters: int = ICD10_CATEGORY_CHARACTERS) -> pd.Series:
    """Per participant, the set of ICD-10 codes truncated to ``characters`` (for PheWAS).

    Parameters
    ----------
    phenos : Phenotypes
        Canonical table with field 41270.
    characters : int
        Code length kept (3: categories such as ``"E11"``).

    Returns
    -------
    pandas.Series
        ``frozenset`` of codes per eid, for every participant (empty without records), named ``icd10``.
    """
    records = icd10_records(phenos)
    sets = records.groupby("eid")["code"].agg(lambda codes: frozenset(codes.str[:characters]))
    return (
        sets.reindex(phenos.index)
        .map(lambda s: s if isinstance(s, frozenset) else frozenset())
        .rename("icd10")
    )


def icd10_timing(phenos: Phenotypes, visit: int = IMAGING_VISIT) -> pd.DataFrame:
    """Each participant's ICD-10 categories, first dated, as prevalent or incident relative to a visit.

    A category is *prevalent* when its first record is dated on or before the visit date (53), *incident*
    when after; NA when the first date or the visit date is unknown.

    Parameters
    ----------
    phenos : Phenotypes
        Canonical table with fields 41270, 41280 and 53.
    visit : int
        Visit instance (default 2).

    Returns
    -------
    pandas.DataFrame
        Columns ``eid``, ``category`` (3 characters), ``first_date``, ``days_from_visit`` (first date minus
        visit date, days) and ``timing`` (ordered category ``prevalent`` / ``incident``); one row per
        participant and category.
    """
    records = icd10_records(phenos)
    first = records.groupby(["eid", "category"], as_index=False)["date"].min()
    first = first.rename(columns={"date": "first_date"})
    start = visit_date(phenos, visit).reindex(first["eid"]).to_numpy()
    days = _days_between(pd.Series(start), first["first_date"])
    prevalent, incident = ICD10_TIMING_LEVELS
    labels = np.select([days.isna().to_numpy(), (days <= 0).to_numpy()], [None, prevalent], default=incident)
    return first.assign(
        days_from_visit=days.to_numpy(),
        timing=pd.Categorical(labels, categories=list(ICD10_TIMING_LEVELS), ordered=True),
    )


def prevalent_icd10(phenos: Phenotypes, prefixes: Collection[str], visit: int = IMAGING_VISIT) -> pd.Series:
    """Whether a participant has an ICD-10 record under ``prefixes`` not known to postdate the visit.

    A record counts unless both its date and the visit date are known and the record is later; undated
    records count (an undated diagnosis is taken as present).

    Parameters
    ----------
    phenos : Phenotypes
        Canonical table with field 41270 (41280 and 53 for the dating).
    prefixes : collection of str
        ICD-10 code prefixes, e.g. ``("E11",)`` or ``("M80", "M81", "M82")``.
    visit : int
        Visit instance (default 2).

    Returns
    -------
    pandas.Series
        bool per eid.
    """
    records = icd10_records(phenos)
    start = visit_date(phenos, visit).reindex(records["eid"]).to_numpy()
    later = records["date"].to_numpy() > start  # False when either date is NaT
    match = records["code"].str.startswith(tuple(prefixes)).fillna(False).to_numpy(dtype=bool)
    found = pd.Index(records["eid"][match & ~later].unique())
    return pd.Series(phenos.index.isin(found), index=phenos.index)


# -- diseases --------------------------------------------------------------------------------------------


def _prevalent(phenos: Phenotypes, prefixes: Collection[str], visit: int) -> pd.Series:
    """:func:`prevalent_icd10`, or False for all if the table has no hospital records."""
    if not field_instances(phenos, FIELD_ICD10):
        return pd.Series(False, index=phenos.index)
    return prevalent_icd10(phenos, prefixes, visit)


def _reported(phenos: Phenotypes, field: int, codes: Collection[int], visit: int) -> pd.Series:
    """Any of ``codes`` in ``field`` at instances up to ``visit``; False for all if the table lacks it."""
    if not field_instances(phenos, field):
        return pd.Series(False, index=phenos.index)
    return has_code(phenos, field, codes, field_instances(phenos, field, up_to=visit))


def _warn_absent(phenos: Phenotypes, fields: Collection[int], what: str) -> None:
    """Warn that ``what`` is derived without the sources the table lacks."""
    absent = sorted(f for f in fields if not field_instances(phenos, f))
    if absent:
        warnings.warn(
            f"{what}: the table has no field {absent}; those sources count as no evidence", stacklevel=3
        )


def t2d(phenos: Phenotypes, visit: int = IMAGING_VISIT, definition: T2dDefinition = T2D) -> pd.Series:
    """Type-2 diabetes at a visit (rule in :class:`T2dDefinition`).

    Parameters
    ----------
    phenos : Phenotypes
        Canonical table with 41270/41280, 20002, 20003, 6177, 6153 and 53 (absent sources count as no
        evidence, with a warning).
    visit : int
        Visit instance (default 2).
    definition : T2dDefinition
        Codes.

    Returns
    -------
    pandas.Series
        bool per eid (False without evidence), named ``t2d``.
    """
    sources = (FIELD_ICD10, FIELD_SELF_REPORT, FIELD_MEDICATION, FIELD_MEDICATION_MEN, FIELD_MEDICATION_WOMEN)
    _warn_absent(phenos, sources, "t2d")
    specific = _prevalent(phenos, definition.icd10_prefixes, visit) | _reported(
        phenos, FIELD_SELF_REPORT, definition.self_report_codes, visit
    )
    insulin = [definition.insulin_answer]
    nonspecific = (
        _reported(phenos, FIELD_SELF_REPORT, definition.nonspecific_self_report_codes, visit)
        | _reported(phenos, FIELD_MEDICATION, definition.medication_codes, visit)
        | _reported(phenos, FIELD_MEDICATION_MEN, insulin, visit)
        | _reported(phenos, FIELD_MEDICATION_WOMEN, insulin, visit)
    )
    type1 = _prevalent(phenos, definition.type1_icd10_prefixes, visit) | _reported(
        phenos, FIELD_SELF_REPORT, definition.type1_self_report_codes, visit
    )
    return (specific | (nonspecific & ~type1)).rename("t2d")


def osteoporosis(
    phenos: Phenotypes, visit: int = IMAGING_VISIT, definition: OsteoporosisDefinition = OSTEOPOROSIS
) -> pd.Series:
    """Osteoporosis at a visit (rule in :class:`OsteoporosisDefinition`).

    Parameters
    ----------
    phenos : Phenotypes
        Canonical table with 41270/41280, 53 and the T-score field (absent sources count as no evidence,
        with a warning).
    visit : int
        Visit instance (default 2).
    definition : OsteoporosisDefinition
        Codes and T-score cut-off.

    Returns
    -------
    pandas.Series
        bool per eid (False without evidence), named ``osteoporosis``.
    """
    sources = [
        FIELD_ICD10,
        definition.tscore_field,
        *([FIELD_SELF_REPORT] if definition.self_report_codes else []),
    ]
    _warn_absent(phenos, sources, "osteoporosis")
    found = _prevalent(phenos, definition.icd10_prefixes, visit) | _reported(
        phenos, FIELD_SELF_REPORT, definition.self_report_codes, visit
    )
    if field_instances(phenos, definition.tscore_field):
        found |= choose_instance(phenos, definition.tscore_field, visit) <= definition.tscore_max
    return found.rename("osteoporosis")


# -- frailty and falls -----------------------------------------------------------------------------------


def _low_activity(phenos: Phenotypes, visit: int, answers: Collection[int]) -> pd.Series:
    """Nullable boolean: every 6164 answer of the visit is in ``answers``; NA without an answer."""
    given = array_values(phenos, FIELD_ACTIVITY_TYPES, visit, keep_codes=[NONE_OF_THE_ABOVE])
    answered = given.notna().any(axis=1)
    only_low = (given.isin(list(answers)) | given.isna()).all(axis=1)
    return only_low.astype("boolean").mask(~answered)


def frailty_indicators(
    phenos: Phenotypes, visit: int = IMAGING_VISIT, definition: FriedDefinition = FRIED
) -> pd.DataFrame:
    """The five Fried indicators at a visit (rules in :class:`FriedDefinition`).

    Parameters
    ----------
    phenos : Phenotypes
        Canonical table with 2306, 2080, 6164, 924, 46, 47 and 31.
    visit : int
        Visit instance (default 2).
    definition : FriedDefinition
        Answers and cut-offs.

    Returns
    -------
    pandas.DataFrame
        Nullable booleans ``weight_loss``, ``exhaustion``, ``low_activity``, ``slow_walking``,
        ``weak_grip`` (NA where unanswered or unmeasured, special codes included).
    """
    return pd.DataFrame(
        {
            "weight_loss": _answer_in(
                choose_instance(phenos, FIELD_WEIGHT_CHANGE, visit), definition.weight_loss_answers
            ),
            "exhaustion": _answer_in(
                choose_instance(phenos, FIELD_TIREDNESS, visit), definition.exhaustion_answers
            ),
            "low_activity": _low_activity(phenos, visit, definition.low_activity_answers),
            "slow_walking": _answer_in(
                choose_instance(phenos, FIELD_WALKING_PACE, visit), definition.slow_pace_answers
            ),
            "weak_grip": low_grip(
                grip_strength(phenos, visit), choose_instance(phenos, FIELD_SEX), definition.grip
            ),
        },
        index=phenos.index,
    )


def _positive_count(indicators: pd.DataFrame) -> pd.Series:
    """Number of indicators known to be present per participant."""
    return indicators.fillna(False).astype(int).sum(axis=1)


def frailty_status(indicators: pd.DataFrame, frail_min: int = FRIED.frail_min) -> pd.Series:
    """Robust / pre-frail / frail from Fried indicators, deciding despite missing ones when possible.

    With ``k`` indicators present and ``m`` missing: frail when ``k ≥ frail_min``; pre-frail when
    ``1 ≤ k`` and ``k + m < frail_min``; robust when ``k + m = 0``; otherwise NA (the missing indicators
    could change the category). With no missing indicator this is Fried's rule.

    Parameters
    ----------
    indicators : pandas.DataFrame
        Nullable boolean indicator columns (as :func:`frailty_indicators`).
    frail_min : int
        Indicators for frailty (3).

    Returns
    -------
    pandas.Series
        Ordered category ``robust`` < ``pre-frail`` < ``frail``, named ``frailty``.
    """
    present = _positive_count(indicators).to_numpy()
    upper = present + indicators.isna().sum(axis=1).to_numpy()
    robust, prefrail, frail = FRAILTY_LEVELS
    labels = np.select(
        [present >= frail_min, (present >= 1) & (upper < frail_min), upper == 0],
        [frail, prefrail, robust],
        default=None,
    )
    status = pd.Categorical(labels, categories=list(FRAILTY_LEVELS), ordered=True)
    return pd.Series(status, index=indicators.index, name="frailty")


def frailty(
    phenos: Phenotypes, visit: int = IMAGING_VISIT, definition: FriedDefinition = FRIED
) -> pd.DataFrame:
    """Fried frailty at a visit: the indicators, their count and the status.

    Parameters
    ----------
    phenos : Phenotypes
        Canonical table (see :func:`frailty_indicators`).
    visit : int
        Visit instance (default 2).
    definition : FriedDefinition
        Answers and cut-offs.

    Returns
    -------
    pandas.DataFrame
        The five indicators, ``count`` (indicators present, Int64; a lower bound where some are missing)
        and ``frailty`` (see :func:`frailty_status`).
    """
    indicators = frailty_indicators(phenos, visit, definition)
    count = _positive_count(indicators).astype("Int64").rename("count")
    return pd.concat([indicators, count, frailty_status(indicators, definition.frail_min)], axis=1)


def any_fall(phenos: Phenotypes, visit: int = IMAGING_VISIT) -> pd.Series:
    """Any fall in the last year (field 2296: 1 none, 2 one, 3 more than one).

    Parameters
    ----------
    phenos : Phenotypes
        Canonical table with field 2296.
    visit : int
        Visit instance (default 2).

    Returns
    -------
    pandas.Series
        Nullable boolean (NA for −1, −3 or no answer), named ``any_fall``.
    """
    return _answer_in(choose_instance(phenos, FIELD_FALLS, visit), (FALLS_ONE, FALLS_MORE)).rename("any_fall")


# -- mortality -------------------------------------------------------------------------------------------


def survival(phenos: Phenotypes, end: str | pd.Timestamp, visit: int = IMAGING_VISIT) -> pd.DataFrame:
    """Death and follow-up from a visit, censored at ``end``.

    Follow-up starts at the visit date (53) and stops at the date of death (40000, earliest instance) or
    ``end``, whichever is first. A death on the censoring date is an event; a death after it is censored.
    Participants without a visit date, or whose stop precedes the start (death recorded before the visit,
    or ``end`` before the visit), get NA.

    Parameters
    ----------
    phenos : Phenotypes
        Canonical table with fields 53 and 40000.
    end : str or pandas.Timestamp
        Censoring date (the end of the death-registry follow-up of the release used).
    visit : int
        Visit instance (default 2).

    Returns
    -------
    pandas.DataFrame
        ``died`` (nullable boolean), ``death_date``, ``followup_days`` (float days) and ``followup_y``
        (years of 365.25 days).
    """
    start = visit_date(phenos, visit)
    death = pd.to_datetime(choose_instance(phenos, FIELD_DEATH_DATE))
    end_date = pd.Timestamp(end)
    died = death.notna() & (death <= end_date)
    stop = death.where(died, end_date)
    days = _days_between(start, stop)
    valid = days >= 0
    return pd.DataFrame(
        {
            "died": died.astype("boolean").mask(~valid),
            "death_date": death,
            "followup_days": days.where(valid),
            "followup_y": days.where(valid) / DAYS_PER_YEAR,
        },
        index=phenos.index,
    )


# -- tertiles --------------------------------------------------------------------------------------------


def _tertile_cuts(values: pd.Series, quantiles: tuple[float, float]) -> tuple[float, float]:
    """Cut-offs at the two quantiles (linear interpolation), NaN for an empty group."""
    present = values.dropna().to_numpy(dtype=float)
    if not len(present):
        return np.nan, np.nan
    low, high = np.quantile(present, quantiles)
    return float(low), float(high)


def tertiles(
    x: pd.Series, by: pd.Series | None = None, quantiles: tuple[float, float] = TERTILE_QUANTILES
) -> Tertiles:
    """Tertile of each value, optionally within strata (e.g. sex).

    Tertile 1 is ``x ≤ low``, 2 is ``low < x ≤ high``, 3 is ``x > high``, with ``low`` and ``high`` the
    33rd and 67th percentiles (``quantiles``, linear interpolation as :func:`numpy.quantile`) of the
    non-missing values of the participant's stratum.

    Parameters
    ----------
    x : pandas.Series
        Values, any unit.
    by : pandas.Series, optional
        Stratum of each participant (same index); NA strata get NA labels.
    quantiles : tuple of float
        The two quantiles, 0–1.

    Returns
    -------
    Tertiles
        Labels (Int64 1/2/3) and cut-offs per stratum.
    """
    strata = pd.Series(ALL_STRATA, index=x.index) if by is None else by.reindex(x.index)
    cuts = {
        stratum: _tertile_cuts(x[strata == stratum], quantiles)
        for stratum in strata.dropna().unique().tolist()
    }
    cutoffs = pd.DataFrame.from_dict(cuts, orient="index", columns=["low", "high"]).sort_index()
    low = strata.map(cutoffs["low"]).astype("float64")
    high = strata.map(cutoffs["high"]).astype("float64")
    labels = pd.Series(np.where(x <= low, 1, np.where(x <= high, 2, 3)), index=x.index).astype("Int64")
    labels = labels.mask(x.isna() | low.isna())
    return Tertiles(labels=labels.rename("tertile"), cutoffs=cutoffs)
