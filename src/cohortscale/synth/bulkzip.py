"""Write UK Biobank bulk zips: one zip per participant, field and visit, with the manifest quirks.

A bulk zip (``<eid>_<field>_<instance>_<array>.zip``) holds one DICOM file per 2D image in no
particular order plus a manifest — sometimes named ``manifest.cvs`` — whose header reads
``patientid,date,series discription,filename`` (sic) and whose unquoted ``Mon DD, YYYY`` dates
break naive CSV parsing (``shared/UKB.md``). Readers must trust the DICOM tags, not the manifest.

Zips are written deterministically (fixed timestamps and attributes, order from the caller's
generator) and atomically (temporary file, then :func:`os.replace`), so a killed generator never
leaves a half-written zip under the final name.
"""

from __future__ import annotations

import datetime
import os
import pathlib
import tempfile
import zipfile

import numpy as np

__all__ = ["bulk_zip_name", "corrupt_zip", "format_manifest_date", "write_bulk_zip"]

#: English month abbreviations (not locale-dependent ``strftime("%b")``).
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

#: The manifest header exactly as UK Biobank writes it (the misspelling is real).
MANIFEST_HEADER = "patientid,date,series discription,filename"

#: ``external_attr`` of every entry: a regular file, mode 0644.
_FILE_ATTR = (0o100644 & 0xFFFF) << 16


def bulk_zip_name(eid: int, field: int, instance: int, array: int = 0) -> str:
    """Bulk file name, e.g. ``bulk_zip_name(1000107, 20201, 2)`` → ``"1000107_20201_2_0.zip"``.

    Parameters
    ----------
    eid : int
        Participant id.
    field : int
        UK Biobank field id (20201 Dixon, 20203/20254 liver multi-echo).
    instance : int
        Visit: 2 first imaging visit, 3 repeat imaging visit.
    array : int
        Array index (0 for imaging bulk fields).

    Returns
    -------
    str
        ``<eid>_<field>_<instance>_<array>.zip``.
    """
    return f"{int(eid)}_{int(field)}_{int(instance)}_{int(array)}.zip"


def format_manifest_date(d: datetime.date) -> str:
    """Manifest date, ``Mar 14, 2017`` (zero-padded day; the comma is left unquoted on purpose)."""
    return f"{_MONTHS[d.month - 1]} {d.day:02d}, {d.year:04d}"


def _zip_time(study_date: datetime.date) -> tuple[int, int, int, int, int, int]:
    # Fixed time of day so the bytes depend only on the study date (zip needs year >= 1980).
    return (max(study_date.year, 1980), study_date.month, study_date.day, 12, 0, 0)


def write_bulk_zip(
    path: pathlib.Path,
    files: list[tuple[str, bytes, str]],
    *,
    eid: int,
    study_date: datetime.date,
    rng: np.random.Generator,
    manifest_name: str = "manifest.cvs",
    compresslevel: int = 6,
    patientid_suffix: str = "",
) -> None:
    """Write a bulk zip of DICOM files and its quirky manifest, atomically and deterministically.

    Parameters
    ----------
    path : pathlib.Path
        Destination, normally ``<dir>/bulk_zip_name(...)``; replaced if it exists.
    files : list of (str, bytes, str)
        ``(filename, file bytes, SeriesDescription)`` per DICOM file.
    eid : int
        Participant id written in the manifest ``patientid`` column.
    study_date : datetime.date
        Visit date: manifest ``date`` column and every entry's zip timestamp (12:00:00).
    rng : numpy.random.Generator
        Shuffles the entry order (the real zips are not in InstanceNumber order).
    manifest_name : str
        ``"manifest.cvs"`` (the real misspelling) or ``"manifest.csv"``.
    compresslevel : int
        zlib deflate level 0–9 (6: zip's usual default; 1 is ≈2× faster, slightly larger).
    patientid_suffix : str
        Appended to the eid in the ``patientid`` column (some manifests carry e.g. ``^Bio``).

    Notes
    -----
    Entries are the DICOM files in shuffled order followed by the manifest; manifest rows list the
    files in the same order. Dates are written unquoted, so ``csv`` splits each row into 5 fields
    under a 4-column header.
    """
    path = pathlib.Path(path)
    names = [f[0] for f in files]
    if len(set(names)) != len(names):
        raise ValueError("duplicate file names in bulk zip")
    if manifest_name in names:
        raise ValueError(f"a DICOM file is named like the manifest ({manifest_name})")
    order = rng.permutation(len(files))
    date_text = format_manifest_date(study_date)
    patientid = f"{int(eid)}{patientid_suffix}"
    rows = [MANIFEST_HEADER]
    rows.extend(f"{patientid},{date_text},{files[k][2]},{files[k][0]}" for k in order)
    manifest = ("\n".join(rows) + "\n").encode("utf-8")
    stamp = _zip_time(study_date)

    def entry(name: str) -> zipfile.ZipInfo:
        info = zipfile.ZipInfo(name, date_time=stamp)
        info.compress_type = zipfile.ZIP_DEFLATED
        info.create_system = 3  # fixed (default depends on the writing platform)
        info.external_attr = _FILE_ATTR
        return info

    path.parent.mkdir(parents=True, exist_ok=True)
    # Same directory as the target so os.replace is an atomic rename on one filesystem.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        # mkstemp creates 0600; a bulk file is an ordinary readable file.
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as fh, zipfile.ZipFile(fh, "w") as zf:
            for k in order:
                name, data, _ = files[k]
                zf.writestr(entry(name), data, compresslevel=compresslevel)
            zf.writestr(entry(manifest_name), manifest, compresslevel=compresslevel)
        os.replace(tmp_name, path)
    except BaseException:
        # Never leave the temporary behind, whatever interrupted us.
        pathlib.Path(tmp_name).unlink(missing_ok=True)
        raise


def corrupt_zip(path: pathlib.Path, rng: np.random.Generator) -> str:
    """Damage a zip in place so that ``zipfile.ZipFile(path)`` raises ``BadZipFile``.

    Two kinds of damage, chosen by ``rng``: *truncate* (an interrupted download: the file is cut
    at 20–90 % of its length, losing the central directory, the end record and part of the entry
    data) or *zero-tail* (the last 1–8 KiB, which hold the end-of-central-directory record,
    overwritten with zeros; the length stays the same).

    Parameters
    ----------
    path : pathlib.Path
        An existing zip file.
    rng : numpy.random.Generator
        Chooses the kind and extent of the damage.

    Returns
    -------
    str
        One line describing the damage, e.g. ``"truncated 1234567 -> 456789 bytes (37.0%)"``.
    """
    path = pathlib.Path(path)
    data = bytearray(path.read_bytes())
    size = len(data)
    if rng.random() < 0.5:
        keep = int(size * rng.uniform(0.2, 0.9))
        data = data[:keep]
        what = f"truncated {size} -> {keep} bytes ({100.0 * keep / size:.1f}%)"
    else:
        n = min(size, int(rng.integers(1024, 8193)))
        data[size - n :] = bytes(n)
        what = f"zeroed the last {n} of {size} bytes (end-of-central-directory lost)"
    # zipfile scans the last 64 KiB for an end record: make sure no stray signature survives
    # (deflated data could contain one by chance).
    sig = b"PK\x05\x06"
    tail = max(0, len(data) - (1 << 16) - 22)
    at = data.find(sig, tail)
    while at >= 0:
        data[at : at + 4] = b"\x00\x00\x00\x00"
        at = data.find(sig, at + 4)
    path.write_bytes(bytes(data))
    return what
