"""UK Biobank phenotype tables → analysis variables (visit instance, special codes, derived conditions)."""

from cohortscale.pheno.gwas import write_gwas_files
from cohortscale.pheno.read import Phenotypes, parse_phenotypes, read_phenotypes

__all__ = ["Phenotypes", "parse_phenotypes", "read_phenotypes", "write_gwas_files"]
