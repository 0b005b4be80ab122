"""A readable summary of a cohort store: visits per stage and status, with the reasons."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cohortscale.io.ledger import Ledger
from cohortscale.io.store import open_store, participant_rows
from cohortscale.pipeline.ingest import MANIFEST_FILE


def participant_count(store: str | Path) -> int:
    """Participant visits in the store."""
    return len(participant_rows(open_store(store, mode="r")))


def status_table(store: str | Path, total: int | None = None) -> pd.DataFrame:
    """One row per (stage, status) including ``pending`` (participants with no record yet)."""
    total = participant_count(store) if total is None else total
    ledger = Ledger(store)
    summary = ledger.summary()
    rows = [summary]
    for stage in ledger.stages():
        recorded = len(ledger.read(stage))
        if total > recorded:
            rows.append(
                pd.DataFrame(
                    [{"stage": stage, "status": "pending", "count": total - recorded, "reasons": ""}]
                )
            )
    table = pd.concat(rows, ignore_index=True) if rows else summary
    return table


def store_status(store: str | Path) -> str:
    """The text ``cohortscale status`` prints."""
    total = participant_count(store)
    lines = [f"{store}: {total} participant visits"]
    table = status_table(store, total)
    lines.append(table.to_string(index=False) if len(table) else "no stage has run yet")
    counts = manifest_summary(store)
    if len(counts):
        lines += ["", "series in manifest.parquet:", counts.to_string(index=False)]
    return "\n".join(lines)


def manifest_summary(store: str | Path) -> pd.DataFrame:
    """Series counts by decision and reason (from ``manifest.parquet``), empty when absent."""
    path = Path(store) / MANIFEST_FILE
    if not path.exists():
        return pd.DataFrame(columns=["decision", "reason", "series"])
    manifest = pd.read_parquet(path)
    manifest["reason"] = manifest["reason"].fillna("")
    return manifest.groupby(["decision", "reason"]).size().rename("series").reset_index()


def status_html(store: str | Path) -> str:
    """Status and manifest tables as HTML, for reports."""
    return (
        f"<p>Store <code>{Path(store).name}</code>.</p>"
        + status_table(store).to_html(index=False)
        + "<p>Series decisions (manifest.parquet):</p>"
        + manifest_summary(store).to_html(index=False)
    )
