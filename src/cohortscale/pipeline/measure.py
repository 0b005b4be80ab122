"""The measure stage: each visit's labels, fused Dixon and fitted maps → one row of image-derived phenotypes.

Per visit (on a worker): read the label volume of one label set (``labels/<name>``, a model's or a user's),
the fused fat fraction and signal, and every fitted multi-echo slice (``maps/<field>/*``); compute

- muscle, fat-depot and organ volumes, thigh ratios and femoral-marrow FF on the fused grid
  (:func:`cohortscale.ops.measure.body_measures`);
- per multi-echo field, vertebral bone-marrow PDFF, R2*, iron and Dixon FF in the 2D ROI the 3D labels
  project to, and liver PDFF and R2* (:func:`cohortscale.ops.measure.marrow_measures`,
  :func:`~cohortscale.ops.measure.liver_measures`), each with a QC reason when excluded;

and write them as ``<store>/measures/<key>.json`` (atomically: written aside, then renamed), one file
per visit, so workers never share a file and a repeated task rewrites the same row. The reduction
(:mod:`cohortscale.pipeline.reduce`) gathers the rows into the store's ``idp/*`` arrays and the table.

The stage runs for visits segmented with the label set (or fused, for a set imported with
:mod:`cohortscale.pipeline.labels`), whether or not their fit succeeded (a visit
without a multi-echo slice still has volumes; its slice measures carry the QC reason
``no_multiecho_slice``), again when segmentation or fitting re-ran, and all again when its settings change.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from cohortscale.config import config_to_dict
from cohortscale.io.store import layout_of, open_store
from cohortscale.ops.ideal import Quality
from cohortscale.ops.measure import (
    BODY_GROUPS,
    SliceMaps,
    body_mask,
    body_measures,
    liver_measures,
    marrow_measures,
)
from cohortscale.ops.vertebrae import foot_to_head_from_affine
from cohortscale.pipeline.cluster import ClusterConfig
from cohortscale.pipeline.engine import (
    EngineConfig,
    Outcome,
    StageReport,
    Visit,
    ready_visits,
    requeue_done,
    run_on_cluster,
    store_visits,
)
from cohortscale.pipeline.fitting import MAPS, NOT_FITTED
from cohortscale.pipeline.labels import IMPORTED
from cohortscale.pipeline.segmentation import LABELS

STAGE = "measure"
#: Directory of the per-visit rows inside the store.
MEASURES_DIR = "measures"
#: Store attribute holding the settings that produced the rows.
SETTINGS_ATTR = "measure_config"


@dataclass(frozen=True)
class MeasureConfig:
    """Settings of the measure stage.

    Attributes
    ----------
    labels : str, optional
        Label set to measure (``labels/<name>`` in the store). Default: the only one the store holds;
        ``cohortscale run`` uses the segmentation model's.
    min_roi_area_mm2 : float
        Bone-marrow ROIs smaller than this are excluded (``roi_too_small``): UK Biobank's rule of 64
        voxels of the 20254 slice (1.72 mm pixels) is 190 mm², whatever the pixel size.
    excluded_quality : int
        Fit quality flags (:class:`cohortscale.ops.ideal.Quality`, OR-ed) that keep a pixel out of ROI
        statistics. Default ``LOW_SIGNAL``: noise-only pixels; unfitted pixels are always out.
    body_signal_fraction : float
        Voxels whose fused water + fat exceeds this share of the 99th percentile are the body (which
        separates the trunk from the arms for ASAT).
    """

    labels: str | None = None
    min_roi_area_mm2: float = 190.0
    excluded_quality: int = int(Quality.LOW_SIGNAL)
    body_signal_fraction: float = 0.1

    def __post_init__(self) -> None:
        if self.min_roi_area_mm2 < 0:
            raise ValueError(f"measure.min_roi_area_mm2 must be ≥ 0, got {self.min_roi_area_mm2}")
        if not 0 < self.body_signal_fraction < 1:
            raise ValueError(
                f"measure.body_signal_fraction must be in (0, 1), got {self.body_signal_fraction}"
            )


def rows_dir(store: str | Path) -> Path:
    """Where the per-visit rows live."""
    return Path(store) / MEASURES_DIR


def row_path(store: str | Path, key: str) -> Path:
    """The row file of visit ``key``."""
    return rows_dir(store) / f"{key}.json"


def _write_row(store: str | Path, key: str, row: dict[str, Any]) -> None:
    """Write a visit's row atomically (a reader never sees half a file; a rerun replaces it whole)."""
    directory = rows_dir(store)
    directory.mkdir(exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{key}.", suffix=".tmp", dir=directory)
    with os.fdopen(handle, "w") as stream:
        json.dump(row, stream, allow_nan=True)
    os.replace(tmp, row_path(store, key))


def read_slice_maps(root: zarr.Group, row: int, field_id: int, excluded_quality: int) -> SliceMaps | None:
    """The fitted maps of ``field_id`` in store row ``row``; None when the visit has none."""
    group = f"{MAPS}/{field_id}"
    if f"{group}/affine" not in root:
        return None
    affine = np.asarray(root[f"{group}/affine"][row])
    if not np.isfinite(affine).all():
        return None
    quality = np.asarray(root[f"{group}/quality"][row])
    usable = (quality != NOT_FITTED) & ((quality & excluded_quality) == 0)
    maps = {name: np.asarray(root[f"{group}/{name}"][row]) for name in ("pdff", "r2star", "iron")}
    return SliceMaps(**maps, usable=usable, affine=affine)


def measure_visit(
    root: zarr.Group, store: str, visit: Visit, config: MeasureConfig, label_set: str
) -> Outcome:
    """Measure one visit, write its row and return its outcome."""
    start = time.perf_counter()
    row = visit.index
    array = root[f"{LABELS}/{label_set}"]
    labels = np.asarray(array[row])
    affine = np.asarray(root["dixon/fused/affine"][row])
    if not np.isfinite(affine).all():
        message = f"participant {visit.key}: no fused volume in the store to measure"
        return Outcome(visit.key, "quarantined", "not_fused", message, time.perf_counter() - start)
    if not labels.any():
        message = f"participant {visit.key}: labels/{label_set} is empty (not segmented)"
        return Outcome(visit.key, "quarantined", "not_segmented", message, time.perf_counter() - start)
    names = {int(i): str(n) for i, n in array.attrs["labels"].items()}
    ff = np.asarray(root["dixon/fused/ff"][row])
    signal = np.asarray(root["dixon/fused/water"][row], dtype=np.float32) + np.asarray(
        root["dixon/fused/fat"][row], dtype=np.float32
    )
    body = body_mask(signal, config.body_signal_fraction)
    idps, reasons = body_measures(labels, affine, names, ff, body, foot_to_head_from_affine(affine))
    # Every group gets a QC entry ("" when measured), so the table has the same columns for any cohort.
    qc = {**dict.fromkeys(BODY_GROUPS, ""), **reasons}
    for field_id in sorted(layout_of(root).multiecho):
        maps = read_slice_maps(root, row, field_id, config.excluded_quality)
        suffix = f"_{field_id}"
        marrow, marrow_reason = marrow_measures(maps, labels, affine, names, ff, config.min_roi_area_mm2)
        liver, liver_reason = liver_measures(maps, labels, affine, names)
        idps.update({f"{k}{suffix}": v for k, v in {**marrow, **liver}.items()})
        qc.update({f"vbm{suffix}": marrow_reason, f"liver{suffix}": liver_reason})
    _write_row(store, visit.key, {"participant": visit.key, "labels": label_set, "idps": idps, "qc": qc})
    excluded = ", ".join(f"{group} ({reason})" for group, reason in sorted(qc.items()) if reason)
    message = f"participant {visit.key}: measured {label_set}" + (
        f"; excluded: {excluded}" if excluded else ""
    )
    return Outcome(visit.key, "done", "", message, time.perf_counter() - start)


@dataclass(frozen=True)
class MeasureStage:
    """The measure stage for :func:`cohortscale.pipeline.engine.run_stage`."""

    store: str
    config: MeasureConfig
    label_set: str
    name: str = STAGE
    gpu: bool = False

    def process(self, visits: list[Visit]) -> list[Outcome]:
        root = open_store(self.store, mode="r")
        return [measure_visit(root, self.store, v, self.config, self.label_set) for v in visits]


def resolve_label_set(root: zarr.Group, config: MeasureConfig) -> str:
    """The label set to measure: the configured one, else the store's only one.

    Raises
    ------
    ValueError
        The configured set is not in the store, or the store holds none or several and none is configured.
    """
    held = sorted(name for name, _ in root[LABELS].arrays()) if LABELS in root else []
    if config.labels is not None:
        if config.labels not in held:
            raise ValueError(f"labels/{config.labels} is not in the store (it holds {held or 'no labels'})")
        return config.labels
    if len(held) != 1:
        raise ValueError(
            f"the store holds label sets {held or 'none'}; choose one with --set measure.labels=NAME"
            if held
            else "the store holds no labels yet: run cohortscale segment first"
        )
    return held[0]


def prepare_measure(store: str | Path, config: MeasureConfig) -> tuple[MeasureStage, list[Visit]]:
    """The stage and the visits ready for it: segmented with the label set, fitted or not.

    Changed settings (or another label set) measure every visit again.
    """
    root = open_store(store)
    label_set = resolve_label_set(root, config)
    settings = {**config_to_dict(config), "labels": label_set}
    previous = root.attrs.get(SETTINGS_ATTR)
    if previous is not None and previous != settings:
        requeue_done(
            store, STAGE, "config_changed", "participant {}: measure settings changed; measuring again"
        )
    root.attrs[SETTINGS_ATTR] = settings
    visits = store_visits(store)
    # A model's labels are current once segmentation is done; imported ones once the grid exists.
    imported = root[f"{LABELS}/{label_set}"].attrs.get("source") == IMPORTED
    segmented = {v.key for v in ready_visits(STAGE, "fusion" if imported else "segmentation", visits, store)}
    fitted = {v.key for v in ready_visits(STAGE, "fitting", visits, store, optional=True)}
    stage = MeasureStage(str(store), replace(config, labels=label_set), label_set)
    return stage, [v for v in visits if v.key in segmented and v.key in fitted]


def run_measure(
    store: str | Path,
    config: MeasureConfig | None = None,
    engine: EngineConfig | None = None,
    cluster: ClusterConfig | None = None,
) -> StageReport:
    """Measure every segmented visit of ``store`` on a Dask cluster; resumable.

    Parameters
    ----------
    store : path-like
        Cohort store after segmentation (and fitting, for the slice measures).
    config, engine, cluster : optional
        Measure, engine (batching, retries, progress) and cluster settings.

    Returns
    -------
    StageReport
    """
    stage, visits = prepare_measure(store, config or MeasureConfig())
    return run_on_cluster(stage, visits, store, engine, cluster)
