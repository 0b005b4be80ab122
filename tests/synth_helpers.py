"""Helpers for comparing synthetic DICOM images with the generator's truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr
from scipy import ndimage

from cohortscale.geometry import apply_affine
from cohortscale.io.dicom import Series, read_zip_series


def visit_truth(cohort: Path, eid: int, instance: int = 2) -> zarr.Group:
    return zarr.open_group(str(cohort / "truth" / f"{eid}_{instance}" / "maps.zarr"), mode="r")


def first_eid(cohort: Path) -> int:
    return int(sorted((cohort / "bulk").glob("*_20201_2_0.zip"))[0].name.split("_")[0])


def dixon_series(cohort: Path, eid: int, instance: int = 2) -> list[Series]:
    return read_zip_series(cohort / "bulk" / f"{eid}_20201_{instance}_0.zip")


def truth_at(series: Series, fused: zarr.Group) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Fused truth at each voxel of ``series`` (nearest fused voxel) and a mask of voxels whose fused
    neighbourhood (3×3×3) holds a single label, where nearest-neighbour values are exact up to the
    smooth coil field."""
    n, rows, cols = series.pixels.shape
    k, j, i = np.meshgrid(np.arange(n), np.arange(rows), np.arange(cols), indexing="ij")
    world = apply_affine(series.affine, np.stack([i, j, k], axis=-1))
    fused_affine = np.asarray(fused.attrs["affine"])
    index = np.rint(apply_affine(np.linalg.inv(fused_affine), world)).astype(int)
    labels = np.asarray(fused["labels"])
    shape_xyz = labels.shape[::-1]
    inside = np.all((index >= 0) & (index < np.array(shape_xyz)), axis=-1)
    index = np.where(inside[..., None], index, 0)
    zyx = (index[..., 2], index[..., 1], index[..., 0])
    homogeneous = ndimage.maximum_filter(labels, 3) == ndimage.minimum_filter(labels, 3)
    values = {name: np.asarray(fused[name])[zyx] for name in ("labels", "water", "fat", "ff")}
    return values, inside & homogeneous[zyx]
