"""Ingest survives being killed, resumes without loss or duplication, and runs on a remote cluster."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import distributed
import numpy as np
import pandas as pd
import pytest

from cohortscale.io.ledger import Ledger
from cohortscale.io.store import open_store
from cohortscale.pipeline.cluster import ClusterConfig
from cohortscale.pipeline.engine import EngineConfig
from cohortscale.pipeline.ingest import run_ingest

BIN = Path(sys.executable).parent
# dask through this interpreter: its console script need not sit beside it (pip --target, user installs)
DASK = [sys.executable, "-m", "dask"]
WAIT_S = 120


@pytest.fixture(scope="module")
def cohort(make_cohort) -> Path:
    """Eight quarter-scale participants, one with a corrupt zip, one with a duplicated station."""
    return make_cohort(
        "resilience",
        participants=8,
        seed=13,
        workers=2,
        **{"anomalies.corrupt_zip": 0.15, "anomalies.duplicate_station": 0.2},
    )


@pytest.fixture(scope="module")
def reference(cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("reference") / "store.zarr"
    run_ingest(cohort / "bulk", store, engine=EngineConfig(progress=False), cluster=ClusterConfig(workers=2))
    return store


def assert_same_store(a: Path, b: Path) -> None:
    """Every array and the manifest are identical; every participant has the same final status."""
    ra, rb = open_store(a, mode="r"), open_store(b, mode="r")
    names = _all_arrays(ra)
    assert names == _all_arrays(rb) and names
    for name in names:
        x, y = ra[name][...], rb[name][...]
        if np.issubdtype(x.dtype, np.inexact):
            np.testing.assert_array_equal(x, y)  # NaN == NaN here
        else:
            assert np.array_equal(x, y), name
    pd.testing.assert_frame_equal(
        pd.read_parquet(a / "manifest.parquet"), pd.read_parquet(b / "manifest.parquet")
    )
    status = [Ledger(s).read("ingest")[["participant", "status", "reason"]] for s in (a, b)]
    pd.testing.assert_frame_equal(*status)


def _all_arrays(group, prefix: str = "") -> list[str]:
    names = [prefix + name for name, _ in group.arrays()]
    for name, sub in group.groups():
        names += _all_arrays(sub, f"{prefix}{name}/")
    return sorted(names)


def _ledger_records(store: Path) -> int:
    folder = store / "ledger" / "ingest"
    return len(list(folder.glob("*.json*"))) if folder.exists() else 0


def test_sigkill_of_the_whole_run_then_resume(cohort: Path, reference: Path, tmp_path: Path) -> None:
    store = tmp_path / "store.zarr"
    command = [str(BIN / "cohortscale"), "ingest", str(cohort / "bulk"), "--store", str(store)]
    process = subprocess.Popen(
        [*command, "--workers", "2", "--batch-size", "1"],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + WAIT_S
    while _ledger_records(store) < 3 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, "the run finished before it could be killed"
    os.killpg(process.pid, signal.SIGKILL)  # client, scheduler and workers at once
    process.wait()
    finished = len(Ledger(store).read("ingest"))
    assert 0 < finished < 8
    report = run_ingest(
        cohort / "bulk", store, engine=EngineConfig(progress=False), cluster=ClusterConfig(workers=2)
    )
    assert report.skipped == finished and report.done + report.quarantined == 8 - finished
    assert_same_store(reference, store)
    again = run_ingest(
        cohort / "bulk", store, engine=EngineConfig(progress=False), cluster=ClusterConfig(workers=2)
    )
    assert again.skipped == 8 and again.done == again.quarantined == again.failed == 0


def test_sigkill_of_a_worker_mid_run(cohort: Path, reference: Path, tmp_path: Path) -> None:
    store = tmp_path / "store.zarr"
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster:
        # Only the pipeline's own client may live while it runs (two clients in one process share loops).
        with distributed.Client(cluster) as client:
            pids = list(client.run(os.getpid).values())

        def kill_one_worker() -> None:
            deadline = time.monotonic() + WAIT_S
            while _ledger_records(store) < 2 and time.monotonic() < deadline:
                time.sleep(0.02)
            os.kill(pids[0], signal.SIGKILL)

        killer = threading.Thread(target=kill_one_worker)
        killer.start()
        report = run_ingest(
            cohort / "bulk",
            store,
            engine=EngineConfig(progress=False, batch_size=1),
            cluster=ClusterConfig(scheduler=cluster.scheduler_address),
        )
        killer.join()
    assert report.failed == 0 and report.done + report.quarantined == 8
    assert_same_store(reference, store)


def test_ingest_on_a_separately_started_scheduler(cohort: Path, reference: Path, tmp_path: Path) -> None:
    scheduler_file = tmp_path / "scheduler.json"
    env = {**os.environ, "DASK_DISTRIBUTED__WORKER__DAEMON": "False"}
    scheduler = subprocess.Popen(
        [*DASK, "scheduler", "--scheduler-file", str(scheduler_file), "--no-dashboard",
         "--host", "127.0.0.1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env=env,
    )  # fmt: skip
    worker = None
    try:
        deadline = time.monotonic() + WAIT_S
        while not scheduler_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        worker = subprocess.Popen(
            [*DASK, "worker", "--scheduler-file", str(scheduler_file), "--nworkers", "2",
             "--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env=env,
        )  # fmt: skip
        address = json.loads(scheduler_file.read_text())["address"]
        with distributed.Client(address) as client:
            client.wait_for_workers(2, timeout=WAIT_S)
        store = tmp_path / "store.zarr"
        command = [str(BIN / "cohortscale"), "ingest", str(cohort / "bulk"), "--store", str(store)]
        result = subprocess.run(
            [*command, "--scheduler", address], capture_output=True, text=True, timeout=WAIT_S * 2
        )
        assert result.returncode == 0, result.stderr[-2000:]
        assert "ingest:" in result.stdout
        assert_same_store(reference, store)
    finally:
        for process in (worker, scheduler):
            if process is not None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
