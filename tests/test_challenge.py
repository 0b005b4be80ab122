"""The fit on the real ISMRM 2012 challenge cases (``shared/data/ismrm2012``), scored like the challenge."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest

from cohortscale.io.challenge import (
    ChallengeFileError,
    challenge_fat_fraction,
    challenge_score,
    load_challenge,
)
from cohortscale.ops.fatwater import ISMRM_6PEAK, multiecho_signal
from cohortscale.ops.ideal import FitOptions, fit_fatwater

CASES = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "ismrm2012"

#: Scores the current fitter must keep: measured 9,903 and 9,721 (the issue's goals: 9,900 and 9,750).
FLOORS = {"17_ISMRM": 9_895, "12_ISMRM": 9_710}


def case_path(name: str) -> Path:
    path = CASES / f"{name}.mat"
    if not path.exists():
        pytest.skip(f"challenge data not present at {path}")
    return path


def fitted_maps(case, echoes: list[int] | None = None, options: FitOptions | None = None):
    """Our fit of ``case`` (of its ``echoes`` only, when given); the fitter takes (..., y, x, echo), slices
    first."""
    echoes = list(range(case.echo_times_s.size)) if echoes is None else echoes
    return fit_fatwater(
        np.moveaxis(case.signal[..., echoes], 2, 0),
        case.echo_times_s[echoes],
        case.imaging_frequency_hz,
        phase_sign=case.phase_sign,
        options=options,
    )


@functools.cache
def default_fit(name: str):
    """The case and its fit with the default options, fitted once per test process."""
    case = load_challenge(case_path(name))
    return case, fitted_maps(case)


def fitted_score(case, echoes: list[int], options: FitOptions | None = None) -> float:
    # Scored as the challenge scored entries: from the water and fat images.
    maps = fitted_maps(case, echoes, options)
    return challenge_score(np.moveaxis(challenge_fat_fraction(maps.water, maps.fat), 0, 2), case)


@pytest.mark.parametrize("name", sorted(FLOORS))
def test_challenge_score(name):
    case, maps = default_fit(name)
    score = challenge_score(np.moveaxis(challenge_fat_fraction(maps.water, maps.fat), 0, 2), case)
    pdff_score = challenge_score(np.moveaxis(maps.pdff, 0, 2), case)
    print(f"\n{name}: score {score:.0f} (our magnitude-discriminated PDFF scores {pdff_score:.0f})")
    assert score >= FLOORS[name]


def test_case_12_under_one_water_fat_phase():
    """The phase-constrained fit (``FitOptions.model="common_phase"``) on case 12: measured 9,750, where
    voxels to which free phases give too much fat come out with less."""
    case = load_challenge(case_path("12_ISMRM"))
    assert fitted_score(case, [0, 1, 2, 3], FitOptions(model="common_phase")) >= 9_745


def test_case_12_with_its_third_echo_left_out():
    """Real echoes at 1.744, 4.82 and 10.972 ms (1.5 T): three, at non-uniform spacing.

    The spacings are whole multiples of 3.076 ms, so the cost repeats every 325 Hz and the fat offset
    (217 Hz) puts an alias every 108 Hz, which free water and fat phases fit alike. Measured: 9,433 with
    the common-phase share of the cost, 922 without it (most of the liver on an alias), and 4,045 before the
    period was found (the grid then searched ±639 Hz with a prior towards 0 Hz that cannot tell 108 Hz
    apart).
    """
    case = load_challenge(case_path("12_ISMRM"))
    assert fitted_score(case, [0, 1, 3]) >= 9_350
    assert fitted_score(case, [0, 1, 3], FitOptions(common_phase_weight=0)) < 5_000


#: Real three-echo subsets of case 12 (echo indices) and the scores they must keep: measured 9,317, 8,532
#: and 9,000, and without the region moves (``region_rounds=0``) 9,245, 6,968 and 8,951, each under its
#: floor. (0, 2, 3) is the hardest: its spacings of 6.15 and 3.08 ms leave the fat alias 108 Hz off the
#: field, and in the first slice the posterior body wall lands on it.
THREE_ECHO_FLOORS = {(0, 1, 2): 9_250, (0, 2, 3): 8_450, (1, 2, 3): 8_970}


@pytest.mark.parametrize("echoes", sorted(THREE_ECHO_FLOORS))
def test_case_12_three_echo_subsets(echoes):
    """Protocols the challenge files do not hold, from real echoes: three of case 12's four."""
    case = load_challenge(case_path("12_ISMRM"))
    assert fitted_score(case, list(echoes)) >= THREE_ECHO_FLOORS[echoes]


def test_reader_and_score_conventions(tmp_path):
    case = load_challenge(case_path("17_ISMRM"))
    assert case.signal.shape == (101, 101, 4, 3)
    assert case.phase_sign == 1
    assert case.imaging_frequency_hz == pytest.approx(1.494 * 42.577478e6)
    assert challenge_score(case.ref, case) == 10_000
    water, fat = np.array([3.0 + 4.0j, 0.0, 1.0]), np.array([0.0, -2.0, 1.0j])
    assert np.allclose(challenge_fat_fraction(water, fat), [0.0, 1.0, 0.5])
    assert challenge_score(np.clip(case.ref + 0.2, 0, None), case) < 1_000
    bad = tmp_path / "bad.mat"
    bad.write_bytes(b"not matlab")
    with pytest.raises(ChallengeFileError, match=r"bad\.mat"):
        load_challenge(bad)


#: Reference fat-fraction bins (lower, upper) in which the fitted fat fraction's median offset is checked.
FAT_FRACTION_BINS = ((0.0, 0.05), (0.05, 0.15), (0.15, 0.3), (0.3, 0.6), (0.6, 0.9), (0.9, 1.0))


def fat_fraction_error(case, maps) -> np.ndarray:
    """Fitted minus reference fat fraction, as the challenge computes the fitted one, shaped like ``ref``."""
    return np.moveaxis(challenge_fat_fraction(maps.water, maps.fat), 0, 2) - case.ref


def median_offsets(case, maps) -> dict[tuple[float, float], float]:
    """Median of fitted minus reference fat fraction per reference bin holding at least 500 voxels."""
    error = fat_fraction_error(case, maps)
    offsets = {}
    for lower, upper in FAT_FRACTION_BINS:
        inside = case.eval_mask & (case.ref >= lower) & (case.ref < upper)
        if inside.sum() >= 500:
            offsets[(lower, upper)] = float(np.median(error[inside]))
    return offsets


def test_case_12_shortfall_is_a_fat_offset_where_fat_departs_from_the_model():
    """Why case 12 misses its goal: the fit's fat fraction runs over the reference at every fat fraction,
    where case 17's does not, and case 12's fat-dominant voxels depart from the 6-peak model.

    Measured: median offsets +1.2, +2.0, +2.3, +3.0 and +2.3 points over reference bins 0–5, 5–15, 15–30,
    30–60 and 60–90 %; 1,623 of the 1,682 voxels that miss have too much fat. Case 17: −0.4 to +0.1 points.
    In case 12's bright voxels (over the 60th percentile of the signal norm) the RMS residual at echoes 1–4
    is 7.9, 6.7, 26.7 and 9.5 % of the signal where fat dominates, against 1.0, 2.1, 3.4 and 2.3 % where
    water does (PDFF under 10 %).

    Calibrating the fat signal from the image (Yu et al. 2008) does not settle it. Per-echo factors on the
    model's fat signal, fitted to fat-dominant voxels whose PDFF bound is under 2 points, scored 9,795 when
    scaled to 1 at the first echo, but 9,735 when the parts that the voxels' own fat amplitude, field and
    R2* absorb are taken out: the gain is a rescaling of fat that the echoes cannot determine. Fitting the
    6-peak spectrum's amplitudes instead (sum 1, so fat keeps its scale) scored 9,770–9,772 with the
    1.94 ppm peak at −0.07 to −0.08, and at most 9,725 with the amplitudes kept ≥ 0.
    """
    fits = {name: default_fit(name) for name in ("12_ISMRM", "17_ISMRM")}
    offsets = {name: median_offsets(case, maps) for name, (case, maps) in fits.items()}
    for name, values in offsets.items():
        print(f"\n{name}: median offsets (points) {[round(100 * v, 2) for v in values.values()]}")
    assert len(offsets["12_ISMRM"]) == 5 and min(offsets["12_ISMRM"].values()) > 0.008
    assert len(offsets["17_ISMRM"]) == 4 and max(abs(v) for v in offsets["17_ISMRM"].values()) < 0.006

    case, maps = fits["12_ISMRM"]
    error = fat_fraction_error(case, maps)
    missed = error[case.eval_mask & ~(np.abs(error) < 0.1)]
    assert np.mean(missed > 0) > 0.9  # measured 1,623 of 1,682

    signal = np.moveaxis(case.signal, 2, 0)
    data = signal if case.phase_sign > 0 else signal.conj()
    model = multiecho_signal(
        maps.water, maps.fat, maps.r2star, maps.b0, case.echo_times_s, ISMRM_6PEAK, case.imaging_frequency_hz
    )
    norm = np.linalg.norm(data, axis=-1)
    bright = norm > np.percentile(norm, 60)

    def relative_misfit(voxels):
        residual = (np.abs(data - model)[voxels] ** 2).mean(axis=0)
        return np.sqrt(residual / (np.abs(data[voxels]) ** 2).mean(axis=0))

    fat, water = relative_misfit(bright & (maps.pdff > 0.5)), relative_misfit(bright & (maps.pdff < 0.1))
    print(f"per-echo RMS misfit (%): fat-dominant {np.round(100 * fat, 1)}, water {np.round(100 * water, 1)}")
    assert np.all(fat > 2.5 * water)
