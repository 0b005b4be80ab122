"""Fat–water fitting throughput and accuracy on the ISMRM 2012 challenge cases (issue 5).

For each challenge case (``12_ISMRM``, ``17_ISMRM`` scored against the reference fat fraction;
``13_noref`` timed only): seconds per case, voxel-fits per second per core and the challenge score of
cohortscale's ``fit_fatwater``, and in the same run the PyPI package ``pycsemri`` (its lookup-table
VARPRO, ``VARPRO_LUT``) on the same cases with the same spectrum, echo times, imaging frequency and
precession convention. A synthetic UK Biobank-like 6-echo liver slice (232 × 256, smooth B0, SNR 40)
gives the throughput at cohort scale. GPU rows (CuPy arrays) are added when ``gpu_available()``, with one
for ``--gpu-batch`` synthetic slices fitted in one call.
Times are the best of ``--repeats`` after one warm-up call, in this single process, with the BLAS/OpenMP
thread pools set to ``--threads`` before NumPy is imported.

The challenge files are read from ``--data`` (default ``../shared/data/ismrm2012``, relative to the
repository root); they are research data and never copied into the repository.
Run: ``.venv/bin/python benchmarks/fatwater_throughput.py [--threads N] [--repeats N]``.
"""

from __future__ import annotations

# isort: off
from threads import THREAD_VARIABLES, THREADS  # first: pins the BLAS/OpenMP pools before NumPy loads

# isort: on
import argparse
import contextlib
import importlib.metadata
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

import cohortscale
from cohortscale.backend import array_module, gpu_available, to_numpy
from cohortscale.io.challenge import (
    ChallengeCase,
    challenge_fat_fraction,
    challenge_score,
    load_challenge,
)
from cohortscale.ops.fatwater import ISMRM_6PEAK, FatSpectrum, multiecho_signal
from cohortscale.protocols import GAMMA_BAR_MHZ_PER_T
from common import write_results

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = "../shared/data/ismrm2012"
CASES = ("12_ISMRM", "17_ISMRM", "13_noref")

#: pycsemri's hard-coded gyromagnetic ratio (MHz/T) in libuwwfs: it converts the spectrum's ppm to Hz as
#: ppm × 42.58 × FieldStrength, so we pass FieldStrength = imaging frequency / 42.58 MHz to put its fat
#: peaks at the same Hz as ours.
PYCSEMRI_GYRO_MHZ_PER_T = 42.58
#: Field-map candidate spacing (Hz) and R2* grid (s⁻¹) of the pycsemri lookup table.
PYCSEMRI_FM_STEP_HZ = 5.0
PYCSEMRI_R2STAR_RANGE = (0.0, 1000.0)
PYCSEMRI_NUM_R2STARS = 41

#: Synthetic UK Biobank-like liver slice: 6 echoes, TE1 1.2 ms, ΔTE 2.0 ms, 1.5 T, SNR 40.
SYNTH_SHAPE = (232, 256)
SYNTH_ECHO_TIMES_S = 1.2e-3 + 2.0e-3 * np.arange(6)
SYNTH_FIELD_T = 1.5
SYNTH_SNR = 40.0

#: ``FitOptions.model`` of the default fit, named here so that the script still runs against checkouts
#: without the option.
DEFAULT_MODEL = "complex"
#: Best quoted anchor per scored case (mri-fatwater's multi-scale QPBO graph cut, 5–8 s per case on 2 cores).
ANCHOR_BEST = {"17_ISMRM": 9886, "12_ISMRM": 9699}

ANCHORS = """\
Anchor figures quoted from `shared/FATWATER.md` (measured elsewhere on 2 CPU cores; **quoted, not \
measured in this run**):

| method (quoted) | case 17 score | case 12 score | time per case |
|---|---|---|---|
| multi-scale QPBO graph cut, Berglund & Skorpil (`mri-fatwater`) | 9886 | 9699 | 5–8 s |
| hmrGC (hierarchical multi-resolution graph cut, partly CuPy) | 9446–9620 | ~5,600 (swaps) | – |
| PyCSEMRI (pip `pycsemri`, lookup-table VARPRO) | ~8,000–8,300 | ~8,000–8,300 | ~1 s |
| 2013 challenge winner (all 17 cases) | 9931 overall | | – |
"""


# --------------------------------------------------------------------------------------------- timing


def best_time(run: Callable[[], Any], repeats: int, synchronize: Callable[[], None] = lambda: None):
    """One warm-up call, then the best wall time of ``repeats`` calls: (seconds, CPU seconds of that call,
    result of the last call)."""
    result = run()
    synchronize()
    best, best_cpu = np.inf, np.nan
    for _ in range(repeats):
        cpu, start = time.process_time(), time.perf_counter()
        result = run()
        synchronize()
        wall = time.perf_counter() - start
        if wall < best:
            best, best_cpu = wall, time.process_time() - cpu
    return best, best_cpu, result


def code_version() -> str:
    """Commit of the cohortscale source being benchmarked, with a mark when its ``src`` has uncommitted
    changes (or "unknown" outside a git checkout)."""
    source = Path(cohortscale.__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(source), "status", "--porcelain", "--", "."], capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + (" with uncommitted changes" if dirty else "")


# ------------------------------------------------------------------------------------------- pycsemri


def pycsemri_version() -> str | None:
    """Installed pycsemri version, or None when it is not installed."""
    try:
        return importlib.metadata.version("pycsemri")
    except importlib.metadata.PackageNotFoundError:
        return None


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    """Silence file descriptor 1 (pycsemri's C++ core prints its progress with std::cout)."""
    sys.stdout.flush()
    saved = os.dup(1)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    try:
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(null)


def pycsemri_fit(
    signal: np.ndarray,
    echo_times_s: np.ndarray,
    imaging_frequency_hz: float,
    phase_sign: int,
    spectrum: FatSpectrum,
    subsample: int,
) -> np.ndarray:
    """Fat fraction (0–1, shape (x, y, z)) from pycsemri's ``VARPRO_LUT``, one slice at a time.

    ``VARPRO_LUT`` takes one 2-D slice (x, y, echo) with ``PrecessionIsClockwise`` (it conjugates the
    images itself when that is ≤ 0, the convention of our ``phase_sign`` −1), a water peak and the fat
    spectrum in ppm, a field-map grid ``range_fm``/``NUM_FMS`` (Hz) and an R2* grid. Its candidate search
    and spatial coupling do not know that the residual is periodic in 1/ΔTE, so the grid spans one period
    (±1/(2ΔTE)) centred on zero; wider ranges alias (measured: scores 1,100–3,900 on cases 12 and 17 with
    ±400–600 Hz). Water and fat amplitudes are combined by pycsemri's ``computeFF`` without its noise-bias
    correction: ``|F| / (|W| + |F|)``, as the challenge computed FF from submitted water and fat images
    (percent, divided by 100 here). Voxels below its internal 5 % magnitude mask get amplitude 0, hence
    FF 0.
    """
    from pycsemri.computeFF import computeFF
    from pycsemri.VARPRO_LUT import VARPRO_LUT

    te = np.asarray(echo_times_s, dtype=np.float64)
    spacing = float(np.min(np.diff(te))) if te.size > 1 else 1.0 / 1000.0
    half_period = 0.5 / spacing
    algo = {
        "species": [
            {"relAmps": [1.0], "frequency": [0.0]},
            {"relAmps": list(spectrum.amplitudes), "frequency": list(spectrum.shifts_ppm)},
        ],
        "range_fm": [-half_period, half_period],
        "NUM_FMS": round(2 * half_period / PYCSEMRI_FM_STEP_HZ) + 1,
        "range_r2star": list(PYCSEMRI_R2STAR_RANGE),
        "NUM_R2STARS": PYCSEMRI_NUM_R2STARS,
        "SUBSAMPLE": subsample,
    }
    ff = np.zeros(signal.shape[:3])
    for z in range(signal.shape[2]):
        data = {
            "images": signal[:, :, z, :],
            "TE": te,
            "FieldStrength": imaging_frequency_hz / (PYCSEMRI_GYRO_MHZ_PER_T * 1e6),
            "PrecessionIsClockwise": 1 if phase_sign > 0 else -1,
        }
        with _quiet_stdout():
            out = VARPRO_LUT(data, algo)
        ff[:, :, z] = computeFF(out, noise_bias_correction=0) / 100.0
    return ff


# ------------------------------------------------------------------------------------------------ ours


def ours_available() -> str | None:
    """None when ``cohortscale.ops.ideal.fit_fatwater`` imports, else the reason it does not."""
    try:
        from cohortscale.ops.ideal import fit_fatwater  # noqa: F401
    except ImportError as exc:
        return str(exc)
    return None


def ours_fit(
    signal: Any,
    echo_times_s: np.ndarray,
    imaging_frequency_hz: float,
    phase_sign: int,
    spectrum: FatSpectrum,
    model: str = DEFAULT_MODEL,
) -> Any:
    """cohortscale's fat–water maps for ``signal`` (NumPy or CuPy, (x, y, z, echo) as the challenge files
    store it), with the slice axis moved first: ``fit_fatwater`` regularises the field map over the two
    axes before the echo axis and fits leading axes independently. Maps come back shaped (z, x, y).
    ``model`` is ``FitOptions.model``, the other options their defaults."""
    from cohortscale.ops.ideal import FitOptions, fit_fatwater

    xp = array_module(signal)
    return fit_fatwater(
        xp.moveaxis(signal, 2, 0),
        echo_times_s,
        imaging_frequency_hz,
        spectrum=spectrum,
        phase_sign=phase_sign,
        options=None if model == DEFAULT_MODEL else FitOptions(model=model),
    )


def ours_name(model: str) -> str:
    """Fitter column of our rows: the default amplitude model unnamed, as in earlier records."""
    return "cohortscale fit_fatwater" + ("" if model == DEFAULT_MODEL else f", {model.replace('_', ' ')}")


def ours_fat_fraction(maps: Any) -> np.ndarray:
    """Fat fraction (0–1) of :func:`ours_fit`'s water and fat as the challenge computes it from a
    submission (``challenge_fat_fraction``), shaped (x, y, z) like the case."""
    return np.moveaxis(challenge_fat_fraction(to_numpy(maps.water), to_numpy(maps.fat)), 0, 2)


# ------------------------------------------------------------------------------------------- synthetic


def synthetic_slice(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """A UK Biobank-like 6-echo abdominal slice: signal (x, y, 1, echo) complex64, true FF, body mask,
    imaging frequency (Hz).

    Elliptical body with a 1.5–2.5 cm subcutaneous fat layer (FF 0.9), a liver with FF rising 2 → 30 %
    across it (R2* 40 s⁻¹, an iron-loaded lobe at 300 s⁻¹), muscle elsewhere (FF 2 %, R2* 30 s⁻¹); a
    smooth field map (±150 Hz, quadratic plus a susceptibility bump), a smooth common phase, complex
    Gaussian noise with ρ/σ = 40 in tissue and noise only outside the body. Fat spectrum ISMRM 6-peak.
    """
    rng = np.random.default_rng(seed)
    nx, ny = SYNTH_SHAPE
    u, v = np.meshgrid(np.linspace(-1, 1, nx), np.linspace(-1, 1, ny), indexing="ij")
    radius = np.hypot(u / 0.92, v / 0.80)
    body = radius < 1.0
    fat_layer = body & (radius > 0.86 - 0.04 * v)
    liver = np.hypot((u + 0.15) / 0.45, (v - 0.25) / 0.40) < 1.0
    ff = np.where(body, 0.02, 0.0)
    ff = np.where(liver, 0.02 + 0.28 * (v + 0.15).clip(0, 0.8) / 0.8, ff)
    ff = np.where(fat_layer, 0.9, ff)
    r2star = np.where(liver, 40.0, 30.0)
    r2star = np.where(liver & (u > 0.1), 300.0, r2star)
    r2star = np.where(fat_layer, 25.0, r2star)
    field = 90 * u**2 - 60 * v + 40 * u * v - 40 + 110 * np.exp(-((u - 0.55) ** 2 + (v + 0.1) ** 2) / 0.02)
    phase = np.exp(1j * (0.8 * u - 0.5 * v + 0.3))
    rho = 100.0 * body
    imaging_frequency_hz = GAMMA_BAR_MHZ_PER_T * 1e6 * SYNTH_FIELD_T
    signal = multiecho_signal(
        rho * (1 - ff) * phase,
        rho * ff * phase,
        r2star,
        field,
        SYNTH_ECHO_TIMES_S,
        ISMRM_6PEAK,
        imaging_frequency_hz,
    )
    sigma = 100.0 / SYNTH_SNR
    signal = signal + sigma * (rng.standard_normal(signal.shape) + 1j * rng.standard_normal(signal.shape))
    return signal[:, :, None, :].astype(np.complex64), ff[:, :, None], body[:, :, None], imaging_frequency_hz


def synthetic_score(ff: np.ndarray, truth: np.ndarray, body: np.ndarray) -> float:
    """Challenge-style score on the synthetic slice: 10 000 × share of body voxels within 0.1 of truth."""
    return 10_000 * float(np.mean(np.abs(np.asarray(ff, dtype=np.float64) - truth)[body] < 0.1))


def swapped_share(ff: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    """Percent of ``mask`` voxels that look water–fat swapped: within 0.1 of 1 − truth but not of truth."""
    ff = np.asarray(ff, dtype=np.float64)[mask]
    truth = np.asarray(truth, dtype=np.float64)[mask]
    swapped = (np.abs(ff - (1 - truth)) < 0.1) & ~(np.abs(ff - truth) < 0.1)
    return 100 * float(np.mean(swapped))


# ----------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data",
        default=DEFAULT_DATA,
        help="Folder of the challenge .mat files; relative paths are taken from the repository root.",
    )
    parser.add_argument("--cases", nargs="+", default=list(CASES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--threads", type=int, default=THREADS, help="BLAS/OpenMP threads (set before NumPy starts)."
    )
    parser.add_argument(
        "--pycsemri-subsample",
        type=int,
        nargs="*",
        default=[1, 4],
        help="SUBSAMPLE factors of pycsemri's field-map search (1: full resolution; 4: its README's "
        "setting); none skips pycsemri.",
    )
    parser.add_argument("--no-synthetic", action="store_true", help="Skip the synthetic UKB-like slice.")
    parser.add_argument("--no-gpu", action="store_true", help="Skip the GPU rows even when a GPU is present.")
    parser.add_argument(
        "--gpu-batch",
        type=int,
        default=16,
        help="Synthetic slices (seeds 0..N-1) fitted in one GPU call, the cohort-scale use; 0 skips the row.",
    )
    parser.add_argument(
        "--models",
        nargs="+",
        default=[DEFAULT_MODEL, "common_phase"],
        help="FitOptions.model of our rows: free complex water and fat, and one common phase.",
    )
    parser.add_argument("--name", default="fatwater_throughput", help="Results file stem.")
    args = parser.parse_args()
    data = Path(args.data)
    if not data.is_absolute():
        data = REPO / data

    peer = pycsemri_version()
    subsamples = args.pycsemri_subsample if peer else []
    missing_ours = ours_available()
    use_gpu = not args.no_gpu and gpu_available() and missing_ours is None
    spectrum = ISMRM_6PEAK

    rows: list[dict[str, Any]] = []
    issues: list[str] = []

    def row(fitter: str, device: str, case: str, voxels: int, cores: int, wall: float, cpu: float,
            score: tuple[float, float] | None) -> dict[str, Any]:  # fmt: skip
        entry = {
            "fitter": fitter,
            "device": device,
            "case": case,
            "voxels": voxels,
            "threads": cores,
            "s_per_case": round(wall, 3),
            "cpu_s_per_wall_s": round(cpu / wall, 2) if np.isfinite(cpu) else "–",
            "voxel_fits_per_s_per_core": round(voxels / wall / cores),
            "score": "–" if score is None else round(score[0]),
            "swapped_pct": "–" if score is None else round(score[1], 2),
        }
        rows.append(entry)
        return entry

    # Each input: (name, signal, echo times, imaging frequency, phase sign, scorer or None)
    Scorer = Callable[[np.ndarray], tuple[float, float]]
    inputs: list[tuple[str, np.ndarray, np.ndarray, float, int, Scorer | None]] = []
    masks: dict[str, np.ndarray] = {}  # scored voxels per input
    for name in args.cases:
        case: ChallengeCase = load_challenge(data / f"{name}.mat")
        scorer = (
            (lambda ff, c=case: (challenge_score(ff, c), swapped_share(ff, c.ref, c.eval_mask)))
            if case.ref is not None
            else None
        )
        if case.ref is not None:
            masks[case.name] = case.eval_mask
        inputs.append(
            (case.name, case.signal, case.echo_times_s, case.imaging_frequency_hz, case.phase_sign, scorer)
        )
    if not args.no_synthetic:
        signal, truth, body, frequency = synthetic_slice()
        synthetic_name = f"synthetic UKB-like {SYNTH_SHAPE[0]}×{SYNTH_SHAPE[1]}×1"
        masks[synthetic_name] = body
        inputs.append(
            (
                synthetic_name,
                signal,
                SYNTH_ECHO_TIMES_S,
                frequency,
                1,
                lambda ff, t=truth, b=body: (synthetic_score(ff, t, b), swapped_share(ff, t, b)),
            )
        )

    for name, signal, te, frequency, sign, scorer in inputs:
        voxels = int(np.prod(signal.shape[:3]))
        print(f"{name}: {signal.shape}, {te.size} echoes", flush=True)
        peer_seconds: dict[int, float] = {}
        for sub in subsamples:
            wall, cpu, ff = best_time(
                partial(pycsemri_fit, signal, te, frequency, sign, spectrum, sub), args.repeats
            )
            score = scorer(ff) if scorer else None
            peer_seconds[sub] = wall
            # VARPRO_LUT's library (libuwwfs) is not linked to OpenMP: one core (cpu_s_per_wall_s shows it).
            row(f"pycsemri {peer} VARPRO_LUT, SUBSAMPLE {sub}", "CPU", name, voxels, 1, wall, cpu, score)
        for model in args.models if missing_ours is None else []:
            try:
                wall, cpu, maps = best_time(
                    partial(ours_fit, signal, te, frequency, sign, spectrum, model), args.repeats
                )
            except Exception as exc:  # report a crash of the fitter under test, keep the peer rows
                issues.append(f"{ours_name(model)} failed on {name}: {type(exc).__name__}: {exc}")
                continue
            pdff = ours_fat_fraction(maps)
            if (nan := int(np.isnan(pdff).sum())) > 0:
                counted = int(np.isnan(pdff[mask]).sum()) if (mask := masks.get(name)) is not None else 0
                issues.append(
                    f"Observation: the fat fraction of {ours_name(model)} is NaN in {nan} voxels of {name} "
                    f"({counted} of them scored; pycsemri returns 0 there)."
                )
            entry = row(ours_name(model), "CPU", name, voxels, args.threads, wall, cpu,
                        scorer(pdff) if scorer else None)  # fmt: skip
            for sub, seconds in peer_seconds.items():
                entry[f"pycsemri_S{sub}_s_over_ours"] = round(seconds / wall, 2)
            if use_gpu:
                import cupy

                on_gpu = cupy.asarray(signal)
                sync = cupy.cuda.Device().synchronize
                wall, _, maps = best_time(
                    partial(ours_fit, on_gpu, te, frequency, sign, spectrum, model), args.repeats, sync
                )
                entry = row(f"{ours_name(model)} (CuPy)", "GPU", name, voxels, 1, wall, np.nan,
                            scorer(ours_fat_fraction(maps)) if scorer else None)  # fmt: skip
                for sub, seconds in peer_seconds.items():
                    entry[f"pycsemri_S{sub}_s_over_ours"] = round(seconds / wall, 2)

    if use_gpu and args.gpu_batch > 0 and not args.no_synthetic:
        import cupy

        slices = [synthetic_slice(seed) for seed in range(args.gpu_batch)]
        signal, truth, body = (np.concatenate([s[part] for s in slices], axis=2) for part in range(3))
        wall, _, maps = best_time(
            partial(ours_fit, cupy.asarray(signal), SYNTH_ECHO_TIMES_S, slices[0][3], 1, spectrum),
            args.repeats,
            cupy.cuda.Device().synchronize,
        )
        ff = ours_fat_fraction(maps)
        entry = row(
            "cohortscale fit_fatwater (CuPy)",
            "GPU",
            f"synthetic UKB-like {SYNTH_SHAPE[0]}×{SYNTH_SHAPE[1]}×{args.gpu_batch}, one call",
            int(np.prod(signal.shape[:3])),
            1,
            wall,
            np.nan,
            (synthetic_score(ff, truth, body), swapped_share(ff, truth, body)),
        )
        entry["s_per_slice"] = round(wall / args.gpu_batch, 3)

    columns = list(rows[0])
    for entry in rows:
        columns += [c for c in entry if c not in columns]
    rows = [{c: entry.get(c, "–") for c in columns} for entry in rows]

    if missing_ours is not None:
        gpu_note = (
            f"cohortscale.ops.ideal.fit_fatwater is not available in this checkout ({missing_ours}): no "
            "rows for our fitter and no GPU rows."
        )
    elif use_gpu:
        gpu_note = (
            "GPU: CuPy rows above (the signal passed as a CuPy array). The last row fits the synthetic "
            f"slices of seeds 0–{args.gpu_batch - 1} stacked as planes in one call (a multi-slice "
            "acquisition; planes share the call's noise level, so the fitting stage does not pool "
            "participants this way); s_per_slice is its time over the slices."
        )
    else:
        gpu_note = "GPU: none available in this run (gpu_available() is False), so no GPU rows."
    notes = [
        f"Best of {args.repeats} after one warm-up, one process; {', '.join(THREAD_VARIABLES)} = "
        f"{args.threads} for every row. voxel_fits_per_s_per_core: all voxels of the case (x·y·z, "
        "masked or not) / s_per_case / threads (pycsemri: 1 thread, its VARPRO_LUT library is "
        "single-threaded). cpu_s_per_wall_s: process "
        "CPU time over wall time of the timed call (the cores actually busy). score: challenge score, 10000 "
        "× share of eval_mask voxels with |FF − ref| < 0.1, FF = |F| / (|W| + |F|) of the fitted water and "
        "fat images as the challenge computed it from entries (synthetic row: of body voxels against the "
        "truth); 13_noref has no reference (time only). swapped_pct: percent of those voxels within 0.1 of "
        "1 − ref but not of ref (water–fat swaps). pycsemri_Sk_s_over_ours: pycsemri's seconds at "
        "SUBSAMPLE k over ours on the same case in this run (> 1: ours is faster).",
        f"Settings, both fitters: ISMRM 6-peak fat spectrum ({spectrum.name}), the case's echo times, its "
        "imaging frequency (γ̄·B0) and precession convention (PrecessionIsClockwise = 1 in all three files: "
        "no conjugation). pycsemri "
        + (f"{peer}: " if peer else "(not installed, no rows): ")
        + f"`VARPRO_LUT` per slice, field-map grid ±1/(2ΔTE) (one period of the echo spacing) in "
        f"{PYCSEMRI_FM_STEP_HZ:g} Hz steps, R2* {PYCSEMRI_R2STAR_RANGE[0]:g}–{PYCSEMRI_R2STAR_RANGE[1]:g} "
        f"s⁻¹ in {PYCSEMRI_NUM_R2STARS} steps, FieldStrength = imaging frequency / 42.58 MHz/T (its "
        "built-in γ̄), its fixed mask (5 % of the maximum first-echo magnitude) and coupling weight (0.06); "
        "FF from its `computeFF` without noise-bias correction. cohortscale: `fit_fatwater` with its default "
        "FitOptions (rows named with a model: that FitOptions.model, the rest default), the signal passed "
        "with the slice axis first ((z, x, y, echo): it regularises the field "
        "over the two axes before the echo axis), moved back to (x, y, z) for scoring; cohortscale code at "
        f"commit {code_version()}.",
        gpu_note,
        f"Synthetic slice: {SYNTH_SHAPE[0]}×{SYNTH_SHAPE[1]}×1, TE {SYNTH_ECHO_TIMES_S[0] * 1e3:.1f} + "
        f"{(SYNTH_ECHO_TIMES_S[1] - SYNTH_ECHO_TIMES_S[0]) * 1e3:.1f} n ms (6 echoes), {SYNTH_FIELD_T} T, "
        "ISMRM 6-peak, smooth B0 ±150 Hz, liver FF 2–30 % with an R2* 300 s⁻¹ lobe, subcutaneous fat 90 %, "
        f"ρ/σ = {SYNTH_SNR:.0f}, seed 0.",
        *issues,
        ANCHORS,
    ]
    summary = []
    default = ours_name(DEFAULT_MODEL)
    for entry in rows:
        if entry["fitter"] in (default, f"{default} (CuPy)") and entry["case"] in ANCHOR_BEST:
            summary.append(
                f"{entry['case']} {entry['device']}: ours {entry['score']} in {entry['s_per_case']} s vs "
                f"{ANCHOR_BEST[entry['case']]} in 5–8 s (mri-fatwater, quoted)"
            )
    if summary:
        notes.insert(0, "Against the best quoted anchor: " + "; ".join(summary) + ".")
    load = os.getloadavg()
    notes.insert(
        1,
        f"Load average (1, 5, 15 min) at the end of the run: {load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f} on "
        f"{os.cpu_count()} cores: the machine is shared, so cpu_s_per_wall_s below 1 for a single-threaded "
        "row means it waited for a core and the time is an overestimate.",
    )
    write_results(args.name, rows, notes="\n\n".join(notes))


if __name__ == "__main__":
    main()
