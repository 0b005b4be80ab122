"""Vectorised statistics of image-derived phenotypes: regressions, tests, survival, ROC, PheWAS."""
