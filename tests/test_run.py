"""``cohortscale run``: the whole pipeline in one resumable command.

Killed with SIGKILL (client, scheduler and workers at once) at a random point, then started again, it ends
with the same IDP table as an uninterrupted run; started once more, it does no work.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from cohortscale.synth.acquisition import fused_shape_spacing

BIN = Path(sys.executable).parent
WAIT_S = 300
STAGES = ("ingest", "fusion", "segmentation", "fitting", "measure")


@pytest.fixture(scope="module")
def cohort(make_cohort) -> Path:
    """Four quarter-scale participants, with a corrupt zip and a visit without its multi-echo slice."""
    return make_cohort(
        "run",
        participants=4,
        seed=23,
        **{"anomalies.corrupt_zip": 0.2, "anomalies.missing_multiecho": 0.3, "anomalies.swap_station": 0.3},
    )


def run_command(cohort: Path, store: Path) -> list[str]:
    """``cohortscale run`` on the cohort's grid, two workers, one visit per task (many kill points)."""
    shape, spacing = fused_shape_spacing(0.25)
    return [
        str(BIN / "cohortscale"),
        "run",
        str(cohort / "bulk"),
        "--store",
        str(store),
        "--workers",
        "2",
        "--batch-size",
        "1",
        "--set",
        f"fusion.shape={','.join(map(str, shape))}",
        "--set",
        f"fusion.spacing_mm={','.join(map(str, spacing))}",
        "--set",
        "fusion.swaps=correct",
        "--set",
        "engine.progress=false",
    ]


def ledger_files(store: Path) -> int:
    """Record files in every stage's ledger (each stage task writes one when it finishes)."""
    return sum(
        len(list((store / "ledger" / s).glob("*.jsonl"))) for s in STAGES if (store / "ledger" / s).exists()
    )


@pytest.fixture(scope="module")
def uninterrupted(cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame, str]:
    """An uninterrupted run: its store, table and printed summary."""
    store = tmp_path_factory.mktemp("run-reference") / "cohort.zarr"
    done = subprocess.run(run_command(cohort, store), capture_output=True, text=True, timeout=WAIT_S)
    assert done.returncode == 0, done.stdout + done.stderr
    return store, pd.read_parquet(store.parent / "idps.parquet"), done.stdout


def test_summary_and_table(uninterrupted: tuple[Path, pd.DataFrame, str], cohort: Path) -> None:
    """The summary lists every stage and ends with the table; the table has one row per visit, the corrupt
    zip's visit excluded by ingest, the others measured."""
    _, table, summary = uninterrupted
    for stage in STAGES:
        assert f"\n{stage} " in summary
    assert "IDP table:" in summary.splitlines()[-1]
    anomalies = pd.read_csv(cohort / "truth" / "anomalies.csv")
    rows = anomalies.loc[anomalies["anomaly"] == "corrupt_zip"]
    corrupt = {(int(e), int(i)) for e, i in zip(rows["eid"], rows["instance"], strict=True)}
    assert corrupt, "the cohort should have a corrupt zip"
    for key, row in table.iterrows():
        if key in corrupt:
            assert (row["status"], row["reason"]) == ("excluded", "ingest: corrupt_zip")
        else:
            assert row["status"] == "measured" and row["tmv_cm3"] > 0
    assert "ingest: corrupt_zip" in summary


def test_sigkill_at_a_random_point_then_resume(
    uninterrupted: tuple[Path, pd.DataFrame, str], cohort: Path, tmp_path: Path
) -> None:
    """Kill the whole run after a random number of finished tasks; the restarted run's table equals the
    uninterrupted one's, and a third run does no work (no stage processes a visit, no ledger record)."""
    reference_store, reference, _ = uninterrupted
    seed = int(os.environ.get("COHORTSCALE_KILL_SEED", time.time_ns() % 2**32))
    after = random.Random(seed).randint(1, ledger_files(reference_store) - 1)
    store = tmp_path / "cohort.zarr"
    process = subprocess.Popen(
        run_command(cohort, store),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + WAIT_S
    while ledger_files(store) < after and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    context = (
        f"killed after {ledger_files(store)} task records (target {after}; COHORTSCALE_KILL_SEED={seed})"
    )
    assert process.poll() is None, f"the run ended before it could be killed: {context}"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()

    resumed = subprocess.run(run_command(cohort, store), capture_output=True, text=True, timeout=WAIT_S)
    assert resumed.returncode == 0, context + "\n" + resumed.stdout + resumed.stderr
    table = pd.read_parquet(store.parent / "idps.parquet")
    pd.testing.assert_frame_equal(table, reference, check_exact=False, rtol=1e-12, obj=context)

    records = ledger_files(store)
    again = subprocess.run(run_command(cohort, store), capture_output=True, text=True, timeout=WAIT_S)
    assert again.returncode == 0, again.stdout + again.stderr
    assert ledger_files(store) == records, "a finished run wrote new records"
    for line in again.stdout.splitlines():
        if line.split()[:1] and line.split()[0] in STAGES:
            done, quarantined, failed = map(int, line.split()[1:4])
            assert done == quarantined == failed == 0, line
    pd.testing.assert_frame_equal(pd.read_parquet(store.parent / "idps.parquet"), reference, obj="third run")
