"""The fusion section of the HTML report: fused neck-to-knee sections and fat–water swap flags per visit."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from cohortscale.io.ledger import Ledger
from cohortscale.io.store import open_store, participant_rows
from cohortscale.ops.swaps import SEGMENTS
from cohortscale.pipeline.engine import StageReport
from cohortscale.pipeline.fusion import FUSED
from cohortscale.report.synth_report import coronal_extent, label_coronal_axes, save_figure

#: Visits shown in the figure.
FIGURE_VISITS = 4
#: File name of the figure, next to the report.
FIGURE = "fusion.png"


def fusion_table(store: str | Path) -> pd.DataFrame:
    """One row per fused visit: stations fused (contrasts per station), swapped segments, smallest swap
    margin and the stage's message."""
    root = open_store(store, mode="r")
    rows = participant_rows(root)
    latest = Ledger(store).read("fusion").set_index("participant")
    records = []
    for key, row in rows.items():
        if key not in latest.index:
            continue
        swapped = np.asarray(root[f"{FUSED}/swapped"][row])
        margins = np.asarray(root[f"{FUSED}/swap_margin"][row])
        stations = np.asarray(root[f"{FUSED}/stations"][row])
        records.append(
            {
                "participant": key,
                "status": latest.at[key, "status"],
                "contrasts per station": " ".join(str(v) for v in stations) if (stations >= 0).all() else "",
                "swapped": ", ".join(s for s, f in zip(SEGMENTS, swapped, strict=True) if f == 1) or "–",
                "min margin": float(np.nanmin(margins)) if np.isfinite(margins).any() else np.nan,
                "message": latest.at[key, "message"],
            }
        )
    return pd.DataFrame(records)


def fusion_figure(store: str | Path, path: Path, visits: list[str]) -> None:
    """Mid-coronal sections of fused water and FF of ``visits``, in patient mm (patient right on the left)."""
    root = open_store(store, mode="r")
    rows = participant_rows(root)
    fig, axes = plt.subplots(1, 2 * len(visits), figsize=(4 * len(visits), 7), sharey=True, squeeze=False)
    for k, key in enumerate(visits):
        row = rows[key]
        affine = np.asarray(root[f"{FUSED}/affine"][row])
        water = np.asarray(root[f"{FUSED}/water"][row])
        ff = np.asarray(root[f"{FUSED}/ff"][row])
        middle = water.shape[1] // 2
        extent = coronal_extent(affine, water.shape)
        axes[0, 2 * k].imshow(water[:, middle], cmap="gray", extent=extent, interpolation="nearest")
        axes[0, 2 * k].set_title(f"{key}\nwater")
        axes[0, 2 * k + 1].imshow(
            ff[:, middle], cmap="magma", vmin=0, vmax=1, extent=extent, interpolation="nearest"
        )
        axes[0, 2 * k + 1].set_title(f"{key}\nFF 0–1")
    label_coronal_axes(axes[0])
    save_figure(fig, "Fused neck-to-knee volumes read back from the cohort store (mid-coronal)", path)


def fusion_html(store: str | Path, out: Path, report: StageReport) -> str:
    """The report section: what the stage did, a figure of fused visits (swapped ones first) and the table."""
    table = fusion_table(store)
    parts = [f"<p>{report}</p>"]
    done = table[table["status"] == "done"] if len(table) else table
    if len(done):
        ranked = done.assign(_swap=done["swapped"] != "–").sort_values(
            "_swap", ascending=False, kind="stable"
        )
        fusion_figure(store, Path(out) / FIGURE, list(ranked["participant"][:FIGURE_VISITS]))
        parts.append(f'<img src="{FIGURE}" width="100%">')
    parts.append(
        "<p>Contrasts per station: how many of in/opp/fat/water each station contributed (4 = complete). "
        "Swapped: segments (station, or leg L/R of stations 5–6) whose fat and water were found exchanged; "
        "the margin is the evidence behind the least certain decision.</p>"
    )
    parts.append(table.to_html(index=False, float_format=lambda v: f"{v:.2f}"))
    return "\n".join(parts)
