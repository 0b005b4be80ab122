"""The IDP section of the HTML report: who was measured or excluded and why, the table's main columns, and
(for a synthetic cohort) each IDP against the generator's truth."""

from __future__ import annotations

import html
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from cohortscale.pipeline.reduce import IdpTables, describe
from cohortscale.report.synth_report import save_figure

#: File name of the figure, next to the report.
FIGURE = "idps.png"
#: IDPs shown against the truth, in the figure and the error table.
COMPARED = (
    "tmv_cm3",
    "pa_ratio",
    "vat_l",
    "asat_l",
    "liver_volume_l",
    "vbm_pdff_20254",
    "vbm_ff_20254",
    "vbm_r2star_20254",
    "liver_pdff_20254",
)
#: Columns of the excerpt of the table shown in the report.
SHOWN = ("participant", "status", "reason", *COMPARED, "vbm_levels_20254")


def idp_figure(table: pd.DataFrame, truth: pd.DataFrame, figure: Path) -> None:
    """Measured against true IDPs, one panel per IDP of :data:`COMPARED`, with the identity line."""
    names = [n for n in COMPARED if n in table and n in truth]
    columns = 3
    rows = -(-len(names) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3.6 * rows), squeeze=False)
    joined = table.join(truth[names].add_suffix("_truth"), how="inner")
    for ax, name in zip(axes.flat, names, strict=False):
        x, y = joined[f"{name}_truth"].to_numpy(float), joined[name].to_numpy(float)
        ax.scatter(x, y, s=18)
        finite = np.isfinite(x) & np.isfinite(y)
        if finite.any():
            lo, hi = (
                float(min(x[finite].min(), y[finite].min())),
                float(max(x[finite].max(), y[finite].max())),
            )
            ax.plot([lo, hi], [lo, hi], color="grey", linewidth=0.8)
        units = describe(name)[0]
        ax.set_title(name, fontsize=10)
        ax.set_xlabel(f"truth ({units})" if units else "truth")
        ax.set_ylabel("measured")
    for ax in axes.flat[len(names) :]:
        ax.axis("off")
    save_figure(fig, "IDPs measured from the images against the generator's truth", figure, top=0.93)


def error_table(table: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    """Per compared IDP: visits, median and largest absolute error (and relative error for volumes)."""
    rows = []
    for name in COMPARED:
        if name not in table or name not in truth:
            continue
        joined = pd.concat(
            [table[name], truth[name]], axis=1, keys=["measured", "truth"], join="inner"
        ).dropna()
        error = (joined["measured"] - joined["truth"]).abs()
        relative = error / joined["truth"].abs()
        units = describe(name)[0]
        rows.append(
            {
                "IDP": name,
                "units": units,
                "visits": len(joined),
                "median |error|": error.median(),
                "max |error|": error.max(),
                "median |error| %": 100 * relative.median() if units in ("cm3", "L", "1") else np.nan,
            }
        )
    return pd.DataFrame(rows)


def idp_html(tables: IdpTables, out: Path, truth_csv: Path | None = None) -> str:
    """The report section: status counts and reasons, the table's main columns, and (given the truth) the
    measured IDPs against it."""
    table = tables.table
    counts = ", ".join(f"{n} {status}" for status, n in sorted(tables.counts().items()))
    path = html.escape(str(tables.parquet))
    parts = [
        f"<p>{len(table)} visits: {counts}. The whole table is <code>{path}</code> (and "
        f"<code>{tables.csv.name}</code>), keyed by eid and instance, with units and descriptions in the "
        "store's <code>idp/*</code> arrays (<code>cohortscale.pipeline.reduce.idp_dataset</code>).</p>"
    ]
    reasons = table.loc[table["reason"] != "", "reason"].value_counts()
    qc = table.filter(like="qc_")
    missing = [(c[3:], r, n) for c in qc for r, n in qc[c][qc[c] != ""].value_counts().items()]
    if len(reasons) or missing:
        items = [f"<li>excluded: {html.escape(r)} ({n})</li>" for r, n in reasons.items()]
        items += [f"<li>{g} measures missing: {html.escape(r)} ({n})</li>" for g, r, n in missing]
        parts.append("<ul>" + "".join(items) + "</ul>")
    shown = [c for c in SHOWN if c in table]
    parts.append(table[shown].reset_index().to_html(index=False, float_format=lambda v: f"{v:.3g}"))
    if truth_csv is not None and truth_csv.exists():
        truth = pd.read_csv(truth_csv).set_index(["eid", "instance"])
        measured = table[table["status"] == "measured"]
        idp_figure(measured, truth, Path(out) / FIGURE)
        parts.append(
            "<p>Against the generator's truth (volumes from the packaged model's labels on the quarter-scale "
            "demo grid: its segmentation and the coarse grid account for most of the volume error).</p>"
        )
        parts.append(f'<img src="{FIGURE}" width="100%">')
        parts.append(error_table(measured, truth).to_html(index=False, float_format=lambda v: f"{v:.3g}"))
    return "\n".join(parts)
