"""The measure stage and the IDP table against the synthetic cohort's truth.

Two cohorts: a full-scale one (UK Biobank's 2.2 × 2.2 × 3 mm fused grid), measured with its true labels so
that the measures themselves are checked against the generator's IDPs (a label set's own errors are the
segmentation's, checked in ``test_segmentation_stage.py``); and a half-scale one with injected anomalies,
run end to end with the packaged model, whose exclusions must be exactly the anomalies.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import zarr

from cohortscale.pipeline.cluster import ClusterConfig
from cohortscale.pipeline.engine import EngineConfig
from cohortscale.pipeline.fitting import FittingConfig, run_fitting
from cohortscale.pipeline.fusion import FusionConfig, run_fusion
from cohortscale.pipeline.ingest import run_ingest
from cohortscale.pipeline.labels import import_labels, import_truth_labels
from cohortscale.pipeline.measure import MeasureConfig, run_measure
from cohortscale.pipeline.reduce import idp_dataset, reduce_idps
from cohortscale.pipeline.run import RunConfig, run_cohort
from cohortscale.synth.acquisition import fused_shape_spacing
from cohortscale.synth.labels import LABELS

CLUSTER = ClusterConfig(workers=2, threads=1)
ENGINE = EngineConfig(progress=False)
FIELD = 20254
#: Relative tolerance of volumes and ratios (the issue's 2 %), and absolute ones of medians.
VOLUME_RTOL = 0.02
FRACTION_ATOL_PP = 1.0
R2STAR_ATOL = 3.0
#: Volumes and ratios compared with the truth, relative.
RELATIVE = (
    *(f"thigh_{c}_{s}_cm3" for s in ("left", "right") for c in ("anterior", "posterior", "medial")),
    "thigh_muscle_left_cm3",
    "thigh_muscle_right_cm3",
    "tmv_cm3",
    "pa_ratio",
    "vat_l",
    "asat_l",
    "liver_volume_l",
)
#: Fat fractions (percentage points) and R2* (s⁻¹) compared with the truth, absolute.
ABSOLUTE = {
    f"vbm_pdff_{FIELD}": FRACTION_ATOL_PP,
    f"vbm_ff_{FIELD}": FRACTION_ATOL_PP,
    f"liver_pdff_{FIELD}": FRACTION_ATOL_PP,
    f"vbm_r2star_{FIELD}": R2STAR_ATOL,
    f"liver_r2star_{FIELD}": R2STAR_ATOL,
    f"vbm_iron_{FIELD}": 0.0254 * R2STAR_ATOL,
    # A ratio near zero: relative error means nothing, so the asymmetry gets 0.2 % of the mean absolute.
    "thigh_asymmetry": 0.002,
}


def stage_by_stage(cohort, store, scale: float, labels: str = "truth") -> None:
    """Ingest, fuse, fit, import the true labels and measure ``cohort`` into ``store``."""
    run_ingest(cohort / "bulk", store, engine=ENGINE, cluster=CLUSTER)
    shape, spacing = fused_shape_spacing(scale)
    run_fusion(store, FusionConfig(shape=shape, spacing_mm=spacing, swaps="correct"), ENGINE, CLUSTER)
    run_fitting(store, FittingConfig(), ENGINE, CLUSTER)
    import_truth_labels(cohort, store, labels)
    run_measure(store, MeasureConfig(labels=labels), ENGINE, CLUSTER)


def truth_table(cohort) -> pd.DataFrame:
    """The generator's IDPs, plus the femoral-marrow FF of the truth maps, by (eid, instance)."""
    truth = pd.read_csv(cohort / "truth" / "idps.csv").set_index(["eid", "instance"])
    for (eid, instance), _ in truth.iterrows():
        fused = zarr.open_group(str(cohort / "truth" / f"{eid}_{instance}" / "maps.zarr"), mode="r")["fused"]
        labels, ff = fused["labels"][:], fused["ff"][:]
        for side in ("left", "right"):
            truth.loc[(eid, instance), f"femur_ff_{side}"] = 100 * float(
                np.median(ff[labels == LABELS[f"femur_{side}"]])
            )
    return truth


@pytest.fixture(scope="module")
def full_scale(make_cohort, tmp_path_factory):
    """Two full-scale participants measured with their true labels: (cohort, store, tables)."""
    cohort = make_cohort("measure-full", scale=1.0, participants=2, seed=5)
    out = tmp_path_factory.mktemp("measure-full")
    store = out / "cohort.zarr"
    stage_by_stage(cohort, store, 1.0)
    return cohort, store, reduce_idps(store, out)


def test_measures_match_truth_at_full_scale(full_scale) -> None:
    """Every IDP against the generator's: volumes and ratios within 2 %, fat fractions within 1 point,
    R2* within 3 s⁻¹ (iron accordingly), the slice's level, femoral marrow FF within 1 point."""
    cohort, _, tables = full_scale
    truth = truth_table(cohort)
    table = tables.table
    assert (table["status"] == "measured").all()
    rows, failures = [], []
    for key in table.index:
        for name in (*RELATIVE, *ABSOLUTE, "femur_ff_left", "femur_ff_right"):
            got, want = float(table.at[key, name]), float(truth.at[key, name])
            if name in RELATIVE:
                error, limit = abs(got / want - 1), VOLUME_RTOL
            else:
                error, limit = abs(got - want), ABSOLUTE.get(name, FRACTION_ATOL_PP)
            ok = error <= limit
            verdict = "ok" if ok else "FAIL"
            rows.append(f"{key[0]}_{key[1]} {name:<28} measured {got:12.4f} truth {want:12.4f} {verdict}")
            if not ok:
                failures.append(rows[-1])
        assert table.at[key, f"vbm_levels_{FIELD}"] == truth.at[key, "slice_level"]
    print("\n" + "\n".join(rows))
    assert not failures, "\n".join(failures)


#: Half-scale cohort whose five visits get, by its seed, a slice through a disc, no multi-echo slice, a
#: corrupt zip, and nothing (twice).
ANOMALY_RATES = {
    "anomalies.missing_multiecho": 0.3,
    "anomalies.slice_through_disc": 0.3,
    "anomalies.corrupt_zip": 0.2,
}


@pytest.fixture(scope="module")
def anomalous_run(make_cohort, tmp_path_factory):
    """The half-scale anomalous cohort run end to end with the packaged model, then measured again with
    its true labels: (cohort, store, model tables, truth-label tables)."""
    cohort = make_cohort("measure-anomalies", scale=0.5, participants=5, seed=8, **ANOMALY_RATES)
    out = tmp_path_factory.mktemp("measure-anomalies")
    store = out / "cohort.zarr"
    shape, spacing = fused_shape_spacing(0.5)
    config = RunConfig(
        cluster=CLUSTER,
        engine=ENGINE,
        fusion=FusionConfig(shape=shape, spacing_mm=spacing, swaps="correct"),
    )
    model = run_cohort(cohort / "bulk", store, config, out / "model").tables
    import_truth_labels(cohort, store)
    run_measure(store, MeasureConfig(labels="truth"), ENGINE, CLUSTER)
    return cohort, store, model, reduce_idps(store, out / "truth")


def expected_exclusions(cohort) -> dict[tuple[int, int], dict[str, str]]:
    """Per visit, what its injected anomalies must show in the table (empty: measured, no QC reason)."""
    anomalies = pd.read_csv(cohort / "truth" / "anomalies.csv")
    visits = pd.read_csv(cohort / "truth" / "idps.csv")[["eid", "instance"]].itertuples(index=False)
    expected: dict[tuple[int, int], dict[str, str]] = {(int(e), int(i)): {} for e, i in visits}
    for row in anomalies.itertuples(index=False):
        key = (int(row.eid), int(row.instance))
        if row.anomaly == "corrupt_zip":
            expected[key]["reason"] = "ingest: corrupt_zip"
        elif row.anomaly == "missing_multiecho":
            expected[key].update(
                {f"qc_vbm_{FIELD}": "no_multiecho_slice", f"qc_liver_{FIELD}": "no_multiecho_slice"}
            )
        elif row.anomaly == "slice_through_disc":
            expected[key][f"qc_vbm_{FIELD}"] = "no_intersection"
    # A slice moved down to a lumbar disc may pass below the liver too: the truth says whether it does.
    truth = pd.read_csv(cohort / "truth" / "idps.csv")
    for row in truth.itertuples(index=False):
        wants = expected[(int(row.eid), int(row.instance))]
        if (
            f"qc_liver_{FIELD}" not in wants
            and "reason" not in wants
            and np.isnan(getattr(row, f"liver_pdff_{FIELD}"))
        ):
            wants[f"qc_liver_{FIELD}"] = "no_liver_in_slice"
    return expected


def test_exclusions_are_the_injected_anomalies(anomalous_run) -> None:
    """With the true labels, the table's exclusions and QC reasons are exactly the injected anomalies:
    corrupt zip → excluded with its reason; no multi-echo slice → marrow and liver measures missing; slice
    through a disc → no intersection; every other visit measured with no QC reason."""
    cohort, _, _, tables = anomalous_run
    table = tables.table
    expected = expected_exclusions(cohort)
    assert {kind for wants in expected.values() for kind in wants.values()} >= {
        "ingest: corrupt_zip",
        "no_multiecho_slice",
        "no_intersection",
    }
    qc_columns = [c for c in table.columns if c.startswith("qc_")]
    assert set(qc_columns) == {"qc_thigh", "qc_fat", "qc_femur", f"qc_vbm_{FIELD}", f"qc_liver_{FIELD}"}
    for key, wants in expected.items():
        row = table.loc[key]
        if "reason" in wants:
            assert row["status"] == "excluded" and row["reason"] == wants["reason"], key
            assert np.isnan(row["tmv_cm3"])
            continue
        assert row["status"] == "measured" and row["reason"] == "", key
        got = {c: row[c] for c in qc_columns if row[c]}
        assert got == wants, (key, got, wants)
        if f"qc_vbm_{FIELD}" in wants:
            assert np.isnan(row[f"vbm_pdff_{FIELD}"])
        else:
            assert np.isfinite(row[f"vbm_pdff_{FIELD}"])


def test_model_run_table_opens_with_pandas_and_xarray(anomalous_run) -> None:
    """The end-to-end run's table: every visit once, keyed by eid and instance, in parquet and CSV alike;
    the store's idp/* arrays open as an xarray Dataset with units and descriptions; the packaged model's
    volumes are in range of the truth (its segmentation errors are its own: 15 % here)."""
    cohort, store, model, truth_tables = anomalous_run
    parquet = pd.read_parquet(model.parquet)
    csv = pd.read_csv(model.csv, index_col=["eid", "instance"], keep_default_na=False, na_values=[""])
    assert parquet.index.names == ["eid", "instance"] and parquet.index.is_unique
    assert len(parquet) == len(expected_exclusions(cohort))
    pd.testing.assert_series_equal(parquet["tmv_cm3"], csv["tmv_cm3"], check_exact=False, rtol=1e-12)
    assert (parquet["status"] == truth_tables.table["status"]).all()
    dataset = idp_dataset(store)
    assert isinstance(dataset, xr.Dataset) and dataset.sizes == {"participant": len(parquet)}
    assert (
        dataset["tmv_cm3"].attrs["units"] == "cm3"
        and "thigh muscle" in dataset["tmv_cm3"].attrs["description"]
    )
    assert dataset[f"vbm_pdff_{FIELD}"].attrs["units"] == "%"
    by_key = dataset.set_index(participant=["eid", "instance"])
    measured = truth_tables.table[truth_tables.table["status"] == "measured"].index
    truth = pd.read_csv(cohort / "truth" / "idps.csv").set_index(["eid", "instance"])
    for key in measured:
        # The dataset holds the latest reduction (the true labels'); the model's table its own.
        assert float(by_key["tmv_cm3"].sel(participant=key)) == pytest.approx(
            truth_tables.table.at[key, "tmv_cm3"]
        )
        assert parquet.at[key, "tmv_cm3"] == pytest.approx(truth.at[key, "tmv_cm3"], rel=0.15)


def test_rows_are_one_file_per_visit_and_rerun_does_nothing(anomalous_run) -> None:
    """Each measured visit has one JSON row naming its label set; measuring again processes nothing."""
    _, store, _, tables = anomalous_run
    measured = tables.table[tables.table["status"] == "measured"]
    for key in measured["participant"]:
        row = json.loads((store / "measures" / f"{key}.json").read_text())
        assert row["participant"] == key and row["labels"] == "truth"
    report = run_measure(store, MeasureConfig(labels="truth"), ENGINE, CLUSTER)
    assert report.processed == 0 and report.skipped == len(measured)


def test_import_labels_checks_its_input(anomalous_run) -> None:
    """Imports refuse a bad name, an unknown visit, a volume off the fused grid, and overwriting a model's
    labels; a valid import requeues the measures of every visit."""
    _, store, _, _ = anomalous_run
    shape = zarr.open_group(str(store), mode="r")["dixon/fused/ff"].shape[1:]
    names = {0: "background", 4: "liver"}
    with pytest.raises(ValueError, match="must match"):
        import_labels(store, "../x", names, [], "test")
    with pytest.raises(ValueError, match="not in the store"):
        import_labels(store, "mine", names, [("1_2", np.zeros(shape, np.uint8))], "test")
    key = str(zarr.open_group(str(store), mode="r")["participant"][0])
    with pytest.raises(ValueError, match="differ from the fused grid"):
        import_labels(store, "mine", names, [(key, np.zeros((2, 2, 2), np.uint8))], "test")
    with pytest.raises(ValueError, match="segmentation stage"):
        import_labels(store, "body-unet", names, [], "test")
