"""Encode 2D MR images as Siemens-style DICOM Part-10 files, as UK Biobank bulk zips hold them.

Every image becomes one MR Image Storage file (explicit VR little endian, uncompressed) with the
tags a Siemens MAGNETOM writes: patient, study, series and equipment modules, MR acquisition
parameters, patient geometry, and the Siemens private blocks — including a genuine CSA2
(``SV10``) image header and a series header carrying an ``MrPhoenixProtocol`` ASCCONV block
(``shared/UKB.md``).

Speed matters: a full-scale Dixon participant is 1,328 images. :func:`encode_series` therefore
builds one template :class:`pydicom.dataset.Dataset` per series, lets pydicom encode the elements
that are the same for every image once, and per image encodes only the handful of elements that
change (SOP instance UID, position, echo, windowing, CSA image header, pixel data), splicing bytes
in tag order. The result is byte-identical to what ``pydicom.dcmwrite`` produces for the same
dataset (the tests check this), at well under a millisecond per image.

Everything is deterministic: UIDs come from :func:`derive_uid` (a hash of the inputs) and no
wall-clock time is read anywhere, so identical inputs give identical bytes.
"""

from __future__ import annotations

import datetime
import io
import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from cohortscale.protocols import Scanner

__all__ = [
    "SeriesSpec",
    "StudyInfo",
    "build_csa2",
    "derive_uid",
    "encode_series",
    "read_pixels",
    "truncate_file",
]

#: Largest stored value: the files declare BitsStored 12 like Siemens magnitude/phase images.
MAX_STORED_VALUE = 4095

#: ImplementationClassUID written into every file meta (fixed, so bytes never depend on pydicom).
IMPLEMENTATION_CLASS_UID = generate_uid(entropy_srcs=["cohortscale", "dicomwriter", "v1"])
IMPLEMENTATION_VERSION_NAME = "COHORTSCALE_1"

#: Default wall-clock gap between consecutive images' ContentTime, s (reconstruction order).
CONTENT_TIME_STEP_S = 0.0025


@dataclass(frozen=True)
class StudyInfo:
    """Participant and visit level content shared by every series of one bulk zip.

    Attributes
    ----------
    eid : int
        UK Biobank participant id.
    instance : int
        Visit: 2 (first imaging visit) or 3 (repeat imaging visit).
    patient_sex : str
        ``"F"`` or ``"M"``.
    patient_age_years : int
        Age at the visit, years (written as ``064Y``).
    patient_size_m : float
        Height, m.
    patient_weight_kg : float
        Weight, kg.
    study_date, study_time : datetime.date, datetime.time
        StudyDate / StudyTime.
    institution_name, institution_address : str
        Imaging centre (InstitutionAddress names Stockport/Cheadle, Newcastle, Reading, Bristol).
    scanner : Scanner
        Manufacturer, model, field strength, imaging frequency, software version.
    study_instance_uid, frame_of_reference_uid : str
        Study and frame-of-reference UIDs (see :func:`derive_uid`).
    patient_id_suffix : str
        Appended to the eid in PatientName / PatientID, e.g. ``"^Bio"``.
    """

    eid: int
    instance: int
    patient_sex: str
    patient_age_years: int
    patient_size_m: float
    patient_weight_kg: float
    study_date: datetime.date
    study_time: datetime.time
    institution_name: str
    institution_address: str
    scanner: Scanner
    study_instance_uid: str
    frame_of_reference_uid: str
    patient_id_suffix: str = ""

    @property
    def patient_id(self) -> str:
        """PatientName / PatientID as written: the eid plus :attr:`patient_id_suffix`."""
        return f"{self.eid}{self.patient_id_suffix}"


@dataclass(frozen=True)
class SeriesSpec:
    """One DICOM series: acquisition parameters and per-image geometry.

    Attributes
    ----------
    series_number : int
        SeriesNumber.
    series_description, protocol_name : str
        SeriesDescription (e.g. ``Dixon_BH_17s_W``) and ProtocolName.
    series_time : datetime.time
        SeriesTime; increases with series number (a repeated station comes later).
    image_type : tuple of str
        ImageType, e.g. ``("ORIGINAL", "PRIMARY", "M", "DIXON", "W")`` or, for phase,
        ``("ORIGINAL", "PRIMARY", "P", "ND")``.
    pixel_spacing_mm : tuple of float
        (row spacing, column spacing) exactly as DICOM PixelSpacing, mm.
    slice_thickness_mm : float
        SliceThickness, mm.
    spacing_between_slices_mm : float or None
        SpacingBetweenSlices, mm; omitted when None.
    image_orientation : tuple of 6 float
        ImageOrientationPatient: row direction then column direction, LPS unit vectors.
    positions_mm : numpy.ndarray
        (n_images, 3) ImagePositionPatient (centre of the first voxel) per image, LPS mm.
    echo_times_ms : numpy.ndarray
        (n_images,) EchoTime per image, ms.
    echo_numbers : numpy.ndarray
        (n_images,) EchoNumbers per image, 1-based.
    repetition_time_ms : float
        RepetitionTime, ms.
    flip_angle_deg : float
        FlipAngle, degrees.
    series_instance_uid : str
        SeriesInstanceUID (see :func:`derive_uid`).
    rescale_slope, rescale_intercept : float or None
        RescaleSlope / RescaleIntercept (Siemens phase: 2 and −4096); omitted when None.
    acquisition_type : str
        MRAcquisitionType: ``"3D"`` (the Dixon slabs) or ``"2D"`` (the multi-echo slice).
    sequence_name : str
        SequenceName, e.g. ``*fl3d2``.
    body_part : str
        BodyPartExamined.
    """

    series_number: int
    series_description: str
    protocol_name: str
    series_time: datetime.time
    image_type: tuple[str, ...]
    pixel_spacing_mm: tuple[float, float]
    slice_thickness_mm: float
    spacing_between_slices_mm: float | None
    image_orientation: tuple[float, float, float, float, float, float]
    positions_mm: np.ndarray
    echo_times_ms: np.ndarray
    echo_numbers: np.ndarray
    repetition_time_ms: float
    flip_angle_deg: float
    series_instance_uid: str
    rescale_slope: float | None = None
    rescale_intercept: float | None = None
    sequence_name: str = "*fl3d2"
    acquisition_type: str = "3D"
    body_part: str = "ABDOMEN"

    @property
    def slice_normal(self) -> np.ndarray:
        """Unit normal (row direction × column direction), LPS."""
        iop = np.asarray(self.image_orientation, dtype=float)
        n = np.cross(iop[:3], iop[3:])
        return n / np.linalg.norm(n)


def derive_uid(*parts: object) -> str:
    """A deterministic DICOM UID from any values (hash of their ``str``; no clock, no randomness).

    Parameters
    ----------
    *parts : object
        Values identifying the entity, e.g. ``("study", eid, instance)``.

    Returns
    -------
    str
        A UID under pydicom's root, at most 64 characters.
    """
    return str(generate_uid(entropy_srcs=[str(p) for p in parts]))


# ----------------------------------------------------------------------------------------------
# Value formatting (DICOM DS/IS/DA/TM rules)
# ----------------------------------------------------------------------------------------------


def _ds(x: float) -> str:
    """A DS string of at most 16 characters with as many significant digits as fit."""
    x = float(x)
    if x == 0.0:
        return "0"  # also avoids "-0"
    for digits in range(15, 0, -1):
        s = f"{x:.{digits}g}"
        if len(s) <= 16:
            return s.replace("e+", "e")
    raise ValueError(f"cannot format {x!r} as DS")


def _csa_num(x: float) -> str:
    """Numbers inside CSA headers: Siemens writes fixed 8 decimals (``2.39000000``)."""
    return f"{float(x):.8f}"


def _da(d: datetime.date) -> str:
    return f"{d.year:04d}{d.month:02d}{d.day:02d}"


def _tm(t: datetime.time) -> str:
    # Siemens writes 6 fractional digits.
    return f"{t.hour:02d}{t.minute:02d}{t.second:02d}.{t.microsecond:06d}"


# ----------------------------------------------------------------------------------------------
# Siemens CSA2 ("SV10") binary headers
# ----------------------------------------------------------------------------------------------

#: Syngo data-type codes by VR (plausible; readers ignore them).
_SYNGODT = {
    "DS": 3,
    "FD": 4,
    "FL": 5,
    "IS": 6,
    "SL": 7,
    "SS": 8,
    "UL": 9,
    "US": 10,
    "CS": 16,
    "LO": 19,
    "LT": 20,
    "SH": 22,
    "ST": 23,
    "UI": 25,
    "UN": 27,
    "OB": 27,
}

_CSA_HEAD = struct.Struct("<64si4s3i")
_CSA_ITEM = struct.Struct("<4i")


#: Size of the CSA image header (0029,1010), bytes (real Siemens headers run from ~10 kB to ~90 kB).
DEFAULT_CSA_HEADER_BYTES = 16384

#: Siemens writes at least this many items per CSA2 element, the unused ones empty; readers such as
#: dcm2niix rely on it (they read a fixed number of items of some elements).
CSA_MIN_ITEMS = 6


def _csa_element(name: str, vr: str, values: Sequence[str]) -> bytes:
    """Encode one CSA2 element: 84-byte header, then per item a 16-byte item header and its
    null-terminated text padded to 4 bytes; items beyond the values are empty, as Siemens writes them."""
    n_items = max(len(values), CSA_MIN_ITEMS)
    # VM = number of values (0 for empty); the last header int (77 with data, 205 without) is a
    # marker readers ignore.
    out = [
        _CSA_HEAD.pack(
            name.encode("ascii"),
            len(values),
            vr.encode("ascii"),
            _SYNGODT.get(vr, 0),
            n_items,
            77 if values else 205,
        )
    ]
    for v in values:
        data = v.encode("latin-1") + b"\x00"  # null-terminated text, length includes the null
        n = len(data)
        out.append(_CSA_ITEM.pack(n, n, 77, n))
        out.append(data + b"\x00" * (-n % 4))
    out.extend(_CSA_ITEM.pack(0, 0, 77, 0) for _ in range(n_items - len(values)))
    return b"".join(out)


def build_csa2(elements: Sequence[tuple[str, str, Sequence[str]]], total_bytes: int = 0) -> bytes:
    """A Siemens CSA2 (``SV10``) header from ``(name, VR, values)`` triples.

    Parameters
    ----------
    elements : sequence of (str, str, sequence of str)
        Element name (≤ 63 characters), VR (``"DS"``, ``"IS"``, ``"LO"`` …) and its values as
        text; an empty value list writes an empty element (e.g. ``NumberOfImagesInMosaic``).
    total_bytes : int
        Pad with zero bytes to this length, bytes (no padding when the content is longer).

    Returns
    -------
    bytes
        ``SV10`` + ``04 03 02 01`` + n_tags + 77, then the elements, then 4 zero bytes and padding;
        even length as DICOM OB requires.
    """
    body = [b"SV10\x04\x03\x02\x01", struct.pack("<2I", len(elements), 77)]
    body.extend(_csa_element(name, vr, vals) for name, vr, vals in elements)
    body.append(b"\x00" * 4)
    return _pad_even(b"".join(body), total_bytes)


def _pad_even(data: bytes, total_bytes: int) -> bytes:
    """Zero-pad to ``total_bytes`` (if shorter), then to even length (DICOM OB values are even)."""
    pad = max(total_bytes - len(data), 0)
    pad += (len(data) + pad) % 2
    return data + b"\x00" * pad


class _CsaImageTemplate:
    """CSA image header of one series: static elements encoded once, per-image ones per call."""

    def __init__(
        self, elements: list[tuple[str, str, Sequence[str] | Callable[[int], list[str]]]], total_bytes: int
    ) -> None:
        self._total = total_bytes
        self._head = b"SV10\x04\x03\x02\x01" + struct.pack("<2I", len(elements), 77)
        # Each slot: pre-encoded bytes, or (name, vr, fn(index) -> values) to encode per image.
        self._slots: list[bytes | tuple[str, str, Callable[[int], list[str]]]] = []
        for name, vr, vals in elements:
            if callable(vals):
                self._slots.append((name, vr, vals))
            else:
                self._slots.append(_csa_element(name, vr, list(vals)))

    def encode(self, index: int) -> bytes:
        parts = [self._head]
        for slot in self._slots:
            if isinstance(slot, bytes):
                parts.append(slot)
            else:
                name, vr, fn = slot
                parts.append(_csa_element(name, vr, fn(index)))
        parts.append(b"\x00" * 4)
        return _pad_even(b"".join(parts), self._total)


# ----------------------------------------------------------------------------------------------
# Minimal explicit-VR-little-endian element encoder for the per-image elements
# ----------------------------------------------------------------------------------------------

_LONG_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
_PAD_NULL = {"UI", "OB", "OW", "UN"}


def _element(tag: int, vr: str, value: bytes) -> bytes:
    """Encode one data element in explicit VR little endian (value padded to even length)."""
    if len(value) % 2:
        value += b"\x00" if vr in _PAD_NULL else b" "
    group, elem = tag >> 16, tag & 0xFFFF
    if vr in _LONG_VRS:
        return struct.pack("<HH2sHI", group, elem, vr.encode(), 0, len(value)) + value
    return struct.pack("<HH2sH", group, elem, vr.encode(), len(value)) + value


def _file_meta(sop_instance_uid: str) -> bytes:
    """Preamble, ``DICM`` and a complete File Meta Information group for one image."""
    body = b"".join(
        (
            _element(0x00020001, "OB", b"\x00\x01"),
            _element(0x00020002, "UI", MRImageStorage.encode()),
            _element(0x00020003, "UI", sop_instance_uid.encode()),
            _element(0x00020010, "UI", ExplicitVRLittleEndian.encode()),
            _element(0x00020012, "UI", IMPLEMENTATION_CLASS_UID.encode()),
            _element(0x00020013, "SH", IMPLEMENTATION_VERSION_NAME.encode()),
        )
    )
    return b"\x00" * 128 + b"DICM" + _element(0x00020000, "UL", struct.pack("<I", len(body))) + body


# Per-image elements, in ascending tag order: (tag, VR).
_T_CONTENT_DATE = 0x00080023
_T_CONTENT_TIME = 0x00080033
_T_SOP_INSTANCE_UID = 0x00080018
_T_ECHO_TIME = 0x00180081
_T_ECHO_NUMBERS = 0x00180086
_T_SLICE_POSITION_PCS = 0x00191015
_T_INSTANCE_NUMBER = 0x00200013
_T_IPP = 0x00200032
_T_SLICE_LOCATION = 0x00201041
_T_SMALLEST = 0x00280106
_T_LARGEST = 0x00280107
_T_WINDOW_CENTER = 0x00281050
_T_WINDOW_WIDTH = 0x00281051
_T_CSA_IMAGE = 0x00291010
_T_SLICE_POSITION_TEXT = 0x0051100D
_T_PIXEL_DATA = 0x7FE00010

_DYNAMIC: dict[int, str] = {
    _T_SOP_INSTANCE_UID: "UI",
    _T_CONTENT_DATE: "DA",
    _T_CONTENT_TIME: "TM",
    _T_ECHO_TIME: "DS",
    _T_ECHO_NUMBERS: "IS",
    _T_SLICE_POSITION_PCS: "FD",
    _T_INSTANCE_NUMBER: "IS",
    _T_IPP: "DS",
    _T_SLICE_LOCATION: "DS",
    _T_SMALLEST: "US",
    _T_LARGEST: "US",
    _T_WINDOW_CENTER: "DS",
    _T_WINDOW_WIDTH: "DS",
    _T_CSA_IMAGE: "OB",
    _T_SLICE_POSITION_TEXT: "SH",
    _T_PIXEL_DATA: "OW",
}


def _encode_static(ds: Dataset) -> bytes:
    """Let pydicom encode ``ds`` (no file meta) in explicit VR little endian."""
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = False
    write_dataset(fp, ds)
    return fp.getvalue()


def _station_name(institution_name: str) -> str:
    # Siemens StationName looks like "MRC40123"; derive it from the centre so it is stable.
    return f"MRC{zlib.crc32(institution_name.encode()) % 100000:05d}"


def _coil_string(table_z_mm: float) -> str:
    # Coil elements follow the table station: head/neck, body array + spine, then leg coils.
    if table_z_mm > -150.0:
        return "HE4;NE1,2;SP1"
    if table_z_mm > -700.0:
        return "BO1,2;SP3-5"
    return "PA1,2;SP7,8"


# ----------------------------------------------------------------------------------------------
# Series template
# ----------------------------------------------------------------------------------------------


def _template(series: SeriesSpec, study: StudyInfo, rows: int, cols: int) -> Dataset:
    """The full dataset of the series' first image; static elements are taken from it."""
    sc = study.scanner
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = list(series.image_type)
    ds.InstanceCreationDate = _da(study.study_date)
    ds.InstanceCreationTime = _tm(series.series_time)
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = "1.2"  # per image
    ds.StudyDate = _da(study.study_date)
    ds.SeriesDate = _da(study.study_date)
    ds.AcquisitionDate = _da(study.study_date)
    ds.ContentDate = _da(study.study_date)  # per image
    ds.StudyTime = _tm(study.study_time)
    ds.SeriesTime = _tm(series.series_time)
    ds.AcquisitionTime = _tm(series.series_time)
    ds.ContentTime = _tm(series.series_time)  # per image
    ds.AccessionNumber = ""
    ds.Modality = "MR"
    ds.Manufacturer = sc.manufacturer
    ds.InstitutionName = study.institution_name
    ds.InstitutionAddress = study.institution_address
    ds.ReferringPhysicianName = ""
    ds.StationName = _station_name(study.institution_name)
    ds.SeriesDescription = series.series_description
    ds.ManufacturerModelName = sc.model

    ds.PatientName = study.patient_id
    ds.PatientID = study.patient_id
    ds.PatientBirthDate = ""  # pseudonymised
    ds.PatientSex = study.patient_sex
    ds.PatientAge = f"{int(study.patient_age_years):03d}Y"
    ds.PatientSize = _ds(round(study.patient_size_m, 2))
    ds.PatientWeight = _ds(round(study.patient_weight_kg, 1))

    ds.BodyPartExamined = series.body_part
    ds.ScanningSequence = "GR"
    ds.SequenceVariant = ["SK", "SP", "SS"]  # segmented k-space, spoiled, steady state
    ds.ScanOptions = ""
    ds.MRAcquisitionType = series.acquisition_type
    ds.SequenceName = series.sequence_name
    ds.AngioFlag = "N"
    ds.SliceThickness = _ds(series.slice_thickness_mm)
    ds.RepetitionTime = _ds(series.repetition_time_ms)
    ds.EchoTime = _ds(series.echo_times_ms[0])  # per image
    ds.NumberOfAverages = "1"
    ds.ImagingFrequency = _ds(sc.imaging_frequency_mhz)
    ds.ImagedNucleus = "1H"
    ds.EchoNumbers = "1"  # per image
    ds.MagneticFieldStrength = _ds(sc.magnetic_field_strength_t)
    if series.spacing_between_slices_mm is not None:
        ds.SpacingBetweenSlices = _ds(series.spacing_between_slices_mm)
    ds.NumberOfPhaseEncodingSteps = str(rows)
    ds.EchoTrainLength = str(int(np.max(series.echo_numbers)))  # echoes per excitation
    ds.PercentSampling = "100"
    ds.PercentPhaseFieldOfView = _ds(round(100.0 * rows / cols, 4))
    ds.PixelBandwidth = "500"
    ds.DeviceSerialNumber = f"{zlib.crc32(study.institution_address.encode()) % 100000:05d}"
    ds.SoftwareVersions = sc.software_versions
    ds.ProtocolName = series.protocol_name
    ds.TransmitCoilName = "Body"
    ds.AcquisitionMatrix = [0, cols, rows, 0]
    ds.InPlanePhaseEncodingDirection = "COL"
    ds.FlipAngle = _ds(series.flip_angle_deg)
    ds.VariableFlipAngleFlag = "N"
    ds.SAR = "0.0208"
    ds.dBdt = "0"
    ds.PatientPosition = "HFS"

    # Siemens private "SIEMENS MR HEADER" block in group 0019.
    mr19 = ds.private_block(0x0019, "SIEMENS MR HEADER", create=True)
    mr19.add_new(0x08, "CS", "IMAGE NUM 4")
    mr19.add_new(0x09, "LO", "1.0")
    mr19.add_new(0x0B, "DS", "55000")
    mr19.add_new(0x0F, "SH", "Fast")
    mr19.add_new(0x11, "SH", "No")
    pos = np.asarray(series.positions_mm, dtype=float)
    table_z = round(float(np.mean(pos[:, 2])))  # the table moves with the station, mm
    mr19.add_new(0x12, "SL", [0, 0, table_z])
    mr19.add_new(0x13, "SL", [0, 0, table_z])
    mr19.add_new(0x14, "IS", ["0", "0", "0"])
    mr19.add_new(0x15, "FD", [0.0, 0.0, 0.0])  # SlicePosition_PCS, per image
    mr19.add_new(0x18, "IS", "4600")

    ds.StudyInstanceUID = study.study_instance_uid
    ds.SeriesInstanceUID = series.series_instance_uid
    ds.StudyID = "1"
    ds.SeriesNumber = str(series.series_number)
    ds.AcquisitionNumber = "1"
    ds.InstanceNumber = "1"  # per image
    ds.ImagePositionPatient = ["0", "0", "0"]  # per image
    ds.ImageOrientationPatient = [_ds(v) for v in series.image_orientation]
    ds.FrameOfReferenceUID = study.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.SliceLocation = "0"  # per image

    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = cols
    ds.PixelSpacing = [_ds(v) for v in series.pixel_spacing_mm]
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.add_new(_T_SMALLEST, "US", 0)  # per image
    ds.add_new(_T_LARGEST, "US", 0)  # per image
    ds.WindowCenter = "0"  # per image
    ds.WindowWidth = "1"  # per image
    if series.rescale_slope is not None or series.rescale_intercept is not None:
        ds.RescaleIntercept = _ds(series.rescale_intercept or 0.0)
        ds.RescaleSlope = _ds(1.0 if series.rescale_slope is None else series.rescale_slope)
        ds.RescaleType = "US"  # "unspecified", as Siemens writes for phase
    ds.WindowCenterWidthExplanation = "Algo1"

    csa = ds.private_block(0x0029, "SIEMENS CSA HEADER", create=True)
    csa.add_new(0x08, "CS", "IMAGE NUM 4")
    csa.add_new(0x09, "LO", "20100202")
    csa.add_new(0x10, "OB", b"")  # CSA image header, per image
    csa.add_new(0x18, "CS", "MR")
    csa.add_new(0x19, "LO", "20100202")
    csa.add_new(0x20, "OB", _csa_series_header(series, study, rows, cols))

    mr51 = ds.private_block(0x0051, "SIEMENS MR HEADER", create=True)
    mr51.add_new(0x08, "CS", "IMAGE NUM 4")
    mr51.add_new(0x09, "LO", "1.0")
    mr51.add_new(0x0A, "LO", "TA 00:17")
    mr51.add_new(0x0B, "LO", f"{rows}p*{cols}")
    fov_c = cols * series.pixel_spacing_mm[1]
    fov_r = rows * series.pixel_spacing_mm[0]
    mr51.add_new(0x0C, "LO", f"FoV {fov_c:.0f}*{fov_r:.0f}")
    mr51.add_new(0x0D, "SH", "SP H0.0")  # per image
    mr51.add_new(0x0E, "LO", "Tra")
    mr51.add_new(0x0F, "LO", _coil_string(float(table_z)))
    mr51.add_new(0x11, "LO", "p2")
    mr51.add_new(0x12, "SH", "TP 0")
    mr51.add_new(0x13, "SH", "+LPH")
    mr51.add_new(0x19, "LO", "A1/FS")

    ds.PixelData = b"\x00\x00"  # per image
    ds["PixelData"].VR = "OW"
    return ds


def _csa_series_header(series: SeriesSpec, study: StudyInfo, rows: int, cols: int) -> bytes:
    """CSA series header (0029,1020) with a short MrPhoenixProtocol ASCCONV block."""
    sc = study.scanner
    tes_us = [round(float(t) * 1000.0) for t in np.unique(series.echo_times_ms)]
    pos = np.asarray(series.positions_mm, dtype=float)
    centre_z = float(np.mean(pos[:, 2]))
    n_slices = int(np.unique(np.round(pos @ series.slice_normal, 3)).size)
    spacing = series.spacing_between_slices_mm or series.slice_thickness_mm
    lines = [
        "### ASCCONV BEGIN object=MrProtDataImpl@MrProtocolData version=51130001 ###",
        "ulVersion                                = 0x14b44b6",
        f'tSequenceFileName                        = "%SiemensSeq%\\\\{series.sequence_name.strip("*")}"',
        f'tProtocolName                            = "{series.protocol_name}"',
        f"lSequenceID                              = {series.series_number}",
        f"sProtConsistencyInfo.flNominalB0         = {sc.magnetic_field_strength_t}",
        "sProtConsistencyInfo.flGMax              = 45",
        'sTXSPEC.asNucleusInfo[0].tNucleus        = "1H"',
        f"sTXSPEC.asNucleusInfo[0].lFrequency      = {round(sc.imaging_frequency_mhz * 1e6)}",
        f"sKSpace.lBaseResolution                  = {cols}",
        f"sKSpace.lPhaseEncodingLines              = {rows}",
        f"sKSpace.lPartitions                      = {n_slices}",
        "sKSpace.ucDimension                      = 0x4",
        f"sSliceArray.asSlice[0].dThickness        = {n_slices * spacing:.6g}",
        f"sSliceArray.asSlice[0].dPhaseFOV         = {rows * series.pixel_spacing_mm[0]:.6g}",
        f"sSliceArray.asSlice[0].dReadoutFOV       = {cols * series.pixel_spacing_mm[1]:.6g}",
        f"sSliceArray.asSlice[0].sPosition.dTra    = {centre_z:.6g}",
        "sSliceArray.asSlice[0].sNormal.dTra      = 1",
        f"alTR[0]                                  = {round(series.repetition_time_ms * 1000.0)}",
        *[f"alTE[{i}]{' ' * (37 - len(str(i)))}= {te}" for i, te in enumerate(tes_us)],
        f"lContrasts                               = {len(tes_us)}",
        f"adFlipAngleDegree[0]                     = {series.flip_angle_deg:.6g}",
        "sRXSPEC.alDwellTime[0]                   = 4600",
        "ucReconstructionMode                     = 0x8",
        "### ASCCONV END ###",
    ]
    phoenix = '<XProtocol>\n{\n  <Name> "PhoenixMetaProtocol"\n}\n' + "\n".join(lines) + "\n"
    elements: list[tuple[str, str, Sequence[str]]] = [
        ("UsedPatientWeight", "IS", [str(round(study.patient_weight_kg))]),
        ("NumberOfPrescans", "IS", ["0"]),
        ("TransmitterCalibration", "DS", [_csa_num(270.5)]),
        ("PhaseGradientAmplitude", "DS", [_csa_num(0.0)]),
        ("ReadoutGradientAmplitude", "DS", [_csa_num(0.0)]),
        ("SelectionGradientAmplitude", "DS", [_csa_num(0.0)]),
        ("GradientDelayTime", "DS", [_csa_num(36.0), _csa_num(35.0), _csa_num(31.0)]),
        ("RfWatchdogMask", "IS", ["0"]),
        ("RfPowerErrorIndicator", "DS", []),
        ("SarWholeBody", "DS", []),
        ("Sed", "DS", [_csa_num(1e6), _csa_num(0.0208), _csa_num(0.0208)]),
        ("SequenceFileOwner", "SH", ["SIEMENS"]),
        ("Stim_mon_mode", "IS", ["2"]),
        ("Operation_mode_flag", "IS", ["2"]),
        ("dBdt_max", "DS", [_csa_num(0.0)]),
        ("t_puls_max", "DS", [_csa_num(0.0)]),
        ("dBdt_thresh", "DS", [_csa_num(0.0)]),
        ("dBdt_limit", "DS", [_csa_num(0.0)]),
        ("SW_korr_faktor", "DS", [_csa_num(1.0)]),
        ("Stim_max_online", "DS", [_csa_num(1.2), _csa_num(9.5), _csa_num(0.6)]),
        ("Stim_max_ges_norm_online", "DS", [_csa_num(0.5)]),
        ("Stim_lim", "DS", [_csa_num(45.7), _csa_num(25.1), _csa_num(38.3)]),
        ("Stim_faktor", "DS", [_csa_num(1.0)]),
        ("CoilForGradient", "SH", ["void"]),
        ("CoilForGradient2", "SH", ["AS092"]),
        ("CoilTuningReflection", "DS", []),
        ("CoilID", "IS", ["255"] * 11),
        ("MiscSequenceParam", "IS", ["0"] * 38),
        ("MrProtocolVersion", "IS", ["51130001"]),
        ("DataFileName", "LO", []),
        ("RepresentativeImage", "UI", []),
        ("PositivePCSDirections", "SH", ["+LPH"]),
        ("RelTablePosition", "IS", ["0"]),
        ("ReadoutOS", "FD", [_csa_num(2.0)]),
        ("LongModelName", "LO", [sc.model]),
        ("SliceArrayConcatenations", "IS", ["1"]),
        ("SliceResolution", "FD", [_csa_num(1.0)]),
        ("AbsTablePosition", "IS", [str(round(centre_z))]),
        ("AutoAlignMatrix", "FL", []),
        ("MeasurementIndex", "FL", []),
        ("CoilString", "SH", [_coil_string(centre_z)]),
        ("PATModeText", "LO", ["p2"]),
        (
            "PatReinPattern",
            "ST",
            [f"1;HFS;{study.patient_weight_kg:.2f};{study.patient_size_m:.2f};3;0;0;-1"],
        ),
        ("ProtocolChangeHistory", "US", ["0"]),
        ("Isocentered", "US", ["1"]),
        ("MrPhoenixProtocol", "UN", [phoenix]),
    ]
    return build_csa2(elements)


def _csa_image_template(
    series: SeriesSpec,
    rows: int,
    cols: int,
    slice_locations: np.ndarray,
    centres: np.ndarray,
    total_bytes: int,
) -> _CsaImageTemplate:
    """CSA image header elements; per-image ones are callables of the image index."""
    pos = np.asarray(series.positions_mm, dtype=float)
    normal = series.slice_normal
    iop = series.image_orientation
    table_z = round(float(np.mean(pos[:, 2])))
    row_sp, col_sp = series.pixel_spacing_mm
    echoes = np.asarray(series.echo_numbers)
    tes = np.asarray(series.echo_times_ms, dtype=float)
    # Partition number of each image: its rank among the distinct slice positions.
    _, part = np.unique(np.round(slice_locations, 3), return_inverse=True)

    def per(fn: Callable[[int], object]) -> Callable[[int], list[str]]:
        def values(i: int) -> list[str]:
            v = fn(i)
            return [str(x) for x in v] if isinstance(v, list | tuple) else [str(v)]

        return values

    e: list[tuple[str, str, Sequence[str] | Callable[[int], list[str]]]] = [
        ("EchoLinePosition", "IS", [str(rows // 2)]),
        ("EchoColumnPosition", "IS", [str(cols // 2)]),
        ("EchoPartitionPosition", "IS", [str(int(part.max() + 1) // 2)]),
        ("UsedChannelMask", "UL", ["4095"]),
        ("Actual3DImaPartNumber", "IS", per(lambda i: int(part[i]))),
        ("ICE_Dims", "LO", per(lambda i: f"X_{int(echoes[i])}_1_1_{int(part[i]) + 1}_1_1_1_1_1_1_1_1")),
        ("B_value", "IS", []),
        ("Filter1", "IS", []),
        ("Filter2", "IS", []),
        ("ProtocolSliceNumber", "IS", per(lambda i: int(part[i]))),
        ("RealDwellTime", "IS", ["4600"]),
        ("PixelFile", "UN", []),
        ("PixelFileName", "UN", []),
        ("SliceMeasurementDuration", "DS", [_csa_num(55000.0)]),
        ("SequenceMask", "UL", ["134217728"]),
        ("AcquisitionMatrixText", "SH", [f"{rows}p*{cols}"]),
        ("MeasuredFourierLines", "IS", ["0"]),
        ("FlowEncodingDirection", "IS", ["0"]),
        ("FlowVenc", "FD", [_csa_num(0.0)]),
        ("PhaseEncodingDirectionPositive", "IS", ["1"]),
        ("NumberOfImagesInMosaic", "US", []),
        ("DiffusionGradientDirection", "FD", []),
        ("ImageGroup", "US", []),
        ("SliceNormalVector", "FD", [_csa_num(v) for v in normal]),
        ("DiffusionDirectionality", "CS", []),
        ("TimeAfterStart", "DS", [_csa_num(0.0)]),
        ("FlipAngle", "DS", [_csa_num(series.flip_angle_deg)]),
        ("SequenceName", "SH", [series.sequence_name]),
        ("RepetitionTime", "DS", [_csa_num(series.repetition_time_ms)]),
        ("EchoTime", "DS", per(lambda i: _csa_num(tes[i]))),
        ("NumberOfAverages", "DS", [_csa_num(1.0)]),
        ("VoxelThickness", "DS", [_csa_num(series.slice_thickness_mm)]),
        ("VoxelPhaseFOV", "DS", [_csa_num(rows * row_sp)]),
        ("VoxelReadoutFOV", "DS", [_csa_num(cols * col_sp)]),
        ("VoxelPositionSag", "DS", per(lambda i: _csa_num(centres[i, 0]))),
        ("VoxelPositionCor", "DS", per(lambda i: _csa_num(centres[i, 1]))),
        ("VoxelPositionTra", "DS", per(lambda i: _csa_num(centres[i, 2]))),
        ("VoxelNormalSag", "DS", [_csa_num(normal[0])]),
        ("VoxelNormalCor", "DS", [_csa_num(normal[1])]),
        ("VoxelNormalTra", "DS", [_csa_num(normal[2])]),
        ("VoxelInPlaneRot", "DS", [_csa_num(0.0)]),
        ("ImagePositionPatient", "DS", per(lambda i: [_csa_num(v) for v in pos[i]])),
        ("ImageOrientationPatient", "DS", [_csa_num(v) for v in iop]),
        ("PixelSpacing", "DS", [_csa_num(row_sp), _csa_num(col_sp)]),
        ("SliceLocation", "DS", per(lambda i: _csa_num(slice_locations[i]))),
        ("SliceThickness", "DS", [_csa_num(series.slice_thickness_mm)]),
        ("ImaAbsTablePosition", "SL", ["0", "0", str(table_z)]),
        ("NonPlanarImage", "US", ["0"]),
        ("SlicePosition_PCS", "FD", per(lambda i: [_csa_num(v) for v in centres[i]])),
        ("MultistepIndex", "IS", ["0"]),
        ("ImaRelTablePosition", "IS", ["0", "0", "0"]),
        ("ImaCoilString", "LO", [_coil_string(float(table_z))]),
        ("RFSWDDataType", "SH", ["predicted"]),
        ("GSWDDataType", "SH", ["predicted"]),
        ("ImaPATModeText", "LO", ["p2"]),
        ("AutoInlineImageFilterEnabled", "IS", ["0"]),
        ("UsedChannelString", "UT", ["X" * 12]),
        ("ImageHistory", "ST", ["ChannelMixing:ND=true_CMM=1_CDM=1"]),
        ("ImageTypeVisible", "CS", list(series.image_type)),
        ("DistortionCorrectionType", "CS", ["ND"]),
    ]
    return _CsaImageTemplate(e, total_bytes)


# ----------------------------------------------------------------------------------------------
# Public encoder
# ----------------------------------------------------------------------------------------------


def _validate(pixels: np.ndarray, series: SeriesSpec) -> np.ndarray:
    px = np.asarray(pixels)
    if px.ndim != 3:
        raise ValueError(f"pixels must be (n_images, rows, cols), got shape {px.shape}")
    if px.dtype != np.uint16:
        if not np.issubdtype(px.dtype, np.integer):
            raise TypeError(f"pixels must be uint16, got {px.dtype}")
        if px.size and (px.min() < 0 or px.max() > np.iinfo(np.uint16).max):
            raise ValueError("pixel values do not fit uint16")
    # Little-endian, C-ordered so each image's .tobytes() is its PixelData verbatim.
    px = np.ascontiguousarray(px, dtype="<u2")
    if px.size and int(px.max()) > MAX_STORED_VALUE:
        raise ValueError(f"pixel values exceed {MAX_STORED_VALUE} (BitsStored 12)")
    n = px.shape[0]
    for name in ("positions_mm", "echo_times_ms", "echo_numbers"):
        arr = np.asarray(getattr(series, name))
        want = (n, 3) if name == "positions_mm" else (n,)
        if arr.shape != want:
            raise ValueError(f"series.{name} has shape {arr.shape}, expected {want}")
    return px


def encode_series(
    pixels: np.ndarray,
    series: SeriesSpec,
    study: StudyInfo,
    *,
    csa_header_bytes: int = DEFAULT_CSA_HEADER_BYTES,
) -> list[tuple[str, bytes]]:
    """Encode a stack of 2D images as one Siemens MR DICOM series.

    Parameters
    ----------
    pixels : numpy.ndarray
        (n_images, rows, cols) uint16 stored values, 0–4095 (BitsStored 12). Phase series store
        raw values that RescaleSlope/RescaleIntercept map to ``[-4096, 4094]``.
    series : SeriesSpec
        Series-level parameters and per-image geometry and echo.
    study : StudyInfo
        Participant, visit and scanner.
    csa_header_bytes : int
        Target size of the CSA image header (0029,1010), bytes; padded with zeros up to it
        (never truncated: the elements themselves take ≈ 18 kB).

    Returns
    -------
    list of (str, bytes)
        ``(<SOPInstanceUID>.dcm, Part-10 file bytes)`` per image; InstanceNumber is 1..n in
        input order.

    Raises
    ------
    ValueError
        On shape mismatches or pixel values above 4095.
    TypeError
        On non-integer pixels.
    """
    px = _validate(pixels, series)
    n, rows, cols = px.shape
    if n == 0:
        return []

    pos = np.asarray(series.positions_mm, dtype=float)
    normal = series.slice_normal
    slice_loc = pos @ normal  # SliceLocation: IPP projected on the slice normal, mm
    iop = np.asarray(series.image_orientation, dtype=float)
    row_sp, col_sp = series.pixel_spacing_mm
    # Centre of each slice (Siemens SlicePosition_PCS): IPP + half the in-plane extent.
    centres = pos + iop[:3] * col_sp * (cols - 1) / 2.0 + iop[3:] * row_sp * (rows - 1) / 2.0

    # Window from each image's value range, in modality (rescaled) units.
    flat = px.reshape(n, -1)
    lo = flat.min(axis=1).astype(int)
    hi = flat.max(axis=1).astype(int)
    slope = 1.0 if series.rescale_slope is None else float(series.rescale_slope)
    icpt = 0.0 if series.rescale_intercept is None else float(series.rescale_intercept)
    w_lo, w_hi = lo * slope + icpt, hi * slope + icpt
    w_center = np.round((w_lo + w_hi) / 2.0)
    w_width = np.maximum(np.round(w_hi - w_lo), 1.0)

    tmpl = _template(series, study, rows, cols)
    csa_tmpl = _csa_image_template(series, rows, cols, slice_loc, centres, csa_header_bytes)

    # Split the template into static runs (encoded once by pydicom) between per-image elements.
    static: list[bytes] = []
    order: list[int] = []
    run = Dataset()
    for elem in tmpl:  # Dataset iterates in ascending tag order
        tag = int(elem.tag)
        if tag in _DYNAMIC:
            static.append(_encode_static(run))
            order.append(tag)
            run = Dataset()
        else:
            run.add(elem)
    static.append(_encode_static(run))

    base_dt = datetime.datetime.combine(study.study_date, series.series_time)
    tes = np.asarray(series.echo_times_ms, dtype=float)
    echo_nos = np.asarray(series.echo_numbers).astype(int)
    out: list[tuple[str, bytes]] = []
    for i in range(n):
        sop = derive_uid("sop", study.eid, study.instance, series.series_instance_uid, i)
        content = base_dt + datetime.timedelta(seconds=CONTENT_TIME_STEP_S * (i + 1))
        values: dict[int, bytes] = {
            _T_SOP_INSTANCE_UID: sop.encode(),
            _T_CONTENT_DATE: _da(content.date()).encode(),
            _T_CONTENT_TIME: _tm(content.time()).encode(),
            _T_ECHO_TIME: _ds(tes[i]).encode(),
            _T_ECHO_NUMBERS: str(echo_nos[i]).encode(),
            _T_SLICE_POSITION_PCS: struct.pack("<3d", *centres[i]),
            _T_INSTANCE_NUMBER: str(i + 1).encode(),
            _T_IPP: "\\".join(_ds(v) for v in pos[i]).encode(),
            _T_SLICE_LOCATION: _ds(slice_loc[i]).encode(),
            _T_SMALLEST: struct.pack("<H", lo[i]),
            _T_LARGEST: struct.pack("<H", hi[i]),
            _T_WINDOW_CENTER: _ds(w_center[i]).encode(),
            _T_WINDOW_WIDTH: _ds(w_width[i]).encode(),
            _T_CSA_IMAGE: csa_tmpl.encode(i),
            _T_SLICE_POSITION_TEXT: f"SP {_sp_text(centres[i], normal)}".encode(),
            _T_PIXEL_DATA: px[i].tobytes(),
        }
        buf = io.BytesIO()
        buf.write(_file_meta(sop))
        buf.write(static[0])
        for k, tag in enumerate(order):
            buf.write(_element(tag, _DYNAMIC[tag], values[tag]))
            buf.write(static[k + 1])
        out.append((f"{sop}.dcm", buf.getvalue()))
    return out


def _sp_text(centre: np.ndarray, normal: np.ndarray) -> str:
    """Siemens slice-position text, e.g. ``H12.5`` / ``F230.0`` for transverse slices."""
    axis = int(np.argmax(np.abs(normal)))
    v = float(centre[axis])
    # LPS: +z is head, +x left, +y posterior.
    letters = {0: ("L", "R"), 1: ("P", "A"), 2: ("H", "F")}[axis]
    return f"{letters[0] if v >= 0 else letters[1]}{abs(v):.1f}"


# ----------------------------------------------------------------------------------------------
# Test and fault-injection helpers
# ----------------------------------------------------------------------------------------------

_PIXEL_DATA_HEADER = b"\xe0\x7f\x10\x00OW\x00\x00"


def truncate_file(data: bytes, keep_fraction: float) -> bytes:
    """A DICOM file cut short inside its pixel data, as an interrupted transfer leaves it.

    Parameters
    ----------
    data : bytes
        A complete Part-10 file from :func:`encode_series`.
    keep_fraction : float
        Fraction of the pixel data bytes to keep, in [0, 1).

    Returns
    -------
    bytes
        The header and PixelData element header intact (declaring the full length), followed by
        only ``keep_fraction`` of the pixel bytes.
    """
    if not 0.0 <= keep_fraction < 1.0:
        raise ValueError("keep_fraction must be in [0, 1)")
    at = data.rfind(_PIXEL_DATA_HEADER)
    if at < 0:
        raise ValueError("no explicit-VR OW PixelData element found")
    start = at + len(_PIXEL_DATA_HEADER) + 4
    (length,) = struct.unpack_from("<I", data, start - 4)
    return data[: start + int(length * keep_fraction)]


def read_pixels(data: bytes) -> np.ndarray:
    """Decode the pixel array of one DICOM file held in memory (test convenience).

    Parameters
    ----------
    data : bytes
        Part-10 file bytes.

    Returns
    -------
    numpy.ndarray
        ``pydicom.dcmread(...).pixel_array`` (stored values; no rescale applied).
    """
    return pydicom.dcmread(io.BytesIO(data)).pixel_array
