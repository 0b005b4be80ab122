"""Fat–water swap detection for Dixon stations: per station, and per leg in the thigh and knee stations.

A two-point Dixon reconstruction may exchange fat and water for a whole station, or for one leg when the
phase estimate fails in one of two disconnected regions (UK Biobank: ≈1.8 % of participants). Magnitude
images cannot tell which image is fat voxel by voxel, but two kinds of evidence can:

* **Consistency in overlaps.** Adjacent stations image the same tissue over 35–40 mm. In the overlap, a
  pair with the same polarity has ``fat_i ≈ fat_j`` and ``water_i ≈ water_j``; a pair of opposite
  polarity has ``fat_i ≈ water_j``. The normalised costs ``a / (a + s)`` (same) and ``s / (a + s)``
  (opposite), with ``a`` and ``s`` the mean absolute differences of the two pairings, are near 0 and 1
  when the evidence is clear.
* **An anatomical prior.** The body is wrapped in subcutaneous fat: the outer layer of tissue in every
  transverse slice is fat-dominant, whatever the body composition (the interior is not a usable prior:
  thighs and knees hold fatty marrow and, in obesity, more fat than muscle). The prior cost of calling
  a segment unswapped is the share of its outer-layer voxels where water exceeds fat.

Each segment (station, or leg of a leg station) gets a label, swapped or not, minimising the sum of the
pair costs and ``prior_weight`` times the prior costs, exactly (all labellings are enumerated; a
participant has at most eight segments). The overlaps fix the relative polarity of connected segments,
so the prior decides the orientation of each connected chain and of isolated segments.
The margin of a segment is how much the best energy rises when its label is flipped.

Kernels take samples on the fused grid (:class:`cohortscale.ops.fusion.Sample`) of NumPy or CuPy arrays.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from cohortscale.backend import array_module
from cohortscale.geometry import Grid
from cohortscale.ops.resample import Sample, common_rows

#: Stations whose legs are assessed separately (thighs, knees).
LEG_STATIONS = (5, 6)
#: Leg sides; patient left is +x in LPS.
SIDES = ("L", "R")
#: Segments of the UK Biobank protocol, in the order the store keeps them.
SEGMENTS = ("1", "2", "3", "4", "5L", "5R", "6L", "6R")
#: Most segments enumerated exactly (2**n labellings).
MAX_SEGMENTS = 16
#: Percentile of fat + water that sets a station's or a participant's intensity scale.
INTENSITY_PERCENTILE = 99.0
#: Every this-many voxel enters that percentile (millions of voxels; a subsample estimates it).
SCALE_SUBSAMPLE = 7


@dataclass(frozen=True)
class SwapResult:
    """Swap decisions of one participant.

    Attributes
    ----------
    segments : tuple of str
        Assessed segments: ``"3"`` a whole station, ``"5L"`` the left leg of station 5.
    swapped : ndarray of bool
        Whether fat and water are exchanged in each segment.
    margin : ndarray of float
        Rise of the energy if the segment's label were flipped (≥ 0; larger is surer; ~1 is one clear
        overlap's worth of evidence).
    prior : ndarray of float
        Share of each segment's outer-layer tissue voxels where fat exceeds water (as acquired; near 1
        unswapped, near 0 swapped).
    midlines_mm : dict of int to float
        Patient x (LPS, mm) of the plane between the legs, per leg station.
    """

    segments: tuple[str, ...]
    swapped: np.ndarray
    margin: np.ndarray
    prior: np.ndarray
    midlines_mm: dict[int, float]

    def flagged(self) -> list[str]:
        """Names of the segments found swapped."""
        return [name for name, s in zip(self.segments, self.swapped, strict=True) if s]


def intensity_scale(values, percentile: float = INTENSITY_PERCENTILE) -> float:
    """The ``percentile`` of the positive entries of ``values`` (NaN and 0 left out), estimated on every
    :data:`SCALE_SUBSAMPLE`-th entry; 0 when there are none."""
    xp = array_module(values)
    sample = values.ravel()[::SCALE_SUBSAMPLE]
    sample = sample[sample > 0]  # NaN compares false
    return float(xp.percentile(sample, percentile)) if sample.size else 0.0


def segment_name(station: int, side: str | None) -> str:
    """``"3"`` for a whole station, ``"5L"`` for the left leg of station 5."""
    return f"{station}{side or ''}"


def segment_station(name: str) -> int:
    """Station number of a segment name (``"5L"`` → 5)."""
    return int(name.rstrip("".join(SIDES)))


def segment_side(name: str) -> str | None:
    """Leg of a segment name (``"5L"`` → ``"L"``), None for a whole station."""
    return name.lstrip("0123456789") or None


def _column_x(grid: Grid) -> np.ndarray:
    """Patient x of every in-plane voxel ``(ny, nx)`` of the grid's first slice, mm."""
    ny, nx = grid.shape[1:]
    j, i = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
    return grid.affine[0, 0] * i + grid.affine[0, 1] * j + grid.affine[0, 3]


def _midline(tissue_columns: np.ndarray, x: np.ndarray, search_mm: float) -> float:
    """x between the legs: the middle of the emptiest run of columns within ``search_mm`` of the tissue
    centroid (nearest the centroid when several are as empty)."""
    if tissue_columns.sum() == 0:
        return float(np.median(x))
    centroid = float((tissue_columns * x).sum() / tissue_columns.sum())
    candidates = np.flatnonzero(np.abs(x - centroid) <= search_mm)
    if not candidates.size:
        return centroid
    emptiest = candidates[tissue_columns[candidates] == tissue_columns[candidates].min()]
    runs = np.split(emptiest, np.flatnonzero(np.diff(emptiest) > 1) + 1)
    middles = [(x[run[0]] + x[run[-1]]) / 2 for run in runs]
    return float(min(middles, key=lambda m: abs(m - centroid)))


def outer_layer(tissue):
    """Tissue voxels with a non-tissue in-plane neighbour (4-connected): the body's outer layer."""
    inner = tissue.copy()
    inner[:, 1:] &= tissue[:, :-1]
    inner[:, :-1] &= tissue[:, 1:]
    inner[:, :, 1:] &= tissue[:, :, :-1]
    inner[:, :, :-1] &= tissue[:, :, 1:]
    return tissue & ~inner


def side_mask(grid: Grid, midline_mm: float, side: str, xp=np) -> object:
    """In-plane mask ``(ny, nx)`` of one leg: patient left (``"L"``, x > midline) or right."""
    x = _column_x(grid)
    return xp.asarray(x > midline_mm if side == "L" else x <= midline_mm)


def detect_swaps(
    fat: Mapping[int, Sample],
    water: Mapping[int, Sample],
    grid: Grid,
    leg_stations: tuple[int, ...] = LEG_STATIONS,
    tissue_fraction: float = 0.25,
    prior_weight: float = 0.5,
    min_voxels: int = 200,
    midline_search_mm: float = 60.0,
) -> SwapResult:
    """Decide which stations (and legs of ``leg_stations``) have fat and water exchanged.

    Parameters
    ----------
    fat, water : mapping of int to Sample
        Each station's fat and water resampled onto ``grid``; stations lacking either are not assessed.
    grid : Grid
        The fused grid (columns along patient x).
    leg_stations : tuple of int
        Stations assessed per leg.
    tissue_fraction : float
        Tissue is where fat + water exceeds this fraction of the median over stations of
        :func:`intensity_scale` of fat + water.
    prior_weight : float
        Weight of the anatomical prior against one overlap's consistency cost.
    min_voxels : int
        Fewest tissue voxels for a segment to be assessed, and for an overlap to count as evidence.
    midline_search_mm : float
        Half-width of the search for the gap between the legs around the tissue centroid, mm.

    Returns
    -------
    SwapResult
    """
    stations = sorted(set(fat) & set(water))
    # Fat and water of a station may cover different slices (ingest keeps a shorter series): use both.
    rows = {k: common_rows(fat[k], water[k]) for k in stations}
    fat = {k: fat[k].cut(rows[k]) for k in stations}
    water = {k: water[k].cut(rows[k]) for k in stations}
    xp = array_module(*(fat[k].values for k in stations))
    totals = {k: fat[k].values + water[k].values for k in stations}
    scales = [scale for scale in (intensity_scale(totals[k]) for k in stations) if scale > 0]
    threshold = tissue_fraction * float(np.median(scales)) if scales else np.inf
    tissue = {k: fat[k].inside & water[k].inside & (totals[k] > threshold) for k in stations}
    outer = {k: outer_layer(t) for k, t in tissue.items()}

    x = _column_x(grid)
    midlines: dict[int, float] = {}
    regions: dict[str, tuple[int, object]] = {}  # segment → (station, in-plane mask or None)
    for k in stations:
        if k in leg_stations:
            columns = np.asarray(tissue[k].sum(axis=(0, 1)).tolist(), dtype=float)
            midlines[k] = _midline(columns, x[0], midline_search_mm)
            for side in SIDES:
                regions[segment_name(k, side)] = (k, side_mask(grid, midlines[k], side, xp))
        else:
            regions[segment_name(k, None)] = (k, None)

    names, priors = [], []
    for name, (k, plane) in regions.items():
        mask = _restrict(outer[k], plane)
        count = int(mask.sum())
        if int(_restrict(tissue[k], plane).sum()) < min_voxels or count == 0:
            continue
        names.append(name)
        priors.append(float((fat[k].values[mask] > water[k].values[mask]).sum()) / count)
    if len(names) > MAX_SEGMENTS:
        raise ValueError(f"{len(names)} segments exceed the {MAX_SEGMENTS} that can be enumerated")

    edges = []
    for i, j in itertools.combinations(range(len(names)), 2):
        cost_same = _pair_cost(names[i], names[j], regions, fat, water, tissue, min_voxels)
        if cost_same is not None:
            edges.append((i, j, cost_same))

    labels = np.array(list(itertools.product((False, True), repeat=len(names))), dtype=bool)
    prior = np.array(priors)
    energy = prior_weight * np.where(labels, prior, 1 - prior).sum(axis=1)
    for i, j, cost_same in edges:
        energy += np.where(labels[:, i] == labels[:, j], cost_same, 1 - cost_same)
    best = int(np.argmin(energy))
    margin = np.array(
        [energy[labels[:, s] != labels[best, s]].min() - energy[best] for s in range(len(names))]
    )
    return SwapResult(tuple(names), labels[best].copy(), margin, prior, midlines)


def _pair_cost(
    name_i: str,
    name_j: str,
    regions: Mapping[str, tuple[int, object]],
    fat: Mapping[int, Sample],
    water: Mapping[int, Sample],
    tissue: Mapping[int, object],
    min_voxels: int,
) -> float | None:
    """Normalised cost of giving two segments the same label, from their overlap; None without one."""
    (ki, plane_i), (kj, plane_j) = regions[name_i], regions[name_j]
    if ki == kj:
        return None
    if {segment_side(name_i), segment_side(name_j)} == set(SIDES):  # opposite legs never overlap
        return None
    rows = common_rows(fat[ki], fat[kj])
    if rows.stop == rows.start:
        return None
    f_i, w_i, f_j, w_j = (s.cut(rows) for s in (fat[ki], water[ki], fat[kj], water[kj]))
    either = tissue[ki][_within(rows, fat[ki])] | tissue[kj][_within(rows, fat[kj])]
    mask = _restrict(_restrict(either & f_i.inside & f_j.inside, plane_i), plane_j)
    if int(mask.sum()) < min_voxels:
        return None
    fi, wi, fj, wj = (s.values[mask] for s in (f_i, w_i, f_j, w_j))
    same = float((abs(fi - fj) + abs(wi - wj)).mean())
    opposite = float((abs(fi - wj) + abs(wi - fj)).mean())
    total = same + opposite
    return 0.5 if total == 0 else same / total


def _restrict(mask, plane):
    """``mask`` within a leg's in-plane region (``plane``), or whole when ``plane`` is None."""
    return mask if plane is None else mask & plane


def _within(rows: slice, sample: Sample) -> slice:
    """``rows`` of the grid as indices into ``sample``'s arrays."""
    return slice(rows.start - sample.rows.start, rows.stop - sample.rows.start)


def exchange_swapped(
    fat: Mapping[int, Sample], water: Mapping[int, Sample], result: SwapResult, grid: Grid
) -> tuple[dict[int, Sample], dict[int, Sample]]:
    """Fat and water samples with the two exchanged in every segment ``result`` flags."""
    fat_out, water_out = dict(fat), dict(water)
    for name in result.flagged():
        k, side = segment_station(name), segment_side(name)
        f, w = fat_out[k], water_out[k]
        if side is None:
            fat_out[k], water_out[k] = w, f
            continue
        xp = array_module(f.values)
        plane = side_mask(grid, result.midlines_mm[k], side, xp)
        rows = common_rows(f, w)  # a leg's voxels are exchanged where both images cover them
        both = plane & f.cut(rows).inside & w.cut(rows).inside
        fat_values, water_values = f.values.copy(), w.values.copy()
        fat_values[_within(rows, f)] = xp.where(both, w.cut(rows).values, f.cut(rows).values)
        water_values[_within(rows, w)] = xp.where(both, f.cut(rows).values, w.cut(rows).values)
        fat_out[k] = Sample(f.rows, fat_values, f.inside)
        water_out[k] = Sample(w.rows, water_values, w.inside)
    return fat_out, water_out
