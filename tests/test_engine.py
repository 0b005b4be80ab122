"""The engine on a real (small) Dask cluster: batching, resume, quarantine, retries, the in-flight window,
a SIGKILLed client, GPU annotation, and connecting by address."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import distributed
import pytest

from cohortscale.io.ledger import Ledger
from cohortscale.pipeline import (
    ClusterConfig,
    EngineConfig,
    Outcome,
    StageReport,
    Visit,
    connect,
    run_stage,
)
from cohortscale.pipeline.engine import (
    DEFAULT_BATCH_SIZE,
    MAX_BATCH_SIZE,
    _complete_outcomes,
    _gpu_resources,
    batch_size_for,
)

#: Worker processes and threads of the test cluster (small and fast).
WORKERS = 2
THREADS = 1
#: First eid of the toy cohort.
FIRST_EID = 1_000_000
#: Participants of the client-kill test, worker time per visit there (s), and how many must be done
#: before the client is killed.
KILL_VISITS = 40
KILL_SLEEP_S = 0.15
KILL_AFTER_DONE = 6
#: Longest wait for the killed client to make progress, s.
KILL_DEADLINE_S = 60.0
POLL_S = 0.05
#: Generous bound on re-running a finished cohort (it only reads the ledger), s.
FINISHED_RERUN_S = 2.0

QUIET = EngineConfig(progress=False)


def make_visits(n: int) -> list[Visit]:
    """``n`` first-imaging-visit participants with fake bulk paths."""
    return [
        Visit(f"{eid}_2", eid, 2, i, {"20201": f"/bulk/{eid}_20201_2_0.zip"})
        for i, eid in enumerate(range(FIRST_EID, FIRST_EID + n))
    ]


def expected_output(visit_key: str) -> str:
    return f"{visit_key} processed\n"


def _write_atomically(path: Path, text: str) -> None:
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    temp.write_text(text)
    os.replace(temp, path)


@dataclass(frozen=True)
class ToyStage:
    """A picklable stage that writes one file per visit under ``out/outputs`` and logs each call.

    Each successful call leaves ``out/calls/<uuid>.json`` with its visits, worker and start/end times
    (so tests can count tasks and measure their overlap). Visits in ``quarantine`` come back quarantined;
    a batch holding a visit of ``flaky`` raises on its first attempt only (a marker file remembers the
    attempt); one holding a visit of ``broken`` always raises.
    """

    out: str
    name: str = "toy"
    gpu: bool = False
    sleep_s: float = 0.0
    quarantine: frozenset[str] = frozenset()
    flaky: frozenset[str] = frozenset()
    broken: frozenset[str] = frozenset()

    def process(self, visits: list[Visit]) -> list[Outcome]:
        start = time.time()
        out = Path(self.out)
        for folder in ("outputs", "calls", "markers"):
            (out / folder).mkdir(parents=True, exist_ok=True)
        keys = [v.key for v in visits]
        for key in set(keys) & self.broken:
            raise OSError(f"simulated disk failure while writing {key}")
        for key in sorted(set(keys) & self.flaky):
            marker = out / "markers" / key
            if not marker.exists():
                marker.touch()
                raise RuntimeError(f"simulated worker hiccup on {key}")
        time.sleep(self.sleep_s * len(visits))
        outcomes = []
        for visit in visits:
            if visit.key in self.quarantine:
                message = f"Participant {visit.key}: {visit.inputs['20201']} is not a zip archive."
                outcomes.append(Outcome(visit.key, "quarantined", "corrupt_zip", message))
            else:
                _write_atomically(out / "outputs" / f"{visit.key}.txt", expected_output(visit.key))
                outcomes.append(Outcome(visit.key, "done"))
        call = {
            "visits": keys,
            "worker": str(distributed.get_worker().name),
            "start": start,
            "end": time.time(),
        }
        _write_atomically(out / "calls" / f"{uuid.uuid4().hex}.json", json.dumps(call))
        return outcomes


def calls(out: Path) -> list[dict]:
    """Every successful ``process`` call of a toy stage, in order of their first visit."""
    found = [json.loads(p.read_text()) for p in (out / "calls").glob("*.json")]
    return sorted(found, key=lambda c: c["visits"][0])


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """Largest number of the ``(start, end)`` intervals open at one instant."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    open_now = peak = 0
    for _, step in events:
        open_now += step
        peak = max(peak, open_now)
    return peak


def ledger_files(store: Path) -> list[Path]:
    return sorted((store / "ledger").rglob("*.jsonl"))


@pytest.fixture(scope="module")
def client() -> Iterator[distributed.Client]:
    """An embedded cluster of two single-threaded worker processes, started through :func:`connect`."""
    with connect(ClusterConfig(workers=WORKERS, threads=THREADS)) as c:
        yield c


def test_connect_starts_the_embedded_cluster(client: distributed.Client) -> None:
    assert list(client.nthreads().values()) == [THREADS] * WORKERS


def test_all_done_quarantine_kept_and_finished_cohort_not_resubmitted(
    client: distributed.Client, tmp_path: Path
) -> None:
    visits = make_visits(12)
    bad = {visits[3].key, visits[8].key}
    stage = ToyStage(str(tmp_path / "toy"), quarantine=frozenset(bad))
    store = tmp_path / "store"
    config = EngineConfig(batch_size=3, progress=False)

    report = run_stage(stage, visits, store, client, config)
    assert (report.done, report.quarantined, report.failed, report.skipped) == (10, 2, 0, 0)
    assert report.reasons == {"corrupt_zip": 2}
    assert report.seconds_per_visit > 0
    assert "10 done, 2 quarantined, 0 failed" in str(report)
    assert len(calls(tmp_path / "toy")) == 4  # 12 visits in batches of 3
    latest = Ledger(store).read("toy").set_index("participant")
    assert len(latest) == 12
    assert set(latest.index[latest["status"] == "quarantined"]) == bad
    for key in bad:
        assert latest.loc[key, "reason"] == "corrupt_zip"
        assert key in latest.loc[key, "message"] and ".zip" in latest.loc[key, "message"]
    outputs = sorted(p.stem for p in (tmp_path / "toy" / "outputs").glob("*.txt"))
    assert outputs == sorted({v.key for v in visits} - bad)

    # A finished cohort: nothing submitted, nothing recorded, quarantined visits not retried.
    files_before = ledger_files(store)
    started = time.perf_counter()
    again = run_stage(ToyStage(str(tmp_path / "toy")), visits, store, client, config)
    assert time.perf_counter() - started < FINISHED_RERUN_S
    assert (again.done, again.quarantined, again.failed, again.skipped) == (0, 0, 0, 12)
    assert len(calls(tmp_path / "toy")) == 4
    assert ledger_files(store) == files_before


def test_flaky_batches_are_retried_by_dask(client: distributed.Client, tmp_path: Path) -> None:
    visits = make_visits(8)
    flaky = frozenset({visits[1].key, visits[6].key})
    out = tmp_path / "toy"
    report = run_stage(
        ToyStage(str(out), flaky=flaky),
        visits,
        tmp_path / "store",
        client,
        EngineConfig(batch_size=2, retries=2, progress=False),
    )
    assert (report.done, report.failed) == (8, 0)
    assert {p.name for p in (out / "markers").iterdir()} == set(flaky)  # each raised once first


def test_batch_failing_every_attempt_is_failed_then_retried_next_run(
    client: distributed.Client, tmp_path: Path
) -> None:
    visits = make_visits(10)
    out, store = tmp_path / "toy", tmp_path / "store"
    config = EngineConfig(batch_size=2, retries=1, progress=False)
    broken = ToyStage(str(out), broken=frozenset({visits[5].key}))

    report = run_stage(broken, visits, store, client, config)
    assert (report.done, report.quarantined, report.failed) == (8, 0, 2)
    assert report.reasons == {"task_error": 2}
    latest = Ledger(store).read("toy").set_index("participant")
    failed = latest[latest["status"] == "failed"]
    assert set(failed.index) == {visits[4].key, visits[5].key}  # the whole batch of the broken visit
    assert (failed["reason"] == "task_error").all()
    message = failed.loc[visits[4].key, "message"]
    assert visits[4].key in message and "OSError" in message and "simulated disk failure" in message

    # The infrastructure is fixed: the next run retries exactly the failed visits.
    fixed = run_stage(ToyStage(str(out)), visits, store, client, config)
    assert (fixed.done, fixed.failed, fixed.skipped) == (2, 0, 8)
    assert (Ledger(store).read("toy")["status"] == "done").all()


@pytest.mark.parametrize("window", [1, 2])
def test_in_flight_window_is_respected(client: distributed.Client, tmp_path: Path, window: int) -> None:
    """With a window of one, no two tasks ever overlap in time although two workers are idle."""
    out = tmp_path / "toy"
    config = EngineConfig(batch_size=1, window=window, progress=False)
    report = run_stage(ToyStage(str(out), sleep_s=0.1), make_visits(8), tmp_path / "store", client, config)
    assert report.done == 8
    overlap = max_overlap([(c["start"], c["end"]) for c in calls(out)])
    assert overlap == window  # never above the window, and the measurement does see concurrency


def test_batches_follow_the_declared_cost(client: distributed.Client, tmp_path: Path) -> None:
    out = tmp_path / "toy"
    config = EngineConfig(batch_seconds=0.2, progress=False)
    report = run_stage(
        ToyStage(str(out), sleep_s=0.05),
        make_visits(20),
        tmp_path / "store",
        client,
        config,
        cost_per_visit_s=0.05,
    )
    assert report.done == 20
    sizes = [len(c["visits"]) for c in calls(out)]
    # The first window (4 tasks) is cut before any measurement: 0.2 s / 0.05 s = 4 visits per task.
    assert sizes[:4] == [4, 4, 4, 4]
    assert sum(sizes) == 20 and max(sizes) <= 4 + 1  # measured cost may round one visit either way


def test_batches_follow_the_cost_measured_by_earlier_runs(client: distributed.Client, tmp_path: Path) -> None:
    out, store = tmp_path / "toy", tmp_path / "store"
    stage = ToyStage(str(out), sleep_s=0.05)
    config = EngineConfig(batch_seconds=0.2, batch_size=None, progress=False)
    run_stage(stage, make_visits(2), store, client, EngineConfig(batch_size=1, progress=False))
    report = run_stage(stage, make_visits(22), store, client, config)
    assert (report.done, report.skipped) == (20, 2)
    sizes = [len(c["visits"]) for c in calls(out)]
    # Without history the first tasks would hold DEFAULT_BATCH_SIZE visits; the ledger says ~0.05 s each.
    assert sizes[:2] == [1, 1] and all(3 <= size <= 4 for size in sizes[2:6])


def test_batch_size_rules() -> None:
    assert batch_size_for(2.0, None, 1000, 4) == DEFAULT_BATCH_SIZE
    assert batch_size_for(2.0, 0.5, 1000, 4) == 4
    assert batch_size_for(2.0, 1e-6, 10**6, 4) == MAX_BATCH_SIZE
    assert batch_size_for(2.0, 0.01, 10, 4) == 3  # an even share of what is left per thread
    assert batch_size_for(2.0, 10.0, 5, 2) == 1  # expensive visits: one per task


def test_stage_answers_are_checked() -> None:
    visits = make_visits(3)
    completed = _complete_outcomes(visits, [Outcome(visits[0].key, "done")], seconds=3.0)
    by_key = {o.participant: o for o in completed}
    assert by_key[visits[0].key].seconds == pytest.approx(1.0)  # an equal share of the batch time
    assert by_key[visits[1].key].status == "failed" and by_key[visits[1].key].reason == "missing_outcome"
    with pytest.raises(ValueError, match="not given"):
        _complete_outcomes(visits[:1], [Outcome("someone_else", "done")], seconds=1.0)


def test_duplicate_visit_keys_are_refused(client: distributed.Client, tmp_path: Path) -> None:
    visits = make_visits(2)
    with pytest.raises(ValueError, match="unique"):
        run_stage(ToyStage(str(tmp_path)), [*visits, visits[0]], tmp_path / "store", client, QUIET)


def test_gpu_stage_runs_on_a_cpu_only_cluster(client: distributed.Client, tmp_path: Path) -> None:
    stage = ToyStage(str(tmp_path / "toy"), name="fuse", gpu=True)
    assert _gpu_resources(stage, client) is None
    report = run_stage(stage, make_visits(4), tmp_path / "store", client, QUIET)
    assert report.done == 4


KILLED_CLIENT_SCRIPT = """
import sys

sys.path.insert(0, {tests!r})
from test_engine import KILL_SLEEP_S, KILL_VISITS, ToyStage, make_visits

from cohortscale.pipeline import ClusterConfig, EngineConfig, connect, run_stage

address, out, store = sys.argv[1:]
with connect(ClusterConfig(scheduler=address)) as client:
    stage = ToyStage(out, name="killed", sleep_s=KILL_SLEEP_S)
    config = EngineConfig(batch_size=2, window=2, progress=False)
    run_stage(stage, make_visits(KILL_VISITS), store, client, config)
"""


def test_sigkilled_client_loses_nothing_finished(client: distributed.Client, tmp_path: Path) -> None:
    """Kill a client mid-run with SIGKILL; the cluster lives on; a new run completes the cohort once."""
    out, store = tmp_path / "toy", tmp_path / "store"
    script = tmp_path / "client.py"
    script.write_text(KILLED_CLIENT_SCRIPT.format(tests=str(Path(__file__).parent)))
    proc = subprocess.Popen(
        [sys.executable, str(script), client.scheduler.address, str(out), str(store)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + KILL_DEADLINE_S
        while (Ledger(store).read("killed")["status"] == "done").sum() < KILL_AFTER_DONE:
            assert proc.poll() is None, (
                f"the client ended before it was killed:\n{proc.stdout.read().decode()}"
            )
            assert time.monotonic() < deadline, "the client made no progress"
            time.sleep(POLL_S)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    done_at_kill = int((Ledger(store).read("killed")["status"] == "done").sum())
    assert proc.returncode == -signal.SIGKILL
    assert KILL_AFTER_DONE <= done_at_kill < KILL_VISITS

    visits = make_visits(KILL_VISITS)
    report = run_stage(ToyStage(str(out), name="killed", sleep_s=KILL_SLEEP_S), visits, store, client, QUIET)
    assert report.skipped >= done_at_kill
    assert report.done + report.skipped == KILL_VISITS and report.failed == 0
    latest = Ledger(store).read("killed")
    assert sorted(latest["participant"]) == sorted(v.key for v in visits)
    assert (latest["status"] == "done").all()
    for visit in visits:  # idempotent outputs: each written whole, exactly once in content
        assert (out / "outputs" / f"{visit.key}.txt").read_text() == expected_output(visit.key)
    assert sorted(p.stem for p in (out / "outputs").glob("*.txt")) == sorted(v.key for v in visits)


@pytest.fixture(scope="module")
def mixed_cluster() -> Iterator[distributed.SpecCluster]:
    """A scheduler with one plain worker and one that advertises a GPU resource (no real GPU needed)."""
    quiet = {"nthreads": 1, "silence_logs": logging.ERROR}
    worker = {"cls": distributed.Nanny, "options": quiet}
    gpu_worker = {"cls": distributed.Nanny, "options": {**quiet, "resources": {"GPU": 1}}}
    with distributed.SpecCluster(
        scheduler={"cls": distributed.Scheduler, "options": {"dashboard_address": ":0"}},
        workers={"cpu": worker, "gpu": gpu_worker},
        silence_logs=logging.ERROR,
    ) as cluster:
        yield cluster


def test_connect_by_address_and_gpu_annotation(
    mixed_cluster: distributed.SpecCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    address = mixed_cluster.scheduler_address
    out = tmp_path / "toy"
    with connect(ClusterConfig(scheduler=address)) as remote:
        assert len(remote.nthreads()) == 2
        gpu_stage = ToyStage(str(out / "gpu"), name="segment", gpu=True)
        assert _gpu_resources(gpu_stage, remote) == {"GPU": 1}
        report = run_stage(
            gpu_stage,
            make_visits(6),
            tmp_path / "store",
            remote,
            EngineConfig(batch_size=1, window=4, retries=0, progress=False),
        )
        assert report.done == 6
        assert {c["worker"] for c in calls(out / "gpu")} == {"gpu"}  # only the GPU worker may run them
    assert "Dask dashboard: http" in capsys.readouterr().err
    # Leaving connect() closed our client only: the cluster still serves others.
    with distributed.Client(address) as other:
        assert len(other.nthreads()) == 2


@pytest.mark.skipif(importlib.util.find_spec("dask_cuda") is not None, reason="dask-cuda is installed")
def test_gpu_cluster_without_dask_cuda_is_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match="dask-cuda"), connect(ClusterConfig(gpus=True)):
        pass


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        EngineConfig(batch_size=0)
    with pytest.raises(ValueError, match="threads"):
        ClusterConfig(threads=0)
    with pytest.raises(ValueError, match="log_level"):
        ClusterConfig(log_level="LOUD")
    assert isinstance(StageReport("x"), StageReport)
