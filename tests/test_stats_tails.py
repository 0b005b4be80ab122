"""−log10 p beyond float64 underflow, against mpmath at 40 digits and scipy where p is representable."""

from __future__ import annotations

import mpmath
import numpy as np
import pandas as pd
import pytest
from scipy import special, stats

from cohortscale.stats import correlation_matrix
from cohortscale.stats.tails import (
    UNDERFLOW_P,
    log_betainc,
    neg_log10_p_normal,
    neg_log10_p_pearson,
    neg_log10_p_t,
)

mpmath.mp.dps = 40


def mp_log_betainc(a: float, b: float, x: float) -> float:
    """log I_x(a, b) by its hypergeometric series, ``x^a (1 − x)^b / (a B(a, b)) · ₂F₁(a + b, 1; a + 1; x)``
    (a different expansion from the continued fraction under test)."""
    a, b, x = mpmath.mpf(a), mpmath.mpf(b), mpmath.mpf(x)
    series = mpmath.hyp2f1(a + b, 1, a + 1, x, maxterms=10**7)
    return float(
        a * mpmath.log(x) + b * mpmath.log1p(-x) - mpmath.log(a * mpmath.beta(a, b)) + mpmath.log(series)
    )


@pytest.mark.parametrize(
    "a, b, x",
    [
        (5.0, 3.0, 0.1),
        (2.5, 2.5, 0.2),
        (50.0, 0.5, 0.01),
        (1e4, 0.5, 0.3),
        (499.0, 499.0, 0.005),
        (2e4, 2e4, 0.25),
    ],
)
def test_log_betainc_against_mpmath(a: float, b: float, x: float) -> None:
    assert log_betainc(a, b, x) == pytest.approx(mp_log_betainc(a, b, x), rel=1e-13)


def test_log_betainc_matches_scipy_where_representable_and_marks_its_domain() -> None:
    a, b, x = np.array([3.0, 40.0, 0.7]), np.array([4.0, 0.5, 2.0]), np.array([0.2, 0.5, 0.05])
    np.testing.assert_allclose(log_betainc(a, b, x), np.log(special.betainc(a, b, x)), rtol=1e-13)
    # Above (a + 1) / (a + b + 2) the continued fraction is not used; x = 0 is log 0.
    assert np.isnan(log_betainc(2.0, 2.0, 0.6)) and log_betainc(2.0, 2.0, 0.0) == -np.inf


def test_the_normal_range_is_scipys_p() -> None:
    for r, n in ((0.05, 100), (0.3, 1000), (-0.6, 300), (0.9, 60)):
        x, y = _sample_with(r, n)
        fit = stats.pearsonr(x, y)
        assert neg_log10_p_pearson(fit.statistic, n) == pytest.approx(-np.log10(fit.pvalue), rel=1e-9)
    t, dof = np.array([0.5, 3.0, -12.0, 40.0]), np.array([10, 10, 500, 2000])
    np.testing.assert_allclose(neg_log10_p_t(t, dof), -np.log10(2 * stats.t.sf(np.abs(t), dof)), rtol=1e-12)
    z = np.array([0.0, 1.96, -5.0, 30.0])
    np.testing.assert_allclose(neg_log10_p_normal(z), -np.log10(2 * stats.norm.sf(np.abs(z))), rtol=1e-12)


def _sample_with(r: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(int(n))
    x = rng.standard_normal(n)
    return x, r * x + np.sqrt(1 - r**2) * rng.standard_normal(n)


def test_far_tails_against_mpmath() -> None:
    """Where p underflows float64 (p = 0): a UK Biobank-sized correlation, a large t and z."""
    r, n = 0.5, 40_002
    shape = n / 2 - 1
    expected = -(np.log(2.0) + mp_log_betainc(shape, shape, (1 - r) / 2)) / np.log(10.0)
    assert 2 * special.betainc(shape, shape, (1 - r) / 2) == 0.0
    assert neg_log10_p_pearson(r, n) == pytest.approx(expected, rel=1e-12)  # 2,500.7
    t, dof = 115.0, 40_000.0
    expected_t = -mp_log_betainc(dof / 2, 0.5, dof / (dof + t**2)) / np.log(10.0)
    assert neg_log10_p_t(t, dof) == pytest.approx(expected_t, rel=1e-12)
    z = 100.0
    expected_z = -float(mpmath.log10(mpmath.erfc(z / mpmath.sqrt(2))))
    assert neg_log10_p_normal(z) == pytest.approx(expected_z, rel=1e-12)


def test_both_sides_of_the_switch_agree() -> None:
    """Just above UNDERFLOW_P −log10 p comes from p, just below from the continued fraction: no step."""
    n = 1_000.0
    r = np.linspace(0.82, 0.87, 400)
    shape = n / 2 - 1
    p = 2 * special.betainc(shape, shape, (1 - r) / 2)
    assert p.max() > UNDERFLOW_P > p.min()
    from_log = -(np.log(2.0) + log_betainc(shape, shape, (1 - r) / 2)) / np.log(10.0)
    np.testing.assert_allclose(neg_log10_p_pearson(r, n), from_log, rtol=1e-12)
    assert np.all(np.diff(neg_log10_p_pearson(r, n)) > 0)


@pytest.mark.parametrize("method", ["pearson", "spearman"])
def test_correlation_table_is_finite_where_p_is_zero(method: str) -> None:
    x, y = _sample_with(0.9, 20_000)
    tidy = correlation_matrix(pd.DataFrame({"x": x}), pd.DataFrame({"y": y}), method=method).tidy()
    row = tidy.iloc[0]
    assert row.p == 0.0
    r, n = float(row.r), float(row.n)
    if method == "pearson":
        shape = n / 2 - 1
        expected = -(np.log(2.0) + mp_log_betainc(shape, shape, (1 - abs(r)) / 2)) / np.log(10.0)
    else:
        t2 = r**2 * (n - 2) / (1 - r**2)
        expected = -mp_log_betainc((n - 2) / 2, 0.5, (n - 2) / (n - 2 + t2)) / np.log(10.0)
    assert row.neg_log10_p == pytest.approx(expected, rel=1e-10)
    assert row.neg_log10_p > 3_000
