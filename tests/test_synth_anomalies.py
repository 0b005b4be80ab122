"""Each anomaly appears when asked, exactly as the truth records it."""

from __future__ import annotations

import io
import itertools
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
from conftest import ALL_BUT_CORRUPT
from synth_helpers import dixon_series, truth_at, visit_truth


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


def station_of(series: list) -> dict[str, int]:
    """Station number (1 = neck) of every series from its position alone: slab centres cluster by
    station (a missing slice moves a centre by far less than the ~200 mm between stations)."""
    centres = {s.uid: float(s.affine[2, 3] + s.affine[2, 2] * (len(s.pixels) - 1) / 2) for s in series}
    ordered = sorted(set(centres.values()), reverse=True)
    starts = [ordered[0]] + [b for a, b in itertools.pairwise(ordered) if a - b > STATION_GAP_MM]
    assert len(starts) == 6, ordered
    return {uid: sum(c <= start for start in starts) for uid, c in centres.items()}


STATION_GAP_MM = 100.0
CONTRAST = {"in": "in", "opp": "opp", "F": "fat", "W": "water"}


def test_series_level_anomalies(anomalous: Path) -> None:
    found = anomalies_of(anomalous)
    for eid in eids_of(anomalous):
        truncated = found[(eid, "truncated_dicom")]["file"]
        series = readable_series(anomalous, eid, truncated)
        stations = station_of(series)
        dup = found[(eid, "duplicate_station")]["station"]
        missing = found[(eid, "missing_series")]
        short = found[(eid, "short_station")]["station"]
        mismatch = found[(eid, "size_mismatch")]["station"]
        by_key: dict[tuple[int, str], list] = {}
        for s in series:
            by_key.setdefault((stations[s.uid], CONTRAST[s.description.rsplit("_", 1)[1]]), []).append(s)
        for station in range(1, 7):
            for contrast in CONTRAST.values():
                absent = (station, contrast) == (missing["station"], missing["contrast"])
                expected = 1 + (station == dup) - absent
                assert len(by_key.get((station, contrast), [])) == expected, (station, contrast)
        # The repeated station comes last: newer SeriesTime and higher SeriesNumber than all others.
        repeats = sorted((s for s in series if stations[s.uid] == dup), key=lambda s: s.time)[-4:]
        others = [s for s in series if s not in repeats]
        assert min(s.time for s in repeats) > max(s.time for s in others)
        assert min(s.number for s in repeats) > max(s.number for s in others)
        assert len({s.number for s in series}) == len(series)
        shortfall = []
        for s in series:
            station = UKB_DIXON_STATIONS[stations[s.uid] - 1]
            expected = scaled(station.slices, 0.25) - (station.number == short)
            mismatched = station.number == mismatch and s.description.endswith("_F") and s not in repeats
            shortfall.append(expected - mismatched - s.pixels.shape[0])
        # Every series is complete but the one that lost its truncated file.
        assert sorted(shortfall)[-2:] == [0, 1] and min(shortfall) == 0


def test_fat_water_swaps_follow_the_truth(anomalous: Path) -> None:
    found = anomalies_of(anomalous)
    for eid in eids_of(anomalous):
        truncated = found[(eid, "truncated_dicom")]["file"]
        fused = visit_truth(anomalous, eid)["fused"]
        swapped_station = found[(eid, "swap_station")]["station"]
        leg = found[(eid, "swap_leg")]
        series = readable_series(anomalous, eid, truncated)
        stations = station_of(series)
        for s in series:
            if not s.description.endswith("_W"):
                continue
            station = stations[s.uid]
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
        if not s.description.endswith("_in") or s.pixels.shape[0] < 2 * n + 2:
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
    assert len(read_zip_series(cohort / "bulk" / f"{eid}_20254_2_0.zip")) == 12  # others unharmed
    assert "damage" in anomalies_of(cohort)[(eid, "corrupt_zip")]


def test_repeat_visits(clean_cohort: Path) -> None:
    idps = pd.read_csv(clean_cohort / "truth" / "idps.csv")
    assert set(idps["instance"]) == {2, 3}
    for eid in idps.loc[idps["instance"] == 3, "eid"]:
        first, repeat = (dixon_series(clean_cohort, eid, i)[0].headers[0] for i in (2, 3))
        assert first.StudyInstanceUID != repeat.StudyInstanceUID
        assert first.StudyDate < repeat.StudyDate
        assert int(repeat.PatientAge[:3]) >= int(first.PatientAge[:3])


def test_quality_control_anomalies(make_cohort) -> None:
    """Anomalies the bone-marrow study's QC must catch: no multi-echo slice, or a slice missing the spine."""
    missing = make_cohort("no_multiecho", participants=1, seed=8, **{"anomalies.missing_multiecho": 1.0})
    eid = eids_of(missing)[0]
    assert not list((missing / "bulk").glob(f"{eid}_20254_*"))
    idps = pd.read_csv(missing / "truth" / "idps.csv")
    assert "vbm_pdff_20254" not in idps or idps["vbm_pdff_20254"].isna().all()
    assert (eid, "missing_multiecho") in anomalies_of(missing)

    disc = make_cohort(
        "disc_slice",
        participants=2,
        seed=8,
        scale=0.5,
        repeat_visit_rate=0.0,
        **{"anomalies.slice_through_disc": 1.0},
    )
    idps = pd.read_csv(disc / "truth" / "idps.csv")
    found = anomalies_of(disc)
    for row in idps.itertuples():
        record = found[(row.eid, "slice_through_disc")]
        series = read_zip_series(disc / "bulk" / f"{row.eid}_20254_{row.instance}_0.zip")
        assert float(series[0].affine[2, 3]) == pytest.approx(record["z_mm"], abs=0.01)
        assert row.vbm_roi_voxels_20254 < 64  # below the study's minimum ROI
        assert row.liver_pdff_20254 > 0  # the slice still crosses the liver
