"""Phenotype and covariate files for genome-wide association tools: REGENIE and PLINK 2.

Both read whitespace-delimited text with a header: family and individual ids, then one column per trait
or covariate. UK Biobank genotype files name each participant by ``eid`` in both id columns, so both
are the eid here. Missing values are ``NA`` (both tools read it as missing). Case/control traits are
coded as each tool expects by default: REGENIE ``--bt`` reads 0 = control, 1 = case; PLINK 2 reads
1 = control, 2 = case (so neither needs ``--1``). Categorical covariates are written as their labels;
pass their names to REGENIE with ``--catCovarList`` (PLINK 2 recognises non-numeric covariates itself).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

#: Tools and the header of their id columns.
ID_HEADERS = {"regenie": ("FID", "IID"), "plink2": ("#FID", "IID")}
#: Case/control codes (control, case) each tool reads by default.
BINARY_CODES = {"regenie": (0, 1), "plink2": (1, 2)}
#: Written for a missing value.
MISSING = "NA"
#: Significant digits of numbers written (float64 round trip to ~1e-10 relative).
DIGITS = 10
#: Characters a column name or label may not contain (the files are whitespace-delimited).
WHITESPACE = re.compile(r"\s")


@dataclass(frozen=True)
class GwasFiles:
    """Paths written by :func:`write_gwas_files`."""

    phenotypes: Path
    covariates: Path | None


def write_gwas_files(
    table: pd.DataFrame,
    phenotypes: Sequence[str],
    out_prefix: str | Path,
    covariates: Sequence[str] = (),
    binary: Sequence[str] = (),
    tool: str = "regenie",
) -> GwasFiles:
    """Write ``<out_prefix>.pheno`` (and ``.covar``) for REGENIE or PLINK 2.

    Parameters
    ----------
    table : pandas.DataFrame
        One row per participant: indexed by ``eid`` (or with an ``eid`` column or index level, e.g. the
        IDP table after choosing one visit per participant).
    phenotypes : sequence of str
        Columns to write as traits.
    out_prefix : path-like
        Output path without suffix.
    covariates : sequence of str
        Columns to write as covariates (numeric, boolean or categorical).
    binary : sequence of str
        Traits among ``phenotypes`` that are case/control (values 0/1 or bool; missing allowed).
    tool : {"regenie", "plink2"}

    Returns
    -------
    GwasFiles

    Raises
    ------
    ValueError
        An unknown tool, a participant listed twice, a binary trait with other values, or names or
        labels containing whitespace.
    """
    if tool not in ID_HEADERS:
        raise ValueError(f"tool must be one of {sorted(ID_HEADERS)}, got {tool!r}")
    eids = _eids(table)
    unknown = set(binary) - set(phenotypes)
    if unknown:
        raise ValueError(f"binary traits {sorted(unknown)} are not among the phenotypes")
    out = Path(out_prefix)
    out.parent.mkdir(parents=True, exist_ok=True)
    columns = {name: _coded(table[name], name in binary, tool) for name in phenotypes}
    pheno_path = out.with_name(out.name + ".pheno")
    _write(pheno_path, eids, columns, tool)
    covar_path = None
    if covariates:
        covar_path = out.with_name(out.name + ".covar")
        _write(covar_path, eids, {name: _coded(table[name], False, tool) for name in covariates}, tool)
    return GwasFiles(pheno_path, covar_path)


def _eids(table: pd.DataFrame) -> np.ndarray:
    """The participants' eids, one per row, checked unique."""
    if "eid" in table.columns:
        eids = table["eid"].to_numpy()
    elif "eid" in (table.index.names or []):
        eids = table.index.get_level_values("eid").to_numpy()
    else:
        raise ValueError("the table needs an eid column or index level")
    values, counts = np.unique(eids, return_counts=True)
    if (counts > 1).any():
        raise ValueError(
            f"participants appear more than once (e.g. eid {values[counts > 1][0]}): choose one visit each"
        )
    return eids.astype(np.int64)


def _coded(values: pd.Series, binary: bool, tool: str) -> list[str]:
    """A column as the tool reads it: numbers to ``DIGITS`` digits, labels as text, NA for missing."""
    name = str(values.name)
    if WHITESPACE.search(name):
        raise ValueError(f"column name {name!r} contains whitespace")
    missing = values.isna().to_numpy()
    if binary:
        present = values[~missing]
        if not present.isin([0, 1, True, False]).all():
            raise ValueError(f"binary trait {name!r} has values other than 0/1: {sorted(set(present))[:5]}")
        control, case = BINARY_CODES[tool]
        return [MISSING if m else str(case if v else control) for v, m in zip(values, missing, strict=True)]
    if pd.api.types.is_bool_dtype(values):
        return [MISSING if m else str(int(v)) for v, m in zip(values, missing, strict=True)]
    if pd.api.types.is_numeric_dtype(values):
        return [MISSING if m else f"{v:.{DIGITS}g}" for v, m in zip(values, missing, strict=True)]
    labels = [MISSING if m else str(v) for v, m in zip(values, missing, strict=True)]
    spaced = next((label for label in labels if WHITESPACE.search(label)), None)
    if spaced is not None:
        raise ValueError(f"covariate {name!r} has a label with whitespace: {spaced!r}")
    return labels


def _write(path: Path, eids: np.ndarray, columns: dict[str, list[str]], tool: str) -> None:
    """Write the id columns and ``columns`` space-delimited with the tool's header."""
    header = " ".join([*ID_HEADERS[tool], *columns])
    rows = (
        " ".join([str(e), str(e), *(values[i] for values in columns.values())]) for i, e in enumerate(eids)
    )
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
