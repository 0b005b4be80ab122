"""Vectorised statistics of image-derived phenotypes: regressions, tests, survival, ROC, PheWAS.

Every function takes a pandas DataFrame (one row per participant) and column names, and returns a tidy
DataFrame (or a small result object) carrying n, estimates, intervals and p-values, equal to
statsmodels/scipy within 1e-8. ``stats`` never imports imaging code.
"""

from cohortscale.stats.agebias import beheshti_correction
from cohortscale.stats.correlation import correlation_matrix, significant
from cohortscale.stats.hypothesis import (
    chi_square,
    cochran_armitage,
    mann_whitney,
    normality,
    one_way_anova,
    t_test,
    table_one,
)
from cohortscale.stats.logistic import logit_many
from cohortscale.stats.mixed import mixed_model, model_means
from cohortscale.stats.multiple import adjust, bonferroni, fdr_bh
from cohortscale.stats.ols import decline_per_decade, ols_many
from cohortscale.stats.phewas import phewas
from cohortscale.stats.roc import auroc, delong_test
from cohortscale.stats.summary import summary
from cohortscale.stats.survival import cox_ph, kaplan_meier
from cohortscale.stats.tails import neg_log10_p_normal, neg_log10_p_pearson, neg_log10_p_t

__all__ = [
    "adjust",
    "auroc",
    "beheshti_correction",
    "bonferroni",
    "chi_square",
    "cochran_armitage",
    "correlation_matrix",
    "cox_ph",
    "decline_per_decade",
    "delong_test",
    "fdr_bh",
    "kaplan_meier",
    "logit_many",
    "mann_whitney",
    "mixed_model",
    "model_means",
    "neg_log10_p_normal",
    "neg_log10_p_pearson",
    "neg_log10_p_t",
    "normality",
    "ols_many",
    "one_way_anova",
    "phewas",
    "significant",
    "summary",
    "t_test",
    "table_one",
]
