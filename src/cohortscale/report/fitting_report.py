"""The fitting section of the HTML report: PDFF and R2* maps of multi-echo slices, and a table per visit."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from cohortscale.io.ledger import Ledger
from cohortscale.io.store import layout_of, open_store, participant_rows
from cohortscale.ops.ideal import Quality
from cohortscale.pipeline.engine import StageReport
from cohortscale.pipeline.fitting import MAPS
from cohortscale.report.synth_report import save_figure

#: Visits shown in the figure.
FIGURE_VISITS = 4
#: File name of the figure, next to the report.
FIGURE = "fitting.png"
#: Upper end of the R2* colour scale, s⁻¹.
R2STAR_DISPLAY_MAX = 150.0


def fitting_table(store: str | Path) -> pd.DataFrame:
    """One row per (visit, field): status, dynamics combined, the fat spectrum's calibrated offset (ppm),
    median PDFF (%) and R2* (s⁻¹) over pixels fitted without a flag, share of flagged pixels and the
    stage's message."""
    root = open_store(store, mode="r")
    latest = Ledger(store).read("fitting").set_index("participant")
    records = []
    for key, row in participant_rows(root).items():
        if key not in latest.index:
            continue
        for f in sorted(layout_of(root).multiecho):
            quality = np.asarray(root[f"{MAPS}/{f}/quality"][row])
            good = quality == 0
            records.append(
                {
                    "participant": key,
                    "field": f,
                    "status": latest.at[key, "status"],
                    "dynamics": int(root[f"{MAPS}/{f}/dynamics"][row]),
                    "fat shift ppm": float(root[f"{MAPS}/{f}/fat_shift_ppm"][row]),
                    "PDFF % (median)": 100 * float(np.median(root[f"{MAPS}/{f}/pdff"][row][good]))
                    if good.any()
                    else np.nan,
                    "R2* 1/s (median)": float(np.median(root[f"{MAPS}/{f}/r2star"][row][good]))
                    if good.any()
                    else np.nan,
                    "flagged %": 100 * float(np.mean(quality != 0)),
                    "message": latest.at[key, "message"],
                }
            )
    return pd.DataFrame(records)


def fitting_figure(store: str | Path, path: Path, visits: list[tuple[str, int]]) -> None:
    """PDFF and R2* maps of ``visits`` = [(key, field)] (radiological view: patient right on the left);
    pixels flagged LOW_SIGNAL are blank."""
    root = open_store(store, mode="r")
    rows = participant_rows(root)
    fig, axes = plt.subplots(2, len(visits), figsize=(3.2 * len(visits), 6), squeeze=False)
    for k, (key, f) in enumerate(visits):
        background = (np.asarray(root[f"{MAPS}/{f}/quality"][rows[key]]) & Quality.LOW_SIGNAL) > 0
        for i, (name, scale, cmap, vmax) in enumerate(
            (("pdff", 100, "magma", 60.0), ("r2star", 1, "viridis", R2STAR_DISPLAY_MAX))
        ):
            values = np.where(background, np.nan, scale * np.asarray(root[f"{MAPS}/{f}/{name}"][rows[key]]))
            image = axes[i, k].imshow(values, cmap=cmap, vmin=0, vmax=vmax, interpolation="nearest")
            axes[i, k].set_title(f"{key} / {f}\n{'PDFF %' if name == 'pdff' else 'R2* 1/s'}", fontsize=9)
            axes[i, k].axis("off")
            fig.colorbar(image, ax=axes[i, k], fraction=0.046)
    save_figure(fig, "Fitted multi-echo slices read back from the cohort store", path, top=0.94)


def fitting_html(store: str | Path, out: Path, report: StageReport) -> str:
    """The report section: what the stage did, a figure of fitted slices and the table."""
    table = fitting_table(store)
    parts = [f"<p>{report}</p>"]
    fitted = table[table["dynamics"] > 0] if len(table) else table
    if len(fitted):
        shown = list(zip(fitted["participant"], fitted["field"], strict=True))[:FIGURE_VISITS]
        fitting_figure(store, Path(out) / FIGURE, shown)
        parts.append(f'<img src="{FIGURE}" width="100%">')
    parts.append(
        "<p>Medians over the pixels fitted without a quality flag (the whole slice, not a tissue ROI). "
        "Dynamics: repeated acquisitions combined before the fit (0: not fitted).</p>"
    )
    parts.append(table.to_html(index=False, float_format=lambda v: f"{v:.2f}"))
    return "\n".join(parts)
