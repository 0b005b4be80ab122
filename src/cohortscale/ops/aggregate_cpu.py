"""Semi-global aggregation of a field-map cost volume as compiled loops (Numba): the CPU twin of
:mod:`cohortscale.ops.aggregate_cuda`.

Each path direction is one compiled walk over the planes. Per step and image line it takes the previous
step's costs of the neighbouring line, their minimum over the free labels and the linear distance
transform by label shifts of 1, 2, 4, … up to the reach, with the CUDA kernel's float32 operations in its
order, so that both backends give the same volume bit for bit. A line's labels stay in cache through all
of its shifts, where NumPy operations over whole steps (a dozen per step) went through memory at each: on
a cost volume of challenge case 12's size (3 × 157 × 256 voxels, 64 labels) the walks take 0.35–0.38 s
against 0.75–0.89 s, with the same volume bit for bit (2-core EPYC). The first call compiles them (6–8 s)
into a cache on disk that later processes load in 0.2 s.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(inline="always")
def _lower_to(out, values, moved, penalty):
    """``out = minimum(values, moved + penalty)`` over 1-D views: a select, not min(), so that the loop
    runs on vector units."""
    for k in range(out.size):
        candidate = moved[k] + penalty
        out[k] = values[k] if values[k] < candidate else candidate


@numba.njit(inline="always")
def _shift_pass(out, values, shift, penalty, periodic):
    """One step of the linear distance transform: each label takes the smaller of its own cost and the cost
    ``shift`` labels below it (above it when negative) plus ``penalty``; beyond the grid's ends there is
    nothing to take, unless the labels wrap."""
    n = values.size
    if shift > 0:
        _lower_to(out[shift:], values[shift:], values[: n - shift], penalty)
        if periodic:
            _lower_to(out[:shift], values[:shift], values[n - shift :], penalty)
        else:
            out[:shift] = values[:shift]
    else:
        shift = -shift
        _lower_to(out[: n - shift], values[: n - shift], values[shift:], penalty)
        if periodic:
            _lower_to(out[n - shift :], values[n - shift :], values[:shift], penalty)
        else:
            out[n - shift :] = values[n - shift :]


@numba.njit(cache=True, nogil=True)
def walk_direction(
    cost,
    weights,
    total,
    along_rows,
    step_along,
    step_across,
    free_labels,
    penalty_per_label,
    max_penalty,
    periodic,
    reach,
):
    """Add one path direction's costs to ``total``, in place.

    Parameters
    ----------
    cost : ndarray, float32, C-contiguous, shape (Z, Y, X, K)
    weights : ndarray, float32, C-contiguous, shape (Z, Y, X)
    total : ndarray, float32, C-contiguous, shape (Z, Y, X, K)
        Sum of the path costs of the directions walked so far.
    along_rows, step_along, step_across
        How the direction walks a plane (:func:`cohortscale.ops.fieldmap.path_axes`).
    free_labels : int
    penalty_per_label, max_penalty : numpy.float32
    periodic : bool
        As in :func:`cohortscale.ops.fieldmap.aggregate`.
    reach : int
        The longest shift of the distance transform
        (:func:`cohortscale.ops.fieldmap.distance_transform_reach`).
    """
    planes, n_rows, n_cols, n_labels = cost.shape
    n_along, n_lines = (n_rows, n_cols) if along_rows else (n_cols, n_rows)
    zero = np.float32(0)
    own = np.empty((n_lines, n_labels), np.float32)
    previous = np.empty((n_lines, n_labels), np.float32)
    moved = np.empty((n_lines, n_labels), np.float32)
    smooth = np.empty(n_labels, np.float32)
    shifted = np.empty(n_labels, np.float32)
    floor = np.empty(n_lines, np.float32)
    pair = np.empty(n_lines, np.float32)
    weight = np.empty(n_lines, np.float32)
    weight_before = np.empty(n_lines, np.float32)
    for plane in range(planes):
        for s in range(n_along):
            i = s if step_along > 0 else n_along - 1 - s
            own[:] = cost[plane, i] if along_rows else cost[plane, :, i]
            weight_before[:] = weight
            weight[:] = weights[plane, i] if along_rows else weights[plane, :, i]
            for line in range(n_lines):
                source = line - step_across
                if s == 0 or source < 0 or source >= n_lines:
                    continue
                before = previous[source]
                lowest = before[0]
                for k in range(1, n_labels):
                    lowest = lowest if lowest < before[k] else before[k]
                floor[line] = lowest
                pair[line] = min(weight[line], weight_before[source])
                # First the minimum over ±free_labels (windows compose, so shifts doubling up to the
                # half-width suffice; a wider window than the grid adds nothing), then the distance
                # transform's shifts of 1, 2, 4, … labels up to the reach.
                smooth[:] = before
                half_width, covered, step, shift = min(free_labels, n_labels - 1), 0, 1, 1
                while covered < half_width or shift <= reach:
                    if covered < half_width:
                        step = min(step, half_width - covered)
                        amount, penalty = step, zero
                        covered += step
                        step *= 2
                    else:
                        amount, penalty = shift, penalty_per_label * pair[line] * np.float32(shift)
                        shift *= 2
                    _shift_pass(shifted, smooth, amount, penalty, periodic)
                    _shift_pass(smooth, shifted, -amount, penalty, periodic)
                moved[line] = smooth
            for line in range(n_lines):
                source = line - step_across
                if s == 0 or source < 0 or source >= n_lines:
                    previous[line] = own[line]
                    continue
                capped = floor[line] + max_penalty * pair[line]
                for k in range(n_labels):
                    candidate = moved[line, k] if moved[line, k] < capped else capped
                    previous[line, k] = own[line, k] + (candidate - floor[line])
            if along_rows:
                total[plane, i] += previous
            else:
                total[plane, :, i] += previous
