"""The fast header reader agrees with pydicom, and gives way to it for anything unusual."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, MRImageStorage, generate_uid

from cohortscale.io.fastdicom import WANTED, read_header
from cohortscale.synth.dicomwriter import truncate_file


def zip_files(path: Path, limit: int) -> list[bytes]:
    with zipfile.ZipFile(path) as zf:
        return [zf.read(n) for n in zf.namelist() if n.endswith(".dcm")][:limit]


def test_agrees_with_pydicom_on_synthetic_files(clean_cohort: Path) -> None:
    paths = sorted((clean_cohort / "bulk").glob("*_2_0.zip"))
    checked = 0
    for path in paths[:3]:
        for data in zip_files(path, 60):
            fast = read_header(data)
            reference = pydicom.dcmread(io.BytesIO(data))
            assert fast is not None
            for keyword, _ in WANTED.values():
                if keyword not in reference:
                    assert keyword not in fast
                    continue
                expected = reference[keyword].value
                got = getattr(fast, keyword)
                if isinstance(got, list):
                    assert [str(v) for v in got] == [str(v) for v in expected] or np.allclose(got, expected)
                elif isinstance(got, float):
                    assert got == pytest.approx(float(expected))
                else:
                    assert got == expected, keyword
            np.testing.assert_array_equal(fast.pixel_array, reference.pixel_array)
            assert fast.pixel_array.dtype == reference.pixel_array.dtype
            checked += 1
    assert checked > 100


def test_truncated_files(clean_cohort: Path) -> None:
    data = zip_files(sorted((clean_cohort / "bulk").glob("*_20201_2_0.zip"))[0], 1)[0]
    header = read_header(truncate_file(data, 0.99))
    assert header is not None
    with pytest.raises(ValueError, match="truncated"):
        _ = header.pixel_array
    with pytest.raises(ValueError, match="truncated"):
        read_header(data[:400])


def _dataset(transfer_syntax: str) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = MRImageStorage
    ds.SeriesInstanceUID = generate_uid()
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M"]
    item = Dataset()
    item.ReferencedSOPInstanceUID = generate_uid()
    item.is_undefined_length_sequence_item = True
    ds.ReferencedImageSequence = Sequence([item])
    ds["ReferencedImageSequence"].is_undefined_length = True
    ds.ImagePositionPatient = [1.5, -2.25, 30.0]
    ds.Rows, ds.Columns = 3, 4
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1, 16, 12, 11
    ds.PixelRepresentation = 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = np.arange(12, dtype="<u2").tobytes()
    return ds


def _encode(ds: Dataset, implicit: bool) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, implicit_vr=implicit, little_endian=True, enforce_file_format=True)
    return buffer.getvalue()


def test_undefined_length_sequences_are_skipped() -> None:
    data = _encode(_dataset(ExplicitVRLittleEndian), implicit=False)
    header = read_header(data)
    assert header is not None
    assert header.ImagePositionPatient == [1.5, -2.25, 30.0]
    np.testing.assert_array_equal(header.pixel_array, np.arange(12).reshape(3, 4))


def test_other_encodings_fall_back_to_pydicom() -> None:
    assert read_header(_encode(_dataset(ImplicitVRLittleEndian), implicit=True)) is None
    assert read_header(b"not a dicom file at all" * 10) is None
