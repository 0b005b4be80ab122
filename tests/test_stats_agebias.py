"""Beheshti age-bias correction (cohortscale.stats.agebias) on synthetic predicted ages with a planted
linear bias: corrected gaps uncorrelated with age, lines equal to np.polyfit on the same folds, and no
participant's own gap in its training correction."""

from __future__ import annotations

import numpy as np
import pytest

from cohortscale.stats.agebias import assign_folds, beheshti_correction, fit_line

SAME_LINE = 1e-10  # two least-squares fits of the same points
UNCORRELATED = 0.02  # |r| of corrected PAD with age

PLANTED_INTERCEPT = 19.5  # years: PAD = 19.5 − 0.3 · age + true gap, i.e. +0 at 65 years
PLANTED_SLOPE = -0.3  # regression to the mean of the predictor


def predicted_ages(seed: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Chronological age (UK Biobank imaging range), a true gap (SD 3 years) and a biased prediction."""
    rng = np.random.default_rng(seed)
    age = rng.uniform(45, 82, n)
    true_gap = rng.normal(0, 3.0, n)
    predicted = age + PLANTED_INTERCEPT + PLANTED_SLOPE * age + true_gap
    return age, predicted, true_gap


def test_corrected_gap_is_uncorrelated_with_age() -> None:
    age, predicted, true_gap = predicted_ages(0, 20_000)
    test_age, test_predicted, test_gap = predicted_ages(1, 20_000)
    raw_r = np.corrcoef(age, predicted - age)[0, 1]
    assert raw_r < -0.7  # the planted bias is strong before correction
    result = beheshti_correction(age, predicted, test_age, test_predicted)
    assert abs(np.corrcoef(age, result.train_pad)[0, 1]) < UNCORRELATED
    assert abs(np.corrcoef(test_age, result.test_pad)[0, 1]) < UNCORRELATED
    assert result.intercept == pytest.approx(PLANTED_INTERCEPT, abs=0.3)
    assert result.slope == pytest.approx(PLANTED_SLOPE, abs=0.005)
    # What is left is the true gap, up to the estimated line's error.
    assert np.abs(result.test_pad - test_gap).max() < 0.2
    assert np.corrcoef(result.train_pad, true_gap)[0, 1] > 0.999


def test_lines_equal_polyfit_on_the_same_folds() -> None:
    """Fold k's line = np.polyfit(age, PAD, 1) over the other folds; the test line over all training."""
    age, predicted, _ = predicted_ages(2, 1_003)
    test_age, test_predicted, _ = predicted_ages(3, 50)
    result = beheshti_correction(age, predicted, test_age, test_predicted, n_folds=10, seed=11)
    pad = predicted - age
    np.testing.assert_array_equal(result.folds, assign_folds(age.size, 10, seed=11))
    for k in range(10):
        outside = result.folds != k
        slope, intercept = np.polyfit(age[outside], pad[outside], 1)
        line = result.fold_lines.loc[k]
        assert line["slope"] == pytest.approx(slope, abs=SAME_LINE)
        assert line["intercept"] == pytest.approx(intercept, abs=SAME_LINE)
        inside = ~outside
        np.testing.assert_allclose(
            result.train_pad[inside], pad[inside] - (intercept + slope * age[inside]), rtol=0, atol=SAME_LINE
        )
    slope, intercept = np.polyfit(age, pad, 1)
    assert (result.slope, result.intercept) == pytest.approx((slope, intercept), abs=SAME_LINE)
    np.testing.assert_allclose(
        result.test_pad, test_predicted - test_age - (intercept + slope * test_age), rtol=0, atol=SAME_LINE
    )


def test_training_correction_is_out_of_fold() -> None:
    """Changing one participant's prediction changes the lines of the other folds, never its own fold's."""
    age, predicted, _ = predicted_ages(4, 200)
    before = beheshti_correction(age, predicted, n_folds=5)
    shifted = predicted.copy()
    shifted[0] += 50.0
    after = beheshti_correction(age, shifted, n_folds=5)
    own = before.folds[0]
    changed = ~np.isclose(before.fold_lines["intercept"], after.fold_lines["intercept"], rtol=0, atol=1e-12)
    assert list(np.flatnonzero(changed)) == [k for k in range(5) if k != own]
    assert after.train_pad[0] - before.train_pad[0] == pytest.approx(50.0, abs=1e-12)
    assert before.test_pad.size == 0


def test_folds_are_balanced_seeded_and_shuffled() -> None:
    folds = assign_folds(1_003, 10, seed=0)
    assert sorted(np.bincount(folds)) == [100] * 7 + [101] * 3
    np.testing.assert_array_equal(folds, assign_folds(1_003, 10, seed=0))
    assert not np.array_equal(folds, assign_folds(1_003, 10, seed=1))
    assert not np.array_equal(folds, np.arange(1_003) % 10)


def test_fit_line_is_exact_on_a_line() -> None:
    x = np.array([50.0, 60.0, 70.0])
    assert fit_line(x, 2.0 - 0.25 * x) == pytest.approx((2.0, -0.25), abs=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"train_predicted": np.array([60.0, np.nan, 70.0, 71.0])}, "finite"),
        ({"test_age": np.array([60.0])}, "both"),
        ({"n_folds": 5}, "n_folds"),
    ],
)
def test_invalid_input_is_refused(kwargs: dict, message: str) -> None:
    arguments = {"train_age": np.array([55.0, 60.0, 65.0, 70.0]), "train_predicted": np.full(4, 62.0)}
    with pytest.raises(ValueError, match=message):
        beheshti_correction(**{**arguments, **kwargs})
