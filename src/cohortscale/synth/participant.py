"""One participant visit of the synthetic cohort: anatomy → images → DICOM zips + truth.

:func:`generate_visit` is a pure function of the participant's phenotypes, the visit, the configuration
and the cohort seed: it writes ``bulk/<eid>_20201_<instance>_0.zip`` (neck-to-knee Dixon), one zip per
multi-echo protocol, and ``truth/<eid>_<instance>/`` (label volume, noiseless maps, true IDPs), and
returns the true IDPs and the anomalies it injected.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import zarr

from cohortscale import __version__
from cohortscale.config import SynthConfig, config_to_dict
from cohortscale.geometry import Grid
from cohortscale.ops.fatwater import SPECTRA, FatSpectrum, multiecho_signal
from cohortscale.protocols import (
    DIXON_CONTRASTS,
    DIXON_FIELD,
    UKB_IDEAL_20254,
    MultiEchoProtocol,
    dixon_series_description,
)
from cohortscale.synth.acquisition import (
    AXIAL_ORIENTATION,
    StationSlab,
    full_resolution_grid,
    fused_grid,
    multiecho_grid,
    station_slabs,
)
from cohortscale.synth.anatomy import Body, build_body
from cohortscale.synth.bulkzip import bulk_zip_name, corrupt_zip, write_bulk_zip
from cohortscale.synth.dicomwriter import (
    SeriesSpec,
    StudyInfo,
    derive_uid,
    encode_series,
    truncate_file,
)
from cohortscale.synth.labels import LABELS, SIDES, VERTEBRAE
from cohortscale.synth.shapes import paint
from cohortscale.synth.signal import (
    DixonTables,
    SmoothField,
    dixon_tables,
    edge_rolloff,
    rician,
    to_uint16,
)
from cohortscale.synth.tissues import MUSCLE_LABELS, TissueTables, tissue_tables
from cohortscale.synth.truth import fused_truth, slice_idps, volume_idps, write_arrays

#: Fat spectrum of the synthetic tissues (Dixon interference and multi-echo signal).
SYNTH_SPECTRUM = "hamilton_liver9"
#: Vertebral levels the multi-echo slice may cross (through the liver), with probabilities.
SLICE_LEVELS = {"T12": 0.35, "L1": 0.5, "L2": 0.15}
#: Marrow PDFF rises caudally by this much per vertebral level, percentage points.
MARROW_PDFF_PER_LEVEL = 0.45
#: Scatter of a level's marrow PDFF around the person's trend, percentage points.
MARROW_PDFF_LEVEL_SD = 1.2
#: Posterior skin surface (table top) in LPS y, mm: puts the table in the bottom ~22 rows of station 2.
TABLE_TOP_Y_MM = 145.0
#: Top boundary of station 1 in LPS z (the landmark laser sits near 0), mm.
STATION1_TOP_MM = 100.0
#: Station 1's top sits this far below the vertex (just under the chin), as a fraction of height.
STATION1_BELOW_VERTEX = 0.105
#: Range of overlaps between consecutive stations, mm.
OVERLAP_RANGE_MM = (35.0, 40.0)
#: Seconds between consecutive Dixon series (SeriesTime).
SERIES_INTERVAL_S = 15
#: Ghost intensity relative to the aliased tissue.
GHOST_AMPLITUDE = 0.45
#: Fraction of a file kept when a DICOM is truncated.
TRUNCATE_KEEP = 0.6
#: UK Biobank participants whose PatientID carries a suffix, fraction.
PATIENT_SUFFIX_RATE = 0.3
#: Iterations used to calibrate the anatomy's volumes.
CALIBRATION_STEPS = 3
#: Population targets the calibration matches.
CALIBRATED = ("tmv_cm3", "vat_l", "asat_l", "pa_ratio")
#: Half-extent (x, y) of the box holding the coil field's bumps, mm.
COIL_BOX_XY_MM = (250.0, 200.0)
#: Study start time of day, minutes after midnight (range).
STUDY_START_MINUTES = (8 * 60, 18 * 60)
#: Seconds from the last Dixon series to the first multi-echo series, and between multi-echo series.
MULTIECHO_DELAY_S = 240
MULTIECHO_INTERVAL_S = 12
#: Motion ghost of the failed first attempt of a duplicated station, relative amplitude.
MOTION_GHOST_AMPLITUDE = 0.35
#: Slab-edge roll-off decays over this many slices at full scale.
ROLLOFF_DECAY_SLICES = 5.0
#: Half-width of the box holding the centres of smooth fields (coil, B0, phase), mm.
FIELD_BOX_MM = 200.0
#: Widths of the B0 field's bumps (mm) and the share of the configured B0 range a slice spans.
B0_WIDTHS_MM = (80.0, 250.0)
B0_RANGE_SHARE = (0.5, 1.0)
#: Initial (t = 0) phase: offset and peak variation over the slice, rad.
PHASE0_OFFSET_RAD = 0.3
PHASE0_PEAK_RAD = np.pi / 2
#: Share of zips whose manifest is misspelt ``manifest.cvs``.
MISSPELT_MANIFEST_RATE = 0.5
#: ImageType value 5 of each Dixon contrast.
DIXON_IMAGE_TYPE = {"in": "IN_PHASE", "opp": "OPP_PHASE", "fat": "F", "water": "W"}
#: Siemens phase encoding: value = phase·4096/π, stored as (value + 4096)/2.
PHASE_SLOPE, PHASE_INTERCEPT = 2.0, -4096.0


@dataclass
class VisitResult:
    """What a generated visit reports back to the cohort writer."""

    eid: int
    instance: int
    idps: dict[str, float]
    anomalies: list[dict[str, Any]] = field(default_factory=list)
    files: list[str] = field(default_factory=list)


def visit_rng(seed: int, eid: int, instance: int, stream: int) -> np.random.Generator:
    """An independent random stream per (cohort seed, participant, visit, purpose)."""
    return np.random.default_rng(np.random.SeedSequence([seed, eid, instance, stream]))


_ANATOMY, _NOISE, _ANOMALY, _ZIP, _FIELDS = range(5)


def draw_anomalies(config: SynthConfig, rng: np.random.Generator) -> dict[str, dict[str, Any]]:
    """Which anomalies this visit gets and their details."""
    rates = config.anomalies
    drawn: dict[str, dict[str, Any]] = {}
    if rng.random() < rates.duplicate_station:
        drawn["duplicate_station"] = {"station": int(rng.integers(1, 7))}
    if rng.random() < rates.missing_series:
        drawn["missing_series"] = {
            "station": int(rng.integers(1, 7)),
            "contrast": str(rng.choice(DIXON_CONTRASTS)),
        }
    if rng.random() < rates.short_station:
        drawn["short_station"] = {"station": int(rng.integers(2, 5))}
    if rng.random() < rates.swap_station:
        drawn["swap_station"] = {"station": int(rng.integers(1, 7))}
    if rng.random() < rates.swap_leg:
        drawn["swap_leg"] = {"station": int(rng.integers(5, 7)), "side": str(rng.choice(SIDES))}
    if rng.random() < rates.ghost_slices:
        drawn["ghost_slices"] = {"slices": int(rng.integers(2, 5))}
    if rng.random() < rates.truncated_dicom:
        drawn["truncated_dicom"] = {}
    if rng.random() < rates.corrupt_zip:
        drawn["corrupt_zip"] = {}
    if rng.random() < rates.missing_multiecho:
        drawn["missing_multiecho"] = {}
    if rng.random() < rates.slice_through_disc:
        drawn["slice_through_disc"] = {}
    if rng.random() < rates.size_mismatch:
        drawn["size_mismatch"] = {"station": int(rng.integers(1, 7)), "series": "fat", "slices_missing": 1}
    return drawn


def marrow_pdff_by_level(slice_level: str, vbm_pdff_pct: float, rng: np.random.Generator) -> dict[str, float]:
    """Marrow PDFF (fraction) of every vertebra: the person's value at the slice level, rising caudally."""
    ref = VERTEBRAE.index(slice_level)
    values = {}
    for i, level in enumerate(VERTEBRAE):
        scatter = 0.0 if level == slice_level else rng.normal(0.0, MARROW_PDFF_LEVEL_SD)
        values[level] = float(
            np.clip(vbm_pdff_pct + MARROW_PDFF_PER_LEVEL * (i - ref) + scatter, 5, 95) / 100
        )
    return values


def generate_visit(
    subject: Mapping[str, Any], eid: int, instance: int, config: SynthConfig, out: Path
) -> VisitResult:
    """Generate one participant visit (see module docstring).

    Parameters
    ----------
    subject : mapping
        The participant's row of :func:`cohortscale.synth.population.simulate_population` (for the
        repeat visit, the caller passes the values at that visit).
    eid, instance : int
        Participant id and visit (2 or 3).
    config : SynthConfig
    out : Path
        Cohort directory (``bulk/`` and ``truth/`` are created inside).

    Returns
    -------
    VisitResult
    """
    rng = visit_rng(config.seed, eid, instance, _ANATOMY)
    anomalies = draw_anomalies(config, visit_rng(config.seed, eid, instance, _ANOMALY))
    z_vertex = STATION1_TOP_MM + STATION1_BELOW_VERTEX * float(subject["height_cm"]) * 10 + rng.normal(0, 15)
    overlaps = rng.uniform(*OVERLAP_RANGE_MM, size=5)
    slabs = station_slabs(config.scale, STATION1_TOP_MM, overlaps)
    slice_level = str(rng.choice(list(SLICE_LEVELS), p=list(SLICE_LEVELS.values())))
    body, volumes = calibrated_body(subject, int(rng.integers(2**63)), z_vertex, slabs)

    tissues = visit_tissues(subject, slice_level, rng)
    frequency_hz = config.scanner.imaging_frequency_mhz * 1e6
    spectrum = SPECTRA[SYNTH_SPECTRUM]
    tables = dixon_tables(tissues, config.dixon, spectrum, frequency_hz)
    # Signal scale: subcutaneous fat in phase reaches max_signal; noise from muscle water.
    s0 = config.max_signal / tables.in_phase[LABELS["subcutaneous_fat"]]
    sigma = s0 * tables.water[LABELS["other_muscle"]] / config.dixon_snr
    fields_rng = visit_rng(config.seed, eid, instance, _FIELDS)
    box_lo = np.array([-COIL_BOX_XY_MM[0], -COIL_BOX_XY_MM[1], slabs[-1].bottom_edge])
    box_hi = np.array([COIL_BOX_XY_MM[0], COIL_BOX_XY_MM[1], slabs[0].top_edge])
    bias = SmoothField.random(fields_rng, box_lo, box_hi, peak=config.coil_bias, offset=1.0)
    study = _study_info(subject, eid, instance, config, rng)
    noise_rng = visit_rng(config.seed, eid, instance, _NOISE)
    zip_rng = visit_rng(config.seed, eid, instance, _ZIP)
    manifest = "manifest.cvs" if zip_rng.random() < MISSPELT_MANIFEST_RATE else "manifest.csv"
    clock = SeriesClock(study.study_time)
    bulk = out / "bulk"

    def write_zip(field_id: int, files: list[tuple[str, bytes, str]]) -> Path:
        path = bulk / bulk_zip_name(eid, field_id, instance)
        write_bulk_zip(
            path,
            files,
            eid=eid,
            study_date=study.study_date,
            rng=zip_rng,
            manifest_name=manifest,
            compresslevel=config.zip_compresslevel,
            patientid_suffix=study.patient_id_suffix,
        )
        return path

    dixon_files = _dixon_series(
        body, slabs, tables, s0, sigma, bias, study, clock, config, anomalies, noise_rng
    )
    if "truncated_dicom" in anomalies:
        k = int(zip_rng.integers(len(dixon_files)))
        name, data, desc = dixon_files[k]
        dixon_files[k] = (name, truncate_file(data, TRUNCATE_KEEP), desc)
        anomalies["truncated_dicom"].update(file=name, series_description=desc)
    dixon_zip = write_zip(DIXON_FIELD, dixon_files)
    if "corrupt_zip" in anomalies:
        anomalies["corrupt_zip"]["damage"] = corrupt_zip(dixon_zip, zip_rng)
    files = [dixon_zip.name]

    truth_dir = out / "truth" / f"{eid}_{instance}"
    # A private temporary folder: Dask or a rerun may generate the same visit twice at once.
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{eid}_{instance}.", dir=truth_dir.parent))
    root = zarr.open_group(str(tmp_dir / "maps.zarr"), mode="w")
    idps: dict[str, Any] = dict(volumes)
    fgrid = fused_grid(slabs, config.scale)
    write_arrays(root.require_group("fused"), fused_truth(body, fgrid, tables, tissues.pdff, s0, bias), fgrid)
    z_slice = float(body.landmarks[slice_level][2])
    if "slice_through_disc" in anomalies:
        # Mis-planned slice: through the disc below the level, so it misses the vertebral marrow.
        below = VERTEBRAE[VERTEBRAE.index(slice_level) + 1]
        z_slice = 0.5 * (body.vertebra_extent[slice_level][0] + body.vertebra_extent[below][1])
        anomalies["slice_through_disc"].update(level=slice_level, z_mm=round(z_slice, 2))
    acquired = () if "missing_multiecho" in anomalies else config.multiecho_fields
    for fld in acquired:
        protocol = config.multiecho_protocol(fld)
        grid = multiecho_grid(protocol, config.scale, z_slice)
        me_files, maps = _multiecho_series(
            body, grid, protocol, tissues, spectrum, frequency_hz, config, study, clock, fields_rng, noise_rng
        )
        files.append(write_zip(protocol.field, me_files).name)
        attrs = {
            "echo_times_s": list(protocol.echo_times_s),
            "imaging_frequency_hz": frequency_hz,
            "spectrum": SYNTH_SPECTRUM,
            "phase_sign": config.phase_sign,
            "dynamics": config.ideal_dynamics if protocol.field == UKB_IDEAL_20254.field else 1,
            "slice_level": slice_level,
        }
        write_arrays(root.require_group(f"multiecho/{protocol.field}"), maps, grid, attrs)
        idps.update(slice_idps(maps, tables, f"_{protocol.field}"))
    idps["slice_level"] = slice_level
    records = [{"anomaly": k, **v} for k, v in anomalies.items()]
    summary = {
        "eid": eid,
        "instance": instance,
        "fingerprint": visit_fingerprint(subject, config),
        "idps": idps,
        "landmarks_lps_mm": {k: [round(float(c), 3) for c in v] for k, v in body.landmarks.items()},
        "anomalies": records,
        "files": files,
    }
    (tmp_dir / "idp.json").write_text(json.dumps(summary, indent=1))
    shutil.rmtree(truth_dir, ignore_errors=True)
    os.replace(tmp_dir, truth_dir)
    return VisitResult(eid, instance, idps, records, files)


def visit_fingerprint(subject: Mapping[str, Any], config: SynthConfig) -> str:
    """A digest of everything a visit's files depend on: the participant's values, the settings (but
    not the worker count) and the cohortscale version. A rerun regenerates a visit whose digest changed."""
    settings = config_to_dict(dataclasses.replace(config, workers=1))
    values = {k: (None if pd.isna(v) else str(v)) for k, v in sorted(subject.items())}
    payload = json.dumps({"settings": settings, "subject": values, "version": __version__}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def visit_tissues(subject: Mapping[str, Any], slice_level: str, rng: np.random.Generator) -> TissueTables:
    """Tissue tables with the participant's marrow, liver and muscle properties."""
    marrow = marrow_pdff_by_level(slice_level, float(subject["vbm_pdff"]), rng)
    t1_marrow = float(subject["marrow_t1_water_s"])
    overrides: dict[str, dict[str, float]] = {
        v: {"pdff": marrow[v], "r2star": float(subject["vbm_r2star"]), "t1_water_s": t1_marrow}
        for v in VERTEBRAE
    }
    liver = {"pdff": float(subject["liver_pdff"]) / 100, "r2star": float(subject["liver_r2star"])}
    overrides["liver"] = liver
    femur = {"pdff": float(subject["femur_pdff"]) / 100, "t1_water_s": t1_marrow}
    overrides["femur_left"] = overrides["femur_right"] = femur
    muscle_ff = float(subject["muscle_fat_infiltration_pct"]) / 100
    for name in MUSCLE_LABELS:
        overrides[name] = {"pdff": muscle_ff}
    return tissue_tables(overrides)


def calibrated_body(
    subject: Mapping[str, Any], anatomy_seed: int, z_vertex: float, slabs: list[StationSlab]
) -> tuple[Body, dict[str, float]]:
    """Build the body, correcting its thigh-muscle and fat inputs so the painted volumes land on the
    population model's targets (organs and bones overlap the analytic shapes).

    Returns the body and its volumes counted on the full-resolution grid (the true volume IDPs).
    """
    inputs = dict(subject)
    grid = full_resolution_grid(slabs)  # the grid the true volumes are counted on

    def build() -> tuple[Body, dict[str, float]]:
        body = build_body(inputs, np.random.default_rng(anatomy_seed), TABLE_TOP_Y_MM, z_vertex)
        return body, volume_idps(body, grid)

    body, measured = build()
    for _ in range(CALIBRATION_STEPS):
        for key in CALIBRATED:
            inputs[key] = inputs[key] * float(subject[key]) / max(measured[key], 1e-6)
        body, measured = build()
    return body, measured


def _study_info(
    subject: Mapping[str, Any], eid: int, instance: int, config: SynthConfig, rng: np.random.Generator
) -> StudyInfo:
    """Study-level DICOM content; ``subject`` holds the values at this visit (see ``visit_subjects``)."""
    address = config.scanner.centres[int(subject["centre"])]
    date = pd.Timestamp(subject["imaging_date"])
    minutes = int(rng.integers(*STUDY_START_MINUTES))
    return StudyInfo(
        eid=eid,
        instance=instance,
        patient_sex="M" if int(subject["sex"]) == 1 else "F",
        patient_age_years=int(subject["age"]),
        patient_size_m=round(float(subject["height_cm"]) / 100, 2),
        patient_weight_kg=round(float(subject["weight_kg"]), 1),
        study_date=datetime.date(date.year, date.month, date.day),
        study_time=datetime.time(minutes // 60, minutes % 60, int(rng.integers(0, 60))),
        institution_name="UK Biobank " + address.split(",")[0],
        institution_address=address,
        scanner=config.scanner,
        study_instance_uid=derive_uid("study", config.seed, eid, instance),
        frame_of_reference_uid=derive_uid("for", config.seed, eid, instance),
        patient_id_suffix="^Bio" if rng.random() < PATIENT_SUFFIX_RATE else "",
    )


class SeriesClock:
    """Series numbers and times of one study, in acquisition order (one counter for all fields)."""

    def __init__(self, start: datetime.time) -> None:
        self._start = datetime.datetime.combine(datetime.date(2000, 1, 1), start)
        self._elapsed_s = 0.0
        self._number = 0

    def next(self, after_s: float) -> tuple[int, datetime.time]:
        """The next series number and its SeriesTime, ``after_s`` seconds after the previous one."""
        self._number += 1
        self._elapsed_s += after_s
        return self._number, (self._start + datetime.timedelta(seconds=self._elapsed_s)).time()


def _slab_images(
    body: Body,
    slab: StationSlab,
    tables: DixonTables,
    s0: float,
    sigma: float,
    bias: SmoothField,
    config: SynthConfig,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Noisy float images of the four contrasts of one slab."""
    labels = paint(slab.grid, body.parts)
    gain = np.float32(s0) * bias.on_grid(slab.grid)
    decay = max(1.0, ROLLOFF_DECAY_SLICES * config.scale)
    gain *= edge_rolloff(slab.grid.shape[0], config.edge_rolloff, decay).astype(np.float32)[:, None, None]
    tables_by_contrast = (tables.in_phase, tables.opposed, tables.fat, tables.water)
    return {
        contrast: rician(table.astype(np.float32)[labels] * gain, sigma, rng)
        for contrast, table in zip(DIXON_CONTRASTS, tables_by_contrast, strict=True)
    }


def _apply_image_anomalies(
    images: dict[str, np.ndarray], slab: StationSlab, anomalies: dict[str, dict[str, Any]]
) -> dict[str, np.ndarray]:
    """Slice loss, fat–water swaps and wrap-around ghosts of one acquisition of a station."""
    number = slab.station.number
    if anomalies.get("short_station", {}).get("station") == number:
        images = {c: img[:-1] for c, img in images.items()}
    if anomalies.get("swap_station", {}).get("station") == number:
        images["fat"], images["water"] = images["water"], images["fat"]
    swap_leg = anomalies.get("swap_leg", {})
    if swap_leg.get("station") == number:
        xs = slab.grid.axis_coordinates()[0]
        side = (xs > 0) if swap_leg["side"] == "left" else (xs < 0)
        fat, water = images["fat"].copy(), images["water"].copy()
        images["fat"][..., side], images["water"][..., side] = water[..., side], fat[..., side]
    if "ghost_slices" in anomalies:
        n = anomalies["ghost_slices"]["slices"]
        for img in images.values():
            top, bottom = img[:n].copy(), img[-n:].copy()
            img[:n] += GHOST_AMPLITUDE * bottom
            img[-n:] += GHOST_AMPLITUDE * top
    return images


def _dixon_series(
    body: Body,
    slabs: list[StationSlab],
    tables: DixonTables,
    s0: float,
    sigma: float,
    bias: SmoothField,
    study: StudyInfo,
    clock: SeriesClock,
    config: SynthConfig,
    anomalies: dict[str, dict[str, Any]],
    rng: np.random.Generator,
) -> list[tuple[str, bytes, str]]:
    """Encode the 24 (or, with anomalies, more or fewer) Dixon series of a visit.

    A duplicated station is acquired again after the sixth station (newer SeriesTime, next series
    numbers); its first attempt carries a motion ghost, the reason it was repeated.
    """
    acquisitions: list[tuple[StationSlab, dict[str, np.ndarray]]] = []
    repeats: list[tuple[StationSlab, dict[str, np.ndarray]]] = []
    for slab in slabs:
        images = _apply_image_anomalies(
            _slab_images(body, slab, tables, s0, sigma, bias, config, rng), slab, anomalies
        )
        if anomalies.get("duplicate_station", {}).get("station") == slab.station.number:
            repeat = _slab_images(body, slab, tables, s0, sigma, bias, config, rng)
            repeats.append((slab, _apply_image_anomalies(repeat, slab, anomalies)))
            for img in images.values():
                img += MOTION_GHOST_AMPLITUDE * np.roll(img, img.shape[1] // 4, axis=1)
        acquisitions.append((slab, images))
    mismatch = anomalies.get("size_mismatch", {})
    missing = anomalies.get("missing_series", {})
    files: list[tuple[str, bytes, str]] = []
    for attempt, (slab, images) in enumerate(acquisitions + repeats):
        station = slab.station
        for contrast in DIXON_CONTRASTS:
            number, series_time = clock.next(SERIES_INTERVAL_S)
            first_attempt = attempt < len(acquisitions)
            if first_attempt and (missing.get("station"), missing.get("contrast")) == (
                station.number,
                contrast,
            ):
                continue
            pixels = to_uint16(images[contrast])
            if first_attempt and mismatch.get("station") == station.number and contrast == "fat":
                pixels = pixels[:-1]
            spec = _dixon_spec(slab, contrast, number, series_time, len(pixels), study, config)
            files.extend(
                (name, data, spec.series_description) for name, data in encode_series(pixels, spec, study)
            )
    return files


def _dixon_spec(
    slab: StationSlab,
    contrast: str,
    number: int,
    series_time: datetime.time,
    n_slices: int,
    study: StudyInfo,
    config: SynthConfig,
) -> SeriesSpec:
    acq = config.dixon
    description = dixon_series_description(slab.station, contrast)
    opposed = contrast == "opp"
    return SeriesSpec(
        series_number=number,
        series_description=description,
        protocol_name=description.rsplit("_", 1)[0],
        series_time=series_time,
        image_type=("ORIGINAL", "PRIMARY", "M", "DIXON", DIXON_IMAGE_TYPE[contrast]),
        pixel_spacing_mm=(slab.pixel_spacing_mm, slab.pixel_spacing_mm),
        slice_thickness_mm=slab.slice_spacing_mm,
        spacing_between_slices_mm=slab.slice_spacing_mm,
        image_orientation=AXIAL_ORIENTATION,
        positions_mm=slab.grid.affine[:3, 3] + np.outer(np.arange(n_slices), slab.grid.affine[:3, 2]),
        echo_times_ms=np.full(n_slices, 1e3 * (acq.te_opposed_s if opposed else acq.te_in_phase_s)),
        echo_numbers=np.full(n_slices, 1 if opposed else 2),
        repetition_time_ms=1e3 * acq.tr_s,
        flip_angle_deg=acq.flip_angle_deg,
        series_instance_uid=derive_uid("series", config.seed, study.eid, study.instance, number),
        body_part="WHOLEBODY",
    )


def _multiecho_series(
    body: Body,
    grid: Grid,
    protocol: MultiEchoProtocol,
    tissues: TissueTables,
    spectrum: FatSpectrum,
    frequency_hz: float,
    config: SynthConfig,
    study: StudyInfo,
    clock: SeriesClock,
    fields_rng: np.random.Generator,
    noise_rng: np.random.Generator,
) -> tuple[list[tuple[str, bytes, str]], dict[str, np.ndarray]]:
    """Magnitude and phase series (alternating, one pair per dynamic) of the slice, and its true maps."""
    labels = paint(grid, body.parts)[0]
    xs, ys, zs = grid.axis_coordinates()
    x, y, z = xs[None, :], ys[:, None], zs[0]
    box = (np.array([-FIELD_BOX_MM, -FIELD_BOX_MM, z - 1]), np.array([FIELD_BOX_MM, FIELD_BOX_MM, z + 1]))
    b0 = SmoothField.random(fields_rng, *box, peak=1.0, width_range=B0_WIDTHS_MM)(x, y, z)
    # Span a random share of the configured range over the slice (smooth, so no swaps are implied).
    b0 *= config.b0_range_hz * fields_rng.uniform(*B0_RANGE_SHARE) / max(float(np.abs(b0).max()), 1e-9)
    phase0 = SmoothField.random(fields_rng, *box, peak=PHASE0_PEAK_RAD, offset=PHASE0_OFFSET_RAD)(x, y, z)
    gain = SmoothField.random(fields_rng, *box, peak=config.coil_bias, offset=1.0)(x, y, z)
    pd, pdff, r2 = tissues.proton_density[labels], tissues.pdff[labels], tissues.r2star[labels]
    b0 = np.where(pd > 0, b0, 0.0)
    te = np.asarray(protocol.echo_times_s)
    # Magnitude scale: pure fat at t = 0 reaches max_signal (low flip angle: no T1 weighting).
    water = config.max_signal * gain * pd * (1 - pdff)
    fat = config.max_signal * gain * pd * pdff
    rotation = np.exp(1j * phase0)
    signal = multiecho_signal(water * rotation, fat * rotation, r2, b0, te, spectrum, frequency_hz)
    sigma = config.max_signal * tissues.proton_density[LABELS["other_muscle"]] / config.multiecho_snr
    n = protocol.n_echoes
    position = np.repeat(grid.affine[:3, 3][None, :], n, axis=0)
    dynamics = config.ideal_dynamics if protocol.field == UKB_IDEAL_20254.field else 1
    files: list[tuple[str, bytes, str]] = []
    for dynamic in range(dynamics):
        noise = noise_rng.standard_normal(signal.shape) + 1j * noise_rng.standard_normal(signal.shape)
        noisy = np.moveaxis(signal + sigma * noise, -1, 0)
        if config.phase_sign < 0:
            noisy = noisy.conj()
        phase_value = np.angle(noisy) * 4096 / np.pi
        stored_phase = np.clip(np.rint((phase_value - PHASE_INTERCEPT) / PHASE_SLOPE), 0, 4095)
        for kind, pixels in (("M", to_uint16(np.abs(noisy))), ("P", stored_phase.astype(np.uint16))):
            number, series_time = clock.next(
                MULTIECHO_INTERVAL_S if (dynamic, kind) != (0, "M") else MULTIECHO_DELAY_S
            )
            spec = SeriesSpec(
                series_number=number,
                series_description=protocol.series_description,
                protocol_name=protocol.series_description,
                series_time=series_time,
                image_type=("ORIGINAL", "PRIMARY", kind, "ND"),
                pixel_spacing_mm=(float(grid.spacing[1]), float(grid.spacing[0])),
                slice_thickness_mm=protocol.slice_thickness_mm,
                spacing_between_slices_mm=None,
                image_orientation=AXIAL_ORIENTATION,
                positions_mm=position,
                echo_times_ms=1e3 * te,
                echo_numbers=np.arange(1, n + 1),
                repetition_time_ms=1e3 * protocol.tr_s,
                flip_angle_deg=protocol.flip_angle_deg,
                series_instance_uid=derive_uid("series", config.seed, study.eid, study.instance, number),
                rescale_slope=PHASE_SLOPE if kind == "P" else None,
                rescale_intercept=PHASE_INTERCEPT if kind == "P" else None,
                sequence_name=f"*fl2d{n}",
                acquisition_type="2D",
            )
            files.extend(
                (name, data, protocol.series_description) for name, data in encode_series(pixels, spec, study)
            )
    maps = {
        "labels": labels.astype(np.uint8),
        "pdff": pdff.astype(np.float32),
        "r2star": r2.astype(np.float32),
        "b0": b0.astype(np.float32),
        "water": water.astype(np.float32),
        "fat": fat.astype(np.float32),
        "phase0": np.broadcast_to(phase0, labels.shape).astype(np.float32),
    }
    return files, maps
