"""Reader and score for the ISMRM 2012 fat–water separation challenge cases (``shared/FATWATER.md``).

Each case is a MATLAB v5 file holding a struct ``imDataParams`` with ``images`` (x, y, z, echo) complex,
``TE`` (s), ``FieldStrength`` (T), ``PrecessionIsClockwise`` and, for scored cases, ``ref`` (fat fraction
0–1) and ``eval_mask``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.io

from cohortscale.protocols import GAMMA_BAR_MHZ_PER_T

#: A voxel counts as correct when its fat fraction is within this of the reference (fraction).
CHALLENGE_TOLERANCE = 0.1

#: Full marks: every evaluated voxel within tolerance.
CHALLENGE_MAX_SCORE = 10_000


class ChallengeFileError(ValueError):
    """A file is not a readable challenge case."""


@dataclass(frozen=True)
class ChallengeCase:
    """One challenge acquisition.

    Attributes
    ----------
    name : str
        File stem, e.g. ``"17_ISMRM"``.
    signal : ndarray, complex64, shape (x, y, z, echo)
        Multi-echo images.
    echo_times_s : ndarray, shape (echo,)
        Echo times, s.
    field_strength_t : float
        Main field, T.
    phase_sign : int
        +1 when the data follow ``exp(+i 2π f t)`` as stored (``PrecessionIsClockwise`` true), −1 when they
        must be conjugated first.
    ref : ndarray or None, float, shape (x, y, z)
        Reference fat fraction, 0–1.
    eval_mask : ndarray, bool, shape (x, y, z)
        Voxels that are scored (for unscored cases, the case's ``mask``, or all voxels).
    """

    name: str
    signal: np.ndarray
    echo_times_s: np.ndarray
    field_strength_t: float
    phase_sign: int
    ref: np.ndarray | None
    eval_mask: np.ndarray

    @property
    def imaging_frequency_hz(self) -> float:
        """Proton imaging frequency, Hz (γ̄ · B0)."""
        return GAMMA_BAR_MHZ_PER_T * 1e6 * self.field_strength_t


def load_challenge(path: str | Path) -> ChallengeCase:
    """Read one challenge ``.mat`` file.

    Raises
    ------
    ChallengeFileError
        When the file is not MATLAB or lacks ``imDataParams`` with images and echo times.
    """
    path = Path(path)
    try:
        contents = scipy.io.loadmat(path, squeeze_me=True, struct_as_record=False)
    except (OSError, ValueError, TypeError, scipy.io.matlab.MatReadError) as exc:
        raise ChallengeFileError(f"{path}: not a readable MATLAB file ({exc})") from exc
    params = contents.get("imDataParams")
    if params is None or not {"images", "TE", "FieldStrength"} <= set(params._fieldnames):
        raise ChallengeFileError(f"{path}: no imDataParams struct with images, TE and FieldStrength")
    signal = np.asarray(params.images)
    if signal.ndim == 3:  # single-slice cases drop the z axis under squeeze_me
        signal = signal[:, :, None, :]
    echo_times = np.atleast_1d(np.asarray(params.TE, dtype=np.float64))
    if signal.ndim != 4 or signal.shape[-1] != echo_times.size:
        raise ChallengeFileError(f"{path}: images {signal.shape} do not match {echo_times.size} echo times")
    clockwise = bool(getattr(params, "PrecessionIsClockwise", 1))
    ref = getattr(params, "ref", None)
    mask = getattr(params, "eval_mask", getattr(params, "mask", None))
    spatial = signal.shape[:3]
    return ChallengeCase(
        name=path.stem,
        signal=signal.astype(np.complex64),
        echo_times_s=echo_times,
        field_strength_t=float(params.FieldStrength),
        phase_sign=1 if clockwise else -1,
        ref=None if ref is None else np.asarray(ref, dtype=np.float64).reshape(spatial),
        eval_mask=np.ones(spatial, bool) if mask is None else np.asarray(mask).reshape(spatial) > 0,
    )


def challenge_fat_fraction(water: np.ndarray, fat: np.ndarray) -> np.ndarray:
    """Fat fraction as the challenge computes it from a submission: ``|F| / (|W| + |F|)``.

    Entries submitted real-valued water and fat images, and the organisers computed each case's fat
    fraction map from them (challenge.ismrm.org, scoring rules), so the score judges the separated images
    with the plain magnitude ratio, not a fitter's own PDFF estimator (such as magnitude discrimination).
    NaN where both are zero.

    Parameters
    ----------
    water, fat : ndarray
        Water and fat images (complex or magnitude), same shape.
    """
    water_mag, fat_mag = np.abs(np.asarray(water)), np.abs(np.asarray(fat))
    with np.errstate(divide="ignore", invalid="ignore"):
        return fat_mag / (water_mag + fat_mag)


def challenge_score(fat_fraction: np.ndarray, case: ChallengeCase) -> float:
    """Challenge score: 10 000 × share of evaluated voxels within 0.1 of the reference fat fraction.

    Parameters
    ----------
    fat_fraction : ndarray, shape (x, y, z)
        Estimated fat fraction, 0–1 (NaN counts as wrong).
    case : ChallengeCase
        A case with a reference.
    """
    if case.ref is None:
        raise ValueError(f"{case.name} has no reference fat fraction to score against")
    error = np.abs(np.asarray(fat_fraction, dtype=np.float64) - case.ref)[case.eval_mask]
    return CHALLENGE_MAX_SCORE * float(np.mean(error < CHALLENGE_TOLERANCE))
