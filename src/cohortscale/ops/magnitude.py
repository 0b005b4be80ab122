"""Magnitude-only fat–water fitting with a Rician noise floor, for series without usable phase.

Model of the magnitude at echo time ``t`` (``shared/FATWATER.md``, with the phase discarded)::

    A(t) = |ρ_w + ρ_f · c(t)| · exp(−R2* t),        c(t) = Σ_p a_p exp(i 2π f_p t)

with ``ρ_w, ρ_f ≥ 0`` real. Magnitude images of complex data with Gaussian noise of standard deviation
``σ`` per real channel are Rician, so the fit matches the data to the *expected* magnitude::

    E[M] = σ √(π/2) · L_{1/2}(−A²/2σ²)

which tends to ``A`` well above the noise and to the Rayleigh mean ``σ √(π/2)`` at ``A = 0``: late echoes
of fast-decaying tissue sit on this floor, and a plain ``|·|`` model reads the floor as slow decay
(R2* biased low).

The fit, for all voxels at once (voxels are independent; no spatial regularisation):

1. ``σ`` as given, or estimated (:func:`noise_sigma_residual` or :func:`noise_sigma_background`);
2. in each of two half-ranges of the fat fraction, water-dominant ``η = ρ_f/(ρ_w+ρ_f) ∈ [0, ½]`` and
   fat-dominant ``η ∈ [½, 1]``: a grid search over (η, R2*) with ``ρ = ρ_w + ρ_f`` projected out, then
   batched, bound-constrained Levenberg–Marquardt on ``(ρ, η, R2*)``;
3. the half with the lower residual wins. Magnitude data cannot tell ``η`` from roughly ``1 − η`` (with a
   single-peak spectrum the two fit *exactly* equally; the multi-peak spectrum breaks the tie only
   weakly), so the difference of the two residuals in noise units (Δχ²) is returned as an ambiguity
   margin and voxels whose choice rests on a small margin are flagged ``FAT_WATER_AMBIGUOUS``. With few
   echoes, low SNR or high R2* the choice can be wrong; a caller with spatial context (neighbours, a
   complex fit of the same tissue) can use ``pdff_alternative`` to correct it.

Runs on NumPy or CuPy arrays (the backend of ``magnitude``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from cohortscale.backend import array_module, to_numpy
from cohortscale.ops.fatwater import ISMRM_6PEAK, FatSpectrum, fat_phasor, iron_from_r2star
from cohortscale.ops.ideal import (
    FatWaterMaps,
    Quality,
    check_echo_times,
    check_r2star_bounds,
    flag_where,
    quality_flags,
)

#: ``√(π/2)``: the Rayleigh mean is ``σ √(π/2)``.
SQRT_HALF_PI = math.sqrt(math.pi / 2)

#: Number of fitted parameters per voxel (ρ, η, R2*), the degrees of freedom the residual loses.
N_PARAMETERS = 3

#: Bounds of the Levenberg–Marquardt damping (relative to the diagonal of JᵀJ): below it the step is pure
#: Gauss–Newton, above it the voxel has stalled and further growth only costs overflow.
MIN_DAMPING = 1e-12
MAX_DAMPING = 1e12

#: Floor of the diagonal scaling, relative to the mean diagonal of JᵀJ, so that a parameter with no
#: influence (η and R2* at ρ = 0) still gets a finite, damped step.
DIAGONAL_FLOOR = 1e-12

#: Relative residual ‖M − E[M]‖/‖M‖ of an exact fit: float64 round-off of the model is ~1e-15, so a voxel
#: below this has converged whatever its last step did.
RESIDUAL_FLOOR = 1e-12


@dataclass(frozen=True)
class MagnitudeOptions:
    """Settings of :func:`fit_magnitude`.

    Attributes
    ----------
    iterations : int
        Levenberg–Marquardt iterations per half-range.
    initial_damping : float
        Starting damping, relative to the diagonal of JᵀJ (Marquardt scaling).
    damping_decrease, damping_increase : float
        Factors applied to the damping after an accepted and a rejected step.
    cost_tolerance : float
        A voxel has converged when an accepted step lowers its residual by less than this fraction.
    fraction_grid_points : int
        Fat-fraction values per half-range in the starting grid search.
    starts_per_half : int
        Levenberg–Marquardt starts per half-range, from the best grid point in each of as many runs of
        fat-fraction values (the magnitude model has kinks that a single start may not cross).
    r2star_grid_step_s, r2star_grid_ratio : float
        Spacing of the R2* values of the starting grid search (:func:`r2star_grid`): this step (s⁻¹) at
        low R2*, this ratio between neighbours at high R2*.
    r2star_min_s, r2star_max_s : float
        Bounds of R2*, s⁻¹ (iron-overloaded liver reaches ~1000 s⁻¹). The floor stays at 0 here, unlike the
        complex fit's: magnitudes carry no phase, and R2* ≥ 0 is what keeps the fat-dominant alias of
        slowly decaying water from fitting as well as the truth. Measured at 6 echoes, SNR 20, R2* 0, 3,000
        voxels: water side right in 100 % at PDFF 0–20 % with the floor at 0 against 80–90 % with it at
        −100 s⁻¹. What the floor costs is the mean R2* of such tissue (+2.1 to +3.0 s⁻¹ there); its
        median, the statistic magnitude maps are read by, stays at 0.
    noise_estimate : {"residual", "background"}
        How σ is estimated when ``noise_sigma`` is None: from the fit residual of bright voxels
        (:func:`noise_sigma_residual`; needs ≥ 4 echoes) or from the noise-only background
        (:func:`noise_sigma_background`; needs air in the image).
    noise_sample_voxels : int
        Bright voxels (at most) fitted for the residual estimate of σ.
    noise_min_snr : float
        For the residual estimate, only voxels whose fitted magnitude stays above this multiple of σ at
        every echo count (there the magnitude noise is Gaussian with SD σ).
    noise_min_voxels : int
        Fewest such voxels for the SNR selection; with fewer, all sampled bright voxels are used.
    noise_refinements : int
        Rounds of re-selecting voxels by SNR with the latest σ.
    background_quantile : float
        Voxels below this quantile of the background's echo-energy distribution (at the σ of the
        histogram peak) enter the truncated fit of σ (:func:`noise_sigma_background`).
    histogram_bins : int
        Bins of the histogram of log echo energy in which the background estimate looks for its peak.
    background_peak_fraction : float
        The background peak is the lowest local maximum of that histogram at least this share of the
        tallest bin (smaller would let count noise in the sparse low tail pass for a peak).
    ambiguity_delta_chi2 : float
        Voxels whose two solutions differ in residual by less than this many noise variances (Δχ²) are
        flagged ``FAT_WATER_AMBIGUOUS``; the likelihood ratio of the two is ``exp(Δχ²/2)``.
    ambiguity_min_pdff : float
        ... but only where the two solutions' PDFF differ by more than this (near PDFF ½ they coincide).
    low_signal_fraction : float
        Voxels whose magnitude norm is below this share of the 99th percentile are flagged ``LOW_SIGNAL``.
    max_relative_residual : float
        Relative residual ‖M − E[M]‖/‖M‖ above which a voxel is flagged ``HIGH_RESIDUAL``.
    chunk_voxels : int
        Voxels fitted together: bounds the temporaries, of which the largest are the starting grid's
        (voxel, fat fraction, R2*) arrays, ~120 MB each at the default.
    """

    iterations: int = 100
    initial_damping: float = 1e-3
    damping_decrease: float = 0.3
    damping_increase: float = 10.0
    cost_tolerance: float = 1e-10
    fraction_grid_points: int = 6
    starts_per_half: int = 2
    r2star_grid_step_s: float = 10.0
    r2star_grid_ratio: float = 1.1
    r2star_min_s: float = 0.0
    r2star_max_s: float = 1500.0
    noise_estimate: Literal["residual", "background"] = "residual"
    noise_sample_voxels: int = 20000
    noise_min_snr: float = 5.0
    noise_min_voxels: int = 50
    noise_refinements: int = 2
    background_quantile: float = 0.99
    histogram_bins: int = 256
    background_peak_fraction: float = 0.25
    ambiguity_delta_chi2: float = 6.0
    ambiguity_min_pdff: float = 0.1
    low_signal_fraction: float = 0.05
    max_relative_residual: float = 0.2
    chunk_voxels: int = 1 << 16

    def __post_init__(self) -> None:
        check_r2star_bounds(self.r2star_min_s, self.r2star_max_s)
        if self.iterations < 1 or not 1 <= self.starts_per_half <= self.fraction_grid_points:
            raise ValueError(
                "iterations must be ≥ 1 and starts_per_half 1 to fraction_grid_points, got "
                f"{self.iterations}, {self.starts_per_half} and {self.fraction_grid_points}"
            )
        if self.r2star_grid_step_s <= 0 or self.r2star_grid_ratio <= 1:
            raise ValueError(
                "r2star_grid_step_s must be > 0 and r2star_grid_ratio > 1, got "
                f"{self.r2star_grid_step_s} and {self.r2star_grid_ratio}"
            )


@dataclass(frozen=True)
class MagnitudeMaps(FatWaterMaps):
    """:class:`~cohortscale.ops.ideal.FatWaterMaps` of a magnitude fit, with the ambiguity information.

    ``water`` and ``fat`` are real amplitudes ``ρ_w``, ``ρ_f`` stored as complex64 with zero phase,
    ``pdff = ρ_f/(ρ_w + ρ_f)``, ``b0`` is NaN (magnitude data carry no field information), ``residual``
    is ‖M − E[M]‖/‖M‖ and ``quality`` holds :class:`~cohortscale.ops.ideal.Quality` flags.

    Attributes
    ----------
    pdff_alternative : ndarray, float32
        PDFF of the losing half-range (the other side of the water–fat ambiguity), 0–1.
    ambiguity_margin : ndarray, float32
        Residual of the losing solution minus that of the winner, in noise variances (Δχ² ≥ 0).
    noise_sigma : float
        σ per real channel of the noise floor, signal units (the median where a map was given; 0: floor
        off).
    """

    pdff_alternative: np.ndarray
    ambiguity_margin: np.ndarray
    noise_sigma: float


# --- the noise floor ----------------------------------------------------------------------------------------


def _special(xp: Any) -> Any:
    """``scipy.special`` or ``cupyx.scipy.special`` for the array module ``xp``."""
    if xp is np:
        import scipy.special

        return scipy.special
    import cupyx.scipy.special

    return cupyx.scipy.special


def rician_mean(amplitude: Any, sigma: Any) -> tuple[Any, Any]:
    """Expected magnitude of Rician data and its derivative with respect to the noiseless amplitude.

    ``E[M] = σ √(π/2) L_{1/2}(−x)``, ``x = A²/2σ²``, written with exponentially scaled Bessel functions,
    ``L_{1/2}(−x) = (1 + x) i0e(x/2) + x i1e(x/2)``, which neither overflows nor cancels for large ``x``
    (it tends to ``√(2x/π)``, so ``E[M] → A``). ``dE[M]/dA = √(π/2) (A/2σ) (i0e(x/2) + i1e(x/2))``.
    Where ``σ = 0`` there is no floor: ``E[M] = A``, derivative 1.

    Parameters
    ----------
    amplitude : ndarray
        Noiseless magnitude ``A ≥ 0`` (signal units).
    sigma : ndarray or float
        Noise standard deviation per real channel (signal units), broadcasting against ``amplitude``.

    Returns
    -------
    mean, derivative : ndarray
    """
    xp = array_module(amplitude)
    special = _special(xp)
    amplitude = xp.asarray(amplitude, dtype=xp.float64)
    sigma = xp.asarray(sigma, dtype=xp.float64)
    floor = sigma > 0
    safe_sigma = xp.where(floor, sigma, 1)
    ratio = amplitude / safe_sigma
    half_x = ratio**2 / 4
    i0, i1 = special.i0e(half_x), special.i1e(half_x)
    mean = safe_sigma * SQRT_HALF_PI * ((1 + 2 * half_x) * i0 + 2 * half_x * i1)
    derivative = SQRT_HALF_PI * ratio / 2 * (i0 + i1)
    return xp.where(floor, mean, amplitude), xp.where(floor, derivative, 1)


# --- model, grid start and Levenberg–Marquardt --------------------------------------------------------------


def _fat_factor(fraction: Any, phasor: Any) -> tuple[Any, Any]:
    """``m = |1 − η + η c(t)|`` and ``∂m/∂η`` for fat fractions ``η`` (..., 1) and the fat phasor (n,)."""
    xp = array_module(fraction)
    real = 1 - fraction + fraction * phasor.real
    imag = fraction * phasor.imag
    factor = xp.sqrt(real**2 + imag**2)
    # m vanishes only where c(t) is real and ≤ 0 at one η; the guard keeps that one echo's slope finite.
    safe = xp.where(factor > 0, factor, xp.finfo(factor.dtype).tiny)
    slope = (real * (phasor.real - 1) + imag * phasor.imag) / safe
    return factor, slope


def _model(params: Any, te: Any, phasor: Any, sigma: Any) -> tuple[Any, Any]:
    """Expected magnitude (V, n) and its Jacobian (V, n, 3) at ``params`` (V, 3) = (ρ, η, R2*).

    ``sigma`` is (V, 1), or None for the plain magnitude model (no floor).
    """
    xp = array_module(params)
    rho, fraction, r2star = params[:, 0:1], params[:, 1:2], params[:, 2:3]
    factor, slope = _fat_factor(fraction, phasor)
    decay = xp.exp(-r2star * te)
    amplitude = rho * factor * decay
    jacobian = xp.stack([factor * decay, rho * slope * decay, -te * amplitude], axis=-1)
    if sigma is None:
        return amplitude, jacobian
    mean, d_mean = rician_mean(amplitude, sigma)
    return mean, d_mean[..., None] * jacobian


def _solve_symmetric3(matrix: Any, rhs: Any) -> Any:
    """Solve ``matrix · x = rhs`` for a stack of symmetric positive-definite 3×3 systems (V, 3, 3), (V, 3).

    Closed form (adjugate over determinant) after Jacobi scaling, which equalises the very different
    scales of ρ, η and R2*; faster than a batched LAPACK call for 3×3 and the same on NumPy and CuPy.
    """
    xp = array_module(matrix)
    scale = 1 / xp.sqrt(xp.diagonal(matrix, axis1=1, axis2=2))
    m = matrix * scale[:, :, None] * scale[:, None, :]
    g = rhs * scale
    a, b, c = m[:, 0, 0], m[:, 0, 1], m[:, 0, 2]
    d, e, f = m[:, 1, 1], m[:, 1, 2], m[:, 2, 2]
    cof = [d * f - e * e, c * e - b * f, b * e - c * d, a * f - c * c, b * c - a * e, a * d - b * b]
    det = a * cof[0] + b * cof[1] + c * cof[2]
    det = xp.where(det > 0, det, xp.inf)  # not positive definite: no step (the voxel rejects it)
    x0 = cof[0] * g[:, 0] + cof[1] * g[:, 1] + cof[2] * g[:, 2]
    x1 = cof[1] * g[:, 0] + cof[3] * g[:, 1] + cof[4] * g[:, 2]
    x2 = cof[2] * g[:, 0] + cof[4] * g[:, 1] + cof[5] * g[:, 2]
    return xp.stack([x0, x1, x2], axis=1) / det[:, None] * scale


def _grid_starts(
    data: Any, te: Any, phasor: Any, fractions: Any, r2stars: Any, sigma: Any, n_starts: int
) -> Any:
    """Starting (ρ, η, R2*) from a grid over η × R2* with ρ projected out: the best grid point in each of
    ``n_starts`` consecutive runs of ``fractions``.

    Several starts per half-range because the magnitude model has kinks: where ``c(t)`` is nearly real and
    negative, one echo's ``|1 − η + η c(t)|`` touches zero at ``η ≈ 1/(1 − c)`` (≈ 0.6 for the ISMRM
    spectrum), and a start on the wrong side of it does not cross. The grid uses the plain magnitude model
    on power-corrected data ``√max(M² − 2σ², 0)`` (``E[M²] = A² + 2σ²``), which removes most of the floor
    at the cost of a little noise: good enough to start from.

    Returns
    -------
    ndarray, shape (n_starts, V, 3)
    """
    xp = array_module(data)
    corrected = data if sigma is None else xp.sqrt(xp.maximum(data**2 - 2 * sigma**2, 0))
    basis = _fat_factor(fractions[:, None, None], phasor)[0] * xp.exp(-r2stars[:, None] * te)  # (F, R, n)
    norms = (basis**2).sum(axis=2)
    projections = xp.einsum("vn,frn->vfr", corrected, basis)
    explained = projections**2 / norms  # max explained energy = min residual
    best_r2 = explained.argmax(axis=2)  # (V, F)
    explained = xp.take_along_axis(explained, best_r2[..., None], axis=2)[..., 0]
    voxels = xp.arange(data.shape[0])
    starts = []
    for run in np.array_split(np.arange(fractions.size), n_starts):
        f = int(run[0]) + explained[:, int(run[0]) : int(run[-1]) + 1].argmax(axis=1)
        r = best_r2[voxels, f]
        rho = projections[voxels, f, r] / norms[f, r]
        starts.append(xp.stack([rho, fractions[f], r2stars[r]], axis=1))
    return xp.stack(starts)


def _levenberg_marquardt(
    data: Any,
    te: Any,
    phasor: Any,
    sigma: Any,
    params: Any,
    lower: Any,
    upper: Any,
    options: MagnitudeOptions,
) -> tuple[Any, Any]:
    """Bound-constrained Levenberg–Marquardt on (ρ, η, R2*) for every voxel at once.

    Each voxel keeps its own damping and accepts a step only if it lowers its residual. A parameter on a
    bound whose gradient points outwards is held fixed for that step (an active set), so the others take
    the step that is optimal given the bound rather than one computed as if it could move. Converged
    voxels leave the working set, so the later iterations cost only what is still moving.

    Parameters
    ----------
    data : (V, n) magnitudes
    te : (n,) echo times, s
    phasor : (n,) fat phasor
    sigma : (V, 1) noise SD, or None for no floor
    params : (V, 3) start
    lower, upper : (3,) bounds
    options : MagnitudeOptions

    Returns
    -------
    params : (V, 3)
    cost : (V,) ‖M − E[M]‖²
    """
    xp = array_module(data)
    params = params.copy()
    model, jacobian = _model(params, te, phasor, sigma)
    cost = ((data - model) ** 2).sum(axis=1)
    # Residual of an exact fit, relative to the data norm, below which a voxel has nothing left to gain.
    exact = (RESIDUAL_FLOOR**2) * (data**2).sum(axis=1)
    damping = xp.full(data.shape[0], options.initial_damping, dtype=data.dtype)
    active = xp.nonzero(cost > exact)[0]
    for _ in range(options.iterations):
        if active.size == 0:
            break
        values, y, s = params[active], data[active], None if sigma is None else sigma[active]
        j, c, lam = jacobian[active], cost[active], damping[active]
        gradient = xp.einsum("vnk,vn->vk", j, y - model[active])  # descent direction, −½ ∇cost
        held = ((values <= lower) & (gradient < 0)) | ((values >= upper) & (gradient > 0))
        free = ~held
        normal = xp.matmul(j.transpose(0, 2, 1), j) * (free[:, :, None] & free[:, None, :])
        diagonal = xp.diagonal(normal, axis1=1, axis2=2)
        floor = DIAGONAL_FLOOR * diagonal.mean(axis=1, keepdims=True) + xp.finfo(data.dtype).tiny
        damped = (
            normal
            + xp.eye(N_PARAMETERS, dtype=data.dtype) * (lam[:, None] * (diagonal + floor) + held)[:, None, :]
        )
        trial = xp.clip(values + _solve_symmetric3(damped, gradient * free), lower, upper)
        trial_model, trial_jacobian = _model(trial, te, phasor, s)
        trial_cost = ((y - trial_model) ** 2).sum(axis=1)
        better = trial_cost < c
        accepted = active[better]
        params[accepted], model[accepted], jacobian[accepted] = (
            trial[better],
            trial_model[better],
            trial_jacobian[better],
        )
        cost[accepted] = trial_cost[better]
        lam = xp.clip(
            lam * xp.where(better, options.damping_decrease, options.damping_increase),
            MIN_DAMPING,
            MAX_DAMPING,
        )
        damping[active] = lam
        converged = (
            (better & (c - trial_cost <= options.cost_tolerance * c))
            | (cost[active] <= exact[active])
            | (lam >= MAX_DAMPING)
        )
        active = active[~converged]
    return params, cost


def r2star_grid(options: MagnitudeOptions) -> np.ndarray:
    """R2* values (s⁻¹) of the starting grid search: steps of ``r2star_grid_step_s`` while that is finer
    than the ratio ``r2star_grid_ratio``, then geometric, from ``r2star_min_s`` to ``r2star_max_s``.

    The residual valley narrows in absolute R2* as R2* grows but stays about constant in relative terms,
    and a start on the wrong side of a neighbouring fat–water minimum lands Levenberg–Marquardt there.
    """
    values = [options.r2star_min_s]
    while values[-1] < options.r2star_max_s:
        step = max(options.r2star_grid_step_s, values[-1] * (options.r2star_grid_ratio - 1))
        values.append(min(values[-1] + step, options.r2star_max_s))
    return np.asarray(values)


def _fit_halves(data: Any, te: Any, phasor: Any, sigma: Any, options: MagnitudeOptions) -> tuple[Any, Any]:
    """Fit every voxel in the water-dominant and the fat-dominant half-range of η.

    ``sigma`` is (V, 1), or None for no noise floor.

    Returns
    -------
    params : (2, V, 3) ρ, η, R2* per half
    cost : (2, V) ‖M − E[M]‖² per half
    """
    xp = array_module(data)
    r2_grid = xp.asarray(r2star_grid(options), dtype=data.dtype)
    n_starts, n_voxels = options.starts_per_half, data.shape[0]
    repeated = xp.concatenate([data] * n_starts)
    repeated_sigma = None if sigma is None else xp.concatenate([sigma] * n_starts)
    params, costs = [], []
    for low, high in ((0.0, 0.5), (0.5, 1.0)):
        fractions = xp.linspace(low, high, options.fraction_grid_points, dtype=data.dtype)
        starts = _grid_starts(data, te, phasor, fractions, r2_grid, sigma, n_starts)
        lower = xp.asarray([0.0, low, options.r2star_min_s], dtype=data.dtype)
        upper = xp.asarray([xp.inf, high, options.r2star_max_s], dtype=data.dtype)
        fitted, cost = _levenberg_marquardt(
            repeated, te, phasor, repeated_sigma, starts.reshape(-1, N_PARAMETERS), lower, upper, options
        )
        fitted, cost = fitted.reshape(n_starts, n_voxels, N_PARAMETERS), cost.reshape(n_starts, n_voxels)
        best = cost.argmin(axis=0)
        voxels = xp.arange(n_voxels)
        params.append(fitted[best, voxels])
        costs.append(cost[best, voxels])
    return xp.stack(params), xp.stack(costs)


def magnitude_crlb(
    echo_times_s: Any,
    imaging_frequency_hz: float,
    pdff: Any,
    r2star: Any,
    *,
    spectrum: FatSpectrum = ISMRM_6PEAK,
    snr: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Cramér–Rao bound of the magnitude model for PDFF and R2*, in the high-SNR (Gaussian) limit.

    Unknowns ``(ρ, η, R2*)`` with ``ρ = ρ_w + ρ_f = 1`` and noise SD ``1/snr`` on every echo's magnitude:
    the Fisher information is ``JᵀJ · snr²`` with ``J`` the Jacobian of ``A(t)``. Where echoes approach
    the noise floor the Rician magnitude carries less information than this, so there the bound is
    optimistic. It bounds the fit *given the right side* of the water–fat ambiguity (a local bound).

    Parameters
    ----------
    echo_times_s : array_like, shape (n,), s
    imaging_frequency_hz : float
    pdff, r2star : array_like
        Fat fraction (0–1) and R2* (s⁻¹), broadcasting against each other.
    spectrum : FatSpectrum
    snr : float
        ``ρ / σ``.

    Returns
    -------
    sd_pdff, sd_r2star : ndarray
        Standard deviations (fraction, s⁻¹) of an unbiased estimator, broadcast shape of the inputs.
    """
    te = np.asarray(echo_times_s, dtype=np.float64)
    phasor = fat_phasor(te, spectrum, imaging_frequency_hz)
    pdff, r2star = np.broadcast_arrays(np.asarray(pdff, dtype=np.float64), np.asarray(r2star, np.float64))
    params = np.stack([np.ones(pdff.size), pdff.ravel(), r2star.ravel()], axis=1)
    jacobian = _model(params, te, phasor, None)[1]
    inverse = np.linalg.inv(np.matmul(jacobian.transpose(0, 2, 1), jacobian)) / snr**2
    return (np.sqrt(inverse[:, 1, 1]).reshape(pdff.shape), np.sqrt(inverse[:, 2, 2]).reshape(pdff.shape))


# --- noise estimation ---------------------------------------------------------------------------------------


def _flatten(magnitude: Any) -> tuple[Any, Any]:
    """Module and (V, n) float64 view of magnitude data, checked to be real and non-negative."""
    xp = array_module(magnitude)
    magnitude = xp.asarray(magnitude)
    if xp.iscomplexobj(magnitude):
        raise ValueError("magnitude must be real; take the absolute value of complex data first")
    if magnitude.ndim < 1:
        raise ValueError("magnitude must have an echo axis (last)")
    flat = magnitude.reshape(-1, magnitude.shape[-1]).astype(xp.float64)
    if bool((flat < 0).any()):
        raise ValueError("magnitude must be non-negative")
    return xp, flat


def noise_sigma_residual(
    magnitude: Any,
    echo_times_s: Any,
    imaging_frequency_hz: float,
    *,
    spectrum: FatSpectrum = ISMRM_6PEAK,
    options: MagnitudeOptions | None = None,
) -> float:
    """σ per real channel from the fit residual of bright voxels.

    Where the magnitude stays well above the noise at every echo, Rician noise is Gaussian with SD σ, so
    the least-squares residual of the plain magnitude fit (no floor) is ``σ² χ²`` with ``n − 3`` degrees of
    freedom. Up to ``noise_sample_voxels`` voxels brighter than ``low_signal_fraction`` of the 99th
    percentile are fitted; σ² is the median residual over the chi-square median, recomputed
    ``noise_refinements`` times over the voxels whose fitted magnitude stays above ``noise_min_snr``·σ at
    every echo (fast-decaying voxels reach the floor and are left out). It needs such voxels (any tissue
    with R2* well below 1/TE_last at moderate SNR); without them it falls back on all bright voxels and
    runs low. Where both sides of the water–fat ambiguity fit about equally, the smaller residual is the
    one kept, which is χ²-biased low: with 6 echoes the estimate runs ~7 % low, with 10 echoes within
    ~2 % (measured at SNR 20–50 on synthetic tissue of PDFF 0–100 %, R2* 0–500 s⁻¹).

    Parameters
    ----------
    magnitude : ndarray, shape (..., echo)
    echo_times_s : array_like, shape (echo,), s
    imaging_frequency_hz : float
    spectrum : FatSpectrum
    options : MagnitudeOptions, optional

    Returns
    -------
    float
        σ, signal units.
    """
    from scipy.stats import chi2

    options = options or MagnitudeOptions()
    xp, flat = _flatten(magnitude)
    n_echo = flat.shape[1]
    if n_echo <= N_PARAMETERS:
        raise ValueError(f"{n_echo} echoes leave no residual to estimate σ from; pass noise_sigma")
    te = xp.asarray(echo_times_s, dtype=xp.float64)
    phasor = fat_phasor(te, spectrum, imaging_frequency_hz, xp=xp)
    norm = xp.sqrt((flat**2).sum(axis=1))
    bright = xp.nonzero(norm > options.low_signal_fraction * xp.percentile(norm, 99))[0]
    stride = max(1, -(-int(bright.size) // options.noise_sample_voxels))  # ceil: at most the sample size
    sample = flat[bright[::stride]]
    params, cost = _fit_halves(sample, te, phasor, None, options)
    winner = (cost[1] < cost[0]).astype(xp.int64)
    index = xp.arange(sample.shape[0])
    best_params, best_cost = params[winner, index], cost[winner, index]
    rho, fraction, r2star = best_params[:, 0:1], best_params[:, 1:2], best_params[:, 2:3]
    lowest = (rho * _fat_factor(fraction, phasor)[0] * xp.exp(-r2star * te)).min(axis=1)
    chi2_median = chi2.median(n_echo - N_PARAMETERS)
    sigma = math.sqrt(float(xp.median(best_cost)) / chi2_median)
    for _ in range(options.noise_refinements):
        gaussian = lowest >= options.noise_min_snr * sigma
        if int(gaussian.sum()) < options.noise_min_voxels:
            break
        sigma = math.sqrt(float(xp.median(best_cost[gaussian])) / chi2_median)
    return sigma


def noise_sigma_background(magnitude: Any, *, options: MagnitudeOptions | None = None) -> float:
    """σ per real channel from the background (air) of magnitude images.

    Outside the body each echo's magnitude is Rayleigh, so a voxel's echo energy ``E = Σ_t M_t²`` is
    ``2σ² · Gamma(n, 1)`` (chi-square with 2n degrees of freedom).
    Pooling the echoes per voxel keeps tissue apart from air even where it is dark at one echo (near
    opposed phase, or decayed at late echoes), which per-sample Rayleigh statistics would mistake for
    background. The lowest peak of the histogram of ``log E`` over voxels that reaches
    ``background_peak_fraction`` of the tallest (exact zeros are masked background and left out), where
    ``log(E/2σ²)`` peaks at ``log n``, gives σ₀; then σ is fitted to the voxels below the
    ``background_quantile`` of the background distribution at σ₀, by matching their mean energy to that of
    a Gamma distribution truncated there, where tissue contributes almost nothing. Needs a fair share of
    background (in tests, 20 % of the voxels sufficed and 10 % did not when the tissue formed one narrow
    peak); it assumes single-channel (or phase-sensitive combined) data, not a root-sum-of-squares coil
    combination, whose background is non-central chi.

    Parameters
    ----------
    magnitude : ndarray, shape (..., echo)
    options : MagnitudeOptions, optional

    Returns
    -------
    float
        σ, signal units.
    """
    from scipy.optimize import brentq
    from scipy.special import gammainc
    from scipy.stats import gamma

    options = options or MagnitudeOptions()
    xp, flat = _flatten(magnitude)
    n_echo = flat.shape[1]
    energy = (flat**2).sum(axis=1)
    energy = energy[energy > 0]
    if energy.size == 0:
        raise ValueError("no non-zero voxels to estimate the noise from")
    # On a log scale the background peak keeps its width (~1/√n) whatever σ, so its height counts the
    # background voxels; nothing but masked zeros lies below the noise, so it is the lowest tall peak.
    counts, edges = xp.histogram(xp.log(energy), bins=options.histogram_bins)
    counts, edges = to_numpy(counts), to_numpy(edges)
    padded = np.concatenate([[-1], counts, [-1]])
    local_max = (counts >= padded[:-2]) & (counts >= padded[2:])
    peak = int(np.argmax(local_max & (counts >= options.background_peak_fraction * counts.max())))
    # The log of a Gamma(n, 1) variable peaks at log n.
    sigma0 = math.sqrt(math.exp(float(edges[peak] + edges[peak + 1]) / 2) / (2 * n_echo))
    cutoff = 2 * sigma0**2 * float(gamma.ppf(options.background_quantile, n_echo))
    below = energy[energy < cutoff]
    mean_energy = float(below.mean())

    def truncated_mismatch(sigma: float) -> float:
        # E/2σ² is Gamma(n, 1); truncated at τ = T/2σ² its mean is n·P(n+1, τ)/P(n, τ) (P: regularised
        # lower incomplete gamma function).
        tau = cutoff / (2 * sigma**2)
        return 2 * sigma**2 * n_echo * gammainc(n_echo + 1, tau) / gammainc(n_echo, tau) - mean_energy

    return brentq(truncated_mismatch, sigma0 / 10, 10 * sigma0)


def estimate_noise_sigma(
    magnitude: Any,
    echo_times_s: Any,
    imaging_frequency_hz: float,
    *,
    spectrum: FatSpectrum = ISMRM_6PEAK,
    options: MagnitudeOptions | None = None,
) -> float:
    """σ by the method of ``options.noise_estimate`` (see :func:`noise_sigma_residual`,
    :func:`noise_sigma_background`)."""
    options = options or MagnitudeOptions()
    if options.noise_estimate == "background":
        return noise_sigma_background(magnitude, options=options)
    if options.noise_estimate == "residual":
        return noise_sigma_residual(
            magnitude, echo_times_s, imaging_frequency_hz, spectrum=spectrum, options=options
        )
    raise ValueError(f"unknown noise_estimate {options.noise_estimate!r}")


# --- the fit ------------------------------------------------------------------------------------------------


def fit_magnitude(
    magnitude: Any,
    echo_times_s: Any,
    imaging_frequency_hz: float,
    *,
    spectrum: FatSpectrum = ISMRM_6PEAK,
    noise_sigma: Any = None,
    options: MagnitudeOptions | None = None,
) -> MagnitudeMaps:
    """Fit water, fat and R2* to multi-echo magnitude images, voxel by voxel, with a Rician noise floor.

    Parameters
    ----------
    magnitude : ndarray, real, ≥ 0, shape (..., echo)
        Multi-echo magnitude images; every voxel is fitted independently.
    echo_times_s : array_like, shape (echo,)
        Echo times, s.
    imaging_frequency_hz : float
        Proton imaging frequency, Hz (DICOM ImagingFrequency × 10⁶).
    spectrum : FatSpectrum
        Fat spectrum of the model.
    noise_sigma : float or ndarray, optional
        Noise SD per real (and imaginary) channel, signal units: a scalar or a map broadcasting to
        ``magnitude.shape[:-1]``. None: estimated by ``options.noise_estimate``. 0: no noise floor (the
        plain ``|·|`` model; the ambiguity margin is then scaled by the residual estimate of σ where
        there are enough echoes, and is NaN otherwise). Voxels of a map with σ = 0 get no floor and an
        infinite margin.
    options : MagnitudeOptions, optional

    Returns
    -------
    MagnitudeMaps
        A :class:`~cohortscale.ops.ideal.FatWaterMaps` on the backend of ``magnitude``; ``b0`` is NaN.
    """
    options = options or MagnitudeOptions()
    xp, flat = _flatten(magnitude)
    shape = xp.asarray(magnitude).shape[:-1]
    te = xp.asarray(check_echo_times(echo_times_s, flat.shape[1]))
    phasor = fat_phasor(te, spectrum, imaging_frequency_hz, xp=xp)

    if noise_sigma is None:
        noise_sigma = estimate_noise_sigma(
            magnitude, te, imaging_frequency_hz, spectrum=spectrum, options=options
        )
    sigma = xp.broadcast_to(xp.asarray(noise_sigma, dtype=xp.float64), shape).reshape(-1)
    if bool((sigma < 0).any()):
        raise ValueError("noise_sigma must be non-negative")
    # The margin needs a noise scale even where the floor is switched off.
    scale = sigma
    floor = bool((sigma > 0).any())
    if not floor:
        scale = xp.full_like(
            sigma,
            noise_sigma_residual(magnitude, te, imaging_frequency_hz, spectrum=spectrum, options=options)
            if flat.shape[1] > N_PARAMETERS
            else xp.nan,
        )

    params = xp.empty((2, flat.shape[0], N_PARAMETERS), dtype=xp.float64)
    cost = xp.empty((2, flat.shape[0]), dtype=xp.float64)
    for start in range(0, flat.shape[0], options.chunk_voxels):
        block = slice(start, start + options.chunk_voxels)
        params[:, block], cost[:, block] = _fit_halves(
            flat[block], te, phasor, sigma[block, None] if floor else None, options
        )

    winner = (cost[1] < cost[0]).astype(xp.int64)
    index = xp.arange(flat.shape[0])
    best, best_cost = params[winner, index], cost[winner, index]
    alternative = params[1 - winner, index, 1]
    rho, fraction, r2star = best[:, 0], best[:, 1], best[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        margin = xp.abs(cost[1] - cost[0]) / scale**2
    norm = xp.sqrt((flat**2).sum(axis=1))
    relative = xp.sqrt(best_cost) / xp.where(norm > 0, norm, 1)
    quality = quality_flags(norm, r2star, relative, options)
    ambiguous = (margin < options.ambiguity_delta_chi2) & (
        xp.abs(alternative - fraction) > options.ambiguity_min_pdff
    )
    quality |= flag_where(ambiguous, Quality.FAT_WATER_AMBIGUOUS)
    maps = {
        "water": (rho * (1 - fraction)).astype(xp.complex64),
        "fat": (rho * fraction).astype(xp.complex64),
        "pdff": fraction.astype(xp.float32),
        "r2star": r2star.astype(xp.float32),
        "b0": xp.full(flat.shape[0], xp.nan, dtype=xp.float32),
        "iron": iron_from_r2star(r2star).astype(xp.float32),
        "residual": relative.astype(xp.float32),
        "quality": quality.astype(xp.uint8),
        "pdff_alternative": alternative.astype(xp.float32),
        "ambiguity_margin": margin.astype(xp.float32),
    }
    reshaped = {name: value.reshape(shape) for name, value in maps.items()}
    return MagnitudeMaps(
        **reshaped, fat_shift_ppm=0.0, noise_sigma=float(xp.median(sigma)) if sigma.size else 0.0
    )
