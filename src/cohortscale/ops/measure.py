"""Image-derived phenotypes from label volumes and fitted maps: volumes, ROI medians, and 3D labels carried
into a 2D slice through both affines.

Plain functions of arrays (no store, no Dask). Conventions:

- volumes are ``(slices, rows, columns)`` and slices ``(rows, columns)``; an affine maps
  ``(column, row, slice, 1)`` to patient LPS mm, so two images are related only through patient space;
- label volumes carry names through a ``{label id: name}`` mapping (a model card's or the store array's),
  so the measures work for any model whose names follow the synthetic cohort's
  (:mod:`cohortscale.synth.labels`);
- ROI statistics are medians (robust to the boundary pixels a coarse label grid mislabels) with the count
  of pixels they were taken over.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

#: Thigh muscle compartments whose sum is total thigh muscle volume (gluteal and iliopsoas excluded).
THIGH_COMPARTMENTS = ("anterior", "posterior", "medial")
SIDES = ("left", "right")
#: Body parts (less their subcutaneous fat) smaller than this share of a slice's largest are arms.
ARM_CORE_FRACTION = 0.25
#: How far an arm claims subcutaneous fat, mm: its own fat layer (6–18 mm in the synthetic anatomy),
#: not the hips' fat where the hands rest against them.
ARM_FAT_MM = 10.0
#: IDPs of one multi-echo slice (suffixed with the field by the measure stage).
MARROW_IDPS = ("vbm_roi_voxels", "vbm_pdff", "vbm_ff", "vbm_r2star", "vbm_iron", "vbm_levels")
LIVER_IDPS = ("liver_roi_voxels", "liver_pdff", "liver_r2star")
#: Reason of slice measures missing because the visit has no fitted multi-echo slice.
NO_SLICE = "no_multiecho_slice"
#: Groups of :func:`body_measures` that report a reason when their measures are missing.
BODY_GROUPS = ("thigh", "fat", "femur")
#: Names a vertebral-body label may carry: one merged class, or its levels C3–S1.
VERTEBRA_NAMES = (
    "vertebral_body",
    *(f"C{i}" for i in range(3, 8)),
    *(f"T{i}" for i in range(1, 13)),
    *(f"L{i}" for i in range(1, 6)),
    "S1",
)


@dataclass(frozen=True)
class RoiStatistic:
    """Median of a map over a region, and how many pixels (or voxels) it was taken over."""

    median: float
    count: int


def voxel_volume_cm3(affine: np.ndarray) -> float:
    """Volume of one voxel of an image with ``affine``, cm³ (|det| of its linear part, mm³ / 1000)."""
    return abs(float(np.linalg.det(np.asarray(affine, dtype=np.float64)[:3, :3]))) / 1000.0


def ids_named(names: Mapping[int, str], wanted: Iterable[str]) -> list[int]:
    """Label ids whose name is one of ``wanted``."""
    wanted = set(wanted)
    return sorted(int(i) for i, name in names.items() if name in wanted)


def label_volumes_cm3(labels: np.ndarray, affine: np.ndarray, names: Mapping[int, str]) -> dict[str, float]:
    """Volume of every named label, cm³ (voxel count × voxel volume; 0 for labels absent from the volume).

    Parameters
    ----------
    labels : ndarray of int, (slices, rows, columns)
    affine : ndarray, (4, 4)
        Voxel → LPS mm of ``labels``.
    names : mapping of int to str
        Label id → name; id 0 (background) is skipped.
    """
    counts = np.bincount(np.asarray(labels).ravel(), minlength=max(names, default=0) + 1)
    voxel = voxel_volume_cm3(affine)
    return {name: float(counts[i]) * voxel for i, name in sorted(names.items()) if i != 0}


def thigh_muscle_measures(volumes_cm3: Mapping[str, float]) -> dict[str, float]:
    """Thigh muscle IDPs from per-compartment volumes ``thigh_<compartment>_<side>`` (cm³).

    Returns
    -------
    dict
        ``thigh_muscle_{left,right}_cm3`` (sum of the compartments of a leg); ``tmv_cm3`` (both legs);
        ``pa_ratio`` (posterior / anterior over both legs); ``thigh_asymmetry`` ((left − right) / their
        mean). NaN where a denominator is zero.
    """
    side_total = {side: sum(volumes_cm3[f"thigh_{c}_{side}"] for c in THIGH_COMPARTMENTS) for side in SIDES}
    posterior = sum(volumes_cm3[f"thigh_posterior_{s}"] for s in SIDES)
    anterior = sum(volumes_cm3[f"thigh_anterior_{s}"] for s in SIDES)
    left, right = side_total["left"], side_total["right"]
    return {
        "thigh_muscle_left_cm3": left,
        "thigh_muscle_right_cm3": right,
        "tmv_cm3": left + right,
        "pa_ratio": posterior / anterior if anterior > 0 else float("nan"),
        "thigh_asymmetry": (left - right) / (0.5 * (left + right)) if left + right > 0 else float("nan"),
    }


def sample_on_slice(
    volume: np.ndarray,
    volume_affine: np.ndarray,
    slice_shape: tuple[int, int],
    slice_affine: np.ndarray,
    fill: float | int = 0,
) -> np.ndarray:
    """Values of ``volume`` at the pixel centres of a 2D slice, nearest voxel (no interpolation).

    Each pixel ``(row, column)`` of the slice is placed in patient space by ``slice_affine`` (at the
    slice's centre plane), then into the volume's index space by the inverse of ``volume_affine``; pixels
    whose nearest voxel lies outside the volume get ``fill``. Nearest-neighbour keeps label ids intact and
    makes an intensity sampled this way come from the same voxels as the labels sampled this way.

    Parameters
    ----------
    volume : ndarray, (slices, rows, columns)
    volume_affine, slice_affine : ndarray, (4, 4)
        ``(column, row, slice, 1)`` → LPS mm of the volume and of the slice.
    slice_shape : (rows, columns)
    fill : scalar
        Value outside the volume.

    Returns
    -------
    ndarray, ``slice_shape``, dtype of ``volume``
    """
    rows, columns = slice_shape
    jj, ii = np.meshgrid(np.arange(rows), np.arange(columns), indexing="ij")
    pixels = np.stack([ii, jj, np.zeros_like(ii), np.ones_like(ii)], axis=-1).astype(np.float64)
    to_volume = np.linalg.inv(np.asarray(volume_affine, dtype=np.float64)) @ np.asarray(
        slice_affine, dtype=np.float64
    )
    index = np.rint(pixels @ to_volume.T)[..., :3].astype(np.int64)  # (column, row, slice)
    shape = np.asarray(volume.shape[::-1])
    inside = ((index >= 0) & (index < shape)).all(axis=-1)
    out = np.full(slice_shape, fill, dtype=volume.dtype)
    x, y, z = (index[..., k][inside] for k in range(3))
    out[inside] = volume[z, y, x]
    return out


def roi_median(values: np.ndarray, mask: np.ndarray) -> RoiStatistic:
    """Median of the finite ``values`` inside ``mask`` (NaN with count 0 when there are none)."""
    chosen = np.asarray(values)[np.asarray(mask, dtype=bool)]
    chosen = chosen[np.isfinite(chosen)]
    if chosen.size == 0:
        return RoiStatistic(float("nan"), 0)
    return RoiStatistic(float(np.median(chosen)), int(chosen.size))


def levels_crossed(slice_labels: np.ndarray, names: Mapping[int, str]) -> str:
    """The vertebral levels a slice's projected labels cross, head to foot, joined by ``+`` ("T12+L1");
    ``""`` when it crosses none (a merged ``vertebral_body`` class has no level)."""
    present = set(np.unique(slice_labels).tolist())
    order = VERTEBRA_NAMES[1:]
    found = {names[i] for i in present if i in names and names[i] in order}
    return "+".join(sorted(found, key=order.index))


def superior_extent_index(mask: np.ndarray, foot_to_head: bool) -> int | None:
    """Slice index of the most superior (head-most) slice holding any of ``mask``; None when empty."""
    slices = np.flatnonzero(np.asarray(mask).any(axis=(1, 2)))
    if slices.size == 0:
        return None
    return int(slices.max() if foot_to_head else slices.min())


def body_mask(signal: np.ndarray, fraction: float) -> np.ndarray:
    """The body: voxels whose signal (e.g. fused water + fat) exceeds ``fraction`` of its 99th percentile."""
    signal = np.nan_to_num(np.asarray(signal, dtype=np.float32))
    return signal > fraction * float(np.percentile(signal, 99))


def trunk_subcutaneous(
    subcutaneous: np.ndarray,
    body: np.ndarray,
    pixel_mm: float,
    arm_core_fraction: float = ARM_CORE_FRACTION,
    arm_fat_mm: float = ARM_FAT_MM,
) -> np.ndarray:
    """The subcutaneous fat of the trunk (and hips), without the arms', slice by slice.

    Each slice's body less its subcutaneous fat falls into cores: the trunk's (the largest), the arms'
    (smaller than ``arm_core_fraction`` of it) and, low in the range, the hips'. Fat belongs to the core
    that reaches it first growing through the fat (geodesic, not straight-line, distance: an arm lying against
    the trunk touches its fat only where they meet). Arm cores stop growing after ``arm_fat_mm``, an arm's
    fat layer, so that where an arm touches the hips it does not claim their thicker fat beyond.

    Parameters
    ----------
    subcutaneous, body : ndarray of bool, (slices, rows, columns)
    pixel_mm : float
        In-plane pixel size, mm.
    arm_core_fraction : float
        Cores smaller than this share of a slice's largest are arms.
    arm_fat_mm : float
        How far an arm core claims fat, mm.

    Returns
    -------
    ndarray of bool
        The fat of every core but the arms'.
    """
    subcutaneous = np.asarray(subcutaneous, dtype=bool)
    in_plane = np.zeros((3, 3, 3), dtype=bool)
    in_plane[1] = ndimage.generate_binary_structure(2, 1)
    # Opening drops the thin rims where an image's body outline runs a pixel beyond the labelled fat: they
    # are no body part, and as small cores they would claim the outer fat like an arm.
    solid = ndimage.binary_opening(np.asarray(body, dtype=bool) & ~subcutaneous, structure=in_plane)
    cores, n = ndimage.label(solid, structure=in_plane)
    if n == 0:
        return np.zeros_like(subcutaneous)
    ids = np.arange(1, n + 1)
    sizes = ndimage.sum_labels(np.ones(cores.shape), cores, index=ids)
    slice_index = np.broadcast_to(np.arange(cores.shape[0])[:, None, None], cores.shape)
    core_slice = ndimage.minimum(slice_index, cores, index=ids).astype(np.int64)
    largest = np.zeros(cores.shape[0])
    np.maximum.at(largest, core_slice, sizes)
    big = np.concatenate([[False], sizes >= arm_core_fraction * largest[core_slice]])
    arm_steps = max(1, round(arm_fat_mm / pixel_mm))
    owner, free, step = cores.copy(), subcutaneous.copy(), 0
    while True:
        growing = owner if step < arm_steps else np.where(big[owner], owner, 0)
        reached = ndimage.grey_dilation(growing, footprint=in_plane[1:2])
        claimed = free & (reached > 0)
        if not claimed.any():
            return subcutaneous & big[owner]
        owner[claimed] = reached[claimed]
        free &= ~claimed
        step += 1


@dataclass(frozen=True)
class SliceMaps:
    """A fitted multi-echo slice: maps on its pixel grid and where it lies.

    Attributes
    ----------
    pdff : ndarray, (rows, columns)
        PDFF, fraction 0–1.
    r2star : ndarray, (rows, columns)
        R2*, s⁻¹.
    iron : ndarray, (rows, columns)
        Iron, mg/g.
    usable : ndarray of bool, (rows, columns)
        Pixels whose fit may enter an ROI statistic (fitted, not flagged).
    affine : ndarray, (4, 4)
        (column, row, slice) → LPS mm.
    """

    pdff: np.ndarray
    r2star: np.ndarray
    iron: np.ndarray
    usable: np.ndarray
    affine: np.ndarray

    @property
    def pixel_area_mm2(self) -> float:
        """In-plane area of one pixel, mm²."""
        return float(np.linalg.norm(np.cross(self.affine[:3, 0], self.affine[:3, 1])))


def marrow_measures(
    slice_maps: SliceMaps | None,
    labels: np.ndarray,
    labels_affine: np.ndarray,
    names: Mapping[int, str],
    fused_ff: np.ndarray,
    min_roi_area_mm2: float,
) -> tuple[dict[str, float | str], str]:
    """Vertebral bone-marrow IDPs of one multi-echo slice (STUDIES.md §1).

    The 3D vertebral-body labels are carried into the slice (:func:`sample_on_slice`), giving the 2D ROI;
    PDFF, R2* and iron are its medians over usable pixels, and the Dixon fat fraction is the median of the
    fused FF at the same places (the same nearest voxels the labels came from).

    Parameters
    ----------
    slice_maps : SliceMaps or None
        None when the visit has no fitted slice.
    labels : ndarray of int, (slices, rows, columns)
        Label volume on the fused grid, with ``labels_affine``.
    names : mapping of int to str
        Label names; vertebral bodies are named ``vertebral_body`` or by level (``"L1"``).
    fused_ff : ndarray, (slices, rows, columns)
        Dixon fat fraction 0–1 on the same grid as ``labels``.
    min_roi_area_mm2 : float
        Smaller ROIs are excluded (UK Biobank's 64 voxels of the 20254 slice are 190 mm²).

    Returns
    -------
    idps : dict
        ``vbm_roi_voxels`` (pixels of the ROI), ``vbm_pdff`` (%), ``vbm_ff`` (%), ``vbm_r2star`` (s⁻¹),
        ``vbm_iron`` (mg/g), ``vbm_levels`` (levels crossed, e.g. ``"L1"``); NaN (``""``) when excluded.
    reason : str
        ``""`` when measured, else ``"no_multiecho_slice"``, ``"no_intersection"`` (the slice misses every
        vertebral body) or ``"roi_too_small"``.
    """
    idps: dict[str, float | str] = {name: np.nan for name in MARROW_IDPS}
    idps["vbm_levels"] = ""
    if slice_maps is None:
        return idps, NO_SLICE
    shape = slice_maps.pdff.shape
    projected = sample_on_slice(labels, labels_affine, shape, slice_maps.affine)
    roi = np.isin(projected, ids_named(names, VERTEBRA_NAMES))
    idps.update(vbm_roi_voxels=float(roi.sum()), vbm_levels=levels_crossed(projected[roi], names))
    if not roi.any():
        return idps, "no_intersection"
    if roi.sum() * slice_maps.pixel_area_mm2 < min_roi_area_mm2:
        return idps, "roi_too_small"
    usable = roi & slice_maps.usable
    ff = sample_on_slice(
        fused_ff.astype(np.float32, copy=False), labels_affine, shape, slice_maps.affine, np.nan
    )
    idps.update(
        vbm_pdff=100.0 * roi_median(slice_maps.pdff, usable).median,
        vbm_ff=100.0 * roi_median(ff, roi).median,
        vbm_r2star=roi_median(slice_maps.r2star, usable).median,
        vbm_iron=roi_median(slice_maps.iron, usable).median,
    )
    return idps, ""


def liver_measures(
    slice_maps: SliceMaps | None, labels: np.ndarray, labels_affine: np.ndarray, names: Mapping[int, str]
) -> tuple[dict[str, float], str]:
    """Liver PDFF (%) and R2* (s⁻¹): medians over the liver label carried into the slice (None: the visit
    has no fitted slice).

    Returns
    -------
    idps : dict
        ``liver_roi_voxels``, ``liver_pdff``, ``liver_r2star``.
    reason : str
        ``""`` when measured, else ``"no_multiecho_slice"`` or ``"no_liver_in_slice"``.
    """
    if slice_maps is None:
        return {name: np.nan for name in LIVER_IDPS}, NO_SLICE
    projected = sample_on_slice(labels, labels_affine, slice_maps.pdff.shape, slice_maps.affine)
    liver = np.isin(projected, ids_named(names, ["liver"])) & slice_maps.usable
    pdff, r2star = roi_median(slice_maps.pdff, liver), roi_median(slice_maps.r2star, liver)
    idps = {
        "liver_roi_voxels": float(pdff.count),
        "liver_pdff": 100.0 * pdff.median,
        "liver_r2star": r2star.median,
    }
    return idps, "" if pdff.count else "no_liver_in_slice"


def body_measures(
    labels: np.ndarray,
    affine: np.ndarray,
    names: Mapping[int, str],
    fused_ff: np.ndarray,
    body: np.ndarray,
    foot_to_head: bool,
) -> tuple[dict[str, float], dict[str, str]]:
    """Muscle, fat-depot, organ and femoral-marrow IDPs of one fused label volume (STUDIES.md §1–2).

    Parameters
    ----------
    labels : ndarray of int, (slices, rows, columns)
    affine : ndarray, (4, 4)
    names : mapping of int to str
        Label names (:mod:`cohortscale.synth.labels` names: ``thigh_anterior_left``, ``visceral_fat``, …).
    fused_ff : ndarray, (slices, rows, columns)
        Dixon fat fraction 0–1 on the grid of ``labels``.
    body : ndarray of bool, (slices, rows, columns)
        The body (:func:`body_mask`): a label set need not label every tissue, and the trunk is told
        from the arms by the body's extent.
    foot_to_head : bool
        Whether the slice index runs from the feet to the head.

    Returns
    -------
    idps : dict
        ``thigh_<compartment>_<side>_cm3``, ``thigh_muscle_<side>_cm3``, ``tmv_cm3``, ``pa_ratio``,
        ``thigh_asymmetry``; ``vat_l``, ``liver_volume_l``; ``asat_l`` (subcutaneous fat of the trunk from
        the top of the femoral heads to the top of T9, as UK Biobank defines it); ``femur_ff_<side>`` (%,
        median Dixon FF of the femur label). NaN where the labels needed are absent.
    reasons : dict
        Per measure group (``thigh``, ``fat``, ``femur``) why it is NaN; absent when measured.
    """
    volumes = label_volumes_cm3(labels, affine, names)
    idps: dict[str, float] = {}
    reasons: dict[str, str] = {}
    compartments = [f"thigh_{c}_{s}" for s in SIDES for c in THIGH_COMPARTMENTS]
    if all(volumes.get(name, 0.0) > 0 for name in compartments):
        idps.update({f"{name}_cm3": volumes[name] for name in compartments})
        idps.update(thigh_muscle_measures(volumes))
    else:
        reasons["thigh"] = "thigh_labels_absent"
    idps["vat_l"] = volumes.get("visceral_fat", np.nan) / 1000.0
    idps["liver_volume_l"] = volumes.get("liver", np.nan) / 1000.0
    idps["asat_l"], asat_reason = _asat_litres(labels, affine, names, body, foot_to_head)
    if asat_reason:
        reasons["fat"] = asat_reason
    for side in SIDES:
        femur = np.isin(labels, ids_named(names, [f"femur_{side}"]))
        idps[f"femur_ff_{side}"] = 100.0 * roi_median(fused_ff, femur).median
        if not femur.any():
            reasons["femur"] = "femur_labels_absent"
    return idps, reasons


def _asat_litres(
    labels: np.ndarray, affine: np.ndarray, names: Mapping[int, str], body: np.ndarray, foot_to_head: bool
) -> tuple[float, str]:
    """Trunk subcutaneous fat between the femoral-head top and the T9 top, litres, or NaN and why."""
    femur_top = superior_extent_index(
        np.isin(labels, ids_named(names, ["femur_left", "femur_right"])), foot_to_head
    )
    t9_top = superior_extent_index(np.isin(labels, ids_named(names, ["T9"])), foot_to_head)
    if femur_top is None:
        return float("nan"), "no_femur_for_asat"
    if t9_top is None:
        return float("nan"), "no_t9_for_asat"
    # Each landmark's true top lies, on average, half a slice above the centre of the last slice holding
    # it, so the slices above the femur's up to T9's (one end included) span the true distance.
    rows = slice(femur_top + 1, t9_top + 1) if foot_to_head else slice(t9_top, femur_top)
    if rows.stop <= rows.start:
        return float("nan"), "t9_not_above_femur"
    subcutaneous = np.isin(labels[rows], ids_named(names, ["subcutaneous_fat"]))
    pixel_mm = float(np.sqrt(np.prod(np.linalg.norm(np.asarray(affine)[:3, :2], axis=0))))
    trunk = trunk_subcutaneous(subcutaneous, body[rows], pixel_mm)
    return float(np.count_nonzero(trunk)) * voxel_volume_cm3(affine) / 1000.0, ""
