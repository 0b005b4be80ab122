"""Values of the canonical phenotype table: visit instances, special codes, multi-array fields.

Rules (all tested):

Visit instances
    UK Biobank instance 0 is the baseline (recruitment) visit, 1 the first repeat, 2 the first imaging
    visit and 3 the repeat imaging visit. :func:`choose_instance` reads a field at one visit; fields in
    :data:`BASELINE_FIELDS` (recorded once: sex, birth year/month, ethnicity, Townsend index, IGF-1, date of
    death) are instead taken from the earliest instance that holds a value, whichever visit is asked for.
    No other field falls back to another visit unless the caller names the instances to fall back to: a
    baseline grip strength is not an imaging-visit grip strength.

Special negative codes
    Touchscreen and interview answers use negative codes for non-answers (:data:`SPECIAL_CODES`: −1 do not
    know, −3 prefer not to answer, −7 none of the above; −121 do not know and −818 prefer not to answer in
    the online questionnaires). They become missing, but **only** in fields declared coded in
    :data:`CODED_FIELDS` (categorical answers and integer counts). Measurements such as the Townsend index
    (189, legitimately −3.0 or −1.0), MET-minutes or body composition are never touched, and neither is a
    field that is not declared: an unknown field keeps its values as read. Field-specific negatives that
    carry a value (e.g. −10 "less than one" in frequency counts) are not in :data:`SPECIAL_CODES`. A caller
    can keep chosen special codes as values (``keep_codes``), e.g. −7 in a multi-answer field, where "none
    of the above" is a real answer. Dates equal to UK Biobank's placeholder dates (:data:`SPECIAL_DATES`)
    become missing in every date field.

Multi-array fields
    Fields with several answers or records (ICD-10 diagnoses 41270 with their dates 41280 in arrays
    0..258, self-reported illnesses 20002, medications 20003, medication categories 6177/6153...) are read
    whole by :func:`array_values` (one column per array) and :func:`long_values` (one row per value);
    :func:`has_code` asks whether any array of chosen instances holds one of a set of codes. A code may sit
    in any array position.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

import numpy as np
import pandas as pd

from cohortscale.pheno.read import Phenotypes

__all__ = [
    "BASELINE_FIELDS",
    "BASELINE_VISIT",
    "CODED_FIELDS",
    "IMAGING_VISIT",
    "REPEAT_IMAGING_VISIT",
    "SPECIAL_CODES",
    "SPECIAL_DATES",
    "array_values",
    "choose_instance",
    "field_instances",
    "field_value",
    "has_code",
    "long_values",
    "mask_special_codes",
    "visit_date",
]

#: Instance of the baseline (recruitment) visit.
BASELINE_VISIT = 0
#: Instance of the first imaging visit.
IMAGING_VISIT = 2
#: Instance of the repeat imaging visit.
REPEAT_IMAGING_VISIT = 3

#: Field of the date of attending an assessment centre (one per visit instance).
FIELD_VISIT_DATE = 53

DO_NOT_KNOW = -1
PREFER_NOT_TO_ANSWER = -3
NONE_OF_THE_ABOVE = -7
DO_NOT_KNOW_ONLINE = -121
PREFER_NOT_TO_ANSWER_ONLINE = -818

#: Special negative codes that are not values in coded fields (UK Biobank data codings).
SPECIAL_CODES: Mapping[int, str] = {
    DO_NOT_KNOW: "do not know",
    PREFER_NOT_TO_ANSWER: "prefer not to answer",
    NONE_OF_THE_ABOVE: "none of the above",
    DO_NOT_KNOW_ONLINE: "do not know (online questionnaire)",
    PREFER_NOT_TO_ANSWER_ONLINE: "prefer not to answer (online questionnaire)",
}

#: UK Biobank placeholder dates: unknown, before the participant's birth, equal to the date of birth,
#: within the year of birth, in the future.
SPECIAL_DATES: tuple[pd.Timestamp, ...] = tuple(
    pd.Timestamp(d) for d in ("1900-01-01", "1901-01-01", "1902-02-02", "1903-03-03", "2037-07-07")
)

#: Fields whose values are categorical codes or integer answers, where special codes are non-answers:
#: sex 31, centre 54, vigorous-activity days 904, walking pace 924, alcohol 1558, tiredness 2080, falls 2296,
#: weight change 2306, medication categories 6153 (women) / 6177 (men), pain types 6159, activity types
#: 6164, self-reported illnesses 20002, medications 20003, smoking 20116, ethnicity 21000.
CODED_FIELDS: frozenset[int] = frozenset(
    {31, 54, 904, 924, 1558, 2080, 2296, 2306, 6153, 6159, 6164, 6177, 20002, 20003, 20116, 21000}
)

#: Fields recorded once, read from the earliest instance holding a value: sex 31, year / month of birth
#: 34 / 52, Townsend index at recruitment 189, ethnicity 21000, IGF-1 30770 (baseline blood sample),
#: date of death 40000.
BASELINE_FIELDS: frozenset[int] = frozenset({31, 34, 52, 189, 21000, 30770, 40000})


def _require(phenos: Phenotypes, field: int) -> None:
    """Raise KeyError when the table has no column of ``field``."""
    if field not in phenos.columns.get_level_values("field"):
        raise KeyError(f"field {field} is not in the phenotype table")


def field_instances(phenos: Phenotypes, field: int, up_to: int | None = None) -> tuple[int, ...]:
    """Instances of ``field`` present in the table, ascending.

    Parameters
    ----------
    phenos : Phenotypes
        Canonical table.
    field : int
        Field id.
    up_to : int, optional
        Keep only instances ≤ this visit (e.g. everything known by the imaging visit).

    Returns
    -------
    tuple of int
        Empty when the field is absent.
    """
    cols = phenos.columns
    found = sorted({inst for f, inst, _ in cols if f == field})
    return tuple(i for i in found if up_to is None or i <= up_to)


def mask_special_codes(values: pd.Series, field: int, keep_codes: Collection[int] = ()) -> pd.Series:
    """Values of one column with non-answers set missing, following the module rules.

    Parameters
    ----------
    values : pandas.Series
        A column of ``field`` (any dtype).
    field : int
        Field id; special codes are masked only when it is in :data:`CODED_FIELDS`.
    keep_codes : collection of int
        Special codes to keep as values (e.g. ``(-7,)`` where "none of the above" is an answer).

    Returns
    -------
    pandas.Series
        Same index and dtype; masked cells NaN (NaT for dates).
    """
    if pd.api.types.is_datetime64_any_dtype(values):
        return values.mask(values.isin(SPECIAL_DATES))
    if field not in CODED_FIELDS or not pd.api.types.is_numeric_dtype(values):
        return values
    masked = [code for code in SPECIAL_CODES if code not in set(keep_codes)]
    return values.mask(values.isin(masked))


def field_value(
    phenos: Phenotypes, field: int, instance: int, array: int = 0, *, keep_codes: Collection[int] = ()
) -> pd.Series:
    """One ``(field, instance, array)`` column with special codes masked.

    Parameters
    ----------
    phenos : Phenotypes
        Canonical table.
    field, instance, array : int
        Column to read.
    keep_codes : collection of int
        Special codes to keep as values (see :func:`mask_special_codes`).

    Returns
    -------
    pandas.Series
        Indexed by ``eid``, named ``field``; all-NaN (float64) when the table has the field but not this
        instance or array (e.g. no participant attended the repeat visit).

    Raises
    ------
    KeyError
        The table has no column of ``field`` at all.
    """
    _require(phenos, field)
    key = (field, instance, array)
    if key not in phenos.columns:
        return pd.Series(np.nan, index=phenos.index, name=field)
    return mask_special_codes(phenos[key], field, keep_codes).rename(field)


def array_values(
    phenos: Phenotypes, field: int, instance: int, *, keep_codes: Collection[int] = ()
) -> pd.DataFrame:
    """Every array of one field and instance, special codes masked.

    Parameters
    ----------
    phenos : Phenotypes
        Canonical table.
    field, instance : int
        Field and instance.
    keep_codes : collection of int
        Special codes to keep as values.

    Returns
    -------
    pandas.DataFrame
        Index ``eid``, one column per array (named by the array index, ascending); no columns when the
        instance is absent.

    Raises
    ------
    KeyError
        The table has no column of ``field``.
    """
    _require(phenos, field)
    arrays = sorted(a for f, i, a in phenos.columns if f == field and i == instance)
    data = {a: field_value(phenos, field, instance, a, keep_codes=keep_codes) for a in arrays}
    return pd.DataFrame(data, index=phenos.index).rename_axis(columns="array")


def long_values(
    phenos: Phenotypes,
    field: int,
    instances: Collection[int] | None = None,
    *,
    keep_codes: Collection[int] = (),
) -> pd.DataFrame:
    """All values of a field as one row per value (multi-array fields made long).

    Parameters
    ----------
    phenos : Phenotypes
        Canonical table.
    field : int
        Field id.
    instances : collection of int, optional
        Instances to read; default all present.
    keep_codes : collection of int
        Special codes to keep as values.

    Returns
    -------
    pandas.DataFrame
        Columns ``eid``, ``instance``, ``array``, ``value``; only non-missing values, ordered by eid,
        instance and array.

    Raises
    ------
    KeyError
        The table has no column of ``field``.
    """
    _require(phenos, field)
    wanted = field_instances(phenos, field) if instances is None else tuple(instances)
    parts = [
        values.dropna()
        .rename("value")
        .rename_axis("eid")
        .reset_index()
        .assign(instance=instance, array=array)
        for instance in wanted
        for array, values in array_values(phenos, field, instance, keep_codes=keep_codes).items()
    ]
    if not parts:
        empty = {"eid": "int64", "instance": "int64", "array": "int64", "value": "float64"}
        return pd.DataFrame({name: pd.Series(dtype=dtype) for name, dtype in empty.items()})
    out = pd.concat(parts, ignore_index=True).loc[:, ["eid", "instance", "array", "value"]]
    return out.sort_values(["eid", "instance", "array"], kind="stable", ignore_index=True)


def has_code(
    phenos: Phenotypes,
    field: int,
    codes: Collection[int | str],
    instances: Collection[int] | None = None,
    *,
    prefix: bool = False,
) -> pd.Series:
    """Whether any array of the chosen instances holds one of ``codes``.

    Parameters
    ----------
    phenos : Phenotypes
        Canonical table.
    field : int
        A multi-answer or record field (e.g. 20002, 20003, 6177, 41270).
    codes : collection of int or str
        Codes to look for: numbers for coded fields, texts for ICD fields.
    instances : collection of int, optional
        Instances to search; default all present.
    prefix : bool
        Text codes match as prefixes (``"E11"`` matches ``"E119"``).

    Returns
    -------
    pandas.Series
        bool, indexed by ``eid``: False when no array holds a code, including participants with no answer
        at all (absence of a report is read as "not reported").
    """
    long = long_values(phenos, field, instances)
    if prefix:
        hit = long["value"].astype("string").str.startswith(tuple(str(c) for c in codes)).fillna(False)
    else:
        hit = long["value"].isin(list(codes))
    found = pd.Index(long["eid"][hit.to_numpy(dtype=bool)].unique())
    return pd.Series(phenos.index.isin(found), index=phenos.index, name=field)


def choose_instance(
    phenos: Phenotypes,
    field: int,
    visit: int = IMAGING_VISIT,
    array: int = 0,
    fallback: Collection[int] = (),
    *,
    keep_codes: Collection[int] = (),
) -> pd.Series:
    """A field's value at one visit, following the module's instance rules.

    Parameters
    ----------
    phenos : Phenotypes
        Canonical table.
    field : int
        Field id.
    visit : int
        Instance of the visit: 2 first imaging (default), 3 repeat imaging, 0 baseline.
    array : int
        Array index.
    fallback : collection of int
        Instances to fill a participant's missing value from, tried in the order given (default none).
        Ignored for :data:`BASELINE_FIELDS`, which always take the earliest instance with a value.
    keep_codes : collection of int
        Special codes to keep as values.

    Returns
    -------
    pandas.Series
        Indexed by ``eid``, special codes masked.

    Raises
    ------
    KeyError
        The table has no column of ``field``.
    """
    _require(phenos, field)
    present = field_instances(phenos, field)
    order = present if field in BASELINE_FIELDS else [i for i in (visit, *fallback) if i in present]
    if not order:
        return field_value(phenos, field, visit, array)
    values = field_value(phenos, field, order[0], array, keep_codes=keep_codes)
    for instance in order[1:]:
        values = values.fillna(field_value(phenos, field, instance, array, keep_codes=keep_codes))
    return values


def visit_date(phenos: Phenotypes, visit: int = IMAGING_VISIT) -> pd.Series:
    """Date of attending the assessment centre at ``visit`` (field 53), NaT where absent.

    Parameters
    ----------
    phenos : Phenotypes
        Canonical table with field 53.
    visit : int
        Visit instance (default 2, the imaging visit).

    Returns
    -------
    pandas.Series
        datetime64[ns], indexed by ``eid``.
    """
    return pd.to_datetime(field_value(phenos, FIELD_VISIT_DATE, visit)).rename("visit_date")
