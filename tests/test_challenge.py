"""The fit on the real ISMRM 2012 challenge cases (``shared/data/ismrm2012``), scored like the challenge."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cohortscale.io.challenge import (
    ChallengeFileError,
    challenge_fat_fraction,
    challenge_score,
    load_challenge,
)
from cohortscale.ops.ideal import FitOptions, fit_fatwater

CASES = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "ismrm2012"

#: Scores the current fitter must keep: measured 9,903 and 9,721 (the issue's goals: 9,900 and 9,750).
FLOORS = {"17_ISMRM": 9_895, "12_ISMRM": 9_710}


def case_path(name: str) -> Path:
    path = CASES / f"{name}.mat"
    if not path.exists():
        pytest.skip(f"challenge data not present at {path}")
    return path


@pytest.mark.parametrize("name", sorted(FLOORS))
def test_challenge_score(name):
    case = load_challenge(case_path(name))
    # The fitter takes (..., y, x, echo): slices first.
    maps = fit_fatwater(
        np.moveaxis(case.signal, 2, 0),
        case.echo_times_s,
        case.imaging_frequency_hz,
        phase_sign=case.phase_sign,
    )
    # Scored as the challenge scored entries: from the water and fat images.
    score = challenge_score(np.moveaxis(challenge_fat_fraction(maps.water, maps.fat), 0, 2), case)
    pdff_score = challenge_score(np.moveaxis(maps.pdff, 0, 2), case)
    print(f"\n{name}: score {score:.0f} (our magnitude-discriminated PDFF scores {pdff_score:.0f})")
    assert score >= FLOORS[name]


def test_case_12_under_one_water_fat_phase():
    """The phase-constrained fit (``FitOptions.model="common_phase"``) on case 12: measured 9,750, where
    voxels to which free phases give too much fat come out with less."""
    case = load_challenge(case_path("12_ISMRM"))
    assert fitted_score(case, [0, 1, 2, 3], FitOptions(model="common_phase")) >= 9_745


def fitted_score(case, echoes: list[int], options: FitOptions | None = None) -> float:
    maps = fit_fatwater(
        np.moveaxis(case.signal[..., echoes], 2, 0),
        case.echo_times_s[echoes],
        case.imaging_frequency_hz,
        phase_sign=case.phase_sign,
        options=options,
    )
    return challenge_score(np.moveaxis(challenge_fat_fraction(maps.water, maps.fat), 0, 2), case)


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
