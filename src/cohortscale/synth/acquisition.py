"""Where the scanner puts each image: station slabs, the fused truth grid and the multi-echo slice.

All grids are transverse (ImageOrientationPatient ``1\\0\\0\\0\\1\\0``): columns run to the patient's left,
rows posterior, slices head→feet. ``scale`` < 1 shrinks matrices and slice counts and enlarges voxels by
the same factor, so the physical field of view and the station layout do not change.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from cohortscale.geometry import Grid
from cohortscale.protocols import (
    DIXON_PIXEL_SPACING_MM,
    UKB_DIXON_STATIONS,
    DixonStation,
    MultiEchoProtocol,
)

#: Transverse ImageOrientationPatient (row direction, column direction).
AXIAL_ORIENTATION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
#: Fused neck-to-knee grid: slice spacing (mm) and cohort-wide slice count at full scale.
FUSED_SLICE_SPACING_MM = 3.0
FUSED_SLICES = 376
#: Matrix of the fused grid in-plane (rows, columns) at full scale: the widest station FOV.
FUSED_ROWS, FUSED_COLUMNS = 174, 224
#: Smallest number of slices a scaled station keeps.
MIN_SLICES = 4


def scaled(n: int, scale: float, minimum: int = MIN_SLICES) -> int:
    """A matrix size or slice count shrunk by ``scale`` (at least ``minimum``)."""
    return max(minimum, round(n * scale))


@dataclass(frozen=True)
class StationSlab:
    """One acquired Dixon station.

    Attributes
    ----------
    station : DixonStation
        Full-scale protocol entry (number, region, breath-hold).
    grid : Grid
        Voxel grid of the slab as stored: ``(slices, rows, columns)``, slices head→feet.
    pixel_spacing_mm, slice_spacing_mm : float
        Spacing actually used (after scaling), mm.
    """

    station: DixonStation
    grid: Grid
    pixel_spacing_mm: float
    slice_spacing_mm: float

    @property
    def top_edge(self) -> float:
        """Upper boundary of the slab (top slice centre + half a slice), LPS z mm."""
        return float(self.grid.affine[2, 3] + self.slice_spacing_mm / 2)

    @property
    def bottom_edge(self) -> float:
        """Lower boundary of the slab, LPS z mm."""
        n = self.grid.shape[0]
        return float(self.grid.affine[2, 3] - (n - 0.5) * self.slice_spacing_mm)


def in_plane_first_voxel(
    rows: int, columns: int, spacing: float, centre_xy: tuple[float, float]
) -> np.ndarray:
    """LPS (x, y) of voxel [0, 0] of a FOV of ``rows × columns`` centred on ``centre_xy``."""
    cx, cy = centre_xy
    return np.array([cx - (columns - 1) * spacing / 2, cy - (rows - 1) * spacing / 2])


def station_slabs(
    scale: float,
    top_edge_mm: float,
    overlaps_mm: np.ndarray,
    centre_xy: tuple[float, float] = (0.0, 0.0),
) -> list[StationSlab]:
    """The six Dixon slabs from the neck down, consecutive ones overlapping by ``overlaps_mm``.

    Parameters
    ----------
    scale : float
        Matrix scale (1 = UK Biobank size).
    top_edge_mm : float
        LPS z of the top boundary of station 1, mm.
    overlaps_mm : ndarray, shape (5,)
        Overlap of each junction, mm (UK Biobank: ~35–40 mm).
    centre_xy : (float, float)
        Table-centred FOV centre, mm.
    """
    columns = scaled(UKB_DIXON_STATIONS[0].columns, scale)
    spacing = DIXON_PIXEL_SPACING_MM * UKB_DIXON_STATIONS[0].columns / columns
    slabs = []
    top = top_edge_mm
    for k, st in enumerate(UKB_DIXON_STATIONS):
        rows = scaled(st.rows, scale)
        n = scaled(st.slices, scale)
        dz = st.slice_spacing_mm * st.slices / n
        x0, y0 = in_plane_first_voxel(rows, columns, spacing, centre_xy)
        grid = Grid.axial((n, rows, columns), (spacing, spacing, dz), [x0, y0, top - dz / 2])
        slab = StationSlab(st, grid, spacing, dz)
        slabs.append(slab)
        if k < len(overlaps_mm):
            top = slab.bottom_edge + float(overlaps_mm[k])
    return slabs


def fused_grid(slabs: list[StationSlab], scale: float, centre_xy: tuple[float, float] = (0.0, 0.0)) -> Grid:
    """The cohort-wide neck-to-knee grid (2.232 × 2.232 × 3.0 mm at full scale) starting at station 1's
    top slice and running down ``FUSED_SLICES`` slices.

    Its index axes run to patient left, posterior and inferior (LPI); peers' NIfTI exports are LAS, so an
    exporter flips rows and slices (the affine says so; no data are reordered here)."""
    (n, rows, columns), (spacing, _, dz) = fused_shape_spacing(scale)
    x0, y0 = in_plane_first_voxel(rows, columns, spacing, centre_xy)
    return Grid.axial((n, rows, columns), (spacing, spacing, dz), [x0, y0, slabs[0].top_edge - dz / 2])


def fused_shape_spacing(scale: float) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    """Shape ``(slices, rows, columns)`` and spacing ``(dx, dy, dz)`` (mm) of the fused grid at ``scale``:
    the fusion stage's settings that reproduce the truth grid of a scaled cohort."""
    columns = scaled(FUSED_COLUMNS, scale)
    spacing = DIXON_PIXEL_SPACING_MM * FUSED_COLUMNS / columns
    n = scaled(FUSED_SLICES, scale)
    return (n, scaled(FUSED_ROWS, scale), columns), (
        spacing,
        spacing,
        FUSED_SLICE_SPACING_MM * FUSED_SLICES / n,
    )


def full_resolution_grid(slabs: list[StationSlab], centre_xy: tuple[float, float] = (0.0, 0.0)) -> Grid:
    """The fused grid at full scale, used to measure true volumes whatever the image scale."""
    return fused_grid(station_slabs(1.0, slabs[0].top_edge, _overlaps(slabs), centre_xy), 1.0, centre_xy)


def _overlaps(slabs: list[StationSlab]) -> np.ndarray:
    return np.array([b.top_edge - a.bottom_edge for a, b in itertools.pairwise(slabs)])


def multiecho_grid(
    protocol: MultiEchoProtocol,
    scale: float,
    z_mm: float,
    centre_xy: tuple[float, float] = (0.0, 0.0),
) -> Grid:
    """The transverse multi-echo slice centred at height ``z_mm``, shape ``(1, rows, cols)``."""
    rows, columns = scaled(protocol.rows, scale, 8), scaled(protocol.columns, scale, 8)
    spacing = protocol.pixel_spacing_mm * protocol.columns / columns
    x0, y0 = in_plane_first_voxel(rows, columns, spacing, centre_xy)
    return Grid.axial((1, rows, columns), (spacing, spacing, protocol.slice_thickness_mm), [x0, y0, z_mm])
