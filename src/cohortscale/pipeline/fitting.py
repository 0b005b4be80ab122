"""The fitting stage: each visit's multi-echo slices → water, fat, PDFF, R2*, B0 and iron maps in the store.

Per visit (on a worker), for every multi-echo field of the store (20254 IDEAL, 20203 10-echo): read the
complex signal as ingest stored it (only its stored dynamics and echoes, not the NaN padding of the
cohort-wide array), combine the dynamics, fit fat and water with R2* and the field map
(:func:`cohortscale.ops.ideal.fit_fatwater`) on the GPU when the worker has one, and write
``maps/<field>/*`` with the slice's affine. Visits run once ingest is done for them, again when ingest
re-ran them, and all again when the fit settings change.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zarr

from cohortscale.backend import device_module, to_numpy
from cohortscale.io.store import ArraySpec, StoreLayout, ensure_arrays, layout_of, open_store, reset_row
from cohortscale.ops.fatwater import SPECTRA
from cohortscale.ops.ideal import MIN_ECHOES, FitOptions, fit_fatwater
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

#: Where the maps live in the store: ``maps/<field>/<name>``.
MAPS = "maps"
#: Quality value of pixels that were not fitted (every flag set, so any flag test excludes them).
NOT_FITTED = 0xFF
#: Ways of combining a slice's dynamics before the fit.
DYNAMICS = ("mean", "first")
#: Dynamics whose first-echo phase agrees less than this (median |Σ s| / Σ |s| over bright pixels) are
#: noted in the outcome: their complex mean loses signal, and ``fitting.dynamics=first`` may fit better.
MIN_COHERENCE = 0.9
#: Attribute holding the settings that produced the maps.
SETTINGS_ATTR = "fitting_config"

#: Per-pixel maps: name → (dtype, fill value, units, description).
PIXEL_MAPS: dict[str, tuple[str, object, str, str]] = {
    "water": ("float32", np.nan, "signal units", "|water| amplitude at t = 0, of the combined dynamics"),
    "fat": ("float32", np.nan, "signal units", "|fat| amplitude at t = 0, of the combined dynamics"),
    "pdff": ("float32", np.nan, "fraction", "proton-density fat fraction 0–1 (magnitude discrimination)"),
    "r2star": ("float32", np.nan, "1/s", "transverse relaxation rate R2*"),
    "b0": ("float32", np.nan, "Hz", "off-resonance ψ (known modulo 1/ΔTE for uniform echo spacing)"),
    "iron": ("float32", np.nan, "mg/g", "iron, mg Fe per g dry weight: 0.202 + 0.0254·R2* (1.5 T)"),
    "residual": ("float32", np.nan, "1", "relative residual ‖s − model‖ / ‖s‖"),
    "quality": (
        "uint8",
        NOT_FITTED,
        "bit flags",
        "0 good; 1 LOW_SIGNAL, 2 R2STAR_AT_BOUND, 4 HIGH_RESIDUAL, 8 FAT_WATER_AMBIGUOUS (magnitude fits), "
        "16 NON_FINITE, 32 IMPRECISE (OR-ed); 255 not fitted",
    ),
}


class SliceError(ValueError):
    """A stored multi-echo slice that cannot be fitted, with a machine-readable reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class FittingConfig:
    """Settings of the fitting stage.

    Attributes
    ----------
    spectrum : str
        Fat spectrum of the model, a key of :data:`cohortscale.ops.fatwater.SPECTRA`. Default
        ``"hamilton_liver9"``: both UK Biobank multi-echo protocols are liver-level slices planned for
        liver fat, and Hamilton's in vivo liver 9-peak spectrum is the standard there (the synthetic
        cohort writes it too). Marrow fat differs a little (``"ren_marrow9"``, or ``"ndb9"``, the UK
        Biobank abdominal pipeline's NDB = 2.5 basis).
    spectra : dict of int to str
        Per-field spectrum overriding ``spectrum``, e.g. ``{20203: "ren_marrow9"}``
        (``--set fitting.spectra.20203=ren_marrow9``).
    phase_sign : {1, -1}
        +1 when the stored phase follows ``s ∝ exp(+i 2π f t)`` (the model's convention), −1 for the
        opposite precession direction (the signal is conjugated before the fit). Verified on synthetic
        data written with both signs; a wrong sign shows as fat and water exchanged in marrow and a
        several-point PDFF error, so check it once per scanner software.
    dynamics : {"mean", "first"}
        How the repeated acquisitions (dynamics) of a slice are combined: the complex mean of every stored
        dynamic, which raises SNR by √n when the phase is stable between them (same slice, one breath-hold;
        the outcome notes dynamics whose phases disagree), or only the first.
    device : {"auto", "cpu", "gpu"}
        Where the fit runs: CuPy on a worker's GPU when available ("auto"), or forced.
    options : FitOptions
        Fit settings (:class:`cohortscale.ops.ideal.FitOptions`), e.g. ``--set
        fitting.options.r2star_max_s=1000``, ``fitting.options.iterations=8``.
    """

    spectrum: str = "hamilton_liver9"
    spectra: dict[int, str] = field(default_factory=dict)
    phase_sign: int = 1
    dynamics: str = "mean"
    device: str = "auto"
    options: FitOptions = field(default_factory=FitOptions)

    def __post_init__(self) -> None:
        for name in (self.spectrum, *self.spectra.values()):
            if name not in SPECTRA:
                raise ValueError(f"fitting.spectrum {name!r} is not one of {sorted(SPECTRA)}")
        if self.phase_sign not in (1, -1):
            raise ValueError(f"fitting.phase_sign must be 1 or -1, got {self.phase_sign}")
        if self.dynamics not in DYNAMICS:
            raise ValueError(f"fitting.dynamics must be one of {DYNAMICS}, got {self.dynamics!r}")
        if self.device not in ("auto", "cpu", "gpu"):
            raise ValueError(f"fitting.device must be 'auto', 'cpu' or 'gpu', got {self.device!r}")
        if self.options.r2star_max_s <= 0 or self.options.iterations < 0:
            raise ValueError("fitting.options.r2star_max_s must be > 0 and fitting.options.iterations ≥ 0")

    def spectrum_of(self, field_id: int) -> str:
        """Name of the fat spectrum used for ``field_id``."""
        return self.spectra.get(field_id, self.spectrum)

    def arrays(self, layout: StoreLayout) -> dict[str, ArraySpec]:
        """The stage's output arrays (beyond the participant axis), per multi-echo field of ``layout``."""
        specs: dict[str, ArraySpec] = {}
        for f, (_, _, ny, nx) in sorted(layout.multiecho.items()):
            # The multi-echo signal's own dimension names, so maps and signal align in open_cohort.
            dims = (f"y_{f}", f"x_{f}")
            for name, (dtype, fill, _, _) in PIXEL_MAPS.items():
                specs[f"{MAPS}/{f}/{name}"] = ((ny, nx), dtype, dims, fill)
            specs[f"{MAPS}/{f}/affine"] = ((4, 4), "float64", ("affine_row", "affine_col"), np.nan)
            specs[f"{MAPS}/{f}/dynamics"] = ((), "int16", (), 0)
            specs[f"{MAPS}/{f}/fat_shift_ppm"] = ((), "float32", (), np.nan)
        return specs


@dataclass(frozen=True)
class MultiEchoSlice:
    """One visit's stored multi-echo slice of one field, ready to fit.

    Attributes
    ----------
    signal : ndarray, complex64, (dynamic, y, x, echo)
        The dynamics read (all stored, or the first), echo axis last.
    stored_dynamics : int
        Dynamics the store holds for the visit.
    echo_times_s : ndarray, (echo,)
        Echo times, s.
    imaging_frequency_hz : float
        Proton imaging frequency, Hz.
    affine : ndarray, (4, 4)
        (column, row, slice) → LPS mm.
    """

    signal: np.ndarray
    stored_dynamics: int
    echo_times_s: np.ndarray
    imaging_frequency_hz: float
    affine: np.ndarray


def read_slice(root: zarr.Group, row: int, field_id: int, first_only: bool = False) -> MultiEchoSlice | None:
    """The multi-echo slice of ``field_id`` in store row ``row`` (every stored dynamic, or only the first);
    ``None`` when the visit has none.

    Raises
    ------
    SliceError
        The stored slice is inconsistent (echo times, frequency, affine or non-finite signal).
    """
    group = f"multiecho/{field_id}"
    dynamics = int(root[f"{group}/dynamics"][row])
    if dynamics <= 0:
        return None
    te = np.asarray(root[f"{group}/echo_times"][row], dtype=np.float64)
    n = int(np.isfinite(te).sum())
    # Ingest pads echo times with NaN after the acquired echoes; anything else is not a slice we understand.
    if not np.isfinite(te[:n]).all() or (te[:n] <= 0).any() or (np.diff(te[:n]) <= 0).any():
        raise SliceError(
            "bad_echo_times", f"echo times {np.round(te * 1e3, 3).tolist()} ms are not increasing"
        )
    if n < MIN_ECHOES:
        raise SliceError("too_few_echoes", f"{n} echoes; the fit needs at least {MIN_ECHOES}")
    frequency = float(root[f"{group}/imaging_frequency"][row])
    if not np.isfinite(frequency) or frequency <= 0:
        raise SliceError("bad_imaging_frequency", f"imaging frequency {frequency} Hz")
    affine = np.asarray(root[f"{group}/affine"][row])
    if not np.isfinite(affine).all():
        raise SliceError("bad_affine", "the slice has no affine")
    read = 1 if first_only else dynamics
    signal = np.asarray(root[f"{group}/signal"][row, :read, :n])
    if not np.isfinite(signal).all():
        raise SliceError("nonfinite_signal", f"non-finite values in {read} dynamics × {n} echoes")
    if not np.abs(signal).any():
        raise SliceError("empty_signal", "the signal is zero everywhere")
    return MultiEchoSlice(np.moveaxis(signal, 1, -1), dynamics, te[:n], frequency, affine)


def combine_dynamics(signal, xp=np):
    """The complex mean of the dynamics (axis 0) of ``signal``.

    Returns
    -------
    combined : array, shape ``signal.shape[1:]``
    coherence : float
        Median over bright pixels of ``|Σ s_d| / Σ |s_d|`` at the first echo (1 when the dynamics' phases
        agree or there is one dynamic; lower when they drift and the mean loses signal).
    """
    if len(signal) == 1:
        return signal[0], 1.0
    first = signal[..., 0]
    total = xp.abs(first).sum(axis=0)
    bright = total > 0.2 * xp.percentile(total, 99)
    coherence = float(xp.median(xp.abs(first.sum(axis=0))[bright] / total[bright]))
    return signal.mean(axis=0), coherence


def fit_visit(root: zarr.Group, visit: Visit, config: FittingConfig, layout: StoreLayout, xp=np) -> Outcome:
    """Fit every multi-echo field of one visit, write its ``maps/*`` rows and return its outcome.

    A field the visit lacks, or whose slice is inconsistent, gets fill values; the visit is quarantined
    only when no field could be fitted.
    """
    start = time.perf_counter()
    row = visit.index
    fitted: list[str] = []
    problems: list[tuple[str, str]] = []
    notes: list[str] = []
    for f in sorted(layout.multiecho):
        try:
            stored = read_slice(root, row, f, first_only=config.dynamics == "first")
            if stored is None:
                clear_row(root, row, config, layout, [f])
                continue
            signal, coherence = combine_dynamics(xp.asarray(stored.signal), xp)
            maps = fit_fatwater(
                signal,
                stored.echo_times_s,
                stored.imaging_frequency_hz,
                spectrum=SPECTRA[config.spectrum_of(f)],
                phase_sign=config.phase_sign,
                options=config.options,
            )
        except SliceError as exc:
            clear_row(root, row, config, layout, [f])
            problems.append((exc.reason, f"field {f}: {exc}"))
            continue
        except (ValueError, ArithmeticError, np.linalg.LinAlgError) as exc:  # data the fitter cannot take
            clear_row(root, row, config, layout, [f])
            problems.append(("fit_error", f"field {f}: the fit failed ({type(exc).__name__}: {exc})"))
            continue
        values = {"water": xp.abs(maps.water), "fat": xp.abs(maps.fat)}
        values.update({k: getattr(maps, k) for k in ("pdff", "r2star", "b0", "iron", "residual", "quality")})
        for name, value in values.items():
            root[f"{MAPS}/{f}/{name}"][row] = to_numpy(value).astype(PIXEL_MAPS[name][0], copy=False)
        root[f"{MAPS}/{f}/affine"][row] = stored.affine
        used = len(stored.signal)
        root[f"{MAPS}/{f}/dynamics"][row] = used
        root[f"{MAPS}/{f}/fat_shift_ppm"][row] = maps.fat_shift_ppm
        fitted.append(f"{f} ({used} of {stored.stored_dynamics} dynamics, {stored.echo_times_s.size} echoes)")
        if coherence < MIN_COHERENCE:
            notes.append(
                f"field {f}: dynamics disagree in phase (coherence {coherence:.2f}); consider "
                "fitting.dynamics=first"
            )
    seconds = time.perf_counter() - start
    where = "GPU" if xp is not np else "CPU"
    if not fitted:
        if problems:
            text = "; ".join(message for _, message in problems)
            message = f"participant {visit.key}: no multi-echo slice could be fitted: {text}"
            return Outcome(visit.key, "quarantined", problems[0][0], message, seconds)
        message = f"participant {visit.key}: no multi-echo slice in the store to fit"
        return Outcome(visit.key, "quarantined", "no_multiecho", message, seconds)
    message = f"participant {visit.key}: fitted {', '.join(fitted)} on {where}"
    for _, problem in problems:
        notes.append(f"{problem} (not fitted)")
    message += f"; {'; '.join(notes)}" if notes else ""
    return Outcome(visit.key, "done", "", message, seconds)


def clear_row(
    root: zarr.Group,
    row: int,
    config: FittingConfig,
    layout: StoreLayout,
    fields: Sequence[int] | None = None,
) -> None:
    """Reset a visit's maps of ``fields`` (default all) to their fill values."""
    wanted = {f"{MAPS}/{f}/" for f in (layout.multiecho if fields is None else fields)}
    specs = config.arrays(layout)
    reset_row(
        root, {path: spec for path, spec in specs.items() if path[: path.rindex("/") + 1] in wanted}, row
    )


@dataclass(frozen=True)
class FittingStage:
    """The fitting stage for :func:`cohortscale.pipeline.engine.run_stage`."""

    store: str
    config: FittingConfig = field(default_factory=FittingConfig)
    name: str = "fitting"
    gpu: bool = True

    def process(self, visits: list[Visit]) -> list[Outcome]:
        root = open_store(self.store)
        layout = layout_of(root)
        xp = device_module(self.config.device)
        return [fit_visit(root, visit, self.config, layout, xp) for visit in visits]


def _attrs(path: str, config: FittingConfig, settings: dict) -> dict:
    """Units, description and provenance of one output array."""
    field_id, name = path.split("/")[1:]
    if name in PIXEL_MAPS:
        _, _, units, description = PIXEL_MAPS[name]
    elif name == "affine":
        units, description = "mm", "(column, row, slice) → LPS of the multi-echo slice"
    elif name == "fat_shift_ppm":
        units, description = (
            "ppm",
            "offset of the fat peaks from the spectrum, calibrated on the slice (0: none)",
        )
    else:
        units, description = "1", "dynamics combined before the fit (0: not fitted)"
    return {
        "units": units,
        "description": description,
        "spectrum": config.spectrum_of(int(field_id)),
        SETTINGS_ATTR: settings,
    }


def prepare_fitting(store: str | Path, config: FittingConfig) -> tuple[FittingStage, list[Visit]]:
    """Create the stage's arrays and return the stage and the visits ready for it (ingest done).

    Visits fitted with other settings are fitted again (a "failed" record, reason ``config_changed``);
    visits ingest has quarantined since they were fitted lose their maps.
    """
    root = open_store(store)
    layout = layout_of(root)
    arrays = config.arrays(layout)
    settings = placement_settings(config)
    recorded = [root[p].attrs.get(SETTINGS_ATTR) for p in arrays if p in root]
    previous = next((s for s in recorded if s is not None), None)
    ensure_arrays(root, arrays)
    for path in arrays:
        if root[path].attrs.get(SETTINGS_ATTR) != settings:
            root[path].attrs.update(_attrs(path, config, settings))
    visits = store_visits(store)
    if previous is not None and previous != settings:
        requeue_done(
            store, "fitting", "config_changed", "participant {}: fitting settings changed; fitting again"
        )
    ready = ready_visits("fitting", "ingest", visits, store)
    ready_keys = {v.key for v in ready}
    affines = {f: root[f"{MAPS}/{f}/affine"][:] for f in layout.multiecho}
    for visit in visits:
        if visit.key not in ready_keys and any(np.isfinite(a[visit.index]).all() for a in affines.values()):
            clear_row(root, visit.index, config, layout)
    return FittingStage(str(store), config), ready


def run_fitting(
    store: str | Path,
    config: FittingConfig | None = None,
    engine: EngineConfig | None = None,
    cluster: ClusterConfig | None = None,
) -> StageReport:
    """Fit the multi-echo slices of every ingested visit of ``store`` on a Dask cluster; resumable.

    Parameters
    ----------
    store : path-like
        Cohort store after ingest.
    config, engine, cluster : optional
        Fitting, engine (batching, retries, progress) and cluster settings.

    Returns
    -------
    StageReport
    """
    return run_on_cluster(*prepare_fitting(store, config or FittingConfig()), store, engine, cluster)
