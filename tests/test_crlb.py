"""Cramér–Rao bound of the fat–water model: FATWATER.md table, Jacobian, linear case, Monte Carlo."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import least_squares

from cohortscale.backend import gpu_available
from cohortscale.ops.crlb import PARAMETERS, crlb, signal_jacobian
from cohortscale.ops.fatwater import ISMRM_6PEAK, NDB_9PEAK, fat_phasor, multiecho_signal

GAMMA_BAR_HZ_PER_T = 42.577478e6
F0_1P5T = 1.5 * GAMMA_BAR_HZ_PER_T  # 63.866 MHz
TE_6 = 1.2e-3 + 2.0e-3 * np.arange(6)  # 6 echoes, TE1 1.2 ms, ΔTE 2.0 ms
TE_10 = 2.38e-3 * np.arange(1, 11)  # 10 echoes, TE 2.38 ms × n
TABLE_PDFF = np.array([0.02, 0.05, 0.20, 0.50])

# FATWATER.md: SD at SNR 1, ISMRM 6-peak, common phase. (echoes, R2* s⁻¹, SD(PDFF) pp, SD(R2*) at 5 %).
FATWATER_TABLE = [
    (TE_6, 30.0, (66, 64, 55, 42), 154),
    (TE_6, 100.0, (90, 88, 76, 60), 241),
    (TE_6, 300.0, (203, 197, 168, 135), 820),
    (TE_10, 30.0, (64, 62, 52, 37), 74),
]
TABLE_REL = 0.02  # the table is rounded to integers (worst case 37 ± 0.5, 1.4 %)


@pytest.mark.parametrize(("te", "r2star", "sd_pdff_pp", "sd_r2star"), FATWATER_TABLE)
def test_reproduces_fatwater_table(te, r2star, sd_pdff_pp, sd_r2star) -> None:
    bound = crlb(te, F0_1P5T, ISMRM_6PEAK, TABLE_PDFF, r2star)
    np.testing.assert_allclose(bound.sd_pdff_pp, sd_pdff_pp, rtol=TABLE_REL)
    np.testing.assert_allclose(bound.sd_pdff_fraction, np.array(sd_pdff_pp) / 100, rtol=TABLE_REL)
    assert bound.sd_r2star_per_s[1] == pytest.approx(sd_r2star, rel=TABLE_REL)


def test_table_example_and_snr_scaling() -> None:
    # FATWATER.md: SNR 40, R2* 30 s⁻¹, PDFF 5 % → ≈ 1.6 pp and ≈ 3.9 s⁻¹.
    bound = crlb(TE_6, F0_1P5T, ISMRM_6PEAK, 0.05, 30.0, snr=40.0)
    assert bound.sd_pdff_pp == pytest.approx(1.6, abs=0.05)
    assert bound.sd_r2star_per_s == pytest.approx(3.9, abs=0.1)
    unit = crlb(TE_6, F0_1P5T, ISMRM_6PEAK, 0.05, 30.0)
    assert unit.sd_field_map_hz == pytest.approx(40.0 * bound.sd_field_map_hz, rel=1e-9)
    np.testing.assert_allclose(unit.fisher, bound.fisher / 40.0**2, rtol=1e-12)


def test_broadcasting_and_field_map_invariance() -> None:
    pdff, r2star = np.array([0.0, 0.1, 0.5, 1.0]), np.array([[20.0], [200.0]])
    bound = crlb(TE_6, F0_1P5T, NDB_9PEAK, pdff, r2star, field_map_hz=0.0)
    shifted = crlb(TE_6, F0_1P5T, NDB_9PEAK, pdff, r2star, field_map_hz=137.0)
    assert bound.sd_pdff_fraction.shape == bound.sd_r2star_per_s.shape == (2, 4)
    assert bound.fisher.shape == (2, 4, 5, 5)
    # ψ is a per-echo phase factor common to every Jacobian column: it cancels in JᴴJ.
    np.testing.assert_allclose(shifted.fisher, bound.fisher, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(shifted.sd_pdff_fraction, bound.sd_pdff_fraction, rtol=1e-10)
    np.testing.assert_allclose(bound.sd("r2star"), bound.sd_r2star_per_s)
    assert np.all(np.isfinite(bound.sd_pdff_fraction)) and np.all(bound.sd_pdff_fraction > 0)


def test_complex_model_bounds() -> None:
    common = crlb(TE_6, F0_1P5T, ISMRM_6PEAK, TABLE_PDFF, 50.0)
    independent = crlb(TE_6, F0_1P5T, ISMRM_6PEAK, TABLE_PDFF, 50.0, model="complex")
    assert independent.parameters == PARAMETERS["complex"]
    # One more unknown (the water–fat phase difference) cannot tighten any bound...
    assert np.all(independent.sd_r2star_per_s > common.sd_r2star_per_s)
    assert np.all(independent.sd_field_map_hz > common.sd_field_map_hz)
    # ...and, numerically, leaves the PDFF bound unchanged (also seen in the Monte Carlo below).
    np.testing.assert_allclose(independent.sd_pdff_fraction, common.sd_pdff_fraction, rtol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not gpu_available(), reason="needs CuPy and a CUDA GPU")
@pytest.mark.parametrize("model", ["common_phase", "complex"])
def test_cupy_bounds_equal_numpy(model: str) -> None:
    """The fit computes each voxel's bound (IMPRECISE) where its maps are: on the GPU for CuPy arrays."""
    import cupy

    pdff, r2star = np.meshgrid(np.linspace(0, 1, 11), np.linspace(0, 400, 9))
    cpu = crlb(TE_6, F0_1P5T, ISMRM_6PEAK, pdff, r2star, snr=20.0, model=model)
    gpu = crlb(TE_6, F0_1P5T, ISMRM_6PEAK, cupy.asarray(pdff), cupy.asarray(r2star), snr=20.0, model=model)
    assert isinstance(gpu.sd_pdff_fraction, cupy.ndarray)
    for name in ("sd_pdff_fraction", "sd_r2star_per_s", "sd_field_map_hz"):
        np.testing.assert_allclose(cupy.asnumpy(getattr(gpu, name)), getattr(cpu, name), rtol=1e-9)
    np.testing.assert_allclose(cupy.asnumpy(gpu.sd("r2star")), cpu.sd("r2star"), rtol=1e-9)


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="fraction"):
        crlb(TE_6, F0_1P5T, ISMRM_6PEAK, 5.0, 30.0)
    with pytest.raises(ValueError, match="model"):
        crlb(TE_6, F0_1P5T, ISMRM_6PEAK, 0.05, 30.0, model="magnitude")


def _model_signal(theta: np.ndarray, model: str, te: np.ndarray) -> np.ndarray:
    """Signal of one voxel from its parameter vector, through ``multiecho_signal``."""
    if model == "common_phase":
        water_amp, fat_amp, phase, field_map, r2star = theta
        water, fat = water_amp * np.exp(1j * phase), fat_amp * np.exp(1j * phase)
    else:
        water_re, water_im, fat_re, fat_im, field_map, r2star = theta
        water, fat = water_re + 1j * water_im, fat_re + 1j * fat_im
    return multiecho_signal(
        np.asarray(water), np.asarray(fat), np.asarray(r2star), np.asarray(field_map), te, NDB_9PEAK, F0_1P5T
    )


@pytest.mark.parametrize("model", ["common_phase", "complex"])
def test_jacobian_matches_finite_differences(model: str) -> None:
    water, fat, r2star, field_map = 0.7, 0.3, 80.0, -35.0
    jac = signal_jacobian(TE_6, F0_1P5T, NDB_9PEAK, water, fat, r2star, field_map, model=model)
    if model == "common_phase":
        theta = np.array([water, fat, 0.0, field_map, r2star])
    else:
        theta = np.array([water, 0.0, fat, 0.0, field_map, r2star])
    step = 1e-6 * np.maximum(np.abs(theta), 1.0)
    for k in range(theta.size):
        up, down = theta.copy(), theta.copy()
        up[k] += step[k]
        down[k] -= step[k]
        numeric = (_model_signal(up, model, TE_6) - _model_signal(down, model, TE_6)) / (2 * step[k])
        np.testing.assert_allclose(jac[:, k], numeric, rtol=1e-6, atol=1e-9 * np.abs(numeric).max())


def test_linear_case_equals_least_squares_covariance() -> None:
    """ψ and R2* known: W, F enter linearly, s = A·(W, F), and Cov = σ²·(AᴴA)⁻¹ per real channel."""
    pdff, r2star, field_map, snr = 0.3, 60.0, 25.0, 20.0
    sigma2 = 1.0 / snr**2
    decay = np.exp((-r2star + 2j * np.pi * field_map) * TE_6)
    design = np.stack([decay, fat_phasor(TE_6, ISMRM_6PEAK, F0_1P5T) * decay], axis=1)
    gram_inv = np.linalg.inv(design.conj().T @ design)  # complex 2 × 2
    # Proper complex noise E[nnᴴ] = 2σ²I: Cov(Re xⱼ, Re xₖ) = Cov(Im, Im) = σ² Re Mⱼₖ,
    # Cov(Re xⱼ, Im xₖ) = −σ² Im Mⱼₖ, with M = (AᴴA)⁻¹; order (W re, W im, F re, F im).
    real_rep = np.block([[gram_inv.real, -gram_inv.imag], [gram_inv.imag, gram_inv.real]])
    order = [0, 2, 1, 3]
    expected = sigma2 * real_rep[np.ix_(order, order)]
    bound = crlb(TE_6, F0_1P5T, ISMRM_6PEAK, pdff, r2star, field_map_hz=field_map, snr=snr, model="complex")
    atol = 1e-12 * sigma2  # exact zeros in the expected matrix come out as round-off
    np.testing.assert_allclose(np.linalg.inv(bound.fisher[:4, :4]), expected, rtol=1e-9, atol=atol)
    # Common phase with φ known too: real amplitudes only, Cov = σ²·(Re AᴴA)⁻¹.
    common = crlb(TE_6, F0_1P5T, ISMRM_6PEAK, pdff, r2star, field_map_hz=field_map, snr=snr)
    expected_real = sigma2 * np.linalg.inv((design.conj().T @ design).real)
    np.testing.assert_allclose(np.linalg.inv(common.fisher[:2, :2]), expected_real, rtol=1e-9, atol=atol)


MC_DRAWS = 300
MC_SNR = 150.0
MC_REL = 0.15  # sampling error of an SD from 300 draws is ≈ 4 %


@pytest.mark.parametrize("model", ["common_phase", "complex"])
def test_monte_carlo_fit_reaches_bound(model: str) -> None:
    """Independent per-voxel nonlinear least squares at high SNR has the SDs the bound predicts."""
    pdff, r2star, field_map = 0.2, 50.0, 20.0
    truth = _true_theta(pdff, r2star, field_map, model)
    clean = _model_signal(truth, model, TE_6)
    rng = np.random.default_rng(2012)
    sigma = 1.0 / MC_SNR  # per real/imaginary channel, total proton density 1
    estimates = []
    for _ in range(MC_DRAWS):
        noisy = clean + sigma * (rng.standard_normal(TE_6.size) + 1j * rng.standard_normal(TE_6.size))

        def residual(theta: np.ndarray, noisy: np.ndarray = noisy) -> np.ndarray:
            diff = _model_signal(theta, model, TE_6) - noisy
            return np.concatenate([diff.real, diff.imag])

        fit = least_squares(residual, truth, x_scale=np.abs(truth) + 1.0, xtol=1e-12, ftol=1e-12)
        estimates.append(fit.x)
    est = np.array(estimates)
    if model == "common_phase":
        fitted_pdff = est[:, 1] / (est[:, 0] + est[:, 1])
    else:
        water, fat = np.abs(est[:, 0] + 1j * est[:, 1]), np.abs(est[:, 2] + 1j * est[:, 3])
        fitted_pdff = fat / (water + fat)
    bound = crlb(TE_6, F0_1P5T, NDB_9PEAK, pdff, r2star, field_map_hz=field_map, snr=MC_SNR, model=model)
    assert np.std(fitted_pdff, ddof=1) == pytest.approx(bound.sd_pdff_fraction, rel=MC_REL)
    assert np.std(est[:, -1], ddof=1) == pytest.approx(bound.sd_r2star_per_s, rel=MC_REL)
    assert np.std(est[:, -2], ddof=1) == pytest.approx(bound.sd_field_map_hz, rel=MC_REL)
    assert np.mean(fitted_pdff) == pytest.approx(pdff, abs=0.5 * bound.sd_pdff_fraction)


def _true_theta(pdff: float, r2star: float, field_map: float, model: str) -> np.ndarray:
    if model == "common_phase":
        return np.array([1.0 - pdff, pdff, 0.0, field_map, r2star])
    return np.array([1.0 - pdff, 0.0, pdff, 0.0, field_map, r2star])
