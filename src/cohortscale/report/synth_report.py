"""An HTML page describing a synthetic cohort: what was generated, how it compares with the studies it
imitates, and pictures read back from the DICOM zips and the truth."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import zarr

from cohortscale.io.dicom import read_zip_series
from cohortscale.protocols import DIXON_FIELD
from cohortscale.synth.population import PUBLISHED_MARGINALS


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


def _coronal_figure(out: Path, eid: int, instance: int, path: Path) -> None:
    """Water images of the six stations read back from the Dixon zip, and the truth on the fused grid."""
    series = read_zip_series(out / "bulk" / f"{eid}_{DIXON_FIELD}_{instance}_0.zip")
    water = [s for s in series if s.description.endswith("_W")]
    truth = zarr.open_group(str(out / "truth" / f"{eid}_{instance}" / "maps.zarr"), mode="r")
    fused = truth["fused"]
    fig, axes = plt.subplots(1, 4, figsize=(14, 7))
    z_extent = []
    for s in water:
        mid = s.pixels.shape[1] // 2
        z0 = s.affine[2, 3]
        z1 = z0 + s.affine[2, 2] * (s.pixels.shape[0] - 1)
        width = s.pixels.shape[2] * s.affine[0, 0]
        x0 = s.affine[0, 3]
        axes[0].imshow(
            s.pixels[::-1, mid, :],
            cmap="gray",
            extent=(x0, x0 + width, min(z0, z1), max(z0, z1)),
            alpha=0.7,
        )
        z_extent += [z0, z1]
    axes[0].set_xlim(-250, 250)
    axes[0].set_ylim(min(z_extent) - 10, max(z_extent) + 10)
    axes[0].set_title("DICOM water, 6 stations\n(mid-coronal, patient mm)")
    mid = fused["labels"].shape[1] // 2
    for ax, name, cmap in zip(axes[1:], ("water", "ff", "labels"), ("gray", "magma", "tab20"), strict=True):
        ax.imshow(np.asarray(fused[name][:, mid, :]), cmap=cmap, aspect="auto", interpolation="nearest")
        ax.set_title(f"truth: {name} (fused grid)")
    for ax in axes:
        ax.set_xticks([])
    fig.suptitle(f"participant {eid}, instance {instance}")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


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


def write_synth_report(out: Path) -> Path:
    """Write ``out/report.html`` (and its PNG figures) for the cohort in ``out``; return its path."""
    out = Path(out)
    population = pd.read_csv(out / "truth" / "population.csv")
    idps = pd.read_csv(out / "truth" / "idps.csv")
    anomalies = pd.read_csv(out / "truth" / "anomalies.csv")
    marginals = marginals_table(population)
    parts = [
        "<h1>cohortscale synthetic cohort</h1>",
        f"<p>{len(population)} participants, {len(idps)} imaging visits. Files: <code>bulk/</code> "
        "(UK Biobank-style zips), <code>phenotypes.csv</code> (ukbconv), <code>truth/</code>.</p>",
        "<h2>Phenotypes against the published cohorts (STUDIES.md §1–2)</h2>",
        marginals.to_html(index=False, float_format=lambda v: f"{v:.2f}"),
        "<h2>Injected anomalies</h2>",
        anomalies.to_html(index=False) if len(anomalies) else "<p>none</p>",
        "<h2>True image-derived phenotypes</h2>",
        idps.to_html(index=False, float_format=lambda v: f"{v:.2f}"),
    ]
    if "source" in idps and (idps["source"] == "anatomy").any():
        broken = set(anomalies.loc[anomalies["anomaly"] == "corrupt_zip", "eid"])
        first = idps.loc[~idps["eid"].isin(broken)].iloc[0]
        eid, instance = int(first["eid"]), int(first["instance"])
        _coronal_figure(out, eid, instance, out / "coronal.png")
        _multiecho_figure(out, eid, instance, out / "multiecho.png")
        parts[2:2] = ['<img src="coronal.png" width="100%">', '<img src="multiecho.png" width="100%">']
    page = "<!doctype html><meta charset='utf-8'><title>cohortscale synthetic cohort</title>"
    page += "<style>body{font-family:sans-serif;max-width:1200px;margin:auto}table{font-size:80%}</style>"
    page += "\n".join(parts)
    path = out / "report.html"
    path.write_text(page)
    return path
