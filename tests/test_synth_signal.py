"""Synthetic images equal the signal model at the true parameters."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cohortscale.io.dicom import read_zip_series
from cohortscale.ops.fatwater import SPECTRA, multiecho_signal
from cohortscale.synth.labels import LABELS
from synth_helpers import dixon_series, first_eid, truth_at, visit_truth


def complex_slices(cohort: Path, eid: int, field: int) -> list[np.ndarray]:
    """Complex signal (y, x, echo) of every dynamic: magnitude series followed by its phase series."""
    series = read_zip_series(cohort / "bulk" / f"{eid}_{field}_2_0.zip")
    out = []
    for magnitude, phase in zip(series[::2], series[1::2], strict=True):
        assert (magnitude.image_type[2], phase.image_type[2]) == ("M", "P")
        signal = magnitude.pixels.astype(float) * np.exp(1j * np.pi * phase.pixels / 4096.0)
        out.append(np.moveaxis(signal, 0, -1))
    return out


def model_signal(group) -> np.ndarray:
    rotation = np.exp(1j * np.asarray(group["phase0"]))
    return multiecho_signal(
        np.asarray(group["water"]) * rotation,
        np.asarray(group["fat"]) * rotation,
        np.asarray(group["r2star"]),
        np.asarray(group["b0"]),
        group.attrs["echo_times_s"],
        SPECTRA[group.attrs["spectrum"]],
        group.attrs["imaging_frequency_hz"],
    )


@pytest.mark.parametrize("field", [20254, 20203])
def test_noiseless_multiecho_equals_model(noiseless_cohort: Path, field: int) -> None:
    eid = first_eid(noiseless_cohort)
    expected = model_signal(visit_truth(noiseless_cohort, eid)[f"multiecho/{field}"])
    for measured in complex_slices(noiseless_cohort, eid, field):
        # Only uint16 rounding of the magnitude and 2π/4096 steps of the phase separate them.
        error = np.abs(measured - expected)
        assert np.all(error <= 0.75 + 2e-3 * np.abs(expected)), error.max()
    assert np.abs(expected).max() > 500


def test_opposite_phase_convention_is_the_conjugate(make_cohort) -> None:
    cohort = make_cohort("clockwise", phase_sign=-1, multiecho_snr=1e7, ideal_dynamics=1)
    eid = first_eid(cohort)
    group = visit_truth(cohort, eid)["multiecho/20254"]
    assert group.attrs["phase_sign"] == -1
    expected = model_signal(group)
    (measured,) = complex_slices(cohort, eid, 20254)
    assert np.all(np.abs(measured.conj() - expected) <= 0.75 + 2e-3 * np.abs(expected))
    assert np.abs(measured - expected).max() > 100  # not the same data


@pytest.mark.parametrize("field", [20254, 20203])
def test_multiecho_noise_has_configured_sigma(clean_cohort: Path, field: int) -> None:
    eid = first_eid(clean_cohort)
    group = visit_truth(clean_cohort, eid)[f"multiecho/{field}"]
    sigma = 1600 * 0.80 / 40.0  # max_signal · muscle proton density / SNR
    residuals = [signal - model_signal(group) for signal in complex_slices(clean_cohort, eid, field)]
    for residual in residuals:
        assert np.std(residual.real) == pytest.approx(sigma, rel=0.1)
        assert np.std(residual.imag) == pytest.approx(sigma, rel=0.1)
        assert abs(np.mean(residual)) < 0.1 * sigma
    if len(residuals) > 1:  # dynamics have independent noise
        assert abs(np.corrcoef(residuals[0].real.ravel(), residuals[1].real.ravel())[0, 1]) < 0.05


def test_noiseless_dixon_matches_truth_in_patient_coordinates(noiseless_cohort: Path) -> None:
    eid = first_eid(noiseless_cohort)
    fused = visit_truth(noiseless_cohort, eid)["fused"]
    for s in dixon_series(noiseless_cohort, eid):
        kind = {"_W": "water", "_F": "fat"}.get(s.description[-2:])
        if kind is None:
            continue
        truth, exact = truth_at(s, fused)
        tissue = exact & (truth[kind] > 50)
        assert tissue.sum() > 500, s.description
        ratio = s.pixels[tissue] / truth[kind][tissue]
        # The coil field varies by < 1 % across a voxel; rounding adds < 1 %.
        assert np.median(np.abs(ratio - 1)) < 0.01, s.description
        assert np.percentile(np.abs(ratio - 1), 99) < 0.04, s.description


def test_noiseless_dixon_fat_fraction_and_in_opposed(noiseless_cohort: Path) -> None:
    eid = first_eid(noiseless_cohort)
    fused = visit_truth(noiseless_cohort, eid)["fused"]
    series = dixon_series(noiseless_cohort, eid)
    n_mixed = 0
    for start in range(0, 24, 4):
        station = {s.description.rsplit("_", 1)[1]: s for s in series[start : start + 4]}
        truth, exact = truth_at(station["W"], fused)
        fat = station["F"].pixels.astype(float)
        water = station["W"].pixels.astype(float)
        body = exact & (fat + water > 200)
        ff = fat[body] / (fat[body] + water[body])
        np.testing.assert_allclose(ff, truth["ff"][body], atol=0.02)
        # Opposed phase cancels water against fat: darker than in phase where both are present.
        mixed = body & (truth["ff"] > 0.2) & (truth["ff"] < 0.8)
        n_mixed += mixed.sum()
        assert np.all(station["opp"].pixels[mixed] < station["in"].pixels[mixed])
        fat_tissue = truth["labels"][body] == LABELS["subcutaneous_fat"]
        if fat_tissue.sum() > 10:
            assert np.median(ff[fat_tissue]) > 0.85
    assert n_mixed > 20
