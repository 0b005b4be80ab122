"""Station fusion against scipy's map_coordinates, analytic blends, and the synthetic cohort's truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from cohortscale.geometry import Grid, apply_affine
from cohortscale.io.store import open_store, participant_rows
from cohortscale.ops import swaps
from cohortscale.ops.fusion import Sample, Station, fat_fraction, fuse, neck_to_knee_grid, resample, trim
from cohortscale.pipeline.cluster import ClusterConfig
from cohortscale.pipeline.engine import EngineConfig
from cohortscale.pipeline.ingest import run_ingest
from cohortscale.synth.labels import LABELS
from synth_helpers import first_eid, visit_truth


def reference(volume: np.ndarray, affine: np.ndarray, grid: Grid) -> np.ndarray:
    """scipy's order-1 map_coordinates at the grid's voxel centres, in the station's index space."""
    coords = apply_affine(np.linalg.inv(affine), grid.points().reshape(-1, 3))
    return ndimage.map_coordinates(volume, coords[:, ::-1].T, order=1, mode="nearest").reshape(grid.shape)


@pytest.mark.parametrize("ascending", [True, False])
def test_resample_equals_map_coordinates(ascending: bool) -> None:
    rng = np.random.default_rng(1)
    volume = rng.uniform(0, 1000, (12, 20, 24)).astype(np.float32)
    affine = np.diag([2.2, 2.2, 4.5 if ascending else -4.5, 1.0])
    affine[:3, 3] = [-25.3, -21.7, -20.0 if ascending else 30.0]
    grid = Grid.axial((25, 22, 26), (2.0, 2.1, 3.0), [-27.0, -24.0, 35.0])
    values, inside = resample(Station(volume, affine), grid).full(grid.shape)
    expected = reference(volume, affine, grid)
    coords = apply_affine(np.linalg.inv(affine), grid.points())  # (x, y, z) station index per voxel
    hull = np.all((coords > -1e-6) & (coords < np.array(volume.shape[::-1]) - 1 + 1e-6), axis=-1)
    np.testing.assert_array_equal(inside, hull)
    assert inside.sum() > 1000 and (~inside).sum() > 100
    np.testing.assert_allclose(values[inside], expected[inside], rtol=1e-4, atol=1e-3)
    assert np.all(values[~inside] == 0)


def test_rotated_grid_uses_the_general_path() -> None:
    rng = np.random.default_rng(2)
    volume = rng.uniform(0, 100, (10, 16, 18)).astype(np.float32)
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    c, s = np.cos(0.3), np.sin(0.3)
    grid_affine = np.array([[2 * c, -2 * s, 0, 4.0], [2 * s, 2 * c, 0, 3.0], [0, 0, 2.5, 2.0], [0, 0, 0, 1]])
    grid = Grid((8, 10, 10), grid_affine)
    values, inside = resample(Station(volume, affine), grid).full(grid.shape)
    expected = reference(volume, affine, grid)
    assert inside.sum() > 200
    np.testing.assert_allclose(values[inside], expected[inside], rtol=1e-4, atol=1e-3)


def test_average_and_linear_blends() -> None:
    grid = Grid.axial((40, 4, 4), (1.0, 1.0, 1.0), [0.0, 0.0, 39.0])
    upper = np.diag([1.0, 1.0, -1.0, 1.0])
    upper[:3, 3] = [0, 0, 39.0]  # slices 39 … 15 mm
    lower = np.diag([1.0, 1.0, -1.0, 1.0])
    lower[:3, 3] = [0, 0, 24.0]  # slices 24 … 0 mm: overlap 24 … 15
    stations = [Station(np.full((25, 4, 4), 100.0, np.float32), upper),
                Station(np.full((25, 4, 4), 200.0, np.float32), lower)]  # fmt: skip
    averaged = fuse(stations, grid)
    z = 39 - np.arange(40)
    np.testing.assert_allclose(averaged[:, 0, 0], np.where(z > 24, 100, np.where(z < 15, 200, 150)))
    faded = fuse(stations, grid, blend="linear", fade_mm=9.0)[:, 0, 0]
    overlap = faded[(z <= 24) & (z >= 15)]
    assert np.all(np.diff(overlap) >= 0) and overlap[0] < 110 and overlap[-1] > 190  # smooth hand-over
    np.testing.assert_allclose(faded[z > 24], 100)
    partial = fuse(
        [Station(np.full((25, 4, 4), 100.0, np.float32), upper, slices=(0, 10))], grid, fill_value=-1
    )
    assert (partial[:, 0, 0] == 100).sum() == 10 and (partial[:, 0, 0] == -1).sum() == 30


def test_fat_fraction_guards_background() -> None:
    ff = fat_fraction(np.array([10.0, 1.0, 0.0], np.float32), np.array([30.0, 0.5, 0.0], np.float32), 5.0)
    np.testing.assert_allclose(ff[0], 0.25)
    assert np.isnan(ff[1]) and np.isnan(ff[2])


@pytest.fixture(scope="module")
def noiseless_store(noiseless_cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("fusion") / "store.zarr"
    run_ingest(
        noiseless_cohort / "bulk",
        store,
        engine=EngineConfig(progress=False),
        cluster=ClusterConfig(workers=1),
    )
    return store


def test_fused_water_matches_truth_without_junction_steps(
    noiseless_cohort: Path, noiseless_store: Path
) -> None:
    eid = first_eid(noiseless_cohort)
    truth = visit_truth(noiseless_cohort, eid)["fused"]
    root = open_store(noiseless_store, mode="r")
    row = participant_rows(root)[f"{eid}_2"]
    stations = [
        Station(root[f"dixon/station{k}/water"][row], root[f"dixon/station{k}/affine"][row],
                tuple(root[f"dixon/station{k}/slices"][row][3]))
        for k in range(1, 7)
    ]  # fmt: skip
    truth_affine = np.asarray(truth.attrs["affine"])
    labels = np.asarray(truth["labels"])
    grid = Grid(labels.shape, truth_affine)
    fused = fuse(stations, grid)
    expected = np.asarray(truth["water"])
    interior = ndimage.minimum_filter(labels, 3) == ndimage.maximum_filter(labels, 3)
    tissue = interior & (expected > 100) & (fused > 0)
    ratio = fused[tissue] / expected[tissue]
    assert tissue.sum() > 10_000
    assert np.median(np.abs(ratio - 1)) < 0.01 and np.percentile(np.abs(ratio - 1), 95) < 0.03
    # No step at the junctions: mean muscle intensity changes smoothly from slice to slice.
    muscle = (labels == LABELS["other_muscle"]) & interior
    profile = np.array([fused[k][muscle[k]].mean() / expected[k][muscle[k]].mean() if muscle[k].sum() > 30
                        else np.nan for k in range(len(labels))])  # fmt: skip
    steps = np.abs(np.diff(profile))
    assert np.nanmax(steps) < 0.02
    default = neck_to_knee_grid(stations, shape=labels.shape, spacing_mm=tuple(grid.spacing))
    np.testing.assert_allclose(default.affine, truth_affine, atol=0.5)  # same placement as the truth grid


def test_trim_equals_resampling_the_trimmed_station() -> None:
    rng = np.random.default_rng(3)
    volume = rng.uniform(0, 1000, (14, 20, 24)).astype(np.float32)
    affine = np.diag([2.2, 2.2, -4.5, 1.0])
    affine[:3, 3] = [-25.3, -21.7, 30.0]
    grid = Grid.axial((30, 22, 26), (2.0, 2.1, 3.0), [-27.0, -24.0, 35.0])
    station = Station(volume, affine, slices=(1, 12))
    c, s = np.cos(0.25), np.sin(0.25)
    tilted = Grid((30, 22, 26), np.array([[2.0, 0, 0, -27.0], [0, 2.1 * c, -3 * s, -24.0],
                                          [0, 2.1 * s, 3 * c, -20.0], [0, 0, 0, 1]]))  # fmt: skip
    for slices, target in ((1, grid), (3, grid), (2, tilted)):
        trimmed = trim(resample(station, target), station, target, slices)
        expected = resample(station.trimmed(slices), target)
        assert expected.full(target.shape)[1].sum() > 100
        np.testing.assert_array_equal(trimmed.full(target.shape)[1], expected.full(target.shape)[1])
        np.testing.assert_allclose(trimmed.full(target.shape)[0], expected.full(target.shape)[0], rtol=1e-6)
        assert station.trimmed(slices).valid_slices == (1 + slices, 12 - 2 * slices)
    assert station.trimmed(10).valid_slices == (6, 2)  # never trimmed away


def phantom_station(top_mm: float, n: int, legs: bool, grid_xy: tuple[int, int]) -> dict[str, Station]:
    """A transverse slab of a body phantom: water-dominant tissue wrapped in a 2-voxel fat layer; one
    cylinder (trunk) or two (legs at x = ±40 mm)."""
    ny, nx = grid_xy
    x = np.arange(nx) * 4.0 - (nx - 1) * 2.0
    y = np.arange(ny) * 4.0 - (ny - 1) * 2.0
    yy, xx = np.meshgrid(y, x, indexing="ij")
    centres, radius = ([(-40.0, 0.0), (40.0, 0.0)], 30.0) if legs else ([(0.0, 0.0)], 70.0)
    distance = np.min([np.hypot(xx - cx, yy - cy) for cx, cy in centres], axis=0)
    body, core = distance <= radius, distance <= radius - 8.0
    fat = np.where(body & ~core, 900.0, np.where(core, 120.0, 0.0))
    water = np.where(core, 500.0, np.where(body, 60.0, 0.0))
    affine = np.diag([4.0, 4.0, -5.0, 1.0])
    affine[:3, 3] = [x[0], y[0], top_mm]
    slab = np.ones((n, 1, 1), np.float32)
    return {"fat": Station(slab * fat, affine), "water": Station(slab * water, affine)}


def test_swap_detection_on_an_analytic_phantom() -> None:
    grid = Grid.axial((40, 50, 60), (4.0, 4.0, 5.0), [-118.0, -98.0, 0.0])
    stations = {1: phantom_station(0.0, 16, False, (50, 60)), 2: phantom_station(-60.0, 16, False, (50, 60)),
                3: phantom_station(-120.0, 16, True, (50, 60))}  # fmt: skip
    original = {c: {k: resample(s[c], grid) for k, s in stations.items()} for c in ("fat", "water")}
    fat, water = dict(original["fat"]), dict(original["water"])
    fat[2], water[2] = water[2], fat[2]  # a whole station swapped
    left = swaps.side_mask(grid, 0.0, "L")
    fat[3] = Sample(fat[3].rows, np.where(left, water[3].values, fat[3].values), fat[3].inside)
    water[3] = Sample(
        water[3].rows, np.where(left, original["fat"][3].values, water[3].values), water[3].inside
    )
    result = swaps.detect_swaps(fat, water, grid, leg_stations=(3,), min_voxels=50)
    assert result.segments == ("1", "2", "3L", "3R")
    assert result.flagged() == ["2", "3L"]
    assert result.margin.min() > 0.5 and abs(result.midlines_mm[3]) <= 4.0
    fixed_fat, fixed_water = swaps.exchange_swapped(fat, water, result, grid)
    for k in (1, 2, 3):
        np.testing.assert_array_equal(fixed_fat[k].values, original["fat"][k].values)
        np.testing.assert_array_equal(fixed_water[k].values, original["water"][k].values)
    # Without overlaps (station 2 absent) each segment rests on the fat-layer prior alone.
    alone = swaps.detect_swaps(
        {k: fat[k] for k in (1, 3)}, {k: water[k] for k in (1, 3)}, grid, (3,), min_voxels=50
    )
    assert alone.flagged() == ["3L"]
