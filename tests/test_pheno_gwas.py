"""Phenotype and covariate files for REGENIE and PLINK 2: header, ids, codes, missing values, refusals."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cohortscale.pheno.gwas import write_gwas_files


def table() -> pd.DataFrame:
    """Three participants: a continuous IDP with one missing, a case/control trait, covariates."""
    return pd.DataFrame(
        {
            "vbm_pdff": [41.25, np.nan, 1 / 3],
            "t2d": [True, False, np.nan],
            "age": [64, 70, 55],
            "sex": [0, 1, 1],
            "centre": ["Cheadle", "Reading", None],
            "smoker": [True, False, False],
        },
        index=pd.Index([1000107, 1000210, 5999999], name="eid"),
    )


def test_regenie_files(tmp_path) -> None:
    """REGENIE: header FID IID, eid in both, NA for missing, case/control 0/1, 10 significant digits."""
    files = write_gwas_files(
        table(), ["vbm_pdff", "t2d"], tmp_path / "out", ["age", "sex", "centre", "smoker"], binary=["t2d"]
    )
    lines = files.phenotypes.read_text().splitlines()
    assert lines == [
        "FID IID vbm_pdff t2d",
        "1000107 1000107 41.25 1",
        "1000210 1000210 NA 0",
        "5999999 5999999 0.3333333333 NA",
    ]
    covar = files.covariates.read_text().splitlines()
    assert covar[0] == "FID IID age sex centre smoker"
    assert covar[1:] == [
        "1000107 1000107 64 0 Cheadle 1",
        "1000210 1000210 70 1 Reading 0",
        "5999999 5999999 55 1 NA 0",
    ]
    read = pd.read_csv(files.phenotypes, sep=r"\s+", na_values="NA")
    np.testing.assert_allclose(read["vbm_pdff"], [41.25, np.nan, 1 / 3], rtol=1e-9)


def test_plink2_files(tmp_path) -> None:
    """PLINK 2: header #FID IID and case/control 1/2 (its default coding); no covariate file unless asked."""
    files = write_gwas_files(table().reset_index(), ["t2d"], tmp_path / "p", binary=["t2d"], tool="plink2")
    assert files.covariates is None
    assert files.phenotypes.read_text().splitlines() == [
        "#FID IID t2d",
        "1000107 1000107 2",
        "1000210 1000210 1",
        "5999999 5999999 NA",
    ]


def test_refusals(tmp_path) -> None:
    """Repeated participants, non-binary case/control values, whitespace, unknown tool: refused."""
    twice = pd.concat([table(), table().iloc[:1]])
    with pytest.raises(ValueError, match="more than once"):
        write_gwas_files(twice, ["vbm_pdff"], tmp_path / "a")
    with pytest.raises(ValueError, match="other than 0/1"):
        write_gwas_files(table(), ["age"], tmp_path / "b", binary=["age"])
    spaced = table().assign(centre=["Cheadle", "New castle", "Reading"])
    with pytest.raises(ValueError, match="whitespace"):
        write_gwas_files(spaced, ["vbm_pdff"], tmp_path / "c", covariates=["centre"])
    with pytest.raises(ValueError, match="tool"):
        write_gwas_files(table(), ["vbm_pdff"], tmp_path / "d", tool="bolt")
    with pytest.raises(ValueError, match="eid"):
        write_gwas_files(table().reset_index(drop=True), ["vbm_pdff"], tmp_path / "e")
