"""What each DICOM series of a UK Biobank visit is, from its tags alone (never from file names).

Dixon series are recognised by SeriesDescription (configurable pattern) and assigned to stations by where
their slabs lie along the slice normal, head to foot; duplicated stations keep the newest SeriesTime.
Multi-echo series are recognised per field by SeriesDescription and split into magnitude and phase by
ImageType.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from cohortscale.io.dicom import DICOM_MAGIC, DICOM_MAGIC_OFFSET
from cohortscale.io.fastdicom import read_header

#: Fraction of the shorter slab two series must share to be the same station.
SAME_SLAB_OVERLAP = 0.5


@dataclass(frozen=True)
class SeriesPatterns:
    """Regular expressions that classify series by SeriesDescription (searched, case-sensitive).

    Attributes
    ----------
    dixon : str
        Neck-to-knee Dixon; the named group ``contrast`` captures the suffix mapped by ``contrasts``.
    contrasts : dict
        Description suffix → stored contrast name.
    multiecho : dict
        Field id → pattern of its single-slice multi-echo series.
    stations : int
        Number of Dixon stations expected.
    """

    dixon: str = r"^Dixon_(?:noBH|BH_\d+s)_(?P<contrast>in|opp|F|W)$"
    contrasts: dict[str, str] = field(
        default_factory=lambda: {"in": "in", "opp": "opp", "F": "fat", "W": "water"}
    )
    multiecho: dict[int, str] = field(
        default_factory=lambda: {20254: r"IDEAL", 20203: r"mul+ti_echo|multi-echo"}
    )
    stations: int = 6


@dataclass
class Problem:
    """Something wrong with one file or series, kept for the manifest."""

    file: str
    reason: str
    message: str


@dataclass
class SeriesInfo:
    """Header summary of one series and its datasets (pixels not decoded yet)."""

    uid: str
    number: int
    description: str
    time: str
    image_type: tuple[str, ...]
    datasets: list[Any]  # pydicom Datasets or fastdicom Headers
    files: list[str]
    kind: str = "other"
    contrast: str = ""
    station: int = 0
    field: int = 0

    @property
    def along_normal(self) -> np.ndarray:
        """Position of every image along the slice normal, mm."""
        iop = np.asarray(self.datasets[0].ImageOrientationPatient, dtype=float)
        normal = np.cross(iop[:3], iop[3:])
        return np.array([np.asarray(ds.ImagePositionPatient, dtype=float) @ normal for ds in self.datasets])

    @property
    def rows_columns(self) -> tuple[int, int]:
        """(Rows, Columns) of the first image."""
        return int(self.datasets[0].Rows), int(self.datasets[0].Columns)


def parse_headers(entries: list[tuple[str, bytes]]) -> list[Any]:
    """Headers only, from the first bytes of each file (see ``read_entries(head_bytes=...)``).

    Files the fast reader cannot parse from their start are skipped.
    """
    headers = []
    for name, data in entries:
        try:
            header = read_header(data, header_only=True)
        except ValueError:
            continue
        if header is not None:
            header.filename = name
            headers.append(header)
    return headers


def parse_entries(entries: list[tuple[str, bytes]]) -> tuple[list[Any], list[Problem]]:
    """Parse every DICOM entry (recognised by its ``DICM`` marker); unreadable ones become problems.

    The common uncompressed explicit-VR files go through :mod:`cohortscale.io.fastdicom`; anything else
    through pydicom. Both give objects with the same attributes (``Rows``, ``pixel_array``, ``get``...).
    """
    datasets, problems = [], []
    for name, data in entries:
        if data[DICOM_MAGIC_OFFSET : DICOM_MAGIC_OFFSET + 4] != DICOM_MAGIC:
            continue
        try:
            ds = read_header(data) or pydicom.dcmread(io.BytesIO(data))
            ds.SeriesInstanceUID  # noqa: B018 - a header without it cannot be placed
        except (InvalidDicomError, AttributeError, EOFError, ValueError, KeyError, OSError) as exc:
            problems.append(Problem(name, "unreadable_dicom", f"{name} is not a readable DICOM file: {exc}"))
            continue
        ds.filename = name
        datasets.append(ds)
    return datasets, problems


def group_series(datasets: list[Any]) -> list[SeriesInfo]:
    """Group datasets by SeriesInstanceUID, in SeriesNumber order."""
    groups: dict[str, list[Any]] = {}
    for ds in datasets:
        groups.setdefault(str(ds.SeriesInstanceUID), []).append(ds)
    out = []
    for uid, group in groups.items():
        first = group[0]
        out.append(
            SeriesInfo(
                uid=uid,
                number=int(first.get("SeriesNumber", 0) or 0),
                description=str(first.get("SeriesDescription", "")),
                time=str(first.get("SeriesTime", "")),
                image_type=tuple(first.get("ImageType", ())),
                datasets=group,
                files=[str(ds.filename) for ds in group],
            )
        )
    return sorted(out, key=lambda s: (s.number, s.time, s.uid))


def classify(series: list[SeriesInfo], patterns: SeriesPatterns, fields: tuple[int, ...]) -> None:
    """Set ``kind`` (``dixon``, ``multiecho``, ``other``), ``contrast`` and ``field`` of each series."""
    dixon = re.compile(patterns.dixon)
    multiecho = {f: re.compile(p) for f, p in patterns.multiecho.items() if f in fields}
    for s in series:
        match = dixon.search(s.description)
        if match:
            s.kind, s.contrast = "dixon", patterns.contrasts[match["contrast"]]
            continue
        for field_id, pattern in multiecho.items():
            if pattern.search(s.description):
                s.kind, s.field = "multiecho", field_id
                s.contrast = "phase" if "P" in s.image_type[2:3] else "magnitude"
                break


class StationError(Exception):
    """Dixon slabs that cannot be matched to the expected stations."""


def assign_stations(series: list[SeriesInfo], stations: int) -> None:
    """Number the Dixon slabs 1..``stations`` head to foot and set ``station`` on each series.

    Series whose slabs overlap by at least :data:`SAME_SLAB_OVERLAP` of the shorter one are the same
    station (the four contrasts, and any repeat of the station).

    Raises
    ------
    StationError
        When the slabs do not form exactly ``stations`` groups.
    """
    slabs: list[list[SeriesInfo]] = []
    extents: list[tuple[float, float]] = []
    for s in series:
        positions = s.along_normal
        lo, hi = float(positions.min()), float(positions.max())
        for k, (a, b) in enumerate(extents):
            shared = min(hi, b) - max(lo, a)
            if shared >= SAME_SLAB_OVERLAP * max(min(hi - lo, b - a), 1e-6):
                slabs[k].append(s)
                extents[k] = (min(a, lo), max(b, hi))
                break
        else:
            slabs.append([s])
            extents.append((lo, hi))
    if len(slabs) != stations:
        raise StationError(f"found {len(slabs)} Dixon slabs, expected {stations}")
    order = np.argsort([-(a + b) / 2 for a, b in extents])
    for number, k in enumerate(order, start=1):
        for s in slabs[k]:
            s.station = number


def newest_first(series: list[SeriesInfo]) -> list[SeriesInfo]:
    """Series sorted newest SeriesTime first (then higher SeriesNumber): the first one is kept."""
    return sorted(series, key=lambda s: (s.time, s.number), reverse=True)
