"""Fusion speed: cohortscale's separable kernel against a map_coordinates baseline, same grid and blend.

Both fuse the four contrasts of one full-scale UK Biobank participant (six stations at the real
geometry, 35–40 mm overlaps) onto the 224 × 174 × 376 grid with overlap averaging; the baseline samples
each station with ``scipy.ndimage.map_coordinates(order=1)`` over the grid slices the station covers.
Run: ``.venv/bin/python benchmarks/fusion_throughput.py [--repeats N]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy import ndimage

from cohortscale.geometry import Grid, apply_affine
from cohortscale.ops.fusion import HULL_TOLERANCE, Station, fuse, neck_to_knee_grid
from cohortscale.synth.acquisition import station_slabs
from common import write_results

CONTRASTS = 4
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    stations = participant(0)
    grid = neck_to_knee_grid(stations)
    ours = fuse(stations, grid)
    reference = baseline(stations, grid)
    error = float(np.abs(ours - reference).max() / np.abs(reference).max())
    timings = {}
    for name, run in (("cohortscale fuse (NumPy, separable)", lambda: fuse(stations, grid)),
                      ("map_coordinates baseline", lambda: baseline(stations, grid))):  # fmt: skip
        best = np.inf
        for _ in range(args.repeats):
            start = time.perf_counter()
            for _ in range(CONTRASTS):
                run()
            best = min(best, time.perf_counter() - start)
        timings[name] = best
    base = timings["map_coordinates baseline"]
    voxels = CONTRASTS * int(np.prod(grid.shape))
    rows = [
        {"case": name, "s_per_participant": round(t, 3), "mvoxels_per_s": round(voxels / t / 1e6, 1),
         "speedup_vs_baseline": round(base / t, 2)}
        for name, t in timings.items()
    ]  # fmt: skip
    write_results(
        "fusion_throughput",
        rows,
        notes=f"One full-scale participant, {CONTRASTS} contrasts, grid {grid.shape} (slices, rows, cols), "
        f"overlap averaging, one core, best of {args.repeats}. Max relative difference to the baseline: "
        f"{error:.1e}.",
    )


if __name__ == "__main__":
    main()
