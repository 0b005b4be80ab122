"""Phenome-wide association study (PheWAS): one IDP against every ICD-10 category in the cohort.

Case status: a participant is a case of an ICD-10 category (the 3-character code, "E11" from "E11.9" or
"E119") when any of their codes falls in it, a control otherwise (participants without any code are
controls of every category). Codes are read without dots and surrounding spaces, in upper case; a value
whose first three characters are not a letter and two digits (e.g. an ICD-9 code) is ignored.

Model, for every category with at least ``min_cases`` cases among the analysed participants (those with
the IDP and every covariate): ``logit P(case) = 1 + covariates + IDP_z`` with the IDP standardised over the
analysed participants (mean 0, SD 1 with ddof 1), so odds ratios are per SD of the IDP; fitted by
:func:`cohortscale.stats.logistic.logit_many`. The table is sorted by p and carries Bonferroni and
Benjamini–Hochberg adjusted p-values over the categories tested.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Iterable, Mapping, Sequence
from types import ModuleType

import numpy as np
import pandas as pd

from cohortscale.stats.design import CI_LEVEL, complete_rows
from cohortscale.stats.logistic import logit_many
from cohortscale.stats.multiple import bonferroni, fdr_bh

__all__ = ["ICD10_CATEGORY", "MIN_CASES", "PHEWAS_COLUMNS", "case_status", "icd10_categories", "phewas"]

#: An ICD-10 category: a letter and two digits (the first three characters of a code without its dot).
ICD10_CATEGORY = re.compile(r"[A-Z][0-9]{2}")
#: Default fewest cases among the analysed participants for a category to be tested.
MIN_CASES = 20
#: Columns of the table :func:`phewas` returns.
PHEWAS_COLUMNS = (
    "code",
    "n",
    "n_cases",
    "beta",
    "se",
    "z",
    "p",
    "or_",
    "or_ci_low",
    "or_ci_high",
    "p_bonferroni",
    "p_fdr",
    "converged",
)

Codes = pd.DataFrame | Mapping[Hashable, Iterable[str]]


def icd10_categories(codes: Codes) -> pd.DataFrame:
    """Distinct (participant, ICD-10 category) pairs of a participant's codes.

    Parameters
    ----------
    codes : pandas.DataFrame or mapping
        A frame indexed by participant whose every non-missing cell is an ICD-10 code (the field 41270
        array columns of a UK Biobank table, or a long frame with one code column and a repeated index),
        or a mapping of participant → iterable of codes.

    Returns
    -------
    pandas.DataFrame
        Columns ``participant`` and ``category`` (e.g. "E11"), one row per distinct pair.
    """
    if isinstance(codes, pd.DataFrame):
        participants = np.repeat(codes.index.to_numpy(dtype=object), codes.shape[1])
        values = codes.to_numpy(dtype=object).ravel()
    else:
        pairs = [(person, code) for person, items in codes.items() for code in items]
        participants = np.array([person for person, _ in pairs], dtype=object)
        values = np.array([code for _, code in pairs], dtype=object)
    text = pd.Series(values, dtype="string").str.replace(".", "", regex=False).str.strip().str.upper()
    category = text.str.slice(0, 3)
    valid = category.str.fullmatch(ICD10_CATEGORY.pattern).fillna(False).to_numpy(dtype=bool)
    table = pd.DataFrame({"participant": participants[valid], "category": category[valid].to_numpy()})
    return table.drop_duplicates(ignore_index=True)


def case_status(participants: pd.Index, codes: Codes, min_cases: int = 1) -> pd.DataFrame:
    """0/1 case status of ``participants`` (rows) for every ICD-10 category with ≥ ``min_cases`` cases.

    Columns are the categories in sorted order; codes of participants not in ``participants`` are ignored.
    """
    pairs = icd10_categories(codes)
    pairs = pairs[pairs["participant"].isin(participants)]
    counts = pairs["category"].value_counts()
    kept = sorted(counts.index[counts >= min_cases])
    pairs = pairs[pairs["category"].isin(kept)]
    status = np.zeros((len(participants), len(kept)))
    status[participants.get_indexer(pairs["participant"]), pd.Index(kept).get_indexer(pairs["category"])] = 1
    return pd.DataFrame(status, index=participants, columns=pd.Index(kept, dtype=object))


def phewas(
    data: pd.DataFrame,
    idp: Hashable,
    codes: Codes,
    covariates: Sequence[Hashable] = (),
    min_cases: int = MIN_CASES,
    profile_ci: bool = True,
    ci_level: float = CI_LEVEL,
    xp: ModuleType | None = None,
) -> pd.DataFrame:
    """Logistic regression of case status of every ICD-10 category on one IDP (per SD) + covariates.

    Parameters
    ----------
    data : pandas.DataFrame
        One row per participant, indexed by participant id (UK Biobank ``eid``), with the IDP and covariates.
    idp : column name
        The image-derived phenotype (numeric).
    codes : pandas.DataFrame or mapping
        ICD-10 codes per participant (see :func:`icd10_categories`).
    covariates : sequence of column names
        Adjustment terms (e.g. age, sex), numeric or categorical.
    min_cases : int
        Fewest cases among the analysed participants for a category to be tested.
    profile_ci : bool
        Profile-likelihood (True) or Wald (False) odds-ratio intervals.
    ci_level : float
        Confidence level of the intervals.
    xp : module, optional
        Array module for the regressions (``numpy`` default, or ``cupy``).

    Returns
    -------
    pandas.DataFrame
        :data:`PHEWAS_COLUMNS`, one row per category tested, ascending p: ``n`` participants analysed,
        ``n_cases``; ``beta`` (log odds ratio per SD of the IDP), ``se``, Wald ``z`` and ``p``; ``or_`` and
        its interval; ``p_bonferroni`` (``min(1, p·m)``) and ``p_fdr`` (Benjamini–Hochberg) over the ``m``
        categories tested; ``converged``. Empty if no category has ``min_cases`` cases.
    """
    analysed = data.loc[complete_rows(data, [idp, *covariates]), list(dict.fromkeys([*covariates, idp]))]
    values = analysed[idp].astype(np.float64)
    analysed[idp] = (values - values.mean()) / values.std(ddof=1)
    status = case_status(analysed.index, codes, min_cases)
    if status.empty:
        return pd.DataFrame(columns=list(PHEWAS_COLUMNS))
    table = logit_many(
        pd.concat([analysed, status], axis=1),
        list(status.columns),
        idp,
        covariates,
        profile_ci=profile_ci,
        ci_level=ci_level,
        xp=xp,
    )
    table = table.rename(columns={"outcome": "code", "n_events": "n_cases"})
    table["p_bonferroni"] = bonferroni(table["p"].to_numpy()).adjusted
    table["p_fdr"] = fdr_bh(table["p"].to_numpy())
    return table.sort_values("p", ignore_index=True, kind="stable")[list(PHEWAS_COLUMNS)]
