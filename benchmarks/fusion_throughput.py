"""Fusion speed: cohortscale's separable kernel against a map_coordinates baseline, same grid and blend.

Both fuse the four contrasts of one full-scale UK Biobank participant (six stations at the real
geometry, 35–40 mm overlaps) onto the 224 × 174 × 376 grid with overlap averaging; the baseline samples
each station with ``scipy.ndimage.map_coordinates(order=1)`` over the grid slices the station covers.
Also timed: the whole per-participant kernel of the fusion stage (``fuse_dixon``: four contrasts, swap
detection, FF), both on CuPy when a GPU is present, and the fusion stage itself (reading the stations
from a cohort store, writing the fused volumes) on full-scale synthetic participants.
Run: ``.venv/bin/python benchmarks/fusion_throughput.py [--repeats N]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from cohortscale.backend import gpu_available
from cohortscale.config import SynthConfig, load_config
from cohortscale.geometry import Grid, apply_affine
from cohortscale.io.ledger import Ledger
from cohortscale.ops.fusion import HULL_TOLERANCE, Station, fuse, fuse_dixon, neck_to_knee_grid
from cohortscale.pipeline.cluster import ClusterConfig
from cohortscale.pipeline.engine import EngineConfig
from cohortscale.pipeline.fusion import FusionConfig, run_fusion
from cohortscale.pipeline.ingest import run_ingest
from cohortscale.protocols import DIXON_CONTRASTS
from cohortscale.synth import synthesize
from cohortscale.synth.acquisition import station_slabs
from common import write_results

OVERLAPS_MM = np.array([37.0, 36.5, 38.0, 35.5, 39.0])


def participant(seed: int) -> list[Station]:
    """Six stations of random uint16 content at UK Biobank geometry, slices ascending (as in the store)."""
    rng = np.random.default_rng(seed)
    stations = []
    for slab in station_slabs(1.0, 100.0, OVERLAPS_MM):
        nz, ny, nx = slab.grid.shape
        affine = slab.grid.affine.copy()
        affine[:3, 3] += (nz - 1) * affine[:3, 2]  # first stored slice is the lowest
        affine[:3, 2] *= -1
        stations.append(Station(rng.integers(0, 2000, (nz, ny, nx), dtype=np.uint16), affine))
    return stations


def baseline(stations: list[Station], grid: Grid) -> np.ndarray:
    """Overlap-averaged fusion with map_coordinates, only over the slices each station covers."""
    total = np.zeros(grid.shape, np.float32)
    weights = np.zeros(grid.shape, np.float32)
    points = grid.points()
    for station in stations:
        inverse = np.linalg.inv(station.affine)
        z_index = apply_affine(inverse, points[:, 0, 0])[:, 2]
        rows = np.flatnonzero(
            (z_index >= -HULL_TOLERANCE) & (z_index <= station.volume.shape[0] - 1 + HULL_TOLERANCE)
        )
        if rows.size == 0:
            continue
        block = slice(rows[0], rows[-1] + 1)
        coords = apply_affine(inverse, points[block])
        limits = np.array(station.volume.shape[::-1]) - 1
        inside = np.all((coords >= -HULL_TOLERANCE) & (coords <= limits + HULL_TOLERANCE), axis=-1)
        values = ndimage.map_coordinates(
            station.volume.astype(np.float32), np.moveaxis(coords[..., ::-1], -1, 0), order=1, mode="nearest"
        )
        total[block] += values * inside
        weights[block] += inside
    return np.where(weights > 0, total / np.maximum(weights, 1), 0).astype(np.float32)


def best_time(run, repeats: int, synchronize=lambda: None) -> float:
    """Best wall time of ``repeats`` calls of ``run``, s."""
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def stage_seconds(participants: int) -> float:
    """Median worker seconds per visit of the fusion stage (store → store, uint16 volumes and FF written) on
    full-scale synthetic participants, ingested first; one worker process, one thread."""
    with tempfile.TemporaryDirectory() as tmp:
        config = load_config(SynthConfig, overrides={"participants": participants, "seed": 5, "workers": 2})
        synthesize(config, Path(tmp), progress=False)
        store = Path(tmp) / "store.zarr"
        engine = EngineConfig(progress=False, batch_size=1)
        run_ingest(Path(tmp) / "bulk", store, engine=engine, cluster=ClusterConfig(workers=2))
        run_fusion(store, FusionConfig(device="cpu"), engine, ClusterConfig(workers=1, threads=1))
        # The median visit: the worker's first visit also pays for its imports and allocator warm-up.
        return float(Ledger(store).read("fusion")["seconds"].median())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--stage-participants", type=int, default=3, help="0 skips the stage timing.")
    args = parser.parse_args()
    contrasts = {c: participant(seed) for seed, c in enumerate(DIXON_CONTRASTS)}
    stations = contrasts["water"]
    grid = neck_to_knee_grid(stations)
    ours = fuse(stations, grid)
    reference = baseline(stations, grid)
    error = float(np.abs(ours - reference).max() / np.abs(reference).max())
    by_number = {c: dict(enumerate(s, start=1)) for c, s in contrasts.items()}
    cases = {
        "cohortscale fuse (NumPy, separable)": lambda: [fuse(s, grid) for s in contrasts.values()],
        "cohortscale fuse_dixon (NumPy; + swap detection, FF)": lambda: fuse_dixon(by_number, grid),
        "map_coordinates baseline": lambda: [baseline(s, grid) for s in contrasts.values()],
    }
    timings = {name: best_time(run, args.repeats) for name, run in cases.items()}
    if gpu_available():
        import cupy

        on_gpu = {c: {k: Station(cupy.asarray(s.volume), s.affine) for k, s in st.items()}
                  for c, st in by_number.items()}  # fmt: skip
        sync = cupy.cuda.Device().synchronize
        fuse_dixon(on_gpu, grid)  # warm-up: kernel compilation
        timings["cohortscale fuse (CuPy)"] = best_time(
            lambda: [fuse(list(s.values()), grid) for s in on_gpu.values()], args.repeats, sync
        )
        timings["cohortscale fuse_dixon (CuPy; + swap detection, FF)"] = best_time(
            lambda: fuse_dixon(on_gpu, grid), args.repeats, sync
        )
    if args.stage_participants:
        timings["fusion stage, store to store (NumPy, per visit in a worker)"] = stage_seconds(
            args.stage_participants
        )
    base = timings["map_coordinates baseline"]
    voxels = len(contrasts) * int(np.prod(grid.shape))
    # Bytes a fusion must move at least: the uint16 stations read, the float32 volumes written.
    moved = sum(s.volume.nbytes for st in contrasts.values() for s in st) + voxels * 4
    # The stage row reads and writes the same volumes as the kernels, and compresses them on the way.
    rows = [
        {"case": name, "s_per_participant": round(t, 3), "mvoxels_per_s": round(voxels / t / 1e6, 1),
         "min_bandwidth_gb_per_s": round(moved / t / 1e9, 2),
         "speedup_vs_baseline": round(base / t, 2) if "stage" not in name else "– (adds store I/O)"}
        for name, t in timings.items()
    ]  # fmt: skip
    write_results(
        "fusion_throughput",
        rows,
        notes=f"One full-scale participant, {len(contrasts)} contrasts, grid {grid.shape} (slices, rows, "
        f"cols), overlap averaging, one CPU core (GPU rows when CuPy sees a GPU), best of {args.repeats}. "
        f"Max relative difference of fuse to the baseline: {error:.1e}. min_bandwidth: bytes of the uint16 "
        "stations read plus the float32 volumes written, per second (a lower bound on memory traffic).",
    )


if __name__ == "__main__":
    main()
