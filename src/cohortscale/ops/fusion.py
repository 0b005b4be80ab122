"""Station fusion: resample Dixon stations onto one neck-to-knee grid and blend their overlaps.

Each station is resampled trilinearly onto the participant's grid (:mod:`cohortscale.ops.resample`);
overlaps are averaged, or faded linearly towards each station's ends; fat–water swaps are detected and
optionally corrected (:mod:`cohortscale.ops.swaps`) before blending.

Kernels take arrays of one array module (NumPy or CuPy) and return the same module's arrays.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from cohortscale.backend import array_module
from cohortscale.geometry import Grid
from cohortscale.ops.resample import HULL_TOLERANCE, Sample, Station, resample, trim
from cohortscale.ops.swaps import SwapResult, detect_swaps, exchange_swapped, intensity_scale

__all__ = [
    "BLENDS", "FUSED_SHAPE", "FUSED_SPACING_MM", "HULL_TOLERANCE", "FusedDixon", "Sample", "Station",
    "blend_samples", "fade_weights", "fat_fraction", "fuse", "fuse_dixon", "neck_to_knee_grid", "resample",
    "trim",
]  # fmt: skip

#: Default fused grid: voxel size (x, y, z) in mm and shape (slices, rows, columns) at UK Biobank scale.
FUSED_SPACING_MM = (2.232142925, 2.232142925, 3.0)
FUSED_SHAPE = (376, 174, 224)
#: Smallest blending weight inside a station (so a lone station's faded end still counts).
MIN_WEIGHT = 1e-3
#: Blends :func:`fuse` knows.
BLENDS = ("average", "linear")


@dataclass(frozen=True)
class FusedDixon:
    """Fused contrasts of one participant.

    Attributes
    ----------
    volumes : dict of str to array
        Contrast (``in``, ``opp``, ``fat``, ``water``) → float32 volume on the grid, NaN where no
        station covers a voxel.
    ff : array or None
        Fat fraction 0–1 (NaN in background), when fat and water were fused.
    swaps : SwapResult or None
        Fat–water swap decisions, when assessed.
    """

    volumes: dict[str, object]
    ff: object | None
    swaps: SwapResult | None


def neck_to_knee_grid(
    stations: Sequence[Station],
    shape: tuple[int, int, int] = FUSED_SHAPE,
    spacing_mm: tuple[float, float, float] = FUSED_SPACING_MM,
) -> Grid:
    """The participant's fused grid: a fixed cohort-wide shape, transverse, starting at the highest
    valid station slice and running feet-ward; centred in-plane on the stations' common field of view.

    Parameters
    ----------
    stations : sequence of Station
        The participant's stations (any contrast).
    shape : (slices, rows, columns)
    spacing_mm : (dx, dy, dz)
    """
    if not stations:
        raise ValueError("neck_to_knee_grid needs at least one station")
    tops, centres = [], []
    for station in stations:
        volume, affine = station.valid()
        nz, ny, nx = volume.shape
        corners = np.array([[0, 0, 0], [nx - 1, ny - 1, 0], [0, 0, nz - 1], [nx - 1, ny - 1, nz - 1]], float)
        world = corners @ affine[:3, :3].T + affine[:3, 3]
        tops.append(world[:, 2].max())
        centres.append(world[:, :2].mean(axis=0))
    dx, dy, _ = spacing_mm
    _, ny, nx = shape
    cx, cy = np.median(np.array(centres), axis=0)
    first = [cx - dx * (nx - 1) / 2, cy - dy * (ny - 1) / 2, max(tops)]
    return Grid.axial(shape, spacing_mm, first, descending=True)


def fade_weights(station: Station, grid: Grid, fade_mm: float) -> np.ndarray:
    """Per-grid-slice weight, float32 ``(nz,)``, rising linearly from each end of the station over
    ``fade_mm`` (at least :data:`MIN_WEIGHT`)."""
    _, affine = station.valid()
    _, count = station.valid_slices
    ends = [affine[:3, 3] + s * affine[:3, 2] for s in (0, count - 1)]
    normal = affine[:3, 2] / np.linalg.norm(affine[:3, 2])
    centres = grid.affine[:3, 3] + np.outer(np.arange(grid.shape[0]), grid.affine[:3, 2])
    along = centres @ normal
    lo, hi = sorted(end @ normal for end in ends)
    distance = np.minimum(along - lo, hi - along)
    return np.clip(distance / fade_mm, MIN_WEIGHT, 1.0).astype(np.float32)


def blend_samples(
    samples: Sequence[Sample],
    shape: tuple[int, int, int],
    slice_weights: Sequence[np.ndarray] | None = None,
    fill_value: float = 0.0,
) -> object:
    """Weighted mean of resampled stations, float32 ``shape``; ``fill_value`` where none covers a voxel.

    ``slice_weights`` gives each sample a weight per grid slice (e.g. :func:`fade_weights`); default 1.
    """
    xp = array_module(*(s.values for s in samples))
    total = xp.zeros(shape, dtype=xp.float32)
    weights = xp.zeros(shape, dtype=xp.float32)
    for k, sample in enumerate(samples):
        rows = sample.rows
        if slice_weights is None:  # values are already 0 outside the station: add them as they are
            total[rows] += sample.values
            weights[rows] += sample.inside
        else:
            weight = xp.asarray(slice_weights[k][rows])[:, None, None]
            total[rows] += sample.values * weight
            weights[rows] += sample.inside * weight
    uncovered = weights == 0
    weights[uncovered] = 1
    total /= weights
    total[uncovered] = fill_value
    return total


def _slice_weights(
    stations: Sequence[Station], grid: Grid, blend: str, fade_mm: float, trim_slices: int
) -> list[np.ndarray] | None:
    """Per-slice weights of the (trimmed) stations for ``blend``; None for averaging."""
    if blend == "average":
        return None
    return [fade_weights(s.trimmed(trim_slices), grid, fade_mm) for s in stations]


def _check_blend(blend: str) -> None:
    if blend not in BLENDS:
        raise ValueError(f"blend must be one of {BLENDS}, got {blend!r}")


def fuse(
    stations: Sequence[Station],
    grid: Grid,
    blend: str = "average",
    fade_mm: float = 40.0,
    fill_value: float = 0.0,
    trim_slices: int = 0,
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
    trim_slices : int
        Slices dropped at each end of every station first (2–4 removes wrap-around ghosts; the
        35–40 mm overlaps of UK Biobank stations still cover the junctions).

    Returns
    -------
    array, float32, ``grid.shape``
    """
    _check_blend(blend)
    samples = [trim(resample(s, grid), s, grid, trim_slices) for s in stations]
    return blend_samples(
        samples, grid.shape, _slice_weights(stations, grid, blend, fade_mm, trim_slices), fill_value
    )


def fuse_dixon(
    contrasts: Mapping[str, Mapping[int, Station]],
    grid: Grid,
    blend: str = "average",
    fade_mm: float = 40.0,
    trim_slices: int = 0,
    swaps: str = "detect",
    background_fraction: float = 0.05,
    **swap_options: float,
) -> FusedDixon:
    """Fuse every contrast of one participant, with fat–water swap detection and correction.

    Parameters
    ----------
    contrasts : mapping
        Contrast (``in``, ``opp``, ``fat``, ``water``) → station number → Station (absent stations left
        out).
    grid : Grid
    blend, fade_mm, trim_slices
        As in :func:`fuse`.
    swaps : {"off", "detect", "correct"}
        Assess fat–water swaps per station and per leg (:func:`cohortscale.ops.swaps.detect_swaps`), and
        with ``"correct"`` exchange fat and water where a swap is found, before blending.
    background_fraction : float
        FF is NaN where fat + water is below this fraction of the participant's intensity scale (the
        :func:`~cohortscale.ops.swaps.intensity_scale` of fat + water).
    **swap_options
        Passed to :func:`~cohortscale.ops.swaps.detect_swaps`.

    Returns
    -------
    FusedDixon
    """
    _check_blend(blend)
    if swaps not in ("off", "detect", "correct"):
        raise ValueError(f"swaps must be 'off', 'detect' or 'correct', got {swaps!r}")
    samples = {c: {k: resample(s, grid) for k, s in stations.items()} for c, stations in contrasts.items()}
    # Swaps are assessed before trimming: the evidence is in the overlaps, which trimming narrows.
    result = None
    if swaps != "off" and {"fat", "water"} <= samples.keys():
        result = detect_swaps(samples["fat"], samples["water"], grid, **swap_options)
    samples = {
        c: {k: trim(sample, contrasts[c][k], grid, trim_slices) for k, sample in by_station.items()}
        for c, by_station in samples.items()
    }
    if result is not None and swaps == "correct":
        samples["fat"], samples["water"] = exchange_swapped(samples["fat"], samples["water"], result, grid)
    volumes = {}
    for contrast, by_station in samples.items():
        order = sorted(by_station)
        stations = [contrasts[contrast][k] for k in order]
        weights = _slice_weights(stations, grid, blend, fade_mm, trim_slices)
        # NaN where no station covers a voxel, so FF is NaN where only one of fat and water is known.
        volumes[contrast] = blend_samples([by_station[k] for k in order], grid.shape, weights, np.nan)
    ff = None
    if {"fat", "water"} <= volumes.keys():
        scale = intensity_scale(volumes["fat"] + volumes["water"])
        ff = fat_fraction(volumes["fat"], volumes["water"], background_fraction * scale)
    return FusedDixon(volumes, ff, result)


def fat_fraction(fat, water, background: float) -> object:
    """``FF = fat / (fat + water)``, 0–1, and NaN where ``fat + water`` is below ``background``."""
    xp = array_module(fat, water)
    total = fat + water
    total[~(total > background)] = xp.nan  # x / NaN is NaN, without a division warning
    return (fat / total).astype(xp.float32, copy=False)
