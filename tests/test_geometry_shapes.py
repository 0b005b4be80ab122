"""Grids, affines and the shape painter against analytic answers."""

from __future__ import annotations

import numpy as np
import pytest

from cohortscale.geometry import Grid, affine_from_dicom, apply_affine
from cohortscale.synth.shapes import Capsule, Ellipsoid, Intersection, Tube, paint, points_inside, rotation_z


def test_affine_from_dicom_hand_example() -> None:
    affine = affine_from_dicom([1, 0, 0, 0, 1, 0], [-100.0, -50.0, 20.0], [2.0, 3.0], [0.0, 0.0, -4.0])
    # (column, row, slice) → LPS: a column step is the column spacing (3 mm) along x.
    np.testing.assert_allclose(apply_affine(affine, [1, 0, 0]), [-97.0, -50.0, 20.0])
    np.testing.assert_allclose(apply_affine(affine, [0, 1, 0]), [-100.0, -48.0, 20.0])
    np.testing.assert_allclose(apply_affine(affine, [0, 0, 1]), [-100.0, -50.0, 16.0])


def test_axis_coordinates_match_points() -> None:
    grid = Grid.axial((5, 4, 3), (2.0, 3.0, 4.5), [-10.0, 7.0, 100.0])
    xs, ys, zs = grid.axis_coordinates()
    pts = grid.points()
    np.testing.assert_allclose(pts[..., 0], np.broadcast_to(xs[None, None, :], grid.shape))
    np.testing.assert_allclose(pts[..., 1], np.broadcast_to(ys[None, :, None], grid.shape))
    np.testing.assert_allclose(pts[..., 2], np.broadcast_to(zs[:, None, None], grid.shape))
    assert zs[1] - zs[0] == pytest.approx(-4.5)
    np.testing.assert_allclose(grid.spacing, [2.0, 3.0, 4.5])


def _unit_grid(half: float = 60.0, step: float = 1.0) -> Grid:
    n = int(2 * half / step)
    return Grid.axial((n, n, n), (step, step, step), [-half + step / 2, -half + step / 2, half - step / 2])


@pytest.mark.parametrize("rotation", [None, rotation_z(0.6)])
def test_ellipsoid_volume(rotation) -> None:
    axes = np.array([40.0, 25.0, 30.0])
    labels = paint(_unit_grid(), [(1, Ellipsoid([1.0, -2.0, 3.0], axes, rotation))])
    assert labels.sum() == pytest.approx(4 / 3 * np.pi * axes.prod(), rel=0.01)


def test_tube_sector_areas_follow_angles() -> None:
    z = [-50.0, 50.0]
    sectors = [(-np.pi, -np.pi + 2.5), (-np.pi + 2.5, 1.0), (1.0, np.pi)]
    parts = [(i + 1, Tube(z, [0, 0], [0, 0], [45, 45], [45, 45], sector=s)) for i, s in enumerate(sectors)]
    labels = paint(_unit_grid(), parts)
    counts = np.bincount(labels.ravel(), minlength=4)[1:]
    spans = np.array([s[1] - s[0] for s in sectors])
    np.testing.assert_allclose(counts / counts.sum(), spans / spans.sum(), atol=0.01)
    assert counts.sum() == pytest.approx(np.pi * 45**2 * 100, rel=0.01)


def test_capsule_and_intersection_volumes() -> None:
    capsule = Capsule([0, 0, -30], [0, 0, 30], 10.0)
    labels = paint(_unit_grid(), [(1, capsule)])
    assert labels.sum() == pytest.approx(np.pi * 100 * 60 + 4 / 3 * np.pi * 1000, rel=0.02)
    half_space = Tube([-100.0, 100.0], [50.0, 50.0], [0, 0], [50.0, 50.0], [200.0, 200.0])
    clipped = paint(_unit_grid(), [(1, Intersection([Ellipsoid([0, 0, 0], [30, 30, 30]), half_space]))])
    assert clipped.sum() == pytest.approx(0.5 * 4 / 3 * np.pi * 30**3, rel=0.02)


def test_painter_order_and_general_grids_agree() -> None:
    parts = [(1, Ellipsoid([0, 0, 0], [40, 30, 20])), (2, Ellipsoid([10, 0, 0], [15, 15, 15]))]
    grid = _unit_grid(50.0, 2.0)
    labels = paint(grid, parts)
    assert labels[tuple(np.array(grid.shape) // 2)] in (1, 2)
    np.testing.assert_array_equal(labels, points_inside(parts, grid.points()))
    # An oblique grid takes the general path and must see the same volumes.
    rot = np.eye(4)
    rot[:3, :3] = rotation_z(0.5) @ np.diag([2.0, 2.0, 2.0])
    rot[:3, 3] = apply_affine(rot, [-25, -25, -25])
    oblique = paint(Grid((50, 50, 50), rot), parts)
    for label in (1, 2):
        assert (oblique == label).sum() == pytest.approx((labels == label).sum(), rel=0.03)
