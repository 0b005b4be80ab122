"""The ledger: round trips, latest-wins, harmless duplicates, atomic files under concurrency, summaries."""

from __future__ import annotations

import multiprocessing
import threading
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import ClassVar

import pandas as pd
import pytest

from cohortscale.io import ledger as ledger_module
from cohortscale.io.ledger import COLUMNS, SUMMARY_COLUMNS, Ledger, Outcome

#: Writers and records per writer in the concurrency test.
WRITERS = 6
RECORDS_PER_WRITER = 30
#: Outcomes per record call in the concurrency test (several lines per file, so a torn file would show).
OUTCOMES_PER_RECORD = 5


class FixedClock:
    """Stand-in for ``datetime`` in the ledger module whose ``now`` returns times we choose."""

    times: ClassVar[list[datetime]] = []

    @classmethod
    def now(cls, tz=None) -> datetime:
        return cls.times.pop(0)


def _at(seconds: float) -> datetime:
    return datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds)


def test_round_trip(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    outcomes = [
        Outcome("1000107_2", "done", seconds=1.5),
        Outcome("1000115_2", "quarantined", "corrupt_zip", "Participant 1000115_2: x.zip is not a zip.", 0.2),
    ]
    ledger.record("ingest", outcomes)
    frame = ledger.read("ingest")
    assert tuple(frame.columns) == COLUMNS
    assert frame["participant"].tolist() == ["1000107_2", "1000115_2"]
    assert frame["status"].tolist() == ["done", "quarantined"]
    assert frame["reason"].tolist() == ["", "corrupt_zip"]
    assert frame.loc[1, "message"] == "Participant 1000115_2: x.zip is not a zip."
    assert frame["seconds"].tolist() == [1.5, 0.2]
    assert str(frame["time"].dt.tz) == "UTC"
    assert (frame["host"].str.len() > 0).all()
    assert ledger.stages() == ["ingest"]
    # One file per call, under <store>/ledger/<stage>/.
    assert len(list((tmp_path / "ledger" / "ingest").glob("*.jsonl"))) == 1


def test_empty_ledger(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "missing")
    frame = ledger.read("fuse")
    assert tuple(frame.columns) == COLUMNS and frame.empty
    assert ledger.stages() == []
    summary = ledger.summary()
    assert tuple(summary.columns) == SUMMARY_COLUMNS and summary.empty
    ledger.record("fuse", [])  # nothing to write: no file, no directory
    assert not (tmp_path / "missing").exists()


def test_latest_record_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ledger_module, "datetime", FixedClock)
    FixedClock.times = [_at(0), _at(1), _at(2)]
    ledger = Ledger(tmp_path)
    ledger.record("ingest", [Outcome("a", "failed", "task_error"), Outcome("b", "done")])
    ledger.record("ingest", [Outcome("a", "done")])
    ledger.record("ingest", [Outcome("b", "failed", "task_error")])
    latest = ledger.read("ingest").set_index("participant")
    assert latest.loc["a", "status"] == "done"
    assert latest.loc["b", "status"] == "failed"
    assert latest.loc["a", "time"] == pd.Timestamp(_at(1))


def test_exact_time_ties_are_deterministic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Equal timestamps (two hosts, one microsecond): "done" beats "failed" whichever was written first."""
    monkeypatch.setattr(ledger_module, "datetime", FixedClock)
    for order in (["done", "failed"], ["failed", "done"]):
        store = tmp_path / "-".join(order)
        FixedClock.times = [_at(5), _at(5)]
        for status in order:
            Ledger(store).record("fit", [Outcome("a", status, "" if status == "done" else "task_error")])
        assert Ledger(store).read("fit")["status"].tolist() == ["done"]


def test_duplicate_records_are_harmless(tmp_path: Path) -> None:
    """Dask may run a task twice: the second identical record changes nothing but the time."""
    ledger = Ledger(tmp_path)
    batch = [
        Outcome("a", "done", seconds=1.0),
        Outcome("b", "quarantined", "missing_series", "b: no series 3"),
    ]
    ledger.record("ingest", batch)
    ledger.record("ingest", batch)
    frame = ledger.read("ingest")
    assert frame["participant"].tolist() == ["a", "b"]
    assert frame["status"].tolist() == ["done", "quarantined"]
    summary = ledger.summary()
    assert summary["count"].sum() == 2


def test_invalid_input_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="status"):
        Outcome("a", "finished")
    for bad in ("", "../escape", ".hidden"):
        with pytest.raises(ValueError, match="stage name"):
            Ledger(tmp_path).record(bad, [Outcome("a", "done")])


def test_partial_files_are_ignored(tmp_path: Path) -> None:
    """A writer killed before its rename leaves a temp file, which readers never see."""
    ledger = Ledger(tmp_path)
    ledger.record("ingest", [Outcome("a", "done")])
    folder = tmp_path / "ledger" / "ingest"
    (folder / ".20260101T000000.000000Z-dead.jsonl.tmp").write_text('{"participant": "b", "sta')
    assert ledger.read("ingest")["participant"].tolist() == ["a"]


def _write_many(store: str, writer: int) -> int:
    """Record ``RECORDS_PER_WRITER`` calls of ``OUTCOMES_PER_RECORD`` outcomes each; return the count."""
    ledger = Ledger(store)
    for call in range(RECORDS_PER_WRITER):
        ledger.record(
            "stress",
            [Outcome(f"w{writer}-c{call}-o{i}", "done", seconds=0.01) for i in range(OUTCOMES_PER_RECORD)],
        )
    return RECORDS_PER_WRITER * OUTCOMES_PER_RECORD


def test_concurrent_writers_from_threads_and_processes(tmp_path: Path) -> None:
    """Many writers at once while a reader keeps reading: every read parses, and nothing is lost."""
    store = str(tmp_path)
    stop = threading.Event()
    reads: list[int] = []
    errors: list[BaseException] = []

    def keep_reading() -> None:
        while not stop.is_set():
            try:
                reads.append(len(Ledger(store).read("stress")))
            except BaseException as exc:  # any parse error means a partial file was visible
                errors.append(exc)
                return

    reader = threading.Thread(target=keep_reading)
    reader.start()
    try:
        spawn = multiprocessing.get_context("spawn")
        with (
            ThreadPoolExecutor(WRITERS // 2) as threads,
            ProcessPoolExecutor(WRITERS // 2, mp_context=spawn) as processes,
        ):
            futures = [threads.submit(_write_many, store, w) for w in range(WRITERS // 2)]
            futures += [processes.submit(_write_many, store, w) for w in range(WRITERS // 2, WRITERS)]
            written = sum(f.result() for f in futures)
    finally:
        stop.set()
        reader.join()
    assert not errors, errors
    assert reads, "the reader never ran"
    frame = Ledger(store).read("stress")
    assert len(frame) == written == WRITERS * RECORDS_PER_WRITER * OUTCOMES_PER_RECORD
    assert len(list((tmp_path / "ledger" / "stress").glob("*.jsonl"))) == WRITERS * RECORDS_PER_WRITER
    assert not list((tmp_path / "ledger" / "stress").glob(".*"))  # no temp file left behind


def test_summary_counts(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    ledger.record("ingest", [Outcome(f"d{i}", "done") for i in range(5)])
    ledger.record(
        "ingest",
        [
            Outcome("q1", "quarantined", "corrupt_zip"),
            Outcome("q2", "quarantined", "corrupt_zip"),
            Outcome("q3", "quarantined", "missing_series"),
            Outcome("f1", "failed", "task_error"),
        ],
    )
    ledger.record("fuse", [Outcome("d0", "done"), Outcome("d1", "failed", "task_error")])
    summary = ledger.summary()
    assert tuple(summary.columns) == SUMMARY_COLUMNS
    rows = {(r.stage, r.status): (r.count, r.reasons) for r in summary.itertuples()}
    assert rows == {
        ("fuse", "done"): (1, ""),
        ("fuse", "failed"): (1, "task_error 1"),
        ("ingest", "done"): (5, ""),
        ("ingest", "quarantined"): (3, "corrupt_zip 2, missing_series 1"),
        ("ingest", "failed"): (1, "task_error 1"),
    }
    # Rows by stage, then in status order.
    assert summary[["stage", "status"]].values.tolist()[:2] == [["fuse", "done"], ["fuse", "failed"]]
