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

#: Scores the current fitter must keep: measured 9,901 and 9,772 (the issue's goals: 9,900 and 9,750).
FLOORS = {"17_ISMRM": 9_895, "12_ISMRM": 9_750}


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


def score_of(case, maps) -> float:
    """The challenge score of ``maps``, computed as the challenge scored entries: from the water and fat
    images."""
    return challenge_score(np.moveaxis(challenge_fat_fraction(maps.water, maps.fat), 0, 2), case)


def fitted_score(case, echoes: list[int], options: FitOptions | None = None) -> float:
    return score_of(case, fitted_maps(case, echoes, options))


@pytest.mark.parametrize("name", sorted(FLOORS))
def test_challenge_score(name):
    case, maps = default_fit(name)
    score = score_of(case, maps)
    pdff_score = challenge_score(np.moveaxis(maps.pdff, 0, 2), case)
    print(f"\n{name}: score {score:.0f} (our magnitude-discriminated PDFF scores {pdff_score:.0f})")
    assert score >= FLOORS[name]


def test_case_12_under_one_water_fat_phase():
    """The phase-constrained fit (``FitOptions.model="common_phase"``) on case 12: measured 9,766 (9,750
    without the fat spectrum's calibration), where voxels to which free phases give too much fat come out
    with less."""
    case = load_challenge(case_path("12_ISMRM"))
    assert fitted_score(case, [0, 1, 2, 3], FitOptions(model="common_phase")) >= 9_750


def test_case_12_with_its_third_echo_left_out():
    """Real echoes at 1.744, 4.82 and 10.972 ms (1.5 T): three, at non-uniform spacing.

    The spacings are whole multiples of 3.076 ms, so the cost repeats every 325 Hz and the fat offset
    (217 Hz) puts an alias every 108 Hz, which free water and fat phases fit alike. Measured: 9,464 with
    the common-phase share of the cost (9,433 without the fat spectrum's calibration), 918 without it
    (most of the liver on an alias), and 4,045 before the
    period was found (the grid then searched ±639 Hz with a prior towards 0 Hz that cannot tell 108 Hz
    apart).
    """
    case = load_challenge(case_path("12_ISMRM"))
    assert fitted_score(case, [0, 1, 3]) >= 9_350
    assert fitted_score(case, [0, 1, 3], FitOptions(common_phase_weight=0)) < 5_000


#: Real three-echo subsets of case 12 (echo indices) and the scores they must keep: measured 9,540, 8,544
#: and 9,205 (9,314, 8,532 and 8,990 without the fat spectrum's calibration), and without the region moves
#: (``region_rounds=0``) 9,503, 6,981 and 9,157, each under its floor. (0, 2, 3) is the hardest: its
#: spacings of 6.15 and 3.08 ms leave the fat alias 108 Hz off the field, and in the first slice the
#: posterior body wall lands on it.
THREE_ECHO_FLOORS = {(0, 1, 2): 9_515, (0, 2, 3): 8_500, (1, 2, 3): 9_175}
#: Range of the fat spectrum's offset (ppm) that case 12's echoes call for: measured 0.146 from all four,
#: 0.138, 0.147 and 0.162 from the subsets above (0.136 from (0, 1, 3)).
CASE_12_FAT_SHIFT_PPM = (0.13, 0.17)


@pytest.mark.parametrize("echoes", sorted(THREE_ECHO_FLOORS))
def test_case_12_three_echo_subsets(echoes):
    """Protocols the challenge files do not hold, from real echoes: three of case 12's four. Each finds the
    fat spectrum's offset that all four echoes find: a property of the tissue, not of an echo."""
    case = load_challenge(case_path("12_ISMRM"))
    maps = fitted_maps(case, list(echoes))
    assert score_of(case, maps) >= THREE_ECHO_FLOORS[echoes]
    lower, upper = CASE_12_FAT_SHIFT_PPM
    assert lower < maps.fat_shift_ppm < upper


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


def test_case_12_fat_offset_is_mostly_an_offset_of_the_fat_spectrum():
    """Case 12's fat fraction ran over the reference at every fat fraction, where case 17's does not, and
    its fat-dominant voxels departed from the 6-peak model; most of that is fat whose peaks sit 0.146 ppm
    nearer water than the model's spectrum, which the fit now calibrates on the image
    (:func:`cohortscale.ops.ideal.calibrate_fat_shift`).

    Measured without the calibration: median offsets +1.2, +2.0, +2.3, +3.0 and +2.3 points over reference
    bins 0–5, 5–15, 15–30, 30–60 and 60–90 %, and 1,623 of the 1,682 voxels that miss have too much fat; in
    bright voxels (over the 60th percentile of the signal norm) the RMS residual at echoes 1–4 is 7.9, 6.7,
    26.7 and 9.5 % of the signal where fat dominates, against 1.0, 2.1, 3.4 and 2.3 % where water does
    (PDFF under 10 %). With it: offsets +1.1, +1.4, +1.4, +1.7 and +1.9 points, 1,297 of 1,373 misses
    with too much fat, and fat's residual in the same voxels 5.7, 4.0, 21.2 and 10.0 %. What is left is
    mostly where R2* is high (median +4.2 points at 150–250 s⁻¹, +9.1 at 250–500), at the heart and lung.
    Case 17: −0.4 to +0.1 points, and no offset found.

    Without the calibration, calibrating the fat signal from the image (Yu et al. 2008) in other ways did
    not settle it. Per-echo factors on the model's fat signal, fitted to fat-dominant voxels whose PDFF
    bound is under 2 points, scored 9,795 when scaled to 1 at the first echo, but 9,735 when the parts that
    the voxels' own fat amplitude, field and R2* absorb are taken out: the gain is a rescaling of fat that
    the echoes cannot determine. Fitting the 6-peak spectrum's amplitudes instead (sum 1, so fat keeps its
    scale) scored 9,770–9,772 with the 1.94 ppm peak at −0.07 to −0.08, and at most 9,725 with the
    amplitudes kept ≥ 0.
    """
    case, calibrated = default_fit("12_ISMRM")
    plain = fitted_maps(case, options=FitOptions(fat_shift_search_ppm=0.0))
    offsets = {"plain": median_offsets(case, plain), "calibrated": median_offsets(case, calibrated)}
    case_17, maps_17 = default_fit("17_ISMRM")
    offsets["17_ISMRM"] = median_offsets(case_17, maps_17)
    for name, values in offsets.items():
        print(f"\n{name}: median offsets (points) {[round(100 * v, 2) for v in values.values()]}")
    assert len(offsets["plain"]) == 5 and min(offsets["plain"].values()) > 0.008
    assert all(offsets["calibrated"][b] < offsets["plain"][b] for b in offsets["plain"])
    assert max(offsets["calibrated"].values()) < 0.021
    assert len(offsets["17_ISMRM"]) == 4 and max(abs(v) for v in offsets["17_ISMRM"].values()) < 0.006
    assert maps_17.fat_shift_ppm == 0.0

    error = fat_fraction_error(case, plain)
    missed = error[case.eval_mask & ~(np.abs(error) < 0.1)]
    assert np.mean(missed > 0) > 0.9  # measured 1,623 of 1,682

    signal = np.moveaxis(case.signal, 2, 0)
    data = signal if case.phase_sign > 0 else signal.conj()
    norm = np.linalg.norm(data, axis=-1)
    bright = norm > np.percentile(norm, 60)

    def relative_misfit(maps, voxels):
        model = multiecho_signal(
            maps.water,
            maps.fat,
            maps.r2star,
            maps.b0,
            case.echo_times_s,
            ISMRM_6PEAK.shifted(maps.fat_shift_ppm),
            case.imaging_frequency_hz,
        )
        residual = (np.abs(data - model)[voxels] ** 2).mean(axis=0)
        return np.sqrt(residual / (np.abs(data[voxels]) ** 2).mean(axis=0))

    fat = {
        name: relative_misfit(maps, bright & (plain.pdff > 0.5))
        for name, maps in (("plain", plain), ("calibrated", calibrated))
    }
    water = relative_misfit(plain, bright & (plain.pdff < 0.1))
    rounded = {name: np.round(100 * values, 1).tolist() for name, values in fat.items()}
    print(f"per-echo RMS misfit (%): fat-dominant {rounded}, water {np.round(100 * water, 1)}")
    assert np.all(fat["plain"] > 2.5 * water)
    assert np.all(fat["calibrated"][:3] < 0.85 * fat["plain"][:3])
