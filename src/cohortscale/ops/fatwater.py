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

    def shifted(self, offset_ppm: float) -> FatSpectrum:
        """The spectrum with every peak moved by ``offset_ppm`` relative to water (positive: towards it)."""
        if offset_ppm == 0:
            return self
        return FatSpectrum(
            f"{self.name}{offset_ppm:+.3f}ppm",
            tuple(s + offset_ppm for s in self.shifts_ppm),
            self.amplitudes,
        )


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


#: Empirical relations of Bydder et al. 2011 (Magn Reson Imaging 29:1041, "Mapping the double bonds in
#: triglycerides"), fitted to tissue fatty-acid compositions: CL = 16.8 + 0.25·NDB, NMIDB = 0.093·NDB².
NDB_CL_INTERCEPT = 16.8
NDB_CL_SLOPE = 0.25
NDB_NMIDB_COEFFICIENT = 0.093

#: NDB used by the UK Biobank abdominal pipeline (and the default of the Bydder/Hamilton fat basis).
UKB_NDB = 2.5


def ndb_proton_counts(ndb: float, cl: float, nmidb: float) -> tuple[float, ...]:
    """Protons per triglyceride in each of the 9 peaks of ``_NINE_PEAK_SHIFTS`` (Hamilton et al. 2011).

    Parameters
    ----------
    ndb : float
        Number of double bonds (–CH=CH–) per triglyceride.
    cl : float
        Mean fatty-acid chain length, carbons.
    nmidb : float
        Number of methylene-interrupted double bonds (–CH=CH–CH₂–CH=CH–) per triglyceride.

    Returns
    -------
    tuple of float, length 9
        Proton counts in the order of the shifts (absolute 0.90, 1.30, 1.60, 2.02, 2.24, 2.75, 4.20, 5.19,
        5.29 ppm); they sum to ``6·CL + 2 − 2·NDB``, the protons of the whole molecule.
    """
    # Three chains, each with a CH₃ and α- and β-carboxyl CH₂. Every double bond has two allylic CH₂ (4 H),
    # except that the CH₂ between a methylene-interrupted pair is shared and resonates apart (diallylic,
    # 2 H). Glycerol adds CH₂ (4 H) and CH (1 H), each double bond 2 olefinic H; the rest is bulk CH₂.
    bulk_methylene = 6.0 * (cl - 4.0) - 8.0 * ndb + 2.0 * nmidb
    return (
        9.0,  # 0.90 ppm methyl –CH₃
        bulk_methylene,  # 1.30 ppm methylene –(CH₂)n–
        6.0,  # 1.60 ppm β-carboxyl –CO–CH₂–CH₂–
        4.0 * (ndb - nmidb),  # 2.02 ppm α-olefinic (allylic) –CH₂–CH=CH–
        6.0,  # 2.24 ppm α-carboxyl –CO–CH₂–
        2.0 * nmidb,  # 2.75 ppm diacyl (diallylic) =CH–CH₂–CH=
        4.0,  # 4.20 ppm glycerol –CH₂–O–
        1.0,  # 5.19 ppm glycerol –CH–O–
        2.0 * ndb,  # 5.29 ppm olefinic –CH=CH–
    )


def ndb_spectrum(
    ndb: float = UKB_NDB, cl: float | None = None, nmidb: float | None = None, name: str | None = None
) -> FatSpectrum:
    """The 9-peak fat spectrum of the triglyceride model, parametrised by the number of double bonds.

    Peak areas are the proton counts of :func:`ndb_proton_counts` (Hamilton et al. 2011, NMR Biomed 24:784,
    "In vivo characterization of the liver fat ¹H MR spectrum"), normalised to sum 1, at the same shifts as
    :data:`HAMILTON_LIVER_9PEAK`. Omitted ``cl`` and ``nmidb`` follow the empirical relations of Bydder
    et al. 2011 (``CL = 16.8 + 0.25·NDB``, ``NMIDB = 0.093·NDB²``), as in Berglund et al. 2012 (Magn Reson
    Med 68:1815) and the UK Biobank abdominal protocol (NDB = 2.5).

    Parameters
    ----------
    ndb : float
        Number of double bonds per triglyceride (liver ≈ 1.9, adipose tissue/marrow ≈ 2.5–3).
    cl : float, optional
        Mean chain length, carbons.
    nmidb : float, optional
        Number of methylene-interrupted double bonds per triglyceride.
    name : str, optional
        Spectrum name; by default one quoting the three parameters.

    Returns
    -------
    FatSpectrum
    """
    cl = NDB_CL_INTERCEPT + NDB_CL_SLOPE * ndb if cl is None else cl
    nmidb = NDB_NMIDB_COEFFICIENT * ndb**2 if nmidb is None else nmidb
    counts = ndb_proton_counts(ndb, cl, nmidb)
    if min(counts) < 0:
        raise ValueError(f"NDB {ndb}, CL {cl}, NMIDB {nmidb} give a negative proton count: {counts}")
    total = sum(counts)
    name = name or f"ndb9(ndb={ndb:g}, cl={cl:g}, nmidb={nmidb:.3g})"
    return FatSpectrum(name, _NINE_PEAK_SHIFTS, tuple(c / total for c in counts))


NDB_9PEAK = ndb_spectrum(UKB_NDB, name="ndb9")
"""The NDB-parametrised 9-peak spectrum at the UK Biobank choice NDB = 2.5 (CL 17.425, NMIDB 0.58)."""

SPECTRA[NDB_9PEAK.name] = NDB_9PEAK


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


def water_fat_basis(
    echo_times_s: ArrayLike, spectrum: FatSpectrum, imaging_frequency_hz: float, xp=None
) -> np.ndarray:
    """The model's water and fat columns at each echo, shape (n_echo, 2): 1 and :func:`fat_phasor`."""
    phasor = fat_phasor(echo_times_s, spectrum, imaging_frequency_hz, xp=xp)
    xp = array_module(phasor)
    return xp.stack([xp.ones_like(phasor), phasor], axis=1)


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
    xp = array_module(r2star)
    return IRON_INTERCEPT_MG_G + IRON_SLOPE_MG_G_S * xp.asarray(r2star)


def r2star_from_iron(iron_mg_g: ArrayLike) -> np.ndarray:
    """Inverse of :func:`iron_from_r2star`: R2* (s⁻¹) for an iron concentration (mg/g)."""
    return (np.asarray(iron_mg_g) - IRON_INTERCEPT_MG_G) / IRON_SLOPE_MG_G_S


#: 1.5 T iron calibration ``iron = 0.202 + 0.0254 · R2*`` (mg/g, s⁻¹).
IRON_INTERCEPT_MG_G = 0.202
IRON_SLOPE_MG_G_S = 0.0254
