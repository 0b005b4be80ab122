"""Ingest throughput against dcm2niix and a naive pydicom loop, on the same zips and cores.

Generates ``--participants`` full-scale synthetic participants (Dixon 20201 + multi-echo 20254 zips, no
anomalies) once, or reuses ``--cohort``, then converts them with

* cohortscale's ingest on its embedded Dask cluster (end to end, cluster start-up included), and again
  into a fresh store on a cluster that is already running (the steady-state cost);
* ``dcm2niix`` (PyPI package ``dcm2niix``), one process per participant over ``--workers`` processes,
  each extracting the participant's zips to a temporary folder (timed) and converting them to
  uncompressed NIfTI (``-z n``) and, in a second pass, to gzipped NIfTI (``-z y``);
* a naive pydicom loop over the same process pool: read every file of the zips, decode its pixels, group
  by SeriesInstanceUID, sort along the slice normal, stack and ``np.save`` each series.

It reports participants per minute per core, MB/s of (uncompressed) DICOM read, and the output size
against the raw pixel size (rows × columns × 2 bytes per image), then checks that every Dixon image of
one participant in the store equals pydicom's ``pixel_array`` of its source file.
Run: ``.venv/bin/python benchmarks/ingest_throughput.py [--participants N] [--workers W] [--cohort DIR]``.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import importlib
import io
import logging
import multiprocessing
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import distributed
import numpy as np
import pandas as pd
import pydicom

from cohortscale.config import AnomalyRates, SynthConfig, load_config
from cohortscale.io.store import layout_of, open_store, participant_rows
from cohortscale.io.ukb import discover, parse_bulk_name
from cohortscale.pipeline.cluster import ClusterConfig
from cohortscale.pipeline.engine import EngineConfig
from cohortscale.pipeline.ingest import IngestConfig, ingest_visit, prepare_store, run_ingest
from cohortscale.protocols import DIXON_CONTRASTS, DIXON_FIELD
from cohortscale.synth import synthesize
from common import write_results

#: Participants and worker processes (one thread each) by default: this machine has two cores.
DEFAULT_PARTICIPANTS = 4
DEFAULT_WORKERS = 2
#: Bulk fields read by every tool (what ``IngestConfig`` ingests from a default synthetic cohort).
FIELDS = (20201, 20254, 20203)
NO_ANOMALIES = {f"anomalies.{f.name}": 0.0 for f in dataclasses.fields(AnomalyRates)}
#: Bytes per stored pixel of the raw images (uint16).
BYTES_PER_PIXEL = 2
MB = 1e6
#: dcm2niix compression settings benchmarked: uncompressed NIfTI (the fair comparison) and gzip.
DCM2NIIX_MODES = {"n": "uncompressed NIfTI", "y": "gzipped NIfTI"}
#: Deflate level of rewritten zips: the synthetic generator's default.
ZIP_COMPRESSLEVEL = 1
#: Explicit-VR little-endian header of the Siemens CSA image header element (0029,1010), OB.
CSA_IMAGE_ELEMENT = b"\x29\x00\x10\x10OB\x00\x00"
#: dcm2niix reads three items of this CSA element whatever its item count; with fewer it reads past them.
CSA_THREE_ITEM_ELEMENTS = (b"SliceMeasurementDuration", b"BandwidthPerPixelPhaseEncode")
CSA_ITEMS_READ = 3
#: CSA2 layout: ``SV10``, 4 bytes, tag count, 4 bytes; per element a 64-byte name, VM, VR, SyngoDT, item
#: count and a marker (84 bytes); per item four int32 (the second is the length) and the padded text.
CSA_PREAMBLE = 16
CSA_NAME_BYTES = 64
CSA_ELEMENT_HEADER = 84
CSA_ITEM_COUNT_OFFSET = 76
CSA_ITEM_HEADER = 16
#: Lines of each cProfile listing printed by ``--profile``.
PROFILE_LINES = 25


@dataclasses.dataclass
class Inventory:
    """What the zips of the cohort hold."""

    participants: int
    zip_bytes: int
    dicom_files: int
    dicom_bytes: int
    pixel_bytes: int


@dataclasses.dataclass
class Timing:
    """One measured conversion of the whole cohort."""

    case: str
    wall_s: float
    output_bytes: int
    note: str = ""


# ----------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------


def make_cohort(participants: int, out: Path) -> Path:
    """Generate full-scale synthetic participants without anomalies or repeat visits; return ``bulk``."""
    config = load_config(
        SynthConfig,
        overrides={
            "participants": participants,
            "scale": 1.0,
            "workers": 2,
            "repeat_visit_rate": 0.0,
            **NO_ANOMALIES,
        },
    )
    start = time.perf_counter()
    synthesize(config, out, progress=False)
    print(f"generated {participants} participants in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return out / "bulk"


def visit_zips(bulk: Path) -> list[list[Path]]:
    """The zips of each participant visit, in participant order."""
    return [[Path(p) for _, p in sorted(v.files.items())] for v in discover(bulk, FIELDS)]


def is_dicom_entry(info: zipfile.ZipInfo) -> bool:
    """Zip entries taken for DICOM files (the synthetic and UK Biobank zips name them ``*.dcm``)."""
    return not info.is_dir() and info.filename.lower().endswith(".dcm")


def take_inventory(visits: list[list[Path]]) -> Inventory:
    """Count files, uncompressed DICOM bytes and raw pixel bytes (from Rows × Columns) of every zip."""
    zip_bytes = files = dicom_bytes = pixel_bytes = 0
    for zips in visits:
        for path in zips:
            zip_bytes += path.stat().st_size
            with zipfile.ZipFile(path) as zf:
                for info in filter(is_dicom_entry, zf.infolist()):
                    ds = pydicom.dcmread(io.BytesIO(zf.read(info)), stop_before_pixels=True)
                    files += 1
                    dicom_bytes += info.file_size
                    pixel_bytes += int(ds.Rows) * int(ds.Columns) * BYTES_PER_PIXEL
    return Inventory(len(visits), zip_bytes, files, dicom_bytes, pixel_bytes)


def tree_bytes(path: Path) -> int:
    """Total size of the files under ``path`` (what ``du --apparent-size`` counts)."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# ----------------------------------------------------------------------------------------------
# dcm2niix and the CSA image header of the synthetic files
# ----------------------------------------------------------------------------------------------


def find_dcm2niix() -> str | None:
    """The dcm2niix binary: the one the PyPI package ships, else one on PATH or beside this Python."""
    try:
        import dcm2niix

        if Path(dcm2niix.bin).is_file():
            return str(dcm2niix.bin)
    except ImportError:
        pass
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return shutil.which("dcm2niix", path=path)


def dcm2niix_version(binary: str) -> str:
    """The version line dcm2niix prints."""
    done = subprocess.run([binary, "-v"], capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("v")]
    return lines[-1] if lines else "unknown version"


def pad_csa_items(data: bytes) -> bytes:
    """``data`` (one DICOM file) with the CSA elements of :data:`CSA_THREE_ITEM_ELEMENTS` given three items.

    Empty items are added after the element's own and the same number of bytes is taken from the
    header's trailing zero padding, so the file keeps its size and every other byte's meaning. Files
    without a CSA image header, or without room in its padding, are returned unchanged.
    """
    at = data.find(CSA_IMAGE_ELEMENT)
    if at < 0:
        return data
    start = at + len(CSA_IMAGE_ELEMENT) + 4
    length = int.from_bytes(data[start - 4 : start], "little")
    csa = bytearray(data[start : start + length])
    if csa[:4] != b"SV10":
        return data
    n_tags = int.from_bytes(csa[8:12], "little")
    pos, added = CSA_PREAMBLE, 0
    for _ in range(n_tags):
        name = bytes(csa[pos : pos + CSA_NAME_BYTES]).split(b"\0", 1)[0]
        count_at = pos + CSA_ITEM_COUNT_OFFSET
        items = int.from_bytes(csa[count_at : count_at + 4], "little")
        pos += CSA_ELEMENT_HEADER
        for _ in range(items):
            item_length = int.from_bytes(csa[pos + 4 : pos + 8], "little")
            pos += CSA_ITEM_HEADER + (item_length + 3) // 4 * 4
        if name in CSA_THREE_ITEM_ELEMENTS and 0 < items < CSA_ITEMS_READ:
            extra = CSA_ITEMS_READ - items
            csa[count_at : count_at + 4] = CSA_ITEMS_READ.to_bytes(4, "little")
            csa[pos:pos] = bytes(extra * CSA_ITEM_HEADER)
            pos += extra * CSA_ITEM_HEADER
            added += extra * CSA_ITEM_HEADER
    if added == 0 or any(csa[len(csa) - added :]):
        return data
    return data[:start] + bytes(csa[: len(csa) - added]) + data[start + length :]


def rewrite_zips(visits: list[list[Path]], out: Path) -> list[list[Path]]:
    """Copies of the zips in ``out`` with :func:`pad_csa_items` applied to every DICOM entry."""
    out.mkdir(parents=True, exist_ok=True)
    copies = []
    for zips in visits:
        copies.append([])
        for path in zips:
            target = out / path.name
            with zipfile.ZipFile(path) as src, zipfile.ZipFile(target, "w") as dst:
                for info in src.infolist():
                    data = src.read(info)
                    if is_dicom_entry(info):
                        data = pad_csa_items(data)
                    dst.writestr(info, data, compresslevel=ZIP_COMPRESSLEVEL)
            copies[-1].append(target)
    return copies


def extract(zips: list[Path], folder: Path) -> None:
    """Extract each zip into ``folder/<zip stem>``."""
    for path in zips:
        with zipfile.ZipFile(path) as zf:
            zf.extractall(folder / path.stem)


def dcm2niix_participant(binary: str, zips: list[Path], work: Path, compress: str) -> tuple[float, float]:
    """Extract one participant's zips and convert them with dcm2niix; return (extract s, convert s)."""
    start = time.perf_counter()
    extract(zips, work / "dicom")
    extracted = time.perf_counter()
    (work / "nifti").mkdir()
    done = subprocess.run(
        [binary, "-z", compress, "-o", str(work / "nifti"), str(work / "dicom")],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"dcm2niix exited with {done.returncode} on {work}: {done.stderr[-500:]!r}")
    return extracted - start, time.perf_counter() - extracted


def dcm2niix_works(binary: str, zips: list[Path], scratch: Path) -> bool:
    """Whether dcm2niix converts these zips without failing (it crashes on some CSA headers)."""
    work = Path(tempfile.mkdtemp(dir=scratch))
    try:
        dcm2niix_participant(binary, zips, work, "n")
        return True
    except RuntimeError as exc:
        print(f"dcm2niix failed: {exc}", file=sys.stderr)
        return False
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ----------------------------------------------------------------------------------------------
# The naive pydicom loop
# ----------------------------------------------------------------------------------------------


def pydicom_participant(zips: list[Path], out: Path) -> None:
    """Decode every image of one participant's zips and save each series, slices sorted, as ``.npy``."""
    out.mkdir(parents=True)
    series: dict[str, list[pydicom.Dataset]] = {}
    for path in zips:
        with zipfile.ZipFile(path) as zf:
            for info in filter(is_dicom_entry, zf.infolist()):
                ds = pydicom.dcmread(io.BytesIO(zf.read(info)))
                ds.pixel_array  # noqa: B018 - decoded here, cached on the dataset
                series.setdefault(str(ds.SeriesInstanceUID), []).append(ds)
    for uid, datasets in series.items():
        iop = np.asarray(datasets[0].ImageOrientationPatient, dtype=float)
        normal = np.cross(iop[:3], iop[3:])
        datasets.sort(key=lambda ds: float(np.asarray(ds.ImagePositionPatient, dtype=float) @ normal))
        np.save(out / f"{uid}.npy", np.stack([ds.pixel_array for ds in datasets]))


# ----------------------------------------------------------------------------------------------
# Measurements
# ----------------------------------------------------------------------------------------------


def over_pool(workers: int, task: Callable[..., Any], jobs: list[tuple[Any, ...]]) -> tuple[float, list[Any]]:
    """Run ``task(*job)`` for every job on ``workers`` forked processes; return wall seconds and results.

    Forked (not spawned) so that no import time is charged to the baselines; call before any Dask
    cluster starts threads in this process.
    """
    context = multiprocessing.get_context("fork")
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        results = list(pool.map(task, *zip(*jobs, strict=True)))
    return time.perf_counter() - start, results


def measure_dcm2niix(binary: str, visits: list[list[Path]], workers: int, scratch: Path) -> list[Timing]:
    """dcm2niix over the participants, for each mode of :data:`DCM2NIIX_MODES`."""
    timings = []
    for compress, label in DCM2NIIX_MODES.items():
        root = Path(tempfile.mkdtemp(prefix=f"dcm2niix-{compress}-", dir=scratch))
        jobs = [(binary, zips, root / f"p{i}", compress) for i, zips in enumerate(visits)]
        for _, _, work, _ in jobs:
            work.mkdir()
        wall, parts = over_pool(workers, dcm2niix_participant, jobs)
        extract_s, convert_s = (sum(column) for column in zip(*parts, strict=True))
        output = sum(tree_bytes(work / "nifti") for _, _, work, _ in jobs)
        note = f"worker time: extract {extract_s:.1f} s, convert {convert_s:.1f} s"
        timings.append(Timing(f"dcm2niix -z {compress} ({label}, extract + convert)", wall, output, note))
        shutil.rmtree(root)
    return timings


def measure_pydicom(visits: list[list[Path]], workers: int, scratch: Path) -> Timing:
    """The naive pydicom loop over the participants."""
    root = Path(tempfile.mkdtemp(prefix="pydicom-", dir=scratch))
    jobs = [(zips, root / f"p{i}") for i, zips in enumerate(visits)]
    wall, _ = over_pool(workers, pydicom_participant, jobs)
    output = tree_bytes(root)
    shutil.rmtree(root)
    return Timing("naive pydicom loop (.npy per series)", wall, output)


def measure_ingest_embedded(bulk: Path, store: Path, workers: int) -> tuple[Timing, float]:
    """``run_ingest`` on its own embedded cluster; return the timing and the worker seconds per visit."""
    start = time.perf_counter()
    report = run_ingest(
        bulk,
        store,
        cluster=ClusterConfig(workers=workers, threads=1),
        engine=EngineConfig(progress=False),
    )
    wall = time.perf_counter() - start
    check_report(report)
    note = f"stage {report.seconds:.1f} s of it; the rest is cluster start-up, prepare_store, manifest"
    timing = Timing("cohortscale ingest, embedded cluster (end to end)", wall, tree_bytes(store), note)
    return timing, report.seconds_per_visit


def measure_ingest_running(bulk: Path, store: Path, workers: int) -> tuple[Timing, float]:
    """``run_ingest`` into a fresh store on a cluster already started, whose workers imported the ingest."""
    with (
        distributed.LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
            silence_logs=logging.ERROR,
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        client.run(importlib.import_module, "cohortscale.pipeline.ingest")
        start = time.perf_counter()
        report = run_ingest(
            bulk,
            store,
            cluster=ClusterConfig(scheduler=cluster.scheduler_address),
            engine=EngineConfig(progress=False),
        )
        wall = time.perf_counter() - start
    check_report(report)
    note = f"stage {report.seconds:.1f} s; prepare_store + manifest {wall - report.seconds:.1f} s"
    timing = Timing("cohortscale ingest, running cluster (steady state)", wall, tree_bytes(store), note)
    return timing, report.seconds_per_visit


def check_report(report: Any) -> None:
    """Every visit must have been ingested; a benchmark of failures measures nothing."""
    if report.quarantined or report.failed:
        raise RuntimeError(f"ingest did not complete: {report}")


# ----------------------------------------------------------------------------------------------
# Bit-identity of the store against pydicom
# ----------------------------------------------------------------------------------------------


def dixon_bit_identical(store: Path, dixon_zip: Path) -> tuple[bool, int, str]:
    """Compare every Dixon image of one participant in the store with pydicom's ``pixel_array``.

    Each file's slice is located from the station affine and its ImagePositionPatient (it must land on
    the grid, inside the contrast's stored slice range). Returns (all identical, images compared, first
    problem).
    """
    root = open_store(store, mode="r")
    rows = participant_rows(root)
    kept = pd.read_parquet(store / "manifest.parquet").query("decision == 'kept' and kind == 'dixon'")
    where = {r.series_uid: (r.participant, int(r.station), r.contrast) for r in kept.itertuples()}
    compared, problem = 0, ""
    with zipfile.ZipFile(dixon_zip) as zf:
        for info in filter(is_dicom_entry, zf.infolist()):
            ds = pydicom.dcmread(io.BytesIO(zf.read(info)))
            if str(ds.SeriesInstanceUID) not in where:
                problem = problem or f"{info.filename}: its series is not kept in the store"
                continue
            participant, station, contrast = where[str(ds.SeriesInstanceUID)]
            row = rows[participant]
            affine = root[f"dixon/station{station}/affine"][row]
            first, count = root[f"dixon/station{station}/slices"][row][DIXON_CONTRASTS.index(contrast)]
            position = np.asarray(ds.ImagePositionPatient, dtype=float)
            index = np.linalg.solve(affine[:3, :3], position - affine[:3, 3])
            k = round(float(index[2]))
            on_grid = np.allclose(index, [0, 0, k], atol=1e-6) and first <= k < first + count
            same = on_grid and np.array_equal(
                root[f"dixon/station{station}/{contrast}"][row, k], ds.pixel_array
            )
            if not same and not problem:
                problem = f"{info.filename}: " + ("pixels differ" if on_grid else f"off the grid ({index})")
            compared += 1
    return not problem and compared > 0, compared, problem


# ----------------------------------------------------------------------------------------------
# Profile
# ----------------------------------------------------------------------------------------------


def profile_ingest_visit(bulk: Path, scratch: Path) -> None:
    """Print cProfile's top costs of one ``ingest_visit`` call (the second visit, after a warm-up)."""
    config = IngestConfig()
    store = scratch / "profile.zarr"
    visits = prepare_store(bulk, store, config)
    root = open_store(store)
    layout = layout_of(root)
    ingest_visit(visits[0], root, layout, config)  # warm-up: imports, codec set-up
    profiler = cProfile.Profile()
    profiler.enable()
    ingest_visit(visits[-1], root, layout, config)
    profiler.disable()
    stats = pstats.Stats(profiler, stream=sys.stdout)
    for order in ("tottime", "cumulative"):
        stats.sort_stats(order).print_stats(PROFILE_LINES)


# ----------------------------------------------------------------------------------------------
# Table
# ----------------------------------------------------------------------------------------------


def row(timing: Timing, inventory: Inventory, workers: int) -> dict[str, Any]:
    """One table row: throughput per core, DICOM read rate, output size against raw pixels."""
    per_min_core = inventory.participants / (timing.wall_s / 60) / workers
    return {
        "case": timing.case,
        "wall_s": round(timing.wall_s, 2),
        "core_s_per_participant": round(timing.wall_s * workers / inventory.participants, 2),
        "participants_per_min_per_core": round(per_min_core, 2),
        "dicom_mb_per_s": round(inventory.dicom_bytes / MB / timing.wall_s, 1),
        "output_mb": round(timing.output_bytes / MB, 1) if timing.output_bytes else float("nan"),
        "output_over_raw_pixels": round(timing.output_bytes / inventory.pixel_bytes, 3)
        if timing.output_bytes
        else float("nan"),
    }


def add_ratios(rows: list[dict[str, Any]], references: dict[str, str]) -> None:
    """Add, to every row, its throughput over that of each reference row (by case name)."""
    by_case = {r["case"]: r["participants_per_min_per_core"] for r in rows}
    for column, case in references.items():
        reference = by_case.get(case)
        for r in rows:
            ratio = r["participants_per_min_per_core"] / reference if reference else float("nan")
            r[column] = round(ratio, 2) if reference else ratio


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--participants", type=int, default=DEFAULT_PARTICIPANTS)
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS, help="processes for every tool")
    parser.add_argument("--cohort", type=Path, help="reuse this synthetic cohort (its bulk/ folder)")
    parser.add_argument("--profile", action="store_true", help="also cProfile one ingest_visit call")
    args = parser.parse_args()
    load = os.getloadavg()[0]

    with tempfile.TemporaryDirectory(prefix="ingest-throughput-") as tmp:
        scratch = Path(tmp)
        bulk = args.cohort / "bulk" if args.cohort else make_cohort(args.participants, scratch / "cohort")
        visits = visit_zips(bulk)  # all of them: the ingest takes the whole folder
        notes = [
            f"{len(visits)} full-scale synthetic participants (20201 + 20254 zips, no anomalies), "
            f"{args.workers} worker processes for every tool; zips in the page cache for all of them. "
            f"Load average (1 min) when the script started: {load:.2f}; anything else running skews every "
            "row."
        ]

        binary = find_dcm2niix()
        if binary is None:
            notes.append("dcm2niix is not installed (`pip install dcm2niix`): its rows are missing.")
        elif not dcm2niix_works(binary, visits[0], scratch):
            # dcm2niix reads three items of SliceMeasurementDuration; the synthetic CSA header has one.
            visits = rewrite_zips(visits, scratch / "bulk-csa3")
            bulk = scratch / "bulk-csa3"
            notes.append(
                "dcm2niix crashes (SIGSEGV) on the synthetic files: it reads three items of the CSA image "
                "header element SliceMeasurementDuration, which the generator writes with one, and runs "
                "past it. Every tool therefore read copies of the zips whose CSA headers give that element "
                "two more empty items (same file sizes, pixels and tags; recompressed at deflate 1)."
            )
            if not dcm2niix_works(binary, visits[0], scratch):
                notes.append("dcm2niix fails on the rewritten zips too: its rows are missing.")
                binary = None
        if binary:
            notes.append(f"dcm2niix {dcm2niix_version(binary)} (PyPI wheel); default BIDS sidecars written.")

        inventory = take_inventory(visits)
        print(inventory, file=sys.stderr)

        timings = [measure_pydicom(visits, args.workers, scratch)]
        if binary:
            timings += measure_dcm2niix(binary, visits, args.workers, scratch)
        embedded, _ = measure_ingest_embedded(bulk, scratch / "embedded.zarr", args.workers)
        running, per_visit = measure_ingest_running(bulk, scratch / "running.zarr", args.workers)
        worker_only = Timing(
            "cohortscale ingest, worker time only (mean s per visit × visits ÷ workers)",
            per_visit * inventory.participants / args.workers,
            0,
            f"{per_visit:.2f} s per visit in a worker",
        )
        timings = [embedded, running, worker_only, *timings]
        rows = [row(t, inventory, args.workers) for t in timings]
        add_ratios(
            rows,
            {
                "x_dcm2niix": f"dcm2niix -z n ({DCM2NIIX_MODES['n']}, extract + convert)",
                "x_pydicom_loop": "naive pydicom loop (.npy per series)",
            },
        )

        dixon_zip = next(p for p in visits[0] if parse_bulk_name(p.name)[1] == DIXON_FIELD)
        identical, images, problem = dixon_bit_identical(scratch / "running.zarr", dixon_zip)
        notes += [
            f"Inputs: {inventory.dicom_files} DICOM files, {inventory.dicom_bytes / MB:.0f} MB uncompressed "
            f"({inventory.zip_bytes / MB:.0f} MB of zips); raw pixels {inventory.pixel_bytes / MB:.0f} MB "
            "(rows × columns × 2 bytes per image).",
            *(f"{t.case}: {t.note}." for t in timings if t.note),
            "x_dcm2niix, x_pydicom_loop: participants per minute per core over that tool's. Output: the "
            "Zarr store (zero-padded Dixon stations, complex64 multi-echo signal, manifest, ledger), the "
            "NIfTI files and sidecars, or the .npy files.",
            f"Dixon bit-identical to pydicom's pixel_array: {'yes' if identical else 'no'} "
            f"({images} images of {dixon_zip.name}" + (f"; first problem: {problem})" if problem else ")"),
        ]
        write_results("ingest_throughput", rows, notes="\n\n".join(notes))

        if args.profile:
            profile_ingest_visit(bulk, scratch)


if __name__ == "__main__":
    main()
