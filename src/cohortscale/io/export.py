"""NIfTI and NRRD export of volumes on the fused neck-to-knee grid, with correct affines.

Orientation
-----------
The cohort store keeps volumes as arrays ``[slice, row, column]`` (``[z, y, x]``) and an affine that maps
the *reversed* index ``(column, row, slice, 1)`` = ``(x, y, z, 1)`` to DICOM patient coordinates, LPS
(+x towards the patient's left, +y posterior, +z superior), in mm. Both formats store the data with axes
``(x, y, z)``, x varying fastest, so the voxel index is the same ``(x, y, z)`` in the store and in the files:

* NIfTI-1 (``.nii.gz``) world space is RAS (+x towards the patient's right, +y anterior, +z superior):
  x and y negated with respect to LPS. The sform and qform are ``diag(-1, -1, 1, 1) @ affine``
  (:func:`lps_to_ras`), both with code 1 (scanner); units mm.
* NRRD (``.nrrd``) declares its space explicitly; it is written as ``left-posterior-superior`` with
  ``space directions`` (one LPS vector per axis, mm) and ``space origin`` taken unchanged from the affine.

The voxel ``(x, y, z)`` therefore sits at the same physical point in both files (a point
``(l, p, s)`` in LPS is ``(-l, -p, s)`` in RAS), and at the point the store's affine gives it. Viewers
(3D Slicer, ITK-SNAP, FSLeyes, nibabel, SimpleITK) display the two files overlaid.

Exported files are named ``<participant>_<name>.<ext>`` where ``name`` is the last two components of the
array's store path joined by ``_`` (``dixon/fused/water`` → ``1000107_2_fused_water.nii.gz``,
``labels/tissue`` → ``1000107_2_labels_tissue.nrrd``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import zarr

from cohortscale.geometry import LPS_TO_RAS
from cohortscale.io.store import open_store, participant_rows
from cohortscale.protocols import DIXON_CONTRASTS

#: The fused grid's affine ``[P, 4, 4]``: ``(x, y, z)`` index → LPS mm; NaN until a visit is fused.
FUSED_AFFINE = "dixon/fused/affine"
#: Volumes on the fused grid that fusion writes, in the order they are exported by default.
FUSED_ARRAYS = tuple(f"dixon/fused/{c}" for c in (*DIXON_CONTRASTS, "ff"))
#: Export formats and their file extensions.
FORMATS = {"nifti": ".nii.gz", "nrrd": ".nrrd"}
#: gzip level of NRRD files: nibabel's default for ``.nii.gz``; level 9 is several times slower for ~5 % less.
GZIP_LEVEL = 1


class ExportError(ValueError):
    """A volume cannot be exported; the message names the participant and the array."""


class UnknownParticipantError(ExportError):
    """The participant key is not a row of the store."""


class MissingArrayError(ExportError):
    """The array is absent from the store or not a ``[P, Z, Y, X]`` volume on the fused grid."""


class NotFusedError(ExportError):
    """The participant's fused affine is NaN: the fusion stage has not written this visit yet."""


def lps_to_ras(affine: np.ndarray) -> np.ndarray:
    """The RAS affine of an LPS affine: ``diag(-1, -1, 1, 1) @ affine``.

    Parameters
    ----------
    affine : ndarray, shape (4, 4)
        Maps ``(x, y, z, 1)`` voxel indices to DICOM LPS, mm.

    Returns
    -------
    ndarray, shape (4, 4)
        Maps the same indices to RAS (NIfTI world space), mm.
    """
    return LPS_TO_RAS @ np.asarray(affine, dtype=float)


def _xyz(volume_zyx: np.ndarray) -> np.ndarray:
    """A stored ``[Z, Y, X]`` volume as the ``(x, y, z)`` view both formats write (no copy)."""
    volume = np.asarray(volume_zyx)
    if volume.ndim != 3:
        raise ValueError(f"expected a [Z, Y, X] volume, got shape {volume.shape}")
    return volume.transpose(2, 1, 0)


def write_nifti(volume_zyx: np.ndarray, affine_lps: np.ndarray, path: str | Path) -> Path:
    """Write a volume as NIfTI-1, data axes ``(x, y, z)`` and sform = qform = the RAS affine.

    Parameters
    ----------
    volume_zyx : ndarray, shape (Z, Y, X)
        The volume as stored, ``[slice, row, column]``; its dtype (e.g. uint16, float32) is kept.
    affine_lps : ndarray, shape (4, 4)
        Maps ``(x, y, z, 1)`` to LPS, mm.
    path : str or Path
        Output file, normally ``*.nii.gz`` (gzip-compressed by the extension).

    Returns
    -------
    Path
        ``path``.
    """
    volume = _xyz(volume_zyx)
    ras = lps_to_ras(affine_lps)
    # The transposed view is Fortran-ordered, which is NIfTI's on-disk order: no copy.
    image = nib.Nifti1Image(volume, ras)
    image.header.set_data_dtype(volume.dtype)
    image.header.set_xyzt_units(xyz="mm", t="sec")
    image.set_sform(ras, code=1)
    # qform is a rotation + zooms: exact for DICOM grids (orthogonal), the nearest one for sheared affines.
    image.set_qform(ras, code=1)
    path = Path(path)
    nib.save(image, path)
    return path


def write_nrrd(volume_zyx: np.ndarray, affine_lps: np.ndarray, path: str | Path) -> Path:
    """Write a volume as gzip-encoded NRRD in ``left-posterior-superior`` space, data axes ``(x, y, z)``.

    Parameters
    ----------
    volume_zyx : ndarray, shape (Z, Y, X)
        The volume as stored, ``[slice, row, column]``; its dtype is kept.
    affine_lps : ndarray, shape (4, 4)
        Maps ``(x, y, z, 1)`` to LPS, mm; its columns are the ``space directions`` and ``space origin``.
    path : str or Path
        Output file, normally ``*.nrrd``.

    Returns
    -------
    Path
        ``path``.
    """
    volume = _xyz(volume_zyx)
    affine = np.asarray(affine_lps, dtype=float)
    header = {
        "space": "left-posterior-superior",
        # One row per data axis (x, y, z): the LPS step of one voxel along it.
        "space directions": affine[:3, :3].T.copy(),
        "space origin": affine[:3, 3].copy(),
        "space units": ["mm", "mm", "mm"],
        "kinds": ["domain", "domain", "domain"],
        "encoding": "gzip",
    }
    path = Path(path)
    nrrd.write(str(path), volume, header, index_order="F", compression_level=GZIP_LEVEL)
    return path


def export_name(array_path: str) -> str:
    """File-name stem of an array: the last two components of its path joined by ``_``.

    ``dixon/fused/water`` → ``fused_water``; ``labels/tissue`` → ``labels_tissue``.
    """
    return "_".join(array_path.strip("/").split("/")[-2:])


def default_arrays(root: zarr.Group) -> list[str]:
    """The fused contrasts present in the store (``dixon/fused/{in,opp,fat,water,ff}``)."""
    return [p for p in FUSED_ARRAYS if p in root]


def export_participant(
    store: str | Path | zarr.Group,
    participant: str,
    out_dir: str | Path,
    arrays: Sequence[str] | None = None,
    formats: Sequence[str] = ("nifti", "nrrd"),
) -> list[Path]:
    """Export one visit's volumes on the fused grid to NIfTI and/or NRRD.

    Everything is checked before the first file is written, so an error leaves no partial export.

    Parameters
    ----------
    store : str, Path or zarr.Group
        The cohort store (opened read-only if a path).
    participant : str
        Visit key ``<eid>_<instance>``, e.g. ``"1000107_2"``.
    out_dir : str or Path
        Output folder (created if missing).
    arrays : sequence of str, optional
        Store paths of ``[P, Z, Y, X]`` arrays on the fused grid (georeferenced by ``dixon/fused/affine``),
        e.g. ``"dixon/fused/water"`` or ``"labels/<model>"``. Default: the fused contrasts present.
    formats : sequence of {"nifti", "nrrd"}
        Formats to write.

    Returns
    -------
    list of Path
        Written files, ``<out_dir>/<participant>_<name>.nii.gz`` / ``.nrrd`` (``name``: see
        :func:`export_name`), array by array, in the order of ``formats``.

    Raises
    ------
    UnknownParticipantError, MissingArrayError, NotFusedError
        Subclasses of :class:`ExportError` (a ``ValueError``), raised also for an unknown format or for
        arrays whose file names would collide.
    """
    root = open_store(store, mode="r") if isinstance(store, str | Path) else store
    formats = list(dict.fromkeys(formats))  # a format asked twice is written once
    unknown_formats = [f for f in formats if f not in FORMATS]
    if unknown_formats:
        raise ExportError(f"unknown export format(s) {unknown_formats}; choose from {sorted(FORMATS)}")
    row = participant_rows(root).get(participant)
    if row is None:
        raise UnknownParticipantError(f"participant {participant!r} is not in the store")
    arrays = default_arrays(root) if arrays is None else list(dict.fromkeys(a.strip("/") for a in arrays))
    if not arrays:
        raise MissingArrayError(
            f"participant {participant!r}: the store holds no fused volumes ({', '.join(FUSED_ARRAYS)})"
        )
    names = [export_name(a) for a in arrays]
    if len(set(names)) != len(names):
        raise ExportError(
            f"participant {participant!r}: arrays {arrays} would share file names {names}; export them apart"
        )
    if FUSED_AFFINE not in root:
        raise NotFusedError(
            f"participant {participant!r}, array {arrays[0]!r}: the store has no {FUSED_AFFINE} (not fused)"
        )
    affine = np.asarray(root[FUSED_AFFINE][row], dtype=float)
    if not np.isfinite(affine).all():
        raise NotFusedError(
            f"participant {participant!r}, array {arrays[0]!r}: {FUSED_AFFINE} is NaN (not fused yet)"
        )
    grid = next((root[p].shape[1:] for p in FUSED_ARRAYS if p in root), None)
    for array_path in arrays:
        _check_array(root, array_path, participant, grid)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    writers = {"nifti": write_nifti, "nrrd": write_nrrd}
    written = []
    for array_path, name in zip(arrays, names, strict=True):
        volume = np.asarray(root[array_path][row])
        for fmt in formats:
            written.append(writers[fmt](volume, affine, out / f"{participant}_{name}{FORMATS[fmt]}"))
    return written


def _check_array(root: zarr.Group, array_path: str, participant: str, grid: tuple[int, ...] | None) -> None:
    """Raise :class:`MissingArrayError` unless ``array_path`` is a [P, Z, Y, X] array of the fused grid."""
    where = f"participant {participant!r}, array {array_path!r}"
    node = root.get(array_path)
    if not isinstance(node, zarr.Array):
        raise MissingArrayError(f"{where}: no such array in the store")
    if node.ndim != 4:
        raise MissingArrayError(f"{where}: expected [participant, z, y, x], got shape {node.shape}")
    # The fused affine only georeferences arrays of the fused grid's shape (not, e.g., raw stations).
    if grid is not None and node.shape[1:] != grid:
        raise MissingArrayError(f"{where}: shape {node.shape[1:]} is not the fused grid {grid}")
