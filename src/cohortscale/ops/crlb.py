"""Cramér–Rao lower bounds for multi-echo fat–water fitting (``shared/FATWATER.md``).

The signal model of :mod:`cohortscale.ops.fatwater`::

    s(t) = (W + F · Σ_p a_p exp(i 2π f_p t)) · exp(i 2π ψ t) · exp(−R2* t)

observed at each echo with white complex Gaussian noise. Two parametrisations:

``"common_phase"``
    ``W = ρ_w e^{iφ}``, ``F = ρ_f e^{iφ}``; unknowns ``(ρ_w, ρ_f, φ, ψ, R2*)`` (the FATWATER.md table).
``"complex"``
    ``W`` and ``F`` each complex (independent phases); unknowns
    ``(Re W, Im W, Re F, Im F, ψ, R2*)``.

The bound is evaluated at ``ρ_w + ρ_f = 1`` with real, non-negative ``W`` and ``F`` (phase 0); it does not
depend on the common phase, nor on ψ (a per-echo phase factor that cancels in ``JᴴJ``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike

from cohortscale.backend import array_module
from cohortscale.ops.fatwater import FatSpectrum, fat_phasor

Model = Literal["common_phase", "complex"]

#: Parameter names, in the order of the Fisher matrix, per model. Amplitudes are in units of the total
#: proton density ρ_w + ρ_f; ``phase`` in rad, ``field_map`` (ψ) in Hz, ``r2star`` in s⁻¹.
PARAMETERS: dict[str, tuple[str, ...]] = {
    "common_phase": ("water", "fat", "phase", "field_map", "r2star"),
    "complex": ("water_re", "water_im", "fat_re", "fat_im", "field_map", "r2star"),
}

PERCENT = 100.0  # fraction → percentage points


@dataclass(frozen=True)
class CRLB:
    """Cramér–Rao bound of one protocol at a grid of (PDFF, R2*) values; arrays share the broadcast shape.

    Attributes
    ----------
    model : str
        ``"common_phase"`` or ``"complex"``.
    snr : float
        Total proton density over the noise SD of each real and imaginary channel, ``(ρ_w + ρ_f) / σ``.
    parameters : tuple of str
        Names of the unknowns, in the order of ``fisher`` and ``covariance`` (see :data:`PARAMETERS`).
    fisher : ndarray, shape (..., P, P)
        Fisher information at this SNR (amplitudes in units of ρ_w + ρ_f).
    covariance : ndarray, shape (..., P, P)
        Its inverse: the lower bound on the covariance of any unbiased estimator.
    sd_pdff_fraction : ndarray, shape (...)
        Bound on the SD of PDFF as a fraction (0–1); see :attr:`sd_pdff_pp` for percentage points.
    sd_r2star_per_s : ndarray, shape (...)
        Bound on the SD of R2*, s⁻¹.
    sd_field_map_hz : ndarray, shape (...)
        Bound on the SD of the off-resonance ψ (B0), Hz.
    """

    model: str
    snr: float
    parameters: tuple[str, ...]
    fisher: np.ndarray
    covariance: np.ndarray
    sd_pdff_fraction: np.ndarray
    sd_r2star_per_s: np.ndarray
    sd_field_map_hz: np.ndarray

    @property
    def sd_pdff_pp(self) -> np.ndarray:
        """Bound on the SD of PDFF in percentage points (the unit of the FATWATER.md table)."""
        return self.sd_pdff_fraction * PERCENT

    def sd(self, parameter: str) -> np.ndarray:
        """Bound on the SD of one of :attr:`parameters`, in that parameter's unit."""
        k = self.parameters.index(parameter)
        return array_module(self.covariance).sqrt(self.covariance[..., k, k])


def check_model(model: str) -> None:
    """Raise ValueError naming ``model`` unless it is one of :data:`PARAMETERS`' models."""
    if model not in PARAMETERS:
        raise ValueError(f"model must be one of {sorted(PARAMETERS)}, got {model!r}")


def signal_jacobian(
    echo_times_s: ArrayLike,
    imaging_frequency_hz: float,
    spectrum: FatSpectrum,
    water: ArrayLike,
    fat: ArrayLike,
    r2star_s: ArrayLike,
    field_map_hz: ArrayLike = 0.0,
    *,
    model: Model = "common_phase",
) -> np.ndarray:
    """Analytic derivatives of the complex signal with respect to the model's unknowns.

    Evaluated at real, non-negative water and fat amplitudes (phase 0).

    Parameters
    ----------
    echo_times_s : array_like, shape (n_echo,)
        Echo times, s.
    imaging_frequency_hz : float
        Proton imaging frequency, Hz.
    spectrum : FatSpectrum
    water, fat : array_like, real, broadcastable
        Water and fat amplitudes ρ_w, ρ_f (any unit; the Jacobian is linear in them).
    r2star_s : array_like, broadcastable
        R2*, s⁻¹.
    field_map_hz : array_like, broadcastable
        Off-resonance ψ, Hz.
    model : {"common_phase", "complex"}

    Returns
    -------
    ndarray, complex128, shape (..., n_echo, P)
        ``∂s(t_n)/∂θ_k`` with ``θ`` ordered as ``PARAMETERS[model]``, on the backend (NumPy or CuPy) of
        the amplitudes and R2*.
    """
    check_model(model)
    xp = array_module(water, fat, r2star_s, field_map_hz)
    te = xp.asarray(echo_times_s, dtype=xp.float64)
    water, fat, r2star_s, field_map_hz = (
        a[..., None]
        for a in xp.broadcast_arrays(
            *(xp.asarray(a, dtype=xp.float64) for a in (water, fat, r2star_s, field_map_hz))
        )
    )
    phasor = fat_phasor(te, spectrum, imaging_frequency_hz, xp=xp)
    decay = xp.exp((-r2star_s + 2j * xp.pi * field_map_hz) * te)
    signal = (water + fat * phasor) * decay
    d_field_map = 2j * xp.pi * te * signal
    d_r2star = -te * signal
    if model == "common_phase":
        columns = (decay, phasor * decay, 1j * signal, d_field_map, d_r2star)
    else:
        columns = (decay, 1j * decay, phasor * decay, 1j * phasor * decay, d_field_map, d_r2star)
    return xp.stack(xp.broadcast_arrays(*columns), axis=-1)


def _pdff_gradient(water: np.ndarray, fat: np.ndarray, model: str) -> np.ndarray:
    """∂PDFF/∂θ of PDFF = |F| / (|W| + |F|) at real, non-negative W and F, shape (..., P)."""
    xp = array_module(water)
    total2 = (water + fat) ** 2
    d_water, d_fat = -fat / total2, water / total2
    zero = xp.zeros_like(water)
    if model == "common_phase":
        parts = (d_water, d_fat, zero, zero, zero)
    else:
        # At phase 0, |W| and |F| move with the real parts only (∂|Z|/∂Im Z = Im Z / |Z| = 0); at F = 0 this
        # is the derivative along the positive real axis.
        parts = (d_water, zero, d_fat, zero, zero, zero)
    return xp.stack(parts, axis=-1)


def _inverse(fisher: np.ndarray) -> np.ndarray:
    """Inverse of a batch of symmetric positive-definite matrices, equilibrated first.

    The ψ and R2* entries are ~10⁻⁵ of the amplitude entries (t² scaling), so scale to a unit diagonal
    before inverting.
    """
    xp = array_module(fisher)
    scale = 1.0 / xp.sqrt(xp.diagonal(fisher, axis1=-2, axis2=-1))
    unit = fisher * scale[..., :, None] * scale[..., None, :]
    return xp.linalg.inv(unit) * scale[..., :, None] * scale[..., None, :]


def crlb(
    echo_times_s: ArrayLike,
    imaging_frequency_hz: float,
    spectrum: FatSpectrum,
    pdff: ArrayLike,
    r2star_s: ArrayLike,
    *,
    field_map_hz: ArrayLike = 0.0,
    snr: float = 1.0,
    model: Model = "common_phase",
) -> CRLB:
    """Cramér–Rao lower bound on per-voxel PDFF, R2* and B0 for a multi-echo protocol.

    SNR convention: ``snr = (ρ_w + ρ_f) / σ``, the total proton density (signal at t = 0 without decay or
    dephasing) over the noise standard deviation σ of *each* real and imaginary channel, i.e. complex
    noise of variance 2σ². The Fisher information is ``Re(JᴴJ) / σ²`` with ``J`` from
    :func:`signal_jacobian` at ``ρ_w + ρ_f = 1``, and every SD scales as ``1/snr``. This convention
    reproduces the FATWATER.md table (a noise SD per complex sample would give SDs larger by √2).

    PDFF is ``ρ_f / (ρ_w + ρ_f)`` (common phase) or ``|F| / (|W| + |F|)`` (complex, phases 0); its bound
    follows from the parameter covariance by the delta method, ``gᵀ C g`` with ``g = ∂PDFF/∂θ``.

    Parameters
    ----------
    echo_times_s : array_like, shape (n_echo,)
        Echo times, s.
    imaging_frequency_hz : float
        Proton imaging frequency, Hz (63.866 MHz at 1.5 T).
    spectrum : FatSpectrum
    pdff : array_like
        Proton-density fat fraction, 0–1; broadcast with ``r2star_s`` and ``field_map_hz``.
    r2star_s : array_like
        R2*, s⁻¹.
    field_map_hz : array_like, optional
        Off-resonance ψ, Hz (the bound does not depend on it).
    snr : float
        ``(ρ_w + ρ_f) / σ`` as above.
    model : {"common_phase", "complex"}
        Common phase for water and fat (unknowns ρ_w, ρ_f, φ, ψ, R2*), or independent complex W and F.

    Returns
    -------
    CRLB
        SD bounds with the broadcast shape of the inputs, plus the Fisher and covariance matrices, on the
        backend (NumPy or CuPy) of ``pdff`` and ``r2star_s``.
    """
    check_model(model)
    xp = array_module(pdff, r2star_s, field_map_hz)
    pdff = xp.asarray(pdff, dtype=xp.float64)
    if bool(xp.any((pdff < 0) | (pdff > 1))):
        raise ValueError("pdff must lie in [0, 1] (a fraction, not per cent)")
    if snr <= 0:
        raise ValueError(f"snr must be positive, not {snr}")
    water, fat = 1.0 - pdff, pdff  # amplitudes in units of the total proton density
    jac = signal_jacobian(
        echo_times_s, imaging_frequency_hz, spectrum, water, fat, r2star_s, field_map_hz, model=model
    )
    noise_var = 1.0 / snr**2  # σ² per real/imaginary channel
    fisher = xp.einsum("...np,...nq->...pq", jac.conj(), jac).real / noise_var
    covariance = _inverse(fisher)
    shape = fisher.shape[:-2]
    grad = _pdff_gradient(xp.broadcast_to(water, shape), xp.broadcast_to(fat, shape), model)
    var_pdff = xp.einsum("...p,...pq,...q->...", grad, covariance, grad)
    names = PARAMETERS[model]
    diag = xp.diagonal(covariance, axis1=-2, axis2=-1)
    return CRLB(
        model=model,
        snr=float(snr),
        parameters=names,
        fisher=fisher,
        covariance=covariance,
        sd_pdff_fraction=xp.sqrt(var_pdff),
        sd_r2star_per_s=xp.sqrt(diag[..., names.index("r2star")]),
        sd_field_map_hz=xp.sqrt(diag[..., names.index("field_map")]),
    )
