"""UK Biobank phenotype tables → analysis variables (visit instance, special codes, derived conditions)."""
