"""MR signal of the synthetic anatomy: two-point Dixon, multi-echo gradient echo, bias and noise.

Tissue properties are per label, so signals are computed once per label (a 256-entry table) and then
looked up through the label volume: ``signal = table[labels]``. Smooth fields (coil sensitivity, B0,
initial phase) are sums of separable Gaussians in patient coordinates, so the same participant gets the
same field in every station and overlaps agree.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cohortscale.geometry import Grid
from cohortscale.ops.fatwater import FatSpectrum, fat_phasor
from cohortscale.protocols import DixonAcquisition
from cohortscale.synth.relaxation import T1_FAT_S, spoiled_gre_weight
from cohortscale.synth.tissues import TissueTables

#: Number of Gaussian bumps in a smooth random field.
FIELD_BUMPS = 4


@dataclass(frozen=True)
class SmoothField:
    """``offset + Σ_k amplitude_k · Π_axis exp(−(c − centre_k)² / 2 width_k²)`` in patient mm.

    Evaluate with :meth:`__call__` on broadcastable coordinate arrays.
    """

    offset: float
    amplitudes: np.ndarray
    centres: np.ndarray  # (k, 3) mm
    widths: np.ndarray  # (k, 3) mm

    @classmethod
    def random(
        cls,
        rng: np.random.Generator,
        box_lo: np.ndarray,
        box_hi: np.ndarray,
        peak: float,
        offset: float = 0.0,
        width_range: tuple[float, float] = (120.0, 350.0),
    ) -> SmoothField:
        """A random smooth field whose bumps have amplitudes up to ``peak`` in absolute value."""
        centres = rng.uniform(box_lo, box_hi, size=(FIELD_BUMPS, 3))
        widths = rng.uniform(*width_range, size=(FIELD_BUMPS, 3))
        amplitudes = rng.uniform(-1.0, 1.0, FIELD_BUMPS)
        amplitudes *= peak / max(np.abs(amplitudes).sum(), 1e-9)
        return cls(offset, amplitudes, centres, widths)

    def on_grid(self, grid: Grid) -> np.ndarray:
        """The field at every voxel centre of an axis-aligned grid, float32 ``grid.shape``."""
        xs, ys, zs = grid.axis_coordinates()
        return self(xs[None, None, :], ys[None, :, None], zs[:, None, None]).astype(np.float32)

    def __call__(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        total = np.asarray(self.offset, dtype=np.float64)
        for amp, c, w in zip(self.amplitudes, self.centres, self.widths, strict=True):
            gx = np.exp(-0.5 * ((x - c[0]) / w[0]) ** 2)
            gy = np.exp(-0.5 * ((y - c[1]) / w[1]) ** 2)
            gz = np.exp(-0.5 * ((z - c[2]) / w[2]) ** 2)
            total = total + amp * gx * gy * gz
        return total


@dataclass(frozen=True)
class DixonTables:
    """Per-label noiseless Dixon signals (arrays of 256, unit proton density scale).

    ``water`` and ``fat`` are the separated images the scanner reconstructs; ``in_phase`` and
    ``opposed`` the magnitudes at the two echo times with the multi-peak fat spectrum and R2* decay;
    ``ff`` the Dixon fat fraction ``F / (F + W)`` (T1-weighted, so above PDFF).
    """

    in_phase: np.ndarray
    opposed: np.ndarray
    water: np.ndarray
    fat: np.ndarray
    ff: np.ndarray


def dixon_tables(
    tissues: TissueTables,
    acquisition: DixonAcquisition,
    spectrum: FatSpectrum,
    imaging_frequency_hz: float,
) -> DixonTables:
    """Noiseless two-point Dixon signals of every label.

    Parameters
    ----------
    tissues : TissueTables
    acquisition : DixonAcquisition
        Echo times, TR and flip angle.
    spectrum : FatSpectrum
        Fat spectrum used for the in/opposed-phase interference.
    imaging_frequency_hz : float
        Proton frequency, Hz.
    """
    tr, flip = acquisition.tr_s, acquisition.flip_angle_deg
    w0 = tissues.proton_density * (1.0 - tissues.pdff) * spoiled_gre_weight(tissues.t1_water_s, tr, flip)
    f0 = tissues.proton_density * tissues.pdff * spoiled_gre_weight(T1_FAT_S, tr, flip)
    te_opp, te_in = acquisition.te_opposed_s, acquisition.te_in_phase_s
    c_opp, c_in = fat_phasor([te_opp, te_in], spectrum, imaging_frequency_hz)
    r2 = tissues.r2star
    mean_decay = np.exp(-r2 * 0.5 * (te_opp + te_in))
    total = w0 + f0
    ff = np.divide(f0, total, out=np.zeros_like(total), where=total > 0)
    return DixonTables(
        in_phase=np.abs(w0 + f0 * c_in) * np.exp(-r2 * te_in),
        opposed=np.abs(w0 + f0 * c_opp) * np.exp(-r2 * te_opp),
        water=w0 * mean_decay,
        fat=f0 * mean_decay,
        ff=ff,
    )


def rician(signal: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of ``signal`` plus complex Gaussian noise of standard deviation ``sigma`` per channel."""
    real = signal + sigma * rng.standard_normal(signal.shape, dtype=np.float32)
    imag = sigma * rng.standard_normal(signal.shape, dtype=np.float32)
    return np.hypot(real, imag)


def to_uint16(image: np.ndarray, max_value: int = 4095) -> np.ndarray:
    """Round and clip to the 12-bit range Siemens stores in uint16."""
    return np.clip(np.rint(image), 0, max_value).astype(np.uint16)


def edge_rolloff(n_slices: int, depth: float, decay_slices: float) -> np.ndarray:
    """Relative signal of each slice of a 3D slab: ``1 − depth·exp(−d / decay)`` at distance ``d`` from
    the nearer end, in slices (outer slices of a slab lose signal)."""
    d = np.minimum(np.arange(n_slices), np.arange(n_slices)[::-1]).astype(float)
    return 1.0 - depth * np.exp(-d / decay_slices)
