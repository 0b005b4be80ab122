"""The segmentation section of the HTML report: label overlays on fused volumes, and volumes per visit."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from cohortscale.io.ledger import Ledger
from cohortscale.io.store import open_store, participant_rows
from cohortscale.ops.measure import label_volumes_cm3
from cohortscale.pipeline.engine import StageReport
from cohortscale.pipeline.fusion import FUSED
from cohortscale.report.synth_report import coronal_extent, label_coronal_axes, save_figure
from cohortscale.synth.labels import VERTEBRA_IDS

#: Visits shown in the figure.
FIGURE_VISITS = 4
#: File name of the figure, next to the report.
FIGURE = "segmentation.png"
#: Colour map of the labels (ids beyond its colours repeat them).
PALETTE, PALETTE_COLOURS = "tab20", 20
#: Opacity of the label colours over the water image.
OVERLAY_ALPHA = 0.55


def _label_names(root, path: str) -> dict[int, str]:
    return {int(k): v for k, v in root[path].attrs["labels"].items()}


def segmentation_table(store: str | Path, path: str) -> pd.DataFrame:
    """One row per visit: status, volume (cm³) of every non-background label, vertebral bodies named, and
    the stage's message."""
    root = open_store(store, mode="r")
    latest = Ledger(store).read("segmentation").set_index("participant")
    names = _label_names(root, path)
    records = []
    for key, row in participant_rows(root).items():
        if key not in latest.index:
            continue
        labels = np.asarray(root[path][row])
        affine = np.asarray(root[f"{FUSED}/affine"][row])
        volumes = label_volumes_cm3(labels, affine, names) if np.isfinite(affine).all() else {}
        record: dict[str, object] = {"participant": key, "status": latest.at[key, "status"]}
        for label, name in names.items():
            if label != 0 and label not in VERTEBRA_IDS:
                record[f"{name} cm³"] = volumes.get(name, np.nan)
        record["vertebral levels"] = int(np.isin(VERTEBRA_IDS, labels).sum())
        record["message"] = latest.at[key, "message"]
        records.append(record)
    return pd.DataFrame(records)


def segmentation_figure(store: str | Path, path: str, figure: Path, visits: list[str]) -> None:
    """Coronal sections through the spine of ``visits``: fused water with the labels over it."""
    root = open_store(store, mode="r")
    rows = participant_rows(root)
    colours = plt.get_cmap(PALETTE, PALETTE_COLOURS)
    fig, axes = plt.subplots(1, len(visits), figsize=(4 * len(visits), 7), sharey=True, squeeze=False)
    for ax, key in zip(axes[0], visits, strict=True):
        row = rows[key]
        water = np.asarray(root[f"{FUSED}/water"][row], dtype=np.float32)
        labels = np.asarray(root[path][row])
        spine = np.isin(labels, VERTEBRA_IDS)
        # The coronal plane through the vertebral bodies shows the spine, liver and thighs together.
        plane = int(np.median(np.nonzero(spine)[1])) if spine.any() else labels.shape[1] // 2
        extent = coronal_extent(np.asarray(root[f"{FUSED}/affine"][row]), water.shape)
        ax.imshow(water[:, plane], cmap="gray", extent=extent, interpolation="nearest")
        section = labels[:, plane]
        colour = colours(section % PALETTE_COLOURS)
        colour[..., 3] = np.where(section > 0, OVERLAY_ALPHA, 0.0)
        ax.imshow(colour, extent=extent, interpolation="nearest")
        ax.set_title(f"{key}\n{np.count_nonzero(np.unique(labels))} labels")
    label_coronal_axes(axes[0])
    title = "Labels written by the segmentation stage over fused water (coronal, through the spine)"
    save_figure(fig, title, figure, top=0.94)


def segmentation_html(store: str | Path, out: Path, report: StageReport, path: str) -> str:
    """The report section: what the stage did, a figure of segmented visits and the volumes table."""
    table = segmentation_table(store, path)
    parts = [f"<p>{report}</p>"]
    done = table[table["status"] == "done"] if len(table) else table
    if len(done):
        segmentation_figure(store, path, Path(out) / FIGURE, list(done["participant"][:FIGURE_VISITS]))
        parts.append(f'<img src="{FIGURE}" width="100%">')
    parts.append(
        f"<p>Volumes (cm³) of each label in <code>{path}</code>, and how many vertebral levels (C3–S1) were "
        "named by counting the bodies up from S1.</p>"
    )
    parts.append(table.to_html(index=False, float_format=lambda v: f"{v:.0f}"))
    return "\n".join(parts)
