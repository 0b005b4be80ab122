"""Multiple-testing corrections (cohortscale.stats.multiple) against statsmodels' multipletests and against
small families worked out by hand; NaN handling and containers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from statsmodels.stats.multitest import multipletests

from cohortscale.stats.multiple import adjust, bonferroni, family_size, fdr_bh, fdr_bh_threshold

EXACT = 1e-12  # relative tolerance against statsmodels (same arithmetic)
SEED = 20250801


@pytest.fixture
def p_values() -> np.ndarray:
    """A family of 200 p-values: mostly null, some tiny (true effects), some tied."""
    rng = np.random.default_rng(SEED)
    p = np.concatenate([rng.uniform(size=170), rng.uniform(0, 1e-4, size=20), [1e-300, 0.0, 1.0]])
    p = np.concatenate([p, np.repeat(0.003, 4), [0.5, 0.5, 0.5]])  # ties
    return rng.permutation(p)


@pytest.mark.parametrize("method", ["bonferroni", "fdr_bh"])
@pytest.mark.parametrize("alpha", [0.05, 0.2, 1e-8])
def test_matches_statsmodels(p_values: np.ndarray, method: str, alpha: float) -> None:
    """Adjusted p-values within 1e-12 of multipletests; p ≤ threshold is exactly its rejection set."""
    reject, expected, _, _ = multipletests(p_values, alpha=alpha, method=method)
    result = adjust(p_values, method, alpha)
    np.testing.assert_allclose(result.adjusted, expected, rtol=EXACT, atol=0)
    np.testing.assert_array_equal(p_values <= result.threshold, reject)


def test_bonferroni_by_hand() -> None:
    """m = 4: adjusted 4p capped at 1, threshold 0.05 / 4."""
    result = bonferroni([0.01, 0.04, 0.3, 0.005], alpha=0.05)
    np.testing.assert_allclose(result.adjusted, [0.04, 0.16, 1.0, 0.02], rtol=EXACT)
    assert result.threshold == pytest.approx(0.0125, rel=EXACT)


def test_fdr_bh_by_hand() -> None:
    """Sorted 0.005, 0.01, 0.03, 0.04 → 4p/k = 0.02, 0.02, 0.04, 0.04 (already monotone); all four pass at
    FDR 0.05 (p_(4) = 0.04 ≤ 4/4 · 0.05), only the first two at 0.025 (p_(2) = 0.01 ≤ 2/4 · 0.025)."""
    p = [0.01, 0.04, 0.03, 0.005]
    np.testing.assert_allclose(fdr_bh(p), [0.02, 0.04, 0.04, 0.02], rtol=EXACT)
    assert fdr_bh_threshold(p, alpha=0.05) == pytest.approx(0.05, rel=EXACT)
    assert fdr_bh_threshold(p, alpha=0.025) == pytest.approx(0.0125, rel=EXACT)


def test_fdr_bh_step_up_takes_the_running_minimum() -> None:
    """p = 0.02, 0.021, 0.9: raw 3p/k = 0.06, 0.0315, 0.9 → q = 0.0315, 0.0315, 0.9 (the larger p rescues
    the smaller), so at FDR 0.05 both small ones pass though 0.02 > 1/3 · 0.05."""
    p = np.array([0.9, 0.021, 0.02])
    np.testing.assert_allclose(fdr_bh(p), [0.9, 0.0315, 0.0315], rtol=EXACT)
    threshold = fdr_bh_threshold(p, alpha=0.05)
    np.testing.assert_array_equal(p <= threshold, [False, True, True])


def test_no_rejection_threshold_is_below_every_p() -> None:
    """Where nothing is significant the BH threshold is alpha / m and no p reaches it."""
    p = np.array([0.3, 0.5, 0.9])
    assert fdr_bh_threshold(p, alpha=0.05) == pytest.approx(0.05 / 3, rel=EXACT)
    assert not (p <= fdr_bh_threshold(p)).any()


@pytest.mark.parametrize("method", ["bonferroni", "fdr_bh"])
def test_nan_is_not_a_test(p_values: np.ndarray, method: str) -> None:
    """NaN p stays NaN and does not count in m: the rest equal statsmodels run without the NaNs."""
    with_nan = p_values.copy()
    with_nan[::7] = np.nan
    tested = ~np.isnan(with_nan)
    reject, expected, _, bonferroni_alpha = multipletests(with_nan[tested], alpha=0.05, method=method)
    result = adjust(with_nan, method, 0.05)
    assert np.isnan(result.adjusted[~tested]).all()
    np.testing.assert_allclose(result.adjusted[tested], expected, rtol=EXACT, atol=0)
    np.testing.assert_array_equal(with_nan[tested] <= result.threshold, reject)
    assert family_size(with_nan) == tested.sum() < p_values.size
    if method == "bonferroni":
        assert result.threshold == pytest.approx(bonferroni_alpha, rel=EXACT)


def test_containers_are_kept() -> None:
    """A Series keeps index and name, a DataFrame its labels (all cells one family), an array its shape."""
    series = pd.Series([0.01, np.nan, 0.02], index=["ff", "pdff", "iron"], name="p")
    q = fdr_bh(series)
    assert isinstance(q, pd.Series) and q.name == "p" and list(q.index) == ["ff", "pdff", "iron"]
    np.testing.assert_allclose(q.to_numpy(), [0.02, np.nan, 0.02], rtol=EXACT)

    frame = pd.DataFrame([[0.01, 0.2], [np.nan, 0.001]], index=["ff", "pdff"], columns=["age", "bmi"])
    adjusted = bonferroni(frame).adjusted
    assert isinstance(adjusted, pd.DataFrame) and adjusted.index.equals(frame.index)
    np.testing.assert_allclose(adjusted.to_numpy(), [[0.03, 0.6], [np.nan, 0.003]], rtol=EXACT)

    grid = np.array([[0.04, 0.01], [0.03, 0.02]])
    np.testing.assert_allclose(fdr_bh(grid), [[0.04, 0.04], [0.04, 0.04]], rtol=EXACT)


def test_empty_family() -> None:
    """All NaN: nothing tested, NaN threshold, NaN adjusted values."""
    p = np.full(3, np.nan)
    assert np.isnan(bonferroni(p).threshold) and np.isnan(fdr_bh_threshold(p))
    assert np.isnan(bonferroni(p).adjusted).all() and np.isnan(fdr_bh(p)).all()


def test_invalid_input_is_refused() -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fdr_bh([0.5, 1.2])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        bonferroni([-0.1])
    with pytest.raises(ValueError, match="unknown correction"):
        adjust([0.1], "holm")  # type: ignore[arg-type]
