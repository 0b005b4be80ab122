"""Station fusion: resample Dixon stations onto one neck-to-knee grid and blend their overlaps.

Every station is sampled at the grid's voxel centres by trilinear interpolation in patient coordinates
(the station's and the grid's affines), so orientation and position come only from the affines. When the
two grids are axis-aligned with each other (UK Biobank: transverse slabs, same in-plane orientation) the
interpolation is separable and runs as three 1-D passes; otherwise a general 8-corner gather is used.
A grid voxel takes a station's value only inside the hull of that station's voxel centres (no
extrapolation); overlaps are averaged, or faded linearly towards each station's ends.

Kernels take arrays of one array module (NumPy or CuPy) and return the same module's arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cohortscale.backend import array_module
from cohortscale.geometry import Grid

#: Default fused grid: voxel size (x, y, z) in mm and shape (slices, rows, columns) at UK Biobank scale.
FUSED_SPACING_MM = (2.232142925, 2.232142925, 3.0)
FUSED_SHAPE = (376, 174, 224)
#: Tolerance, in voxels, for a grid point to count as inside a station's hull of voxel centres.
HULL_TOLERANCE = 1e-4
#: Smallest blending weight inside a station (so a lone station's faded end still counts).
MIN_WEIGHT = 1e-3


@dataclass(frozen=True)
class Station:
    """One acquired slab: its volume ``[slice, row, column]`` and affine ``(column, row, slice) → LPS``.

    ``slices`` restricts it to the valid slice range ``(first, count)`` of the stored array (ingest pads
    short stations).
    """

    volume: object
    affine: np.ndarray
    slices: tuple[int, int] | None = None


def neck_to_knee_grid(
    affines: Sequence[np.ndarray],
    shape: tuple[int, int, int] = FUSED_SHAPE,
    spacing_mm: tuple[float, float, float] = FUSED_SPACING_MM,
    station_shapes: Sequence[tuple[int, int, int]] | None = None,
) -> Grid:
    """The participant's fused grid: a fixed cohort-wide shape, transverse, starting at the highest
    station slice and running feet-ward; centred in-plane on the stations' common field of view.

    Parameters
    ----------
    affines : sequence of (4, 4) arrays
        Station affines.
    shape : (slices, rows, columns)
    spacing_mm : (dx, dy, dz)
    station_shapes : sequence of (slices, rows, columns), optional
        Stored shapes, to find each station's extent (default: the in-plane size of ``shape``).
    """
    tops, centres = [], []
    for k, affine in enumerate(affines):
        nz, ny, nx = station_shapes[k] if station_shapes is not None else (1, shape[1], shape[2])
        corners = np.array([[0, 0, 0], [nx - 1, ny - 1, 0], [0, 0, nz - 1], [nx - 1, ny - 1, nz - 1]], float)
        world = corners @ affine[:3, :3].T + affine[:3, 3]
        tops.append(world[:, 2].max())
        centres.append(world[:, :2].mean(axis=0))
    dx, dy, _ = spacing_mm
    _, ny, nx = shape
    cx, cy = np.median(np.array(centres), axis=0)
    first = [cx - dx * (nx - 1) / 2, cy - dy * (ny - 1) / 2, max(tops)]
    return Grid.axial(shape, spacing_mm, first, descending=True)


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


def resample(station: Station, grid: Grid) -> tuple[object, object]:
    """Trilinear samples of one station at the grid's voxel centres.

    Returns
    -------
    values : array, float32, ``grid.shape``
        Interpolated intensities (0 outside the station).
    inside : array, bool, ``grid.shape``
        Whether each grid voxel lies within the station's hull of voxel centres.
    """
    xp = array_module(station.volume)
    volume = station.volume
    affine = np.asarray(station.affine, dtype=float)
    if station.slices is not None:
        first, count = station.slices
        volume = volume[first : first + count]
        affine = affine.copy()
        affine[:3, 3] = affine[:3, 3] + first * affine[:3, 2]
    volume = xp.asarray(volume, dtype=xp.float32)
    mapping = np.linalg.inv(affine) @ grid.affine  # grid (x, y, z) index → station (x, y, z) index
    nz, ny, nx = grid.shape
    if not np.allclose(mapping[:3, :3], np.diag(np.diag(mapping[:3, :3])), atol=1e-9):
        return _resample_general(volume, mapping, grid.shape)
    sz, sy, sx = volume.shape
    iz0, iz1, wz, vz = _axis_map(mapping, 2, nz, sz, xp)
    iy0, iy1, wy, vy = _axis_map(mapping, 1, ny, sy, xp)
    ix0, ix1, wx, vx = _axis_map(mapping, 0, nx, sx, xp)
    values = xp.zeros(grid.shape, dtype=xp.float32)
    inside_z = np.flatnonzero(vz)
    if inside_z.size and vy.any() and vx.any():
        rows = slice(inside_z[0], inside_z[-1] + 1)  # a station covers a contiguous run of grid slices
        block = _lerp(volume, iz0[rows], iz1[rows], wz[rows], axis=0)
        block = _lerp(block, iy0, iy1, wy, axis=1)
        values[rows] = _lerp(block, ix0, ix1, wx, axis=2)
    inside = xp.asarray(vz[:, None, None] & vy[None, :, None] & vx[None, None, :])
    return values * inside, inside


def _resample_general(volume, mapping: np.ndarray, shape: tuple[int, int, int]) -> tuple[object, object]:
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
    return (values * inside).reshape(shape), inside.reshape(shape)


def _fade(station: Station, grid: Grid, fade_mm: float, xp) -> object:
    """Per-grid-slice weight rising linearly from each end of the station over ``fade_mm``."""
    affine = np.asarray(station.affine, dtype=float)
    first, count = station.slices or (0, int(station.volume.shape[0]))
    ends = [affine[:3, 3] + (first + s) * affine[:3, 2] for s in (0, count - 1)]
    normal = affine[:3, 2] / np.linalg.norm(affine[:3, 2])
    centres = grid.affine[:3, 3] + np.outer(np.arange(grid.shape[0]), grid.affine[:3, 2])
    along = centres @ normal
    lo, hi = sorted(end @ normal for end in ends)
    distance = np.minimum(along - lo, hi - along)
    weight = np.clip(distance / fade_mm, MIN_WEIGHT, 1.0).astype(np.float32)
    return xp.asarray(weight)[:, None, None]


def fuse(
    stations: Sequence[Station],
    grid: Grid,
    blend: str = "average",
    fade_mm: float = 40.0,
    fill_value: float = 0.0,
) -> object:
    """Fuse stations onto ``grid``: ``fuse(stations, grid) -> volume``.

    Parameters
    ----------
    stations : sequence of Station
        The participant's stations of one contrast (any order; missing ones simply absent).
    grid : Grid
        Output grid, e.g. :func:`neck_to_knee_grid`.
    blend : {"average", "linear"}
        Overlaps averaged (STUDIES.md §2), or each station's weight faded linearly to its ends.
    fade_mm : float
        Length of the linear fade, mm.
    fill_value : float
        Value of grid voxels no station covers.

    Returns
    -------
    array, float32, ``grid.shape``
    """
    if blend not in ("average", "linear"):
        raise ValueError(f"blend must be 'average' or 'linear', got {blend!r}")
    xp = array_module(*(s.volume for s in stations))
    total = xp.zeros(grid.shape, dtype=xp.float32)
    weights = xp.zeros(grid.shape, dtype=xp.float32)
    for station in stations:
        values, inside = resample(station, grid)
        weight = inside.astype(xp.float32)
        if blend == "linear":
            weight = weight * _fade(station, grid, fade_mm, xp)
        total += values * weight
        weights += weight
    covered = weights > 0
    return xp.where(covered, total / xp.where(covered, weights, 1), xp.float32(fill_value))


def fat_fraction(fat, water, background: float) -> object:
    """``FF = fat / (fat + water)``, 0–1, and NaN where ``fat + water`` is below ``background``."""
    xp = array_module(fat, water)
    total = fat + water
    return xp.where(total > background, fat / xp.where(total > 0, total, 1), xp.float32(np.nan)).astype(
        xp.float32
    )
