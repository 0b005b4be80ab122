"""Tests of the Siemens DICOM encoder and the UK Biobank bulk-zip writer (``cohortscale.synth``)."""

from __future__ import annotations

import csv
import datetime
import io
import struct
import time
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage

from cohortscale.protocols import (
    DIXON_PIXEL_SPACING_MM,
    GAMMA_BAR_MHZ_PER_T,
    UKB_DIXON_STATIONS,
    Scanner,
)
from cohortscale.synth.bulkzip import (
    MANIFEST_HEADER,
    bulk_zip_name,
    corrupt_zip,
    write_bulk_zip,
)
from cohortscale.synth.dicomwriter import (
    DEFAULT_CSA_HEADER_BYTES,
    SeriesSpec,
    StudyInfo,
    derive_uid,
    encode_series,
    read_pixels,
    truncate_file,
)

EID = 1000107
STUDY_DATE = datetime.date(2017, 3, 4)


def make_study(suffix: str = "^Bio") -> StudyInfo:
    return StudyInfo(
        eid=EID,
        instance=2,
        patient_sex="F",
        patient_age_years=64,
        patient_size_m=1.68,
        patient_weight_kg=71.3,
        study_date=STUDY_DATE,
        study_time=datetime.time(9, 12, 3),
        institution_name="UK Biobank Imaging Centre",
        institution_address="Cheadle Royal Business Park, Stockport",
        scanner=Scanner(imaging_frequency_mhz=63.6155),
        study_instance_uid=derive_uid("study", EID, 2),
        frame_of_reference_uid=derive_uid("for", EID, 2),
        patient_id_suffix=suffix,
    )


def smooth_noisy(n: int, rows: int, cols: int, seed: int = 0) -> np.ndarray:
    """Smooth body-like content plus Rician-ish noise, uint16 in 0..4095."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:cols]
    blob = np.exp(-(((x - cols / 2) / (0.35 * cols)) ** 2 + ((y - rows / 2) / (0.4 * rows)) ** 2))
    base = 300.0 + 1500.0 * blob
    z = np.linspace(0.8, 1.2, n)[:, None, None]
    img = base[None] * z + rng.normal(0.0, 25.0, (n, rows, cols))
    return np.clip(np.rint(img), 0, 4095).astype(np.uint16)


def dixon_series(
    number: int,
    n: int = 44,
    z0: float = -100.0,
    spacing: float = 4.5,
    description: str = "Dixon_BH_17s_in",
    oblique: bool = False,
) -> SeriesSpec:
    iop = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    if oblique:  # a slightly tilted transverse plane so SliceLocation is not just z
        c, s = np.cos(0.1), np.sin(0.1)
        iop = (1.0, 0.0, 0.0, 0.0, c, -s)
    normal = np.cross(iop[:3], iop[3:])
    start = np.array([-249.0, -194.5, z0])
    pos = start[None, :] - np.arange(n)[:, None] * spacing * normal[None, :]
    return SeriesSpec(
        series_number=number,
        series_description=description,
        protocol_name="Dixon_BH_17s",
        series_time=datetime.time(9, 20, number, 500000),
        image_type=("ORIGINAL", "PRIMARY", "M", "DIXON", "IN_PHASE"),
        pixel_spacing_mm=(DIXON_PIXEL_SPACING_MM, DIXON_PIXEL_SPACING_MM),
        slice_thickness_mm=spacing,
        spacing_between_slices_mm=spacing,
        image_orientation=iop,
        positions_mm=pos,
        echo_times_ms=np.full(n, 4.77),
        echo_numbers=np.full(n, 2),
        repetition_time_ms=6.69,
        flip_angle_deg=10.0,
        series_instance_uid=derive_uid("series", EID, 2, number),
    )


def phase_series(n_echo: int = 6) -> SeriesSpec:
    te = 1.2 + 2.0 * np.arange(n_echo)
    return SeriesSpec(
        series_number=30,
        series_description="LMS IDEAL OPTIMISED LOW FLIP 6DYN",
        protocol_name="LMS IDEAL OPTIMISED LOW FLIP 6DYN",
        series_time=datetime.time(9, 40, 0),
        image_type=("ORIGINAL", "PRIMARY", "P", "ND"),
        pixel_spacing_mm=(1.71875, 1.71875),
        slice_thickness_mm=6.0,
        spacing_between_slices_mm=None,
        image_orientation=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
        positions_mm=np.tile([[-220.0, -200.0, -60.0]], (n_echo, 1)),
        echo_times_ms=te,
        echo_numbers=np.arange(1, n_echo + 1),
        repetition_time_ms=14.0,
        flip_angle_deg=5.0,
        series_instance_uid=derive_uid("series", EID, 2, 30),
        rescale_slope=2.0,
        rescale_intercept=-4096.0,
        sequence_name="*fl2d6",
    )


def parse_csa2(blob: bytes) -> dict[str, list[str]]:
    """Independent reader of a Siemens CSA2 header (SPM/nibabel layout)."""
    assert blob[:8] == b"SV10\x04\x03\x02\x01"
    n_tags, check = struct.unpack_from("<2I", blob, 8)
    assert 0 < n_tags < 1000 and check == 77
    p, out = 16, {}
    for _ in range(n_tags):
        name, vm, _vr, _dt, n_items, _x = struct.unpack_from("<64si4s3i", blob, p)
        assert n_items >= max(vm, 6)  # Siemens pads every element to at least six items
        p += 84
        items = []
        for _ in range(n_items):
            _x0, length, _x2, _x3 = struct.unpack_from("<4i", blob, p)
            p += 16
            assert p + length <= len(blob)
            items.append(blob[p : p + length].split(b"\x00")[0].decode("latin-1"))
            p += length + (-length % 4)
        out[name.split(b"\x00")[0].decode()] = items[:vm]
    return out


@pytest.fixture(scope="module")
def study() -> StudyInfo:
    return make_study()


@pytest.fixture(scope="module")
def magnitude(study: StudyInfo) -> tuple[np.ndarray, SeriesSpec, list[tuple[str, bytes]]]:
    px = smooth_noisy(44, 174, 224)
    spec = dixon_series(5, oblique=True)
    return px, spec, encode_series(px, spec, study)


def test_every_file_reads_and_has_file_meta(magnitude) -> None:
    px, _, files = magnitude
    assert len(files) == px.shape[0]
    for name, data in files:
        assert data[128:132] == b"DICM"
        head = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        assert "PixelData" not in head
        ds = pydicom.dcmread(io.BytesIO(data))
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.file_meta.MediaStorageSOPClassUID == MRImageStorage
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.SOPClassUID == MRImageStorage
        assert name == f"{ds.SOPInstanceUID}.dcm"
        assert len(ds.SOPInstanceUID) <= 64


def test_values_are_valid_and_bytes_match_pydicom_writer(magnitude) -> None:
    """Every value passes pydicom's strict validation, and pydicom re-encodes the file identically
    (so the hand-spliced per-image elements are encoded exactly as pydicom would)."""
    _, _, files = magnitude
    old = pydicom.config.settings.reading_validation_mode
    pydicom.config.settings.reading_validation_mode = pydicom.config.RAISE
    try:
        for _, data in (files[0], files[-1]):
            ds = pydicom.dcmread(io.BytesIO(data))
            for elem in ds.iterall():  # converts every raw element, validating its value
                _ = elem.value
            out = io.BytesIO()
            ds.save_as(out, enforce_file_format=True)
            assert out.getvalue() == data
    finally:
        pydicom.config.settings.reading_validation_mode = old


def test_pixels_round_trip_exactly(magnitude) -> None:
    px, _, files = magnitude
    for i, (_, data) in enumerate(files):
        arr = read_pixels(data)
        assert arr.dtype == np.uint16
        np.testing.assert_array_equal(arr, px[i])


def test_phase_series_rescales_to_signed_values(study: StudyInfo) -> None:
    spec = phase_series()
    rng = np.random.default_rng(3)
    px = rng.integers(0, 4096, (6, 232, 256), dtype=np.uint16)
    files = encode_series(px, spec, study)
    for i, (_, data) in enumerate(files):
        ds = pydicom.dcmread(io.BytesIO(data))
        assert "P" in ds.ImageType
        assert float(ds.RescaleSlope) == 2.0 and float(ds.RescaleIntercept) == -4096.0
        assert ds.RescaleType == "US"
        values = apply_modality_lut(ds.pixel_array, ds)
        np.testing.assert_array_equal(values, px[i].astype(np.int64) * 2 - 4096)
        assert "SpacingBetweenSlices" not in ds
        assert float(ds.EchoTime) == pytest.approx(1.2 + 2.0 * i)
        assert int(ds.EchoNumbers) == i + 1
    # Multi-echo single slice: one position, distinct instances.
    assert len({pydicom.dcmread(io.BytesIO(d)).SOPInstanceUID for _, d in files}) == 6


def test_geometry_round_trips(magnitude) -> None:
    _, spec, files = magnitude
    normal = np.cross(spec.image_orientation[:3], spec.image_orientation[3:])
    for i, (_, data) in enumerate(files):
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        ipp = np.array([float(v) for v in ds.ImagePositionPatient])
        np.testing.assert_allclose(ipp, spec.positions_mm[i], atol=1e-9)
        np.testing.assert_allclose(
            [float(v) for v in ds.ImageOrientationPatient], spec.image_orientation, atol=1e-12
        )
        assert [float(v) for v in ds.PixelSpacing] == pytest.approx(list(spec.pixel_spacing_mm))
        assert float(ds.SliceThickness) == pytest.approx(4.5)
        assert float(ds.SpacingBetweenSlices) == pytest.approx(4.5)
        assert float(ds.SliceLocation) == pytest.approx(float(ipp @ normal), abs=1e-9)
        assert (ds.Rows, ds.Columns) == (174, 224)
        assert int(ds.InstanceNumber) == i + 1
        assert ds.PatientPosition == "HFS"
    # Oblique plane: SliceLocation differs from the z coordinate.
    ds0 = pydicom.dcmread(io.BytesIO(files[0][1]), stop_before_pixels=True)
    assert abs(float(ds0.SliceLocation) - float(ds0.ImagePositionPatient[2])) > 1.0


def test_mr_and_equipment_tags(magnitude, study: StudyInfo) -> None:
    _, spec, files = magnitude
    ds = pydicom.dcmread(io.BytesIO(files[7][1]), stop_before_pixels=True)
    assert ds.Modality == "MR" and ds.Manufacturer == "SIEMENS"
    assert ds.ManufacturerModelName == study.scanner.model
    assert ds.SoftwareVersions == study.scanner.software_versions
    assert float(ds.MagneticFieldStrength) == 1.5
    assert float(ds.ImagingFrequency) == pytest.approx(63.6155)
    assert float(ds.ImagingFrequency) / GAMMA_BAR_MHZ_PER_T == pytest.approx(1.494, abs=1e-3)
    assert float(ds.EchoTime) == pytest.approx(4.77)
    assert int(ds.EchoNumbers) == 2
    assert float(ds.RepetitionTime) == pytest.approx(6.69)
    assert float(ds.FlipAngle) == 10.0
    assert ds.ImagedNucleus == "1H" and ds.ScanningSequence == "GR"
    assert ds.MRAcquisitionType == "3D" and ds.SequenceName == "*fl3d2"
    assert list(ds.ImageType) == list(spec.image_type) and "M" in ds.ImageType
    assert ds.SeriesDescription == "Dixon_BH_17s_in" and ds.ProtocolName == "Dixon_BH_17s"
    assert int(ds.SeriesNumber) == 5
    assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (16, 12, 11, 0)
    assert ds.PhotometricInterpretation == "MONOCHROME2" and ds.SamplesPerPixel == 1
    assert ds.StudyDate == "20170304" and ds.SeriesTime.startswith("092005.5")
    assert ds.InstitutionAddress.endswith("Stockport")
    assert "WindowCenter" in ds and "WindowWidth" in ds
    assert "RescaleSlope" not in ds


def test_patient_tags(magnitude) -> None:
    _, _, files = magnitude
    ds = pydicom.dcmread(io.BytesIO(files[0][1]), stop_before_pixels=True)
    assert str(ds.PatientName) == f"{EID}^Bio" and ds.PatientID == f"{EID}^Bio"
    assert ds.PatientSex == "F" and ds.PatientAge == "064Y"
    assert float(ds.PatientSize) == pytest.approx(1.68)
    assert float(ds.PatientWeight) == pytest.approx(71.3)


def test_uids_unique_and_deterministic(magnitude, study: StudyInfo) -> None:
    px, spec, files = magnitude
    other = dixon_series(6, description="Dixon_BH_17s_opp")
    files2 = encode_series(px, other, study)
    heads = [pydicom.dcmread(io.BytesIO(d), stop_before_pixels=True) for _, d in files + files2]
    sops = [h.SOPInstanceUID for h in heads]
    assert len(set(sops)) == len(sops)
    assert len({h.SeriesInstanceUID for h in heads}) == 2
    assert len({h.StudyInstanceUID for h in heads}) == 1
    assert len({h.FrameOfReferenceUID for h in heads}) == 1
    assert encode_series(px, spec, study) == files  # identical inputs, identical bytes


def test_csa_headers(magnitude) -> None:
    _, spec, files = magnitude
    ds = pydicom.dcmread(io.BytesIO(files[3][1]), stop_before_pixels=True)
    block = ds.private_block(0x0029, "SIEMENS CSA HEADER")
    assert ds[0x00290010].value == "SIEMENS CSA HEADER"
    assert block[0x08].value == "IMAGE NUM 4" and block[0x09].value == "20100202"
    image = block[0x10].value
    assert image[:4] == b"SV10"
    assert abs(len(image) - DEFAULT_CSA_HEADER_BYTES) <= 64
    tags = parse_csa2(image)
    assert tags["NumberOfImagesInMosaic"] == []
    assert tags["PhaseEncodingDirectionPositive"] == ["1"]
    assert tags["EchoLinePosition"] == ["87"]
    assert tags["ImaCoilString"][0]
    assert [float(v) for v in tags["ImagePositionPatient"]] == pytest.approx(
        list(spec.positions_mm[3]), abs=1e-6
    )
    np.testing.assert_allclose(
        [float(v) for v in tags["SliceNormalVector"]],
        np.cross(spec.image_orientation[:3], spec.image_orientation[3:]),
        atol=1e-8,
    )
    series = parse_csa2(block[0x20].value)
    phoenix = series["MrPhoenixProtocol"][0]
    assert "### ASCCONV BEGIN" in phoenix and "### ASCCONV END ###" in phoenix
    # Requested size is honoured for a larger budget too.
    big = encode_series(smooth_noisy(1, 174, 224), dixon_series(9, n=1), make_study(), csa_header_bytes=20000)
    blob = pydicom.dcmread(io.BytesIO(big[0][1]))[0x00291010].value
    assert abs(len(blob) - 20000) <= 64 and parse_csa2(blob)["EchoLinePosition"] == ["87"]


def test_rejects_values_over_12_bits(study: StudyInfo) -> None:
    px = np.full((1, 8, 8), 5000, dtype=np.uint16)
    with pytest.raises(ValueError, match="4095"):
        encode_series(px, dixon_series(9, n=1), study)
    with pytest.raises(ValueError, match="positions_mm"):
        encode_series(np.zeros((2, 8, 8), np.uint16), dixon_series(9, n=1), study)


def test_truncate_file_breaks_pixels(magnitude) -> None:
    _, _, files = magnitude
    data = files[0][1]
    cut = truncate_file(data, 0.5)
    assert len(cut) < len(data)
    head = pydicom.dcmread(io.BytesIO(cut), stop_before_pixels=True)  # header still readable
    assert head.Rows == 174
    try:
        arr = read_pixels(cut)
    except Exception:
        return  # raising is one acceptable outcome
    assert arr.size != 174 * 224


def test_encode_speed_report(study: StudyInfo) -> None:
    px = smooth_noisy(44, 174, 224, seed=1)
    spec = dixon_series(7)
    encode_series(px, spec, study)  # warm-up (imports, caches)
    t0 = time.perf_counter()
    files = encode_series(px, spec, study)
    per_image_ms = (time.perf_counter() - t0) / len(files) * 1e3
    print(f"\nencode_series: {per_image_ms:.3f} ms per 174x224 image (44 images)")
    assert per_image_ms < 20.0  # generous: only guards against pathological slow-downs


# ---------------------------------------------------------------------------------------------
# Bulk zips
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bulk(tmp_path_factory, magnitude) -> tuple[Path, list[tuple[str, bytes, str]]]:
    _, spec, files = magnitude
    entries = [(name, data, spec.series_description) for name, data in files]
    path = tmp_path_factory.mktemp("bulk") / bulk_zip_name(EID, 20201, 2)
    write_bulk_zip(path, entries, eid=EID, study_date=STUDY_DATE, rng=np.random.default_rng(7))
    return path, entries


def test_bulk_zip_name() -> None:
    assert bulk_zip_name(1000107, 20201, 2) == "1000107_20201_2_0.zip"
    assert bulk_zip_name(5999999, 20254, 3, 1) == "5999999_20254_3_1.zip"


def test_zip_lists_every_file_plus_manifest(bulk) -> None:
    path, entries = bulk
    with zipfile.ZipFile(path) as zf:
        assert zf.testzip() is None
        names = zf.namelist()
        assert sorted(names) == sorted([e[0] for e in entries] + ["manifest.cvs"])
        assert all(i.compress_type == zipfile.ZIP_DEFLATED for i in zf.infolist())
        assert all(i.date_time == (2017, 3, 4, 12, 0, 0) for i in zf.infolist())
        for name, data, _ in entries[:5]:
            assert zf.read(name) == data
        numbers = [
            int(pydicom.dcmread(io.BytesIO(zf.read(n)), stop_before_pixels=True).InstanceNumber)
            for n in names
            if n.endswith(".dcm")
        ]
    assert numbers != sorted(numbers)
    assert sorted(numbers) == list(range(1, len(entries) + 1))


def test_manifest_quirks(bulk) -> None:
    path, entries = bulk
    with zipfile.ZipFile(path) as zf:
        text = zf.read("manifest.cvs").decode()
    lines = text.splitlines()
    assert lines[0] == MANIFEST_HEADER == "patientid,date,series discription,filename"
    assert len(lines) == 1 + len(entries)
    rows = list(csv.reader(io.StringIO(text)))
    assert len(rows[0]) == 4
    assert all(len(r) == 5 for r in rows[1:])  # the unquoted date comma adds a field
    assert rows[1][:3] == [str(EID), "Mar 04", " 2017"]
    assert lines[1].startswith(f"{EID},Mar 04, 2017,Dixon_BH_17s_in,")
    assert sorted(r[4] for r in rows[1:]) == sorted(e[0] for e in entries)


def test_zip_bytes_deterministic_and_atomic(tmp_path: Path, bulk) -> None:
    _, entries = bulk
    a, b = tmp_path / "a" / "x.zip", tmp_path / "b" / "x.zip"
    for p in (a, b):
        write_bulk_zip(
            p,
            entries,
            eid=EID,
            study_date=STUDY_DATE,
            rng=np.random.default_rng(7),
            manifest_name="manifest.csv",
            patientid_suffix="^Bio",
        )
    assert a.read_bytes() == b.read_bytes()
    assert sorted(x.name for x in a.parent.iterdir()) == ["x.zip"]  # no temp file left behind
    with zipfile.ZipFile(a) as zf:
        assert "manifest.csv" in zf.namelist()
        assert zf.read("manifest.csv").decode().splitlines()[1].startswith(f"{EID}^Bio,")
    # A different generator gives a different order.
    c = tmp_path / "c.zip"
    write_bulk_zip(c, entries, eid=EID, study_date=STUDY_DATE, rng=np.random.default_rng(8))
    with zipfile.ZipFile(a) as za, zipfile.ZipFile(c) as zc:
        assert za.namelist()[:-1] != zc.namelist()[:-1]


def test_write_failure_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "z.zip"
    with pytest.raises(TypeError):
        write_bulk_zip(
            path,
            [("a.dcm", object(), "x")],
            eid=EID,  # type: ignore[list-item]
            study_date=STUDY_DATE,
            rng=np.random.default_rng(0),
        )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("seed", range(6))
def test_corrupt_zip_makes_zipfile_raise(tmp_path: Path, bulk, seed: int) -> None:
    src, _ = bulk
    path = tmp_path / src.name
    path.write_bytes(src.read_bytes())
    what = corrupt_zip(path, np.random.default_rng(seed))
    assert what and "\n" not in what
    with pytest.raises(zipfile.BadZipFile):
        zipfile.ZipFile(path)


def test_station_geometry_matches_protocol(study: StudyInfo) -> None:
    """One small station per protocol row: rows/cols/spacing survive encoding."""
    for st in UKB_DIXON_STATIONS[:2]:
        spec = dixon_series(st.number, n=2, spacing=st.slice_spacing_mm)
        files = encode_series(smooth_noisy(2, st.rows, st.columns), spec, study)
        ds = pydicom.dcmread(io.BytesIO(files[1][1]))
        assert (ds.Rows, ds.Columns) == (st.rows, st.columns)
        assert float(ds.SliceThickness) == st.slice_spacing_mm
