"""Area under the ROC curve and DeLong's test for two correlated ROC curves.

The AUC is the Mann–Whitney probability that a positive (``y_true`` 1) scores higher than a negative,
ties counting one half: ``AUC = U / (n1 · n0)``. Its variance and the covariance of two AUCs measured on
the same participants follow DeLong, DeLong & Clarke-Pearson (Biometrics 1988, 44:837–845) through the
structural components ("placement values") of each positive and each negative, computed with the midrank
algorithm of Sun & Xu (IEEE Signal Processing Letters 2014, 21:1389–1393) in O(n log n) instead of the
O(n1 · n0) pairwise comparison:

- ``V10[i]`` (positive ``i``): share of negatives it outscores, ``(Tz[i] − Tx[i]) / n0``;
- ``V01[j]`` (negative ``j``): share of positives that outscore it, ``1 − (Tz[j] − Ty[j]) / n1``;

with ``Tz`` the midranks among all scores, ``Tx`` among the positives' and ``Ty`` among the negatives'.
``AUC = mean(V10) = mean(V01)`` and ``Cov(AUC) = S10 / n1 + S01 / n0`` with ``S10``, ``S01`` the sample
covariance matrices (denominator n − 1) of the components across curves.

Scores of any unit work (only their order matters); a higher score means "more likely positive".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import norm, rankdata

from cohortscale.stats.design import CI_LEVEL


@dataclass(frozen=True)
class DelongResult:
    """Two correlated AUCs and DeLong's test of their difference (``auc_a − auc_b``).

    ``se_*`` are DeLong standard errors; ``ci_*`` Wald intervals ``auc ± z · se`` at ``ci_level``, clipped
    to [0, 1]; ``p`` is two-sided.
    """

    n_positive: int
    n_negative: int
    auc_a: float
    auc_b: float
    se_a: float
    se_b: float
    ci_a: tuple[float, float]
    ci_b: tuple[float, float]
    difference: float
    se_difference: float
    z: float
    p: float
    ci_level: float


def _binary_labels(y_true: np.ndarray) -> np.ndarray:
    """``y_true`` as booleans; raises unless it holds only 0/1 (or bools) and both classes."""
    y = np.asarray(y_true)
    if not np.isin(y, (0, 1)).all():
        raise ValueError("y_true must hold only 0/1 or booleans (drop missing outcomes first)")
    y = y.astype(bool)
    if y.all() or not y.any():
        raise ValueError("y_true needs at least one positive and one negative")
    return y


def _scores(score: np.ndarray, n: int) -> np.ndarray:
    """``score`` as float64 ``(curves, n)``; raises on a length mismatch or non-finite values."""
    s = np.atleast_2d(np.asarray(score, dtype=np.float64))
    if s.shape[1] != n:
        raise ValueError(f"score has {s.shape[1]} values for {n} labels")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite (drop missing scores first)")
    return s


def structural_components(y_true: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's structural components of one or more ROC curves (Sun & Xu midrank algorithm).

    Parameters
    ----------
    y_true : array of 0/1 or bool, (n,)
    scores : array, (n,) or (curves, n)
        One row per curve, each scored on the same participants.

    Returns
    -------
    v10 : ndarray, (curves, n1)
        Per positive: share of negatives it outscores (ties ½).
    v01 : ndarray, (curves, n0)
        Per negative: share of positives that outscore it (ties ½).
    """
    y = _binary_labels(y_true)
    s = _scores(scores, y.size)
    positives, negatives = s[:, y], s[:, ~y]
    n1, n0 = positives.shape[1], negatives.shape[1]
    combined = rankdata(np.concatenate([positives, negatives], axis=1), axis=1)
    v10 = (combined[:, :n1] - rankdata(positives, axis=1)) / n0
    v01 = 1.0 - (combined[:, n1:] - rankdata(negatives, axis=1)) / n1
    return v10, v01


def auroc(y_true: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve: P(score of a positive > score of a negative) + ½ P(tie).

    Parameters
    ----------
    y_true : array of 0/1 or bool, (n,)
        Outcome (1 = condition present). Missing values must be dropped by the caller.
    score : array, (n,)
        Any finite score, higher meaning more likely positive (e.g. PAD in years).

    Returns
    -------
    float
        The AUC in [0, 1], equal to Mann–Whitney ``U / (n1 · n0)``.
    """
    v10, _ = structural_components(y_true, score)
    return float(v10[0].mean())


def auc_covariance(y_true: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUCs of correlated ROC curves and DeLong's covariance matrix of them.

    Parameters
    ----------
    y_true : array of 0/1 or bool, (n,)
    scores : array, (curves, n)

    Returns
    -------
    aucs : ndarray, (curves,)
    covariance : ndarray, (curves, curves)
        ``S10 / n1 + S01 / n0``.
    """
    v10, v01 = structural_components(y_true, scores)
    s10 = np.atleast_2d(np.cov(v10))
    s01 = np.atleast_2d(np.cov(v01))
    return v10.mean(axis=1), s10 / v10.shape[1] + s01 / v01.shape[1]


def _wald_interval(estimate: float, se: float, ci_level: float) -> tuple[float, float]:
    """``estimate ± z · se`` at ``ci_level``, clipped to the AUC's range [0, 1]."""
    half = norm.ppf(0.5 + ci_level / 2) * se
    return max(estimate - half, 0.0), min(estimate + half, 1.0)


def delong_test(
    y_true: np.ndarray, score_a: np.ndarray, score_b: np.ndarray, ci_level: float = CI_LEVEL
) -> DelongResult:
    """DeLong's test that two ROC curves on the same participants have equal AUC.

    Parameters
    ----------
    y_true : array of 0/1 or bool, (n,)
        Outcome (1 = condition present); no missing values.
    score_a, score_b : array, (n,)
        Two finite scores of the same participants (e.g. PAD and chronological age, years).
    ci_level : float
        Coverage of the per-AUC confidence intervals.

    Returns
    -------
    DelongResult
        Both AUCs with SE and CI, ``difference = auc_a − auc_b``, its SE
        ``sqrt(var_a + var_b − 2 cov_ab)``, ``z = difference / se_difference`` and the two-sided normal p.
        When the two scores rank everyone identically the SE is 0 and z, p are NaN.
    """
    y = _binary_labels(y_true)
    aucs, cov = auc_covariance(y, np.vstack([np.ravel(score_a), np.ravel(score_b)]))
    contrast = np.array([1.0, -1.0])
    difference = float(contrast @ aucs)
    se_difference = float(np.sqrt(max(contrast @ cov @ contrast, 0.0)))
    z = difference / se_difference if se_difference > 0 else float("nan")
    se_a, se_b = (float(v) for v in np.sqrt(np.diag(cov)))
    return DelongResult(
        n_positive=int(y.sum()),
        n_negative=int((~y).sum()),
        auc_a=float(aucs[0]),
        auc_b=float(aucs[1]),
        se_a=se_a,
        se_b=se_b,
        ci_a=_wald_interval(float(aucs[0]), se_a, ci_level),
        ci_b=_wald_interval(float(aucs[1]), se_b, ci_level),
        difference=difference,
        se_difference=se_difference,
        z=z,
        p=float(2 * norm.sf(abs(z))),
        ci_level=ci_level,
    )
