"""Synthetic UK Biobank imaging population: latent variables, ukbconv phenotype table, target IDPs.

Three public functions:

- :func:`simulate_population` draws one row per participant (index ``eid``) of latent "true" variables:
  demographics, anthropometry, lifestyle, DXA body composition, grip strength, disease states (T2D,
  osteoporosis, back pain, sarcopenia, frailty), falls, deaths, the repeat imaging visit, and the target
  image-derived phenotypes (IDPs) that images will carry.
- :func:`to_ukbconv` renders that population as the UK Biobank phenotype table a user would download
  (ukbconv CSV layout, ``<field>-<instance>.<array>`` columns), with measurement rounding, special negative
  codes, realistic missingness, hospital ICD-10 records, self-reported illnesses and medications.
- :func:`truth_idps` returns the target IDP columns alone.

The generative model is a set of structural equations evaluated in causal order; every distribution and
coefficient lives in :class:`GenerativeModel` (observation settings in :class:`ObservationModel`), so
``dataclasses.asdict(GenerativeModel())`` is the full truth. Sex-specific values are ``(women, men)``
pairs. Marginals are tuned to the published UK Biobank figures in ``shared/STUDIES.md`` §1–2; the main
effects are:

- VBM PDFF rises with age (r ≈ 0.27 within sex) and VAT, falls with spine BMD and thigh muscle volume;
  T2D adds +2.4 (women) / +1.7 (men) points; marrow iron is lower with T2D.
- Dixon VBM FF is not drawn: it is the fat fraction the 10° spoiled gradient echo measures for the
  participant's PDFF and marrow-water T1 (:func:`cohortscale.synth.relaxation.dixon_fat_fraction`). T1 is
  a normal truncated to 0.4–1.2 s whose location rises slightly with PDFF.
- Thigh muscle volume (TMV) falls ~4–5 % per decade and scales with height, BMI and sex; DXA leg lean mass
  is TMV plus measurement scatter (r ≈ 0.94); grip follows muscle, age, sex, a frailty factor and the
  posterior/anterior (P/A) thigh ratio, whose top tertile carries higher odds of weak grip, sarcopenia,
  death and falls.

Known departures from the published figures, both forced by the constraints themselves:

- corr(VBM PDFF, VBM FF) is ≈ 0.90 (women) / 0.91 (men), not 0.88: with T1 confined to 0.4–1.2 s, T1
  cannot add enough PDFF-independent variance to reach the published FF SD at r = 0.88, so the T1
  location is coupled to PDFF to keep the FF SD within 2–4 % of the target.
- weak grip is ≈ 9 %, not 10–13 %: with the published mean and SD, a unimodal grip distribution cannot put
  much more than 10 % of participants 1.3–1.4 SD below the mean (the EWGSOP2 cut-offs).

Field ids follow ``shared/UKB.md``. Choices of this module that are NOT confirmed from a source
(unverified; all are module constants so callers can remap them):

- ``23227`` for the L1–L4 BMD T-score (:data:`FIELD_SPINE_TSCORE`);
- ``6164`` (types of physical activity in the last 4 weeks) for Fried's low-activity indicator;
- DXA lean masses (23258/23275/23280/23285) written in grams, AMRA volumes (22407/22408/22409) in litres;
- self-report codes other than 1223/1220 and medication codes other than metformin (1140884600), listed
  in :data:`SELF_REPORT_CODES` and :data:`MEDICATION_CODES`, and the young-adult BMD reference of the
  T-score in :class:`GenerativeModel`.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import optimize, special

from cohortscale.synth.relaxation import dixon_fat_fraction

__all__ = [
    "DEFAULT_MODEL",
    "FIELD_SPINE_TSCORE",
    "TRUTH_IDP_COLUMNS",
    "GenerativeModel",
    "ObservationModel",
    "simulate_population",
    "to_ukbconv",
    "truth_idps",
]

#: Smallest and largest eid drawn (7-digit UK Biobank-like identifiers).
EID_MIN = 1_000_000
EID_MAX = 6_025_000

#: Sex codes of field 31.
FEMALE, MALE = 0, 1

#: Days per year used to convert intervals.
DAYS_PER_YEAR = 365.25

#: Percent per unit fraction.
PERCENT = 100.0

#: Centimetres per metre.
CM_PER_M = 100.0

#: cm³ per litre.
CM3_PER_L = 1000.0

#: Grams per kilogram (DXA masses are written in grams; unverified).
G_PER_KG = 1000.0

#: Field chosen for the L1–L4 BMD T-score (unverified; next to 23226, L1–L4 BMD).
FIELD_SPINE_TSCORE = 23227

#: Special answers of categorical fields: do not know, prefer not to answer, none of the above.
DO_NOT_KNOW, PREFER_NOT, NONE_OF_ABOVE = -1, -3, -7
#: Field 20116 (smoking status) code of a current smoker.
SMOKING_CURRENT = 2
#: Field 2296 (falls in the last year): no falls, only one fall, more than one fall.
FALLS_NONE, FALLS_ONE, FALLS_MORE = 1, 2, 3
#: Field 2306 (weight change in the last year): about the same, gained, lost.
WEIGHT_SAME, WEIGHT_GAINED, WEIGHT_LOST = 0, 2, 3
#: Field 2080 (tiredness in the last 2 weeks): not at all, several days, more than half, nearly every day.
TIRED_NEVER, TIRED_SEVERAL, TIRED_MOST, TIRED_DAILY = 1, 2, 3, 4
#: Field 924 (usual walking pace): slow, steady/average, brisk.
PACE_SLOW, PACE_STEADY, PACE_BRISK = 1, 2, 3
#: Field 6159 (pain in the last month): codes other than back pain, back pain, pain all over the body.
PAIN_OTHER_CODES: tuple[int, ...] = (1, 2, 3, 5, 6, 7)
PAIN_BACK, PAIN_ALL_OVER = 4, 8
#: Field 6164 (physical activity in the last 4 weeks): codes 1–5; 4 is light DIY.
ACTIVITY_CODES: tuple[int, ...] = (1, 2, 3, 4, 5)
ACTIVITY_LIGHT_DIY = 4
#: Fields 6177 / 6153 (medication): cholesterol, blood pressure, insulin, HRT, contraceptive pill.
MED_CHOLESTEROL, MED_BLOOD_PRESSURE, MED_INSULIN, MED_HRT, MED_PILL = 1, 2, 3, 4, 5
#: Answers of field 6177 (asked of men) per participant.
MEN_MEDICATION_ARRAYS = 3
#: ICD-10 codes of back pain, type-1 diabetes, hypertension, hypercholesterolaemia.
ICD_BACK_PAIN, ICD_TYPE1, ICD_HYPERTENSION, ICD_CHOLESTEROL = "M545", "E109", "I10", "E780"
#: Decimals written for BMI (21001) and AMRA volumes (22407–22409, litres).
BMI_DECIMALS, VOLUME_DECIMALS = 4, 4

#: Target IDP columns returned by :func:`truth_idps` (index ``eid``).
TRUTH_IDP_COLUMNS: tuple[str, ...] = (
    "vbm_pdff",
    "vbm_ff",
    "marrow_t1_water_s",
    "vbm_iron",
    "vbm_r2star",
    "femur_pdff",
    "liver_pdff",
    "liver_r2star",
    "tmv_cm3",
    "pa_ratio",
    "thigh_asymmetry",
    "vat_l",
    "asat_l",
    "muscle_fat_infiltration_pct",
)

#: Self-reported non-cancer illness codes (field 20002). 1223/1220 from UKB.md (unverified there too);
#: the others are plausible background codes (unverified).
SELF_REPORT_CODES: dict[str, int] = {
    "type2_diabetes": 1223,
    "diabetes": 1220,
    "type1_diabetes": 1222,
    "hypertension": 1065,
    "high_cholesterol": 1473,
    "osteoporosis": 1309,
    "asthma": 1111,
    "hypothyroidism": 1226,
    "osteoarthritis": 1465,
    "irritable_bowel": 1154,
}

#: Treatment/medication codes (field 20003). Metformin from the brief; the rest unverified.
MEDICATION_CODES: dict[str, int] = {
    "metformin": 1140884600,
    "gliclazide": 1140874718,
    "insulin": 1140883066,
    "simvastatin": 1140861958,
    "atorvastatin": 1141146234,
    "amlodipine": 1140879802,
    "ramipril": 1140860696,
    "levothyroxine": 1140874930,
    "omeprazole": 1140865634,
    "aspirin": 1140868226,
}

#: ICD-10 codes of type-2 diabetes written to field 41270 (4-character UK Biobank style).
ICD_T2D: tuple[str, ...] = ("E119", "E117", "E112", "E113", "E114", "E115", "E116", "E118", "E110")
#: Relative frequencies of :data:`ICD_T2D`.
ICD_T2D_WEIGHTS: tuple[float, ...] = (0.70, 0.06, 0.05, 0.05, 0.04, 0.03, 0.03, 0.02, 0.02)
#: ICD-10 codes of osteoporosis (M80 with, M81 without pathological fracture, M82 elsewhere).
ICD_OSTEOPOROSIS: tuple[str, ...] = ("M810", "M818", "M819", "M800", "M805", "M808", "M820")
#: Relative frequencies of :data:`ICD_OSTEOPOROSIS`.
ICD_OSTEOPOROSIS_WEIGHTS: tuple[float, ...] = (0.62, 0.12, 0.08, 0.06, 0.05, 0.05, 0.02)
#: Background ICD-10 codes with their prevalence in the cohort's hospital records.
ICD_BACKGROUND: dict[str, float] = {
    "K219": 0.08,
    "K573": 0.05,
    "N390": 0.04,
    "J459": 0.05,
    "M179": 0.04,
    "H269": 0.06,
    "Z864": 0.03,
    "K802": 0.03,
    "I251": 0.03,
    "I489": 0.03,
    "R074": 0.05,
    "K449": 0.05,
    "D649": 0.03,
    "Z870": 0.02,
    "M199": 0.03,
    "R101": 0.04,
    "K580": 0.02,
    "G473": 0.02,
}


#: Published mean ± SD by sex, ((women mean, women SD), (men mean, men SD)), STUDIES.md §1–2.
PUBLISHED_MARGINALS: dict[str, tuple[tuple[float, float], tuple[float, float]]] = {
    "age": ((64.1, 7.5), (65.5, 7.8)),
    "bmi": ((25.9, 4.7), (26.9, 3.9)),
    "height_cm": ((162.8, 6.2), (176.2, 6.7)),
    "weight_kg": ((68.7, 12.9), (83.5, 13.3)),
    "grip_kg": ((24.1, 6.1), (38.9, 8.9)),
    "vbm_ff": ((52.5, 10.8), (47.3, 10.9)),
    "vbm_pdff": ((40.0, 9.0), (37.5, 8.7)),
    "vbm_iron": ((1.82, 0.38), (1.92, 0.41)),
    "tmv_cm3": ((7586.0, 1076.0), (11166.0, 1690.0)),
    "pa_ratio": ((0.45, 0.06), (0.45, 0.06)),
}


@dataclass(frozen=True)
class ObservationModel:
    """How the latent population is observed in the UK Biobank phenotype table (:func:`to_ukbconv`).

    Rates are per participant (0–1); pairs are ``(women, men)``.
    """

    missing_anthropometry: float = 0.005
    """Share missing height and weight (fields 50, 12144, 21002, hence 21001)."""
    missing_waist_hip: float = 0.01
    """Share missing waist and hip circumference (48, 49)."""
    missing_grip: float = 0.02
    """Share missing both grip measurements (46, 47)."""
    missing_dxa: float = 0.30
    """Share without a DXA scan (23226, T-score, 23258/23275/23280/23285)."""
    missing_igf1: float = 0.07
    """Share missing IGF-1 (30770)."""
    missing_townsend: float = 0.001
    """Share missing the Townsend index (189)."""
    missing_met: float = 0.15
    """Share whose vigorous MET-minutes (22039) could not be derived."""
    missing_amra_dixon: float = 0.10
    """Share missing the Dixon-based AMRA IDPs (22407, 22408, 22409)."""
    missing_amra_liver: float = 0.10
    """Share missing AMRA liver PDFF (22402)."""
    missing_ethnicity: float = 0.002
    """Share missing ethnicity (21000)."""
    amra_volume_cv: float = 0.02
    """Multiplicative (coefficient-of-variation) noise of AMRA VAT/ASAT volumes."""
    amra_tmv_cv: float = 0.015
    """Multiplicative noise of AMRA total thigh muscle volume."""
    amra_liver_sd_pct: float = 0.3
    """Additive noise of AMRA liver PDFF, percentage points."""
    do_not_know_rate: float = 0.01
    """Rate of −1 (do not know) in fields that offer it."""
    prefer_not_rate: float = 0.003
    """Rate of −3 (prefer not to answer) in fields that offer it."""
    walking_none_rate: float = 0.004
    """Rate of −7 (none of the above: unable to walk) in walking pace (924)."""
    icd_t2d: float = 0.55
    """Probability a T2D participant has an E11 hospital record."""
    self_report_t2d: float = 0.72
    """Probability a T2D participant self-reports 1223 (type 2 diabetes)."""
    self_report_diabetes: float = 0.5
    """Probability a T2D participant not self-reporting 1223 self-reports 1220 (diabetes)."""
    metformin_t2d: float = 0.55
    """Probability a T2D participant takes metformin."""
    gliclazide_t2d: float = 0.15
    """Probability a T2D participant takes gliclazide."""
    insulin_t2d: float = 0.10
    """Probability a T2D participant takes insulin (20003 and 6177/6153 code 3)."""
    metformin_background: float = 0.002
    """Probability a participant without diabetes takes metformin (e.g. prediabetes, PCOS)."""
    type1_diabetes: float = 0.003
    """Share of participants without T2D who have type-1 diabetes (E10, 1222, insulin)."""
    icd_type1: float = 0.6
    """Probability a type-1 diabetic has an E10 hospital record."""
    icd_osteoporosis_densitometric: float = 0.15
    """Probability a densitometric-only osteoporosis case also has an M80–M82 record."""
    self_report_osteoporosis: float = 0.35
    """Probability an osteoporosis case self-reports it (1309)."""
    icd_back_pain: float = 0.12
    """Probability a back-pain participant has an M545 record."""
    hypertension_intercept: float = -1.1
    """Log-odds of hypertension at the reference age and BMI, no T2D."""
    comorbidity_reference_age_y: float = 65.0
    """Reference age of the hidden comorbidity models (hypertension, cholesterol), years."""
    comorbidity_reference_bmi: float = 27.0
    """Reference BMI of the hypertension model, kg/m²."""
    hypertension_age: float = 0.06
    """Log-odds of hypertension per year of age above the reference."""
    hypertension_bmi: float = 0.09
    """Log-odds of hypertension per kg/m² of BMI above the reference."""
    hypertension_t2d: float = 1.0
    """Log-odds of hypertension with T2D."""
    cholesterol_intercept: float = -1.7
    """Log-odds of high cholesterol at the reference age, no T2D."""
    cholesterol_age: float = 0.04
    """Log-odds of high cholesterol per year of age above the reference."""
    cholesterol_t2d: float = 1.5
    """Log-odds of high cholesterol with T2D."""
    icd_hypertension: float = 0.6
    """Probability a hypertensive participant has an I10 record."""
    icd_cholesterol: float = 0.45
    """Probability a participant with high cholesterol has an E780 record."""
    self_report_hypertension: float = 0.7
    """Probability a hypertensive participant self-reports 1065."""
    self_report_cholesterol: float = 0.55
    """Probability a participant with high cholesterol self-reports 1473."""
    treated_hypertension: float = 0.75
    """Probability a hypertensive participant is on blood-pressure medication (code 2)."""
    treated_cholesterol: float = 0.8
    """Probability a participant with high cholesterol is on a statin (code 1)."""
    simvastatin_share: float = 0.6
    """Share of statin users on simvastatin (the rest on atorvastatin)."""
    amlodipine_share: float = 0.5
    """Share of treated hypertensives on amlodipine (the rest on ramipril)."""
    hormone_replacement: float = 0.05
    """Share of women on hormone replacement therapy (6153 code 4)."""
    oral_contraceptive: float = 0.002
    """Share of women on the oral contraceptive pill (6153 code 5)."""
    background_self_report: tuple[float, ...] = (0.10, 0.05, 0.08, 0.04)
    """Prevalence of self-reported asthma, hypothyroidism, osteoarthritis, irritable bowel."""
    background_medication: tuple[float, ...] = (0.10, 0.12)
    """Prevalence of omeprazole and aspirin."""
    pain_type_rates: tuple[float, ...] = (0.20, 0.02, 0.20, 0.07, 0.12, 0.18)
    """Rates of pain types 1 (headache), 2 (facial), 3 (neck/shoulder), 5 (stomach), 6 (hip), 7 (knee)."""
    pain_all_over: float = 0.01
    """Rate of code 8 (pain all over the body), which excludes other answers."""
    activity_type_rates: tuple[float, ...] = (0.72, 0.45, 0.10, 0.55, 0.30)
    """Rates of activity types 1 walking, 2 other exercise, 3 strenuous, 4 light DIY, 5 heavy DIY."""
    low_activity_none: float = 0.6
    """Share of low-activity participants answering −7 (none) rather than light DIY only."""
    weight_gain_rate: float = 0.25
    """Share answering 'gained weight' (2306 code 2) among those who did not lose weight."""
    tiredness_several_days: float = 0.35
    """Share answering 'several days' (2080 code 2) among those not exhausted."""
    tiredness_nearly_every_day: float = 0.4
    """Share answering 'nearly every day' (2080 code 4) among the exhausted."""
    brisk_pace: float = 0.45
    """Share answering 'brisk' (924 code 3) among those not slow."""
    icd_start: str = "1997-04-01"
    """Earliest date of a hospital record (field 41280)."""
    diagnosis_lookback_y: float = 12.0
    """Prevalent diagnoses are dated up to this many years before the imaging visit."""


@dataclass(frozen=True)
class GenerativeModel:
    """Distributions and coefficients of the synthetic population; ``(women, men)`` for pairs.

    Every regression is centred on the sex-specific published means (``age_mean_y``, ``height_mean_cm``,
    the log-BMI mean...), so intercepts read as the value of a typical participant. ``ln`` means natural
    log; "log-odds" coefficients feed logistic models, "probit" ones standard-normal threshold models.
    """

    # -- demographics -----------------------------------------------------------------------------------
    male_fraction: float = 0.49
    """Share of men (field 31 code 1)."""
    age_mean_y: tuple[float, float] = (64.1, 65.5)
    """Mean age at the imaging visit, years (STUDIES.md §1)."""
    age_sd_y: tuple[float, float] = (7.5, 7.8)
    """SD of age at the imaging visit, years."""
    age_range_y: tuple[float, float] = (45.0, 82.0)
    """Range of age at imaging; age is a normal truncated to it with the target mean and SD."""
    recruitment_age_range_y: tuple[float, float] = (40.0, 70.0)
    """Age range at the baseline visit; imaging and baseline dates are drawn to respect it."""
    imaging_start: str = "2014-05-01"
    """First imaging visit date."""
    imaging_end: str = "2020-03-15"
    """Last imaging visit date."""
    imaging_date_beta: tuple[float, float] = (2.0, 1.4)
    """Beta(a, b) shape of the imaging date over [start, end]: recruitment ramps up over time."""
    baseline_start: str = "2006-03-13"
    """First baseline (instance 0) visit date; baseline dates are uniform."""
    baseline_end: str = "2010-10-01"
    """Last baseline visit date."""
    followup_end: str = "2023-03-31"
    """Censoring date of death records."""
    centre_codes: tuple[int, ...] = (11025, 11026, 11027, 11028)
    """Imaging centres (field 54): Cheadle, Reading, Newcastle, Bristol."""
    centre_probabilities: tuple[float, ...] = (0.42, 0.27, 0.26, 0.05)
    """Share of participants per imaging centre."""
    ethnicity_codes: tuple[int, ...] = (
        1001, 1002, 1003, 2001, 2002, 2003, 2004, 3001, 3002, 3003, 3004, 4001, 4002, 4003, 5, 6,
    )  # fmt: skip
    """Field 21000 codes: White British/Irish/other, mixed, Asian, Black, Chinese, other."""
    ethnicity_probabilities: tuple[float, ...] = (
        0.885, 0.025, 0.040, 0.002, 0.002, 0.002, 0.003, 0.008, 0.003, 0.002, 0.002, 0.004, 0.004,
        0.001, 0.003, 0.014,
    )  # fmt: skip
    """Share of each ethnicity code."""
    townsend_min: float = -6.26
    """Lower bound of the Townsend index (shift of its log-normal)."""
    townsend_max: float = 11.0
    """Upper clip of the Townsend index."""
    townsend_mean: float = -1.9
    """Mean Townsend deprivation index of the imaging cohort."""
    townsend_sd: float = 2.8
    """SD of the Townsend index (right-skewed)."""
    smoking_probabilities: tuple[float, float, float] = (0.60, 0.36, 0.04)
    """Never, previous, current smoking (field 20116 codes 0, 1, 2)."""
    smoking_townsend: float = 0.2
    """Probit loading of smoking (ordered never < previous < current) on the Townsend z-score."""
    alcohol_probabilities: tuple[float, ...] = (0.22, 0.27, 0.25, 0.10, 0.10, 0.06)
    """Alcohol intake frequency (1558): daily, 3–4/week, 1–2/week, 1–3/month, occasions, never."""
    alcohol_male: float = 0.3
    """Probit shift of men towards more frequent drinking (lower 1558 codes)."""
    vigorous_days_probabilities: tuple[float, ...] = (0.36, 0.12, 0.15, 0.14, 0.08, 0.08, 0.02, 0.05)
    """Days per week of vigorous activity 0..7 (field 904) before low-activity participants are zeroed."""
    vigorous_fitness: float = 0.5
    """Probit loading of vigorous days on the latent fitness score."""
    vigorous_minutes_median: float = 40.0
    """Median minutes of vigorous activity per active day."""
    vigorous_minutes_log_sd: float = 0.6
    """SD of ln(minutes per active day)."""
    vigorous_minutes_range: tuple[float, float] = (10.0, 240.0)
    """Clip of minutes per active day."""
    vigorous_met: float = 8.0
    """MET of vigorous activity (IPAQ); MET-min/week = MET × days × minutes."""
    igf1_mean_nmol_l: tuple[float, float] = (21.0, 22.0)
    """Mean IGF-1 at the mean age, nmol/L."""
    igf1_age: float = -0.12
    """IGF-1 change per year of age, nmol/L."""
    igf1_resid_sd: tuple[float, float] = (5.2, 5.2)
    """Residual SD of IGF-1, nmol/L."""
    igf1_range: tuple[float, float] = (3.0, 70.0)
    """Clip of IGF-1, nmol/L."""

    # -- anthropometry ----------------------------------------------------------------------------------
    height_mean_cm: tuple[float, float] = (162.8, 176.2)
    """Mean standing height, cm."""
    height_sd_cm: tuple[float, float] = (6.2, 6.7)
    """Marginal SD of height (used to standardise height as a predictor), cm."""
    height_age: float = -0.12
    """Height change per year of age (cohort effect and shrinkage), cm."""
    height_resid_sd_cm: tuple[float, float] = (6.13, 6.63)
    """Residual SD of height given age, cm."""
    bmi_mean: tuple[float, float] = (25.9, 26.9)
    """Mean BMI, kg/m²; BMI is log-normal with this mean and ``bmi_sd``."""
    bmi_sd: tuple[float, float] = (4.7, 3.9)
    """SD of BMI, kg/m²."""
    bmi_height: tuple[float, float] = (-0.022, -0.010)
    """Change of ln BMI per SD of height (shorter people are a little heavier for their height)."""
    bmi_townsend: float = 0.02
    """Change of ln BMI per SD of the Townsend latent score."""
    bmi_resid_log_sd: tuple[float, float] = (0.1775, 0.1425)
    """Residual SD of ln BMI."""
    bmi_range: tuple[float, float] = (14.0, 70.0)
    """Clip of BMI, kg/m²."""
    waist_mean_cm: tuple[float, float] = (84.0, 96.0)
    """Waist circumference at the mean BMI and age, cm."""
    waist_bmi: tuple[float, float] = (2.3, 2.5)
    """Waist per kg/m² of BMI, cm."""
    waist_age: float = 0.15
    """Waist per year of age, cm."""
    waist_resid_sd_cm: tuple[float, float] = (6.1, 5.0)
    """Residual SD of waist, cm."""
    hip_mean_cm: tuple[float, float] = (103.0, 102.0)
    """Hip circumference at the mean BMI, cm."""
    hip_bmi: tuple[float, float] = (1.8, 1.6)
    """Hip per kg/m² of BMI, cm."""
    hip_resid_sd_cm: tuple[float, float] = (4.2, 3.2)
    """Residual SD of hip, cm."""

    # -- adipose depots and liver -------------------------------------------------------------------
    vat_mean_l: tuple[float, float] = (2.5, 4.5)
    """Mean visceral adipose tissue volume, L (log-normal)."""
    vat_sd_l: tuple[float, float] = (1.4, 2.0)
    """SD of VAT, L; sets the centre of ln VAT."""
    vat_bmi: float = 2.0
    """Elasticity of VAT to BMI (change of ln VAT per unit ln BMI)."""
    vat_age: tuple[float, float] = (0.012, 0.010)
    """Change of ln VAT per year of age."""
    vat_resid_log_sd: tuple[float, float] = (0.368, 0.299)
    """Residual SD of ln VAT."""
    asat_mean_l: tuple[float, float] = (7.6, 5.6)
    """Mean abdominal subcutaneous adipose tissue volume, L (women > men)."""
    asat_sd_l: tuple[float, float] = (3.0, 2.3)
    """SD of ASAT, L; sets the centre of ln ASAT."""
    asat_bmi: tuple[float, float] = (1.8, 2.3)
    """Elasticity of ASAT to BMI."""
    asat_resid_log_sd: tuple[float, float] = (0.20, 0.214)
    """Residual SD of ln ASAT."""
    liver_pdff_median_pct: tuple[float, float] = (2.2, 2.9)
    """Median liver PDFF at the centre of ln VAT, %."""
    liver_pdff_vat: float = 0.7
    """Elasticity of liver PDFF to VAT."""
    liver_pdff_t2d: float = 0.35
    """Change of ln liver PDFF with T2D."""
    liver_pdff_resid_log_sd: tuple[float, float] = (0.711, 0.743)
    """Residual SD of ln liver PDFF."""
    liver_pdff_range: tuple[float, float] = (0.5, 60.0)
    """Clip of liver PDFF, %."""
    liver_r2star_mean: tuple[float, float] = (34.0, 36.0)
    """Mean liver R2*, s⁻¹."""
    liver_r2star_sd: tuple[float, float] = (7.5, 8.0)
    """SD of liver R2*, s⁻¹."""
    liver_r2star_range: tuple[float, float] = (15.0, 150.0)
    """Clip of liver R2*, s⁻¹."""
    mfi_mean_pct: tuple[float, float] = (7.6, 6.4)
    """Thigh muscle fat infiltration at the mean age and BMI, %."""
    mfi_age: float = 0.08
    """Muscle fat infiltration per year of age, percentage points."""
    mfi_bmi: float = 0.2
    """Muscle fat infiltration per kg/m² of BMI, percentage points."""
    mfi_resid_sd: tuple[float, float] = (1.66, 1.5)
    """Residual SD of muscle fat infiltration, percentage points."""
    mfi_range: tuple[float, float] = (1.5, 30.0)
    """Clip of muscle fat infiltration, %."""

    # -- muscle -------------------------------------------------------------------------------------------
    tmv_mean_cm3: tuple[float, float] = (7586.0, 11166.0)
    """Mean total thigh muscle volume (both legs), cm³ (STUDIES.md §2); sets the centre of ln TMV."""
    tmv_sd_cm3: tuple[float, float] = (1076.0, 1690.0)
    """SD of TMV, cm³; sets the centre of ln TMV."""
    tmv_height: float = 2.8
    """Elasticity of TMV to height."""
    tmv_bmi: float = 0.4
    """Elasticity of TMV to BMI."""
    tmv_age: float = -0.0028
    """Change of ln TMV per year of age (≈ −4.7 % per decade with the height decline)."""
    tmv_resid_log_sd: tuple[float, float] = (0.0635, 0.0867)
    """SD of the latent muscularity term of ln TMV."""
    muscle_fitness: float = 0.3
    """Correlation of the latent muscularity with the latent fitness score."""
    pa_ratio_mean: float = 0.45
    """Posterior/anterior thigh muscle volume ratio at the mean age."""
    pa_ratio_sd: float = 0.06
    """Marginal SD of the P/A ratio (standardises it as a predictor)."""
    pa_ratio_age: float = 0.0012
    """Change of the P/A ratio per year of age."""
    pa_ratio_resid_sd: float = 0.0593
    """Residual SD of the P/A ratio."""
    pa_ratio_range: tuple[float, float] = (0.25, 0.75)
    """Clip of the P/A ratio."""
    thigh_asymmetry_mean: float = -0.004
    """Mean (left − right)/mean thigh muscle volume (right-dominant majority)."""
    thigh_asymmetry_sd: float = 0.03
    """SD of the thigh asymmetry."""
    lean_legs_per_tmv: tuple[float, float] = (1.8, 1.8)
    """DXA leg lean mass per litre of TMV, kg/L."""
    lean_legs_log_sd: float = 0.089
    """SD of ln(leg lean / TMV) scatter (sets corr(TMV, leg lean) ≈ 0.936)."""
    lean_arms_per_legs: tuple[float, float] = (0.33, 0.39)
    """DXA arm lean mass per kg of leg lean mass."""
    lean_arms_log_sd: float = 0.07
    """SD of ln(arm lean / leg lean) scatter."""
    lean_trunk_per_legs: tuple[float, float] = (1.58, 1.54)
    """DXA trunk lean mass per kg of leg lean mass."""
    lean_trunk_log_sd: float = 0.06
    """SD of ln(trunk lean / leg lean) scatter."""
    lean_head_kg: tuple[float, float] = (3.0, 3.8)
    """DXA head lean mass, kg (added to the total)."""
    low_almi_kg_m2: tuple[float, float] = (5.5, 7.0)
    """EWGSOP2 low-muscle cut-off of ALMI, kg/m²."""

    # -- grip -------------------------------------------------------------------------------------------
    grip_center_kg: tuple[float, float] = (24.1, 38.9)
    """Grip strength (best hand) of a typical participant, kg."""
    grip_tmv: tuple[float, float] = (19.0, 27.0)
    """Grip per unit ln TMV (muscle), kg."""
    grip_age: tuple[float, float] = (-0.2, -0.35)
    """Direct grip change per year of age (on top of muscle loss), kg."""
    grip_pa: tuple[float, float] = (-0.75, -1.1)
    """Grip change per SD of the P/A ratio, kg."""
    grip_frailty: tuple[float, float] = (-0.8, -1.2)
    """Grip change per unit of the latent frailty score, kg."""
    grip_resid_sd: tuple[float, float] = (4.83, 6.5)
    """Residual SD of grip (left-skewed), kg."""
    grip_skew: float = -6.0
    """Skew-normal shape of the grip residual (negative: a left tail, more weak grips)."""
    grip_hand_difference_sd: tuple[float, float] = (2.0, 3.0)
    """Scale of the half-normal gap between the strong and the weak hand, kg."""
    grip_right_dominant: float = 0.75
    """Probability that the right hand is the stronger."""
    low_grip_kg: tuple[float, float] = (16.0, 27.0)
    """EWGSOP2 weak-grip cut-off, kg (grip below it)."""

    # -- bone -------------------------------------------------------------------------------------------
    bmd_center: tuple[float, float] = (1.10, 1.22)
    """L1–L4 BMD at the mean age and BMI, g/cm²."""
    bmd_age: tuple[float, float] = (-0.006, 0.001)
    """BMD change per year of age, g/cm²."""
    bmd_bmi: tuple[float, float] = (0.012, 0.010)
    """BMD change per kg/m² of BMI, g/cm²."""
    bmd_resid_sd: tuple[float, float] = (0.154, 0.175)
    """Residual SD of BMD, g/cm²."""
    bmd_range: tuple[float, float] = (0.4, 2.2)
    """Clip of BMD, g/cm²."""
    bmd_reference_mean: tuple[float, float] = (1.18, 1.18)
    """Young-adult reference mean of L1–L4 BMD for the T-score, g/cm² (unverified)."""
    bmd_reference_sd: tuple[float, float] = (0.12, 0.12)
    """Young-adult reference SD of L1–L4 BMD, g/cm² (unverified)."""
    tscore_osteoporosis: float = -2.5
    """T-score at or below which osteoporosis is densitometric (WHO)."""
    clinical_osteoporosis_intercept: tuple[float, float] = (-3.8, -5.3)
    """Log-odds of a clinical (hospital-recorded) osteoporosis diagnosis at T-score 0."""
    clinical_osteoporosis_tscore: float = -1.0
    """Log-odds of a clinical diagnosis per unit T-score."""

    # -- disease --------------------------------------------------------------------------------------
    t2d_intercept: tuple[float, float] = (-3.52, -2.92)
    """Log-odds of T2D at the centre of ln VAT and the mean age."""
    t2d_vat: float = 1.6
    """Log-odds of T2D per unit ln VAT."""
    t2d_age: float = 0.04
    """Log-odds of T2D per year of age."""
    t2d_townsend: float = 0.15
    """Log-odds of T2D per SD of the Townsend latent score."""
    back_pain_intercept: float = -1.65
    """Log-odds of back pain for a typical man."""
    back_pain_female: float = 0.25
    """Log-odds of back pain for women."""
    back_pain_bmi: float = 0.03
    """Log-odds of back pain per kg/m² of BMI."""
    back_pain_smoking: float = 0.3
    """Log-odds of back pain for current smokers."""
    back_pain_frailty: float = 0.3
    """Log-odds of back pain per unit of the latent frailty score."""

    # -- frailty (Fried) ------------------------------------------------------------------------------
    frailty_age: float = 0.03
    """Latent frailty score per year of age."""
    frailty_townsend: float = 0.25
    """Latent frailty per SD of the Townsend latent score."""
    frailty_bmi: float = 0.04
    """Latent frailty per kg/m² of BMI."""
    frailty_fitness: float = -0.4
    """Latent frailty per SD of latent fitness."""
    frailty_indicator_intercepts: tuple[float, float, float, float] = (-1.24, -1.58, -1.75, -1.70)
    """Probit intercepts of weight loss, exhaustion, low activity, slow walking pace."""
    frailty_indicator_loadings: tuple[float, float, float, float] = (0.3, 0.4, 0.4, 0.45)
    """Probit loadings of the four indicators on the latent frailty score."""
    frailty_min_indicators: int = 3
    """Frail at this many of the five Fried indicators (pre-frail at 1 to this minus one)."""

    # -- falls and mortality ----------------------------------------------------------------------------
    falls_intercept: float = -1.45
    """Log-odds of any fall in the last year for a typical man."""
    falls_age: float = 0.03
    """Log-odds of a fall per year of age."""
    falls_female: float = 0.3
    """Log-odds of a fall for women."""
    falls_frailty: float = 0.35
    """Log-odds of a fall per unit of latent frailty."""
    falls_pa: float = 0.055
    """Log-odds of a fall per SD of the P/A ratio."""
    falls_recurrent: float = 0.38
    """Share of fallers reporting more than one fall (2296 code 3)."""
    death_rate_per_y: float = 0.003
    """Baseline mortality hazard of a typical woman, per year."""
    death_age: float = 0.09
    """Log-hazard of death per year of age."""
    death_male: float = 0.4
    """Log-hazard of death for men."""
    death_pa: float = 0.19
    """Log-hazard of death per SD of the P/A ratio."""
    death_frailty: float = 0.35
    """Log-hazard of death per unit of latent frailty."""
    death_smoking: float = 0.8
    """Log-hazard of death for current smokers."""
    death_t2d: float = 0.5
    """Log-hazard of death with T2D."""

    # -- bone marrow --------------------------------------------------------------------------------
    vbm_pdff_center: tuple[float, float] = (39.9, 37.4)
    """VBM PDFF of a typical participant without T2D, %."""
    vbm_pdff_age: tuple[float, float] = (0.21, 0.25)
    """VBM PDFF per year of age (direct), percentage points."""
    vbm_pdff_vat: float = 1.5
    """VBM PDFF per unit ln VAT, percentage points."""
    vbm_pdff_bmd: float = -10.0
    """VBM PDFF per g/cm² of spine BMD, percentage points."""
    vbm_pdff_tmv: float = -8.0
    """VBM PDFF per unit ln TMV, percentage points."""
    vbm_pdff_t2d: tuple[float, float] = (2.4, 1.7)
    """VBM PDFF with T2D, percentage points (STUDIES.md §1)."""
    vbm_pdff_resid_sd: tuple[float, float] = (8.43, 8.06)
    """Residual SD of VBM PDFF, percentage points."""
    vbm_pdff_range: tuple[float, float] = (5.0, 90.0)
    """Clip of VBM PDFF, %."""
    marrow_t1_loc_s: tuple[float, float] = (0.84, 0.34)
    """Location of marrow-water T1 (a normal truncated to ``marrow_t1_range``) at the PDFF centre, s."""
    marrow_t1_scale_s: tuple[float, float] = (0.70, 0.45)
    """Scale of the truncated normal of marrow-water T1, s."""
    marrow_t1_pdff: float = 0.012
    """Shift of the T1 location per point of VBM PDFF, s (fattier marrow, longer water T1)."""
    marrow_t1_range: tuple[float, float] = (0.4, 1.2)
    """Support of marrow-water T1, s."""
    dixon_tr_s: float = 6.69e-3
    """Repetition time of the neck-to-knee Dixon, s."""
    dixon_flip_angle_deg: float = 10.0
    """Flip angle of the neck-to-knee Dixon, degrees."""
    vbm_iron_mean: tuple[float, float] = (1.82, 1.92)
    """Mean VBM iron, mg/g (log-normal); sets the centre of ln iron."""
    vbm_iron_sd: tuple[float, float] = (0.38, 0.41)
    """SD of VBM iron, mg/g; sets the centre of ln iron."""
    vbm_iron_t2d: float = -0.08
    """Change of ln iron with T2D."""
    vbm_iron_age: tuple[float, float] = (0.004, 0.0)
    """Change of ln iron per year of age."""
    vbm_iron_resid_log_sd: tuple[float, float] = (0.206, 0.211)
    """Residual SD of ln iron."""
    iron_range: tuple[float, float] = (0.3, 6.0)
    """Clip of VBM iron, mg/g."""
    iron_intercept: float = 0.202
    """Iron = intercept + slope × R2* (mg/g)."""
    iron_slope: float = 0.0254
    """Iron per unit R2*, mg/g per s⁻¹."""
    femur_pdff_center: float = 86.0
    """Femoral marrow PDFF of a typical participant, %."""
    femur_pdff_vbm: float = 0.3
    """Femoral PDFF per point of VBM PDFF."""
    femur_pdff_age: float = 0.1
    """Femoral PDFF per year of age, percentage points."""
    femur_pdff_resid_sd: float = 3.0
    """Residual SD of femoral PDFF, percentage points."""
    femur_pdff_range: tuple[float, float] = (60.0, 98.0)
    """Clip of femoral PDFF, %."""

    # -- repeat imaging visit ------------------------------------------------------------------------
    repeat_interval_mean_y: float = 2.5
    """Mean interval from the first to the repeat imaging visit, years."""
    repeat_interval_sd_y: float = 0.3
    """SD of the repeat interval, years."""
    repeat_interval_range: tuple[float, float] = (1.9, 3.4)
    """Clip of the repeat interval, years."""
    repeat_same_centre: float = 0.95
    """Probability the repeat visit is at the same centre."""
    repeat_height_sd_cm: float = 0.5
    """Test–retest SD of height, cm."""
    repeat_weight_log_sd: float = 0.04
    """SD of ln weight change between visits."""
    repeat_weight_trend: float = -0.002
    """Mean change of ln weight per year between visits."""
    repeat_grip_sd_kg: float = 2.5
    """Test–retest SD of grip, kg."""

    observation: ObservationModel = field(default_factory=ObservationModel)
    """How the population is observed in the phenotype table."""


#: The default model (the signature default of the public functions).
DEFAULT_MODEL = GenerativeModel()


# ---------------------------------------------------------------------------------------------------------
# helpers


def _rng(seed: int, stream: str) -> np.random.Generator:
    """Independent generator for one named block of draws (stable across runs and Python versions)."""
    return np.random.default_rng([seed, zlib.crc32(stream.encode())])


def _pair(values: tuple[float, float], sex: np.ndarray) -> np.ndarray:
    """Per-participant value of a ``(women, men)`` pair."""
    return np.asarray(values, dtype=float)[sex]


def _lognormal(mean: tuple[float, float], sd: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """(μ, σ) of ln X per sex for a log-normal X with the given mean and SD."""
    mean_a, sd_a = np.asarray(mean, dtype=float), np.asarray(sd, dtype=float)
    sigma = np.sqrt(np.log1p((sd_a / mean_a) ** 2))
    return np.log(mean_a) - sigma**2 / 2.0, sigma


def _truncnorm_moments(loc: float, scale: float, lower: float, upper: float) -> tuple[float, float]:
    """Mean and SD of Normal(loc, scale) truncated to [lower, upper]."""
    a, b = (lower - loc) / scale, (upper - loc) / scale
    z = special.ndtr(b) - special.ndtr(a)
    pa, pb = np.exp(-(a**2) / 2.0) / np.sqrt(2.0 * np.pi), np.exp(-(b**2) / 2.0) / np.sqrt(2.0 * np.pi)
    shift = (pa - pb) / z
    var = 1.0 + (a * pa - b * pb) / z - shift**2
    return loc + scale * shift, scale * np.sqrt(var)


def _truncnorm_for_moments(mean: float, sd: float, lower: float, upper: float) -> tuple[float, float]:
    """(loc, scale) of the normal that, truncated to [lower, upper], has the given mean and SD."""

    def residual(params: np.ndarray) -> list[float]:
        got_mean, got_sd = _truncnorm_moments(params[0], np.exp(params[1]), lower, upper)
        return [got_mean - mean, np.log(got_sd / sd)]

    solution = optimize.fsolve(residual, x0=[mean, np.log(sd)], full_output=True)
    loc, log_scale = solution[0]
    return float(loc), float(np.exp(log_scale))


def _truncated_normal(
    rng: np.random.Generator, loc: np.ndarray, scale: np.ndarray, lower: float, upper: float
) -> np.ndarray:
    """Normal(loc, scale) truncated to [lower, upper] by inverse-CDF sampling (no pile-up at bounds)."""
    a, b = special.ndtr((lower - loc) / scale), special.ndtr((upper - loc) / scale)
    u = a + (b - a) * rng.random(np.shape(loc))
    return np.clip(loc + scale * special.ndtri(u), lower, upper)


def _standard_skew_normal(rng: np.random.Generator, n: int, shape: float) -> np.ndarray:
    """Skew-normal draws (shape α; α < 0 gives a left tail) standardised to mean 0 and SD 1."""
    delta = shape / np.sqrt(1.0 + shape**2)
    x = delta * np.abs(rng.standard_normal(n)) + np.sqrt(1.0 - delta**2) * rng.standard_normal(n)
    return (x - delta * np.sqrt(2.0 / np.pi)) / np.sqrt(1.0 - 2.0 * delta**2 / np.pi)


def _ordered(latent: np.ndarray, probabilities: tuple[float, ...]) -> np.ndarray:
    """Category 0..K−1 of a standard-normal latent cut at the quantiles of ``probabilities``."""
    p = np.asarray(probabilities, dtype=float)
    cuts = special.ndtri(np.cumsum(p / p.sum())[:-1])
    return np.searchsorted(cuts, latent)


def _days(date: str) -> int:
    """Days since 1970-01-01 of an ISO date."""
    return int(np.datetime64(date, "D").astype(np.int64))


def _timestamps(days: np.ndarray) -> np.ndarray:
    """datetime64[ns] of (possibly NaN) day numbers; NaN becomes NaT."""
    out = np.full(days.shape, np.datetime64("NaT"), dtype="datetime64[ns]")
    ok = np.isfinite(days)
    out[ok] = np.floor(days[ok]).astype(np.int64).astype("datetime64[D]")
    return out


def _day_numbers(values: pd.Series) -> np.ndarray:
    """Float day numbers of a datetime (or ISO-date string) column (NaT → NaN)."""
    arr = pd.to_datetime(values).to_numpy(dtype="datetime64[ns]")
    out = arr.astype("datetime64[D]").astype(np.int64).astype(float)
    out[np.isnat(arr)] = np.nan
    return out


def _date_strings(days: np.ndarray) -> np.ndarray:
    """``YYYY-MM-DD`` strings (object array, None where NaN)."""
    out = np.full(days.shape, None, dtype=object)
    ok = np.isfinite(days)
    out[ok] = np.datetime_as_string(days[ok].astype(np.int64).astype("datetime64[D]"), unit="D")
    return out


# ---------------------------------------------------------------------------------------------------------
# population


def simulate_population(
    n: int,
    seed: int,
    repeat_visit_rate: float = 0.05,
    model: GenerativeModel = DEFAULT_MODEL,
) -> pd.DataFrame:
    """Draw a synthetic UK Biobank imaging population.

    Parameters
    ----------
    n : int
        Number of participants (each attended the first imaging visit, instance 2).
    seed : int
        Non-negative seed; the same ``(n, seed, repeat_visit_rate, model)`` gives an identical frame.
    repeat_visit_rate : float
        Share of participants (alive at the time) who also attended the repeat imaging visit
        (instance 3), 0–1.
    model : GenerativeModel
        Distributions and coefficients.

    Returns
    -------
    pandas.DataFrame
        One row per participant, index ``eid`` (unique 7-digit ints, ascending). Columns, with units:

        - demographics: ``sex`` (0 female, 1 male), ``age`` (y), ``centre`` (11025–11028),
          ``imaging_date``, ``baseline_date``, ``birth_date`` (timestamps), ``baseline_interval_y`` (y),
          ``ethnicity`` (21000 code), ``townsend``, ``igf1`` (nmol/L), ``smoking`` (0/1/2), ``alcohol``
          (1558 code 1–6), ``met_vigorous`` (MET-min/week), ``days_vigorous`` (0–7);
        - body: ``height_cm``, ``weight_kg``, ``bmi`` (kg/m²), ``waist_cm``, ``hip_cm``;
        - DXA and strength: ``lean_arms_kg``, ``lean_legs_kg``, ``lean_trunk_kg``, ``lean_total_kg``,
          ``alm_kg``, ``almi`` (kg/m²), ``spine_bmd`` (g/cm², L1–L4), ``spine_tscore``, ``grip_left_kg``,
          ``grip_right_kg``, ``grip_kg`` (best hand; integer kg);
        - states (bool unless stated): ``t2d``, ``osteoporosis``, ``osteoporosis_clinical`` (hospital
          record), ``back_pain``, ``low_grip``, ``low_muscle``, ``sarcopenia``, ``weight_loss``,
          ``exhaustion``, ``low_activity``, ``slow_walking``, ``frailty_count`` (0–5), ``prefrail``,
          ``frail``, ``falls`` (2296 code 1/2/3), ``died``, ``death_date``;
        - repeat visit: ``repeat_visit``, ``repeat_date``, ``repeat_age`` (y), ``repeat_centre``,
          ``repeat_height_cm``, ``repeat_weight_kg``, ``repeat_bmi``, ``repeat_grip_left_kg``,
          ``repeat_grip_right_kg``, ``repeat_grip_kg`` (NaN/NaT without a repeat visit);
        - target IDPs (:data:`TRUTH_IDP_COLUMNS`): ``vbm_pdff``, ``vbm_ff`` (%), ``marrow_t1_water_s``
          (s), ``vbm_iron`` (mg/g), ``vbm_r2star`` (s⁻¹), ``femur_pdff``, ``liver_pdff`` (%),
          ``liver_r2star`` (s⁻¹), ``tmv_cm3`` (cm³, both thighs), ``tmv_left_cm3``, ``tmv_right_cm3``,
          ``pa_ratio``, ``thigh_asymmetry`` ((left − right)/mean), ``vat_l``, ``asat_l`` (L),
          ``muscle_fat_infiltration_pct`` (%).
    """
    if n < 1:
        raise ValueError(f"n must be ≥ 1, got {n}")
    if n > EID_MAX - EID_MIN + 1:
        raise ValueError(f"n must be ≤ {EID_MAX - EID_MIN + 1}, got {n}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    if not 0.0 <= repeat_visit_rate <= 1.0:
        raise ValueError(f"repeat_visit_rate must be in [0, 1], got {repeat_visit_rate}")
    m = model
    cols: dict[str, np.ndarray] = {}

    eid = np.sort(_rng(seed, "eid").choice(EID_MAX - EID_MIN + 1, size=n, replace=False) + EID_MIN)

    # demographics ------------------------------------------------------------------------------------
    rng = _rng(seed, "demographics")
    sex = (rng.random(n) < m.male_fraction).astype(np.int64)
    loc, scale = zip(
        *(
            _truncnorm_for_moments(mu, sd, *m.age_range_y)
            for mu, sd in zip(m.age_mean_y, m.age_sd_y, strict=True)
        ),
        strict=True,
    )
    age = _truncated_normal(rng, _pair(loc, sex), _pair(scale, sex), *m.age_range_y)
    age_c = age - _pair(m.age_mean_y, sex)
    centre = rng.choice(np.asarray(m.centre_codes), size=n, p=np.asarray(m.centre_probabilities))
    # imaging date: Beta over the imaging period, redrawn uniformly inside the window that lets the
    # participant have been recruitment age at some baseline date; then baseline inside that window
    t0, t1 = _days(m.imaging_start), _days(m.imaging_end)
    b0, b1 = _days(m.baseline_start), _days(m.baseline_end)
    youngest, oldest = m.recruitment_age_range_y
    lo = np.maximum(t0, b0 + (age - oldest) * DAYS_PER_YEAR)
    hi = np.minimum(t1, b1 + (age - youngest) * DAYS_PER_YEAR)
    imaging = t0 + (t1 - t0) * rng.beta(*m.imaging_date_beta, size=n)
    outside = (imaging < lo) | (imaging > hi)
    imaging = np.floor(np.where(outside, lo + (hi - lo) * rng.random(n), imaging))
    lo = np.maximum(b0, imaging - (age - youngest) * DAYS_PER_YEAR)
    hi = np.minimum(b1, imaging - (age - oldest) * DAYS_PER_YEAR)
    baseline = np.floor(lo + (hi - lo) * rng.random(n))
    birth = np.floor(imaging - age * DAYS_PER_YEAR)
    eth_p = np.asarray(m.ethnicity_probabilities)
    ethnicity = rng.choice(np.asarray(m.ethnicity_codes), size=n, p=eth_p / eth_p.sum())
    shift = m.townsend_mean - m.townsend_min
    town_sigma = np.sqrt(np.log1p((m.townsend_sd / shift) ** 2))
    z_town = rng.standard_normal(n)
    townsend = np.minimum(
        m.townsend_min + shift * np.exp(town_sigma * z_town - town_sigma**2 / 2.0), m.townsend_max
    )
    smoking = _ordered(
        m.smoking_townsend * z_town + np.sqrt(1.0 - m.smoking_townsend**2) * rng.standard_normal(n),
        m.smoking_probabilities,
    )
    alcohol = 1 + _ordered(rng.standard_normal(n) - m.alcohol_male * sex, m.alcohol_probabilities)
    z_fit = rng.standard_normal(n)
    igf1 = np.clip(
        _pair(m.igf1_mean_nmol_l, sex)
        + m.igf1_age * age_c
        + _pair(m.igf1_resid_sd, sex) * rng.standard_normal(n),
        *m.igf1_range,
    )

    # anthropometry ------------------------------------------------------------------------------------
    rng = _rng(seed, "anthropometry")
    height = (
        _pair(m.height_mean_cm, sex)
        + m.height_age * age_c
        + _pair(m.height_resid_sd_cm, sex) * rng.standard_normal(n)
    )
    z_height = (height - _pair(m.height_mean_cm, sex)) / _pair(m.height_sd_cm, sex)
    bmi_mu, _ = _lognormal(m.bmi_mean, m.bmi_sd)
    log_bmi = (
        bmi_mu[sex]
        + _pair(m.bmi_height, sex) * z_height
        + m.bmi_townsend * z_town
        + _pair(m.bmi_resid_log_sd, sex) * rng.standard_normal(n)
    )
    bmi = np.clip(np.exp(log_bmi), *m.bmi_range)
    log_bmi_c = np.log(bmi) - bmi_mu[sex]
    bmi_c = bmi - _pair(m.bmi_mean, sex)
    weight = bmi * (height / CM_PER_M) ** 2
    waist = (
        _pair(m.waist_mean_cm, sex)
        + _pair(m.waist_bmi, sex) * bmi_c
        + m.waist_age * age_c
        + _pair(m.waist_resid_sd_cm, sex) * rng.standard_normal(n)
    )
    hip = (
        _pair(m.hip_mean_cm, sex)
        + _pair(m.hip_bmi, sex) * bmi_c
        + _pair(m.hip_resid_sd_cm, sex) * rng.standard_normal(n)
    )

    # adipose depots -----------------------------------------------------------------------------------
    rng = _rng(seed, "adipose")
    vat_mu, _ = _lognormal(m.vat_mean_l, m.vat_sd_l)
    log_vat_c = (
        m.vat_bmi * log_bmi_c
        + _pair(m.vat_age, sex) * age_c
        + _pair(m.vat_resid_log_sd, sex) * rng.standard_normal(n)
    )
    vat = np.exp(vat_mu[sex] + log_vat_c)
    asat_mu, _ = _lognormal(m.asat_mean_l, m.asat_sd_l)
    asat = np.exp(
        asat_mu[sex]
        + _pair(m.asat_bmi, sex) * log_bmi_c
        + _pair(m.asat_resid_log_sd, sex) * rng.standard_normal(n)
    )

    # type-2 diabetes ----------------------------------------------------------------------------------
    rng = _rng(seed, "t2d")
    t2d_logit = (
        _pair(m.t2d_intercept, sex) + m.t2d_vat * log_vat_c + m.t2d_age * age_c + m.t2d_townsend * z_town
    )
    t2d = rng.random(n) < special.expit(t2d_logit)

    # liver and muscle fat ---------------------------------------------------------------------------
    rng = _rng(seed, "liver")
    liver_pdff = np.clip(
        _pair(m.liver_pdff_median_pct, sex)
        * np.exp(
            m.liver_pdff_vat * log_vat_c
            + m.liver_pdff_t2d * t2d
            + _pair(m.liver_pdff_resid_log_sd, sex) * rng.standard_normal(n)
        ),
        *m.liver_pdff_range,
    )
    liver_r2star = np.clip(
        _pair(m.liver_r2star_mean, sex) + _pair(m.liver_r2star_sd, sex) * rng.standard_normal(n),
        *m.liver_r2star_range,
    )
    mfi = np.clip(
        _pair(m.mfi_mean_pct, sex)
        + m.mfi_age * age_c
        + m.mfi_bmi * bmi_c
        + _pair(m.mfi_resid_sd, sex) * rng.standard_normal(n),
        *m.mfi_range,
    )

    # muscle --------------------------------------------------------------------------------------------
    rng = _rng(seed, "muscle")
    tmv_mu, _ = _lognormal(m.tmv_mean_cm3, m.tmv_sd_cm3)
    z_muscle = m.muscle_fitness * z_fit + np.sqrt(1.0 - m.muscle_fitness**2) * rng.standard_normal(n)
    log_tmv_c = (
        m.tmv_height * np.log(height / _pair(m.height_mean_cm, sex))
        + m.tmv_bmi * log_bmi_c
        + m.tmv_age * age_c
        + _pair(m.tmv_resid_log_sd, sex) * z_muscle
    )
    tmv = np.exp(tmv_mu[sex] + log_tmv_c)
    asymmetry = m.thigh_asymmetry_mean + m.thigh_asymmetry_sd * rng.standard_normal(n)
    pa_ratio = np.clip(
        m.pa_ratio_mean + m.pa_ratio_age * age_c + m.pa_ratio_resid_sd * rng.standard_normal(n),
        *m.pa_ratio_range,
    )
    z_pa = (pa_ratio - m.pa_ratio_mean) / m.pa_ratio_sd
    lean_legs = (
        _pair(m.lean_legs_per_tmv, sex)
        * tmv
        / CM3_PER_L
        * np.exp(m.lean_legs_log_sd * rng.standard_normal(n))
    )
    lean_arms = (
        _pair(m.lean_arms_per_legs, sex) * lean_legs * np.exp(m.lean_arms_log_sd * rng.standard_normal(n))
    )
    lean_trunk = (
        _pair(m.lean_trunk_per_legs, sex) * lean_legs * np.exp(m.lean_trunk_log_sd * rng.standard_normal(n))
    )
    lean_total = lean_arms + lean_legs + lean_trunk + _pair(m.lean_head_kg, sex)
    alm = lean_arms + lean_legs
    almi = alm / (height / CM_PER_M) ** 2

    # bone ----------------------------------------------------------------------------------------------
    rng = _rng(seed, "bone")
    bmd = np.round(
        np.clip(
            _pair(m.bmd_center, sex)
            + _pair(m.bmd_age, sex) * age_c
            + _pair(m.bmd_bmi, sex) * bmi_c
            + _pair(m.bmd_resid_sd, sex) * rng.standard_normal(n),
            *m.bmd_range,
        ),
        3,
    )
    tscore = np.round((bmd - _pair(m.bmd_reference_mean, sex)) / _pair(m.bmd_reference_sd, sex), 1)
    clinical_osteo = rng.random(n) < special.expit(
        _pair(m.clinical_osteoporosis_intercept, sex) + m.clinical_osteoporosis_tscore * tscore
    )
    osteoporosis = clinical_osteo | (tscore <= m.tscore_osteoporosis)

    # frailty, activity, grip -------------------------------------------------------------------------
    rng = _rng(seed, "frailty")
    z_frail = (
        m.frailty_age * age_c
        + m.frailty_townsend * z_town
        + m.frailty_bmi * bmi_c
        + m.frailty_fitness * z_fit
        + rng.standard_normal(n)
    )
    indicators = [
        a + lam * z_frail + rng.standard_normal(n) > 0.0
        for a, lam in zip(m.frailty_indicator_intercepts, m.frailty_indicator_loadings, strict=True)
    ]
    weight_loss, exhaustion, low_activity, slow_walking = indicators
    days_vigorous = _ordered(
        m.vigorous_fitness * z_fit + np.sqrt(1.0 - m.vigorous_fitness**2) * rng.standard_normal(n),
        m.vigorous_days_probabilities,
    )
    days_vigorous[low_activity] = 0
    minutes = np.clip(
        m.vigorous_minutes_median * np.exp(m.vigorous_minutes_log_sd * rng.standard_normal(n)),
        *m.vigorous_minutes_range,
    )
    met_vigorous = np.round(m.vigorous_met * days_vigorous * minutes)

    grip_true = np.maximum(
        _pair(m.grip_center_kg, sex)
        + _pair(m.grip_tmv, sex) * (np.log(tmv) - tmv_mu[sex])
        + _pair(m.grip_age, sex) * age_c
        + _pair(m.grip_pa, sex) * z_pa
        + _pair(m.grip_frailty, sex) * z_frail
        + _pair(m.grip_resid_sd, sex) * _standard_skew_normal(rng, n, m.grip_skew),
        0.0,
    )
    grip_gap = np.abs(_pair(m.grip_hand_difference_sd, sex) * rng.standard_normal(n))
    grip_best = np.round(grip_true)
    grip_other = np.maximum(np.round(grip_true - grip_gap), 0.0)
    right_strong = rng.random(n) < m.grip_right_dominant
    grip_right = np.where(right_strong, grip_best, grip_other)
    grip_left = np.where(right_strong, grip_other, grip_best)
    low_grip = grip_best < _pair(m.low_grip_kg, sex)
    low_muscle = almi < _pair(m.low_almi_kg_m2, sex)
    frailty_count = (weight_loss.astype(int) + exhaustion + low_activity + slow_walking + low_grip).astype(
        np.int64
    )
    frail = frailty_count >= m.frailty_min_indicators
    prefrail = (frailty_count >= 1) & ~frail

    back_pain = rng.random(n) < special.expit(
        m.back_pain_intercept
        + m.back_pain_female * (sex == FEMALE)
        + m.back_pain_bmi * bmi_c
        + m.back_pain_smoking * (smoking == SMOKING_CURRENT)
        + m.back_pain_frailty * z_frail
    )

    # falls and deaths -------------------------------------------------------------------------------
    rng = _rng(seed, "outcomes")
    fell = rng.random(n) < special.expit(
        m.falls_intercept
        + m.falls_age * age_c
        + m.falls_female * (sex == FEMALE)
        + m.falls_frailty * z_frail
        + m.falls_pa * z_pa
    )
    recurrent = rng.random(n) < m.falls_recurrent
    falls = np.where(fell, np.where(recurrent, FALLS_MORE, FALLS_ONE), FALLS_NONE)
    hazard = m.death_rate_per_y * np.exp(
        m.death_age * age_c
        + m.death_male * sex
        + m.death_pa * z_pa
        + m.death_frailty * z_frail
        + m.death_smoking * (smoking == SMOKING_CURRENT)
        + m.death_t2d * t2d
    )
    death_day = imaging + np.floor(rng.exponential(size=n) / hazard * DAYS_PER_YEAR) + 1.0
    died = death_day <= _days(m.followup_end)
    death_day = np.where(died, death_day, np.nan)

    # bone marrow --------------------------------------------------------------------------------------
    rng = _rng(seed, "marrow")
    vbm_pdff = np.clip(
        _pair(m.vbm_pdff_center, sex)
        + _pair(m.vbm_pdff_age, sex) * age_c
        + m.vbm_pdff_vat * log_vat_c
        + m.vbm_pdff_bmd * (bmd - _pair(m.bmd_center, sex))
        + m.vbm_pdff_tmv * (np.log(tmv) - tmv_mu[sex])
        + _pair(m.vbm_pdff_t2d, sex) * t2d
        + _pair(m.vbm_pdff_resid_sd, sex) * rng.standard_normal(n),
        *m.vbm_pdff_range,
    )
    t1_water = _truncated_normal(
        rng,
        _pair(m.marrow_t1_loc_s, sex) + m.marrow_t1_pdff * (vbm_pdff - _pair(m.vbm_pdff_center, sex)),
        _pair(m.marrow_t1_scale_s, sex),
        *m.marrow_t1_range,
    )
    vbm_ff = PERCENT * dixon_fat_fraction(
        vbm_pdff / PERCENT, t1_water, tr_s=m.dixon_tr_s, flip_angle_deg=m.dixon_flip_angle_deg
    )
    iron_mu, _ = _lognormal(m.vbm_iron_mean, m.vbm_iron_sd)
    vbm_iron = np.clip(
        np.exp(
            iron_mu[sex]
            + m.vbm_iron_t2d * t2d
            + _pair(m.vbm_iron_age, sex) * age_c
            + _pair(m.vbm_iron_resid_log_sd, sex) * rng.standard_normal(n)
        ),
        *m.iron_range,
    )
    femur_pdff = np.clip(
        m.femur_pdff_center
        + m.femur_pdff_vbm * (vbm_pdff - _pair(m.vbm_pdff_center, sex))
        + m.femur_pdff_age * age_c
        + m.femur_pdff_resid_sd * rng.standard_normal(n),
        *m.femur_pdff_range,
    )

    # repeat visit ------------------------------------------------------------------------------------
    rng = _rng(seed, "repeat")
    interval = np.clip(
        m.repeat_interval_mean_y + m.repeat_interval_sd_y * rng.standard_normal(n),
        *m.repeat_interval_range,
    )
    repeat_day = imaging + np.floor(interval * DAYS_PER_YEAR)
    alive = ~died | (np.nan_to_num(death_day, nan=np.inf) > repeat_day)
    repeat = (rng.random(n) < repeat_visit_rate) & alive
    same = rng.random(n) < m.repeat_same_centre
    other_centre = rng.choice(np.asarray(m.centre_codes), size=n, p=np.asarray(m.centre_probabilities))
    nan = np.full(n, np.nan)
    r_height = height + m.height_age * interval + m.repeat_height_sd_cm * rng.standard_normal(n)
    r_weight = weight * np.exp(
        m.repeat_weight_trend * interval + m.repeat_weight_log_sd * rng.standard_normal(n)
    )
    r_grip_true = (
        grip_true
        + (_pair(m.grip_age, sex) + _pair(m.grip_tmv, sex) * m.tmv_age) * interval
        + m.repeat_grip_sd_kg * rng.standard_normal(n)
    )
    r_best = np.maximum(np.round(r_grip_true), 0.0)
    r_other = np.maximum(np.round(r_grip_true - grip_gap), 0.0)

    cols = {
        "sex": sex,
        "age": age,
        "centre": centre,
        "imaging_date": _timestamps(imaging),
        "baseline_date": _timestamps(baseline),
        "birth_date": _timestamps(birth),
        "baseline_interval_y": (imaging - baseline) / DAYS_PER_YEAR,
        "ethnicity": ethnicity,
        "townsend": townsend,
        "igf1": igf1,
        "smoking": smoking,
        "alcohol": alcohol,
        "met_vigorous": met_vigorous,
        "days_vigorous": days_vigorous,
        "height_cm": height,
        "weight_kg": weight,
        "bmi": bmi,
        "waist_cm": waist,
        "hip_cm": hip,
        "grip_left_kg": grip_left,
        "grip_right_kg": grip_right,
        "grip_kg": grip_best,
        "lean_arms_kg": lean_arms,
        "lean_legs_kg": lean_legs,
        "lean_trunk_kg": lean_trunk,
        "lean_total_kg": lean_total,
        "alm_kg": alm,
        "almi": almi,
        "spine_bmd": bmd,
        "spine_tscore": tscore,
        "t2d": t2d,
        "osteoporosis": osteoporosis,
        "osteoporosis_clinical": clinical_osteo,
        "back_pain": back_pain,
        "low_grip": low_grip,
        "low_muscle": low_muscle,
        "sarcopenia": low_grip & low_muscle,
        "weight_loss": weight_loss,
        "exhaustion": exhaustion,
        "low_activity": low_activity,
        "slow_walking": slow_walking,
        "frailty_count": frailty_count,
        "prefrail": prefrail,
        "frail": frail,
        "falls": falls,
        "died": died,
        "death_date": _timestamps(death_day),
        "repeat_visit": repeat,
        "repeat_date": _timestamps(np.where(repeat, repeat_day, nan)),
        "repeat_age": np.where(repeat, age + (repeat_day - imaging) / DAYS_PER_YEAR, nan),
        "repeat_centre": np.where(repeat, np.where(same, centre, other_centre), nan),
        "repeat_height_cm": np.where(repeat, r_height, nan),
        "repeat_weight_kg": np.where(repeat, r_weight, nan),
        "repeat_bmi": np.where(repeat, r_weight / (r_height / CM_PER_M) ** 2, nan),
        "repeat_grip_left_kg": np.where(repeat, np.where(right_strong, r_other, r_best), nan),
        "repeat_grip_right_kg": np.where(repeat, np.where(right_strong, r_best, r_other), nan),
        "repeat_grip_kg": np.where(repeat, r_best, nan),
        "vbm_pdff": vbm_pdff,
        "vbm_ff": vbm_ff,
        "marrow_t1_water_s": t1_water,
        "vbm_iron": vbm_iron,
        "vbm_r2star": (vbm_iron - m.iron_intercept) / m.iron_slope,
        "femur_pdff": femur_pdff,
        "liver_pdff": liver_pdff,
        "liver_r2star": liver_r2star,
        "tmv_cm3": tmv,
        "tmv_left_cm3": tmv / 2.0 * (1.0 + asymmetry / 2.0),
        "tmv_right_cm3": tmv / 2.0 * (1.0 - asymmetry / 2.0),
        "pa_ratio": pa_ratio,
        "thigh_asymmetry": asymmetry,
        "vat_l": vat,
        "asat_l": asat,
        "muscle_fat_infiltration_pct": mfi,
    }
    return pd.DataFrame(cols, index=pd.Index(eid, name="eid"))


def truth_idps(population: pd.DataFrame) -> pd.DataFrame:
    """The target image-derived phenotypes of a population.

    Parameters
    ----------
    population : pandas.DataFrame
        Output of :func:`simulate_population`.

    Returns
    -------
    pandas.DataFrame
        The :data:`TRUTH_IDP_COLUMNS` (index ``eid``); units as in :func:`simulate_population`.
    """
    return population.loc[:, list(TRUTH_IDP_COLUMNS)].copy()


# ---------------------------------------------------------------------------------------------------------
# ukbconv table


def _col(field_id: int, instance: int, array: int = 0) -> str:
    return f"{field_id}-{instance}.{array}"


def _special(values: np.ndarray, rng: np.random.Generator, rates: dict[int, float]) -> np.ndarray:
    """Replace answers by special negative codes at the given rates (one draw per participant)."""
    out = values.astype(float).copy()
    u = rng.random(len(values))
    lo = 0.0
    for code, rate in rates.items():
        out[(u >= lo) & (u < lo + rate)] = code
        lo += rate
    return out


def _missing(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    out = np.asarray(values, dtype=float).copy()
    out[mask] = np.nan
    return out


def _int_column(values: np.ndarray) -> pd.Series:
    """Nullable integer column (CSV writes ``12``, not ``12.0``; NaN becomes empty)."""
    return pd.Series(values, dtype="float64").astype("Int64")


def _pack(n: int, rows: np.ndarray, values: np.ndarray, order: np.ndarray | None = None) -> np.ndarray:
    """Pack (participant row, value) pairs into an (n, width) array of arrays, ordered by ``order``."""
    key = order if order is not None else np.zeros(len(rows))
    idx = np.lexsort((key, rows))
    rows, values = rows[idx], values[idx]
    counts = np.bincount(rows, minlength=n)
    width = max(int(counts.max()) if len(rows) else 0, 1)  # a field always has array 0
    starts = np.cumsum(counts) - counts
    pos = np.arange(len(rows)) - starts[rows]
    fill = None if values.dtype == object else np.nan
    out = np.full((n, width), fill, dtype=object if values.dtype == object else float)
    out[rows, pos] = values
    return out


def _array_columns(cols: dict, field_id: int, instance: int, packed: np.ndarray, as_int: bool = True) -> None:
    for k in range(packed.shape[1]):
        values = packed[:, k]
        cols[_col(field_id, instance, k)] = _int_column(values) if as_int else values


def to_ukbconv(population: pd.DataFrame, seed: int, model: GenerativeModel = DEFAULT_MODEL) -> pd.DataFrame:
    """Render a population as a UK Biobank phenotype table in ukbconv CSV layout.

    Parameters
    ----------
    population : pandas.DataFrame
        Output of :func:`simulate_population` (index ``eid``).
    seed : int
        Seed of the observation draws (missingness, special codes, records).
    model : GenerativeModel
        Its :class:`ObservationModel` sets rates; the rest sets cut-offs and codes.

    Returns
    -------
    pandas.DataFrame
        Column ``eid`` first, then ``<field>-<instance>.<array>`` columns sorted by field, instance and
        array. Instance 0 = baseline, 2 = imaging, 3 = repeat imaging (only for repeat visitors).
        Categorical and integer fields are nullable integers with special negative codes (−1 do not know,
        −3 prefer not to answer, −7 none of the above); measurements carry instrument rounding; dates
        (53, 40000, 41280) are ``YYYY-MM-DD`` strings; ICD-10 codes (41270) are strings like ``E119``.
        DXA masses are in grams, AMRA volumes in litres, liver PDFF in %.
    """
    pop = population
    m = model
    o = model.observation
    n = len(pop)
    rng_m = _rng(seed, "ukbconv/missing")
    rng_c = _rng(seed, "ukbconv/codes")
    rng_r = _rng(seed, "ukbconv/records")
    rng_v = _rng(seed, "ukbconv/values")
    sex = pop["sex"].to_numpy().astype(np.int64)
    age = pop["age"].to_numpy(dtype=float)
    bmi = pop["bmi"].to_numpy(dtype=float)
    t2d = pop["t2d"].to_numpy(dtype=bool)
    repeat = pop["repeat_visit"].to_numpy(dtype=bool)
    imaging = _day_numbers(pop["imaging_date"])
    baseline = _day_numbers(pop["baseline_date"])
    birth = _day_numbers(pop["birth_date"])
    repeat_day = _day_numbers(pop["repeat_date"])
    end = float(_days(m.followup_end))
    dk, pn = {DO_NOT_KNOW: o.do_not_know_rate}, {PREFER_NOT: o.prefer_not_rate}
    dk_pn = {**dk, **pn}
    cols: dict[str, object] = {}

    # identifiers, dates, ages ------------------------------------------------------------------------
    cols[_col(31, 0)] = _int_column(sex)
    birth_dt = birth.astype(np.int64).astype("datetime64[D]")
    birth_year = birth_dt.astype("datetime64[Y]").astype(np.int64) + 1970
    birth_month = birth_dt.astype("datetime64[M]").astype(np.int64) % 12 + 1
    cols[_col(34, 0)] = _int_column(birth_year)
    cols[_col(52, 0)] = _int_column(birth_month)
    cols[_col(53, 0)] = _date_strings(baseline)
    cols[_col(53, 2)] = _date_strings(imaging)
    cols[_col(53, 3)] = _date_strings(np.where(repeat, repeat_day, np.nan))
    cols[_col(54, 2)] = _int_column(pop["centre"].to_numpy())
    cols[_col(54, 3)] = _int_column(np.where(repeat, pop["repeat_centre"].to_numpy(), np.nan))
    cols[_col(21003, 0)] = _int_column(np.floor((baseline - birth) / DAYS_PER_YEAR))
    cols[_col(21003, 2)] = _int_column(np.floor(age))
    cols[_col(21003, 3)] = _int_column(
        np.where(repeat, np.floor(pop["repeat_age"].to_numpy(dtype=float)), np.nan)
    )
    cols[_col(21000, 0)] = _int_column(
        _missing(
            _special(pop["ethnicity"].to_numpy(), rng_c, dk_pn),
            rng_m.random(n) < o.missing_ethnicity,
        )
    )
    cols[_col(189, 0)] = _missing(
        np.round(pop["townsend"].to_numpy(dtype=float), 5), rng_m.random(n) < o.missing_townsend
    )
    cols[_col(30770, 0)] = _missing(
        np.round(pop["igf1"].to_numpy(dtype=float), 3), rng_m.random(n) < o.missing_igf1
    )

    # anthropometry and grip at instances 2 and 3 ------------------------------------------------------
    for inst, prefix, mask in ((2, "", np.ones(n, bool)), (3, "repeat_", repeat)):
        gone = ~mask | (rng_m.random(n) < o.missing_anthropometry)
        h = _missing(np.round(pop[f"{prefix}height_cm"].to_numpy(dtype=float), 1), gone)
        w = _missing(np.round(pop[f"{prefix}weight_kg"].to_numpy(dtype=float), 1), gone)
        cols[_col(50, inst)] = h
        cols[_col(12144, inst)] = _int_column(_missing(np.round(h), gone))
        cols[_col(21002, inst)] = w
        cols[_col(21001, inst)] = np.round(w / (h / CM_PER_M) ** 2, BMI_DECIMALS)
        no_grip = ~mask | (rng_m.random(n) < o.missing_grip)
        cols[_col(46, inst)] = _int_column(_missing(pop[f"{prefix}grip_left_kg"].to_numpy(), no_grip))
        cols[_col(47, inst)] = _int_column(_missing(pop[f"{prefix}grip_right_kg"].to_numpy(), no_grip))
    no_circ = rng_m.random(n) < o.missing_waist_hip
    cols[_col(48, 2)] = _int_column(_missing(np.round(pop["waist_cm"].to_numpy(dtype=float)), no_circ))
    cols[_col(49, 2)] = _int_column(_missing(np.round(pop["hip_cm"].to_numpy(dtype=float)), no_circ))

    # DXA ---------------------------------------------------------------------------------------------
    no_dxa = rng_m.random(n) < o.missing_dxa
    for fid, name in (
        (23258, "lean_arms_kg"),
        (23275, "lean_legs_kg"),
        (23280, "lean_total_kg"),
        (23285, "lean_trunk_kg"),
    ):
        grams = np.round(pop[name].to_numpy(dtype=float) * G_PER_KG)
        cols[_col(fid, 2)] = _int_column(_missing(grams, no_dxa))
    cols[_col(23226, 2)] = _missing(pop["spine_bmd"].to_numpy(dtype=float), no_dxa)
    cols[_col(FIELD_SPINE_TSCORE, 2)] = _missing(pop["spine_tscore"].to_numpy(dtype=float), no_dxa)

    # AMRA body composition ----------------------------------------------------------------------------
    no_dixon = rng_m.random(n) < o.missing_amra_dixon
    no_liver = rng_m.random(n) < o.missing_amra_liver
    liver = np.maximum(
        pop["liver_pdff"].to_numpy(dtype=float) + o.amra_liver_sd_pct * rng_v.standard_normal(n), 0.0
    )
    cols[_col(22402, 2)] = _missing(np.round(liver, 2), no_liver)
    for fid, values, cv in (
        (22407, pop["vat_l"].to_numpy(dtype=float), o.amra_volume_cv),
        (22408, pop["asat_l"].to_numpy(dtype=float), o.amra_volume_cv),
        (22409, pop["tmv_cm3"].to_numpy(dtype=float) / CM3_PER_L, o.amra_tmv_cv),
    ):
        noisy = values * np.exp(cv * rng_v.standard_normal(n))
        cols[_col(fid, 2)] = _missing(np.round(noisy, VOLUME_DECIMALS), no_dixon)

    # lifestyle and frailty questions -----------------------------------------------------------------
    cols[_col(20116, 2)] = _int_column(_special(pop["smoking"].to_numpy(), rng_c, pn))
    cols[_col(1558, 2)] = _int_column(_special(pop["alcohol"].to_numpy(), rng_c, pn))
    days = _special(pop["days_vigorous"].to_numpy(), rng_c, dk_pn)
    cols[_col(904, 2)] = _int_column(days)
    cols[_col(22039, 2)] = _missing(
        pop["met_vigorous"].to_numpy(dtype=float), (days < 0) | (rng_m.random(n) < o.missing_met)
    )
    weight_change = np.where(
        pop["weight_loss"].to_numpy(bool),
        WEIGHT_LOST,
        np.where(rng_c.random(n) < o.weight_gain_rate, WEIGHT_GAINED, WEIGHT_SAME),
    )
    cols[_col(2306, 2)] = _int_column(_special(weight_change, rng_c, dk_pn))
    exhausted = pop["exhaustion"].to_numpy(bool)
    u = rng_c.random(n)
    tired = np.where(
        exhausted,
        np.where(u < o.tiredness_nearly_every_day, TIRED_DAILY, TIRED_MOST),
        np.where(u < o.tiredness_several_days, TIRED_SEVERAL, TIRED_NEVER),
    )
    cols[_col(2080, 2)] = _int_column(_special(tired, rng_c, dk_pn))
    pace = np.where(
        pop["slow_walking"].to_numpy(bool),
        PACE_SLOW,
        np.where(rng_c.random(n) < o.brisk_pace, PACE_BRISK, PACE_STEADY),
    )
    cols[_col(924, 2)] = _int_column(_special(pace, rng_c, {NONE_OF_ABOVE: o.walking_none_rate, **pn}))
    cols[_col(2296, 2)] = _int_column(_special(pop["falls"].to_numpy(), rng_c, dk_pn))

    # activity types (6164): low activity = none, or light DIY only
    low_act = pop["low_activity"].to_numpy(bool)
    act = rng_c.random((n, len(o.activity_type_rates))) < np.asarray(o.activity_type_rates)
    act_codes = np.asarray(ACTIVITY_CODES)
    heavy = act_codes != ACTIVITY_LIGHT_DIY
    act[~low_act & ~act[:, heavy].any(axis=1), 0] = True
    none_answer = low_act & (rng_c.random(n) < o.low_activity_none)
    act[low_act] = False
    act[low_act & ~none_answer, ACTIVITY_CODES.index(ACTIVITY_LIGHT_DIY)] = True
    rows, cidx = np.nonzero(act)
    packed = _pack(
        n,
        np.concatenate([rows, np.flatnonzero(none_answer)]),
        np.concatenate([act_codes[cidx], np.full(none_answer.sum(), NONE_OF_ABOVE)]).astype(float),
    )
    declined = rng_c.random(n) < o.prefer_not_rate
    packed[declined] = np.nan
    packed[declined, 0] = PREFER_NOT
    _array_columns(cols, 6164, 2, packed)

    # pain types (6159): 4 = back pain; 8 (all over) excludes others; none = −7
    back = pop["back_pain"].to_numpy(bool)
    pain_codes = np.asarray(PAIN_OTHER_CODES)
    pain = rng_c.random((n, len(pain_codes))) < np.asarray(o.pain_type_rates)
    all_over = ~back & (rng_c.random(n) < o.pain_all_over)
    pain[all_over] = False
    rows, cidx = np.nonzero(pain)
    none_pain = ~back & ~all_over & ~pain.any(axis=1)
    packed = _pack(
        n,
        np.concatenate([rows, np.flatnonzero(back), np.flatnonzero(all_over), np.flatnonzero(none_pain)]),
        np.concatenate(
            [
                pain_codes[cidx],
                np.full(back.sum(), PAIN_BACK),
                np.full(all_over.sum(), PAIN_ALL_OVER),
                np.full(none_pain.sum(), NONE_OF_ABOVE),
            ]
        ).astype(float),
        order=np.concatenate(
            [pain_codes[cidx], np.full(back.sum() + all_over.sum() + none_pain.sum(), PAIN_BACK)]
        ).astype(float),
    )
    declined = rng_c.random(n) < o.prefer_not_rate
    packed[declined] = np.nan
    packed[declined, 0] = PREFER_NOT
    _array_columns(cols, 6159, 2, packed)

    # diseases: hidden comorbidities shared by ICD, self-report and medication -------------------------
    age_c = age - o.comorbidity_reference_age_y
    hypertension = rng_r.random(n) < special.expit(
        o.hypertension_intercept
        + o.hypertension_age * age_c
        + o.hypertension_bmi * (bmi - o.comorbidity_reference_bmi)
        + o.hypertension_t2d * t2d
    )
    cholesterol = rng_r.random(n) < special.expit(
        o.cholesterol_intercept + o.cholesterol_age * age_c + o.cholesterol_t2d * t2d
    )
    type1 = ~t2d & (rng_r.random(n) < o.type1_diabetes)
    osteo = pop["osteoporosis"].to_numpy(bool)
    clinical = pop["osteoporosis_clinical"].to_numpy(bool)

    # T2D sources; every T2D participant is visible through at least one
    icd_t2d = t2d & (rng_r.random(n) < o.icd_t2d)
    sr_1223 = t2d & (rng_r.random(n) < o.self_report_t2d)
    sr_1220 = t2d & ~sr_1223 & (rng_r.random(n) < o.self_report_diabetes)
    metformin = np.where(
        t2d, rng_r.random(n) < o.metformin_t2d, ~type1 & (rng_r.random(n) < o.metformin_background)
    )
    gliclazide = t2d & (rng_r.random(n) < o.gliclazide_t2d)
    insulin = (t2d & (rng_r.random(n) < o.insulin_t2d)) | type1
    unseen = t2d & ~(icd_t2d | sr_1223 | sr_1220 | metformin | gliclazide | insulin)
    sr_1223 |= unseen

    # hospital records (41270 / 41280) ---------------------------------------------------------------
    icd_start = float(_days(o.icd_start))
    lookback = o.diagnosis_lookback_y * DAYS_PER_YEAR

    def prevalent_dates(mask: np.ndarray) -> np.ndarray:
        lo = np.maximum(imaging[mask] - lookback, icd_start)
        return np.floor(lo + (imaging[mask] - lo) * rng_r.random(mask.sum()))

    def any_dates(mask: np.ndarray) -> np.ndarray:
        hi = np.where(pop["died"].to_numpy(bool), _day_numbers(pop["death_date"]), end)[mask]
        return np.floor(icd_start + (hi - icd_start) * rng_r.random(mask.sum()))

    rec_rows, rec_codes, rec_dates = [], [], []

    def record(mask: np.ndarray, codes: np.ndarray, dates: np.ndarray) -> None:
        rec_rows.append(np.flatnonzero(mask))
        rec_codes.append(codes)
        rec_dates.append(dates)

    w = np.asarray(ICD_T2D_WEIGHTS)
    record(
        icd_t2d,
        rng_r.choice(np.asarray(ICD_T2D, dtype=object), icd_t2d.sum(), p=w / w.sum()),
        prevalent_dates(icd_t2d),
    )
    icd_osteo = clinical | (osteo & (rng_r.random(n) < o.icd_osteoporosis_densitometric))
    w = np.asarray(ICD_OSTEOPOROSIS_WEIGHTS)
    record(
        icd_osteo,
        rng_r.choice(np.asarray(ICD_OSTEOPOROSIS, dtype=object), icd_osteo.sum(), p=w / w.sum()),
        prevalent_dates(icd_osteo),
    )
    icd_back = back & (rng_r.random(n) < o.icd_back_pain)
    record(icd_back, np.full(icd_back.sum(), ICD_BACK_PAIN, dtype=object), prevalent_dates(icd_back))
    icd_t1 = type1 & (rng_r.random(n) < o.icd_type1)
    record(icd_t1, np.full(icd_t1.sum(), ICD_TYPE1, dtype=object), prevalent_dates(icd_t1))
    icd_ht = hypertension & (rng_r.random(n) < o.icd_hypertension)
    record(icd_ht, np.full(icd_ht.sum(), ICD_HYPERTENSION, dtype=object), any_dates(icd_ht))
    icd_ch = cholesterol & (rng_r.random(n) < o.icd_cholesterol)
    record(icd_ch, np.full(icd_ch.sum(), ICD_CHOLESTEROL, dtype=object), any_dates(icd_ch))
    bg_codes = np.asarray(list(ICD_BACKGROUND), dtype=object)
    bg = rng_r.random((n, len(bg_codes))) < np.asarray(list(ICD_BACKGROUND.values()))
    rows, cidx = np.nonzero(bg)
    hi_all = np.where(pop["died"].to_numpy(bool), _day_numbers(pop["death_date"]), end)
    rec_rows.append(rows)
    rec_codes.append(bg_codes[cidx])
    rec_dates.append(np.floor(icd_start + (hi_all[rows] - icd_start) * rng_r.random(len(rows))))
    rows = np.concatenate(rec_rows)
    codes = np.concatenate(rec_codes).astype(object)
    dates = np.concatenate(rec_dates)
    _array_columns(cols, 41270, 0, _pack(n, rows, codes, order=dates), as_int=False)
    packed_dates = _pack(n, rows, dates, order=dates)
    for k in range(packed_dates.shape[1]):
        cols[_col(41280, 0, k)] = _date_strings(packed_dates[:, k].astype(float))
    cols[_col(40000, 0)] = _date_strings(_day_numbers(pop["death_date"]))

    # self-reported illness (20002, instance 2) ------------------------------------------------------
    sr = SELF_REPORT_CODES
    bg_self = rng_r.random((n, len(o.background_self_report))) < np.asarray(o.background_self_report)
    self_items = [
        (sr_1223, sr["type2_diabetes"]),
        (sr_1220, sr["diabetes"]),
        (type1, sr["type1_diabetes"]),
        (hypertension & (rng_r.random(n) < o.self_report_hypertension), sr["hypertension"]),
        (cholesterol & (rng_r.random(n) < o.self_report_cholesterol), sr["high_cholesterol"]),
        (osteo & (rng_r.random(n) < o.self_report_osteoporosis), sr["osteoporosis"]),
        (bg_self[:, 0], sr["asthma"]),
        (bg_self[:, 1], sr["hypothyroidism"]),
        (bg_self[:, 2], sr["osteoarthritis"]),
        (bg_self[:, 3], sr["irritable_bowel"]),
    ]
    _array_columns(cols, 20002, 2, _items(n, self_items))
    hypothyroid = bg_self[:, 1]

    # medications (20003, instance 2) and 6177 (men) / 6153 (women) ----------------------------------
    mc = MEDICATION_CODES
    statin = cholesterol & (rng_r.random(n) < o.treated_cholesterol)
    bp_treated = hypertension & (rng_r.random(n) < o.treated_hypertension)
    simva = rng_r.random(n) < o.simvastatin_share
    amlo = rng_r.random(n) < o.amlodipine_share
    bg_med = rng_r.random((n, len(o.background_medication))) < np.asarray(o.background_medication)
    med_items = [
        (metformin, mc["metformin"]),
        (gliclazide, mc["gliclazide"]),
        (insulin, mc["insulin"]),
        (statin & simva, mc["simvastatin"]),
        (statin & ~simva, mc["atorvastatin"]),
        (bp_treated & amlo, mc["amlodipine"]),
        (bp_treated & ~amlo, mc["ramipril"]),
        (hypothyroid, mc["levothyroxine"]),
        (bg_med[:, 0], mc["omeprazole"]),
        (bg_med[:, 1], mc["aspirin"]),
    ]
    _array_columns(cols, 20003, 2, _items(n, med_items))

    women = sex == FEMALE
    hrt = women & (rng_r.random(n) < o.hormone_replacement)
    pill = women & (rng_r.random(n) < o.oral_contraceptive)
    cat_items = [
        (statin, MED_CHOLESTEROL),
        (bp_treated, MED_BLOOD_PRESSURE),
        (insulin, MED_INSULIN),
        (hrt, MED_HRT),
        (pill, MED_PILL),
    ]
    any_cat = statin | bp_treated | insulin | hrt | pill
    cat_items.append((~any_cat, NONE_OF_ABOVE))
    packed = _items(n, cat_items)
    u = rng_c.random(n)
    special_answer = np.where(
        u < o.do_not_know_rate,
        DO_NOT_KNOW,
        np.where(u < o.do_not_know_rate + o.prefer_not_rate, PREFER_NOT, 0),
    )
    packed[special_answer < 0] = np.nan
    packed[special_answer < 0, 0] = special_answer[special_answer < 0]
    men_packed = packed.copy()
    men_packed[women] = np.nan
    women_packed = packed.copy()
    women_packed[~women] = np.nan
    _array_columns(cols, 6177, 2, men_packed[:, :MEN_MEDICATION_ARRAYS])
    _array_columns(cols, 6153, 2, women_packed)

    fields = sorted(cols, key=lambda c: tuple(int(p) for p in c.replace("-", ".").split(".")))
    table = pd.DataFrame({"eid": pop.index.to_numpy(), **{c: cols[c] for c in fields}})
    return table


def _items(n: int, items: list[tuple[np.ndarray, int]]) -> np.ndarray:
    """Pack several (mask, code) answers of a multi-answer field, in the order given."""
    rows = np.concatenate([np.flatnonzero(mask) for mask, _ in items])
    values = np.concatenate([np.full(int(mask.sum()), code) for mask, code in items]).astype(float)
    order = np.concatenate([np.full(int(mask.sum()), i) for i, (mask, _) in enumerate(items)])
    return _pack(n, rows, values, order=order.astype(float))
