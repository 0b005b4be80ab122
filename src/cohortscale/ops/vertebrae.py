"""Vertebral levels by counting: split a one-class vertebral-body mask into bodies and name each level.

A patch-based segmentation network segments "vertebral body" well but cannot tell L3 from L4: adjacent
bodies look alike and the level is known only by counting. So the network segments one body class and
this module names the levels:

1. :func:`split_vertebrae`: connected components of the body mask (the discs, not in the mask, separate
   the bodies); specks below a minimum volume are dropped; a component whose head–foot cross-section
   area has a narrow neck is cut there (two bodies touching through a thin bridge); a component much
   taller than its neighbours is cut into equal slabs (two bodies fused through a disc labelled as body,
   which leaves no neck);
2. :func:`assign_levels`: the bodies in head–foot order of their centroids, the most caudal one that
   passes the anchor checks named S1, the others counted upward from it;
3. :func:`label_vertebrae`: both on a label volume, returning it with level ids (31–53, see
   :data:`cohortscale.synth.labels.VERTEBRA_IDS`).

Volumes are ``(slices, rows, columns)`` with slices transverse (the index z axis runs head–foot, either
way: say which with ``foot_to_head`` or the grid's affine). Cuts are planes of constant slice index, so
they assume bodies roughly perpendicular to the slices (true of transverse body MRI up to the lordosis
of the lower lumbar spine, whose bodies stay separated by their discs anyway).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage

from cohortscale.synth.labels import LABELS, VERTEBRAE

#: Components smaller than this are specks, not bodies, mm³: the smallest body (C3, ~12 mm tall,
#: ~18 × 16 mm across) holds ~2700 mm³, a body clipped by the field of view at least a slab of it.
MIN_BODY_VOLUME_MM3 = 500.0
#: A slice whose body area is at most this share of the smaller of the areas above and below it is a
#: neck between two bodies (a bridge through the disc); the cross-section within one body varies far less.
NECK_AREA_RATIO = 0.5
#: A neck cut must leave at least this much body on each side, mm: shorter ends are tapering endplates or
#: partial-volume rims of one body, not a second body (the shortest body, C3, is ~12 mm tall).
MIN_PART_HEIGHT_MM = 8.0
#: A part spanning more than this many of its neighbours' pitches (body height plus one disc gap) holds
#: several bodies fused through their discs: adjacent bodies differ in height by less than ~15 %, two
#: fused ones span two pitches.
MAX_HEIGHT_RATIO = 1.6
#: Two parts sharing more than this share of the slices of the shorter of them lie side by side, not one
#: above the other: bodies are stacked along the spine, so the smaller (by volume) is bone segmented as
#: body beside the column (a sacral ala, the sacrum below S1, a pedicle). Adjacent bodies share no slice on
#: the held-out full-scale participants, and a tilted disc lets them share only a few.
MAX_SIDE_OVERLAP = 0.5
#: Only parts at least this many slices tall are compared so: a body spans one to three 12 mm slices, where
#: one slice through a disc can hold both of its neighbours.
MIN_SIDE_SLICES = 4
#: A part holding less than this share of the median volume of its nearest neighbours (``HEIGHT_NEIGHBOURS``
#: parts along the slice axis) is a fragment of other bone, not a body: adjacent bodies differ by far
#: less (the largest step of the column, C7 to T1–T2, is ~0.4: 123 voxels against 284 and 312 in a
#: held-out full-scale participant).
MIN_VOLUME_RATIO = 0.25
#: Bodies (nearest along the spine, from other parts) whose median height is a part's reference height:
#: the median of four ignores one false positive or still-fused neighbour among them.
HEIGHT_NEIGHBOURS = 4
#: Rounds of the height split, each taking its reference from the bodies as the previous round split
#: them (neighbours that are fused too would otherwise inflate the reference).
HEIGHT_ROUNDS = 5
#: The anchor body may lie at most this far (head–foot gap between extents) from the next body along the
#: spine, mm: discs are under ~15 mm, so a larger gap means a false positive off the column (the femur).
MAX_ANCHOR_GAP_MM = 30.0
#: When a pelvis mask is given, the S1 anchor must come this close to it, mm. S1 sits on the sacrum (part
#: of the pelvis label): 15–30 mm from it in the synthetic anatomy (whose sacrum lies behind and below S1,
#: measured on 3–12 mm slices), while L5 stays ≥ 45 mm away, so a missed S1 is not replaced by L5.
MAX_ANCHOR_TO_PELVIS_MM = 35.0
#: At most this many bodies at the anchor end may be skipped as false positives: when more fail the
#: checks, the anchor end is wrong (a flipped slice direction, a field of view without the pelvis region)
#: and naming the first body that passes would drop the spine below it.
MAX_SKIPPED_BODIES = 2

#: Label id of the pelvis (which includes the sacrum below S1) in the synthetic and model label sets.
PELVIS_ID = LABELS["pelvis"]

#: Name of the merged class a segmentation model gives every vertebral body (the levels look alike, so
#: they are named by counting, :func:`label_vertebrae`); the segmentation stage expands it into levels.
VERTEBRAL_BODY_CLASS = "vertebral_body"


class AnchorNotFoundError(ValueError):
    """No body passes the anchor checks, so no level can be named."""


def foot_to_head_from_affine(affine: ArrayLike) -> bool:
    """Whether the slice index runs from the feet to the head, from a grid's affine.

    Parameters
    ----------
    affine : array_like, shape (4, 4)
        Maps voxel ``(column, row, slice, 1)`` to LPS mm (+z is the head).

    Returns
    -------
    bool
        True when the slice index increases towards the head.

    Raises
    ------
    ValueError
        If the slice axis is not the index axis closest to head–foot (not a transverse stack).
    """
    a = np.asarray(affine, dtype=float)
    z_row = a[2, :3]  # LPS z change per step along (column, row, slice)
    if int(np.argmax(np.abs(z_row))) != 2:
        raise ValueError(f"slices are not transverse: LPS z per index step is {z_row.tolist()}")
    return bool(z_row[2] > 0)


def split_vertebrae(
    body_mask: ArrayLike,
    spacing_mm: Sequence[float],
    *,
    min_volume_mm3: float = MIN_BODY_VOLUME_MM3,
    neck_area_ratio: float = NECK_AREA_RATIO,
    min_part_height_mm: float = MIN_PART_HEIGHT_MM,
    max_height_ratio: float | None = MAX_HEIGHT_RATIO,
    max_side_overlap: float | None = MAX_SIDE_OVERLAP,
    min_volume_ratio: float | None = MIN_VOLUME_RATIO,
) -> tuple[np.ndarray, int]:
    """Separate vertebral bodies in a one-class body mask.

    Components are face-connected (6-neighbour) so that a disc one voxel thick keeps two bodies apart.
    Each component larger than ``min_volume_mm3`` is then cut

    - at necks of its cross-section area profile along the slice axis: the interior slice of least area,
      if that area is at most ``neck_area_ratio`` of the smaller of the largest areas above and below it
      and each side keeps ``min_part_height_mm``; repeated on each side. The neck slice itself gets no body
      (label 0): it is the bridge, most likely disc;
    - not at all when it lies beside a larger part (the two sharing more than ``max_side_overlap`` of the
      slices of the shorter, both at least ``MIN_SIDE_SLICES`` tall): bodies are stacked, so it is other
      bone beside the column, and is dropped;
    - not at all when it holds less than ``min_volume_ratio`` of the median volume of the
      ``HEIGHT_NEIGHBOURS`` parts nearest to it along the slice axis: adjacent bodies differ in size by
      far less, so it is a fragment of other bone (a pedicle or a rib head behind the bodies), and is
      dropped;
    - into ``n`` slabs of equal slice count when, after the neck cuts, it spans more than
      ``max_height_ratio`` pitches: ``(height + gap) / (reference + gap)``, where the reference is the
      median height of the ``HEIGHT_NEIGHBOURS`` nearest bodies of other parts and the gap the median
      disc gap between parts; ``n`` is that ratio rounded. This splits bodies fused through a disc
      segmented as body (no neck). It is iterated (``HEIGHT_ROUNDS``) so that fused neighbours, once
      split, stop inflating the reference. The slab boundaries are equal divisions of the part, so they
      can be a slice off where adjacent bodies differ in height.

    On slices no thicker than the thinnest disc (~4 mm: the full-scale 3 mm grid) every disc of a true
    segmentation shows, and only segmentation errors need these cuts. On thicker slices discs go unseen
    between slices and the count of a fused run rests on its height alone: at 12 mm (the scale-0.25 demo)
    it is often a body off.

    Parameters
    ----------
    body_mask : array_like of bool, shape (Z, Y, X)
        Vertebral-body voxels (any level), slices transverse.
    spacing_mm : (float, float, float)
        Voxel spacing along (z, y, x), mm.
    min_volume_mm3 : float
        Components smaller than this are dropped, mm³.
    neck_area_ratio : float
        Neck depth (area at the neck over the smaller peak area) at or below which a component is cut.
    min_part_height_mm : float
        Least height a neck cut leaves on each side, mm.
    max_height_ratio : float or None
        Pitches spanned above which a part is split into equal slabs; None turns the height split off.
    max_side_overlap : float or None
        Share of the shorter part's slices two parts may share before the smaller is dropped; None keeps
        all.
    min_volume_ratio : float or None
        Least share of its neighbours' median volume a part must hold; None keeps all.

    Returns
    -------
    components : ndarray of int32, shape (Z, Y, X)
        Body labels 1..n, numbered along the slice index by centroid; 0 elsewhere (background, specks,
        neck slices).
    n : int
        Number of bodies.
    """
    mask = np.asarray(body_mask, dtype=bool)
    if mask.ndim != 3:
        raise ValueError(f"body_mask must be 3-D (Z, Y, X), got shape {mask.shape}")
    spacing = _spacing(spacing_mm)
    dz = float(spacing[0])
    nz = mask.shape[0]
    components, n = ndimage.label(mask)  # default structure: face connectivity
    volume = np.bincount(components.ravel(), minlength=n + 1) * float(np.prod(spacing))
    keep = volume >= min_volume_mm3
    keep[0] = False
    profile = _slice_profiles(components, n)

    # Neck cuts: each kept component becomes one or more parts, each a slice range [start, stop).
    min_slices = max(1, int(np.ceil(min_part_height_mm / dz)))
    parts: list[tuple[int, int, int]] = []  # (component, start, stop)
    for k in np.flatnonzero(keep):
        occupied = np.flatnonzero(profile[k])
        start, stop = int(occupied[0]), int(occupied[-1]) + 1
        for a, b in _neck_segments(profile[k, start:stop], neck_area_ratio, min_slices):
            parts.append((int(k), start + a, start + b))
    if max_side_overlap is not None:
        parts = _stacked_parts(parts, profile, max_side_overlap)
    if min_volume_ratio is not None:
        parts = _whole_parts(parts, profile, min_volume_ratio)

    # Height split: how many bodies each part holds.
    start = np.array([p[1] for p in parts], dtype=int)
    stop = np.array([p[2] for p in parts], dtype=int)
    pieces = (
        _bodies_per_part(start, stop, dz, max_height_ratio)
        if max_height_ratio is not None
        else np.ones(len(parts), dtype=int)
    )

    # Lookup (component, slice) → body, bodies numbered by centroid along the slice index.
    bodies: list[tuple[float, int, int, int]] = []  # (centroid slice, component, start, stop)
    for (k, a0, b0), m in zip(parts, pieces, strict=True):
        edges = a0 + (np.arange(m + 1) * (b0 - a0)) // m  # equal divisions, ≥ 1 slice each
        for a, b in itertools.pairwise(edges.tolist()):
            area = profile[k, a:b]
            bodies.append((float(np.dot(area, np.arange(a, b)) / area.sum()), k, a, b))
    bodies.sort()
    lut = np.zeros((n + 1, nz), dtype=np.int32)
    for label, (_, k, a, b) in enumerate(bodies, start=1):
        lut[k, a:b] = label
    out = np.zeros(mask.shape, dtype=np.int32)
    idx = np.flatnonzero(components)
    z = idx // (mask.shape[1] * mask.shape[2])
    out.ravel()[idx] = lut[components.ravel()[idx], z]
    return out, len(bodies)


def assign_levels(
    components: ArrayLike,
    spacing_mm: Sequence[float],
    *,
    foot_to_head: bool | None = None,
    affine: ArrayLike | None = None,
    anchor: Literal["lowest", "highest"] = "lowest",
    lowest_level: str = "S1",
    highest_level: str = "C3",
    levels: Sequence[str] = VERTEBRAE,
    pelvis_mask: ArrayLike | None = None,
    max_anchor_gap_mm: float = MAX_ANCHOR_GAP_MM,
    max_anchor_to_pelvis_mm: float = MAX_ANCHOR_TO_PELVIS_MM,
    max_skipped: int = MAX_SKIPPED_BODIES,
) -> np.ndarray:
    """Name each body's vertebral level by counting along the spine from an anchor.

    Bodies are ordered by the head–foot position of their centroids. With ``anchor="lowest"`` the anchor
    is the most caudal body that passes the checks below; it becomes ``lowest_level`` and the bodies above
    it the levels above that in ``levels`` (L5, L4, ... for S1). Bodies caudal to the anchor are taken as
    false positives and get 0; bodies beyond the far end of ``levels`` (above C3) get 0 as well: no level
    is invented. ``anchor="highest"`` counts down from ``highest_level`` instead (a field of view without
    the sacrum).

    Anchor checks, on candidates taken from the anchor end inwards (at most ``max_skipped`` of them may
    fail before the search gives up):

    - continuity: the head–foot gap between the candidate's extent and the next body's is at most
      ``max_anchor_gap_mm`` (a disc, not a stretch of pelvis or thigh);
    - pelvis (``anchor="lowest"`` only, when ``pelvis_mask`` has voxels): some voxel of the candidate lies
      within ``max_anchor_to_pelvis_mm`` of the pelvis, on which S1 sits.

    A lone body passes continuity. Neither check can reject a false positive that sits just below S1 on
    the spine's column (it would be taken for S1).

    Parameters
    ----------
    components : array_like of int, shape (Z, Y, X)
        Body labels 1..n (0 background), as :func:`split_vertebrae` returns.
    spacing_mm : (float, float, float)
        Voxel spacing along (z, y, x), mm.
    foot_to_head : bool, optional
        True when the slice index increases towards the head. Give this or ``affine``.
    affine : array_like, shape (4, 4), optional
        The grid's voxel (x, y, z) → LPS mm affine, from which the direction is read
        (:func:`foot_to_head_from_affine`).
    anchor : {"lowest", "highest"}
        Which end of the spine is counted from.
    lowest_level, highest_level : str
        Level of the anchor body for ``anchor="lowest"`` and ``"highest"``.
    levels : sequence of str
        Level names from head to foot, keys of :data:`cohortscale.synth.labels.LABELS` (whose ids the
        output holds).
    pelvis_mask : array_like of bool, shape (Z, Y, X), optional
        Pelvis (sacrum included) voxels, to verify the S1 anchor.
    max_anchor_gap_mm : float
        Largest gap between the anchor and the next body, mm.
    max_anchor_to_pelvis_mm : float
        Largest distance from the S1 anchor to the pelvis, mm.
    max_skipped : int
        Most bodies at the anchor end that may be skipped as false positives.

    Returns
    -------
    ndarray of uint8, shape (Z, Y, X)
        Level id of each body voxel, 0 elsewhere and for bodies without a level.

    Raises
    ------
    AnchorNotFoundError
        If there is no body, or none passes the anchor checks.
    """
    comp = np.asarray(components)
    if comp.ndim != 3:
        raise ValueError(f"components must be 3-D (Z, Y, X), got shape {comp.shape}")
    spacing = _spacing(spacing_mm)
    head_up = _direction(foot_to_head, affine)
    level_names = list(levels)
    level_ids = np.array([LABELS[name] for name in level_names], dtype=np.uint8)
    if anchor not in ("lowest", "highest"):
        raise ValueError(f"anchor must be 'lowest' or 'highest', got {anchor!r}")
    if anchor == "highest" and pelvis_mask is not None:
        raise ValueError("a pelvis mask verifies a caudal (lowest) anchor only")

    n = int(comp.max(initial=0))
    profile = _slice_profiles(comp, n)
    volume = profile.sum(axis=1)
    present = np.flatnonzero(volume)
    present = present[present > 0]
    if len(present) == 0:
        raise AnchorNotFoundError("no vertebral body to anchor the levels on")

    # Head–foot position (mm, increasing towards the head) of each body's centroid and extent.
    dz = float(spacing[0])
    z = np.arange(comp.shape[0])
    sign = 1.0 if head_up else -1.0
    centroid = sign * dz * (profile[present] @ z) / volume[present]
    occupied = profile[present] > 0
    first = np.argmax(occupied, axis=1)
    last = comp.shape[0] - 1 - np.argmax(occupied[:, ::-1], axis=1)
    ends = sign * dz * np.stack([first, last], axis=1)
    lo = ends.min(axis=1) - dz / 2
    hi = ends.max(axis=1) + dz / 2

    # Order from the anchor end inwards; gap[i]: distance from body i to the next one inwards.
    from_anchor = np.argsort(centroid if anchor == "lowest" else -centroid, kind="stable")
    ids, lo, hi = present[from_anchor], lo[from_anchor], hi[from_anchor]
    gap = lo[1:] - hi[:-1] if anchor == "lowest" else lo[:-1] - hi[1:]
    gap = np.append(gap, 0.0)  # a lone (or last) body passes continuity

    pelvis = None if pelvis_mask is None else np.asarray(pelvis_mask, dtype=bool)
    check_pelvis = pelvis is not None and bool(pelvis.any())
    boxes = ndimage.find_objects(comp.astype(np.int32, copy=False)) if check_pelvis else []
    start = None
    for i, label in enumerate(ids[: max_skipped + 1]):
        if gap[i] > max_anchor_gap_mm:
            continue
        if check_pelvis and not _within(pelvis, comp, int(label), boxes, spacing, max_anchor_to_pelvis_mm):
            continue
        start = i
        break
    if start is None:
        raise AnchorNotFoundError(
            f"none of the {min(len(ids), max_skipped + 1)} {anchor} bodies passes the anchor checks "
            f"(gap ≤ {max_anchor_gap_mm} mm"
            + (f", pelvis within {max_anchor_to_pelvis_mm} mm)" if check_pelvis else ")")
        )

    lut = np.zeros(n + 1, dtype=np.uint8)
    if anchor == "lowest":
        first_level = level_names.index(lowest_level)
        named = level_ids[first_level::-1]  # S1, L5, L4, ... C3
    else:
        named = level_ids[level_names.index(highest_level) :]
    counted = ids[start : start + len(named)]
    lut[counted] = named[: len(counted)]
    return lut[comp]


def label_vertebrae(
    labels: ArrayLike,
    body_class_or_ids: int | Sequence[int],
    spacing_mm: Sequence[float],
    *,
    foot_to_head: bool | None = None,
    affine: ArrayLike | None = None,
    pelvis_id: int | None = PELVIS_ID,
    unassigned_id: int = 0,
    anchor: Literal["lowest", "highest"] = "lowest",
    lowest_level: str = "S1",
    highest_level: str = "C3",
    levels: Sequence[str] = VERTEBRAE,
    min_volume_mm3: float = MIN_BODY_VOLUME_MM3,
    neck_area_ratio: float = NECK_AREA_RATIO,
    min_part_height_mm: float = MIN_PART_HEIGHT_MM,
    max_height_ratio: float | None = MAX_HEIGHT_RATIO,
    max_anchor_gap_mm: float = MAX_ANCHOR_GAP_MM,
    max_anchor_to_pelvis_mm: float = MAX_ANCHOR_TO_PELVIS_MM,
    max_skipped: int = MAX_SKIPPED_BODIES,
) -> np.ndarray:
    """A label volume with its vertebral-body class replaced by level ids.

    :func:`split_vertebrae` then :func:`assign_levels` on the voxels labelled ``body_class_or_ids``; the
    pelvis (``pelvis_id``, if it has voxels) verifies the S1 anchor. Other labels are kept.

    Parameters
    ----------
    labels : array_like of int, shape (Z, Y, X)
        Label volume, slices transverse.
    body_class_or_ids : int or sequence of int
        The vertebral-body class, or several ids that all count as body (e.g.
        :data:`cohortscale.synth.labels.VERTEBRA_IDS` to relabel a volume that has levels already).
    spacing_mm : (float, float, float)
        Voxel spacing along (z, y, x), mm.
    foot_to_head, affine
        Slice direction, as for :func:`assign_levels` (give one).
    pelvis_id : int or None
        Label of the pelvis, or None not to verify the anchor against it.
    unassigned_id : int
        Label for body voxels that get no level: specks, neck slices, rejected false positives, bodies
        beyond the last level.
    anchor, lowest_level, highest_level, levels, max_anchor_gap_mm, max_anchor_to_pelvis_mm, max_skipped
        As for :func:`assign_levels`.
    min_volume_mm3, neck_area_ratio, min_part_height_mm, max_height_ratio
        As for :func:`split_vertebrae`.

    Returns
    -------
    ndarray, shape and dtype of ``labels``
        ``labels`` with body voxels set to their level ids (31–53 for C3–S1) or ``unassigned_id``.

    Raises
    ------
    AnchorNotFoundError
        As :func:`assign_levels`.
    """
    lab = np.asarray(labels)
    body = np.isin(lab, np.atleast_1d(np.asarray(body_class_or_ids)))
    components, _ = split_vertebrae(
        body,
        spacing_mm,
        min_volume_mm3=min_volume_mm3,
        neck_area_ratio=neck_area_ratio,
        min_part_height_mm=min_part_height_mm,
        max_height_ratio=max_height_ratio,
    )
    pelvis = None if pelvis_id is None else lab == pelvis_id
    named = assign_levels(
        components,
        spacing_mm,
        foot_to_head=foot_to_head,
        affine=affine,
        anchor=anchor,
        lowest_level=lowest_level,
        highest_level=highest_level,
        levels=levels,
        pelvis_mask=None if anchor == "highest" else pelvis,
        max_anchor_gap_mm=max_anchor_gap_mm,
        max_anchor_to_pelvis_mm=max_anchor_to_pelvis_mm,
        max_skipped=max_skipped,
    )
    out = lab.copy()
    out[body] = np.where(named[body] > 0, named[body], unassigned_id)
    return out


def _spacing(spacing_mm: Sequence[float]) -> np.ndarray:
    spacing = np.asarray(spacing_mm, dtype=float)
    if spacing.shape != (3,) or np.any(spacing <= 0):
        raise ValueError(f"spacing_mm must be three positive (z, y, x) values, got {spacing_mm!r}")
    return spacing


def _direction(foot_to_head: bool | None, affine: ArrayLike | None) -> bool:
    if (foot_to_head is None) == (affine is None):
        raise ValueError("give exactly one of foot_to_head and affine")
    return bool(foot_to_head) if affine is None else foot_to_head_from_affine(affine)


def _slice_profiles(components: np.ndarray, n: int) -> np.ndarray:
    """Voxel count of each label 0..n in each slice, shape (n + 1, Z) (row 0 left empty)."""
    nz = components.shape[0]
    idx = np.flatnonzero(components)
    z = idx // (components.size // max(nz, 1))
    flat = components.ravel()[idx].astype(np.int64) * nz + z
    return np.bincount(flat, minlength=(n + 1) * nz).reshape(n + 1, nz)


def _neck_segments(area: np.ndarray, ratio: float, min_slices: int) -> list[tuple[int, int]]:
    """Slice ranges ``[a, b)`` left after cutting ``area`` (one component's profile) at its necks."""
    n = len(area)
    # Interior candidates keep min_slices on each side.
    candidates = np.arange(min_slices, n - min_slices)
    if len(candidates) == 0:
        return [(0, n)]
    peak_before = np.maximum.accumulate(area)[candidates - 1]
    peak_after = np.maximum.accumulate(area[::-1])[::-1][candidates + 1]
    depth = area[candidates] / np.minimum(peak_before, peak_after)
    best = int(np.argmin(depth))
    if depth[best] > ratio:
        return [(0, n)]
    cut = int(candidates[best])
    below = _neck_segments(area[:cut], ratio, min_slices)
    above = _neck_segments(area[cut + 1 :], ratio, min_slices)
    return below + [(a + cut + 1, b + cut + 1) for a, b in above]


def _stacked_parts(
    parts: list[tuple[int, int, int]], profile: np.ndarray, max_overlap: float
) -> list[tuple[int, int, int]]:
    """The parts (component, start, stop) not lying beside a larger part (see :func:`split_vertebrae`)."""
    volume = [int(profile[k, a:b].sum()) for k, a, b in parts]
    kept = []
    for i, (_, a, b) in enumerate(parts):
        beside = any(
            volume[j] > volume[i]
            and min(b - a, b_j - a_j) >= MIN_SIDE_SLICES
            and min(b, b_j) - max(a, a_j) > max_overlap * min(b - a, b_j - a_j)
            for j, (_, a_j, b_j) in enumerate(parts)
        )
        if not beside:
            kept.append(parts[i])
    return kept


def _whole_parts(
    parts: list[tuple[int, int, int]], profile: np.ndarray, min_ratio: float
) -> list[tuple[int, int, int]]:
    """The parts (component, start, stop) holding at least ``min_ratio`` of the median volume of the
    ``HEIGHT_NEIGHBOURS`` parts nearest to them along the slice axis (see :func:`split_vertebrae`)."""
    volume = np.array([profile[k, a:b].sum() for k, a, b in parts], dtype=float)
    centre = np.array([(a + b) / 2 for _, a, b in parts])
    kept = []
    for i in range(len(parts)):
        others = np.delete(np.arange(len(parts)), i)
        nearest = others[np.argsort(np.abs(centre[others] - centre[i]), kind="stable")[:HEIGHT_NEIGHBOURS]]
        if not nearest.size or volume[i] >= min_ratio * np.median(volume[nearest]):
            kept.append(parts[i])
    return kept


def _bodies_per_part(start: np.ndarray, stop: np.ndarray, dz: float, max_ratio: float) -> np.ndarray:
    """Number of bodies in each part (slice ranges ``[start, stop)``), from its height against the
    bodies nearest to it in other parts (see :func:`split_vertebrae`).

    Neighbours that are fused too would inflate the reference, so the count is iterated: each round takes
    the reference from the bodies as the previous round split them.
    """
    count = np.ones(len(start), dtype=int)
    if len(start) < 3:  # no reference without at least two other bodies
        return count
    height = (stop - start) * dz
    middle = (start + stop) / 2 * dz
    order = np.argsort(middle, kind="stable")
    gaps = (start[order][1:] - stop[order][:-1]) * dz
    gap = float(np.median(gaps[gaps > 0])) if np.any(gaps > 0) else 0.0
    for _ in range(HEIGHT_ROUNDS):
        # The bodies as now split: equal slabs of each part, a disc gap between them.
        owner = np.repeat(np.arange(len(start)), count)
        within = np.arange(len(owner)) - np.repeat(np.cumsum(count) - count, count)
        body_height = ((height + gap) / count - gap)[owner]
        body_middle = (start * dz)[owner] + (within + 0.5) * (height / count)[owner]
        distance = np.abs(middle[:, None] - body_middle[None, :])
        distance[owner[None, :] == np.arange(len(start))[:, None]] = np.inf  # not its own bodies
        nearest = np.argsort(distance, axis=1, kind="stable")[:, :HEIGHT_NEIGHBOURS]
        near = np.where(
            np.isfinite(np.take_along_axis(distance, nearest, axis=1)), body_height[nearest], np.nan
        )
        reference = np.nanmedian(near, axis=1)
        # Height plus one disc gap is the stretch of spine a part spans: n bodies span n pitches.
        pitches = (height + gap) / (reference + gap)
        fused = pitches > max_ratio
        new = np.where(fused, np.maximum(np.floor(pitches + 0.5), 2), 1).astype(int)
        new = np.minimum(new, stop - start)  # at least one slice per body
        if np.array_equal(new, count):
            break
        count = new
    return count


def _within(
    target: np.ndarray,
    components: np.ndarray,
    label: int,
    boxes: list[tuple[slice, ...] | None],
    spacing: np.ndarray,
    reach_mm: float,
) -> bool:
    """Whether some voxel of body ``label`` lies within ``reach_mm`` of a voxel of ``target``."""
    box = boxes[label - 1]
    if box is None:
        return False
    # Only the body's bounding box grown by the reach can hold a voxel close enough.
    margin = np.ceil(reach_mm / spacing).astype(int) + 1
    window = tuple(
        slice(max(s.start - m, 0), min(s.stop + m, size))
        for s, m, size in zip(box, margin, components.shape, strict=True)
    )
    near = target[window]
    if not near.any():
        return False
    distance = ndimage.distance_transform_edt(~near, sampling=spacing)
    return bool(distance[components[window] == label].min() <= reach_mm)
