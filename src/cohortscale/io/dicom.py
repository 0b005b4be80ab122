"""DICOM series from a bulk zip, read in memory: grouping, slice sorting and geometry.

Slices are grouped by SeriesInstanceUID, sorted along the slice normal (ImageOrientationPatient row ×
column direction) by the projection of ImagePositionPatient, and stacked; the affine follows
:mod:`cohortscale.geometry` (``(column, row, slice)`` → LPS mm). Multi-echo series, whose images share one
position, are stacked along echoes instead, in EchoTime order.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom

from cohortscale.geometry import affine_from_dicom
from cohortscale.io.ukb import read_entries


@dataclass
class Series:
    """One DICOM series as arrays.

    Attributes
    ----------
    uid : str
        SeriesInstanceUID.
    number : int
        SeriesNumber.
    description : str
        SeriesDescription.
    time : str
        SeriesTime (``HHMMSS.ffffff``).
    image_type : tuple of str
    pixels : ndarray, shape (n, rows, cols)
        Stored values after RescaleSlope/Intercept when present (float32 then), else uint16; slices
        sorted along the normal, or echoes sorted by EchoTime for a single-position series.
    affine : ndarray, shape (4, 4)
        ``(column, row, slice)`` → LPS mm (for a single position the slice axis is the normal × thickness).
    echo_times_s : ndarray, shape (n,)
    headers : list of pydicom.Dataset
        Headers (no pixel data) in the same order as ``pixels``.
    """

    uid: str
    number: int
    description: str
    time: str
    image_type: tuple[str, ...]
    pixels: np.ndarray
    affine: np.ndarray
    echo_times_s: np.ndarray
    headers: list[pydicom.Dataset] = field(repr=False, default_factory=list)


#: Part-10 DICOM files carry this marker after a 128-byte preamble.
DICOM_MAGIC = b"DICM"
DICOM_MAGIC_OFFSET = 128


def read_zip_datasets(path: str | Path) -> list[pydicom.Dataset]:
    """Every DICOM dataset (full pydicom headers) in a bulk zip or folder, recognised by the ``DICM``
    marker; read through :func:`cohortscale.io.ukb.read_entries`, so its archive guards apply."""
    return [
        pydicom.dcmread(io.BytesIO(data))
        for _, data in read_entries(path)
        if data[DICOM_MAGIC_OFFSET : DICOM_MAGIC_OFFSET + 4] == DICOM_MAGIC
    ]


def _pixels(ds: pydicom.Dataset) -> np.ndarray:
    arr = ds.pixel_array
    if "RescaleSlope" in ds or "RescaleIntercept" in ds:
        slope = float(ds.get("RescaleSlope", 1.0))
        return arr.astype(np.float32) * slope + float(ds.get("RescaleIntercept", 0.0))
    return arr


def stack_series(datasets: list[pydicom.Dataset]) -> Series:
    """Sort and stack the images of one series (see module docstring)."""
    first = datasets[0]
    iop = np.asarray(first.ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    positions = np.array([np.asarray(ds.ImagePositionPatient, dtype=float) for ds in datasets])
    along = positions @ normal
    single_position = np.ptp(along) < 1e-3
    if single_position:
        order = np.argsort([float(ds.EchoTime) for ds in datasets], kind="stable")
        step = normal * float(first.SliceThickness)
    else:
        order = np.argsort(along, kind="stable")
        gaps = np.diff(positions[order], axis=0)
        step = np.median(gaps, axis=0)
    ordered = [datasets[i] for i in order]
    pixels = np.stack([_pixels(ds) for ds in ordered])
    affine = affine_from_dicom(iop, positions[order[0]], first.PixelSpacing, step)
    return Series(
        uid=str(first.SeriesInstanceUID),
        number=int(first.SeriesNumber),
        description=str(first.SeriesDescription),
        time=str(first.SeriesTime),
        image_type=tuple(first.ImageType),
        pixels=pixels,
        affine=affine,
        echo_times_s=np.array([float(ds.EchoTime) * 1e-3 for ds in ordered]),
        headers=ordered,
    )


def read_zip_series(path: str | Path) -> list[Series]:
    """All series of a bulk zip, in SeriesNumber order."""
    groups: dict[str, list[pydicom.Dataset]] = {}
    for ds in read_zip_datasets(path):
        groups.setdefault(str(ds.SeriesInstanceUID), []).append(ds)
    return sorted((stack_series(g) for g in groups.values()), key=lambda s: s.number)
