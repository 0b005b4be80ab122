"""MR properties of each labelled tissue, and per-participant lookup tables indexed by label id.

Values are typical 1.5 T figures; the per-participant ones (marrow PDFF by level, marrow iron, liver fat,
muscle fat infiltration, marrow water T1) come from the population model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from cohortscale.synth.labels import LABELS, VERTEBRAE


@dataclass(frozen=True)
class Tissue:
    """MR properties of a tissue.

    Attributes
    ----------
    proton_density : float
        Relative proton density (pure fat = 1).
    pdff : float
        Proton-density fat fraction, 0–1.
    t1_water_s : float
        T1 of the tissue's water, s (fat uses :data:`~cohortscale.synth.relaxation.T1_FAT_S`).
    r2star : float
        R2*, s⁻¹.
    """

    proton_density: float
    pdff: float
    t1_water_s: float
    r2star: float


_FAT = Tissue(1.0, 0.92, 0.80, 45.0)
_MUSCLE = Tissue(0.80, 0.05, 1.00, 30.0)
_YELLOW_MARROW = Tissue(0.95, 0.85, 0.75, 60.0)

DEFAULT_TISSUES: dict[str, Tissue] = {
    "background": Tissue(0.0, 0.0, 1.0, 0.0),
    "subcutaneous_fat": _FAT,
    "visceral_fat": _FAT,
    "other_muscle": _MUSCLE,
    "liver": Tissue(0.75, 0.03, 0.58, 35.0),
    "spleen": Tissue(0.80, 0.01, 1.05, 20.0),
    "kidney_left": Tissue(0.85, 0.01, 0.95, 15.0),
    "kidney_right": Tissue(0.85, 0.01, 0.95, 15.0),
    "lungs": Tissue(0.04, 0.0, 1.2, 400.0),
    "heart": Tissue(0.85, 0.01, 1.15, 25.0),
    "spinal_canal": Tissue(1.0, 0.0, 2.5, 5.0),
    "intervertebral_disc": Tissue(0.80, 0.02, 1.0, 25.0),
    "pelvis": Tissue(0.90, 0.65, 0.75, 65.0),
    "femur_left": _YELLOW_MARROW,
    "femur_right": _YELLOW_MARROW,
    "other_bone": _YELLOW_MARROW,
    "cortical_bone": Tissue(0.03, 0.0, 1.0, 800.0),
    **{
        f"{part}_{side}": _MUSCLE
        for part in ("thigh_anterior", "thigh_posterior", "thigh_medial", "gluteal", "iliopsoas")
        for side in ("left", "right")
    },
    "bowel": Tissue(0.55, 0.04, 1.0, 40.0),
    "vessels": Tissue(0.85, 0.0, 1.3, 15.0),
    "scanner_table": Tissue(0.12, 0.0, 0.5, 20.0),
    **{v: Tissue(0.90, 0.40, 0.75, 65.0) for v in VERTEBRAE},
}

MUSCLE_LABELS: tuple[str, ...] = tuple(name for name, t in DEFAULT_TISSUES.items() if t is _MUSCLE)


@dataclass(frozen=True)
class TissueTables:
    """Per-label property arrays of length 256, indexed by label id."""

    proton_density: np.ndarray
    pdff: np.ndarray
    t1_water_s: np.ndarray
    r2star: np.ndarray


def tissue_tables(overrides: Mapping[str, Mapping[str, float]] | None = None) -> TissueTables:
    """Lookup tables of tissue properties, with per-label overrides.

    Parameters
    ----------
    overrides : mapping label name → {property: value}, optional
        E.g. ``{"liver": {"pdff": 0.12, "r2star": 41.0}}``; property names as in :class:`Tissue`.

    Returns
    -------
    TissueTables
    """
    fields = ("proton_density", "pdff", "t1_water_s", "r2star")
    tables = {f: np.zeros(256) for f in fields}
    tables["t1_water_s"][:] = 1.0
    for name, tissue in DEFAULT_TISSUES.items():
        for f in fields:
            tables[f][LABELS[name]] = getattr(tissue, f)
    for name, props in (overrides or {}).items():
        unknown = set(props) - set(fields)
        if unknown:
            raise KeyError(f"unknown tissue properties {sorted(unknown)} for {name}")
        for f, value in props.items():
            tables[f][LABELS[name]] = value
    return TissueTables(**tables)
