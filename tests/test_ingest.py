"""Ingest of synthetic UK Biobank zips into the Zarr store: exact pixels, geometry, decisions, resumption."""

from __future__ import annotations

import dataclasses
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import zarr

from cohortscale.io.ledger import Ledger
from cohortscale.io.store import open_cohort, open_store, participant_rows
from cohortscale.io.ukb import ArchiveLimits
from cohortscale.pipeline.cluster import ClusterConfig
from cohortscale.pipeline.engine import EngineConfig
from cohortscale.pipeline.ingest import IngestConfig, run_ingest
from cohortscale.protocols import UKB_DIXON_STATIONS
from cohortscale.synth import synthesize
from cohortscale.synth.acquisition import scaled
from conftest import make_config

CLUSTER = ClusterConfig(workers=2, threads=1)
ENGINE = EngineConfig(progress=False)


def ingest(bulk: Path, store: Path, **engine: object) -> object:
    return run_ingest(bulk, store, cluster=CLUSTER, engine=EngineConfig(progress=False, **engine))


def manifest(store: Path) -> pd.DataFrame:
    return pd.read_parquet(store / "manifest.parquet")


def zip_datasets(path: Path) -> dict[str, pydicom.Dataset]:
    with zipfile.ZipFile(path) as zf:
        return {
            f"{path.name}/{n}": pydicom.dcmread(io.BytesIO(zf.read(n)))
            for n in zf.namelist()
            if n.endswith(".dcm")
        }


def test_every_dixon_pixel_and_position(clean_cohort: Path, clean_store: Path) -> None:
    root = open_store(clean_store, mode="r")
    rows = participant_rows(root)
    kept = manifest(clean_store).query("decision == 'kept' and kind == 'dixon'")
    assert len(kept) == 24 * len(rows)
    uid_to = {r.series_uid: (r.participant, int(r.station), r.contrast) for r in kept.itertuples()}
    checked = files = 0
    for path in sorted((clean_cohort / "bulk").glob("*_20201_*.zip")):
        datasets = zip_datasets(path)
        files += len(datasets)
        for ds in datasets.values():
            participant, station, contrast = uid_to[str(ds.SeriesInstanceUID)]
            row = rows[participant]
            affine = root[f"dixon/station{station}/affine"][row]
            first, count = root[f"dixon/station{station}/slices"][row][
                ["in", "opp", "fat", "water"].index(contrast)
            ]
            index = np.linalg.solve(
                affine[:3, :3], np.asarray(ds.ImagePositionPatient, dtype=float) - affine[:3, 3]
            )
            k = round(float(index[2]))
            np.testing.assert_allclose(index, [0, 0, k], atol=1e-6)
            np.testing.assert_allclose(
                affine[:3, :3] @ [0, 0, k] + affine[:3, 3],
                np.asarray(ds.ImagePositionPatient, dtype=float),
                atol=1e-4,
            )
            assert first <= k < first + count
            np.testing.assert_array_equal(root[f"dixon/station{station}/{contrast}"][row, k], ds.pixel_array)
            checked += 1
    assert checked == files > 0


def test_multiecho_signal_echo_times_and_frequency(clean_cohort: Path, clean_store: Path) -> None:
    root = open_store(clean_store, mode="r")
    rows = participant_rows(root)
    for field in (20254, 20203):
        for path in sorted((clean_cohort / "bulk").glob(f"*_{field}_*.zip")):
            eid, _, instance, _ = path.stem.split("_")
            row = rows[f"{eid}_{instance}"]
            datasets = sorted(
                zip_datasets(path).values(), key=lambda d: (int(d.SeriesNumber), float(d.EchoTime))
            )
            magnitudes = [d for d in datasets if d.ImageType[2] == "M"]
            phases = [d for d in datasets if d.ImageType[2] == "P"]
            n_echo = len({float(d.EchoTime) for d in magnitudes})
            dynamics = len(magnitudes) // n_echo
            assert root[f"multiecho/{field}/dynamics"][row] == dynamics
            signal = root[f"multiecho/{field}/signal"][row]
            for k, (mag, phase) in enumerate(zip(magnitudes, phases, strict=True)):
                d, e = divmod(k, n_echo)
                np.testing.assert_allclose(np.abs(signal[d, e]), mag.pixel_array, rtol=1e-6, atol=1e-3)
                radians = np.pi * (phase.pixel_array * 2.0 - 4096.0) / 4096.0
                np.testing.assert_allclose(np.angle(signal[d, e] * np.exp(-1j * radians)), 0, atol=1e-4)
            te = sorted({float(d.EchoTime) * 1e-3 for d in magnitudes})
            np.testing.assert_allclose(root[f"multiecho/{field}/echo_times"][row][:n_echo], te)
            assert root[f"multiecho/{field}/imaging_frequency"][row] == pytest.approx(
                float(magnitudes[0].ImagingFrequency) * 1e6
            )
            affine = root[f"multiecho/{field}/affine"][row]
            np.testing.assert_allclose(
                affine[:3, 3], np.asarray(magnitudes[0].ImagePositionPatient, dtype=float)
            )
    np.testing.assert_allclose(root["dixon/echo_times"][:], [[2.39e-3, 4.77e-3]] * len(rows))


def test_repeat_visits_are_distinct_rows(clean_cohort: Path, clean_store: Path) -> None:
    ds = open_cohort(clean_store)
    assert len(ds["participant"]) == 6 and set(ds["instance"].values) == {2, 3}
    assert ds["participant"].values.tolist() == sorted(ds["participant"].values.tolist())
    first, repeat = (ds["dixon/station3/water"].sel(participant=p) for p in ds["participant"].values[:2])
    assert not np.array_equal(first.values, repeat.values)
    assert ds["dixon/station3/water"].data.chunks[0] == (1,) * 6  # one chunk per participant, lazily


def test_anomalies_end_in_the_right_decisions(anomalous: Path, anomalous_store: Path) -> None:
    table = manifest(anomalous_store)
    truth = pd.read_csv(anomalous / "truth" / "anomalies.csv")
    root = open_store(anomalous_store, mode="r")
    rows = participant_rows(root)
    for eid, group in truth.groupby("eid"):
        key = f"{eid}_2"
        mine = table[table["participant"] == key]
        details = {r.anomaly: json.loads(r.details) for r in group.itertuples()}
        dup = details["duplicate_station"]["station"]
        superseded = mine[mine["decision"] == "superseded"]
        assert sorted(superseded["station"]) == [dup] * len(superseded) and len(superseded) >= 3
        kept_dup = mine[(mine["decision"] == "kept") & (mine["station"] == dup)]
        assert len(kept_dup) >= 3 and kept_dup["series_time"].min() > superseded["series_time"].max()
        missing = details["missing_series"]
        if missing["station"] != dup:
            absent = mine[mine["decision"] == "missing"]
            assert absent[["station", "contrast"]].values.tolist() == [
                [missing["station"], missing["contrast"]]
            ]
        truncated = details["truncated_dicom"]["file"]
        with zipfile.ZipFile(anomalous / "bulk" / f"{eid}_20201_2_0.zip") as zf:
            header = pydicom.dcmread(io.BytesIO(zf.read(truncated)), stop_before_pixels=True)
        its_series = mine[mine["series_uid"] == str(header.SeriesInstanceUID)]
        spoiled = mine[mine["reason"] == "truncated_file"]
        if its_series["decision"].tolist() == ["superseded"]:  # never decoded: a newer repeat replaced it
            assert spoiled.empty
        else:
            assert its_series["decision"].tolist() == ["quarantined"]
            assert len(spoiled) == 1 and truncated in spoiled["message"].iloc[0]
        short = details["short_station"]["station"]
        slices = root[f"dixon/station{short}/slices"][rows[key]]
        protocol_slices = scaled(UKB_DIXON_STATIONS[short - 1].slices, 0.25)
        assert max(slices[:, 1]) == protocol_slices - 1  # the "43-slice" station keeps one slice fewer
        mismatch = details["size_mismatch"]["station"]
        fat, water = root[f"dixon/station{mismatch}/slices"][rows[key]][[2, 3]]
        if fat[1] and water[1]:
            assert fat[1] == water[1] - 1 and fat[0] == water[0] + 1  # fat lacks the lowest slice
    status = Ledger(anomalous_store).read("ingest")
    assert (status["status"] == "done").all()


def test_corrupt_zip_is_quarantined_and_rerun_does_no_work(make_cohort, tmp_path: Path) -> None:
    cohort = make_cohort("corrupt", participants=1, seed=5, **{"anomalies.corrupt_zip": 1.0})
    store = tmp_path / "store.zarr"
    report = ingest(cohort / "bulk", store)
    assert report.quarantined == 1 and report.reasons == {"corrupt_zip": 1}
    ledger = Ledger(store).read("ingest")
    assert ledger["reason"].tolist() == ["corrupt_zip"] and "not a readable zip" in ledger["message"][0]
    again = ingest(cohort / "bulk", store)
    assert again.skipped == 1 and again.done == again.quarantined == 0


def test_hostile_archives_are_refused(clean_cohort: Path, tmp_path: Path) -> None:
    """Path traversal and a decompression bomb quarantine their participant; the others are ingested."""
    bulk = tmp_path / "bulk"
    bulk.mkdir()
    sources = sorted((clean_cohort / "bulk").glob("*_20201_2_0.zip"))[:3]
    for source in sources:
        (bulk / source.name).write_bytes(source.read_bytes())
    traversal, bomb = sources[0].name, sources[1].name
    with zipfile.ZipFile(bulk / traversal, "a") as zf:
        zf.writestr("../../etc/evil.dcm", b"x")
    with zipfile.ZipFile(bulk / bomb, "a", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros.bin", b"\0" * (64 * 2**20))
    limits = ArchiveLimits(max_total_bytes=32 * 2**20)  # the genuine quarter-scale zips hold ~5 MB
    report = run_ingest(bulk, tmp_path / "store.zarr", IngestConfig(limits=limits), ENGINE, CLUSTER)
    reasons = Ledger(tmp_path / "store.zarr").read("ingest").set_index("participant")["reason"]
    assert reasons[traversal.split("_")[0] + "_2"] == "unsafe_path"
    assert reasons[bomb.split("_")[0] + "_2"] == "decompression_bomb"
    assert report.done == 1


def test_store_opens_as_xarray(clean_store: Path) -> None:
    ds = open_cohort(clean_store)
    water = ds["dixon/station2/water"]
    assert water.dims[0] == "participant" and water.dtype == np.uint16
    assert float(water.isel(participant=0).max()) > 100
    assert ds["multiecho/20254/signal"].dtype == np.complex64
    root = zarr.open_group(str(clean_store), mode="r")
    assert root.attrs["cohortscale_version"]


def test_plain_folders_and_inconsistent_shapes(
    clean_cohort: Path, clean_store: Path, noiseless_cohort: Path, tmp_path: Path
) -> None:
    """An extracted folder ingests like its zip; a visit whose matrices do not fit is quarantined."""
    bulk = tmp_path / "bulk"
    bulk.mkdir()
    zips = sorted((clean_cohort / "bulk").glob("*_20201_2_0.zip"))[:2]
    with zipfile.ZipFile(zips[0]) as zf:
        zf.extractall(bulk / zips[0].stem)
    (bulk / zips[1].name).write_bytes(zips[1].read_bytes())
    half_scale = sorted((noiseless_cohort / "bulk").glob("*_20201_2_0.zip"))[0]
    (bulk / half_scale.name).write_bytes(half_scale.read_bytes())
    store = tmp_path / "store.zarr"
    report = ingest(bulk, store)
    assert report.done == 2 and report.quarantined == 1
    status = Ledger(store).read("ingest").set_index("participant")
    odd = half_scale.name.split("_")[0] + "_2"
    assert status.loc[odd, "reason"] == "no_dixon_data"
    odd_rows = manifest(store).query("participant == @odd")
    assert (odd_rows["reason"] == "shape_mismatch").sum() == 24
    folder_key = zips[0].name.split("_")[0] + "_2"
    mine, theirs = open_cohort(store), open_cohort(clean_store)
    for name in ("dixon/station4/water", "dixon/station4/affine", "dixon/station4/slices"):
        np.testing.assert_array_equal(
            mine[name].sel(participant=folder_key), theirs[name].sel(participant=folder_key)
        )


def test_changed_inputs_are_ingested_again(tmp_path: Path) -> None:
    config = make_config(participants=2, seed=31)
    cohort = tmp_path / "cohort"
    synthesize(config, cohort, progress=False)
    store = tmp_path / "store.zarr"
    ingest(cohort / "bulk", store)
    before = open_cohort(store)["dixon/station3/water"].values
    synthesize(dataclasses.replace(config, dixon_snr=10.0), cohort, progress=False)  # new zips, same names
    report = ingest(cohort / "bulk", store)
    assert report.done == 2 and report.skipped == 0
    after = open_cohort(store)["dixon/station3/water"].values
    fresh = tmp_path / "fresh.zarr"
    ingest(cohort / "bulk", fresh)
    np.testing.assert_array_equal(after, open_cohort(fresh)["dixon/station3/water"].values)
    assert not np.array_equal(before, after)
    assert ingest(cohort / "bulk", store).skipped == 2


def test_ingest_again_keeps_nothing_the_changed_inputs_no_longer_hold(
    clean_cohort: Path, tmp_path: Path
) -> None:
    """A visit ingested again after its multi-echo zip was removed and a series dropped from its Dixon zip
    is stored exactly as a fresh ingest of what is left: no stale multi-echo slice or station volume."""
    eid = sorted((clean_cohort / "bulk").glob("*_20201_2_0.zip"))[0].name.split("_")[0]
    bulk = tmp_path / "bulk"
    bulk.mkdir()
    for source in sorted((clean_cohort / "bulk").glob(f"{eid}_*_2_0.zip")):
        (bulk / source.name).write_bytes(source.read_bytes())
    store = tmp_path / "store.zarr"
    ingest(bulk, store)
    key = f"{eid}_2"
    before = open_cohort(store).sel(participant=key).load()  # the store is read lazily

    (bulk / f"{eid}_20203_2_0.zip").unlink()
    dixon = bulk / f"{eid}_20201_2_0.zip"
    with zipfile.ZipFile(dixon) as zf:
        entries = {name: zf.read(name) for name in zf.namelist()}
    headers = {
        n: pydicom.dcmread(io.BytesIO(b), stop_before_pixels=True)
        for n, b in entries.items()
        if n.endswith(".dcm")
    }
    dropped = sorted(
        {str(h.SeriesInstanceUID) for h in headers.values() if h.SeriesDescription.endswith("_W")}
    )[0]
    with zipfile.ZipFile(dixon, "w") as zf:
        for name, data in entries.items():
            if name not in headers or str(headers[name].SeriesInstanceUID) != dropped:
                zf.writestr(name, data)
    assert ingest(bulk, store).done == 1
    fresh_store = tmp_path / "fresh.zarr"
    ingest(bulk, fresh_store)
    again, fresh = open_cohort(store), open_cohort(fresh_store)
    assert int(before["multiecho/20203/dynamics"]) > 0
    assert int(again["multiecho/20203/dynamics"].sel(participant=key)) == 0
    assert np.isnan(again["multiecho/20203/signal"].sel(participant=key).values).all()
    emptied = [
        name
        for name in before.data_vars
        if name.endswith("/water")
        and before[name].values.any()
        and not again[name].sel(participant=key).values.any()
    ]
    assert len(emptied) == 1
    for name in fresh.data_vars:
        np.testing.assert_array_equal(
            again[name].sel(participant=key).values, fresh[name].sel(participant=key).values, err_msg=name
        )
