"""AUROC and DeLong's test (cohortscale.stats.roc) against a pairwise count, scipy's Mann–Whitney U, a
direct O(n1 · n0) DeLong written here, a five-participant example worked by hand and Hanley & McNeil's
published ratings."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import mannwhitneyu, norm

from cohortscale.stats.roc import auc_covariance, auroc, delong_test

EXACT = 1e-12  # AUCs are ratios of exact counts
VARIANCE = 1e-10  # DeLong variances from two algorithms


def correlated_scores(
    seed: int, n: int = 400, rounding: int = 1
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Outcome and two scores that share a participant effect; rounded so that ties occur."""
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.3
    shared = rng.normal(size=n)
    a = np.round(shared + 0.8 * y + rng.normal(scale=0.7, size=n), rounding)
    b = np.round(shared + 0.4 * y + rng.normal(scale=0.7, size=n), rounding)
    return y.astype(int), a, b


def pairwise_kernel(y: np.ndarray, score: np.ndarray) -> np.ndarray:
    """psi[i, j] = 1, ½ or 0 as positive i scores above, equal to or below negative j."""
    positives, negatives = score[y == 1][:, None], score[y == 0][None, :]
    return (positives > negatives) + 0.5 * (positives == negatives)


def direct_delong(y: np.ndarray, scores: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """DeLong 1988 straight from the definition: V10, V01 as row/column means of the pairwise kernel."""
    kernels = [pairwise_kernel(y, s) for s in scores]
    v10 = np.array([k.mean(axis=1) for k in kernels])
    v01 = np.array([k.mean(axis=0) for k in kernels])
    n1, n0 = v10.shape[1], v01.shape[1]
    centred10 = v10 - v10.mean(axis=1, keepdims=True)
    centred01 = v01 - v01.mean(axis=1, keepdims=True)
    s10 = centred10 @ centred10.T / (n1 - 1)
    s01 = centred01 @ centred01.T / (n0 - 1)
    return v10.mean(axis=1), s10 / n1 + s01 / n0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_equals_pairwise_count_and_mann_whitney(seed: int) -> None:
    """AUC = (#pairs won + ½ #ties) / (n1 n0) = U / (n1 n0), with many ties."""
    y, a, _ = correlated_scores(seed)
    n1, n0 = int(y.sum()), int((1 - y).sum())
    assert np.unique(a).size < a.size / 4  # ties are common
    assert auroc(y, a) == pytest.approx(pairwise_kernel(y, a).sum() / (n1 * n0), abs=EXACT)
    u = mannwhitneyu(a[y == 1], a[y == 0], alternative="two-sided").statistic
    assert auroc(y, a) == pytest.approx(u / (n1 * n0), abs=EXACT)


def test_auc_of_perfect_reversed_and_constant_scores() -> None:
    y = np.array([0, 0, 1, 1])
    assert auroc(y, np.array([1.0, 2.0, 3.0, 4.0])) == 1.0
    assert auroc(y, np.array([4.0, 3.0, 2.0, 1.0])) == 0.0
    assert auroc(y, np.zeros(4)) == 0.5
    assert auroc(y.astype(bool), np.array([1.0, 3.0, 2.0, 4.0])) == 0.75


@pytest.mark.parametrize("seed", [3, 4])
def test_delong_covariance_equals_direct_implementation(seed: int) -> None:
    """The midrank algorithm gives the AUCs and the full 2 × 2 covariance of the pairwise definition."""
    y, a, b = correlated_scores(seed, n=300)
    aucs, cov = auc_covariance(y, np.vstack([a, b]))
    direct_aucs, direct_cov = direct_delong(y, [a, b])
    np.testing.assert_allclose(aucs, direct_aucs, rtol=0, atol=EXACT)
    np.testing.assert_allclose(cov, direct_cov, rtol=0, atol=VARIANCE)
    assert cov[0, 1] > 0.3 * np.sqrt(cov[0, 0] * cov[1, 1])  # the shared effect correlates the AUCs

    result = delong_test(y, a, b)
    contrast = np.array([1.0, -1.0])
    se = math.sqrt(contrast @ direct_cov @ contrast)
    assert result.difference == pytest.approx(direct_aucs[0] - direct_aucs[1], abs=EXACT)
    assert result.se_difference == pytest.approx(se, rel=1e-9)
    assert result.z == pytest.approx(result.difference / se, rel=1e-9)
    assert result.p == pytest.approx(2 * norm.sf(abs(result.difference / se)), rel=1e-9)
    assert result.se_a == pytest.approx(math.sqrt(direct_cov[0, 0]), rel=1e-9)
    half = norm.ppf(0.975) * result.se_b
    assert result.ci_b == pytest.approx((result.auc_b - half, result.auc_b + half), rel=1e-12)
    assert (result.n_positive, result.n_negative) == (int(y.sum()), int(y.size - y.sum()))


def test_delong_worked_by_hand() -> None:
    """Three positives, two negatives.

    A: positives 3, 2, 2 and negatives 2, 1 → V10 = (1, ¾, ¾), V01 = (⅔, 1), AUC 5/6,
       S10 = 1/48, S01 = 1/18, var = (1/48)/3 + (1/18)/2 = 5/144.
    B: positives 1, 3, 2 and negatives 2, 0 → V10 = (½, 1, ¾), V01 = (½, 1), AUC ¾,
       S10 = 1/16, S01 = 1/8, var = 1/48 + 1/16 = 1/12.
    cov = (−1/32)/3 + (1/12)/2 = 1/32; var(A − B) = 5/144 + 1/12 − 1/16 = 1/18; z = (1/12)/√(1/18) = √2/4.
    """
    y = np.array([1, 1, 1, 0, 0])
    a = np.array([3.0, 2.0, 2.0, 2.0, 1.0])
    b = np.array([1.0, 3.0, 2.0, 2.0, 0.0])
    aucs, cov = auc_covariance(y, np.vstack([a, b]))
    np.testing.assert_allclose(aucs, [5 / 6, 3 / 4], rtol=0, atol=EXACT)
    np.testing.assert_allclose(cov, [[5 / 144, 1 / 32], [1 / 32, 1 / 12]], rtol=0, atol=EXACT)
    result = delong_test(y, a, b)
    assert result.difference == pytest.approx(1 / 12, abs=EXACT)
    assert result.se_difference == pytest.approx(math.sqrt(1 / 18), abs=EXACT)
    assert result.z == pytest.approx(math.sqrt(2) / 4, abs=EXACT)
    assert result.p == pytest.approx(2 * norm.sf(math.sqrt(2) / 4), abs=EXACT)
    assert result.ci_a[1] == 1.0  # 5/6 + 1.96 · 0.186 is clipped to the AUC's range


def test_hanley_mcneil_ratings() -> None:
    """Hanley & McNeil (Radiology 1982) CT ratings 1–5: 58 normal (33, 6, 6, 11, 2) and 51 abnormal
    (3, 2, 2, 11, 33) participants; their published Wilcoxon area is 0.893."""
    levels = np.arange(1, 6)
    normal = np.repeat(levels, [33, 6, 6, 11, 2])
    abnormal = np.repeat(levels, [3, 2, 2, 11, 33])
    y = np.r_[np.zeros(normal.size), np.ones(abnormal.size)]
    score = np.r_[normal, abnormal].astype(float)
    assert round(auroc(y, score), 3) == 0.893
    # Abnormal above normal: 2·33 + 2·39 + 11·45 + 33·56 = 2487 pairs; tied: 3·33 + 2·6 + 2·6 + 11·11 + 33·2
    # = 310 pairs; AUC = (2487 + 310 / 2) / (51 · 58) = 2642 / 2958.
    assert auroc(y, score) == pytest.approx(2642 / 2958, abs=EXACT)


def test_identical_scores_give_zero_difference_and_nan_z() -> None:
    y, a, _ = correlated_scores(5, n=100)
    result = delong_test(y, a, 2 * a + 1)  # a monotone transform ranks everyone identically
    assert result.difference == 0.0
    assert result.se_difference == pytest.approx(0.0, abs=1e-12)
    assert math.isnan(result.z) and math.isnan(result.p)


@pytest.mark.parametrize(
    ("y", "score", "message"),
    [
        (np.array([0, 1, 2]), np.zeros(3), "0/1"),
        (np.array([1, 1, 1]), np.zeros(3), "one positive and one negative"),
        (np.array([0, 1, 1]), np.array([0.0, np.nan, 1.0]), "finite"),
        (np.array([0, 1, 1]), np.zeros(4), "4 values for 3 labels"),
    ],
)
def test_invalid_input_is_refused(y: np.ndarray, score: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        auroc(y, score)
