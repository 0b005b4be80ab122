"""Truth IDPs agree with the population model; generation is deterministic and resumable."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cohortscale.config import SynthConfig, load_config
from cohortscale.io.dicom import read_zip_series
from cohortscale.synth import synthesize
from cohortscale.synth.labels import LABELS, VERTEBRA_IDS, VERTEBRAE
from cohortscale.synth.relaxation import dixon_fat_fraction
from conftest import make_config
from synth_helpers import first_eid, visit_truth


def joined(cohort: Path) -> pd.DataFrame:
    idps = pd.read_csv(cohort / "truth" / "idps.csv")
    population = pd.read_csv(cohort / "truth" / "population.csv")
    return idps.merge(population, on="eid", suffixes=("", "_target"))


def test_volumes_match_population_targets(clean_cohort: Path) -> None:
    table = joined(clean_cohort)
    for name, tolerance in (("tmv_cm3", 0.01), ("vat_l", 0.02), ("asat_l", 0.02), ("pa_ratio", 0.01)):
        np.testing.assert_allclose(table[name], table[f"{name}_target"], rtol=tolerance, err_msg=name)
    np.testing.assert_allclose(table["thigh_asymmetry"], table["thigh_asymmetry_target"], atol=0.01)


@pytest.mark.parametrize("field", [20254, 20203])
def test_marrow_and_liver_roi_statistics(clean_cohort: Path, field: int) -> None:
    table = joined(clean_cohort)
    np.testing.assert_allclose(table[f"vbm_pdff_{field}"], table["vbm_pdff"], atol=1e-3)
    np.testing.assert_allclose(table[f"vbm_r2star_{field}"], table["vbm_r2star"], rtol=1e-5)
    np.testing.assert_allclose(table[f"liver_pdff_{field}"], table["liver_pdff"], atol=1e-3)
    expected_ff = 100 * dixon_fat_fraction(table["vbm_pdff"] / 100, table["marrow_t1_water_s"], 6.69e-3, 10.0)
    np.testing.assert_allclose(table[f"vbm_ff_{field}"], expected_ff, atol=1e-3)
    np.testing.assert_allclose(table[f"vbm_iron_{field}"], 0.202 + 0.0254 * table["vbm_r2star"], rtol=1e-5)
    np.testing.assert_allclose(table[f"vbm_ff_{field}"], table["vbm_ff"], atol=0.05)
    assert (table[f"vbm_roi_voxels_{field}"] > 0).all()


def test_full_scale_roi_is_large_enough(make_cohort) -> None:
    table = pd.read_csv(make_cohort("full_scale", scale=1.0, seed=3) / "truth" / "idps.csv")
    # The bone-marrow study excludes ROIs under 64 voxels; a vertebral body is several hundred.
    assert (table["vbm_roi_voxels_20254"] > 200).all()


def centroid_mm(labels: np.ndarray, affine: np.ndarray, label: int) -> np.ndarray:
    k, j, i = np.nonzero(labels == label)
    return (affine[:3, :3] @ np.array([i.mean(), j.mean(), k.mean()])) + affine[:3, 3]


def test_anatomy_sides_in_patient_coordinates(make_cohort) -> None:
    cohort = make_cohort("full_scale", scale=1.0, seed=3)
    eid = first_eid(cohort)
    fused = visit_truth(cohort, eid)["fused"]
    labels, affine = np.asarray(fused["labels"]), np.asarray(fused.attrs["affine"])

    def x(name: str) -> float:
        return float(centroid_mm(labels, affine, LABELS[name])[0])

    # DICOM LPS: +x is the patient's left.
    assert x("liver") < -20 and x("spleen") > 20 and x("heart") > 0
    assert x("kidney_left") > 20 and x("kidney_right") < -20
    assert x("femur_left") > 50 and x("femur_right") < -50
    for side in ("left", "right"):
        anterior = centroid_mm(labels, affine, LABELS[f"thigh_anterior_{side}"])
        posterior = centroid_mm(labels, affine, LABELS[f"thigh_posterior_{side}"])
        assert anterior[1] < posterior[1]  # +y is posterior
    # 23 vertebral bodies, C3 at the top down to S1, each below the previous one.
    heights = [centroid_mm(labels, affine, LABELS[v])[2] for v in VERTEBRAE]
    assert len(VERTEBRAE) == 23 and np.all(np.diff(heights) < 0)
    assert heights[0] > centroid_mm(labels, affine, LABELS["liver"])[2] > heights[-1]


def test_multiecho_slice_projects_onto_the_dixon_anatomy(make_cohort) -> None:
    """The 2D slice's labels equal the 3D labels at the slice's pixels, located from the DICOM tags alone."""
    cohort = make_cohort("full_scale", scale=1.0, seed=3)
    eid = first_eid(cohort)
    truth = visit_truth(cohort, eid)
    header = read_zip_series(cohort / "bulk" / f"{eid}_20254_2_0.zip")[0].headers[0]
    ipp = np.array(header.ImagePositionPatient, dtype=float)
    iop = np.array(header.ImageOrientationPatient, dtype=float)
    row_spacing, col_spacing = (float(v) for v in header.PixelSpacing)
    rows, cols = int(header.Rows), int(header.Columns)
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    world = ipp + c[..., None] * col_spacing * iop[:3] + r[..., None] * row_spacing * iop[3:]
    fused = truth["fused"]
    inverse = np.linalg.inv(np.asarray(fused.attrs["affine"]))
    index = np.rint(world @ inverse[:3, :3].T + inverse[:3, 3]).astype(int)
    labels3d = np.asarray(fused["labels"])
    inside = np.all((index >= 0) & (index < np.array(labels3d.shape[::-1])), axis=-1)
    index = np.where(inside[..., None], index, 0)
    sampled = labels3d[index[..., 2], index[..., 1], index[..., 0]]
    slice_labels = np.asarray(truth["multiecho/20254/labels"])
    roi = np.isin(slice_labels, VERTEBRA_IDS) & inside
    assert inside.mean() > 0.8
    assert (sampled[inside] == slice_labels[inside]).mean() > 0.9
    assert np.isin(sampled[roi], VERTEBRA_IDS).mean() > 0.9


def digest(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != "config.json"
    }


def test_deterministic_across_workers_and_seed_sensitive(tmp_path: Path) -> None:
    anomalies = {f"anomalies.{name}": 0.5 for name in ("ghost_slices", "swap_leg", "duplicate_station")}
    config = make_config(participants=2, seed=21, ideal_dynamics=2, **anomalies)
    synthesize(config, tmp_path / "a", progress=False)
    synthesize(dataclasses.replace(config, workers=2), tmp_path / "b", progress=False)
    first, second = digest(tmp_path / "a"), digest(tmp_path / "b")
    assert first == second and len(first) >= 10
    other = make_config(participants=1, seed=22)
    synthesize(other, tmp_path / "c", progress=False)
    assert digest(tmp_path / "c")["phenotypes.csv"] != first["phenotypes.csv"]


def test_rerun_with_other_settings_regenerates(tmp_path: Path) -> None:
    settings = {"participants": 2, "seed": 5, "repeat_visit_rate": 0.0}
    synthesize(make_config(**settings), tmp_path, progress=False)
    before = digest(tmp_path)
    summary = synthesize(make_config(**settings, dixon_snr=10.0), tmp_path, progress=False)
    assert summary.generated == 2 and summary.skipped == 0
    assert digest(tmp_path) != before
    one = synthesize(make_config(participants=1, seed=9, repeat_visit_rate=0.0), tmp_path, progress=False)
    assert one.generated == 1
    # Visits of the earlier cohort are gone, not mixed in.
    assert len(list((tmp_path / "truth").glob("*_2"))) == 1
    assert len(list((tmp_path / "bulk").glob("*.zip"))) == 2


def test_rerun_resumes(clean_cohort: Path) -> None:
    before = (clean_cohort / "truth" / "idps.csv").read_text()
    config = json.loads((clean_cohort / "truth" / "config.json").read_text())["config"]
    summary = synthesize(load_config(SynthConfig, overrides=config), clean_cohort, progress=False)
    assert summary.generated == 0 and summary.skipped == summary.visits == 6
    assert (clean_cohort / "truth" / "idps.csv").read_text() == before


def test_landmarks_sit_in_their_structures(make_cohort) -> None:
    cohort = make_cohort("full_scale", scale=1.0, seed=3)
    eid = first_eid(cohort)
    summary = json.loads((cohort / "truth" / f"{eid}_2" / "idp.json").read_text())
    fused = visit_truth(cohort, eid)["fused"]
    labels, inverse = np.asarray(fused["labels"]), np.linalg.inv(np.asarray(fused.attrs["affine"]))
    expected = {**{v: v for v in VERTEBRAE}, "hip_left": "femur_left", "hip_right": "femur_right"}
    for name, structure in expected.items():
        point = np.array(summary["landmarks_lps_mm"][name])
        i, j, k = np.rint(inverse[:3, :3] @ point + inverse[:3, 3]).astype(int)
        assert labels[k, j, i] == LABELS[structure], name
