"""The ingest stage: UK Biobank bulk zips → the Zarr cohort store, once, with a manifest of every series.

Per visit (on a worker): read each zip in memory (:mod:`cohortscale.io.ukb`), parse and classify its
series from tags (:mod:`cohortscale.io.classify`), keep the newest of duplicated stations, decode and sort
slices along the normal (:mod:`cohortscale.io.dicom`), and write pixels, affines, echo times and imaging
frequency into the participant's row of the store. Bad input becomes a manifest problem and, when the
visit has no usable Dixon, a quarantined outcome; it never stops the cohort.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import zarr

from cohortscale.config import config_to_dict
from cohortscale.io.classify import (
    Problem,
    SeriesInfo,
    SeriesPatterns,
    StationError,
    assign_stations,
    classify,
    group_series,
    newest_first,
    parse_entries,
    parse_headers,
)
from cohortscale.io.dicom import Series, stack_series
from cohortscale.io.ledger import Ledger
from cohortscale.io.store import (
    ArraySpec,
    StoreLayout,
    create_store,
    layout_of,
    open_store,
    participant_rows,
    reset_row,
)
from cohortscale.io.ukb import ArchiveError, ArchiveLimits, VisitFiles, discover, read_entries
from cohortscale.pipeline.cluster import ClusterConfig
from cohortscale.pipeline.engine import EngineConfig, Outcome, StageReport, Visit, run_on_cluster
from cohortscale.protocols import DIXON_CONTRASTS, DIXON_FIELD

#: Siemens phase images: radians per stored value after RescaleSlope/Intercept (UKB.md).
SIEMENS_PHASE_RADIANS_PER_VALUE = np.pi / 4096
#: Bytes read from the start of each file to learn a visit's layout (headers precede the CSA blocks).
HEADER_BYTES = 4096
#: Slices must lie on an even grid along the normal to this tolerance, mm (else one is missing).
SLICE_POSITION_TOLERANCE_MM = 0.01
#: Affines of the four contrasts of a station must agree to this tolerance, mm.
GEOMETRY_TOLERANCE_MM = 1e-3
#: Where per-participant manifest parts and the consolidated manifest live inside the store.
MANIFEST_PARTS = "manifest_parts"
MANIFEST_FILE = "manifest.parquet"

MANIFEST_COLUMNS = (
    "participant", "eid", "instance", "field", "archive", "series_uid", "series_number",
    "series_description", "series_time", "image_type", "kind", "station", "contrast", "files",
    "rows", "columns", "slices", "decision", "reason", "message",
)  # fmt: skip


@dataclass(frozen=True)
class IngestConfig:
    """Settings of the ingest stage.

    Attributes
    ----------
    fields : tuple of int
        Bulk fields to ingest (20201 Dixon; 20254 / 20203 multi-echo).
    patterns : SeriesPatterns
        How series are recognised from SeriesDescription / ImageType.
    limits : ArchiveLimits
        Protection against hostile archives.
    phase_radians_per_value : float
        Phase scaling of the multi-echo phase series, rad per rescaled value.
    layout_sample : int
        Visits whose headers decide the store's array shapes.
    """

    fields: tuple[int, ...] = (20201, 20254, 20203)
    patterns: SeriesPatterns = field(default_factory=SeriesPatterns)
    limits: ArchiveLimits = field(default_factory=ArchiveLimits)
    phase_radians_per_value: float = SIEMENS_PHASE_RADIANS_PER_VALUE
    layout_sample: int = 4


def visits_from_bulk(bulk: str | Path, fields: tuple[int, ...], rows: dict[str, int]) -> list[Visit]:
    """Engine visits for every participant visit in ``bulk`` that has a store row."""
    return [
        Visit(v.key, v.eid, v.instance, rows[v.key], {str(f): str(p) for f, p in v.files.items()})
        for v in discover(bulk, fields)
        if v.key in rows
    ]


def prepare_store(bulk: str | Path, store: str | Path, config: IngestConfig) -> list[Visit]:
    """Create (or extend) the store for the visits in ``bulk`` and return them as engine visits.

    The array shapes come from the headers of up to ``config.layout_sample`` readable visits (the
    largest slab of each station, the most dynamics and echoes of each multi-echo field).
    """
    found = discover(bulk, config.fields)
    root = zarr.open_group(str(store), mode="a")
    layout = layout_of(root)
    if not layout.stations:
        layout = infer_layout(found, config)
    root = create_store(store, [(v.key, v.eid, v.instance) for v in found], layout)
    root.attrs["ingest_config"] = config_to_dict(config)
    (Path(store) / MANIFEST_PARTS).mkdir(exist_ok=True)
    return visits_from_bulk(bulk, config.fields, participant_rows(root))


def infer_layout(visits: list[VisitFiles], config: IngestConfig) -> StoreLayout:
    """Array shapes from the headers of a sample of visits (see :func:`prepare_store`).

    Each station takes the most common in-plane matrix of the sample and the most slices seen with it;
    each multi-echo field the most common matrix and the most dynamics and echoes. A visit acquired
    differently then fails to fit and is quarantined, rather than reshaping the cohort.
    """
    station_seen: dict[int, Counter[tuple[int, int, int]]] = {}
    echo_seen: dict[int, Counter[tuple[int, int, int, int]]] = {}
    sampled = 0
    for visit in visits:
        if sampled >= config.layout_sample:
            break
        try:
            series, _ = _read_series(visit.files, config, headers_only=True)
            dixon = [s for s in series if s.kind == "dixon"]
            assign_stations(dixon, config.patterns.stations)
        except (ArchiveError, StationError):
            continue
        sampled += 1
        for s in dixon:
            station_seen.setdefault(s.station, Counter())[(*s.rows_columns, len(s.datasets))] += 1
        for field_id in sorted({s.field for s in series if s.kind == "multiecho"}):
            mags = [s for s in series if s.field == field_id and s.contrast == "magnitude"]
            echoes = max(len(m.datasets) for m in mags)
            echo_seen.setdefault(field_id, Counter())[(*mags[0].rows_columns, len(mags), echoes)] += 1
    stations = {k: _largest_of_modal_matrix(seen) for k, seen in station_seen.items()}
    multiecho = {f: _largest_of_modal_matrix(seen) for f, seen in echo_seen.items()}
    return StoreLayout(
        {k: (n, rows, cols) for k, (rows, cols, n) in stations.items()},
        {f: (nd, ne, rows, cols) for f, (rows, cols, nd, ne) in multiecho.items()},
    )


def _largest_of_modal_matrix(seen: Counter[tuple[int, ...]]) -> tuple[int, ...]:
    """``(rows, cols, *counts)``: the most common (rows, cols) and, among those, the largest counts."""
    matrices = Counter()
    for key, n in seen.items():
        matrices[key[:2]] += n
    rows_cols = matrices.most_common(1)[0][0]
    counts = [key[2:] for key in seen if key[:2] == rows_cols]
    return (*rows_cols, *np.max(np.array(counts), axis=0).tolist())


def _read_series(
    files: dict[Any, Any], config: IngestConfig, headers_only: bool = False
) -> tuple[list[SeriesInfo], list[tuple[int, str, Problem]]]:
    """Parse and classify every series of a visit's archives. Raises ArchiveError for the Dixon zip.

    ``headers_only`` decompresses only the start of each file (for the layout), so no pixels.
    """
    series: list[SeriesInfo] = []
    problems: list[tuple[int, str, Problem]] = []
    head_bytes = HEADER_BYTES if headers_only else None
    for field_id, path in sorted((int(f), Path(p)) for f, p in files.items()):
        try:
            entries = list(read_entries(path, config.limits, head_bytes))
        except ArchiveError as exc:
            if field_id == DIXON_FIELD:
                raise
            problems.append((field_id, path.name, Problem(path.name, exc.reason, exc.message)))
            continue
        if headers_only:
            datasets, bad = parse_headers(entries), []
        else:
            datasets, bad = parse_entries(entries)
        problems += [(field_id, path.name, p) for p in bad]
        found = group_series(datasets)
        classify(found, config.patterns, config.fields)
        for s in found:
            s.field = s.field or field_id
            s.files = [f"{path.name}/{name}" for name in s.files]
        series += found
    return series, problems


class _VisitRow:
    """One visit's row of the store: writes whole rows of arrays by path, and remembers which."""

    def __init__(self, root: zarr.Group, row: int) -> None:
        self.root, self.row = root, row
        self.written: set[str] = set()

    def __setitem__(self, path: str, value: Any) -> None:
        self.root[path][self.row] = value
        self.written.add(path)

    def reset_unwritten(self, specs: Mapping[str, ArraySpec]) -> None:
        """Set the arrays of ``specs`` (path → spec) that this visit did not write to their fill values."""
        reset_row(self.root, {p: spec for p, spec in specs.items() if p not in self.written}, self.row)


@dataclass
class _VisitLog:
    """Manifest rows of one visit."""

    visit: Visit
    rows: list[dict[str, Any]] = field(default_factory=list)

    def series(
        self, s: SeriesInfo, decision: str, reason: str = "", message: str = "", slices: int | None = None
    ) -> None:
        rows, cols = s.rows_columns
        self.rows.append(
            {
                **self._base(s.field),
                "archive": s.files[0].split("/", 1)[0] if s.files else "",
                "series_uid": s.uid,
                "series_number": s.number,
                "series_description": s.description,
                "series_time": s.time,
                "image_type": "\\".join(s.image_type),
                "kind": s.kind,
                "station": s.station,
                "contrast": s.contrast,
                "files": len(s.files),
                "rows": rows,
                "columns": cols,
                "slices": len(s.datasets) if slices is None else slices,
                "decision": decision,
                "reason": reason,
                "message": f"participant {self.visit.key}, series {s.number} '{s.description}' "
                f"({s.files[0] if s.files else '?'}): {message}"
                if message
                else "",
            }
        )

    def missing(self, station: int, contrast: str) -> None:
        message = f"participant {self.visit.key}: station {station} {contrast} series absent"
        self.rows.append(
            {**self._base(DIXON_FIELD), "kind": "dixon", "station": station, "contrast": contrast,
             "decision": "missing", "reason": "missing_series", "message": message}
        )  # fmt: skip

    def problem(self, field_id: int, archive: str, problem: Problem, decision: str = "problem") -> None:
        self.rows.append(
            {**self._base(field_id), "archive": archive, "decision": decision, "reason": problem.reason,
             "message": f"participant {self.visit.key}: {problem.message}"}
        )  # fmt: skip

    def _base(self, field_id: int) -> dict[str, Any]:
        return {
            "participant": self.visit.key,
            "eid": self.visit.eid,
            "instance": self.visit.instance,
            "field": field_id,
        }

    def frame(self) -> pd.DataFrame:
        frame = pd.DataFrame(self.rows, columns=list(MANIFEST_COLUMNS))
        return frame.astype({"station": "Int64", "series_number": "Int64", "files": "Int64",
                             "rows": "Int64", "columns": "Int64", "slices": "Int64"})  # fmt: skip


def _stack(s: SeriesInfo) -> tuple[Series | None, str, str]:
    """Decode a series: ``(series, "", "")``, or ``(None, reason, message)`` when a file cannot be decoded
    (truncated) or a slice is missing from the even grid along the normal."""
    for ds in s.datasets:
        try:
            ds.pixel_array  # noqa: B018 - decode once here; failures name the file
        except (ValueError, AttributeError, KeyError, TypeError) as exc:
            return None, "truncated_file", f"{ds.filename} cannot be decoded: {exc}"
    series = stack_series(s.datasets)
    measured = np.array([np.asarray(h.ImagePositionPatient, dtype=float) for h in series.headers])
    if np.ptp(measured, axis=0).max() > SLICE_POSITION_TOLERANCE_MM:  # a stack of slices, not of echoes
        positions = series.affine[:3, 3] + np.outer(np.arange(len(s.datasets)), series.affine[:3, 2])
        if np.abs(measured - positions).max() > SLICE_POSITION_TOLERANCE_MM:
            return None, "missing_slice", "slices are not evenly spaced along the normal (one is missing)"
    return series, "", ""


def _slice_offset(affine: np.ndarray, reference: np.ndarray) -> float:
    """Slice index of ``affine``'s origin on the reference slice grid (non-integer if off-grid)."""
    step = reference[:3, 2]
    return float((affine[:3, 3] - reference[:3, 3]) @ step / (step @ step))


def _write_dixon(out: _VisitRow, dixon: list[SeriesInfo], layout: StoreLayout, log: _VisitLog) -> int:
    """Write every station of one visit; return the number of contrasts stored."""
    stored = 0
    for station, (nz, ny, nx) in sorted(layout.stations.items()):
        chosen: dict[str, tuple[SeriesInfo, Series]] = {}
        for contrast in DIXON_CONTRASTS:
            candidates = newest_first([s for s in dixon if (s.station, s.contrast) == (station, contrast)])
            if not candidates:
                log.missing(station, contrast)
                continue
            for older in candidates[1:]:
                log.series(
                    older,
                    "superseded",
                    "duplicate_station",
                    f"a newer acquisition ({candidates[0].time}) is kept",
                )
            series, reason, error = _stack(candidates[0])
            if series is None:
                log.series(candidates[0], "quarantined", reason, error)
                continue
            if series.pixels.shape[1:] != (ny, nx) or series.pixels.shape[0] > nz:
                shape = f"shape {series.pixels.shape} does not fit the station's array {(nz, ny, nx)}"
                log.series(candidates[0], "quarantined", "shape_mismatch", shape)
                continue
            chosen[contrast] = (candidates[0], series)
        if not chosen:
            continue
        # The stored slice grid is that of the contrast with the most slices; others sit on it.
        reference = max(chosen.values(), key=lambda item: item[1].pixels.shape[0])[1].affine
        slices = np.zeros((len(DIXON_CONTRASTS), 2), dtype="int16")
        for ci, contrast in enumerate(DIXON_CONTRASTS):
            if contrast not in chosen:
                continue
            info, series = chosen[contrast]
            offset = _slice_offset(series.affine, reference)
            first, n = round(offset), series.pixels.shape[0]
            aligned = np.allclose(series.affine[:3, :3], reference[:3, :3], atol=GEOMETRY_TOLERANCE_MM)
            if not aligned or abs(offset - first) > 1e-3 or first < 0 or first + n > nz:
                log.series(info, "quarantined", "inconsistent_geometry", "not on the station's slice grid")
                continue
            if (first, n) == (0, nz):
                volume = series.pixels.astype("uint16", copy=False)
            else:
                volume = np.zeros((nz, ny, nx), dtype="uint16")
                volume[first : first + n] = series.pixels
            out[f"dixon/station{station}/{contrast}"] = volume
            slices[ci] = (first, n)
            stored += 1
            short = n < nz
            note = f"{n} of the station's {nz} slices" if short else ""
            log.series(info, "kept", "fewer_slices" if short else "", note, slices=n)
        out[f"dixon/station{station}/affine"] = reference
        out[f"dixon/station{station}/slices"] = slices
    return stored


def _dixon_acquisition(out: _VisitRow, dixon: list[SeriesInfo]) -> None:
    """Echo times (opposed, in phase) and imaging frequency of the Dixon, from the first kept headers."""
    by_contrast = {s.contrast: s.datasets[0] for s in dixon}
    if "opp" in by_contrast and "in" in by_contrast:
        out["dixon/echo_times"] = [float(by_contrast[c].EchoTime) * 1e-3 for c in ("opp", "in")]
    header = next(iter(by_contrast.values()))
    out["dixon/imaging_frequency"] = float(header.ImagingFrequency) * 1e6


def _write_multiecho(
    out: _VisitRow,
    series: list[SeriesInfo],
    layout: StoreLayout,
    config: IngestConfig,
    log: _VisitLog,
) -> None:
    """Pair magnitude and phase series (in SeriesNumber order) into dynamics and store the complex signal."""
    for field_id, (nd, ne, ny, nx) in sorted(layout.multiecho.items()):
        mine = [s for s in series if s.kind == "multiecho" and s.field == field_id]
        if not mine:
            continue
        signal = np.full((nd, ne, ny, nx), np.nan + 1j * np.nan, dtype="complex64")
        dynamics, affine, echo_times = 0, None, None
        pending_magnitude: tuple[SeriesInfo, Series] | None = None
        for s in sorted(mine, key=lambda s: (s.number, s.time)):
            decoded, reason, error = _stack(s)
            if decoded is None:
                log.series(s, "quarantined", reason, error)
                continue
            if s.contrast == "magnitude":
                if pending_magnitude is not None:
                    log.series(
                        pending_magnitude[0],
                        "quarantined",
                        "unpaired_series",
                        "magnitude without a phase series",
                    )
                pending_magnitude = (s, decoded)
                continue
            if pending_magnitude is None:
                log.series(s, "quarantined", "unpaired_series", "phase without a magnitude series")
                continue
            mag_info, magnitude = pending_magnitude
            pending_magnitude = None
            fits = magnitude.pixels.shape == decoded.pixels.shape and magnitude.pixels.shape[1:] == (ny, nx)
            if not fits or magnitude.pixels.shape[0] > ne or dynamics >= nd:
                for info in (mag_info, s):
                    log.series(info, "quarantined", "shape_mismatch", f"does not fit the {field_id} array")
                continue
            n_echo = magnitude.pixels.shape[0]
            phase = decoded.pixels.astype(np.float64) * config.phase_radians_per_value
            signal[dynamics, :n_echo] = magnitude.pixels * np.exp(1j * phase)
            affine, echo_times = magnitude.affine, magnitude.echo_times_s
            dynamics += 1
            for info in (mag_info, s):
                log.series(info, "kept", slices=1)
        if pending_magnitude is not None:
            log.series(
                pending_magnitude[0], "quarantined", "unpaired_series", "magnitude without a phase series"
            )
        if dynamics == 0:
            continue
        out[f"multiecho/{field_id}/signal"] = signal
        padded_te = np.full(ne, np.nan)
        padded_te[: len(echo_times)] = echo_times
        out[f"multiecho/{field_id}/echo_times"] = padded_te
        out[f"multiecho/{field_id}/affine"] = affine
        out[f"multiecho/{field_id}/imaging_frequency"] = float(mine[0].datasets[0].ImagingFrequency) * 1e6
        out[f"multiecho/{field_id}/dynamics"] = dynamics


def ingest_visit(
    visit: Visit, root: zarr.Group, layout: StoreLayout, config: IngestConfig
) -> tuple[Outcome, pd.DataFrame]:
    """Ingest one participant visit into its store row; return its outcome and manifest rows."""
    start = time.perf_counter()
    log = _VisitLog(visit)

    out = _VisitRow(root, visit.index)

    def outcome(status: str, reason: str = "", message: str = "") -> tuple[Outcome, pd.DataFrame]:
        # Inputs that changed since an earlier ingest may hold fewer series, or none.
        out.reset_unwritten(layout.arrays())
        return Outcome(visit.key, status, reason, message, time.perf_counter() - start), log.frame()

    if str(DIXON_FIELD) not in visit.inputs:
        return outcome("quarantined", "missing_dixon", f"participant {visit.key}: no {DIXON_FIELD} zip")
    try:
        series, problems = _read_series(visit.inputs, config)
    except ArchiveError as exc:
        archive = Path(visit.inputs[str(DIXON_FIELD)]).name
        log.problem(DIXON_FIELD, archive, Problem(archive, exc.reason, exc.message), decision="quarantined")
        return outcome("quarantined", exc.reason, f"participant {visit.key}: {exc.message}")
    for field_id, archive, problem in problems:
        log.problem(field_id, archive, problem)
    dixon = [s for s in series if s.kind == "dixon"]
    for s in series:
        if s.kind == "other" or s.field not in config.fields:
            log.series(s, "ignored", "unrecognised_series", "SeriesDescription matches no configured pattern")
    try:
        assign_stations(dixon, config.patterns.stations)
    except StationError as exc:
        return outcome("quarantined", "station_count", f"participant {visit.key}: {exc}")
    stored = _write_dixon(out, dixon, layout, log)
    if stored == 0:
        return outcome(
            "quarantined", "no_dixon_data", f"participant {visit.key}: no Dixon series could be stored"
        )
    _dixon_acquisition(out, dixon)
    _write_multiecho(out, series, layout, config, log)
    frame = log.frame()
    notes = Counter(frame.loc[frame["decision"] != "kept", "reason"])
    summary = ", ".join(f"{n} {reason}" for reason, n in sorted(notes.items()))
    return outcome(
        "done",
        "",
        f"participant {visit.key}: {stored} Dixon series stored" + (f"; {summary}" if summary else ""),
    )


@dataclass(frozen=True)
class IngestStage:
    """The ingest stage for :func:`cohortscale.pipeline.engine.run_stage`."""

    store: str
    config: IngestConfig = field(default_factory=IngestConfig)
    name: str = "ingest"
    gpu: bool = False

    def process(self, visits: list[Visit]) -> list[Outcome]:
        root = open_store(self.store)
        layout = layout_of(root)
        outcomes = []
        for visit in visits:
            signature = input_signature(visit)
            result, manifest = ingest_visit(visit, root, layout, self.config)
            _write_part(Path(self.store) / MANIFEST_PARTS / f"{visit.key}.parquet", manifest)
            _write_part(Path(self.store) / MANIFEST_PARTS / f"{visit.key}.inputs.json", signature)
            outcomes.append(result)
        return outcomes


def input_signature(visit: Visit) -> dict[str, list[int]]:
    """Size and modification time (ns) of each input file or folder of a visit."""
    signature = {}
    for field_id, path in sorted(visit.inputs.items()):
        stat = Path(path).stat()
        signature[field_id] = [stat.st_size, stat.st_mtime_ns]
    return signature


def requeue_changed_inputs(store: str | Path, visits: list[Visit], stage: str = "ingest") -> int:
    """Mark visits whose input files changed since they were ingested as pending again; return how many.

    A rerun after new or regenerated zips then re-ingests exactly those visits (the ledger gets a
    ``failed`` record with reason ``inputs_changed``, which the engine retries).
    """
    ledger = Ledger(store)
    recorded = ledger.read(stage).set_index("participant")["status"]
    changed = []
    for visit in visits:
        if recorded.get(visit.key) not in ("done", "quarantined"):
            continue
        path = Path(store) / MANIFEST_PARTS / f"{visit.key}.inputs.json"
        stored = json.loads(path.read_text()) if path.exists() else None
        if stored != input_signature(visit):
            message = f"participant {visit.key}: input files changed since ingest; ingesting again"
            changed.append(Outcome(visit.key, "failed", "inputs_changed", message))
    if changed:
        ledger.record(stage, changed)
    return len(changed)


def _write_part(path: Path, content: pd.DataFrame | dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    if isinstance(content, pd.DataFrame):
        content.to_parquet(tmp, index=False)
    else:
        tmp.write_text(json.dumps(content))
    os.replace(tmp, path)


def consolidate_manifest(store: str | Path) -> pd.DataFrame:
    """Gather the per-visit manifest parts into ``manifest.parquet`` (sorted, written atomically)."""
    parts = sorted((Path(store) / MANIFEST_PARTS).glob("*.parquet"))
    frames = [pd.read_parquet(p) for p in parts]
    manifest = (
        pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(MANIFEST_COLUMNS))
    )
    manifest = manifest.sort_values(
        ["participant", "field", "series_number", "series_uid", "reason"], na_position="first"
    )
    manifest = manifest.reset_index(drop=True)
    _write_part(Path(store) / MANIFEST_FILE, manifest)
    return manifest


def run_ingest(
    bulk: str | Path,
    store: str | Path,
    config: IngestConfig | None = None,
    engine: EngineConfig | None = None,
    cluster: ClusterConfig | None = None,
) -> StageReport:
    """Ingest every visit of ``bulk`` into ``store`` on a Dask cluster; resumable.

    Parameters
    ----------
    bulk : path-like
        Folder of UK Biobank bulk zips.
    store : path-like
        Cohort store (created or extended).
    config, engine, cluster : optional
        Ingest, engine (batching, retries, progress) and cluster settings.

    Returns
    -------
    StageReport
        Done / quarantined / failed / skipped counts with reasons; ``manifest.parquet`` is rewritten.
    """
    report = run_on_cluster(*prepare_ingest(bulk, store, config or IngestConfig()), store, engine, cluster)
    consolidate_manifest(store)
    return report


def prepare_ingest(
    bulk: str | Path, store: str | Path, config: IngestConfig
) -> tuple[IngestStage, list[Visit]]:
    """Create or extend the store for the visits of ``bulk`` and return the stage and those visits; visits
    whose bulk files changed since they were ingested are ingested again."""
    visits = prepare_store(bulk, store, config)
    requeue_changed_inputs(store, visits)
    return IngestStage(str(store), config), visits
