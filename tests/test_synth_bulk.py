"""The synthetic bulk zips look like UK Biobank's (shared/UKB.md): files, tags, geometry, manifests."""

from __future__ import annotations

import csv
import datetime
import io
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest

from cohortscale.io.dicom import read_zip_series
from cohortscale.protocols import (
    DIXON_PIXEL_SPACING_MM,
    UKB_DIXON_STATIONS,
    UKB_IDEAL_20254,
    UKB_MULTIECHO_20203,
    dixon_series_description,
)
from cohortscale.synth.acquisition import scaled

ZIP_NAME = re.compile(r"^(\d{7})_(20201|20254|20203)_([23])_0\.zip$")


@pytest.fixture(scope="module")
def full_scale(make_cohort) -> Path:
    """One participant at full UK Biobank scale."""
    return make_cohort("full_scale", scale=1.0, seed=3)


def dixon_zip(cohort: Path, instance: int = 2) -> Path:
    return sorted((cohort / "bulk").glob(f"*_20201_{instance}_0.zip"))[0]


def test_bulk_file_names(clean_cohort: Path) -> None:
    names = sorted(p.name for p in (clean_cohort / "bulk").iterdir())
    assert all(ZIP_NAME.match(n) for n in names), names
    eids = {ZIP_NAME.match(n).group(1) for n in names}
    assert len(eids) == 3
    for eid in eids:
        for field in ("20201", "20254", "20203"):
            for instance in ("2", "3"):
                assert f"{eid}_{field}_{instance}_0.zip" in names


def test_full_scale_dixon_matches_ukb_protocol(full_scale: Path) -> None:
    series = read_zip_series(dixon_zip(full_scale))
    assert len(series) == 24
    assert [s.number for s in series] == list(range(1, 25))
    times = [s.time for s in series]
    assert times == sorted(times) and len(set(times)) == 24
    n_files = 0
    for station in UKB_DIXON_STATIONS:
        group = series[4 * (station.number - 1) : 4 * station.number]
        for s, contrast in zip(group, ("in", "opp", "fat", "water"), strict=True):
            assert s.description == dixon_series_description(station, contrast)
            assert s.pixels.shape == (station.slices, station.rows, station.columns)
            assert s.pixels.dtype == np.uint16
            assert "M" in s.image_type
            np.testing.assert_allclose(s.affine, group[0].affine)
            ds = s.headers[0]
            assert float(ds.PixelSpacing[0]) == pytest.approx(DIXON_PIXEL_SPACING_MM, abs=1e-6)
            assert float(ds.SliceThickness) == pytest.approx(station.slice_spacing_mm)
            n_files += len(s.headers)
        # InstanceNumber runs head to foot with exactly the station's spacing and no gaps.
        headers = sorted(group[0].headers, key=lambda h: int(h.InstanceNumber))
        assert [int(h.InstanceNumber) for h in headers] == list(range(1, station.slices + 1))
        positions = np.array([h.ImagePositionPatient for h in headers], dtype=float)
        np.testing.assert_allclose(np.diff(positions[:, 2]), -station.slice_spacing_mm, atol=1e-4)
        assert float(headers[0].PixelSpacing[1]) == pytest.approx(DIXON_PIXEL_SPACING_MM, abs=1e-6)
        assert float(headers[0].SliceLocation) == pytest.approx(positions[0, 2], abs=1e-3)
        np.testing.assert_allclose(positions[:, :2], np.repeat(positions[:1, :2], len(positions), 0))
    assert n_files == 1328


def test_station_overlaps_and_orientation(clean_cohort: Path, full_scale: Path) -> None:
    for cohort in (clean_cohort, full_scale):
        series = read_zip_series(dixon_zip(cohort))
        tops, bottoms = [], []
        for s in series[::4]:
            iop = np.asarray(s.headers[0].ImageOrientationPatient, dtype=float)
            np.testing.assert_allclose(iop, [1, 0, 0, 0, 1, 0])
            z = s.affine[2, 3] + s.affine[2, 2] * np.arange(s.pixels.shape[0])
            half = abs(s.affine[2, 2]) / 2
            tops.append(z.max() + half)
            bottoms.append(z.min() - half)
        overlaps = np.array(tops[1:]) - np.array(bottoms[:-1])
        assert np.all((overlaps >= 35.0 - 1e-6) & (overlaps <= 40.0 + 1e-6)), overlaps
        assert np.all(np.diff(tops) < 0), "stations must run head to foot"


def test_header_tags(full_scale: Path) -> None:
    with zipfile.ZipFile(dixon_zip(full_scale)) as zf:
        names = [n for n in zf.namelist() if n.endswith(".dcm")]
        ds = pydicom.dcmread(io.BytesIO(zf.read(names[0])), stop_before_pixels=True)
        uids = {
            pydicom.dcmread(io.BytesIO(zf.read(n)), stop_before_pixels=True).SOPInstanceUID
            for n in names[:200]
        }
    assert len(uids) == 200
    assert ds.Manufacturer == "SIEMENS"
    assert float(ds.MagneticFieldStrength) == 1.5
    assert float(ds.ImagingFrequency) / 42.577478 == pytest.approx(1.494, abs=2e-3)
    assert float(ds.EchoTime) in (pytest.approx(2.39), pytest.approx(4.77))
    assert float(ds.RepetitionTime) == pytest.approx(6.69)
    assert float(ds.FlipAngle) == 10.0
    assert str(ds.PatientID).startswith(Path(dixon_zip(full_scale)).name[:7])
    assert ds.PatientSex in ("F", "M")
    assert re.fullmatch(r"0\d\dY", ds.PatientAge)
    assert 1.3 < float(ds.PatientSize) < 2.1 and 35 < float(ds.PatientWeight) < 200
    assert any(c in ds.InstitutionAddress for c in ("Stockport", "Newcastle", "Reading", "Bristol"))


def test_files_are_shuffled_and_manifest_has_quirks(clean_cohort: Path) -> None:
    for path in (clean_cohort / "bulk").glob("*.zip"):
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            manifest = [n for n in names if n.startswith("manifest.")]
            assert manifest in (["manifest.cvs"], ["manifest.csv"])
            lines = zf.read(manifest[0]).decode().splitlines()
            dicoms = [n for n in names if n.endswith(".dcm")]
        assert lines[0] == "patientid,date,series discription,filename"
        assert len(lines) == len(dicoms) + 1
        row = next(csv.reader([lines[1]]))
        assert len(row) == 5, "the unquoted date's comma must break naive CSV parsing"
        datetime.datetime.strptime(",".join(row[1:3]).strip(), "%b %d, %Y")
        if path.name.split("_")[1] == "20201":
            instance_numbers = []
            with zipfile.ZipFile(path) as zf:
                for n in dicoms[:30]:
                    ds = pydicom.dcmread(io.BytesIO(zf.read(n)), stop_before_pixels=True)
                    instance_numbers.append((int(ds.SeriesNumber), int(ds.InstanceNumber)))
            assert instance_numbers != sorted(instance_numbers)


@pytest.mark.parametrize(("protocol", "dynamics"), [(UKB_IDEAL_20254, 6), (UKB_MULTIECHO_20203, 1)])
def test_multiecho_series_layout(clean_cohort: Path, protocol, dynamics: int) -> None:
    path = sorted((clean_cohort / "bulk").glob(f"*_{protocol.field}_2_0.zip"))[0]
    series = read_zip_series(path)
    # Magnitude and phase series alternate, one pair per dynamic, numbered after the Dixon series.
    assert [s.image_type[2] for s in series] == ["M", "P"] * dynamics
    numbers = [s.number for s in series]
    assert numbers == list(range(numbers[0], numbers[0] + 2 * dynamics)) and numbers[0] > 24
    assert [s.time for s in series] == sorted(s.time for s in series)
    for s in series:
        assert s.description == protocol.series_description
        assert s.headers[0].MRAcquisitionType == "2D"
        assert s.pixels.shape == (
            protocol.n_echoes,
            scaled(protocol.rows, 0.25, 8),
            scaled(protocol.columns, 0.25, 8),
        )
        np.testing.assert_allclose(s.echo_times_s, protocol.echo_times_s, atol=1e-9)
        np.testing.assert_allclose(s.affine, series[0].affine)
    magnitudes = [s.pixels.astype(float) for s in series[::2]]
    if dynamics > 1:  # repeated dynamics: same anatomy, independent noise
        assert not np.array_equal(magnitudes[0], magnitudes[1])
        assert np.corrcoef(magnitudes[0].ravel(), magnitudes[1].ravel())[0, 1] > 0.95
    phase = series[1]
    stored = np.array([h.pixel_array for h in phase.headers])
    assert stored.min() >= 0 and stored.max() <= 4095
    np.testing.assert_allclose(phase.pixels, 2.0 * stored - 4096.0)


def test_configurable_echo_times(make_cohort) -> None:
    times = (1.0e-3, 2.5e-3, 4.0e-3, 5.5e-3, 7.0e-3, 8.5e-3, 10.0e-3, 11.5e-3)
    cohort = make_cohort("eight_echoes", ideal_echo_times_s=",".join(map(str, times)))
    series = read_zip_series(sorted((cohort / "bulk").glob("*_20254_2_0.zip"))[0])
    for s in series:
        np.testing.assert_allclose(s.echo_times_s, times, atol=1e-9)
        assert s.pixels.shape[0] == len(times)


def test_dcm2niix_reads_the_synthetic_series(clean_cohort: Path, tmp_path: Path) -> None:
    """A peer converter used on real UK Biobank data accepts our files (it crashes on malformed CSA)."""
    binary = shutil.which("dcm2niix", path=str(Path(sys.executable).parent)) or shutil.which("dcm2niix")
    if binary is None:
        pytest.skip("dcm2niix is not installed")
    with zipfile.ZipFile(dixon_zip(clean_cohort)) as zf:
        zf.extractall(tmp_path / "dicom")
    (tmp_path / "nifti").mkdir()
    result = subprocess.run(
        [binary, "-z", "n", "-o", str(tmp_path / "nifti"), str(tmp_path / "dicom")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert len(list((tmp_path / "nifti").glob("*.nii"))) >= 24
