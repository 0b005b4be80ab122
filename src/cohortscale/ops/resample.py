"""Trilinear resampling of a Dixon station onto a voxel grid, in patient coordinates.

Every station is sampled at the grid's voxel centres through the station's and the grid's affines, so
orientation and position come only from the affines. When the two grids are axis-aligned with each other
(UK Biobank: transverse slabs, same in-plane orientation) the interpolation is separable and runs as three
1-D passes over the grid slices the station covers; otherwise a general 8-corner gather is used. A grid
voxel takes a station's value only inside the hull of that station's voxel centres (no extrapolation).

Kernels take arrays of one array module (NumPy or CuPy) and return the same module's arrays.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from cohortscale.backend import array_module
from cohortscale.geometry import Grid

#: Tolerance, in voxels, for a grid point to count as inside a station's hull of voxel centres.
HULL_TOLERANCE = 1e-4
#: Largest displacement, in station voxels, that the separable path may ignore.
SEPARABLE_TOLERANCE = 1e-3


@dataclass(frozen=True)
class Station:
    """One acquired slab: its volume ``[slice, row, column]`` and affine ``(column, row, slice) → LPS``.

    ``slices`` restricts it to the valid slice range ``(first, count)`` of the stored array (ingest pads
    short stations).
    """

    volume: object
    affine: np.ndarray
    slices: tuple[int, int] | None = None

    @property
    def valid_slices(self) -> tuple[int, int]:
        """``(first, count)`` of the slices that hold data."""
        return self.slices if self.slices is not None else (0, int(self.volume.shape[0]))

    def valid(self) -> tuple[object, np.ndarray]:
        """The valid slices and their affine (origin moved to the first valid slice)."""
        first, count = self.valid_slices
        affine = np.array(self.affine, dtype=float)
        affine[:3, 3] = affine[:3, 3] + first * affine[:3, 2]
        return self.volume[first : first + count], affine

    def trimmed(self, slices: int) -> Station:
        """This station without ``slices`` slices at each end (wrap-around ghosts); one slice always stays."""
        first, count = self.valid_slices
        cut = max(0, min(slices, (count - 1) // 2))
        return replace(self, slices=(first + cut, count - 2 * cut))


@dataclass(frozen=True)
class Sample:
    """A station resampled onto a grid, on the run of grid slices ``rows`` that it covers.

    Attributes
    ----------
    rows : slice
        Grid slices covered (``start:stop``; empty when the station misses the grid).
    values : array, float32, ``(rows, ny, nx)``
        Interpolated intensities, 0 outside the station.
    inside : array, bool, ``(rows, ny, nx)``
        Whether each voxel lies within the station's hull of voxel centres.
    """

    rows: slice
    values: object
    inside: object

    def full(self, shape: tuple[int, int, int]) -> tuple[object, object]:
        """``(values, inside)`` on the whole grid of ``shape``."""
        xp = array_module(self.values)
        values = xp.zeros(shape, dtype=xp.float32)
        inside = xp.zeros(shape, dtype=bool)
        values[self.rows], inside[self.rows] = self.values, self.inside
        return values, inside

    def cut(self, rows: slice) -> Sample:
        """This sample on the grid slices ``rows`` (within its own)."""
        part = slice(rows.start - self.rows.start, rows.stop - self.rows.start)
        return Sample(rows, self.values[part], self.inside[part])


def common_rows(*samples: Sample) -> slice:
    """The grid slices every sample covers (an empty slice when they do not meet)."""
    start = max(s.rows.start for s in samples)
    return slice(start, max(start, min(s.rows.stop for s in samples)))


def _axis_map(mapping: np.ndarray, axis: int, n_out: int, n_in: int, xp) -> tuple:
    """1-D linear interpolation indices of one axis: (i0, i1, w1, valid) over the ``n_out`` outputs."""
    coords = mapping[axis, axis] * np.arange(n_out) + mapping[axis, 3]
    valid = (coords >= -HULL_TOLERANCE) & (coords <= n_in - 1 + HULL_TOLERANCE)
    if n_in == 1:
        i0 = np.zeros(n_out, dtype=np.int64)
        return xp.asarray(i0), xp.asarray(i0), xp.zeros(n_out, dtype=xp.float32), valid
    i0 = np.clip(np.floor(coords), 0, n_in - 2).astype(np.int64)
    w1 = np.clip(coords - i0, 0.0, 1.0).astype(np.float32)
    return xp.asarray(i0), xp.asarray(i0 + 1), xp.asarray(w1), valid


def _lerp(values, i0, i1, w1, axis: int):
    """Linear interpolation of ``values`` along ``axis`` at fractional indices ``i0 + w1``."""
    xp = array_module(values)
    shape = [1] * values.ndim
    shape[axis] = -1
    w1 = w1.reshape(shape)
    return xp.take(values, i0, axis=axis) * (1 - w1) + xp.take(values, i1, axis=axis) * w1


def _separable(mapping: np.ndarray, shape: tuple[int, int, int]) -> bool:
    """Whether the grid → station index map moves no sample by more than :data:`SEPARABLE_TOLERANCE`
    voxels when its off-diagonal terms are dropped (DICOM orientation cosines carry ~1e-6 of shear)."""
    off_diagonal = np.abs(mapping[:3, :3] - np.diag(np.diag(mapping[:3, :3])))
    extent = np.array(shape[::-1], dtype=float) - 1  # (x, y, z) index range of the grid
    return bool((off_diagonal @ extent).max() <= SEPARABLE_TOLERANCE)


def resample(station: Station, grid: Grid) -> Sample:
    """Trilinear samples of one station at the grid's voxel centres, on the grid slices it covers."""
    xp = array_module(station.volume)
    volume, affine = station.valid()
    volume = xp.asarray(volume, dtype=xp.float32)
    mapping = np.linalg.inv(affine) @ grid.affine  # grid (x, y, z) index → station (x, y, z) index
    nz, ny, nx = grid.shape
    if not _separable(mapping, grid.shape):
        return _resample_general(volume, mapping, grid.shape)
    sz, sy, sx = volume.shape
    iz0, iz1, wz, vz = _axis_map(mapping, 2, nz, sz, xp)
    iy0, iy1, wy, vy = _axis_map(mapping, 1, ny, sy, xp)
    ix0, ix1, wx, vx = _axis_map(mapping, 0, nx, sx, xp)
    inside_z = np.flatnonzero(vz)
    if not (inside_z.size and vy.any() and vx.any()):
        return Sample(slice(0, 0), xp.zeros((0, ny, nx), xp.float32), xp.zeros((0, ny, nx), bool))
    rows = slice(int(inside_z[0]), int(inside_z[-1]) + 1)  # a station covers a contiguous run of slices
    block = _lerp(volume, iz0[rows], iz1[rows], wz[rows], axis=0)
    block = _lerp(block, iy0, iy1, wy, axis=1)
    values = _lerp(block, ix0, ix1, wx, axis=2)
    inside = xp.asarray(vy[:, None] & vx[None, :])
    inside = xp.broadcast_to(inside, values.shape)
    return Sample(rows, values * inside, inside)


def _resample_general(volume, mapping: np.ndarray, shape: tuple[int, int, int]) -> Sample:
    """8-corner trilinear gather for grids rotated against the station."""
    xp = array_module(volume)
    nz, ny, nx = shape
    k, j, i = xp.meshgrid(xp.arange(nz), xp.arange(ny), xp.arange(nx), indexing="ij")
    index = xp.stack([i, j, k], axis=-1).reshape(-1, 3).astype(xp.float64)
    coords = index @ xp.asarray(mapping[:3, :3].T) + xp.asarray(mapping[:3, 3])
    limits = xp.asarray(volume.shape[::-1], dtype=xp.float64) - 1
    inside = xp.all((coords >= -HULL_TOLERANCE) & (coords <= limits + HULL_TOLERANCE), axis=1)
    base = xp.clip(xp.floor(coords), 0, xp.maximum(limits - 1, 0)).astype(xp.int64)
    frac = xp.clip(coords - base, 0.0, 1.0).astype(xp.float32)
    values = xp.zeros(coords.shape[0], dtype=xp.float32)
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                ix = xp.minimum(base[:, 0] + dx, int(volume.shape[2]) - 1)
                iy = xp.minimum(base[:, 1] + dy, int(volume.shape[1]) - 1)
                iz = xp.minimum(base[:, 2] + dz, int(volume.shape[0]) - 1)
                weight = (
                    (frac[:, 0] if dx else 1 - frac[:, 0])
                    * (frac[:, 1] if dy else 1 - frac[:, 1])
                    * (frac[:, 2] if dz else 1 - frac[:, 2])
                )
                values += weight * volume[iz, iy, ix]
    values, inside = (values * inside).reshape(shape), inside.reshape(shape)
    covered = np.flatnonzero(np.asarray(inside.any(axis=(1, 2)).tolist()))
    rows = slice(int(covered[0]), int(covered[-1]) + 1) if covered.size else slice(0, 0)
    return Sample(rows, values[rows], inside[rows])


def trim(sample: Sample, station: Station, grid: Grid, slices: int) -> Sample:
    """``sample`` without the voxels that depend on the ``slices`` end slices at each end of ``station``.

    Equal to ``resample(station.trimmed(slices), grid)``, without resampling again: a station is
    resampled once, its fat and water assessed for swaps over the whole overlap, and then trimmed of
    its wrap-around ghost slices for blending.
    """
    if slices <= 0 or sample.rows.stop == sample.rows.start:
        return sample
    xp = array_module(sample.values)
    first, _ = station.valid_slices
    kept_first, kept_count = station.trimmed(slices).valid_slices
    low, high = kept_first - first, kept_first - first + kept_count - 1  # in valid-slice indices
    _, affine = station.valid()
    along = (np.linalg.inv(affine) @ grid.affine)[2]  # station slice index of grid (x, y, z) index
    _, ny, nx = grid.shape
    z = (
        along[0] * np.arange(nx)[None, None, :]
        + along[1] * np.arange(ny)[None, :, None]
        + along[2] * np.arange(sample.rows.start, sample.rows.stop)[:, None, None]
        + along[3]
    )
    keep = xp.asarray((z >= low - HULL_TOLERANCE) & (z <= high + HULL_TOLERANCE))
    inside = sample.inside & keep
    return Sample(sample.rows, sample.values * inside, inside)
