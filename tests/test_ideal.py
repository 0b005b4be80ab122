"""Accuracy of the fat–water fit: noiseless exactness, Monte Carlo against the Cramér–Rao bound."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage
import scipy.stats

from cohortscale.backend import gpu_available
from cohortscale.ops.crlb import crlb
from cohortscale.ops.fatwater import (
    HAMILTON_LIVER_9PEAK,
    ISMRM_6PEAK,
    fat_phasor,
    multiecho_signal,
    water_fat_basis,
)
from cohortscale.ops.ideal import (
    R2STAR_GRID_S,
    FitOptions,
    Quality,
    alias_shifts,
    amplitudes_for,
    fat_fraction,
    field_prior,
    fit_fatwater,
    move_decay_aliases,
    near_alias_shifts,
    neighbourhood_r2star,
    pdff_sd_bound,
    r2star_prior,
    smooth_field_map,
)
from cohortscale.ops.magnitude import fit_magnitude
from cohortscale.protocols import UKB_IDEAL_20254, UKB_MULTIECHO_20203

FREQUENCY_HZ = 63.866e6
PROTOCOLS = {
    "6-echo": np.asarray(UKB_IDEAL_20254.echo_times_s),
    "10-echo": np.asarray(UKB_MULTIECHO_20203.echo_times_s),
}
B0_PEAK_HZ = 200.0
NO_PRIOR = FitOptions(r2star_prior_gate=0)


def smooth_field(n: int) -> tuple[np.ndarray, np.ndarray]:
    """A smooth B0 map spanning ±200 Hz and a smooth initial phase over an n×n image."""
    yy, xx = np.mgrid[:n, :n] / n
    b0 = B0_PEAK_HZ * np.sin(np.pi * (xx - 0.5)) * np.cos(np.pi * (yy - 0.3))
    phase = 1.0 + 0.8 * xx - 0.5 * yy
    return b0, phase


def uniform_image(te, pdff, r2star, snr, rng, spectrum=ISMRM_6PEAK, n=24):
    """Noisy multi-echo image of one tissue (ρ_w + ρ_f = 1, noise SD 1/SNR per channel)."""
    b0, phase = smooth_field(n)
    rotation = np.exp(1j * phase)
    signal = multiecho_signal(
        (1 - pdff) * rotation, pdff * rotation, np.full((n, n), r2star), b0, te, spectrum, FREQUENCY_HZ
    )
    noise = rng.standard_normal(signal.shape) + 1j * rng.standard_normal(signal.shape)
    return signal + noise / snr, b0


def wrapped_error(estimate, truth, period):
    """Field error, Hz, modulo the alias period of uniform echo spacing."""
    return (estimate - truth + period / 2) % period - period / 2


@pytest.mark.parametrize("model", ["complex", "common_phase"])
@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
def test_noiseless_fit_is_exact(protocol, model):
    te = PROTOCOLS[protocol]
    n = 16
    b0, phase = smooth_field(n)
    pdff = np.linspace(0, 1, n)[None, :].repeat(n, axis=0)
    r2 = np.linspace(10, 300, n)[:, None].repeat(n, axis=1)
    rotation = np.exp(1j * phase)
    signal = multiecho_signal(
        (1 - pdff) * rotation, pdff * rotation, r2, b0, te, HAMILTON_LIVER_9PEAK, FREQUENCY_HZ
    )
    # Per-voxel field (no smoothing): smoothing this curved field would bias it by ~1 Hz.
    exact = FitOptions(iterations=8, field_smoothing_px=0, model=model)
    maps = fit_fatwater(signal, te, FREQUENCY_HZ, spectrum=HAMILTON_LIVER_9PEAK, options=exact)
    period = 1 / (te[1] - te[0])
    assert np.abs(maps.pdff - pdff).max() < 1e-4
    assert np.abs(maps.r2star - r2).max() < 1e-2
    assert np.abs(wrapped_error(maps.b0, b0, period)).max() < 1e-2
    assert np.abs(maps.water - (1 - pdff) * rotation).max() < 1e-4
    assert np.abs(maps.fat - pdff * rotation).max() < 1e-4
    assert np.allclose(maps.iron, 0.202 + 0.0254 * maps.r2star, atol=1e-5)
    assert np.all(maps.residual < 1e-4)
    assert np.all(maps.quality == Quality.OK)


def test_field_map_smoothing():
    period = 500.0
    weights = np.ones((1, 6, 6))
    assert np.allclose(smooth_field_map(np.full((1, 6, 6), 40.0), weights, period, 1.0), 40.0)
    # Either side of the period's edge: the phasor mean stays at the edge (a plain mean would give 0),
    # and each voxel keeps its side.
    edge = np.where(np.arange(6)[None, None, :] % 2 == 0, 245.0, -245.0).repeat(6, axis=1)
    field = smooth_field_map(edge, weights, period, 1.0)
    assert np.all(np.abs(field) > 245.0)
    assert np.array_equal(np.sign(field), np.sign(edge))
    # A voxel without signal takes its neighbours' field; bright voxels keep theirs.
    field = np.full((1, 6, 6), -30.0)
    field[0, 3, 3], weights[0, 3, 3] = 120.0, 0.0
    assert np.allclose(smooth_field_map(field, weights, period, 1.0), -30.0)
    # Without a period (non-uniform echoes) a linear ramp is kept away from the borders.
    ramp = np.arange(12.0)[None, None, :].repeat(12, axis=1) * 7.0
    assert np.allclose(smooth_field_map(ramp, np.ones((1, 12, 12)), None, 0.5)[0, :, 2:-2], ramp[0, :, 2:-2])


def test_r2star_prior_kernels():
    r2star = np.array([[[30.0, 30.0, 30.0, 90.0, 1500.0]]])
    # Medians of five neighbours, the row mirrored at its ends: the voxel at the bound gets 90 s⁻¹ (30, 90,
    # 1500, 1500, 90), not its own 1500.
    centre = neighbourhood_r2star(r2star, 5)
    assert np.allclose(centre, [[[30.0, 30.0, 30.0, 90.0, 90.0]]])
    share = np.array([[[1.0, 0.6, 0.3, 0.15, 0.06]]])
    prior = r2star_prior(centre, share, 2.0, FitOptions())
    assert np.allclose(prior.log_centre, np.log(centre + 10.0))
    assert prior.offset_s == 10.0
    # σ² 2 / 0.5² × (gate 0.3 / share − 1)
    assert np.allclose(prior.precision, 2.0 / 0.5**2 * np.array([[[0.0, 0.0, 0.0, 1.0, 4.0]]]))
    # No signal: the share's floor (10⁻⁶ of the gate) keeps the precision finite.
    no_signal = r2star_prior(centre, 0 * share, 2.0, FitOptions()).precision
    assert np.allclose(no_signal, 2.0 / 0.5**2 * (1e6 - 1))
    with pytest.raises(ValueError, match="r2star_prior_log_sd"):
        FitOptions(r2star_prior_log_sd=0)


def test_r2star_prior_for_dim_voxels():
    """Dim voxels of a three-echo image (no spare degree of freedom) borrow R2*; bright ones keep theirs."""
    te = np.array([2.87e-3, 6.07e-3, 9.27e-3])  # challenge case 17
    n, pdff, r2 = 32, 0.3, 50.0
    b0, phase = smooth_field(n)
    amplitude = np.ones((n, n))
    amplitude[8:24, 8:24] = 0.08
    rotation = amplitude * np.exp(1j * phase)
    signal = multiecho_signal(
        (1 - pdff) * rotation, pdff * rotation, np.full((n, n), r2), b0, te, ISMRM_6PEAK, FREQUENCY_HZ
    )
    rng = np.random.default_rng(5)
    signal = signal + (rng.standard_normal(signal.shape) + 1j * rng.standard_normal(signal.shape)) / 100
    with_prior = fit_fatwater(signal, te, FREQUENCY_HZ)
    without = fit_fatwater(signal, te, FREQUENCY_HZ, options=NO_PRIOR)
    dim = np.s_[10:22, 10:22]
    error = lambda maps: float(np.median(np.abs(maps.pdff[dim] - pdff)))  # noqa: E731
    spread = lambda maps: float(np.subtract(*np.percentile(maps.r2star[dim], [75, 25])))  # noqa: E731
    # Measured: R2* interquartile range 45 against 108 s⁻¹ (0.33–0.45 of it over noise seeds 5–10), median
    # R2* 52 s⁻¹ (44–52), PDFF error 0.072 against 0.080 (0.86–0.98 of it).
    assert spread(with_prior) < 0.6 * spread(without)
    assert np.median(with_prior.r2star[dim]) == pytest.approx(r2, abs=10.0)
    assert error(with_prior) < error(without)
    far = np.ones((n, n), bool)
    far[4:28, 4:28] = False
    assert np.array_equal(with_prior.r2star[far], without.r2star[far])


def test_r2star_prior_keeps_fast_decay_tissue():
    """Tissue dark from fast decay (iron) has its full proton density: no prior, its R2* left to its data."""
    te = PROTOCOLS["10-echo"]
    n, pdff, snr = 32, 0.1, 20.0
    b0, phase = smooth_field(n)
    r2star = np.where(np.arange(n) < n // 2, 50.0, 300.0)[None, :].repeat(n, axis=0)
    rotation = np.exp(1j * phase)
    signal = multiecho_signal(
        (1 - pdff) * rotation, pdff * rotation, r2star, b0, te, ISMRM_6PEAK, FREQUENCY_HZ
    )
    rng = np.random.default_rng(1)
    signal = signal + (rng.standard_normal(signal.shape) + 1j * rng.standard_normal(signal.shape)) / snr
    maps = fit_fatwater(signal, te, FREQUENCY_HZ)
    assert np.array_equal(maps.r2star, fit_fatwater(signal, te, FREQUENCY_HZ, options=NO_PRIOR).r2star)
    # The three columns of R2* 300 s⁻¹ next to the step: measured 298 s⁻¹ on average (a prior gated on the
    # signal norm, which fast decay lowers, pulled them to 254 s⁻¹).
    assert np.mean(maps.r2star[4:-4, n // 2 : n // 2 + 3]) == pytest.approx(300.0, abs=15.0)


@pytest.mark.parametrize("peak_hz", [900.0, 1440.0])
def test_non_uniform_echoes_under_a_wide_field(peak_hz):
    """Non-uniform echo spacing has no alias period: the search must span the field, here ±7 and ±11.3 ppm
    at 3 T, and regions move by the echoes' near-aliases.

    The fields are beyond the ±500 Hz that an earlier fixed range searched, and the wider one beyond ±10
    ppm; there a smooth field came out as water–fat swaps wherever it left the range. These echo times
    hold a near-alias 1,950 Hz away, which both fields reach at their ends: without moves by it, 69 voxels
    at the high end of the ±900 Hz field sat on it (measured).
    """
    te = np.array([1.3e-3, 2.1e-3, 3.4e-3, 4.6e-3])
    frequency = 127.74e6
    rows, cols = 24, 96
    yy, xx = np.mgrid[:rows, :cols]
    b0 = peak_hz * np.sin(np.pi * (xx / (cols - 1) - 0.5)) + 60.0 * np.cos(np.pi * yy / rows)
    pdff = np.repeat([0.05, 0.3, 0.8, 0.15], cols // 4)[None, :].repeat(rows, axis=0)
    rotation = np.exp(1j * (0.5 + 0.03 * xx))
    signal = multiecho_signal(
        (1 - pdff) * rotation, pdff * rotation, np.full(pdff.shape, 40.0), b0, te, ISMRM_6PEAK, frequency
    )
    rng = np.random.default_rng(4)
    signal = signal + (rng.standard_normal(signal.shape) + 1j * rng.standard_normal(signal.shape)) / 100
    maps = fit_fatwater(signal, te, frequency)
    assert np.max(np.abs(maps.b0 - b0)) < 20.0
    assert np.max(np.abs(maps.pdff - pdff)) < 0.06
    without_near_aliases = fit_fatwater(signal, te, frequency, options=FitOptions(near_alias_residual=0))
    assert np.sum(np.abs(without_near_aliases.b0 - b0) > 20.0) > 20
    with pytest.raises(ValueError, match="field_search_ppm"):
        FitOptions(field_step_cycles=0)


def test_near_alias_shifts_of_non_uniform_echoes():
    """The shifts are minima of the noiseless residual, checked against a direct fit at each of them."""
    from cohortscale.ops.ideal import _field_grid

    te = np.array([1.3e-3, 2.1e-3, 3.4e-3, 4.6e-3])
    frequency = 127.74e6
    grid = _field_grid(te, frequency, FitOptions())
    fat = alias_shifts(ISMRM_6PEAK, frequency, grid)
    shifts = near_alias_shifts(te, ISMRM_6PEAK, frequency, grid, 0.01, exclude=fat, window=1)
    assert shifts == (-65, 65, -80, 80)  # 1,946 and 2,395 Hz
    # Water fits itself shifted by 1,946 Hz within 0.1 % (other water and fat), 2,395 Hz within 1 %; the
    # fitted R2* is free, as in the search.
    basis = water_fat_basis(te, ISMRM_6PEAK, frequency)
    one, zero = np.ones(1), np.zeros(1)
    water = multiecho_signal(one, zero, 30 * one, zero, te, ISMRM_6PEAK, frequency)
    energy = float(np.sum(np.abs(water) ** 2))

    def best_relative_residual(field_hz):
        return min(
            float(amplitudes_for(water, te, basis, np.full(1, field_hz), np.full(1, r2))[1][0] ** 2) / energy
            for r2 in R2STAR_GRID_S
        )

    assert best_relative_residual(-65 * grid.step_hz) < 0.001
    assert best_relative_residual(-80 * grid.step_hz) < 0.011
    assert best_relative_residual(-40 * grid.step_hz) > 0.05
    # The six non-uniform echoes of the protocol benchmark have none beyond the water–fat alias.
    six = np.array([1.5, 3.2, 5.3, 7.0, 9.2, 11.1]) * 1e-3
    grid = _field_grid(six, frequency / 2, FitOptions())
    fat = alias_shifts(ISMRM_6PEAK, frequency / 2, grid)
    assert near_alias_shifts(six, ISMRM_6PEAK, frequency / 2, grid, 0.01, exclude=fat, window=1) == ()


def test_field_search_follows_field_strength():
    from cohortscale.ops.ideal import _field_grid

    options = FitOptions()
    four = np.array([1.3e-3, 2.1e-3, 3.4e-3, 4.6e-3])
    at_3t, at_1_5t = _field_grid(four, 127.74e6, options), _field_grid(four, 63.87e6, options)
    # ±15 ppm in steps of at most 0.1 cycles over the 3.3 ms train (30.3 Hz).
    assert at_3t.values_hz[-1] == pytest.approx(1916.1)
    assert at_1_5t.values_hz[-1] == pytest.approx(958.05)
    assert at_3t.step_hz <= 0.1 / 3.3e-3 < at_3t.step_hz * 1.05
    # Three echoes search the same range in steps of at most 0.05 cycles over their 2.1 ms train (23.8 Hz).
    three = _field_grid(four[:3], 127.74e6, options)
    assert three.values_hz[-1] == pytest.approx(1916.1)
    assert three.step_hz <= 0.05 / 2.1e-3 < three.step_hz * 1.05


@pytest.mark.parametrize("field", ["ramp ±900 Hz", "two islands near 0 Hz"])
def test_three_non_uniform_echoes_choose_the_true_rung_of_the_alias_ladder(field):
    """Three echoes fit the field and a ladder of its aliases (multiples of the fat offset) alike.

    3 T, 1.6/2.4/3.9 ms, SNR 50, four tissues with R2* 40–250 s⁻¹ and air above and below. Over three
    seeds both fields come out within 22 Hz and every PDFF within 0.09 of the truth.

    - A smooth ramp from −900 to +900 Hz: the ±500 Hz search that was the only prior before put all of it
      on an alias (PDFF off by 0.95); without the window around the blocks' field, or with region moves
      of one rung only, the fit lands two rungs off.
    - Two islands across an air gap, the field within ±60 Hz: nothing in the data ties one island to
      the other's rung, and without the prior on the field one lands two rungs off.

    The blocks are what the re-simulated anatomy of case 12 needs (``benchmarks/fatwater_protocols.py``);
    these fields are chosen right without them.
    """
    from cohortscale.ops.ideal import _field_grid

    te = np.array([1.6e-3, 2.4e-3, 3.9e-3])
    frequency = 127.74e6
    rows, cols = 48, 128
    yy, xx = np.mgrid[:rows, :cols]
    tissue = (yy >= 8) & (yy < 40)  # air above and below: the background sets the noise floor
    b0 = 60.0 * np.cos(np.pi * yy / rows)
    if field == "ramp ±900 Hz":
        b0 = b0 + 900.0 * np.sin(np.pi * (xx / (cols - 1) - 0.5))
    else:
        tissue &= np.abs(xx - cols // 2) > 6
    pdff = np.repeat([0.05, 0.3, 0.8, 0.15], cols // 4)[None, :].repeat(rows, axis=0)
    r2star = np.repeat([40.0, 120.0, 250.0, 60.0], cols // 4)[None, :].repeat(rows, axis=0)
    rotation = np.exp(1j * (0.5 + 0.03 * xx)) * tissue
    signal = multiecho_signal((1 - pdff) * rotation, pdff * rotation, r2star, b0, te, ISMRM_6PEAK, frequency)
    rng = np.random.default_rng(0)
    signal = signal + (rng.standard_normal(signal.shape) + 1j * rng.standard_normal(signal.shape)) / 50
    maps = fit_fatwater(signal, te, frequency)
    assert np.max(np.abs(maps.b0 - b0)[tissue]) < 40.0
    assert np.max(np.abs(maps.pdff - pdff)[tissue]) < 0.15
    # The prior is twice the Laplace negative log: 2 at one scale (5 ppm, 638.7 Hz) from 0 Hz.
    grid = _field_grid(te, frequency, FitOptions())
    assert np.interp(638.7, grid.values_hz, field_prior(grid, frequency, 5.0)) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="coarse_block_px"):
        FitOptions(coarse_block_px=0)
    with pytest.raises(ValueError, match="three_echo_step_cycles"):
        FitOptions(three_echo_step_cycles=0)


def test_three_echoes_on_a_scanner_centred_on_fat():
    """3 T, 1.6/2.4/3.9 ms, SNR 50: a body whose field sits 3.4 ppm off resonance (the centre frequency set
    on fat) plus a 1 ppm ramp. Free water and fat phases fit that field and its alias near 0 Hz alike, and
    the prior towards 0 Hz took the alias: every voxel swapped (measured at 35c2360 and here without the
    common-phase share). Under one water–fat phase the alias leaves a residual the prior cannot outweigh:
    every voxel within 0.1 over three seeds, against none without it. The swapped fit's voxels call for
    fat at the edge of the spectrum-offset search (0.3 ppm), which no offset of the spectrum explains:
    none is taken.
    """
    te = np.array([1.6e-3, 2.4e-3, 3.9e-3])
    frequency = 127.74e6
    n = 96
    yy, xx = np.mgrid[:n, :n]
    radius = np.hypot(yy - n / 2, xx - n / 2) / (0.42 * n)
    body = radius < 1
    pdff = np.where(radius > 0.8, 0.9, 0.1 + 0.3 * xx / n) * body
    b0 = 1e-6 * frequency * (3.4 + (yy / n - 0.5))
    signal = multiecho_signal(
        (1 - pdff) * body, pdff * body, np.full(pdff.shape, 40.0), b0, te, ISMRM_6PEAK, frequency
    )
    rng = np.random.default_rng(0)
    signal = signal + (rng.standard_normal(signal.shape) + 1j * rng.standard_normal(signal.shape)) / 50
    within = {}
    for weight in (FitOptions().common_phase_weight, 0.0):
        maps = fit_fatwater(signal, te, frequency, options=FitOptions(common_phase_weight=weight))
        within[weight] = np.mean(np.abs(maps.pdff - pdff)[body] < 0.1)
        assert maps.fat_shift_ppm == 0.0
    assert within[FitOptions().common_phase_weight] > 0.99 and within[0.0] < 0.1, within


def test_three_echoes_in_an_image_without_background():
    """3 T, 1.6/2.4/3.9 ms, SNR 50, tissue in every voxel (four tissues, R2* 40–250 s⁻¹, a ±150 Hz ramp).

    With no air, the darkest voxels are tissue and the background's noise floor comes out 1,000 times
    the truth: 5–6 % of the voxels missed by more than 0.1 over three seeds (at 8a62a21), against none
    with air above and below. The common-phase residual caps the floor: every voxel within 0.1, as with air.
    """
    te = np.array([1.6e-3, 2.4e-3, 3.9e-3])
    frequency = 127.74e6
    rows, cols = 48, 128
    yy, xx = np.mgrid[:rows, :cols]
    b0 = 60.0 * np.cos(np.pi * yy / rows) + 150.0 * np.sin(np.pi * (xx / (cols - 1) - 0.5))
    pdff = np.repeat([0.05, 0.3, 0.8, 0.15], cols // 4)[None, :].repeat(rows, axis=0)
    r2star = np.repeat([40.0, 120.0, 250.0, 60.0], cols // 4)[None, :].repeat(rows, axis=0)
    rotation = np.exp(1j * (0.5 + 0.03 * xx))
    signal = multiecho_signal((1 - pdff) * rotation, pdff * rotation, r2star, b0, te, ISMRM_6PEAK, frequency)
    rng = np.random.default_rng(0)
    signal = signal + (rng.standard_normal(signal.shape) + 1j * rng.standard_normal(signal.shape)) / 50
    maps = fit_fatwater(signal, te, frequency)
    assert np.mean(np.abs(maps.pdff - pdff) < 0.1) > 0.99


def test_three_echoes_of_a_uniform_train_with_one_left_out():
    """1.744, 4.82 and 10.972 ms at 1.5 T (challenge case 12's train without its third echo).

    The spacings are whole multiples of 3.076 ms, so the cost repeats every 325 Hz, and the field is
    searched over that period like a uniform train's. Searched over ±639 Hz instead, with the prior
    towards 0 Hz, 57–64 % of the voxels were off by more than 0.1 (three seeds, at 35c2360); now
    96–97 % are within 0.1 of the truth, and every miss is in the stripe of R2* 250 s⁻¹ (PDFF 80 %).
    """
    te = np.array([1.744e-3, 4.82e-3, 10.972e-3])
    rows, cols = 48, 128
    yy, xx = np.mgrid[:rows, :cols]
    tissue = (yy >= 8) & (yy < 40)
    b0 = 30.0 * np.cos(np.pi * yy / rows) + 150.0 * np.sin(np.pi * (xx / (cols - 1) - 0.5))
    pdff = np.repeat([0.05, 0.3, 0.8, 0.15], cols // 4)[None, :].repeat(rows, axis=0)
    r2star = np.repeat([40.0, 120.0, 250.0, 60.0], cols // 4)[None, :].repeat(rows, axis=0)
    rotation = np.exp(1j * (0.5 + 0.03 * xx)) * tissue
    signal = multiecho_signal(
        (1 - pdff) * rotation, pdff * rotation, r2star, b0, te, ISMRM_6PEAK, FREQUENCY_HZ
    )
    rng = np.random.default_rng(0)
    signal = signal + (rng.standard_normal(signal.shape) + 1j * rng.standard_normal(signal.shape)) / 50
    maps = fit_fatwater(signal, te, FREQUENCY_HZ)
    assert np.mean(np.abs(maps.pdff - pdff)[tissue] < 0.1) > 0.94
    assert np.median(np.abs(wrapped_error(maps.b0, b0, 1 / 3.076e-3))[tissue]) < 10.0


@pytest.mark.gpu
@pytest.mark.skipif(not gpu_available(), reason="needs CuPy and a CUDA GPU")
def test_three_non_uniform_echoes_give_the_same_maps_on_the_gpu():
    """The three-echo path (field prior, blocks, window, upsampling) on CuPy arrays, against NumPy."""
    import cupy

    te = np.array([1.6e-3, 2.4e-3, 3.9e-3])
    frequency = 127.74e6
    yy, xx = np.mgrid[:48, :128]
    tissue = (yy >= 8) & (yy < 40)
    b0 = 900.0 * np.sin(np.pi * (xx / 127 - 0.5)) + 60.0 * np.cos(np.pi * yy / 48)
    pdff = np.repeat([0.05, 0.3, 0.8, 0.15], 32)[None, :].repeat(48, axis=0)
    rotation = np.exp(1j * (0.5 + 0.03 * xx)) * tissue
    signal = multiecho_signal(
        (1 - pdff) * rotation, pdff * rotation, np.full(pdff.shape, 60.0), b0, te, ISMRM_6PEAK, frequency
    )
    rng = np.random.default_rng(1)
    signal = signal + (rng.standard_normal(signal.shape) + 1j * rng.standard_normal(signal.shape)) / 50
    cpu = fit_fatwater(signal, te, frequency)
    gpu = fit_fatwater(cupy.asarray(signal), te, frequency)
    assert np.isclose(cpu.pdff, cupy.asnumpy(gpu.pdff), atol=1e-3)[tissue].mean() > 0.99
    assert np.isclose(cpu.b0, cupy.asnumpy(gpu.b0), atol=0.5)[tissue].mean() > 0.99


def test_common_phase_fit_reaches_its_own_bound():
    """Real water and fat under one phase: unbiased, at the common-phase Cramér–Rao bound, with water and
    fat in phase in every voxel; its R2* is more precise than free phases allow."""
    te = PROTOCOLS["6-echo"]
    snr, r2 = 50.0, 100.0
    signal, _ = mosaic_image(te, r2, snr, np.random.default_rng(11))
    maps = fit_fatwater(signal, te, FREQUENCY_HZ, options=FitOptions(model="common_phase"))
    ratio = maps.fat / maps.water
    assert np.all(np.abs(ratio.imag) <= 1e-5 * np.abs(ratio))
    width = STRIPE[1]
    r2_sd = []
    for index, pdff in enumerate(PDFF_VALUES):
        stripe = np.s_[:, index * width : (index + 1) * width]
        estimate = fat_fraction(maps.water[stripe], maps.fat[stripe], clip=False)
        bound = crlb(te, FREQUENCY_HZ, ISMRM_6PEAK, pdff, r2, snr=snr, model="common_phase")
        assert abs(np.mean(estimate) - pdff) < 0.005
        assert abs(np.mean(maps.r2star[stripe]) - r2) < 2.0
        assert 0.85 < np.std(estimate) / bound.sd_pdff_fraction < 1.15
        assert 0.85 < np.std(maps.r2star[stripe]) / bound.sd_r2star_per_s < 1.15
        free = crlb(te, FREQUENCY_HZ, ISMRM_6PEAK, pdff, r2, snr=snr, model="complex")
        r2_sd.append(np.std(maps.r2star[stripe]) / free.sd_r2star_per_s)
    # Measured 0.93–0.98 of the free-phase bound.
    assert max(r2_sd) < 1.0


@pytest.mark.gpu
@pytest.mark.skipif(not gpu_available(), reason="needs CuPy and a CUDA GPU")
def test_common_phase_fit_gives_the_same_maps_on_the_gpu():
    import cupy

    te = PROTOCOLS["6-echo"]
    signal, _ = mosaic_image(te, 100.0, 50.0, np.random.default_rng(12))
    options = FitOptions(model="common_phase")
    cpu = fit_fatwater(signal, te, FREQUENCY_HZ, options=options)
    gpu = fit_fatwater(cupy.asarray(signal), te, FREQUENCY_HZ, options=options)
    assert np.isclose(cpu.pdff, cupy.asnumpy(gpu.pdff), atol=1e-3).mean() > 0.99
    assert np.isclose(cpu.r2star, cupy.asnumpy(gpu.r2star), atol=0.5).mean() > 0.99


def test_three_echo_noise_variance_has_the_background_as_floor():
    """Three echoes leave no degree of freedom, so the residuals on the grid say little of the noise.

    Half of this 3 T, three-echo image is air. At SNR 30 the grid's residuals alone put σ² under half the
    truth (the data term, scaled by it, then outweighs the field map's smoothness); the background's noise,
    the floor, brings it back.
    """
    from cohortscale.ops.fieldmap import varpro_cost
    from cohortscale.ops.ideal import _field_grid, _noise_variance, background_noise_variance

    te = 1.5e-3 + 0.8e-3 * np.arange(3)
    frequency, sigma = 127.74e6, 1 / 30
    yy, xx = np.mgrid[:96, :96]
    tissue = (xx < 48).astype(float)
    signal = multiecho_signal(
        0.8 * tissue, 0.2 * tissue, np.full(tissue.shape, 50.0), 300 * np.sin(yy / 30), te, ISMRM_6PEAK,
        frequency,
    )  # fmt: skip
    rng = np.random.default_rng(5)
    flat = signal + sigma * (rng.standard_normal(signal.shape) + 1j * rng.standard_normal(signal.shape))
    flat = flat.reshape(-1, te.size)
    options = FitOptions()
    grid = _field_grid(te, frequency, options)
    phasor = fat_phasor(te, ISMRM_6PEAK, frequency)
    cost, _ = varpro_cost(flat, te, phasor, grid.values_hz, np.asarray(options.r2star_grid_s))
    energy = (np.abs(flat) ** 2).sum(axis=1)
    bright_residual = np.median(cost.min(axis=1)[energy > 0.1 * np.percentile(energy, 99)])
    residual_only = float(bright_residual) / scipy.stats.chi2.median(1)
    assert residual_only < 0.5 * sigma**2
    # The darkest 1 % of the image is the darkest 2 % of its background: σ² comes out high by the ratio of
    # those χ²(6) quantiles (1.30), on the safe side for a floor.
    high_by = scipy.stats.chi2.ppf(0.02, 6) / scipy.stats.chi2.ppf(0.01, 6)
    floor = background_noise_variance(energy, te.size, options.background_quantile)
    assert floor == pytest.approx(high_by * sigma**2, rel=0.1)
    assert _noise_variance(cost.min(axis=1), energy, te.size, np, options.background_quantile) == floor
    # With air in the image, water and fat under one phase leave more residual than the floor: no cap.
    common, _ = varpro_cost(flat, te, phasor, grid.values_hz, np.asarray(options.r2star_grid_s), True)
    capped = _noise_variance(
        cost.min(axis=1), energy, te.size, np, options.background_quantile, common.min(axis=1)
    )
    assert capped == floor
    with pytest.raises(ValueError, match="background_quantile"):
        FitOptions(background_quantile=1.0)


def test_opposite_precession_is_conjugated():
    te = PROTOCOLS["6-echo"]
    signal, _ = uniform_image(te, 0.2, 50.0, 200.0, np.random.default_rng(3), n=8)
    direct = fit_fatwater(signal, te, FREQUENCY_HZ)
    conjugated = fit_fatwater(signal.conj(), te, FREQUENCY_HZ, phase_sign=-1)
    assert np.allclose(direct.pdff, conjugated.pdff, atol=1e-5)
    assert np.median(direct.pdff) == pytest.approx(0.2, abs=0.01)
    wrong = fit_fatwater(signal.conj(), te, FREQUENCY_HZ)
    assert abs(np.median(wrong.pdff) - 0.2) > 0.05


def test_non_finite_voxels_are_left_out_and_flagged():
    """NaN or inf in a few voxels leaves the rest of the image fitted as it is without them."""
    te = PROTOCOLS["6-echo"]
    signal, _ = uniform_image(te, 0.2, 50.0, 100.0, np.random.default_rng(5), n=12)
    clean = fit_fatwater(signal, te, FREQUENCY_HZ)
    broken = signal.copy()
    broken[3, 3, 2], broken[7, 0, :] = np.nan, np.inf
    maps = fit_fatwater(broken, te, FREQUENCY_HZ)
    bad = np.zeros((12, 12), dtype=bool)
    bad[3, 3] = bad[7, 0] = True
    for name in ("pdff", "r2star", "b0", "iron", "residual", "water", "fat"):
        assert np.isnan(getattr(maps, name)[bad]).all(), name
    assert np.all(maps.quality[bad] & Quality.NON_FINITE) and not np.any(
        maps.quality[~bad] & Quality.NON_FINITE
    )
    # Fitted as air, the two voxels reach only their neighbours, through the neighbourhood R2* and the
    # field smoothing (measured: 0.016 at most there, 0 beyond).
    near = scipy.ndimage.binary_dilation(bad, iterations=2) & ~bad
    change = np.abs(maps.pdff - clean.pdff)
    assert change[near].max() < 0.05 and change[~bad & ~near].max() < 1e-5
    assert np.median(maps.pdff[~bad]) == pytest.approx(0.2, abs=0.01)


@pytest.mark.parametrize(
    "echo_times_s, message",
    [
        (PROTOCOLS["6-echo"][:2], "at least 3"),
        (PROTOCOLS["6-echo"][::-1], "positive and increasing"),
        (PROTOCOLS["6-echo"] * 1e3, "in seconds, not ms"),
    ],
)
def test_echo_times_are_checked(echo_times_s, message):
    signal = np.ones((4, 4, echo_times_s.size), dtype=complex)
    with pytest.raises(ValueError, match=message):
        fit_fatwater(signal, echo_times_s, FREQUENCY_HZ)
    with pytest.raises(ValueError, match=message):
        fit_magnitude(np.abs(signal), echo_times_s, FREQUENCY_HZ)


def test_magnitude_discrimination():
    water = np.array([1.0, 0.1, 0.5 + 0.0j])
    fat = np.array([0.1, 1.0, 0.5 + 0.0j])
    assert np.allclose(fat_fraction(water, fat), [1 - 1 / 1.1, 1 / 1.1, 0.5])
    noisy_fat = np.array([-0.02 + 0.01j])
    assert fat_fraction(np.array([1.0 + 0j]), noisy_fat)[0] == 0.0
    assert fat_fraction(np.array([1.0 + 0j]), noisy_fat, clip=False)[0] < 0


#: Cells of the Monte Carlo check: (protocol, SNR, R2* s⁻¹).
MONTE_CARLO_CELLS = [
    (protocol, snr, r2)
    for protocol in sorted(PROTOCOLS)
    for snr in (20.0, 50.0)
    for r2 in (0.0, 30.0, 100.0, 300.0)
]
PDFF_VALUES = (0.0, 0.05, 0.2, 0.5, 0.8, 1.0)
#: Rows × columns of each PDFF's stripe in a Monte Carlo image: 4,608 voxels put the standard error of a
#: cell's mean at 1/68 of its SD, well inside the bias limits wherever the SD is near the bound.
STRIPE = (96, 48)
#: Separation (noise variances) below which a fast-decay alias is indistinguishable from the truth.
MIN_DECAY_ALIAS_SEPARATION = 9.0


def mosaic_image(te, r2star, snr, rng):
    """One noisy image of side-by-side stripes, one per PDFF of ``PDFF_VALUES``, under one smooth B0 map.

    Like tissues in a body, the stripes share the field, which pins the field map: a uniform tissue alone
    can shift wholesale to its alias, indistinguishably from an R2* 300 s⁻¹ water–fat swap at low SNR.
    """
    rows, width = STRIPE
    cols = width * len(PDFF_VALUES)
    yy, xx = np.mgrid[:rows, :cols]
    b0 = B0_PEAK_HZ * np.sin(np.pi * (xx / (cols - 1) - 0.5)) * np.cos(np.pi * (yy / rows - 0.3))
    rotation = np.exp(1j * (1.0 + 0.02 * xx - 0.01 * yy))
    pdff = np.repeat(np.asarray(PDFF_VALUES), width)[None, :].repeat(rows, axis=0)
    signal = multiecho_signal(
        (1 - pdff) * rotation, pdff * rotation, np.full(pdff.shape, r2star), b0, te, ISMRM_6PEAK, FREQUENCY_HZ
    )
    noise = rng.standard_normal(signal.shape) + 1j * rng.standard_normal(signal.shape)
    return signal + noise / snr, b0


def decay_alias_separation(
    te, pdff: float, r2star: float, snr: float, alias_r2star: float | None = None
) -> float:
    """How far, in noise variances, the noiseless signal is from its fast-decay alias: the best fit of it
    with R2* at ``alias_r2star`` (the fit's upper bound by default) and water and fat free.

    With R2* at the fit's upper bound the model keeps only the first echoes, which the free complex water
    and fat fit exactly; what it cannot fit is the signal of the later echoes. When that is within a few
    noise variances, the likelihood is nearly flat from the true R2* up to the bound: a share of voxels
    lands on the alias whatever the estimator (it did with the true field map given), and no per-voxel
    estimator reaches the Cramér–Rao bound. This happens on the 10-echo protocol at R2* 300 s⁻¹, whose
    later echoes (to 23.8 ms) hold almost no signal.
    """
    one = np.ones(1)
    signal = multiecho_signal(
        (1 - pdff) * one, pdff * one, r2star * one, 0 * one, te, ISMRM_6PEAK, FREQUENCY_HZ
    )
    basis = water_fat_basis(te, ISMRM_6PEAK, FREQUENCY_HZ)
    alias = FitOptions().r2star_max_s if alias_r2star is None else alias_r2star
    _, residual = amplitudes_for(signal.astype(complex), te, basis, 0 * one, alias * one)
    return float(residual[0] ** 2 * snr**2)


def test_pdff_bias_limit_is_out_of_reach_at_10_echoes_r2star_300_snr_20():
    """Why the Monte Carlo does not assert those cells: not even an oracle meets the PDFF bias limit.

    With the true field map and the true R2* given, water and fat are a linear least-squares fit, and the
    magnitude PDFF of it is still biased beyond 0.5 points at PDFF 0, 5 and 100 %: the bound on PDFF is
    15–18 points per voxel there, and the ratio of noisy magnitudes is biased at that noise. (Measured over
    40,000 voxels: −1.23, −1.09, −0.79, −0.02, +0.48, +0.87 points at PDFF 0, 5, 20, 50, 80, 100 %.)

    The limit is the magnitude discrimination's, which the issue asks for: fat projected on the signal at
    t = 0, ``Re(F·conj(W+F)) / |W+F|²``, is unbiased on the same oracle fit (within ±0.12 points; random
    initial phases, seed 0), but in the full fit of the Monte Carlo it still misses (−1.21 to +2.19 points,
    against −2.66 to +3.03 with magnitude discrimination), and its R2* bias there, −33.4 to +2.5 s⁻¹, misses
    its limit anyway.
    """
    te = PROTOCOLS["10-echo"]
    basis = water_fat_basis(te, ISMRM_6PEAK, FREQUENCY_HZ)
    rng = np.random.default_rng(0)
    one = np.ones(40_000)
    biases = {}
    for pdff in (0.0, 0.05, 1.0):
        signal = multiecho_signal(
            (1 - pdff) * one, pdff * one, 300 * one, 0 * one, te, ISMRM_6PEAK, FREQUENCY_HZ
        )
        signal = signal + (rng.standard_normal(signal.shape) + 1j * rng.standard_normal(signal.shape)) / 20
        amplitudes, _ = amplitudes_for(signal, te, basis, 0 * one, 300 * one)
        biases[pdff] = 100 * (
            float(np.mean(fat_fraction(amplitudes[:, 0], amplitudes[:, 1], clip=False))) - pdff
        )
    # The standard error of each mean is under 0.1 points.
    assert all(abs(bias) > 0.6 for bias in biases.values()), biases


def test_r2star_sd_limit_is_out_of_reach_at_10_echoes_r2star_300_snr_20_pdff_50_80():
    """Why the Monte Carlo does not assert those cells: no estimator of R2* meets the SD limit there unless it
    is biased by hundreds of s⁻¹ at R2* 1000 s⁻¹, inside the issue's range (0–1000 s⁻¹).

    The Cramér–Rao bound is the local curvature of the likelihood. The Hammersley–Chapman–Robbins bound
    compares two parameter points θ and θ': any estimator T has ``Var_θ(T) ≥ (E_θ'[T] − E_θ[T])² /
    (exp(d²) − 1)``, with d² the distance of their noiseless signals in noise variances (white Gaussian
    noise). Here θ' is tissue of R2* 1000 s⁻¹ whose water and fat fit this signal best: d² is 0.97 at PDFF
    50 % and 1.12 at 80 %, so an estimator unbiased at both has an R2* SD of at least 546 and 488 s⁻¹,
    2.75 and 2.78 times the Cramér–Rao bound (199 and 175 s⁻¹). Searching θ' over the field, water and fat
    as well (Nelder–Mead from that point, R2* up to 1000 s⁻¹) raises it by under 0.3 %.
    """
    te = PROTOCOLS["10-echo"]
    snr, r2star, alias = 20.0, 300.0, 1000.0
    for pdff in (0.5, 0.8):
        separation = decay_alias_separation(te, pdff, r2star, snr, alias_r2star=alias)
        chapman_robbins = (alias - r2star) / np.sqrt(np.expm1(separation))
        bound = float(
            crlb(te, FREQUENCY_HZ, ISMRM_6PEAK, pdff, r2star, snr=snr, model="complex").sd_r2star_per_s
        )
        # Biases within the limit (2 s⁻¹) at both points change the numerator by under 1 %.
        assert chapman_robbins * (1 - 4 / (alias - r2star)) > 2.5 * bound, (pdff, chapman_robbins, bound)


def test_fit_is_at_the_likelihood_optimum_where_its_sd_exceeds_the_bound():
    """At 10 echoes, SNR 50, R2* 300 s⁻¹ the R2* SD is 1.2–1.45× its bound at PDFF 50–80 % over six noise
    draws, after the decay-alias moves (not asserted by the Monte Carlo): that is the maximum-likelihood
    estimate's own spread, not a search that stops short.
    Each voxel's residual is compared with the residual at the true field and R2*, which the optimum cannot
    exceed: measured (seed 7), no stripe has over 0.7 % of voxels above it by 0.1 noise variances, nor over
    0.1 % by 0.5 (the field map's smoothing moves a voxel off its own optimum by that much). Starting from six
    of the 15 R2* values (0, 40, 105, 230, 500, 1100 s⁻¹) with one Gauss–Newton iteration, 7–33 % are above
    it by 0.5; smoothing the field map at σ 1.5 px, 1.6–6.3 %.
    """
    te = PROTOCOLS["10-echo"]
    snr, r2star = 50.0, 300.0
    basis = water_fat_basis(te, ISMRM_6PEAK, FREQUENCY_HZ)
    signal, b0 = mosaic_image(te, r2star, snr, np.random.default_rng(7))
    maps = fit_fatwater(signal, te, FREQUENCY_HZ)
    flat = signal.reshape(-1, te.size)
    _, fitted = amplitudes_for(flat, te, basis, maps.b0.reshape(-1).astype(float), maps.r2star.reshape(-1))
    _, truth = amplitudes_for(flat, te, basis, b0.reshape(-1), np.full(flat.shape[0], r2star))
    # Noise variance per real channel is 1/snr²: the excess in those units.
    excess = ((fitted**2 - truth**2) * snr**2).reshape(b0.shape)
    width = STRIPE[1]
    for index in range(len(PDFF_VALUES)):
        stripe = excess[:, index * width : (index + 1) * width]
        assert np.mean(stripe > 0.1) < 0.015 and np.mean(stripe > 0.5) < 0.003, PDFF_VALUES[index]


def test_voxels_on_a_decay_alias_move_to_the_basin_their_neighbourhood_points_to():
    """10 echoes, R2* 300 s⁻¹, SNR 50 (seed 7): noise puts some voxels of the PDFF 50 and 80 % stripes in
    the basin of fast decay, at the R2* bound, where their neighbours sit near 300 s⁻¹. Measured: the moves
    take the voxels at R2* ≥ 1000 s⁻¹ from 47 to 16 and the R2* SD from 1.64 and 1.54 to 1.38 and 1.28 times
    its bound; moved voxels fit within 0.95 noise variances of their own optimum."""
    te = PROTOCOLS["10-echo"]
    snr, r2star, width = 50.0, 300.0, STRIPE[1]
    signal, _ = mosaic_image(te, r2star, snr, np.random.default_rng(7))
    stripes = {pdff: np.s_[:, index * width : (index + 1) * width] for index, pdff in enumerate(PDFF_VALUES)}
    bound = crlb(te, FREQUENCY_HZ, ISMRM_6PEAK, np.array([0.5, 0.8]), r2star, snr=snr, model="complex")
    fits = {
        ratio: fit_fatwater(signal, te, FREQUENCY_HZ, options=FitOptions(decay_alias_ratio=ratio))
        for ratio in (0.0, FitOptions().decay_alias_ratio)
    }
    fast = {
        ratio: sum(int((m.r2star[stripes[p]] >= 1000).sum()) for p in (0.5, 0.8)) for ratio, m in fits.items()
    }
    assert fast[1.5] < fast[0.0] / 2, fast
    for pdff, sd_bound in zip((0.5, 0.8), bound.sd_r2star_per_s, strict=True):
        ratios = [float(m.r2star[stripes[pdff]].std()) / sd_bound for m in fits.values()]
        assert ratios[1] < ratios[0] - 0.2, (pdff, ratios)

    # The kernel on a converged fit: only voxels far off their neighbourhood move, towards it, into a basin
    # whose residual is within the allowed excess of their own.
    options = FitOptions()
    plain = fit_fatwater(
        signal, te, FREQUENCY_HZ, options=FitOptions(decay_alias_ratio=0, field_smoothing_px=0)
    )
    basis = water_fat_basis(te, ISMRM_6PEAK, FREQUENCY_HZ)
    flat = signal.reshape(-1, te.size)
    field, own = plain.b0.reshape(-1).astype(float), plain.r2star.reshape(-1).astype(float)
    _, residual = amplitudes_for(flat, te, basis, field, own)
    centre = neighbourhood_r2star(plain.r2star[None].astype(float), options.r2star_prior_window_px).reshape(
        -1
    )
    moved, _, new, _, new_residual = move_decay_aliases(
        flat, te, basis, field, own, residual, centre, 1 / snr**2, 20.0, options
    )
    assert moved.size > 20

    def log_rate(values):
        return np.log(np.maximum(values, 0) + options.r2star_prior_offset_s)

    away = np.abs(log_rate(own[moved]) - log_rate(centre[moved]))
    assert (away > np.log(options.decay_alias_ratio)).all()
    assert (np.abs(log_rate(new) - log_rate(centre[moved])) < away).all()
    assert (np.abs(log_rate(new) - log_rate(own[moved])) > np.log(options.decay_alias_ratio)).all()
    excess = (new_residual**2 - residual[moved] ** 2) * snr**2
    assert excess.max() < options.decay_alias_max_excess
    with pytest.raises(ValueError, match="decay_alias_ratio must be 0 or > 1"):
        FitOptions(decay_alias_ratio=1.0)


def test_voxels_whose_pdff_the_echoes_cannot_pin_are_flagged_imprecise():
    """At R2* 1000 s⁻¹ the 6-echo protocol keeps two echoes of signal: the bound on PDFF is ~60 points per
    voxel at SNR 50 and the fit lands on aliases with a far lower R2*. Most voxels are flagged (78–80 % over
    three seeds); the rest sit on aliases (R2* 330–450 s⁻¹) whose own bound looks precise. At R2* 100 no
    voxel is flagged, and the per-voxel bound at the fitted values matches the Monte Carlo SD."""
    te = PROTOCOLS["6-echo"]
    rng = np.random.default_rng(5)
    width = STRIPE[1]
    fast, _ = mosaic_image(te, 1000.0, 50.0, rng)
    flagged = (fit_fatwater(fast, te, FREQUENCY_HZ).quality & Quality.IMPRECISE) > 0
    assert flagged.mean() > 0.7

    signal, _ = mosaic_image(te, 100.0, 50.0, rng)
    maps = fit_fatwater(signal, te, FREQUENCY_HZ)
    assert not ((maps.quality & Quality.IMPRECISE) > 0).any()
    stripe = np.s_[:, 2 * width : 3 * width]  # PDFF 20 %
    assert PDFF_VALUES[2] == 0.2
    bound = pdff_sd_bound(
        maps.water[stripe], maps.fat[stripe], maps.r2star[stripe], 1 / 50.0**2, te, FREQUENCY_HZ, ISMRM_6PEAK
    )
    empirical = np.std(fat_fraction(maps.water[stripe], maps.fat[stripe], clip=False))
    assert np.median(bound) == pytest.approx(empirical, rel=0.1)

    # Where the bound straddles the threshold (median 8 points), the flag follows the bound at the true
    # noise level: the fit's own σ² is per real channel, as the bound's SNR is (a per-complex-sample σ²
    # would move the bound by √2 and flag most of this cell).
    signal, _ = mosaic_image(te, 300.0, 20.0, rng)
    maps = fit_fatwater(signal, te, FREQUENCY_HZ)
    flagged = (maps.quality & Quality.IMPRECISE) > 0
    bound = pdff_sd_bound(maps.water, maps.fat, maps.r2star, 1 / 20.0**2, te, FREQUENCY_HZ, ISMRM_6PEAK)
    assert 0.02 < flagged.mean() < 0.5
    assert np.mean(flagged == (bound > FitOptions().max_pdff_sd)) > 0.95


#: Fat fractions of the stripes of :func:`striped_image`.
STRIPE_PDFF = (0.05, 0.2, 0.5, 0.8)


def striped_image(te, spectrum, snr, rng, n=64):
    """A noisy n×n image of stripes at ``STRIPE_PDFF`` (R2* 40 s⁻¹) under a smooth ±200 Hz field, with fat
    of ``spectrum``; and its true PDFF."""
    b0, phase = smooth_field(n)
    pdff = np.repeat(np.asarray(STRIPE_PDFF), n // len(STRIPE_PDFF))[None, :].repeat(n, axis=0)
    rotation = np.exp(1j * phase)
    signal = multiecho_signal(
        (1 - pdff) * rotation, pdff * rotation, np.full(pdff.shape, 40.0), b0, te, spectrum, FREQUENCY_HZ
    )
    noise = rng.standard_normal(signal.shape) + 1j * rng.standard_normal(signal.shape)
    return signal + noise / snr, pdff


@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
def test_an_offset_fat_spectrum_is_calibrated_on_the_image(protocol):
    """Fat 0.1 ppm nearer water than the model's spectrum (SNR 20): the fit finds the offset (measured
    0.0992 and 0.0965 ppm) and its stripes' PDFF bias stays within 0.3 points (−0.06 to +0.12), where
    without the calibration it reaches 0.44 (6 echoes) and 1.41 points (10 echoes). Fat where the model
    puts it is left alone: the offset is exactly 0 and the maps are those of a fit without the search."""
    te = PROTOCOLS[protocol]
    off = FitOptions(fat_shift_search_ppm=0.0)
    signal, pdff = striped_image(te, ISMRM_6PEAK.shifted(0.1), 20.0, np.random.default_rng(1))
    maps = fit_fatwater(signal, te, FREQUENCY_HZ)
    assert maps.fat_shift_ppm == pytest.approx(0.1, abs=0.006)
    plain = fit_fatwater(signal, te, FREQUENCY_HZ, options=off)
    assert plain.fat_shift_ppm == 0.0
    bias = {p: 100 * np.mean(maps.pdff[pdff == p] - p) for p in STRIPE_PDFF}
    plain_bias = {p: 100 * np.mean(plain.pdff[pdff == p] - p) for p in STRIPE_PDFF}
    assert max(map(abs, bias.values())) < 0.3 and max(map(abs, plain_bias.values())) > 0.4, (bias, plain_bias)

    signal, _ = striped_image(te, ISMRM_6PEAK, 20.0, np.random.default_rng(1))
    maps = fit_fatwater(signal, te, FREQUENCY_HZ)
    assert maps.fat_shift_ppm == 0.0
    np.testing.assert_array_equal(maps.pdff, fit_fatwater(signal, te, FREQUENCY_HZ, options=off).pdff)


def test_r2star_of_tissue_that_hardly_decays_is_unbiased():
    """With R2* free to go below 0, noise carries it to either side of a true 0; a floor at 0 keeps the
    negative half and biases the mean up (here +2.4 to +4.6 s⁻¹ per stripe, −0.14 to +0.07 without it)."""
    te = PROTOCOLS["6-echo"]
    signal, _ = mosaic_image(te, 0.0, 20.0, np.random.default_rng(3))
    r2star = fit_fatwater(signal, te, FREQUENCY_HZ).r2star
    assert abs(r2star.mean()) < 0.3
    assert 0.4 < np.mean(r2star < 0) < 0.6
    floored = fit_fatwater(signal, te, FREQUENCY_HZ, options=FitOptions(r2star_min_s=0.0)).r2star
    assert floored.min() == 0.0
    assert floored.mean() > 2.0
    with pytest.raises(ValueError, match="r2star_min_s must be below r2star_max_s"):
        FitOptions(r2star_min_s=1500.0)


def test_dim_voxels_under_the_r2star_prior_stay_at_or_above_0():
    """The prior is on log(R2* + 10 s⁻¹): its voxels keep R2* ≥ 0 (and so finite maps) while bright tissue
    beside them goes below 0 by noise."""
    te = PROTOCOLS["6-echo"]
    signal, _ = mosaic_image(te, 0.0, 20.0, np.random.default_rng(4))
    dim = np.s_[:, : signal.shape[1] // 3]
    signal[dim] *= 0.1  # a tenth of the bright level: under the prior's gate (0.3)
    maps = fit_fatwater(signal, te, FREQUENCY_HZ)
    assert all(np.isfinite(values).all() for values in (maps.r2star, maps.pdff, maps.water))
    assert maps.r2star[dim].min() >= 0.0
    assert (maps.r2star[:, signal.shape[1] // 3 :] < 0).mean() > 0.4


def test_monte_carlo_against_cramer_rao_bound():
    """|bias| < 0.5 PDFF points and < 2 s⁻¹, SD within 1.25× the bound, no swaps on a smooth field.

    Swaps are asserted in every cell; bias and SD wherever the fast-decay alias is separable
    (:func:`decay_alias_separation` ≥ 9 noise variances, three noise SDs): all cells but the 10-echo
    protocol's at R2* 300 s⁻¹ at SNR 20 and at PDFF 50–80 % at SNR 50, which are printed (at SNR 50 they
    meet the limits in this noise draw, R2* SD 1.24 and 1.23× the bound, but not in others: 1.22–1.45×
    over six). At SNR 20 even an oracle given the true field and R2* misses the PDFF bias limit of magnitude
    discrimination at PDFF 0, 5, 20 and 100 %
    (:func:`test_pdff_bias_limit_is_out_of_reach_at_10_echoes_r2star_300_snr_20`), and at 50 and 80 % no
    estimator of R2* unbiased up to 1000 s⁻¹ meets the SD limit
    (:func:`test_r2star_sd_limit_is_out_of_reach_at_10_echoes_r2star_300_snr_20_pdff_50_80`); at SNR 50
    the fit is at the likelihood optimum
    (:func:`test_fit_is_at_the_likelihood_optimum_where_its_sd_exceeds_the_bound`).
    """
    rng = np.random.default_rng(2026)
    rows, failures = [], []
    width = STRIPE[1]
    for protocol, snr, r2 in MONTE_CARLO_CELLS:
        te = PROTOCOLS[protocol]
        period = 1 / (te[1] - te[0])
        # A voxel is swapped when its field is nearer a water–fat alias than the truth.
        alias_hz = abs(ISMRM_6PEAK.frequencies_hz(FREQUENCY_HZ)[np.argmax(ISMRM_6PEAK.amplitudes)])
        signal, b0 = mosaic_image(te, r2, snr, rng)
        maps = fit_fatwater(signal, te, FREQUENCY_HZ)
        for index, pdff in enumerate(PDFF_VALUES):
            stripe = np.s_[:, index * width : (index + 1) * width]
            estimate = fat_fraction(maps.water[stripe], maps.fat[stripe], clip=False)
            r2star = maps.r2star[stripe]
            bound = crlb(te, FREQUENCY_HZ, ISMRM_6PEAK, pdff, r2, snr=snr, model="complex")
            separation = decay_alias_separation(te, pdff, r2, snr)
            field_error = wrapped_error(maps.b0[stripe], b0[stripe], period)
            swaps = float(np.mean(np.abs(field_error) > alias_hz / 2))
            row = {
                "bias_pp": 100 * float(np.mean(estimate) - pdff),
                "sd_ratio": 100 * float(np.std(estimate)) / float(bound.sd_pdff_pp),
                "r2_bias": float(np.mean(r2star) - r2),
                "r2_sd_ratio": float(np.std(r2star)) / float(bound.sd_r2star_per_s),
            }
            statistics_ok = (
                abs(row["bias_pp"]) < 0.5
                and abs(row["r2_bias"]) < 2.0
                and row["sd_ratio"] < 1.25
                and row["r2_sd_ratio"] < 1.25
            )
            checked = separation >= MIN_DECAY_ALIAS_SEPARATION
            failed = (checked and not statistics_ok) or swaps > 0
            verdict = "FAIL" if failed else "ok" if statistics_ok and swaps == 0 else "not asserted"
            rows.append(
                f"{protocol:>7} SNR {snr:3.0f} R2* {r2:4.0f} PDFF {100 * pdff:5.1f}%  "
                f"bias {row['bias_pp']:+6.2f} pp  SD/CRLB {row['sd_ratio']:5.2f}  "
                f"R2* bias {row['r2_bias']:+7.2f} s⁻¹  SD/CRLB {row['r2_sd_ratio']:5.2f}  "
                f"swaps {swaps:5.3f}  alias {separation:7.1f}  {verdict}"
            )
            if failed:
                failures.append(rows[-1])
    print(f"\nMonte Carlo, ISMRM 6-peak, smooth B0 ±200 Hz, {STRIPE[0] * STRIPE[1]} voxels per cell")
    print("\n".join(rows))
    assert not failures, "\n".join(failures)
