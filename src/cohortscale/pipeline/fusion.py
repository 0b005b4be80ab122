"""The fusion stage: each visit's six Dixon stations → one neck-to-knee volume per contrast in the store.

Per visit (on a worker): read the stations as ingest stored them (newest of duplicated stations, valid
slice ranges of short stations, absent contrasts recorded as 0 slices), build the participant's grid
(:func:`cohortscale.ops.fusion.neck_to_knee_grid`), fuse with fat–water swap detection
(:func:`cohortscale.ops.fusion.fuse_dixon`) on the GPU when the worker has one, and write
``dixon/fused/*``. Visits run once ingest is done for them, and again when ingest re-ran them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zarr

from cohortscale.backend import device_module, to_numpy
from cohortscale.geometry import Grid
from cohortscale.io.store import ArraySpec, ensure_arrays, layout_of, open_store, participant_rows, reset_row
from cohortscale.ops.fusion import (
    BLENDS,
    FUSED_SHAPE,
    FUSED_SPACING_MM,
    Station,
    fuse_dixon,
    neck_to_knee_grid,
)
from cohortscale.ops.swaps import SEGMENTS
from cohortscale.pipeline.cluster import ClusterConfig
from cohortscale.pipeline.engine import (
    EngineConfig,
    Outcome,
    StageReport,
    Visit,
    placement_settings,
    ready_visits,
    requeue_done,
    run_on_cluster,
    store_visits,
)
from cohortscale.protocols import DIXON_CONTRASTS

#: Where fused volumes live in the store.
FUSED = "dixon/fused"
#: Largest value of the uint16 fused contrasts.
UINT16_MAX = np.iinfo(np.uint16).max


@dataclass(frozen=True)
class FusionConfig:
    """Settings of the fusion stage.

    Attributes
    ----------
    shape : (slices, rows, columns)
        Cohort-wide fused grid shape (UK Biobank: 376 × 174 × 224).
    spacing_mm : (dx, dy, dz)
        Fused voxel size, mm.
    blend : {"average", "linear"}
        Overlap blending (STUDIES.md §2 averages).
    fade_mm : float
        Length of the linear fade, mm.
    trim_slices : int
        Slices dropped at each end of every station (wrap-around ghosts); 0 keeps all.
    swaps : {"off", "detect", "correct"}
        Fat–water swap handling: flags only, or flags and exchange before blending.
    prior_weight, tissue_fraction : float
        Swap detector settings (:func:`cohortscale.ops.swaps.detect_swaps`).
    background_fraction : float
        FF is NaN where fat + water is below this fraction of the participant's 99th percentile.
    device : {"auto", "cpu", "gpu"}
        Where the kernel runs: CuPy on a worker's GPU when available ("auto"), or forced.
    """

    shape: tuple[int, int, int] = FUSED_SHAPE
    spacing_mm: tuple[float, float, float] = FUSED_SPACING_MM
    blend: str = "average"
    fade_mm: float = 40.0
    trim_slices: int = 0
    swaps: str = "detect"
    prior_weight: float = 0.25
    tissue_fraction: float = 0.25
    background_fraction: float = 0.05
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.blend not in BLENDS:
            raise ValueError(f"fusion.blend must be one of {BLENDS}, got {self.blend!r}")
        if self.swaps not in ("off", "detect", "correct"):
            raise ValueError(f"fusion.swaps must be 'off', 'detect' or 'correct', got {self.swaps!r}")
        if self.device not in ("auto", "cpu", "gpu"):
            raise ValueError(f"fusion.device must be 'auto', 'cpu' or 'gpu', got {self.device!r}")
        if self.trim_slices < 0 or min(self.shape) < 1 or min(self.spacing_mm) <= 0:
            raise ValueError("fusion.trim_slices must be ≥ 0, shape ≥ 1 and spacing_mm > 0")

    def arrays(self, stations: int) -> dict[str, ArraySpec]:
        """The stage's output arrays (beyond the participant axis)."""
        dims = ("fused_z", "fused_y", "fused_x")
        specs: dict[str, ArraySpec] = {
            f"{FUSED}/{c}": (self.shape, "uint16", dims, 0) for c in DIXON_CONTRASTS
        }
        specs[f"{FUSED}/ff"] = (self.shape, "float32", dims, np.nan)
        specs[f"{FUSED}/affine"] = ((4, 4), "float64", ("affine_row", "affine_col"), np.nan)
        specs[f"{FUSED}/stations"] = ((stations,), "int8", ("station",), -1)
        specs[f"{FUSED}/swapped"] = ((len(SEGMENTS),), "int8", ("segment",), -1)
        specs[f"{FUSED}/swap_margin"] = ((len(SEGMENTS),), "float32", ("segment",), np.nan)
        return specs


def load_stations(
    root: zarr.Group, row: int, numbers: Sequence[int] | None = None, xp=np
) -> dict[str, dict[int, Station]]:
    """A visit's stations as ingest stored them: contrast → station number → Station.

    ``numbers`` are the store's station numbers (default: from its layout). Contrasts that ingest
    recorded as absent (0 slices) and stations without an affine are left out.
    """
    contrasts: dict[str, dict[int, Station]] = {c: {} for c in DIXON_CONTRASTS}
    for k in numbers if numbers is not None else sorted(layout_of(root).stations):
        affine = np.asarray(root[f"dixon/station{k}/affine"][row])
        if not np.isfinite(affine).all():
            continue
        slices = np.asarray(root[f"dixon/station{k}/slices"][row])
        for ci, contrast in enumerate(DIXON_CONTRASTS):
            first, count = (int(v) for v in slices[ci])
            if count > 0:
                volume = xp.asarray(root[f"dixon/station{k}/{contrast}"][row])
                contrasts[contrast][k] = Station(volume, affine, (first, count))
    return {c: s for c, s in contrasts.items() if s}


def _to_uint16(volume, xp) -> np.ndarray:
    """Rounded and clipped; voxels no station covers (NaN) become 0, the store's fill value."""
    return to_numpy(xp.clip(xp.rint(xp.nan_to_num(volume, nan=0.0)), 0, UINT16_MAX).astype(xp.uint16))


def fuse_visit(root: zarr.Group, visit: Visit, config: FusionConfig, xp=np) -> Outcome:
    """Fuse one visit and write its ``dixon/fused/*`` row; return its outcome."""
    start = time.perf_counter()
    numbers = sorted(layout_of(root).stations)
    stations = load_stations(root, visit.index, numbers, xp)
    if not stations:
        clear_row(root, visit.index, config, len(numbers))
        message = f"participant {visit.key}: no Dixon station in the store to fuse"
        return Outcome(visit.key, "quarantined", "no_dixon_data", message, time.perf_counter() - start)
    everything = [s for by_station in stations.values() for s in by_station.values()]
    grid = neck_to_knee_grid(everything, config.shape, config.spacing_mm)
    fused = fuse_dixon(
        stations,
        grid,
        blend=config.blend,
        fade_mm=config.fade_mm,
        trim_slices=config.trim_slices,
        swaps=config.swaps,
        background_fraction=config.background_fraction,
        prior_weight=config.prior_weight,
        tissue_fraction=config.tissue_fraction,
    )
    row = visit.index
    # Every output is written on every run (fill values for what is absent now), so a visit fused again
    # after losing a series keeps nothing of its earlier fusion.
    for contrast, volume in fused.volumes.items():
        root[f"{FUSED}/{contrast}"][row] = _to_uint16(volume, xp)
    if fused.ff is not None:
        root[f"{FUSED}/ff"][row] = to_numpy(fused.ff)
    written = set(fused.volumes) | ({"ff"} if fused.ff is not None else set())
    clear_row(root, row, config, len(numbers), [c for c in (*DIXON_CONTRASTS, "ff") if c not in written])
    root[f"{FUSED}/affine"][row] = grid.affine
    root[f"{FUSED}/stations"][row] = [sum(k in s for s in stations.values()) for k in numbers]
    swapped = np.full(len(SEGMENTS), -1, dtype="int8")
    margin = np.full(len(SEGMENTS), np.nan, dtype="float32")
    notes = []
    if fused.swaps is not None:
        for name, flag, m in zip(fused.swaps.segments, fused.swaps.swapped, fused.swaps.margin, strict=True):
            if name in SEGMENTS:
                swapped[SEGMENTS.index(name)], margin[SEGMENTS.index(name)] = flag, m
        if fused.swaps.flagged():
            action = "corrected" if config.swaps == "correct" else "flagged"
            notes.append(f"fat–water swap {action} in {', '.join(fused.swaps.flagged())}")
    root[f"{FUSED}/swapped"][row] = swapped
    root[f"{FUSED}/swap_margin"][row] = margin
    absent = [c for c in DIXON_CONTRASTS if c not in stations]
    incomplete = [str(k) for k in numbers if any(k not in s for s in stations.values())]
    if absent:
        notes.append(f"contrasts absent from every station: {', '.join(absent)}")
    if incomplete:
        notes.append(f"stations with absent contrasts: {', '.join(incomplete)}")
    message = f"participant {visit.key}: fused on {'GPU' if xp is not np else 'CPU'}"
    message += f"; {'; '.join(notes)}" if notes else ""
    return Outcome(visit.key, "done", "", message, time.perf_counter() - start)


def clear_row(
    root: zarr.Group, row: int, config: FusionConfig, stations: int, names: Sequence[str] | None = None
) -> None:
    """Reset a visit's fusion outputs ``names`` (e.g. ``"fat"``; default all) to their fill values."""
    specs = config.arrays(stations)
    reset_row(
        root, {p: spec for p, spec in specs.items() if names is None or p.rsplit("/", 1)[1] in names}, row
    )


@dataclass(frozen=True)
class FusionStage:
    """The fusion stage for :func:`cohortscale.pipeline.engine.run_stage`."""

    store: str
    config: FusionConfig = field(default_factory=FusionConfig)
    name: str = "fusion"
    gpu: bool = True

    def process(self, visits: list[Visit]) -> list[Outcome]:
        root = open_store(self.store)
        xp = device_module(self.config.device)
        return [fuse_visit(root, visit, self.config, xp) for visit in visits]


def prepare_fusion(store: str | Path, config: FusionConfig) -> tuple[FusionStage, list[Visit]]:
    """Create the stage's arrays and return the stage and the visits ready for it (ingest done).

    Visits fused with other settings are fused again (a "failed" record, reason ``config_changed``);
    visits ingest has quarantined since they were fused lose their fused rows.
    """
    root = open_store(store)
    numbers = sorted(layout_of(root).stations)
    arrays = config.arrays(len(numbers))
    settings = placement_settings(config)
    previous = root[f"{FUSED}/affine"].attrs.get("fusion_config") if f"{FUSED}/affine" in root else None
    ensure_arrays(root, arrays)
    if previous != settings:
        for path in arrays:
            root[path].attrs["fusion_config"] = settings
        root[f"{FUSED}/swapped"].attrs["segments"] = list(SEGMENTS)
        root[f"{FUSED}/stations"].attrs["stations"] = numbers
    visits = store_visits(store)
    if previous is not None and previous != settings:
        requeue_done(
            store, "fusion", "config_changed", "participant {}: fusion settings changed; fusing again"
        )
    ready = ready_visits("fusion", "ingest", visits, store)
    affines = root[f"{FUSED}/affine"][:]
    ready_keys = {v.key for v in ready}
    for visit in visits:
        if visit.key not in ready_keys and np.isfinite(affines[visit.index]).all():
            clear_row(root, visit.index, config, len(numbers))
    return FusionStage(str(store), config), ready


def run_fusion(
    store: str | Path,
    config: FusionConfig | None = None,
    engine: EngineConfig | None = None,
    cluster: ClusterConfig | None = None,
) -> StageReport:
    """Fuse every ingested visit of ``store`` on a Dask cluster; resumable.

    Parameters
    ----------
    store : path-like
        Cohort store after ingest.
    config, engine, cluster : optional
        Fusion, engine (batching, retries, progress) and cluster settings.

    Returns
    -------
    StageReport
    """
    return run_on_cluster(*prepare_fusion(store, config or FusionConfig()), store, engine, cluster)


def fused_grid(root: zarr.Group, participant: str) -> Grid:
    """The fused grid of one participant, from the store."""
    row = participant_rows(root)[participant]
    return Grid(tuple(root[f"{FUSED}/water"].shape[1:]), np.asarray(root[f"{FUSED}/affine"][row]))
