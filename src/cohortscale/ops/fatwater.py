"""Fat spectra and the multi-echo gradient-echo signal model (``shared/FATWATER.md``).

Signal at echo time ``t``::

    s(t) = (W + F · Σ_p a_p exp(i 2π f_p t)) · exp(i 2π ψ t) · exp(−R2* t)

with ``f_p`` the fat peak offsets from water in Hz (negative for methylene), ``ψ`` the off-resonance
(Hz) and ``R2*`` in s⁻¹. Kernels take arrays of one array module and broadcast the echo axis last.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from cohortscale.backend import array_module


@dataclass(frozen=True)
class FatSpectrum:
    """A multi-peak fat spectrum.

    Attributes
    ----------
    name : str
    shifts_ppm : tuple of float
        Peak positions relative to water, ppm (negative: upfield of water).
    amplitudes : tuple of float
        Relative peak areas, summing to 1.
    """

    name: str
    shifts_ppm: tuple[float, ...]
    amplitudes: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.shifts_ppm) != len(self.amplitudes):
            raise ValueError(f"{self.name}: shifts and amplitudes differ in length")
        if abs(sum(self.amplitudes) - 1.0) > 2e-3:
            raise ValueError(f"{self.name}: amplitudes sum to {sum(self.amplitudes)}, not 1")

    def frequencies_hz(self, imaging_frequency_hz: float) -> np.ndarray:
        """Peak offsets from water in Hz at the given proton imaging frequency (Hz)."""
        return np.asarray(self.shifts_ppm) * imaging_frequency_hz * 1e-6


ISMRM_6PEAK = FatSpectrum(
    "ismrm6",
    (-3.80, -3.40, -2.60, -1.94, -0.39, 0.60),
    (0.087, 0.693, 0.128, 0.004, 0.039, 0.048),
)
"""The ISMRM fat–water toolbox / 2012 challenge spectrum."""

_NINE_PEAK_SHIFTS = (-3.80, -3.40, -3.10, -2.68, -2.46, -1.95, -0.50, 0.49, 0.59)

HAMILTON_LIVER_9PEAK = FatSpectrum(
    "hamilton_liver9",
    _NINE_PEAK_SHIFTS,
    (0.088, 0.642, 0.058, 0.062, 0.058, 0.006, 0.039, 0.010, 0.037),
)
"""Hamilton et al. 2011 human liver fat, 9 peaks."""

REN_MARROW_9PEAK = FatSpectrum(
    "ren_marrow9",
    _NINE_PEAK_SHIFTS,
    (0.0899, 0.5834, 0.0599, 0.0849, 0.0599, 0.0150, 0.0400, 0.0100, 0.0569),
)
"""Ren et al. 2008 bone-marrow / subcutaneous fat, 9 peaks."""

SPECTRA: dict[str, FatSpectrum] = {s.name: s for s in (ISMRM_6PEAK, HAMILTON_LIVER_9PEAK, REN_MARROW_9PEAK)}


def fat_phasor(
    echo_times_s: ArrayLike, spectrum: FatSpectrum, imaging_frequency_hz: float, xp=None
) -> np.ndarray:
    """Complex fat signal relative to water at each echo, ``Σ_p a_p exp(i 2π f_p t)``.

    Parameters
    ----------
    echo_times_s : array_like, shape (n_echo,)
        Echo times, s.
    spectrum : FatSpectrum
    imaging_frequency_hz : float
        Proton imaging frequency, Hz (DICOM ImagingFrequency × 10⁶).
    xp : array module, optional
        ``numpy`` or ``cupy``; inferred from ``echo_times_s`` when omitted.

    Returns
    -------
    ndarray, complex, shape (n_echo,)
    """
    xp = xp or array_module(echo_times_s)
    te = xp.asarray(echo_times_s, dtype=xp.float64)
    freqs = xp.asarray(spectrum.frequencies_hz(imaging_frequency_hz))
    amps = xp.asarray(spectrum.amplitudes)
    return (amps * xp.exp(2j * xp.pi * freqs * te[:, None])).sum(axis=1)


def multiecho_signal(
    water: ArrayLike,
    fat: ArrayLike,
    r2star: ArrayLike,
    field_map_hz: ArrayLike,
    echo_times_s: ArrayLike,
    spectrum: FatSpectrum,
    imaging_frequency_hz: float,
) -> np.ndarray:
    """Noiseless multi-echo signal of the model above, echo axis last.

    Parameters
    ----------
    water, fat : array_like (complex or real), shape (...)
        Water and fat signal amplitudes at t = 0 (arbitrary units; complex to carry a phase).
    r2star : array_like, shape (...)
        Transverse relaxation rate, s⁻¹.
    field_map_hz : array_like, shape (...)
        Off-resonance ψ, Hz.
    echo_times_s : array_like, shape (n_echo,)
    spectrum : FatSpectrum
    imaging_frequency_hz : float

    Returns
    -------
    ndarray, complex128, shape (..., n_echo)
    """
    xp = array_module(water)
    te = xp.asarray(echo_times_s, dtype=xp.float64)
    phasor = fat_phasor(te, spectrum, imaging_frequency_hz, xp=xp)
    water = xp.asarray(water)[..., None]
    fat = xp.asarray(fat)[..., None]
    decay = xp.exp((-xp.asarray(r2star)[..., None] + 2j * xp.pi * xp.asarray(field_map_hz)[..., None]) * te)
    return (water + fat * phasor) * decay


def iron_from_r2star(r2star: ArrayLike) -> np.ndarray:
    """Liver/marrow iron concentration (mg Fe / g dry weight) from R2* at 1.5 T (s⁻¹)."""
    return IRON_INTERCEPT_MG_G + IRON_SLOPE_MG_G_S * np.asarray(r2star)


def r2star_from_iron(iron_mg_g: ArrayLike) -> np.ndarray:
    """Inverse of :func:`iron_from_r2star`: R2* (s⁻¹) for an iron concentration (mg/g)."""
    return (np.asarray(iron_mg_g) - IRON_INTERCEPT_MG_G) / IRON_SLOPE_MG_G_S


#: 1.5 T iron calibration ``iron = 0.202 + 0.0254 · R2*`` (mg/g, s⁻¹).
IRON_INTERCEPT_MG_G = 0.202
IRON_SLOPE_MG_G_S = 0.0254
