"""Voxel grids and affines in DICOM patient coordinates (LPS, mm).

Convention used throughout cohortscale: volumes are stored as arrays indexed ``[slice, row, column]``
(``[z, y, x]``), and every affine maps the *reversed* index vector ``(column, row, slice, 1)`` to patient
LPS millimetres — the same order as DICOM (column direction first in ImageOrientationPatient) and as
NIfTI/ITK, so exporting is a transpose plus an LPS→RAS flip. Orientation mistakes are the most common bug
in UK Biobank pipelines; keep every conversion in this module.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

#: Diagonal flip between DICOM LPS and NIfTI RAS patient coordinates.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def affine_from_dicom(
    orientation: ArrayLike,
    first_position: ArrayLike,
    pixel_spacing: ArrayLike,
    slice_step: ArrayLike,
) -> np.ndarray:
    """Voxel→patient affine of a stack of DICOM slices.

    Parameters
    ----------
    orientation : array_like, shape (6,)
        ImageOrientationPatient: direction cosines of the row (along a row, i.e. increasing column) and
        of the column (increasing row).
    first_position : array_like, shape (3,)
        ImagePositionPatient of the first slice's first voxel, mm.
    pixel_spacing : array_like, shape (2,)
        DICOM PixelSpacing ``(row spacing, column spacing)``, mm.
    slice_step : array_like, shape (3,)
        Vector from one slice's position to the next, mm (sign included).

    Returns
    -------
    ndarray, shape (4, 4)
        Maps ``(column, row, slice, 1)`` to LPS mm.
    """
    iop = np.asarray(orientation, dtype=float)
    row_spacing, col_spacing = np.asarray(pixel_spacing, dtype=float)
    affine = np.eye(4)
    affine[:3, 0] = iop[:3] * col_spacing
    affine[:3, 1] = iop[3:] * row_spacing
    affine[:3, 2] = np.asarray(slice_step, dtype=float)
    affine[:3, 3] = np.asarray(first_position, dtype=float)
    return affine


def apply_affine(affine: np.ndarray, points: ArrayLike) -> np.ndarray:
    """Apply a 4×4 affine to points of shape (..., 3)."""
    pts = np.asarray(points, dtype=float)
    return pts @ affine[:3, :3].T + affine[:3, 3]


@dataclass(frozen=True)
class Grid:
    """A regular voxel grid: array shape ``(nz, ny, nx)`` and the affine of its ``(x, y, z)`` indices.

    Attributes
    ----------
    shape : tuple of int
        Array shape ``(slices, rows, columns)``.
    affine : ndarray, shape (4, 4)
        Maps ``(column, row, slice, 1)`` to LPS mm.
    """

    shape: tuple[int, int, int]
    affine: np.ndarray

    @classmethod
    def axial(
        cls,
        shape: tuple[int, int, int],
        spacing_mm: tuple[float, float, float],
        first_voxel_mm: ArrayLike,
        descending: bool = True,
    ) -> Grid:
        """A transverse grid: columns run to patient left (+x), rows posterior (+y), slices along ∓z.

        Parameters
        ----------
        shape : (nz, ny, nx)
        spacing_mm : (dx, dy, dz)
            Column, row and slice spacing, mm.
        first_voxel_mm : array_like, shape (3,)
            LPS position of voxel ``[0, 0, 0]``.
        descending : bool
            Slices run head→feet (−z) when true, feet→head when false.
        """
        dx, dy, dz = spacing_mm
        affine = np.diag([dx, dy, -dz if descending else dz, 1.0])
        affine[:3, 3] = np.asarray(first_voxel_mm, dtype=float)
        return cls(tuple(int(s) for s in shape), affine)  # type: ignore[arg-type]

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size along (x, y, z) index axes, mm."""
        return np.linalg.norm(self.affine[:3, :3], axis=0)

    def is_axis_aligned(self) -> bool:
        """Whether column, row and slice run along patient x, y and z (a diagonal affine, any signs)."""
        rot = self.affine[:3, :3]
        return bool(np.allclose(rot, np.diag(np.diag(rot)), atol=1e-9 * np.abs(rot).max()))

    def axis_coordinates(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Patient coordinates of an axis-aligned grid as 1-D vectors ``(x[nx], y[ny], z[nz])``, mm."""
        if not self.is_axis_aligned():
            raise ValueError("axis_coordinates needs an axis-aligned grid; use points() instead")
        nz, ny, nx = self.shape
        steps = np.diag(self.affine)[:3]
        origin = self.affine[:3, 3]
        return tuple(  # type: ignore[return-value]
            origin[a] + steps[a] * np.arange(n) for a, n in enumerate((nx, ny, nz))
        )

    def points(self) -> np.ndarray:
        """Patient coordinates of every voxel centre, shape ``(nz, ny, nx, 3)``, mm."""
        nz, ny, nx = self.shape
        k, j, i = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
        return apply_affine(self.affine, np.stack([i, j, k], axis=-1))

    def to_dict(self) -> dict[str, list]:
        """JSON-ready description."""
        return {"shape": list(self.shape), "affine": self.affine.tolist()}
