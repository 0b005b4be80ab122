"""The fusion stage over ingested synthetic cohorts: truth, swaps, anomalies as ingest recorded them,
resumption, and export of the fused volumes to NIfTI / NRRD at the right voxels."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from cohortscale.io.dicom import read_zip_datasets, stack_series
from cohortscale.io.export import export_participant
from cohortscale.io.ledger import Ledger, Outcome
from cohortscale.io.store import open_cohort, open_store, participant_rows
from cohortscale.ops.fusion import Station, resample
from cohortscale.ops.swaps import SEGMENTS
from cohortscale.pipeline.cluster import ClusterConfig
from cohortscale.pipeline.engine import EngineConfig
from cohortscale.pipeline.fusion import FUSED, FusionConfig, fused_grid, load_stations, run_fusion
from cohortscale.synth.acquisition import fused_shape_spacing
from cohortscale.synth.labels import LABELS
from cohortscale.synth.truth import swapped_segments
from conftest import ingested
from synth_helpers import visit_truth

CLUSTER = ClusterConfig(workers=1, threads=2)
ENGINE = EngineConfig(progress=False)


def config_for(scale: float, **settings: object) -> FusionConfig:
    """Fusion settings whose grid is the synthetic truth grid of a cohort of ``scale``."""
    shape, spacing = fused_shape_spacing(scale)
    return FusionConfig(shape=shape, spacing_mm=spacing, **settings)


def fused_copy(store: Path, tmp_path: Path, config: FusionConfig) -> tuple[Path, object]:
    """Run the fusion stage on a copy of an ingested store (the original stays read-only)."""
    copy = tmp_path / "store.zarr"
    shutil.copytree(store, copy)
    return copy, run_fusion(copy, config, ENGINE, CLUSTER)


def interior(labels: np.ndarray) -> np.ndarray:
    """Voxels whose 3×3×3 neighbourhood holds one label (no partial volume in the truth)."""
    return ndimage.minimum_filter(labels, 3) == ndimage.maximum_filter(labels, 3)


def test_stage_matches_truth_and_resumes(clean_cohort: Path, clean_store: Path, tmp_path: Path) -> None:
    store, report = fused_copy(clean_store, tmp_path, config_for(0.25))
    assert (report.done, report.quarantined, report.failed) == (6, 0, 0)
    root = open_store(store, mode="r")
    for key, row in participant_rows(root).items():
        truth = visit_truth(clean_cohort, *(int(v) for v in key.split("_")))["fused"]
        np.testing.assert_allclose(root[f"{FUSED}/affine"][row], truth.attrs["affine"], atol=0.5)
        labels, expected = np.asarray(truth["labels"]), np.asarray(truth["water"])
        water = root[f"{FUSED}/water"][row].astype(float)
        tissue = interior(labels) & (expected > 100) & (water > 0)  # the grid runs on below the knees
        ratio = water[tissue] / expected[tissue]
        # Noise (SNR 40), slab-edge roll-off and the coil field the truth leaves out; no resampling bias.
        assert tissue.sum() > 2000 and abs(np.median(ratio) - 1) < 0.03, key
        assert np.percentile(np.abs(ratio - 1), 90) < 0.15, key
        assert list(root[f"{FUSED}/stations"][row]) == [4] * 6
        assert list(root[f"{FUSED}/swapped"][row]) == [0] * len(SEGMENTS)
        ff, true_ff = np.asarray(root[f"{FUSED}/ff"][row]), np.asarray(truth["ff"])
        fat_tissue = interior(labels) & (labels == LABELS["subcutaneous_fat"])
        assert abs(np.nanmedian(ff[fat_tissue]) - np.median(true_ff[fat_tissue])) < 0.03
        assert np.isnan(ff[0, 0, 0])  # air above the shoulders, at the grid corner
    assert "dixon/fused/water" in open_cohort(store)

    again = run_fusion(store, config_for(0.25), ENGINE, CLUSTER)
    assert (again.done, again.skipped) == (0, 6)
    # Ingest ran again for one visit (new zips): fusion redoes exactly that one.
    key = sorted(participant_rows(root))[0]
    Ledger(store).record("ingest", [Outcome(key, "done", message="re-ingested")])
    redo = run_fusion(store, config_for(0.25), ENGINE, CLUSTER)
    assert (redo.done, redo.skipped) == (1, 5)
    assert Ledger(store).read("fusion").set_index("participant").at[key, "status"] == "done"


def test_anomalies_as_ingest_recorded_them(anomalous: Path, anomalous_store: Path, tmp_path: Path) -> None:
    store, report = fused_copy(anomalous_store, tmp_path, config_for(0.25, swaps="correct", trim_slices=1))
    manifest = pd.read_parquet(store / "manifest.parquet")
    anomalies = pd.read_csv(anomalous / "truth" / "anomalies.csv")
    root = open_store(store, mode="r")
    rows = participant_rows(root)
    assert report.done == len(rows)
    for key, row in rows.items():
        eid, instance = (int(v) for v in key.split("_"))
        # Swaps: exactly the injected segments are flagged, with a clear margin.
        flags = np.asarray(root[f"{FUSED}/swapped"][row])
        found = {s for s, f in zip(SEGMENTS, flags, strict=True) if f == 1}
        assert found == swapped_segments(anomalies, eid, instance), key
        assert np.nanmin(root[f"{FUSED}/swap_margin"][row]) > 0.1
        # Missing, truncated or mismatched series: the station fuses with the contrasts ingest kept.
        mine = manifest[(manifest["participant"] == key) & (manifest["field"] == 20201)]
        kept = mine[mine["decision"] == "kept"].groupby("station").size()
        stations = np.asarray(root[f"{FUSED}/stations"][row])
        np.testing.assert_array_equal(stations, [kept.get(k, 0) for k in range(1, 7)])
        assert (stations < 4).any()  # every anomalous visit lost a series
        # Corrected swaps, the newest of duplicated stations and trimmed ghosts: FF matches the truth.
        truth = visit_truth(anomalous, eid, instance)["fused"]
        labels = np.asarray(truth["labels"])
        ff, true_ff = np.asarray(root[f"{FUSED}/ff"][row]), np.asarray(truth["ff"])
        muscle = interior(labels) & (labels == LABELS["other_muscle"]) & np.isfinite(ff)
        fat = interior(labels) & (labels == LABELS["subcutaneous_fat"]) & np.isfinite(ff)
        assert abs(np.median(ff[muscle]) - np.median(true_ff[muscle])) < 0.05, key
        assert abs(np.median(ff[fat]) - np.median(true_ff[fat])) < 0.05, key
        assert np.mean(ff[fat] < 0.5) < 0.01, key  # no swapped region left


def test_swap_detection_flags_without_correcting(
    anomalous: Path, anomalous_store: Path, tmp_path: Path
) -> None:
    store, _ = fused_copy(anomalous_store, tmp_path, config_for(0.25, swaps="detect"))
    anomalies = pd.read_csv(anomalous / "truth" / "anomalies.csv")
    root = open_store(store, mode="r")
    for key, row in participant_rows(root).items():
        eid, instance = (int(v) for v in key.split("_"))
        swapped = swapped_segments(anomalies, eid, instance)
        assert {s for s, f in zip(SEGMENTS, root[f"{FUSED}/swapped"][row], strict=True) if f == 1} == swapped
        # Not corrected: the whole-station swap leaves that station's fat-dominant tissue as "water".
        truth = visit_truth(anomalous, eid, instance)["fused"]
        labels, ff = np.asarray(truth["labels"]), np.asarray(root[f"{FUSED}/ff"][row])
        fat = interior(labels) & (labels == LABELS["subcutaneous_fat"]) & np.isfinite(ff)
        assert np.mean(ff[fat] < 0.5) > 0.01  # part of the subcutaneous fat reads as water (corrected: 0)


@pytest.fixture(scope="module")
def noiseless_fused(noiseless_cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = ingested(noiseless_cohort, tmp_path_factory.mktemp("fused") / "noiseless.zarr")
    run_fusion(store, config_for(0.5), ENGINE, CLUSTER)
    return store


@pytest.mark.parametrize("landmark, structure", [("hip_left", "femur_left"), ("hip_right", "femur_right"),
                                                  ("L3", "L3"), ("T12", "T12")])  # fmt: skip
def test_exported_landmarks_land_in_their_structures(
    noiseless_cohort: Path, noiseless_fused: Path, tmp_path: Path, landmark: str, structure: str
) -> None:
    root = open_store(noiseless_fused, mode="r")
    (key,) = participant_rows(root)
    paths = export_participant(root, key, tmp_path, ["dixon/fused/ff"])
    nifti = nib.load(next(p for p in paths if p.name.endswith(".nii.gz")))
    data, header = nrrd.read(str(next(p for p in paths if p.suffix == ".nrrd")))
    summary = json.loads((noiseless_cohort / "truth" / key / "idp.json").read_text())
    point_lps = np.array(summary["landmarks_lps_mm"][landmark])
    point_ras = point_lps * [-1, -1, 1]
    from_nifti = np.linalg.solve(nifti.affine[:3, :3], point_ras - nifti.affine[:3, 3])
    directions = np.asarray(header["space directions"], dtype=float)  # one row per axis
    from_nrrd = np.linalg.solve(directions.T, point_lps - np.asarray(header["space origin"], dtype=float))
    assert header["space"] == "left-posterior-superior"
    np.testing.assert_allclose(from_nifti, from_nrrd, atol=1e-6)
    i, j, k = np.rint(from_nifti).astype(int)
    # The truth's label volume (its own affine, on the same grid to < 0.5 mm) says which structure that is.
    truth = visit_truth(noiseless_cohort, *(int(v) for v in key.split("_")))["fused"]
    labels = np.asarray(truth["labels"])
    truth_affine = np.asarray(truth.attrs["affine"])
    truth_index = np.linalg.solve(truth_affine[:3, :3], point_lps - truth_affine[:3, 3])
    np.testing.assert_allclose(from_nifti, truth_index, atol=0.25)  # voxels of 4.5 mm and 6 mm
    assert labels[k, j, i] == LABELS[structure]
    # Marrow is fatty: both files hold the fused FF of that voxel, in (x, y, z) order.
    ff = np.asarray(nifti.get_fdata(dtype=np.float32))
    assert ff[i, j, k] == data[i, j, k] == root[f"{FUSED}/ff"][0][k, j, i]
    assert ff[i, j, k] > 0.4


def test_duplicated_and_missing_stations(anomalous: Path, anomalous_store: Path, tmp_path: Path) -> None:
    copy = tmp_path / "store.zarr"
    shutil.copytree(anomalous_store, copy)
    anomalies = pd.read_csv(anomalous / "truth" / "anomalies.csv")
    root = open_store(copy)
    (gap_key, gap_row), *_ = sorted(participant_rows(root).items())
    # A whole station absent, as ingest records it when none of its series arrived: 0 slices, no affine.
    root["dixon/station3/slices"][gap_row] = np.zeros((4, 2), dtype="int16")
    root["dixon/station3/affine"][gap_row] = np.full((4, 4), np.nan)
    run_fusion(copy, config_for(0.25), ENGINE, CLUSTER)
    stations = np.asarray(root[f"{FUSED}/stations"][gap_row])
    assert stations[2] == 0
    flags = dict(zip(SEGMENTS, root[f"{FUSED}/swapped"][gap_row], strict=True))
    assert flags["3"] == -1 and all(flags[s] in (0, 1) for s in ("2", "4", "5L", "5R", "6L", "6R"))
    eid, instance = (int(v) for v in gap_key.split("_"))
    assert {s for s, f in flags.items() if f == 1} == swapped_segments(anomalies, eid, instance) - {"3"}
    # Where only station 3 reached, the fused volume is empty: 0 intensity, NaN fat fraction.
    truth = visit_truth(anomalous, eid, instance)["fused"]
    water, ff = root[f"{FUSED}/water"][gap_row], root[f"{FUSED}/ff"][gap_row]
    body = np.asarray(truth["labels"]) > 0
    empty_rows = [z for z in range(len(water)) if body[z].any() and not water[z].any()]
    assert len(empty_rows) >= 3 and np.isnan(ff[empty_rows]).all()
    # The duplicated station is fused from the acquisition ingest kept, the newest (read here from the
    # zip with pydicom): where it alone covers the grid, the fused water is that series resampled.
    k = json.loads(anomalies.query("eid == @eid and anomaly == 'duplicate_station'")["details"].iloc[0])[
        "station"
    ]
    stored = load_stations(root, gap_row)["water"]
    grid = fused_grid(root, gap_key)
    others = [resample(s, grid) for number, s in stored.items() if number != k]
    covered_by_others = np.zeros(grid.shape, bool)
    for sample in others:
        covered_by_others |= sample.full(grid.shape)[1]
    stored_top = stored[k].valid()[1][2, 3]
    water_series: dict[str, list] = {}
    for ds in read_zip_datasets(anomalous / "bulk" / f"{eid}_20201_{instance}_0.zip"):
        if str(ds.SeriesDescription).endswith("_W"):
            water_series.setdefault(str(ds.SeriesInstanceUID), []).append(ds)
    acquisitions = sorted(
        (s for s in map(stack_series, water_series.values()) if abs(s.affine[2, 3] - stored_top) < 1.0),
        key=lambda s: s.time,
    )
    assert len(acquisitions) == 2
    fused_from = {}
    for name, series in zip(("older", "newer"), acquisitions, strict=True):
        values, inside = resample(Station(series.pixels, series.affine), grid).full(grid.shape)
        alone = inside & ~covered_by_others
        fused_from[name] = np.abs(water[alone] - np.rint(values[alone])).max()
    assert alone.sum() > 1000
    assert fused_from["newer"] <= 1 < fused_from["older"]


def test_fusing_again_replaces_every_output(anomalous_store: Path, tmp_path: Path) -> None:
    store, first = fused_copy(anomalous_store, tmp_path, config_for(0.25))
    assert first.done == 2
    root = open_store(store)
    (key_a, row_a), (key_b, row_b) = sorted(participant_rows(root).items())
    ledger = Ledger(store)
    # Ingest ran again for A and kept no fat series this time; ingest quarantined B.
    for k in range(1, 7):
        slices = root[f"dixon/station{k}/slices"][row_a]
        slices[2] = 0
        root[f"dixon/station{k}/slices"][row_a] = slices
    ledger.record("ingest", [Outcome(key_a, "done"), Outcome(key_b, "quarantined", "corrupt_zip")])
    again = run_fusion(store, config_for(0.25), ENGINE, CLUSTER)
    assert (again.done, again.skipped) == (1, 0)  # B is not ready: quarantined upstream
    assert not root[f"{FUSED}/fat"][row_a].any() and np.isnan(root[f"{FUSED}/ff"][row_a]).all()
    assert (root[f"{FUSED}/swapped"][row_a] == -1).all() and root[f"{FUSED}/water"][row_a].any()
    assert np.isnan(root[f"{FUSED}/affine"][row_b]).all() and not root[f"{FUSED}/water"][row_b].any()
    latest = ledger.read("fusion").set_index("participant")
    assert (latest.at[key_b, "status"], latest.at[key_b, "reason"]) == ("quarantined", "ingest_quarantined")
    # New settings fuse every fused visit again; the same settings do nothing.
    changed = run_fusion(store, config_for(0.25, trim_slices=1), ENGINE, CLUSTER)
    assert (changed.done, changed.skipped) == (1, 0)
    assert run_fusion(store, config_for(0.25, trim_slices=1), ENGINE, CLUSTER).done == 0
    assert root[f"{FUSED}/water"].attrs["fusion_config"]["trim_slices"] == 1
