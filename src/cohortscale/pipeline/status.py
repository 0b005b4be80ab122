"""A readable summary of a cohort store: visits per stage and status, with the reasons."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cohortscale.io.ledger import Ledger
from cohortscale.io.store import open_store, participant_rows
from cohortscale.pipeline.ingest import MANIFEST_FILE


def status_table(store: str | Path) -> pd.DataFrame:
    """One row per (stage, status) including ``pending`` (participants with no record yet)."""
    total = len(participant_rows(open_store(store, mode="r")))
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
    total = len(participant_rows(open_store(store, mode="r")))
    lines = [f"{store}: {total} participant visits"]
    table = status_table(store)
    lines.append(table.to_string(index=False) if len(table) else "no stage has run yet")
    manifest_path = Path(store) / MANIFEST_FILE
    if manifest_path.exists():
        manifest = pd.read_parquet(manifest_path)
        problems = manifest.loc[(manifest["decision"] != "kept") | (manifest["reason"].fillna("") != "")]
        if len(problems):
            counts = problems.groupby(["decision", "reason"]).size().rename("series").reset_index()
            lines += ["", "manifest (series not kept as they are):", counts.to_string(index=False)]
    return "\n".join(lines)
