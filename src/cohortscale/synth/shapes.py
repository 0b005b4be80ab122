"""Solid primitives in patient coordinates and a painter that rasterises them onto any grid.

Each shape answers ``inside(x, y, z)`` for broadcastable coordinate arrays (LPS, mm) and knows a bounding
box, so painting an axis-aligned grid only evaluates the block of voxels that the box covers. The
anatomy is a list of ``(label, shape)`` painted in order, later shapes over earlier ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from cohortscale.geometry import Grid


class Shape:
    """A solid. Subclasses define :meth:`inside` and :attr:`bbox`."""

    #: ``(lo, hi)`` corners of an axis-aligned box containing the solid, LPS mm.
    bbox: tuple[np.ndarray, np.ndarray]

    def inside(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Boolean mask of points inside the solid (broadcasting ``x``, ``y``, ``z``)."""
        raise NotImplementedError


@dataclass(eq=False)
class Ellipsoid(Shape):
    """Ellipsoid with semi-axes along the columns of ``rotation`` (identity: patient axes).

    Parameters
    ----------
    center : (3,) mm
    semi_axes : (3,) mm
    rotation : (3, 3), optional
        Orthonormal matrix whose columns are the ellipsoid axes in patient coordinates.
    """

    center: np.ndarray
    semi_axes: np.ndarray
    rotation: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.center = np.asarray(self.center, dtype=float)
        self.semi_axes = np.asarray(self.semi_axes, dtype=float)
        rot = np.eye(3) if self.rotation is None else np.asarray(self.rotation, dtype=float)
        self.rotation = rot
        half = np.sqrt(((rot * self.semi_axes) ** 2).sum(axis=1))
        self.bbox = (self.center - half, self.center + half)

    def inside(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        d = (x - self.center[0], y - self.center[1], z - self.center[2])
        total = 0.0
        for axis in range(3):
            r = self.rotation[:, axis]  # type: ignore[index]
            u = d[0] * r[0] + d[1] * r[1] + d[2] * r[2]
            total = total + (u / self.semi_axes[axis]) ** 2
        return total <= 1.0


@dataclass(eq=False)
class Capsule(Shape):
    """Cylinder with hemispherical caps around the segment ``a``→``b`` (a bone shaft, a tendon).

    Parameters
    ----------
    a, b : (3,) mm
        Segment end points.
    radius : float, mm
    """

    a: np.ndarray
    b: np.ndarray
    radius: float

    def __post_init__(self) -> None:
        self.a = np.asarray(self.a, dtype=float)
        self.b = np.asarray(self.b, dtype=float)
        self.bbox = (
            np.minimum(self.a, self.b) - self.radius,
            np.maximum(self.a, self.b) + self.radius,
        )

    def inside(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        ab = self.b - self.a
        d = (x - self.a[0], y - self.a[1], z - self.a[2])
        t = np.clip((d[0] * ab[0] + d[1] * ab[1] + d[2] * ab[2]) / float(ab @ ab), 0.0, 1.0)
        dist2 = (d[0] - t * ab[0]) ** 2 + (d[1] - t * ab[1]) ** 2 + (d[2] - t * ab[2]) ** 2
        return dist2 <= self.radius**2


@dataclass(eq=False)
class Tube(Shape):
    """Elliptic cross-sections stacked along z, each piecewise-linear in z between knots.

    Parameters
    ----------
    z : (k,) mm
        Knot heights, strictly increasing; the tube exists for ``z[0] ≤ z ≤ z[-1]``.
    cx, cy : (k,) mm
        Section centre at each knot.
    ax, ay : (k,) mm
        Section semi-axes along x and y at each knot (≤ 0 means empty).
    sector : (2,) rad, optional
        Keep only the angles ``θ = atan2(y − cy, side·(x − cx))`` within ``[lo, hi)`` (a compartment).
    side : float
        +1 or −1: mirrors the angle's x so a sector can be written once for both legs.
    """

    z: np.ndarray
    cx: np.ndarray
    cy: np.ndarray
    ax: np.ndarray
    ay: np.ndarray
    sector: tuple[float, float] | None = None
    side: float = 1.0

    def __post_init__(self) -> None:
        for name in ("z", "cx", "cy", "ax", "ay"):
            setattr(self, name, np.asarray(getattr(self, name), dtype=float))
        if np.any(np.diff(self.z) <= 0):
            raise ValueError("tube knots must increase in z")
        reach_x = np.maximum(self.ax, 0.0)
        reach_y = np.maximum(self.ay, 0.0)
        self.bbox = (
            np.array([(self.cx - reach_x).min(), (self.cy - reach_y).min(), self.z[0]]),
            np.array([(self.cx + reach_x).max(), (self.cy + reach_y).max(), self.z[-1]]),
        )

    def section(self, z: np.ndarray) -> tuple[np.ndarray, ...]:
        """Centre and semi-axes ``(cx, cy, ax, ay)`` interpolated at heights ``z``."""
        return tuple(np.interp(z, self.z, v) for v in (self.cx, self.cy, self.ax, self.ay))

    def inside(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        cx, cy, ax, ay = self.section(z)
        valid = (z >= self.z[0]) & (z <= self.z[-1]) & (ax > 0) & (ay > 0)
        ax = np.where(valid, ax, 1.0)
        ay = np.where(valid, ay, 1.0)
        mask = valid & (((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2 <= 1.0)
        if self.sector is not None:
            theta = np.arctan2(y - cy, self.side * (x - cx))
            lo, hi = self.sector
            mask &= _angle_between(theta, lo, hi)
        return mask


def _angle_between(theta: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Whether angles lie in ``[lo, hi)`` counter-clockwise, wrapping at ±π."""
    span = (hi - lo) % (2 * np.pi)
    return ((theta - lo) % (2 * np.pi)) < span


@dataclass(eq=False)
class Box(Shape):
    """Axis-aligned box from ``lo`` to ``hi`` (mm)."""

    lo: np.ndarray
    hi: np.ndarray

    def __post_init__(self) -> None:
        self.lo = np.asarray(self.lo, dtype=float)
        self.hi = np.asarray(self.hi, dtype=float)
        self.bbox = (self.lo, self.hi)

    def inside(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        return (
            (x >= self.lo[0]) & (x <= self.hi[0])
            & (y >= self.lo[1]) & (y <= self.hi[1])
            & (z >= self.lo[2]) & (z <= self.hi[2])
        )  # fmt: skip


@dataclass(eq=False)
class Intersection(Shape):
    """Points inside every one of ``shapes`` (e.g. a muscle clipped to the body wall)."""

    shapes: Sequence[Shape]

    def __post_init__(self) -> None:
        lo = np.max([s.bbox[0] for s in self.shapes], axis=0)
        hi = np.min([s.bbox[1] for s in self.shapes], axis=0)
        self.bbox = (lo, np.maximum(hi, lo))

    def inside(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        mask = self.shapes[0].inside(x, y, z)
        for shape in self.shapes[1:]:
            mask = mask & shape.inside(x, y, z)
        return mask


def rotation_z(angle_rad: float) -> np.ndarray:
    """Rotation about the patient z axis by ``angle_rad`` (counter-clockwise seen from the head)."""
    c, s = np.cos(angle_rad), np.sin(angle_rad)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def rotation_x(angle_rad: float) -> np.ndarray:
    """Rotation about the patient x axis by ``angle_rad``."""
    c, s = np.cos(angle_rad), np.sin(angle_rad)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def paint(
    grid: Grid,
    parts: Sequence[tuple[int, Shape]],
    dtype: type = np.uint8,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Rasterise ``(label, shape)`` parts onto ``grid`` by point sampling at voxel centres.

    Parts are painted in order, so later parts overwrite earlier ones. Axis-aligned grids evaluate each
    shape only inside its bounding box (fast); other grids evaluate every voxel centre.

    Parameters
    ----------
    grid : Grid
    parts : sequence of (int, Shape)
    dtype : numpy dtype
        Label dtype.
    out : ndarray, optional
        Existing label array of ``grid.shape`` to paint over.

    Returns
    -------
    ndarray, shape ``grid.shape``
        Label of the last part containing each voxel centre, 0 where none does.
    """
    labels = np.zeros(grid.shape, dtype=dtype) if out is None else out
    if not grid.is_axis_aligned():
        pts = grid.points()
        for label, shape in parts:
            labels[shape.inside(pts[..., 0], pts[..., 1], pts[..., 2])] = label
        return labels
    xs, ys, zs = grid.axis_coordinates()
    for label, shape in parts:
        window = []
        for coords, lo, hi in zip((zs, ys, xs), shape.bbox[0][::-1], shape.bbox[1][::-1], strict=True):
            window.append(_index_window(coords, lo, hi))
        if any(w.start >= w.stop for w in window):
            continue
        kz, jy, ix = window
        mask = shape.inside(xs[None, None, ix], ys[None, jy, None], zs[kz, None, None])
        block = labels[kz, jy, ix]
        block[np.broadcast_to(mask, block.shape)] = label
    return labels


def _index_window(coords: np.ndarray, lo: float, hi: float) -> slice:
    """Slice of the (monotonic) coordinate vector whose values fall within ``[lo, hi]``."""
    if coords[-1] >= coords[0]:
        return slice(int(np.searchsorted(coords, lo, "left")), int(np.searchsorted(coords, hi, "right")))
    rev = coords[::-1]
    n = len(coords)
    start = n - int(np.searchsorted(rev, hi, "right"))
    stop = n - int(np.searchsorted(rev, lo, "left"))
    return slice(start, stop)


def points_inside(parts: Sequence[tuple[int, Shape]], points: ArrayLike) -> np.ndarray:
    """Labels at arbitrary points ``(..., 3)`` (LPS mm), painted like :func:`paint`."""
    pts = np.asarray(points, dtype=float)
    labels = np.zeros(pts.shape[:-1], dtype=np.uint8)
    for label, shape in parts:
        labels[shape.inside(pts[..., 0], pts[..., 1], pts[..., 2])] = label
    return labels
