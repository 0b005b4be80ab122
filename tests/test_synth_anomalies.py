"""Each anomaly appears when asked, exactly as the truth records it."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from cohortscale.io.dicom import read_zip_series, stack_series
from cohortscale.protocols import UKB_DIXON_STATIONS
from cohortscale.synth.acquisition import scaled
from synth_helpers import dixon_series, truth_at, visit_truth

ALL_BUT_CORRUPT = {
    f"anomalies.{name}": 1.0
    for name in (
        "duplicate_station",
        "missing_series",
        "short_station",
        "swap_station",
        "swap_leg",
        "ghost_slices",
        "truncated_dicom",
    )
}


@pytest.fixture(scope="module")
def anomalous(make_cohort) -> Path:
    return make_cohort("anomalous", participants=2, seed=11, **ALL_BUT_CORRUPT)


def anomalies_of(cohort: Path) -> dict[tuple[int, str], dict]:
    table = pd.read_csv(cohort / "truth" / "anomalies.csv")
    return {(int(r.eid), r.anomaly): json.loads(r.details) for r in table.itertuples()}


def eids_of(cohort: Path) -> list[int]:
    return sorted({int(p.name.split("_")[0]) for p in (cohort / "bulk").glob("*_20201_2_0.zip")})


def readable_series(cohort: Path, eid: int, truncated: str) -> list:
    """Series of the zip, skipping the one truncated file (which must fail to decode)."""
    path = cohort / "bulk" / f"{eid}_20201_2_0.zip"
    datasets = []
    with zipfile.ZipFile(path) as zf:
        for name in zf.namelist():
            if not name.endswith(".dcm"):
                continue
            ds = pydicom.dcmread(io.BytesIO(zf.read(name)))
            if name == truncated:
                with pytest.raises(ValueError):
                    _ = ds.pixel_array
                continue
            _ = ds.pixel_array
            datasets.append(ds)
    groups: dict[str, list] = {}
    for ds in datasets:
        groups.setdefault(str(ds.SeriesInstanceUID), []).append(ds)
    return sorted((stack_series(g) for g in groups.values()), key=lambda s: s.number)


def test_every_requested_anomaly_is_recorded(anomalous: Path) -> None:
    found = anomalies_of(anomalous)
    for eid in eids_of(anomalous):
        for key in ALL_BUT_CORRUPT:
            assert (eid, key.split(".")[1]) in found


def test_series_level_anomalies(anomalous: Path) -> None:
    found = anomalies_of(anomalous)
    for eid in eids_of(anomalous):
        truncated = found[(eid, "truncated_dicom")]["file"]
        series = readable_series(anomalous, eid, truncated)
        dup = found[(eid, "duplicate_station")]["station"]
        missing = found[(eid, "missing_series")]
        short = found[(eid, "short_station")]["station"]
        numbers = {s.number for s in series}
        missing_number = (
            4 * (missing["station"] - 1) + ["in", "opp", "fat", "water"].index(missing["contrast"]) + 1
        )
        assert missing_number not in numbers
        repeats = [s for s in series if s.number > 24]
        assert [s.number for s in repeats] == [24 + 4 * (dup - 1) + c for c in range(1, 5)]
        originals = {s.number: s for s in series if s.number <= 24}
        latest = max(s.time for s in originals.values())
        for rep in repeats:
            assert rep.time > latest
            twin = originals.get(rep.number - 24)
            if twin is not None:
                assert twin.description == rep.description
                np.testing.assert_allclose(twin.affine, rep.affine)
        shortfall = []
        for s in series:
            station = UKB_DIXON_STATIONS[(s.number - 1) % 24 // 4]
            expected = scaled(station.slices, 0.25) - (station.number == short)
            shortfall.append(expected - s.pixels.shape[0])
        # Every series is complete but the one that lost its truncated file.
        assert sorted(shortfall)[-2:] == [0, 1] and min(shortfall) == 0
        short_series = [s for s in series if (s.number - 1) % 24 // 4 + 1 == short]
        assert all(s.pixels.shape[0] <= scaled(44, 0.25) - 1 for s in short_series)


def test_fat_water_swaps_follow_the_truth(anomalous: Path) -> None:
    found = anomalies_of(anomalous)
    for eid in eids_of(anomalous):
        truncated = found[(eid, "truncated_dicom")]["file"]
        fused = visit_truth(anomalous, eid)["fused"]
        swapped_station = found[(eid, "swap_station")]["station"]
        leg = found[(eid, "swap_leg")]
        for s in readable_series(anomalous, eid, truncated):
            if not s.description.endswith("_W") or s.number > 24:
                continue
            station = (s.number - 1) // 4 + 1
            truth, exact = truth_at(s, fused)
            fatty = exact & (truth["ff"] > 0.8)
            lean = exact & (truth["ff"] < 0.2) & (truth["water"] > 100)
            x = (s.affine[0, 3] + s.affine[0, 0] * np.arange(s.pixels.shape[2]))[None, None, :]
            side = np.broadcast_to((x > 0) if leg["side"] == "left" else (x < 0), s.pixels.shape)
            whole = station == swapped_station
            # A leg swap inside a swapped station swaps that leg back.
            for region, swapped in ((side, whole != (station == leg["station"])), (~side, whole)):
                f, w = fatty & region, lean & region
                if f.sum() < 5 or w.sum() < 5:
                    continue
                water_in_fat = np.median(s.pixels[f] / (truth["water"][f] + truth["fat"][f]))
                water_in_lean = np.median(s.pixels[w] / (truth["water"][w] + truth["fat"][w]))
                # A "water" image that is really fat is bright in fat and dark in lean tissue.
                assert (water_in_fat > water_in_lean) == swapped, (eid, s.description, station)


def test_ghost_slices_brighten_station_ends(anomalous: Path) -> None:
    found = anomalies_of(anomalous)
    eid = eids_of(anomalous)[0]
    n = found[(eid, "ghost_slices")]["slices"]
    fused = visit_truth(anomalous, eid)["fused"]
    truncated = found[(eid, "truncated_dicom")]["file"]
    for s in readable_series(anomalous, eid, truncated):
        if not s.description.endswith("_in") or s.number > 24 or s.pixels.shape[0] < 2 * n + 2:
            continue
        truth, exact = truth_at(s, fused)
        ratio = np.ones(s.pixels.shape[0])
        for k in range(s.pixels.shape[0]):
            tissue = exact[k] & (truth["water"][k] + truth["fat"][k] > 100)
            if tissue.sum() > 10:
                ratio[k] = np.median(s.pixels[k][tissue] / (truth["water"][k] + truth["fat"][k])[tissue])
        middle = np.median(ratio[n:-n])
        assert max(ratio[0], ratio[-1]) > 1.1 * middle, s.description


def test_corrupt_zip(make_cohort) -> None:
    cohort = make_cohort("corrupt", participants=1, seed=5, **{"anomalies.corrupt_zip": 1.0})
    eid = eids_of(cohort)[0]
    with pytest.raises(zipfile.BadZipFile):
        zipfile.ZipFile(cohort / "bulk" / f"{eid}_20201_2_0.zip")
    assert len(read_zip_series(cohort / "bulk" / f"{eid}_20254_2_0.zip")) == 2  # others unharmed
    assert "damage" in anomalies_of(cohort)[(eid, "corrupt_zip")]


def test_repeat_visits(clean_cohort: Path) -> None:
    idps = pd.read_csv(clean_cohort / "truth" / "idps.csv")
    assert set(idps["instance"]) == {2, 3}
    for eid in idps.loc[idps["instance"] == 3, "eid"]:
        first, repeat = (dixon_series(clean_cohort, eid, i)[0].headers[0] for i in (2, 3))
        assert first.StudyInstanceUID != repeat.StudyInstanceUID
        assert first.StudyDate < repeat.StudyDate
        assert int(repeat.PatientAge[:3]) >= int(first.PatientAge[:3])
