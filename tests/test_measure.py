"""Image-derived phenotypes from plain arrays (cohortscale.ops.measure): volumes, slice sampling through two
affines, ROI medians and the study measures, each against numbers worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cohortscale.ops.measure import (
    LIVER_IDPS,
    MARROW_IDPS,
    RoiStatistic,
    SliceMaps,
    body_mask,
    body_measures,
    label_volumes_cm3,
    levels_crossed,
    liver_measures,
    marrow_measures,
    roi_median,
    sample_on_slice,
    superior_extent_index,
    thigh_muscle_measures,
    trunk_subcutaneous,
    voxel_volume_cm3,
)
from cohortscale.synth.labels import LABEL_NAMES, LABELS

TIGHT = 1e-12  # relative tolerance for float64 arithmetic worked out by hand
FLOAT32 = 1e-6  # relative tolerance where a value went through float32


def affine_from(
    columns: tuple[float, float, float],
    rows: tuple[float, float, float],
    slices: tuple[float, float, float],
    origin: tuple[float, float, float],
) -> np.ndarray:
    """4×4 affine whose columns are the LPS mm steps of one column, row and slice, then the origin."""
    affine = np.eye(4)
    affine[:3, 0], affine[:3, 1], affine[:3, 2], affine[:3, 3] = columns, rows, slices, origin
    return affine


def axial(spacing: tuple[float, float, float], origin: tuple[float, float, float]) -> np.ndarray:
    """Axis-aligned affine: ``spacing`` (dx, dy, dz) mm per (column, row, slice), voxel 0 at ``origin``."""
    dx, dy, dz = spacing
    return affine_from((dx, 0, 0), (0, dy, 0), (0, 0, dz), origin)


def rotation(axis: tuple[float, float, float], degrees: float) -> np.ndarray:
    """Proper 3×3 rotation about ``axis`` (Rodrigues)."""
    k = np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis)
    cross = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    t = math.radians(degrees)
    return np.eye(3) + math.sin(t) * cross + (1 - math.cos(t)) * cross @ cross


# --- voxel and label volumes ------------------------------------------------------------------------------


def test_voxel_volume_of_diagonal_affine() -> None:
    """2 × 3 × 4 mm voxels are 24 mm³ = 0.024 cm³, whatever the origin."""
    assert voxel_volume_cm3(axial((2.0, 3.0, 4.0), (0, 0, 0))) == pytest.approx(0.024, rel=TIGHT)
    assert voxel_volume_cm3(axial((2.0, 3.0, 4.0), (-120.0, 55.5, 900.0))) == pytest.approx(0.024, rel=TIGHT)
    assert voxel_volume_cm3(axial((1.0, 1.0, 1.0), (0, 0, 0))) == pytest.approx(0.001, rel=TIGHT)


def test_voxel_volume_of_oblique_affine() -> None:
    """Rotating the voxel axes (an oblique acquisition) keeps the 0.024 cm³ of 2 × 3 × 4 mm voxels."""
    linear = rotation((1.0, 2.0, 0.5), 37.0) @ np.diag([2.0, 3.0, 4.0])
    affine = np.eye(4)
    affine[:3, :3], affine[:3, 3] = linear, (10.0, -4.0, 250.0)
    # The column steps are still 2, 3 and 4 mm long, and the affine is not diagonal.
    assert np.linalg.norm(affine[:3, :3], axis=0) == pytest.approx([2.0, 3.0, 4.0], rel=TIGHT)
    assert np.count_nonzero(np.abs(linear - np.diag(np.diag(linear))) > 0.1) >= 4
    assert voxel_volume_cm3(affine) == pytest.approx(0.024, rel=1e-9)


@pytest.mark.parametrize("signs", [(1, -1, 1), (1, 1, -1), (-1, -1, -1)])
def test_voxel_volume_of_flipped_axes(signs: tuple[int, int, int]) -> None:
    """A negative spacing (a flipped axis, e.g. slices running head → feet) gives a positive 0.024 cm³."""
    spacing = tuple(s * d for s, d in zip(signs, (2.0, 3.0, 4.0), strict=True))
    assert voxel_volume_cm3(axial(spacing, (0, 0, 0))) == pytest.approx(0.024, rel=TIGHT)


def test_label_volumes_count_voxels_per_name() -> None:
    """Hand-counted voxels × 1 × 2 × 5 mm (0.01 cm³) per label; an absent label is 0.0, id 0 not reported."""
    labels = np.zeros((2, 3, 4), dtype=np.uint8)
    labels[0, 0, :] = 1  # 4 voxels
    labels[1, 2, 3] = 1  # 5th voxel of label 1
    labels[1, 0, :3] = 2  # 3 voxels
    labels[1, 1, 1] = 9  # an id with no name: ignored
    names = {0: "background", 1: "liver", 2: "spleen", 3: "heart"}
    volumes = label_volumes_cm3(labels, axial((1.0, 2.0, 5.0), (0, 0, 0)), names)
    assert set(volumes) == {"liver", "spleen", "heart"}
    assert volumes["liver"] == pytest.approx(0.05, rel=TIGHT)
    assert volumes["spleen"] == pytest.approx(0.03, rel=TIGHT)
    assert volumes["heart"] == 0.0
    assert all(type(v) is float for v in volumes.values())


def test_label_volumes_with_names_beyond_the_largest_id() -> None:
    """A named id larger than any id in the volume is absent (0.0), not an index error."""
    labels = np.full((1, 2, 2), 3, dtype=np.uint8)
    volumes = label_volumes_cm3(labels, axial((10.0, 10.0, 10.0), (0, 0, 0)), {3: "liver", 200: "T9"})
    assert volumes == {"liver": pytest.approx(4.0, rel=TIGHT), "T9": 0.0}


# --- thigh muscle -----------------------------------------------------------------------------------------


def thigh_volumes(anterior_left: float = 100.0) -> dict[str, float]:
    return {
        "thigh_anterior_left": anterior_left,
        "thigh_posterior_left": 50.0,
        "thigh_medial_left": 30.0,
        "thigh_anterior_right": 120.0,
        "thigh_posterior_right": 60.0,
        "thigh_medial_right": 20.0,
        "gluteal_left": 999.0,  # not a thigh compartment
    }


def test_thigh_muscle_measures_by_hand() -> None:
    """Left 100 + 50 + 30 = 180, right 120 + 60 + 20 = 200 cm³: TMV 380, P/A 110 / 220 = 0.5,
    asymmetry (180 − 200) / 190."""
    got = thigh_muscle_measures(thigh_volumes())
    assert got["thigh_muscle_left_cm3"] == pytest.approx(180.0, rel=TIGHT)
    assert got["thigh_muscle_right_cm3"] == pytest.approx(200.0, rel=TIGHT)
    assert got["tmv_cm3"] == pytest.approx(380.0, rel=TIGHT)
    assert got["pa_ratio"] == pytest.approx(0.5, rel=TIGHT)
    assert got["thigh_asymmetry"] == pytest.approx(-20.0 / 190.0, rel=TIGHT)


def test_thigh_pa_ratio_is_nan_without_anterior() -> None:
    """No anterior compartment on either side: P/A undefined (NaN); the other measures still add up."""
    volumes = thigh_volumes(anterior_left=0.0) | {"thigh_anterior_right": 0.0}
    got = thigh_muscle_measures(volumes)
    assert math.isnan(got["pa_ratio"])
    assert got["tmv_cm3"] == pytest.approx(160.0, rel=TIGHT)  # 80 + 80
    assert got["thigh_asymmetry"] == pytest.approx(0.0, abs=1e-15)
    zero = {name: 0.0 for name in volumes}
    assert math.isnan(thigh_muscle_measures(zero)["thigh_asymmetry"])


# --- sampling a volume on a slice -------------------------------------------------------------------------


def test_sample_slice_coinciding_with_a_volume_slice() -> None:
    """A slice on the volume's own in-plane grid at the plane of slice 2 returns exactly ``volume[2]``."""
    volume = np.arange(4 * 5 * 6, dtype=np.int32).reshape(4, 5, 6)
    vol_affine = axial((2.0, 2.0, 3.0), (10.0, -20.0, 30.0))
    slice_affine = axial((2.0, 2.0, 3.0), (10.0, -20.0, 36.0))  # 30 + 2 × 3 mm
    got = sample_on_slice(volume, vol_affine, (5, 6), slice_affine)
    np.testing.assert_array_equal(got, volume[2])


def test_sample_half_pixel_offset_slice_takes_nearest_voxels() -> None:
    """1 mm pixels starting at (0.2, 2.2) mm on 2 mm voxels: columns → voxel x 0.1, 0.6, 1.1, … → 0 1 1 2 2 3,
    rows → voxel y 1.1, 1.6, 2.1, 2.6 → 1 2 2 3; with ``v[z, y, x] = 16 z + 4 y + x`` at z = 1."""
    volume = np.arange(48, dtype=np.int64).reshape(3, 4, 4)
    vol_affine = axial((2.0, 2.0, 2.0), (0.0, 0.0, 0.0))
    slice_affine = axial((1.0, 1.0, 1.0), (0.2, 2.2, 2.3))  # z 2.3 mm → voxel 1.15 → 1
    expected = np.array(
        [
            [20, 21, 21, 22, 22, 23],
            [24, 25, 25, 26, 26, 27],
            [24, 25, 25, 26, 26, 27],
            [28, 29, 29, 30, 30, 31],
        ]
    )
    np.testing.assert_array_equal(sample_on_slice(volume, vol_affine, (4, 6), slice_affine), expected)


@pytest.mark.parametrize(("z_mm", "index"), [(100.0, 0), (92.5, 2), (88.0, 3), (85.5, 4), (98.1, 0)])
def test_sample_on_head_to_feet_volume(z_mm: float, index: int) -> None:
    """Slices run head → feet (z step −4 mm from z = 100): patient z picks slice (100 − z) / 4 rounded."""
    volume = np.repeat(10 * np.arange(5, dtype=np.int16), 6).reshape(5, 2, 3)  # slice k holds 10 k
    vol_affine = axial((1.5, 1.5, -4.0), (-3.0, 7.0, 100.0))
    got = sample_on_slice(volume, vol_affine, (2, 3), axial((1.5, 1.5, 4.0), (-3.0, 7.0, z_mm)))
    np.testing.assert_array_equal(got, np.full((2, 3), 10 * index))


def test_sample_with_rows_and_columns_swapped_is_transposed() -> None:
    """A slice whose columns step along patient y and rows along x reads the volume slice transposed."""
    volume = np.arange(2 * 3 * 5, dtype=np.int32).reshape(2, 3, 5)
    vol_affine = axial((2.0, 3.0, 5.0), (4.0, 8.0, -10.0))
    swapped = affine_from((0.0, 3.0, 0.0), (2.0, 0.0, 0.0), (0.0, 0.0, 5.0), (4.0, 8.0, -5.0))
    got = sample_on_slice(volume, vol_affine, (5, 3), swapped)
    np.testing.assert_array_equal(got, volume[1].T)


def test_sample_with_in_plane_rotation_by_90_degrees() -> None:
    """Columns along +y and rows along −x from the last column: pixel (r, c) is voxel (x = 4 − r, y = c),
    i.e. the volume slice turned a quarter anticlockwise (``np.rot90``)."""
    volume = np.arange(2 * 3 * 5, dtype=np.int32).reshape(2, 3, 5)
    vol_affine = axial((2.0, 2.0, 5.0), (0.0, 0.0, 0.0))
    rotated = affine_from((0.0, 2.0, 0.0), (-2.0, 0.0, 0.0), (0.0, 0.0, 5.0), (8.0, 0.0, 0.0))
    got = sample_on_slice(volume, vol_affine, (5, 3), rotated)
    expected = np.array([[volume[0, c, 4 - r] for c in range(3)] for r in range(5)])
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(got, np.rot90(volume[0]))


def test_sample_oblique_slice_through_several_volume_slices() -> None:
    """Columns stepping 2 mm in x and 10 mm in z cut the volume diagonally: pixel (r, c) = ``v[c, r, c]``."""
    volume = np.arange(4 * 3 * 4, dtype=np.int32).reshape(4, 3, 4)
    vol_affine = axial((2.0, 2.0, 10.0), (0.0, 0.0, 0.0))
    oblique = affine_from((2.0, 0.0, 10.0), (0.0, 2.0, 0.0), (-10.0, 0.0, 2.0), (0.0, 0.0, 0.0))
    got = sample_on_slice(volume, vol_affine, (3, 4), oblique)
    expected = np.array([[volume[c, r, c] for c in range(4)] for r in range(3)])
    np.testing.assert_array_equal(got, expected)


def test_sample_outside_the_volume_gets_fill() -> None:
    """A slice shifted 2 columns left of the volume: its first 2 columns are outside (fill); voxel index
    −0.4 rounds into slice 0, −0.6 falls out; a slice beyond the last one is all fill."""
    volume = np.full((2, 3, 3), 7, dtype=np.int16)
    vol_affine = axial((1.0, 1.0, 10.0), (0.0, 0.0, 0.0))
    shifted = sample_on_slice(volume, vol_affine, (3, 5), axial((1.0, 1.0, 10.0), (-2.0, 0.0, 0.0)), fill=-1)
    expected = np.array([[-1, -1, 7, 7, 7]] * 3)
    np.testing.assert_array_equal(shifted, expected)
    just_in = sample_on_slice(volume, vol_affine, (3, 3), axial((1.0, 1.0, 10.0), (0.0, 0.0, -4.0)), fill=-1)
    np.testing.assert_array_equal(just_in, np.full((3, 3), 7))
    just_out = sample_on_slice(volume, vol_affine, (3, 3), axial((1.0, 1.0, 10.0), (0.0, 0.0, -6.0)), fill=-1)
    np.testing.assert_array_equal(just_out, np.full((3, 3), -1))
    beyond = sample_on_slice(volume, vol_affine, (3, 3), axial((1.0, 1.0, 10.0), (0.0, 0.0, 16.0)), fill=-1)
    np.testing.assert_array_equal(beyond, np.full((3, 3), -1))
    # Rows run past the bottom (y index 3, 4 > 2) as well as columns past the right edge.
    corner = sample_on_slice(volume, vol_affine, (5, 5), axial((1.0, 1.0, 10.0), (0.0, 0.0, 10.0)), fill=-1)
    expected = np.full((5, 5), -1)
    expected[:3, :3] = 7
    np.testing.assert_array_equal(corner, expected)


def test_sample_keeps_the_volume_dtype() -> None:
    """uint8 labels come back uint8, ids intact (255 included); float32 stays float32 with NaN fill."""
    labels = np.zeros((1, 2, 2), dtype=np.uint8)
    labels[0] = [[0, 255], [54, 31]]
    vol_affine = axial((1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    got = sample_on_slice(labels, vol_affine, (2, 3), vol_affine)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, [[0, 255, 0], [54, 31, 0]])
    ff = np.full((1, 2, 2), 0.25, dtype=np.float32)
    got = sample_on_slice(ff, vol_affine, (2, 3), vol_affine, fill=np.nan)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, [[0.25, 0.25, np.nan], [0.25, 0.25, np.nan]])


# --- ROI medians, levels, extents ---------------------------------------------------------------------------


def test_roi_median_ignores_nan_and_unmasked() -> None:
    """Masked values 1, NaN, 3, 4, +inf (100 outside the mask): median of 1, 3, 4 is 3 over 3 pixels."""
    values = np.array([[1.0, np.nan, 3.0], [4.0, 100.0, np.inf]])
    mask = np.array([[True, True, True], [True, False, True]])
    got = roi_median(values, mask)
    assert got == RoiStatistic(3.0, 3)
    assert type(got.median) is float and type(got.count) is int
    # An even count: median of 1, 3, 4, 100 is (3 + 4) / 2.
    assert roi_median(values, np.isfinite(values)) == RoiStatistic(3.5, 4)
    # An integer mask is read as booleans, not as indices.
    assert roi_median(values, mask.astype(np.uint8)).median == 3.0


def test_roi_median_of_empty_mask_is_nan() -> None:
    """An empty mask, or one holding only NaN, gives NaN over 0 pixels."""
    values = np.array([[1.0, np.nan], [2.0, 3.0]])
    empty = roi_median(values, np.zeros((2, 2), dtype=bool))
    assert math.isnan(empty.median) and empty.count == 0
    only_nan = roi_median(values, np.array([[False, True], [False, False]]))
    assert math.isnan(only_nan.median) and only_nan.count == 0


LEVEL_NAMES = {47: "T12", 48: "L1", 30: "vertebral_body", 4: "liver"}


def test_levels_crossed_head_to_foot() -> None:
    """T12 and L1 in a slice read "T12+L1" whichever id is larger; a merged class or none reads ""."""
    both = np.array([[0, 48, 48], [47, 4, 0]])
    assert levels_crossed(both, LEVEL_NAMES) == "T12+L1"
    assert levels_crossed(both, {5: "L1", 9: "T12"} | {0: "background"}) == ""  # ids 47/48 unnamed here
    reversed_ids = np.array([[5, 9], [0, 5]])
    assert levels_crossed(reversed_ids, {5: "L1", 9: "T12"}) == "T12+L1"
    assert levels_crossed(np.array([[30, 30], [4, 0]]), LEVEL_NAMES) == ""
    assert levels_crossed(np.array([[0, 4], [4, 99]]), LEVEL_NAMES) == ""
    assert levels_crossed(np.zeros((2, 2), dtype=np.uint8), LEVEL_NAMES) == ""
    assert levels_crossed(np.array([53, 36, 35, 52]), LABEL_NAMES) == "C7+T1+L5+S1"
    assert levels_crossed(np.array([48]), LEVEL_NAMES) == "L1"


def test_superior_extent_index() -> None:
    """A mask on slices 1–3: the head-most slice is 3 when slices run foot → head, 1 when head → foot."""
    mask = np.zeros((6, 2, 2), dtype=bool)
    mask[1, 0, 0] = mask[2, 1, 1] = mask[3, 0, 1] = True
    assert superior_extent_index(mask, foot_to_head=True) == 3
    assert superior_extent_index(mask, foot_to_head=False) == 1
    assert superior_extent_index(mask.astype(np.uint8), foot_to_head=True) == 3
    assert superior_extent_index(np.zeros((6, 2, 2), dtype=bool), foot_to_head=True) is None
    assert superior_extent_index(np.zeros((6, 2, 2), dtype=bool), foot_to_head=False) is None


# --- body and trunk ---------------------------------------------------------------------------------------


def test_body_mask_thresholds_a_fraction_of_the_99th_percentile() -> None:
    """1000 voxels: 20 at 1000 (the top 2 %, so the 99th percentile is 1000), 300 at 600, one at exactly 500,
    one NaN, the rest 0. Half of 1000 keeps the 320 voxels above 500 (strictly); 0.7 keeps the 20."""
    signal = np.zeros(1000, dtype=np.float64)
    signal[:20], signal[20:320], signal[320], signal[321] = 1000.0, 600.0, 500.0, np.nan
    signal = np.random.default_rng(0).permutation(signal).reshape(10, 10, 10)
    half = body_mask(signal, 0.5)
    assert half.dtype == bool and half.shape == (10, 10, 10)
    assert half.sum() == 320
    np.testing.assert_array_equal(half, np.nan_to_num(signal) >= 600.0)
    assert not half[signal == 500.0].any() and not half[np.isnan(signal)].any()
    assert body_mask(signal, 0.7).sum() == 20


def disc(shape: tuple[int, int], centre: tuple[float, float], radii: tuple[float, float]) -> np.ndarray:
    """Pixels of an axis-aligned ellipse."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return ((yy - centre[0]) / radii[0]) ** 2 + ((xx - centre[1]) / radii[1]) ** 2 <= 1.0


def ring(shape: tuple[int, int], centre: tuple[float, float], inner: tuple[float, float], width: float):
    """(core, fat): an elliptical core and a fat layer ``width`` pixels thick around it."""
    core = disc(shape, centre, inner)
    return core, disc(shape, centre, (inner[0] + width, inner[1] + width)) & ~core


def test_trunk_subcutaneous_leaves_out_separate_arms_and_keeps_the_hips() -> None:
    """Slice 0: a trunk (core and 4-pixel fat) and two arms (3-pixel cores, 2-pixel fat) 3+ pixels away →
    the trunk's fat alone. Slice 1: the same plus a hip core (over a quarter of the trunk's) with its
    fat → trunk and hip fat. Fat outside any body part's reach stays out."""
    shape = (70, 90)
    trunk_core, trunk_fat = ring(shape, (30, 45), (12, 18), 4)
    arms = [ring(shape, (30, x), (3, 3), 2) for x in (12, 78)]
    hip_core, hip_fat = ring(shape, (58, 45), (6, 14), 2)
    hip_fat &= ~(trunk_core | trunk_fat)
    stray = np.zeros(shape, dtype=bool)
    stray[2, 2] = True
    fat = np.stack([trunk_fat | arms[0][1] | arms[1][1] | stray] * 2)
    body = np.stack([trunk_core | trunk_fat | arms[0][0] | arms[0][1] | arms[1][0] | arms[1][1]] * 2)
    fat[1] |= hip_fat
    body[1] |= hip_core | hip_fat
    assert hip_core.sum() >= 0.25 * trunk_core.sum()
    got = trunk_subcutaneous(fat, body, pixel_mm=2.0, arm_fat_mm=4.0)
    np.testing.assert_array_equal(got[0], trunk_fat)
    np.testing.assert_array_equal(got[1], trunk_fat | hip_fat)


def test_trunk_subcutaneous_an_arm_against_the_trunk_claims_only_its_own_layer() -> None:
    """An arm whose 2-pixel fat touches the trunk's 6-pixel fat: the arm's fat is out, and of the trunk's
    fat the arm can take only what lies within its reach (2 pixels of 1 mm) of the arm's core through the
    fat; a straight-line rule would take much more, the largest-part rule none."""
    shape = (60, 100)
    trunk_core, trunk_fat = ring(shape, (30, 50), (14, 20), 6)
    arm_core, arm_fat = ring(shape, (30, 81), (3, 3), 2)
    arm_fat &= ~trunk_fat
    fat, body = (trunk_fat | arm_fat)[None], (trunk_core | trunk_fat | arm_core | arm_fat)[None]
    got = trunk_subcutaneous(fat, body, pixel_mm=1.0, arm_fat_mm=2.0)[0]
    assert not (got & arm_fat).any()
    # Trunk fat within 2 + 2 city-block steps of the arm core (its own layer, then 2 more) bounds the loss.
    steps = np.full(shape, np.inf)
    steps[arm_core] = 0
    for k in range(1, 5):
        grown = np.zeros(shape, dtype=bool)
        reached = np.isfinite(steps)
        grown[1:] |= reached[:-1]
        grown[:-1] |= reached[1:]
        grown[:, 1:] |= reached[:, :-1]
        grown[:, :-1] |= reached[:, 1:]
        steps[grown & ~reached & (trunk_fat | arm_fat)] = k
    lost = trunk_fat & ~got
    assert lost.sum() <= (trunk_fat & (steps <= 4)).sum()
    assert (trunk_fat & got).sum() >= trunk_fat.sum() - 8


def ndimage_touches(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether any pixel of ``a`` has a 4-neighbour (or itself) in ``b``."""
    grown = a.copy()
    grown[1:] |= a[:-1]
    grown[:-1] |= a[1:]
    grown[:, 1:] |= a[:, :-1]
    grown[:, :-1] |= a[:, 1:]
    return bool((grown & b).any())


# --- bone marrow and liver on a multi-echo slice ------------------------------------------------------------

L1 = 48
MARROW_NAMES = {0: "background", 4: "liver", 47: "T12", L1: "L1", 60: "spinal_canal"}
LABELS_ORIGIN = (100.0, -50.0, 200.0)
LABELS_AFFINE = axial((2.0, 2.0, 10.0), LABELS_ORIGIN)  # slice k at z = 200 + 10 k mm
BLOCK = (slice(1, 4), slice(3, 7), slice(4, 8))  # L1 on slices 1–3, rows 3–6, columns 4–7: 16 × 4 mm²
K = np.arange(1, 17, dtype=np.float64).reshape(4, 4)  # 1..16 over the block's cross-section


def marrow_labels() -> np.ndarray:
    labels = np.zeros((5, 10, 10), dtype=np.uint8)
    labels[BLOCK] = L1
    labels[2, 3:7, 3] = 60  # spinal canal beside the body: not vertebral, not in the ROI
    return labels


def marrow_fused_ff() -> np.ndarray:
    """FF 0.99 everywhere except slice 2's block cross-section, 0.02 k (median 0.17)."""
    ff = np.full((5, 10, 10), 0.99)
    ff[2, 3:7, 4:8] = 0.02 * K
    return ff


def marrow_slice(z_mm: float, usable: np.ndarray | None = None) -> SliceMaps:
    """A 10 × 10 slice on the labels' in-plane grid at patient ``z_mm``, the block's pixels holding k / 100
    PDFF, 10 k s⁻¹ R2*, 0.1 k mg/g iron, and other pixels values far from those."""
    pdff, r2star, iron = np.full((10, 10), 0.9), np.full((10, 10), 500.0), np.full((10, 10), 9.0)
    pdff[3:7, 4:8], r2star[3:7, 4:8], iron[3:7, 4:8] = K / 100, 10 * K, 0.1 * K
    usable = np.ones((10, 10), dtype=bool) if usable is None else usable
    x0, y0, _ = LABELS_ORIGIN
    return SliceMaps(pdff, r2star, iron, usable, axial((2.0, 2.0, 10.0), (x0, y0, z_mm)))


def test_marrow_measures_on_the_block_cross_section() -> None:
    """Slice at z = 223 mm (labels slice 2.3 → 2): ROI = the 16 block pixels; medians of k = 1..16 are 8.5,
    so PDFF 8.5 %, R2* 85 s⁻¹, iron 0.85 mg/g, and fused FF 0.02 × 8.5 = 17 %; level "L1"."""
    idps, reason = marrow_measures(
        marrow_slice(223.0), marrow_labels(), LABELS_AFFINE, MARROW_NAMES, marrow_fused_ff(), 190.0 / 4
    )
    assert reason == ""
    assert idps["vbm_roi_voxels"] == 16.0
    assert idps["vbm_pdff"] == pytest.approx(8.5, rel=TIGHT)
    assert idps["vbm_r2star"] == pytest.approx(85.0, rel=TIGHT)
    assert idps["vbm_iron"] == pytest.approx(0.85, rel=TIGHT)
    assert idps["vbm_ff"] == pytest.approx(17.0, rel=FLOAT32)
    assert idps["vbm_levels"] == "L1"


def test_marrow_unusable_pixels_leave_the_fit_medians_only() -> None:
    """Flag the block's last row (k = 13..16) unusable and make k = 1's PDFF NaN: PDFF median of k = 2..12
    is 7 %, R2* and iron over k = 1..12 are 65 s⁻¹ and 0.65 mg/g; the fused FF still uses all 16 (17 %)."""
    usable = np.ones((10, 10), dtype=bool)
    usable[6, 4:8] = False
    usable[0, 0] = False  # outside the ROI: irrelevant
    maps = marrow_slice(223.0, usable)
    maps.pdff[3, 4] = np.nan  # k = 1
    idps, reason = marrow_measures(
        maps, marrow_labels(), LABELS_AFFINE, MARROW_NAMES, marrow_fused_ff(), 64.0
    )
    assert reason == ""
    assert idps["vbm_roi_voxels"] == 16.0
    assert idps["vbm_pdff"] == pytest.approx(7.0, rel=TIGHT)
    assert idps["vbm_r2star"] == pytest.approx(65.0, rel=TIGHT)
    assert idps["vbm_iron"] == pytest.approx(0.65, rel=TIGHT)
    assert idps["vbm_ff"] == pytest.approx(17.0, rel=FLOAT32)


def test_marrow_roi_from_a_merged_vertebral_body_class() -> None:
    """The block named ``vertebral_body`` (one class, no levels) is the same 16-pixel ROI with the same
    medians (8.5 %, 17 %), and crosses no level ("")."""
    names = {0: "background", L1: "vertebral_body"}
    idps, reason = marrow_measures(
        marrow_slice(223.0), marrow_labels(), LABELS_AFFINE, names, marrow_fused_ff(), 64.0
    )
    assert reason == ""
    assert idps["vbm_roi_voxels"] == 16.0
    assert idps["vbm_pdff"] == pytest.approx(8.5, rel=TIGHT)
    assert idps["vbm_ff"] == pytest.approx(17.0, rel=FLOAT32)
    assert idps["vbm_levels"] == ""


@pytest.mark.parametrize("z_mm", [200.0, 240.0, 203.0, 500.0, -100.0])
def test_marrow_slice_missing_the_vertebra(z_mm: float) -> None:
    """Slices at labels slices 0 and 4 (no vertebra), and far outside the volume: no ROI, NaN medians."""
    idps, reason = marrow_measures(
        marrow_slice(z_mm), marrow_labels(), LABELS_AFFINE, MARROW_NAMES, marrow_fused_ff(), 10.0
    )
    assert reason == "no_intersection"
    assert idps["vbm_roi_voxels"] == 0.0
    assert idps["vbm_levels"] == ""
    assert all(math.isnan(idps[k]) for k in ("vbm_pdff", "vbm_ff", "vbm_r2star", "vbm_iron"))


def test_marrow_roi_smaller_than_the_minimum_area() -> None:
    """The ROI is 16 × 4 = 64 mm²: a 64 mm² minimum measures it; 64.5 mm² excludes it (still counted)."""
    args = (marrow_labels(), LABELS_AFFINE, MARROW_NAMES, marrow_fused_ff())
    assert marrow_slice(223.0).pixel_area_mm2 == pytest.approx(4.0, rel=TIGHT)
    idps, reason = marrow_measures(marrow_slice(223.0), *args, 64.0)
    assert reason == "" and idps["vbm_pdff"] == pytest.approx(8.5, rel=TIGHT)
    idps, reason = marrow_measures(marrow_slice(223.0), *args, 64.5)
    assert reason == "roi_too_small"
    assert idps["vbm_roi_voxels"] == 16.0
    assert idps["vbm_levels"] == "L1"
    assert all(math.isnan(idps[k]) for k in ("vbm_pdff", "vbm_ff", "vbm_r2star", "vbm_iron"))


def test_marrow_on_a_finer_slice_of_head_to_feet_labels() -> None:
    """Labels stored head → feet (z step −10 mm from 240 mm, so the block spans 230–210 mm) and a slice of
    1 mm pixels offset by −0.25 mm: each label voxel covers 2 × 2 pixels, the ROI is 64 pixels = 64 mm²,
    and the fused FF median is still 17 %. Two levels side by side read "T12+L1"."""
    labels = marrow_labels()[::-1].copy()  # slice 2 stays slice 2
    labels[2, 3:7, 4:6] = 47  # the block's left half is T12 on this slice
    fused = marrow_fused_ff()[::-1].copy()
    flipped = axial((2.0, 2.0, -10.0), (100.0, -50.0, 240.0))
    x0, y0, _ = LABELS_ORIGIN
    shape = (20, 20)
    maps = SliceMaps(
        np.full(shape, 0.05),
        np.full(shape, 40.0),
        np.full(shape, 1.0),
        np.ones(shape, dtype=bool),
        axial((1.0, 1.0, 1.0), (x0 - 0.25, y0 - 0.25, 218.0)),  # (240 − 218) / 10 = 2.2 → slice 2
    )
    assert maps.pixel_area_mm2 == pytest.approx(1.0, rel=TIGHT)
    idps, reason = marrow_measures(maps, labels, flipped, MARROW_NAMES, fused, 64.0)
    assert reason == ""
    assert idps["vbm_roi_voxels"] == 64.0
    assert idps["vbm_ff"] == pytest.approx(17.0, rel=FLOAT32)
    assert idps["vbm_pdff"] == pytest.approx(5.0, rel=TIGHT)
    assert idps["vbm_levels"] == "T12+L1"
    _, reason = marrow_measures(maps, labels, flipped, MARROW_NAMES, fused, 64.5)
    assert reason == "roi_too_small"


def test_liver_measures_over_the_projected_liver() -> None:
    """Liver on labels slice 2, rows 0–1, columns 0–4 (10 pixels, PDFF k / 100 and R2* 5 k for k = 1..10):
    medians 5.5 % and 27.5 s⁻¹; with pixel k = 1 unusable, 6 % and 30 s⁻¹ over 9 pixels."""
    labels = np.zeros((5, 10, 10), dtype=np.uint8)
    labels[2, 0:2, 0:5] = 4
    labels[3, 5:, :] = 4  # liver on another slice: not sampled
    k = np.arange(1, 11, dtype=np.float64).reshape(2, 5)
    maps = marrow_slice(221.0)
    maps.pdff[0:2, 0:5], maps.r2star[0:2, 0:5] = k / 100, 5 * k
    idps, reason = liver_measures(maps, labels, LABELS_AFFINE, MARROW_NAMES)
    assert reason == ""
    assert idps["liver_roi_voxels"] == 10.0
    assert idps["liver_pdff"] == pytest.approx(5.5, rel=TIGHT)
    assert idps["liver_r2star"] == pytest.approx(27.5, rel=TIGHT)
    maps.usable[0, 0] = False
    idps, reason = liver_measures(maps, labels, LABELS_AFFINE, MARROW_NAMES)
    assert reason == ""
    assert idps["liver_roi_voxels"] == 9.0
    assert idps["liver_pdff"] == pytest.approx(6.0, rel=TIGHT)
    assert idps["liver_r2star"] == pytest.approx(30.0, rel=TIGHT)


def test_slice_measures_without_a_fitted_slice() -> None:
    """No fitted slice (None): every marrow and liver IDP missing, levels empty, "no_multiecho_slice"."""
    marrow, reason = marrow_measures(
        None, marrow_labels(), LABELS_AFFINE, MARROW_NAMES, marrow_fused_ff(), 64.0
    )
    assert reason == "no_multiecho_slice" and marrow["vbm_levels"] == ""
    assert set(marrow) == set(MARROW_IDPS) and all(
        np.isnan(v) for k, v in marrow.items() if k != "vbm_levels"
    )
    liver, reason = liver_measures(None, marrow_labels(), LABELS_AFFINE, MARROW_NAMES)
    assert reason == "no_multiecho_slice" and set(liver) == set(LIVER_IDPS)
    assert all(np.isnan(v) for v in liver.values())


def test_liver_measures_without_liver_in_the_slice() -> None:
    """A slice at labels slice 1 (no liver there): NaN medians over 0 pixels, "no_liver_in_slice"."""
    labels = np.zeros((5, 10, 10), dtype=np.uint8)
    labels[2, 0:2, 0:5] = 4
    idps, reason = liver_measures(marrow_slice(210.0), labels, LABELS_AFFINE, MARROW_NAMES)
    assert reason == "no_liver_in_slice"
    assert idps["liver_roi_voxels"] == 0.0
    assert math.isnan(idps["liver_pdff"]) and math.isnan(idps["liver_r2star"])


# --- whole-body measures ----------------------------------------------------------------------------------

# Slices run foot → head (index 0 = feet); 2 × 2 × 5 mm voxels = 0.02 cm³.
BODY_AFFINE = axial((2.0, -2.0, 5.0), (0.0, 0.0, 0.0))
VOXEL_CM3 = 0.02
# Thigh voxels per slice on slices 0–1 (so twice these in all), one row each.
THIGH_PER_SLICE = {
    "thigh_anterior_left": 5,
    "thigh_posterior_left": 3,
    "thigh_medial_left": 2,
    "thigh_anterior_right": 6,
    "thigh_posterior_right": 2,
    "thigh_medial_right": 1,
}


def body_case() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels, fused FF, body) of 10 slices × 12 rows × 20 columns.

    Body on every slice: trunk rows 2–9 × columns 5–14 (80 px) and two 3 × 3 arms at columns 0–2 and 17–19,
    2 columns clear of it. Subcutaneous fat: z + 1 trunk pixels on slice z (row 2, from column 5), all of
    both arms, and one pixel outside the body. Femur left on slices 0–2 (top 2), right on 0–1; T10 on
    slice 5, T9 on 6–7 (top 7), T8 on 8–9.
    """
    labels = np.zeros((10, 12, 20), dtype=np.uint8)
    body = np.zeros(labels.shape, dtype=bool)
    body[:, 2:10, 5:15] = True
    body[:, 4:7, 0:3] = body[:, 4:7, 17:20] = True
    for z in range(10):
        labels[z, 2, 5 : 5 + z + 1] = LABELS["subcutaneous_fat"]
    labels[:, 4:7, 0:3] = labels[:, 4:7, 17:20] = LABELS["subcutaneous_fat"]
    labels[:, 0, 10] = LABELS["subcutaneous_fat"]
    for row, (name, n) in enumerate(THIGH_PER_SLICE.items(), start=4):
        labels[0:2, row, 5 : 5 + n] = LABELS[name]
    labels[0, 4, 12:15] = LABELS["gluteal_left"]  # not a thigh compartment
    labels[0:3, 3, 5:8] = LABELS["femur_left"]
    labels[0:2, 3, 10:12] = LABELS["femur_right"]
    labels[3:6, 5:7, 6:10] = LABELS["visceral_fat"]  # 24 voxels
    labels[4:7, 7:9, 6:11] = LABELS["liver"]  # 30 voxels
    labels[5, 9, 8:11] = LABELS["T10"]
    labels[6:8, 9, 8:11] = LABELS["T9"]
    labels[8:10, 9, 8:11] = LABELS["T8"]
    fused = np.full(labels.shape, 0.95)
    fused[0:3, 3, 5:8] = np.arange(1, 10).reshape(3, 3) / 10  # femur left: 0.1..0.9, median 0.5
    fused[0:2, 3, 10:12] = [[0.1, 0.3], [0.5, 0.9]]  # femur right: median (0.3 + 0.5) / 2 = 0.4
    return labels, fused, body


def drop(labels: np.ndarray, *names: str) -> np.ndarray:
    """``labels`` with the voxels of ``names`` made background."""
    out = labels.copy()
    out[np.isin(out, [LABELS[n] for n in names])] = 0
    return out


@pytest.mark.parametrize("head_first", [False, True])
def test_body_measures_by_hand(head_first: bool) -> None:
    """Thigh compartments 10, 6, 4 / 12, 4, 2 voxels → 0.2, 0.12, 0.08 / 0.24, 0.08, 0.04 cm³: TMV 0.76,
    P/A 0.2 / 0.44, asymmetry 0.04 / 0.38; VAT 24 and liver 30 voxels → 4.8e-4 and 6e-4 L; femur FF 50 %
    and 40 %; ASAT = trunk fat of the slices above 2 (femur top) up to 7 (T9 top): 4 + … + 8 = 30 voxels
    → 6e-4 L.
    The same with the slices stored head → feet."""
    labels, fused, body = body_case()
    if head_first:
        labels, fused, body = labels[::-1], fused[::-1], body[::-1]
    idps, reasons = body_measures(labels, BODY_AFFINE, LABEL_NAMES, fused, body, foot_to_head=not head_first)
    assert reasons == {}
    expected_cm3 = {name: 2 * n * VOXEL_CM3 for name, n in THIGH_PER_SLICE.items()}
    for name, cm3 in expected_cm3.items():
        assert idps[f"{name}_cm3"] == pytest.approx(cm3, rel=TIGHT)
    assert idps["thigh_muscle_left_cm3"] == pytest.approx(0.40, rel=TIGHT)
    assert idps["thigh_muscle_right_cm3"] == pytest.approx(0.36, rel=TIGHT)
    assert idps["tmv_cm3"] == pytest.approx(0.76, rel=TIGHT)
    assert idps["pa_ratio"] == pytest.approx(0.2 / 0.44, rel=TIGHT)
    assert idps["thigh_asymmetry"] == pytest.approx(0.04 / 0.38, rel=1e-9)
    assert idps["vat_l"] == pytest.approx(4.8e-4, rel=TIGHT)
    assert idps["liver_volume_l"] == pytest.approx(6.0e-4, rel=TIGHT)
    assert idps["femur_ff_left"] == pytest.approx(50.0, rel=TIGHT)
    assert idps["femur_ff_right"] == pytest.approx(40.0, rel=TIGHT)
    assert idps["asat_l"] == pytest.approx(30 * VOXEL_CM3 / 1000, rel=TIGHT)


def test_body_asat_depends_on_the_slice_direction() -> None:
    """Told the wrong direction (head → feet for foot → head slices), the superior ends become femur slice 0
    and T9 slice 6, which is then not above the femur: ASAT NaN with "t9_not_above_femur"."""
    labels, fused, body = body_case()
    idps, reasons = body_measures(labels, BODY_AFFINE, LABEL_NAMES, fused, body, foot_to_head=False)
    assert math.isnan(idps["asat_l"]) and reasons == {"fat": "t9_not_above_femur"}


def test_body_measures_missing_a_thigh_compartment() -> None:
    """No medial right thigh voxel: reason "thigh_labels_absent" and no thigh keys; the rest stays."""
    labels, fused, body = body_case()
    idps, reasons = body_measures(
        drop(labels, "thigh_medial_right"), BODY_AFFINE, LABEL_NAMES, fused, body, foot_to_head=True
    )
    assert reasons == {"thigh": "thigh_labels_absent"}
    assert not any(key.startswith("thigh_") for key in idps)
    assert "tmv_cm3" not in idps and "pa_ratio" not in idps
    assert idps["vat_l"] == pytest.approx(4.8e-4, rel=TIGHT)
    assert idps["asat_l"] == pytest.approx(30 * VOXEL_CM3 / 1000, rel=TIGHT)
    # A names mapping without the compartment at all behaves the same.
    names = {i: n for i, n in LABEL_NAMES.items() if n != "thigh_medial_right"}
    idps, reasons = body_measures(labels, BODY_AFFINE, names, fused, body, foot_to_head=True)
    assert reasons == {"thigh": "thigh_labels_absent"} and "tmv_cm3" not in idps


def test_body_measures_missing_t9() -> None:
    """Without T9 (T8 and T10 do not stand in for it): ASAT NaN with "no_t9_for_asat"; the rest stays."""
    labels, fused, body = body_case()
    idps, reasons = body_measures(
        drop(labels, "T9"), BODY_AFFINE, LABEL_NAMES, fused, body, foot_to_head=True
    )
    assert math.isnan(idps["asat_l"])
    assert reasons == {"fat": "no_t9_for_asat"}
    assert idps["tmv_cm3"] == pytest.approx(0.76, rel=TIGHT)
    assert idps["vat_l"] == pytest.approx(4.8e-4, rel=TIGHT)


def test_body_measures_missing_femurs() -> None:
    """Without the left femur, the right one's top (slice 1) bounds ASAT: 3 + … + 8 = 33 voxels, and
    femur FF left is NaN. Without both: ASAT NaN ("no_femur_for_asat") and both femur FFs NaN."""
    labels, fused, body = body_case()
    idps, reasons = body_measures(
        drop(labels, "femur_left"), BODY_AFFINE, LABEL_NAMES, fused, body, foot_to_head=True
    )
    assert reasons == {"femur": "femur_labels_absent"}
    assert math.isnan(idps["femur_ff_left"])
    assert idps["femur_ff_right"] == pytest.approx(40.0, rel=TIGHT)
    assert idps["asat_l"] == pytest.approx(33 * VOXEL_CM3 / 1000, rel=TIGHT)
    idps, reasons = body_measures(
        drop(labels, "femur_left", "femur_right"), BODY_AFFINE, LABEL_NAMES, fused, body, foot_to_head=True
    )
    assert reasons == {"fat": "no_femur_for_asat", "femur": "femur_labels_absent"}
    assert math.isnan(idps["asat_l"])
    assert math.isnan(idps["femur_ff_left"]) and math.isnan(idps["femur_ff_right"])


def test_body_measures_without_fat_or_liver_names() -> None:
    """A names mapping that lacks visceral fat and liver gives NaN VAT and liver volume."""
    labels, fused, body = body_case()
    names = {i: n for i, n in LABEL_NAMES.items() if n not in ("visceral_fat", "liver")}
    idps, _ = body_measures(labels, BODY_AFFINE, names, fused, body, foot_to_head=True)
    assert math.isnan(idps["vat_l"]) and math.isnan(idps["liver_volume_l"])
