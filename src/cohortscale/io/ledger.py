"""The ledger: durable, append-only records of what each stage did to each participant.

Layout, inside a cohort store (a local or shared-filesystem directory)::

    <store>/ledger/<stage>/<UTC time>-<uuid4>.jsonl     one file per :meth:`Ledger.record` call

Every file is written under a temporary name and renamed into place (``os.replace``), so a reader never
sees a partial file, and files are never edited afterwards. Writers on different workers therefore need
no coordination, and a task that Dask runs twice merely leaves a second, equivalent record. Readers take
the latest record per participant.

:class:`Outcome` lives here rather than in :mod:`cohortscale.pipeline` because the dependency direction is
``pipeline → io``: the engine re-exports it, and ``io`` never imports ``pipeline``.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

#: Outcome statuses. "failed" is retried by the next run; "quarantined" is not (bad data stays bad).
STATUSES = ("done", "quarantined", "failed")
#: Order used to break exact timestamp ties between records of one participant: the higher rank wins,
#: because a "done" record means the outputs were written, whatever a concurrent duplicate reported.
STATUS_RANK = {"failed": 0, "quarantined": 1, "done": 2}
#: Columns of :meth:`Ledger.read`.
COLUMNS = ("participant", "status", "reason", "message", "seconds", "time", "host")
#: Columns of :meth:`Ledger.summary`.
SUMMARY_COLUMNS = ("stage", "status", "count", "reasons")
#: Number of most common reasons listed per row of :meth:`Ledger.summary`.
TOP_REASONS = 3
#: Directory of the ledger inside a store, and the suffix of record files.
LEDGER_DIR = "ledger"
RECORD_SUFFIX = ".jsonl"
#: Prefix of temporary files; readers ignore them (a writer may have died before renaming).
TEMP_PREFIX = "."


@dataclass(frozen=True)
class Outcome:
    """What a stage did to one participant visit.

    Attributes
    ----------
    participant : str
        The visit key, ``"<eid>_<instance>"``.
    status : str
        ``"done"``, ``"quarantined"`` (bad input; not retried) or ``"failed"`` (retried next run).
    reason : str
        Machine-readable short code, e.g. ``"corrupt_zip"``; empty when done.
    message : str
        A human sentence naming the participant, the file and the problem.
    seconds : float
        Worker wall time spent on this visit, s.
    """

    participant: str
    status: str
    reason: str = ""
    message: str = ""
    seconds: float = 0.0

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"outcome status must be one of {STATUSES}, got {self.status!r}")


def _host() -> str:
    """``hostname`` or ``hostname/<worker name>`` when called inside a Dask worker."""
    host = socket.gethostname()
    # Only look for a worker if distributed is already loaded: io must not pull in Dask by itself.
    distributed = sys.modules.get("distributed")
    if distributed is not None:
        try:
            return f"{host}/{distributed.get_worker().name}"
        except ValueError:  # not running in a worker
            pass
    return host


def _check_stage(stage: str) -> str:
    if not stage or "/" in stage or os.sep in stage or stage.startswith(TEMP_PREFIX):
        raise ValueError(f"stage name {stage!r} must be a plain, non-hidden directory name")
    return stage


class Ledger:
    """Per-participant × stage completion and quarantine records of one cohort store.

    Parameters
    ----------
    store : path-like
        The cohort store directory; records live in ``<store>/ledger/<stage>/``. It must be on a
        filesystem that every worker and the client can reach (a local disk or a shared mount).
    """

    def __init__(self, store: str | Path) -> None:
        self.root = Path(store) / LEDGER_DIR

    def record(self, stage: str, outcomes: Iterable[Outcome]) -> None:
        """Durably append ``outcomes`` of ``stage``: one new file, written atomically.

        Parameters
        ----------
        stage : str
            Stage name, e.g. ``"ingest"``.
        outcomes : iterable of Outcome
            Nothing is written when empty.
        """
        outcomes = list(outcomes)
        if not outcomes:
            return
        now = datetime.now(UTC)
        host = _host()
        lines = [
            json.dumps(
                {
                    "participant": o.participant,
                    "status": o.status,
                    "reason": o.reason,
                    "message": o.message,
                    "seconds": float(o.seconds),
                    "time": now.isoformat(),
                    "host": host,
                }
            )
            for o in outcomes
        ]
        folder = self.root / _check_stage(stage)
        folder.mkdir(parents=True, exist_ok=True)
        # The time prefix makes listings readable in order; the uuid makes names unique across workers.
        name = f"{now.strftime('%Y%m%dT%H%M%S.%fZ')}-{uuid.uuid4().hex}{RECORD_SUFFIX}"
        temp = folder / f"{TEMP_PREFIX}{name}.tmp"
        with open(temp, "w", encoding="utf-8") as fh:
            fh.write("\n".join(lines) + "\n")
            fh.flush()
            os.fsync(fh.fileno())  # the record must survive a crash right after we report success
        os.replace(temp, folder / name)

    def _files(self, stage: str) -> list[Path]:
        folder = self.root / _check_stage(stage)
        if not folder.is_dir():
            return []
        return sorted(
            Path(entry.path)
            for entry in os.scandir(folder)
            if entry.is_file()
            and entry.name.endswith(RECORD_SUFFIX)
            and not entry.name.startswith(TEMP_PREFIX)
        )

    def _rows(self, stage: str) -> Iterator[dict[str, object]]:
        for file_number, path in enumerate(self._files(stage)):
            with open(path, encoding="utf-8") as fh:
                for line_number, line in enumerate(fh):
                    if line.strip():
                        yield {**json.loads(line), "_file": file_number, "_line": line_number}

    def read(self, stage: str) -> pd.DataFrame:
        """The latest record of every participant for ``stage``.

        Parameters
        ----------
        stage : str
            Stage name.

        Returns
        -------
        pandas.DataFrame
            Columns ``participant, status, reason, message, seconds`` (s), ``time`` (UTC timestamp of the
            record) and ``host``; one row per participant, sorted by participant. Records with equal times
            are ordered by status (done > quarantined > failed), then file name and line, so the answer does
            not depend on directory listing order. Empty (with these columns) when there are no records.
        """
        rows = list(self._rows(stage))
        if not rows:
            empty = pd.DataFrame({c: pd.Series(dtype=object) for c in COLUMNS})
            empty["seconds"] = empty["seconds"].astype(float)
            empty["time"] = pd.to_datetime(empty["time"], utc=True)
            return empty
        frame = pd.DataFrame(rows)
        frame["time"] = pd.to_datetime(frame["time"], utc=True, format="ISO8601")
        frame["_rank"] = frame["status"].map(STATUS_RANK)
        frame = frame.sort_values(["time", "_rank", "_file", "_line"], kind="stable")
        latest = frame.drop_duplicates("participant", keep="last").sort_values("participant")
        return latest.loc[:, list(COLUMNS)].reset_index(drop=True)

    def stages(self) -> list[str]:
        """Names of the stages that have a ledger directory, sorted."""
        if not self.root.is_dir():
            return []
        return sorted(
            p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(TEMP_PREFIX)
        )

    def summary(self) -> pd.DataFrame:
        """Counts of participants per stage and latest status.

        Returns
        -------
        pandas.DataFrame
            Columns ``stage, status, count, reasons``; ``reasons`` lists the most common reasons of that
            status as ``"corrupt_zip 3, missing_series 1"`` (empty for done). Rows in stage order, then
            done, quarantined, failed. Empty (with these columns) when nothing was recorded.
        """
        rows: list[dict[str, object]] = []
        for stage in self.stages():
            latest = self.read(stage)
            for status in STATUSES:
                subset = latest[latest["status"] == status]
                if subset.empty:
                    continue
                counts = subset.loc[subset["reason"] != "", "reason"].value_counts()
                top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_REASONS]
                reasons = ", ".join(f"{reason} {n}" for reason, n in top)
                if len(counts) > TOP_REASONS:
                    reasons += ", …"
                rows.append({"stage": stage, "status": status, "count": len(subset), "reasons": reasons})
        if not rows:
            return pd.DataFrame(
                {c: pd.Series(dtype=int if c == "count" else object) for c in SUMMARY_COLUMNS}
            )
        return pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))
