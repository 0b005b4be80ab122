"""Age-bias correction of a predicted-age gap (Beheshti et al., NeuroImage: Clinical 2019; STUDIES.md §3).

An age predictor regresses towards the mean: its gap ``PAD = predicted − chronological age`` (years) is
positive in the young and negative in the old. The correction fits the straight line ``PAD ≈ α + β · age``
and subtracts it: ``corrected PAD = PAD − (α + β · age)``, which leaves a gap uncorrelated with age.

What is fitted where:

- **training participants** get out-of-fold corrections: they are split at random (seeded) into K folds of
  equal size (± 1); the line subtracted from a fold's PAD is fitted by least squares on the other K − 1
  folds only, so no participant's own PAD enters its correction;
- **test participants** get the line fitted by least squares on *all* training participants; nothing is
  fitted on test data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

#: Folds of the training cross-validation (Beheshti: 10).
N_FOLDS = 10
#: Seed of the random fold assignment.
SEED = 0


@dataclass(frozen=True)
class AgeBiasCorrection:
    """Corrected gaps (years) and the lines they were corrected with.

    Attributes
    ----------
    train_pad : ndarray, (n_train,)
        Out-of-fold corrected PAD of the training participants, in their input order.
    test_pad : ndarray, (n_test,)
        Corrected PAD of the test participants (empty when no test data was given).
    folds : ndarray of int, (n_train,)
        Fold (0 … K − 1) of each training participant.
    fold_lines : DataFrame
        One row per fold: ``fold``, ``intercept`` α (years), ``slope`` β (years of PAD per year of age),
        fitted on the training participants outside that fold.
    intercept, slope : float
        α, β fitted on all training participants (applied to the test participants).
    """

    train_pad: np.ndarray
    test_pad: np.ndarray
    folds: np.ndarray
    fold_lines: pd.DataFrame
    intercept: float
    slope: float


def _finite_pair(age: np.ndarray, predicted: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Ages and predicted ages as float64 vectors of one length; raises on missing values."""
    age, predicted = np.asarray(age, dtype=np.float64), np.asarray(predicted, dtype=np.float64)
    if age.shape != predicted.shape or age.ndim != 1:
        raise ValueError(f"{name} ages and predicted ages must be vectors of one length")
    if not (np.isfinite(age).all() and np.isfinite(predicted).all()):
        raise ValueError(f"{name} ages and predicted ages must be finite (drop missing values first)")
    return age, predicted


def fit_line(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least-squares ``y ≈ intercept + slope · x`` (from centred sums, stable for ages ~60)."""
    dx = x - x.mean()
    slope = float(dx @ (y - y.mean()) / (dx @ dx))
    return float(y.mean() - slope * x.mean()), slope


def assign_folds(n: int, n_folds: int = N_FOLDS, seed: int = SEED) -> np.ndarray:
    """Random fold 0 … ``n_folds`` − 1 of each of ``n`` participants, fold sizes differing by at most 1."""
    if not 2 <= n_folds <= n:
        raise ValueError(f"need 2 ≤ n_folds ≤ n participants, got n_folds={n_folds}, n={n}")
    folds = np.empty(n, dtype=np.int64)
    folds[np.random.default_rng(seed).permutation(n)] = np.arange(n) % n_folds
    return folds


def beheshti_correction(
    train_age: np.ndarray,
    train_predicted: np.ndarray,
    test_age: np.ndarray | None = None,
    test_predicted: np.ndarray | None = None,
    n_folds: int = N_FOLDS,
    seed: int = SEED,
) -> AgeBiasCorrection:
    """Correct predicted-age gaps for their linear dependence on age (see the module for what is fitted
    where).

    Parameters
    ----------
    train_age, train_predicted : array, (n_train,)
        Chronological and predicted age of the training participants, years; finite.
    test_age, test_predicted : array, (n_test,), optional
        The same for the test participants.
    n_folds : int
        K of the training cross-validation.
    seed : int
        Seed of the fold assignment (same seed, same folds).

    Returns
    -------
    AgeBiasCorrection
        ``train_pad`` out-of-fold, ``test_pad`` from the all-training line, and the fitted lines.
    """
    if (test_age is None) != (test_predicted is None):
        raise ValueError("give both test ages and test predicted ages, or neither")
    age, predicted = _finite_pair(train_age, train_predicted, "training")
    t_age, t_predicted = (
        _finite_pair(test_age, test_predicted, "test") if test_age is not None else (np.empty(0), np.empty(0))
    )
    pad = predicted - age
    folds = assign_folds(age.size, n_folds, seed)
    lines = [fit_line(age[folds != k], pad[folds != k]) for k in range(n_folds)]
    intercepts, slopes = (np.array(v) for v in zip(*lines, strict=True))
    intercept, slope = fit_line(age, pad)
    return AgeBiasCorrection(
        train_pad=pad - (intercepts[folds] + slopes[folds] * age),
        test_pad=t_predicted - t_age - (intercept + slope * t_age),
        folds=folds,
        fold_lines=pd.DataFrame({"fold": np.arange(n_folds), "intercept": intercepts, "slope": slopes}),
        intercept=intercept,
        slope=slope,
    )
