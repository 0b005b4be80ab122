"""Reduction: the measure stage's per-visit rows → the IDP table, the store's ``idp/*`` arrays (an
:class:`xarray.Dataset`, participant × measure, with units and descriptions) and parquet / CSV files.

Every visit of the store gets a row, so that a user joining the table with phenotypes sees who is missing
and why: ``status`` is ``measured``, ``excluded`` (with ``reason``, the first cause, e.g.
``ingest: corrupt_zip``) or ``pending``; per-measure QC exclusions are the ``qc_<group>`` columns
(``qc_vbm_20254 = roi_too_small``). The reduction runs on the client: it reads one small file per visit
and writes each ``idp/*`` array whole, in one chunk (a single writer; nothing else writes there).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
import zarr

from cohortscale.io.ledger import Ledger
from cohortscale.io.store import PARTICIPANT, open_store
from cohortscale.pipeline.measure import STAGE, row_path

#: Where the IDP arrays live in the store.
IDP = "idp"
#: Stages a visit's measures depend on, in pipeline order: the first one that quarantined a visit is its
#: exclusion reason (fitting is not among them: a visit without a slice to fit still has its volumes).
STAGES = ("ingest", "fusion", "segmentation", STAGE)
#: Key columns of the table, then the visit's status.
KEYS = ("eid", "instance", PARTICIPANT)
STATUS_COLUMNS = ("status", "reason")
#: Units and description of each IDP, by name pattern (``{f}``: the multi-echo field id).
CATALOGUE: tuple[tuple[str, str, str], ...] = (
    (
        r"thigh_(anterior|posterior|medial)_(left|right)_cm3",
        "cm3",
        "volume of the {1} thigh muscle compartment, {2} leg",
    ),
    (r"thigh_muscle_(left|right)_cm3", "cm3", "thigh muscle volume (anterior + posterior + medial), {1} leg"),
    (r"tmv_cm3", "cm3", "total thigh muscle volume, both legs"),
    (r"pa_ratio", "1", "posterior / anterior thigh muscle volume, both legs"),
    (r"thigh_asymmetry", "1", "(left − right) / mean thigh muscle volume"),
    (r"vat_l", "L", "visceral adipose tissue volume"),
    (r"asat_l", "L", "abdominal subcutaneous adipose tissue, femoral-head top to T9 top, arms excluded"),
    (r"liver_volume_l", "L", "liver volume"),
    (r"femur_ff_(left|right)", "%", "median Dixon fat fraction of the {1} femur (marrow)"),
    (r"vbm_roi_voxels_(\d+)", "pixels", "vertebral bone-marrow ROI in the field-{1} slice, pixels"),
    (r"vbm_pdff_(\d+)", "%", "median PDFF of the vertebral bone-marrow ROI, field {1}"),
    (r"vbm_ff_(\d+)", "%", "median Dixon fat fraction at the vertebral bone-marrow ROI of field {1}"),
    (r"vbm_r2star_(\d+)", "1/s", "median R2* of the vertebral bone-marrow ROI, field {1}"),
    (
        r"vbm_iron_(\d+)",
        "mg/g",
        "median iron (0.202 + 0.0254·R2*) of the vertebral bone-marrow ROI, field {1}",
    ),
    (r"vbm_levels_(\d+)", "", "vertebral levels the field-{1} slice crosses"),
    (r"liver_roi_voxels_(\d+)", "pixels", "liver ROI in the field-{1} slice, pixels"),
    (r"liver_pdff_(\d+)", "%", "median liver PDFF, field {1}"),
    (r"liver_r2star_(\d+)", "1/s", "median liver R2*, field {1}"),
    (r"qc_(.+)", "", "why the {1} measures are missing (empty when measured)"),
    (r"status", "", "measured, excluded or pending"),
    (r"reason", "", "why the visit is excluded: the first stage that quarantined it, and its reason"),
)


def describe(name: str) -> tuple[str, str]:
    """Units and description of the table column ``name`` (``("", "")`` when not catalogued)."""
    for pattern, units, description in CATALOGUE:
        match = re.fullmatch(pattern, name)
        if match:
            return units, description.format(*[None, *match.groups()])
    return "", ""


@dataclass(frozen=True)
class IdpTables:
    """What a reduction wrote.

    Attributes
    ----------
    table : pandas.DataFrame
        One row per visit, indexed by (eid, instance).
    parquet, csv : Path
        The table's files.
    """

    table: pd.DataFrame
    parquet: Path
    csv: Path

    def counts(self) -> dict[str, int]:
        """Visits per status."""
        return {str(k): int(v) for k, v in self.table["status"].value_counts().items()}


def _latest(store: str | Path) -> dict[str, pd.DataFrame]:
    ledger = Ledger(store)
    return {stage: ledger.read(stage).set_index(PARTICIPANT) for stage in STAGES}


def _first_cause(key: str, records: dict[str, pd.DataFrame]) -> str:
    """``"<stage>: <reason>"`` of the first stage that quarantined (or failed) visit ``key``."""
    for stage in STAGES:
        frame = records[stage]
        if key in frame.index and frame.at[key, "status"] != "done":
            return f"{stage}: {frame.at[key, 'reason']}"
    return ""


def collect_table(store: str | Path) -> pd.DataFrame:
    """The IDP table of every visit in ``store``: keys, status, reason, IDPs and QC columns."""
    root = open_store(store, mode="r")
    keys = [str(k) for k in root[PARTICIPANT][:]]
    eids, instances = np.asarray(root["eid"][:]), np.asarray(root["instance"][:])
    records = _latest(store)
    measured = records[STAGE]
    rows = []
    for key, eid, instance in zip(keys, eids, instances, strict=True):
        row: dict[str, object] = {"eid": int(eid), "instance": int(instance), PARTICIPANT: key}
        status = measured.at[key, "status"] if key in measured.index else "pending"
        path = row_path(store, key)
        if status == "done" and path.exists():
            saved = json.loads(path.read_text())
            row.update(status="measured", reason="")
            row.update(saved["idps"])
            row.update({f"qc_{group}": reason for group, reason in saved["qc"].items()})
        elif status in ("quarantined", "failed"):
            row.update(
                status="excluded" if status == "quarantined" else "failed", reason=_first_cause(key, records)
            )
        else:
            row.update(status="pending", reason="")
        rows.append(row)
    table = pd.DataFrame(rows, columns=None if rows else [*KEYS, *STATUS_COLUMNS])
    qc = sorted(c for c in table.columns if c.startswith("qc_"))
    for column in qc:
        table[column] = table[column].fillna("")
    idps = [c for c in table.columns if c not in (*KEYS, *STATUS_COLUMNS, *qc)]
    table = table[[*KEYS, *STATUS_COLUMNS, *idps, *qc]]
    return table.sort_values(["eid", "instance"]).set_index(["eid", "instance"])


def write_idp_arrays(root: zarr.Group, table: pd.DataFrame) -> None:
    """Write every column of ``table`` (in store row order) as ``idp/<column>``, with units and description.

    Numbers are float64 with NaN for missing; text columns are strings. The arrays are rewritten whole
    by each reduction.
    """
    order = pd.Index([str(k) for k in root[PARTICIPANT][:]])
    frame = table.reset_index().set_index(PARTICIPANT).reindex(order)
    n = len(order)
    for column in frame.columns:
        if column in ("eid", "instance"):
            continue
        values = frame[column]
        numeric = pd.api.types.is_numeric_dtype(values)
        data = (
            values.to_numpy(dtype=np.float64)
            if numeric
            else values.fillna("").astype(str).to_numpy(dtype=str)
        )
        units, description = describe(column)
        array = root.create_array(
            f"{IDP}/{column}",
            shape=(n,),
            chunks=(max(n, 1),),
            dtype=np.float64 if numeric else str,
            fill_value=np.nan if numeric else "",
            dimension_names=(PARTICIPANT,),
            overwrite=True,
        )
        array[:] = data
        array.attrs.update({"units": units, "description": description})


def idp_dataset(store: str | Path) -> xr.Dataset:
    """The store's IDPs as an :class:`xarray.Dataset`: one variable per measure over ``participant``, with
    ``eid`` and ``instance`` coordinates and each variable's units and description as attributes."""
    root = open_store(store, mode="r")
    if IDP not in root:
        raise ValueError(f"{store} has no IDPs yet: run cohortscale measure (or cohortscale run) first")
    coords = {
        PARTICIPANT: np.array([str(k) for k in root[PARTICIPANT][:]]),
        "eid": (PARTICIPANT, np.asarray(root["eid"][:])),
        "instance": (PARTICIPANT, np.asarray(root["instance"][:])),
    }
    variables = {
        name: xr.DataArray(np.asarray(array[:]), dims=(PARTICIPANT,), attrs=dict(array.attrs))
        for name, array in sorted(root[IDP].arrays())
    }
    return xr.Dataset(variables, coords=coords, attrs={"store": str(store)})


def reduce_idps(store: str | Path, out_dir: str | Path | None = None) -> IdpTables:
    """Gather the measure rows of ``store`` into ``idp/*`` and write ``idps.parquet`` and ``idps.csv``.

    Parameters
    ----------
    store : path-like
    out_dir : path-like, optional
        Where the files go; default the store's parent directory.

    Returns
    -------
    IdpTables
    """
    table = collect_table(store)
    write_idp_arrays(open_store(store), table)
    out = Path(out_dir) if out_dir is not None else Path(store).resolve().parent
    out.mkdir(parents=True, exist_ok=True)
    parquet, csv = out / "idps.parquet", out / "idps.csv"
    table.to_parquet(parquet)
    table.to_csv(csv)
    return IdpTables(table, parquet, csv)
