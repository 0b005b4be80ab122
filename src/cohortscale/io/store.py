"""The Zarr v3 cohort store: layout, per-participant region writes, and opening as an xarray Dataset.

Every array has a leading ``participant`` axis whose chunks hold one participant each, so workers write
their participants without coordinating and a repeated write replaces exactly the same chunk files.
Participants are visits, keyed ``<eid>_<instance>`` (repeat visits are separate rows); the ``participant``,
``eid`` and ``instance`` arrays index them. Missing data are explicit: NaN for floats, 0 slices / no
dynamics for images. Layout::

    participant, eid, instance                          [P]
    dixon/station{k}/{in,opp,fat,water}                 uint16  [P, z, y, x]  slices up the normal
    dixon/station{k}/affine                             float64 [P, 4, 4]    (column, row, slice) → LPS mm
    dixon/station{k}/slices                             int16   [P, 4, 2]    first slice, count per contrast
    dixon/echo_times                                    float64 [P, 2]       opposed-, in-phase TE, s
    dixon/imaging_frequency                             float64 [P]          Hz (also per multi-echo field)
    multiecho/{f}/signal                                complex64 [P, dynamic, echo, y, x]
    multiecho/{f}/echo_times                            float64 [P, echo]   s
    multiecho/{f}/affine                                float64 [P, 4, 4]
    multiecho/{f}/dynamics                              int16   [P]
    dixon/fused/{in,opp,fat,water}                      uint16  [P, Z, Y, X]  fusion stage, fused grid
    dixon/fused/ff                                      float32 [P, Z, Y, X]  fat fraction 0–1, NaN background
    dixon/fused/affine                                  float64 [P, 4, 4]
    dixon/fused/stations                                int8    [P, 6]        contrasts fused per station
    dixon/fused/swapped, swap_margin                    int8, float32 [P, segment]  fat–water swaps

Stage outputs are created by :func:`ensure_arrays` when the stage first runs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
import zarr
from zarr.codecs import BloscCodec

from cohortscale import __version__
from cohortscale.protocols import DIXON_CONTRASTS

#: Codecs of image arrays (measured on full-scale Dixon: 0.22 s and 0.48 of raw size for 24 volumes,
#: against 0.76 s and 0.56 with the default zstd).
IMAGE_COMPRESSORS = (BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle"),)

#: Name of the leading axis every array shares (Zarr v3 ``dimension_names``).
PARTICIPANT = "participant"

#: Names usable as one level of a store array's path (``labels/<name>``) and in export file names.
ARRAY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class StoreLayout:
    """Array shapes of a cohort, beyond the participant axis.

    Attributes
    ----------
    stations : dict
        Station number → (slices, rows, columns) of its reference acquisition.
    multiecho : dict
        Field → (dynamics, echoes, rows, columns).
    """

    stations: dict[int, tuple[int, int, int]] = field(default_factory=dict)
    multiecho: dict[int, tuple[int, int, int, int]] = field(default_factory=dict)

    def arrays(self) -> dict[str, tuple[tuple[int, ...], str, tuple[str, ...], Any]]:
        """Path → (shape without participant axis, dtype, dimension names, fill value)."""
        out: dict[str, tuple[tuple[int, ...], str, tuple[str, ...], Any]] = {}
        for k, (nz, ny, nx) in sorted(self.stations.items()):
            dims = (f"station{k}_z", f"station{k}_y", f"station{k}_x")
            for contrast in DIXON_CONTRASTS:
                out[f"dixon/station{k}/{contrast}"] = ((nz, ny, nx), "uint16", dims, 0)
            out[f"dixon/station{k}/affine"] = ((4, 4), "float64", ("affine_row", "affine_col"), np.nan)
            out[f"dixon/station{k}/slices"] = (
                (len(DIXON_CONTRASTS), 2),
                "int16",
                ("contrast", "first_count"),
                0,
            )
        if self.stations:
            out["dixon/echo_times"] = ((2,), "float64", ("dixon_echo",), np.nan)
            out["dixon/imaging_frequency"] = ((), "float64", (), np.nan)
        for f, (nd, ne, ny, nx) in sorted(self.multiecho.items()):
            echo = f"echo_{f}"
            out[f"multiecho/{f}/signal"] = (
                (nd, ne, ny, nx),
                "complex64",
                (f"dynamic_{f}", echo, f"y_{f}", f"x_{f}"),
                np.nan,
            )
            out[f"multiecho/{f}/echo_times"] = ((ne,), "float64", (echo,), np.nan)
            out[f"multiecho/{f}/affine"] = ((4, 4), "float64", ("affine_row", "affine_col"), np.nan)
            out[f"multiecho/{f}/imaging_frequency"] = ((), "float64", (), np.nan)
            out[f"multiecho/{f}/dynamics"] = ((), "int16", (), 0)
        return out

    def to_attrs(self) -> dict[str, Any]:
        return {
            "stations": {str(k): list(v) for k, v in self.stations.items()},
            "multiecho": {str(k): list(v) for k, v in self.multiecho.items()},
        }

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> StoreLayout:
        return cls(
            {int(k): tuple(v) for k, v in attrs.get("stations", {}).items()},  # type: ignore[misc]
            {int(k): tuple(v) for k, v in attrs.get("multiecho", {}).items()},  # type: ignore[misc]
        )


#: What defines an array beyond the participant axis: (shape, dtype, dimension names, fill value).
ArraySpec = tuple[tuple[int, ...], str, tuple[str, ...], Any]


def _create(
    root: zarr.Group, path: str, n: int, shape: tuple[int, ...], dtype: str, dims: tuple[str, ...], fill: Any
) -> None:
    root.create_array(
        path,
        shape=(n, *shape),
        # One participant per chunk, even for scalars: concurrent writers never share a chunk file.
        chunks=(1, *shape),
        dtype=dtype,
        fill_value=fill,
        dimension_names=(PARTICIPANT, *dims),
        # Images: LZ4 with bit-shuffle writes ~3× faster than Zarr's default zstd and packs tighter.
        compressors=IMAGE_COMPRESSORS if len(shape) >= 3 else "auto",
        overwrite=False,
    )


def ensure_arrays(root: zarr.Group, specs: Mapping[str, ArraySpec]) -> None:
    """Create the per-participant arrays ``specs`` (path → spec) that the store lacks, for every row.

    A stage calls this before it runs, so that its workers only write their participants' chunks.

    Raises
    ------
    ValueError
        An array exists with another shape or dtype (the stage's configuration changed; write to a new
        store or remove the array first).
    """
    n = root["participant"].shape[0]
    for path, (shape, dtype, dims, fill) in specs.items():
        if path in root:
            array = root[path]
            if tuple(array.shape[1:]) != tuple(shape) or np.dtype(array.dtype) != np.dtype(dtype):
                raise ValueError(
                    f"{path} exists in the store as {array.dtype} {tuple(array.shape[1:])}, but this run "
                    f"writes {dtype} {tuple(shape)}; use a new store or remove {path} first"
                )
            if array.shape[0] != n:
                array.resize((n, *array.shape[1:]))
        else:
            _create(root, path, n, shape, dtype, dims, fill)


def reset_row(root: zarr.Group, specs: Mapping[str, ArraySpec], row: int) -> None:
    """Set store row ``row`` of every array in ``specs`` (path → spec) to the array's fill value.

    A row a stage writes again must not keep what its earlier inputs left: a series that disappeared, a
    visit now quarantined. Each row is its own chunk, so this deletes the chunk files (Zarr does not store
    chunks that hold only the fill value).
    """
    for path, (shape, dtype, _, fill) in specs.items():
        root[path][row] = np.full(shape, fill, dtype=dtype)


def create_store(
    path: str | Path, participants: Sequence[tuple[str, int, int]], layout: StoreLayout
) -> zarr.Group:
    """Create (or extend) a cohort store for ``participants`` = [(key, eid, instance)].

    An existing store keeps its rows; new participants are appended and arrays grow. Arrays that a
    layout adds (e.g. a multi-echo field seen for the first time) are created for all rows.

    Returns
    -------
    zarr.Group
        The store's root group.
    """
    root = zarr.open_group(str(path), mode="a")
    existing = [str(k) for k in root["participant"][:]] if "participant" in root else []
    known = set(existing)
    new = [p for p in participants if p[0] not in known]
    n = len(existing) + len(new)
    if "participant" not in root:
        root.create_array(
            "participant", shape=(0,), chunks=(2**16,), dtype=str, dimension_names=(PARTICIPANT,)
        )
        root.create_array("eid", shape=(0,), chunks=(2**16,), dtype="int64", dimension_names=(PARTICIPANT,))
        root.create_array(
            "instance", shape=(0,), chunks=(2**16,), dtype="int16", dimension_names=(PARTICIPANT,)
        )
    if new:
        start = len(existing)
        for name, values in (
            ("participant", np.array([p[0] for p in new], dtype=str)),
            ("eid", np.array([p[1] for p in new], dtype="int64")),
            ("instance", np.array([p[2] for p in new], dtype="int16")),
        ):
            root[name].resize((n,))
            root[name][start:n] = values
    stored = StoreLayout.from_attrs(root.attrs.get("layout", {}))
    merged = StoreLayout({**layout.stations, **stored.stations}, {**layout.multiecho, **stored.multiecho})
    for array_path, (shape, dtype, dims, fill) in merged.arrays().items():
        if array_path in root:
            array = root[array_path]
            if array.shape[0] != n:
                array.resize((n, *array.shape[1:]))
        else:
            _create(root, array_path, n, shape, dtype, dims, fill)
    root.attrs.update({"layout": merged.to_attrs(), "cohortscale_version": __version__})
    return root


def open_store(path: str | Path, mode: str = "r+") -> zarr.Group:
    """Open an existing cohort store."""
    return zarr.open_group(str(path), mode=mode)


def participant_rows(root: zarr.Group) -> dict[str, int]:
    """Participant key → row index."""
    return {str(k): i for i, k in enumerate(root["participant"][:])} if "participant" in root else {}


def layout_of(root: zarr.Group) -> StoreLayout:
    """The store's layout (shapes of every array beyond the participant axis)."""
    return StoreLayout.from_attrs(root.attrs.get("layout", {}))


def open_cohort(path: str | Path) -> xr.Dataset:
    """The whole store as an :class:`xarray.Dataset`, lazily backed by Dask (one chunk per participant).

    Every array with a leading ``participant`` axis is a variable named by its store path
    (``"dixon/station3/water"``, ``"dixon/fused/ff"``); the ``participant`` coordinate
    holds the ``<eid>_<instance>`` keys, with ``eid`` and ``instance`` as extra coordinates.
    """
    root = open_store(path, mode="r")
    participants = np.array([str(k) for k in root["participant"][:]])
    coords = {
        PARTICIPANT: participants,
        "eid": (PARTICIPANT, np.asarray(root["eid"][:])),
        "instance": (PARTICIPANT, np.asarray(root["instance"][:])),
    }
    variables = {}
    for array_path, array in root.members(max_depth=None):
        if not isinstance(array, zarr.Array) or array_path in coords:
            continue
        dims = tuple(array.metadata.dimension_names or ())
        if dims[:1] == (PARTICIPANT,):
            variables[array_path] = xr.DataArray(da.from_zarr(array), dims=dims, attrs=dict(array.attrs))
    return xr.Dataset(dict(sorted(variables.items())), coords=coords, attrs=dict(root.attrs))
