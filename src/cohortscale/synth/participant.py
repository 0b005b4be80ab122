"""One participant visit of the synthetic cohort: anatomy → images → DICOM zips + truth.

:func:`generate_visit` is a pure function of the participant's phenotypes, the visit, the configuration
and the cohort seed: it writes ``bulk/<eid>_20201_<instance>_0.zip`` (neck-to-knee Dixon), one zip per
multi-echo protocol, and ``truth/<eid>_<instance>/`` (label volume, noiseless maps, true IDPs), and
returns the true IDPs and the anomalies it injected.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from cohortscale.config import SynthConfig
from cohortscale.geometry import Grid
from cohortscale.ops.fatwater import SPECTRA, multiecho_signal
from cohortscale.protocols import (
    DIXON_CONTRASTS,
    DIXON_FIELD,
    MultiEchoProtocol,
    dixon_series_description,
    dixon_series_number,
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
#: Grid scale and iterations used to calibrate the anatomy's volumes.
CALIBRATION_SCALE = 0.5
CALIBRATION_STEPS = 2
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
    body = calibrated_body(subject, int(rng.integers(2**63)), z_vertex, slabs)

    tissues = visit_tissues(subject, slice_level, rng)
    frequency_hz = config.scanner.imaging_frequency_mhz * 1e6
    spectrum = SPECTRA[SYNTH_SPECTRUM]
    tables = dixon_tables(tissues, config.dixon, spectrum, frequency_hz)
    # Signal scale: subcutaneous fat in phase reaches max_signal; noise from muscle water.
    s0 = config.max_signal / tables.in_phase[LABELS["subcutaneous_fat"]]
    sigma = s0 * tables.water[LABELS["other_muscle"]] / config.dixon_snr
    fields_rng = visit_rng(config.seed, eid, instance, _FIELDS)
    box_lo = np.array([-250.0, -200.0, slabs[-1].bottom_edge])
    box_hi = np.array([250.0, 200.0, slabs[0].top_edge])
    bias = SmoothField.random(fields_rng, box_lo, box_hi, peak=config.coil_bias, offset=1.0)
    study = _study_info(subject, eid, instance, config, rng)
    noise_rng = visit_rng(config.seed, eid, instance, _NOISE)
    zip_rng = visit_rng(config.seed, eid, instance, _ZIP)
    manifest = "manifest.cvs" if zip_rng.random() < 0.5 else "manifest.csv"
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

    dixon_files = _dixon_series(body, slabs, tables, s0, sigma, bias, study, config, anomalies, noise_rng)
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
    tmp_dir = truth_dir.with_name(truth_dir.name + ".tmp")
    shutil.rmtree(tmp_dir, ignore_errors=True)
    root = zarr.open_group(str(tmp_dir / "maps.zarr"), mode="w")
    idps: dict[str, Any] = volume_idps(body, full_resolution_grid(slabs))
    fgrid = fused_grid(slabs, config.scale)
    write_arrays(root.require_group("fused"), fused_truth(body, fgrid, tables, tissues.pdff, s0, bias), fgrid)
    for fld in config.multiecho_fields:
        protocol = config.multiecho_protocol(fld)
        grid = multiecho_grid(protocol, config.scale, float(body.landmarks[slice_level][2]))
        me_files, maps = _multiecho_series(
            body, grid, protocol, tissues, spectrum, frequency_hz, config, study, fields_rng, noise_rng
        )
        files.append(write_zip(protocol.field, me_files).name)
        attrs = {
            "echo_times_s": list(protocol.echo_times_s),
            "imaging_frequency_hz": frequency_hz,
            "spectrum": SYNTH_SPECTRUM,
            "phase_sign": 1,
            "slice_level": slice_level,
        }
        write_arrays(root.require_group(f"multiecho/{protocol.field}"), maps, grid, attrs)
        idps.update(slice_idps(maps, tables, f"_{protocol.field}"))
    idps["slice_level"] = slice_level
    records = [{"anomaly": k, **v} for k, v in anomalies.items()]
    summary = {"eid": eid, "instance": instance, "idps": idps, "anomalies": records, "files": files}
    (tmp_dir / "idp.json").write_text(json.dumps(summary, indent=1))
    shutil.rmtree(truth_dir, ignore_errors=True)
    os.replace(tmp_dir, truth_dir)
    return VisitResult(eid, instance, idps, records, files)


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
) -> Body:
    """Build the body, correcting its thigh-muscle and visceral-fat inputs so the painted volumes land
    on the population model's targets (organs and bones overlap the analytic shapes)."""
    inputs = dict(subject)
    coarse = fused_grid(slabs, CALIBRATION_SCALE)
    for _ in range(CALIBRATION_STEPS):
        body = build_body(inputs, np.random.default_rng(anatomy_seed), TABLE_TOP_Y_MM, z_vertex)
        measured = volume_idps(body, coarse)
        for key in ("tmv_cm3", "vat_l", "asat_l", "pa_ratio"):
            inputs[key] = inputs[key] * float(subject[key]) / max(measured[key], 1e-6)
    return build_body(inputs, np.random.default_rng(anatomy_seed), TABLE_TOP_Y_MM, z_vertex)


def _study_info(
    subject: Mapping[str, Any],
    eid: int,
    instance: int,
    config: SynthConfig,
    rng: np.random.Generator,
) -> StudyInfo:
    centre = int(subject["centre"])
    address = config.scanner.centres[centre]
    date = subject["imaging_date"] if instance == 2 else subject["repeat_date"]
    minutes = int(rng.integers(8 * 60, 18 * 60))
    suffix = "^Bio" if rng.random() < PATIENT_SUFFIX_RATE else ""
    weight = float(subject["weight_kg"])
    return StudyInfo(
        eid=eid,
        instance=instance,
        patient_sex="M" if int(subject["sex"]) == 1 else "F",
        patient_age_years=int(subject["age"] if instance == 2 else subject["repeat_age"]),
        patient_size_m=round(float(subject["height_cm"]) / 100, 2),
        patient_weight_kg=round(weight, 1),
        study_date=datetime.date(date.year, date.month, date.day),
        study_time=datetime.time(minutes // 60, minutes % 60, int(rng.integers(0, 60))),
        institution_name="UK Biobank " + address.split(",")[0],
        institution_address=address,
        scanner=config.scanner,
        study_instance_uid=derive_uid("study", config.seed, eid, instance),
        frame_of_reference_uid=derive_uid("for", config.seed, eid, instance),
        patient_id_suffix=suffix,
    )


def _time_after(start: datetime.time, seconds: float) -> datetime.time:
    stamp = datetime.datetime.combine(datetime.date(2000, 1, 1), start) + datetime.timedelta(seconds=seconds)
    return stamp.time()


def _slab_images(
    body: Body,
    slab: StationSlab,
    tables: Any,
    s0: float,
    sigma: float,
    bias: SmoothField,
    config: SynthConfig,
    rng: np.random.Generator,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Noisy float images of the four contrasts of one slab, and its label volume."""
    labels = paint(slab.grid, body.parts)
    xs, ys, zs = slab.grid.axis_coordinates()
    gain = (s0 * bias(xs[None, None, :], ys[None, :, None], zs[:, None, None])).astype(np.float32)
    gain *= edge_rolloff(
        slab.grid.shape[0], config.edge_rolloff, decay_slices=max(1.0, 5 * config.scale)
    ).astype(np.float32)[:, None, None]
    images = {}
    for contrast, table in zip(
        DIXON_CONTRASTS, (tables.in_phase, tables.opposed, tables.fat, tables.water), strict=True
    ):
        images[contrast] = rician(table.astype(np.float32)[labels] * gain, sigma, rng)
    return images, labels


def _dixon_series(
    body: Body,
    slabs: list[StationSlab],
    tables: Any,
    s0: float,
    sigma: float,
    bias: SmoothField,
    study: StudyInfo,
    config: SynthConfig,
    anomalies: dict[str, dict[str, Any]],
    rng: np.random.Generator,
) -> list[tuple[str, bytes, str]]:
    """Encode the 24 (or, with anomalies, more or fewer) Dixon series of a visit."""
    files: list[tuple[str, bytes, str]] = []
    acq = config.dixon
    for slab in slabs:
        st = slab.station
        images, _ = _slab_images(body, slab, tables, s0, sigma, bias, config, rng)
        if anomalies.get("swap_station", {}).get("station") == st.number:
            images["fat"], images["water"] = images["water"], images["fat"]
        swap_leg = anomalies.get("swap_leg", {})
        if swap_leg.get("station") == st.number:
            xs = slab.grid.axis_coordinates()[0]
            side = (xs > 0) if swap_leg["side"] == "left" else (xs < 0)
            fat, water = images["fat"].copy(), images["water"].copy()
            images["fat"][..., side], images["water"][..., side] = water[..., side], fat[..., side]
        if "ghost_slices" in anomalies:
            n = anomalies["ghost_slices"]["slices"]
            for c, img in images.items():
                top, bottom = img[:n].copy(), img[-n:].copy()
                img[:n] += GHOST_AMPLITUDE * bottom
                img[-n:] += GHOST_AMPLITUDE * top
                images[c] = img
        keep = slab.grid.shape[0]
        if anomalies.get("short_station", {}).get("station") == st.number:
            keep -= 1
        acquisitions = [(images, 0)]
        if anomalies.get("duplicate_station", {}).get("station") == st.number:
            repeat, _ = _slab_images(body, slab, tables, s0, sigma, bias, config, rng)
            # The first attempt had motion: a shifted ghost along the phase-encoding (AP) axis.
            for img in images.values():
                img += 0.35 * np.roll(img, img.shape[1] // 4, axis=1)
            acquisitions.append((repeat, 1))
        for imgs, attempt in acquisitions:
            for contrast in DIXON_CONTRASTS:
                missing = anomalies.get("missing_series", {})
                if (
                    attempt == 0
                    and missing.get("station") == st.number
                    and missing.get("contrast") == contrast
                ):
                    continue
                number = dixon_series_number(st, contrast) + 24 * attempt
                positions = slab.grid.affine[:3, 3] + np.outer(np.arange(keep), slab.grid.affine[:3, 2])
                spec = SeriesSpec(
                    series_number=number,
                    series_description=dixon_series_description(st, contrast),
                    protocol_name=dixon_series_description(st, contrast).rsplit("_", 1)[0],
                    series_time=_time_after(study.study_time, SERIES_INTERVAL_S * number),
                    image_type=(
                        "ORIGINAL",
                        "PRIMARY",
                        "M",
                        "DIXON",
                        {"in": "IN_PHASE", "opp": "OPP_PHASE", "fat": "F", "water": "W"}[contrast],
                    ),
                    pixel_spacing_mm=(slab.pixel_spacing_mm, slab.pixel_spacing_mm),
                    slice_thickness_mm=slab.slice_spacing_mm,
                    spacing_between_slices_mm=slab.slice_spacing_mm,
                    image_orientation=AXIAL_ORIENTATION,
                    positions_mm=positions,
                    echo_times_ms=np.full(
                        keep, 1e3 * (acq.te_opposed_s if contrast == "opp" else acq.te_in_phase_s)
                    ),
                    echo_numbers=np.full(keep, 1 if contrast == "opp" else 2),
                    repetition_time_ms=1e3 * acq.tr_s,
                    flip_angle_deg=acq.flip_angle_deg,
                    series_instance_uid=derive_uid("series", config.seed, study.eid, study.instance, number),
                    body_part="WHOLEBODY",
                )
                pixels = to_uint16(imgs[contrast][:keep])
                desc = spec.series_description
                files.extend((name, data, desc) for name, data in encode_series(pixels, spec, study))
    return files


def _multiecho_series(
    body: Body,
    grid: Grid,
    protocol: MultiEchoProtocol,
    tissues: Any,
    spectrum: Any,
    frequency_hz: float,
    config: SynthConfig,
    study: StudyInfo,
    fields_rng: np.random.Generator,
    noise_rng: np.random.Generator,
) -> tuple[list[tuple[str, bytes, str]], dict[str, np.ndarray]]:
    """Magnitude and phase series of the multi-echo slice, and its true maps."""
    labels = paint(grid, body.parts)[0]
    xs, ys, zs = grid.axis_coordinates()
    x, y, z = xs[None, :], ys[:, None], zs[0]
    box = (np.array([-200.0, -200.0, z - 1]), np.array([200.0, 200.0, z + 1]))
    b0 = SmoothField.random(fields_rng, *box, peak=1.0, width_range=(80.0, 250.0))(x, y, z)
    # Span a random share of the configured range over the slice (smooth, so no swaps are implied).
    b0 *= config.b0_range_hz * fields_rng.uniform(0.5, 1.0) / max(float(np.abs(b0).max()), 1e-9)
    phase0 = SmoothField.random(fields_rng, *box, peak=np.pi / 2, offset=0.3)(x, y, z)
    gain = SmoothField.random(fields_rng, *box, peak=config.coil_bias, offset=1.0)(x, y, z)
    pd, pdff, r2 = tissues.proton_density[labels], tissues.pdff[labels], tissues.r2star[labels]
    b0 = np.where(pd > 0, b0, 0.0)
    te = np.asarray(protocol.echo_times_s)
    # Magnitude scale: pure fat at the first echo reaches max_signal.
    scale = config.max_signal
    water = scale * gain * pd * (1 - pdff)
    fat = scale * gain * pd * pdff
    rotation = np.exp(1j * phase0)
    signal = multiecho_signal(water * rotation, fat * rotation, r2, b0, te, spectrum, frequency_hz)
    sigma = scale * tissues.proton_density[LABELS["other_muscle"]] / config.multiecho_snr
    noisy = signal + sigma * (
        noise_rng.standard_normal(signal.shape) + 1j * noise_rng.standard_normal(signal.shape)
    )
    magnitude = to_uint16(np.moveaxis(np.abs(noisy), -1, 0))
    phase_value = np.angle(np.moveaxis(noisy, -1, 0)) * 4096 / np.pi
    phase = np.clip(np.rint((phase_value - PHASE_INTERCEPT) / PHASE_SLOPE), 0, 4095).astype(np.uint16)
    n = protocol.n_echoes
    position = np.repeat(grid.affine[:3, 3][None, :], n, axis=0)
    files: list[tuple[str, bytes, str]] = []
    for k, (kind, pixels) in enumerate((("M", magnitude), ("P", phase))):
        number = 1 + k
        spec = SeriesSpec(
            series_number=number,
            series_description=protocol.series_description,
            protocol_name=protocol.series_description,
            series_time=_time_after(study.study_time, 900 + 20 * number),
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
            series_instance_uid=derive_uid(
                "series", config.seed, study.eid, study.instance, protocol.field, number
            ),
            rescale_slope=PHASE_SLOPE if kind == "P" else None,
            rescale_intercept=PHASE_INTERCEPT if kind == "P" else None,
            sequence_name="*fl2d6" if n == 6 else "*fl2d10",
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
