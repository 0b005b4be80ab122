"""An HTML page describing a synthetic cohort: what was generated, how it compares with the studies it
imitates, and pictures read back from the DICOM zips and the truth."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import zarr

from cohortscale.io.dicom import read_zip_series
from cohortscale.protocols import DIXON_FIELD
from cohortscale.synth.population import PUBLISHED_MARGINALS, simulate_population

#: Participants simulated for the table of marginals.
MARGINALS_N = 50_000
#: IDPs shown in the report's table.
IDP_COLUMNS = (
    "eid",
    "instance",
    "tmv_cm3",
    "pa_ratio",
    "thigh_asymmetry",
    "vat_l",
    "asat_l",
    "slice_level",
    "vbm_roi_voxels_20254",
    "vbm_pdff_20254",
    "vbm_ff_20254",
    "vbm_iron_20254",
    "liver_pdff_20254",
    "vbm_pdff",
    "vbm_ff",
    "vbm_iron",
)


def marginals_table(population: pd.DataFrame) -> pd.DataFrame:
    """Mean and SD by sex of each variable of ``PUBLISHED_MARGINALS``, beside the published values."""
    rows = []
    for var, published in PUBLISHED_MARGINALS.items():
        for sex, label in ((0, "women"), (1, "men")):
            values = population.loc[population["sex"] == sex, var]
            mean, sd = published[sex]
            rows.append(
                {
                    "variable": var,
                    "sex": label,
                    "n": int(values.notna().sum()),
                    "mean": values.mean(),
                    "sd": values.std(),
                    "published mean": mean,
                    "published sd": sd,
                }
            )
    return pd.DataFrame(rows)


def coronal_extent(affine: np.ndarray, shape_zyx: tuple[int, ...]) -> tuple[float, float, float, float]:
    """Patient-mm extent (left, right, bottom, top) of a coronal section of an axial volume."""
    n_slices, _, n_cols = shape_zyx
    x0, dx, z0, dz = affine[0, 3], affine[0, 0], affine[2, 3], affine[2, 2]
    xs = (x0 - dx / 2, x0 + dx * (n_cols - 0.5))
    zs = (z0 - dz / 2, z0 + dz * (n_slices - 0.5))
    return (min(xs), max(xs), min(zs), max(zs))


def label_coronal_axes(axes) -> None:
    """Axis labels of a row of coronal sections placed in patient millimetres."""
    for ax in axes:
        ax.set_xlabel("x (mm, patient left →)")
    axes[0].set_ylabel("z (mm, superior ↑)")


def save_figure(fig, title: str, path: Path, top: float = 0.95) -> None:
    """Title a figure, lay it out below the title (``top``: share of the height), save it and close it."""
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 1, top))
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _coronal_figure(out: Path, eid: int, instance: int, path: Path) -> None:
    """Water images of the six stations read back from the Dixon zip, and the truth on the fused grid,
    all placed in patient millimetres (superior up, patient right on the left)."""
    series = read_zip_series(out / "bulk" / f"{eid}_{DIXON_FIELD}_{instance}_0.zip")
    water = [s for s in series if s.description.endswith("_W")]
    fused = zarr.open_group(str(out / "truth" / f"{eid}_{instance}" / "maps.zarr"), mode="r")["fused"]
    fused_affine = np.asarray(fused.attrs["affine"])
    fig, axes = plt.subplots(1, 4, figsize=(15, 8), sharey=True)
    for s in water:  # read_zip_series stacks slices feet→head
        section = s.pixels[:, s.pixels.shape[1] // 2, :]
        axes[0].imshow(section, cmap="gray", origin="lower", extent=coronal_extent(s.affine, s.pixels.shape))
    axes[0].set_title("DICOM water, 6 stations")
    row = fused["labels"].shape[1] // 2
    for ax, name, cmap in zip(axes[1:], ("water", "ff", "labels"), ("gray", "magma", "tab20"), strict=True):
        section = np.asarray(fused[name][:, row, :])  # fused slices run head→feet
        ax.imshow(
            section,
            cmap=cmap,
            interpolation="nearest",
            extent=coronal_extent(fused_affine, fused[name].shape),
        )
        ax.set_title(f"truth: {name} (fused grid)")
    for ax in axes:
        ax.set_xlim(-250, 250)
    label_coronal_axes(axes)
    save_figure(fig, f"participant {eid}, instance {instance}: mid-coronal sections", path)


def _multiecho_figure(out: Path, eid: int, instance: int, path: Path) -> None:
    truth = zarr.open_group(str(out / "truth" / f"{eid}_{instance}" / "maps.zarr"), mode="r")
    fields = sorted(truth["multiecho"].group_keys())
    group = truth["multiecho"][fields[0]]
    fig, axes = plt.subplots(1, 4, figsize=(16, 4.5))
    for ax, (name, cmap, unit) in zip(
        axes,
        (
            ("pdff", "magma", "fraction"),
            ("r2star", "viridis", "s⁻¹"),
            ("b0", "coolwarm", "Hz"),
            ("labels", "tab20", ""),
        ),
        strict=True,
    ):
        im = ax.imshow(np.asarray(group[name]), cmap=cmap, interpolation="nearest")
        ax.set_title(f"{name} {unit}")
        ax.set_axis_off()
        fig.colorbar(im, ax=ax, shrink=0.7)
    fig.suptitle(f"multi-echo slice, field {fields[0]}, level {group.attrs['slice_level']} (truth)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def write_synth_report(out: Path, sections: Mapping[str, str] | None = None) -> Path:
    """Write ``out/report.html`` (and its PNG figures) for the cohort in ``out``; return its path.

    ``sections`` maps a heading to ready HTML (e.g. what the pipeline did with the cohort), placed first.
    """
    out = Path(out)
    population = pd.read_csv(out / "truth" / "population.csv")
    idps = pd.read_csv(out / "truth" / "idps.csv")
    anomalies = pd.read_csv(out / "truth" / "anomalies.csv")
    # Eight participants say little about marginals: compare the generative model at a cohort's size.
    config = json.loads((out / "truth" / "config.json").read_text())["config"]
    marginals = marginals_table(simulate_population(MARGINALS_N, config["seed"]))
    parts = [
        "<h1>cohortscale synthetic cohort</h1>",
        f"<p>{len(population)} participants, {len(idps)} imaging visits. Files: <code>bulk/</code> "
        "(UK Biobank-style zips), <code>phenotypes.csv</code> (ukbconv), <code>truth/</code>.</p>",
        "<h2>Phenotypes against the published cohorts (STUDIES.md §1–2)</h2>",
        f"<p>The population model this cohort is drawn from, at n = {MARGINALS_N:,}.</p>",
        marginals.to_html(index=False, float_format=lambda v: f"{v:.2f}"),
        "<h2>Injected anomalies</h2>",
        anomalies.to_html(index=False) if len(anomalies) else "<p>none</p>",
        "<h2>True image-derived phenotypes</h2>",
        idps[[c for c in IDP_COLUMNS if c in idps]].to_html(index=False, float_format=lambda v: f"{v:.2f}"),
        "<p>All columns: <code>truth/idps.csv</code>.</p>",
    ]
    if "source" in idps and (idps["source"] == "anatomy").any():
        # Show a visit whose zips are intact and which has its multi-echo slice.
        unusable = anomalies["anomaly"].isin(["corrupt_zip", "missing_multiecho"])
        broken = set(zip(anomalies.loc[unusable, "eid"], anomalies.loc[unusable, "instance"], strict=True))
        readable = idps.loc[
            [(e, i) not in broken for e, i in zip(idps["eid"], idps["instance"], strict=True)]
        ]
        if len(readable):
            eid, instance = int(readable["eid"].iloc[0]), int(readable["instance"].iloc[0])
            _coronal_figure(out, eid, instance, out / "coronal.png")
            _multiecho_figure(out, eid, instance, out / "multiecho.png")
            parts[2:2] = ['<img src="coronal.png" width="100%">', '<img src="multiecho.png" width="100%">']
    page = "<!doctype html><meta charset='utf-8'><title>cohortscale synthetic cohort</title>"
    page += "<style>body{font-family:sans-serif;max-width:1200px;margin:auto}table{font-size:80%}</style>"
    for heading, body in reversed(list((sections or {}).items())):
        parts[2:2] = [f"<h2>{heading}</h2>", body]
    page += "\n".join(parts)
    path = out / "report.html"
    path.write_text(page)
    return path
