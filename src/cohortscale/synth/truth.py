"""Ground truth of a synthetic visit: volumes and ROI statistics measured on the exact anatomy, and the
noiseless arrays written under ``truth/<eid>_<instance>/maps.zarr``.

Volumes are counted on the full-resolution fused grid (2.232 × 2.232 × 3 mm) whatever the image scale, so
they are the same for a ``--scale 0.25`` cohort and a full-scale one. Definitions:

- thigh compartments: anterior, posterior and medial thigh muscle per leg; ``tmv_cm3`` is their sum over
  both legs (gluteal and iliopsoas excluded); ``pa_ratio`` = posterior / anterior over both legs;
  ``thigh_asymmetry`` = (left − right) / mean;
- ``vat_l``: visceral fat label; ``asat_l``: subcutaneous fat outside the arms from the top of the femoral
  heads to the top of T9, as UK Biobank's body-composition IDPs define it (the hips' fat above the femoral
  heads is in, as it is in the images);
- ``vbm_*``: medians over the vertebral-body pixels of the multi-echo slice (the bone-marrow ROI).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import zarr

from cohortscale.geometry import Grid
from cohortscale.ops.fatwater import iron_from_r2star
from cohortscale.ops.swaps import SEGMENTS, segment_station
from cohortscale.synth.anatomy import Body
from cohortscale.synth.labels import LABELS, SIDES, THIGH_COMPARTMENTS, VERTEBRA_IDS
from cohortscale.synth.shapes import paint
from cohortscale.synth.signal import DixonTables, SmoothField


def volume_idps(body: Body, grid: Grid) -> dict[str, float]:
    """Muscle and fat volumes of ``body`` counted on ``grid`` (see module docstring for definitions).

    Returns
    -------
    dict
        ``thigh_{anterior,posterior,medial}_{left,right}_cm3``, ``gluteal_{side}_cm3``,
        ``thigh_muscle_{side}_cm3``, ``tmv_cm3``, ``pa_ratio``, ``thigh_asymmetry``, ``vat_l``,
        ``asat_l``, ``liver_volume_l``.
    """
    labels = paint(grid, body.parts)
    voxel_cm3 = float(np.prod(grid.spacing)) / 1000.0
    counts = np.bincount(labels.ravel(), minlength=256)

    def cm3(name: str) -> float:
        return float(counts[LABELS[name]]) * voxel_cm3

    idps: dict[str, float] = {}
    for side in SIDES:
        for comp in THIGH_COMPARTMENTS:
            idps[f"thigh_{comp}_{side}_cm3"] = cm3(f"thigh_{comp}_{side}")
        idps[f"gluteal_{side}_cm3"] = cm3(f"gluteal_{side}")
        idps[f"thigh_muscle_{side}_cm3"] = sum(idps[f"thigh_{c}_{side}_cm3"] for c in THIGH_COMPARTMENTS)
    left, right = idps["thigh_muscle_left_cm3"], idps["thigh_muscle_right_cm3"]
    idps["tmv_cm3"] = left + right
    posterior = sum(idps[f"thigh_posterior_{s}_cm3"] for s in SIDES)
    anterior = sum(idps[f"thigh_anterior_{s}_cm3"] for s in SIDES)
    idps["pa_ratio"] = posterior / anterior
    idps["thigh_asymmetry"] = (left - right) / (0.5 * (left + right))
    idps["vat_l"] = cm3("visceral_fat") / 1000
    idps["liver_volume_l"] = cm3("liver") / 1000
    xs, ys, zs = grid.axis_coordinates()
    z_lo, z_hi = body.asat_z_range
    rows = (zs >= z_lo) & (zs <= z_hi)
    subcut = labels[rows] == LABELS["subcutaneous_fat"]
    points = (xs[None, None, :], ys[None, :, None], zs[rows][:, None, None])
    arm = np.zeros(subcut.shape, dtype=bool)
    for tube in body.arms:
        arm |= tube.inside(*points)
    idps["asat_l"] = float(np.count_nonzero(subcut & ~arm)) * voxel_cm3 / 1000
    return idps


def slice_idps(maps: Mapping[str, np.ndarray], dixon: DixonTables, suffix: str) -> dict[str, float]:
    """Bone-marrow and liver statistics of a multi-echo slice's true maps.

    Parameters
    ----------
    maps : mapping
        ``labels``, ``pdff`` (fraction) and ``r2star`` (s⁻¹) on the slice.
    dixon : DixonTables
        Gives the Dixon fat fraction the neck-to-knee volume shows at the same place.
    suffix : str
        Appended to every key (e.g. ``"_20254"``).
    """
    labels = maps["labels"]
    roi = np.isin(labels, np.asarray(VERTEBRA_IDS))
    liver = labels == LABELS["liver"]
    r2_roi = _median(maps["r2star"], roi)
    return {
        f"vbm_roi_voxels{suffix}": float(roi.sum()),
        f"vbm_pdff{suffix}": 100.0 * _median(maps["pdff"], roi),
        f"vbm_ff{suffix}": 100.0 * _median(dixon.ff[labels], roi),
        f"vbm_r2star{suffix}": r2_roi,
        f"vbm_iron{suffix}": float(iron_from_r2star(r2_roi)),
        f"liver_pdff{suffix}": 100.0 * _median(maps["pdff"], liver),
        f"liver_r2star{suffix}": _median(maps["r2star"], liver),
    }


def _median(values: np.ndarray, mask: np.ndarray) -> float:
    return float(np.median(values[mask])) if mask.any() else float("nan")


def write_arrays(
    group: zarr.Group, arrays: Mapping[str, np.ndarray], grid: Grid, attrs: Mapping[str, Any] | None = None
) -> None:
    """Write arrays (one chunk each) and the grid's affine into a Zarr group."""
    group.attrs.update({"affine": grid.affine.tolist(), "shape_zyx": list(grid.shape), **(attrs or {})})
    for name, arr in arrays.items():
        group.create_array(name, data=np.ascontiguousarray(arr), chunks=arr.shape, overwrite=True)


def fused_truth(
    body: Body, grid: Grid, dixon: DixonTables, pdff: np.ndarray, s0: float, bias: SmoothField
) -> dict[str, np.ndarray]:
    """Labels, noiseless water and fat (coil bias included, no noise, no slab roll-off), Dixon FF and
    true PDFF (``pdff``: per-label table) on the fused grid, in the Dixon DICOM's intensity units."""
    labels = paint(grid, body.parts)
    gain = np.float32(s0) * bias.on_grid(grid)
    return {
        "labels": labels,
        "water": dixon.water.astype(np.float32)[labels] * gain,
        "fat": dixon.fat.astype(np.float32)[labels] * gain,
        "ff": dixon.ff.astype(np.float32)[labels],
        "pdff": pdff.astype(np.float32)[labels],
    }


def swapped_segments(anomalies: pd.DataFrame, eid: int, instance: int) -> set[str]:
    """Segments (``"3"``, ``"5L"``; see :data:`cohortscale.ops.swaps.SEGMENTS`) whose fat and water were
    exchanged in a visit, from ``truth/anomalies.csv``.

    A whole-station swap exchanges both legs of a leg station; a one-leg swap on top of it exchanges that
    leg back (the generator applies the station swap first).
    """
    swapped: set[str] = set()
    rows = anomalies[(anomalies["eid"] == eid) & (anomalies["instance"] == instance)]
    for anomaly, details in zip(rows["anomaly"], rows["details"], strict=True):
        info = json.loads(details)
        if anomaly == "swap_station":
            swapped ^= {s for s in SEGMENTS if segment_station(s) == info["station"]}
        elif anomaly == "swap_leg":
            swapped ^= {f"{info['station']}{info['side'][0].upper()}"}
    return swapped
