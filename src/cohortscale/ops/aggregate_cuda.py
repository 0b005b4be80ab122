"""Semi-global aggregation of a field-map cost volume as one CUDA kernel per path direction (CuPy): the GPU
twin of :mod:`cohortscale.ops.aggregate_cpu`.

Walking each image line with array operations took a dozen per step, and on a GPU every one of them is a
kernel launch: for a single slice the launches, not the arithmetic, set the time (2.3 s of challenge case
12's 3.0 s fit on an H200, over 23,000 label shifts; with this kernel the fit takes 1.3 s, most of it the
region moves on the host). Here one thread block walks one plane's whole path: per step it takes the
previous step's costs of the neighbouring lines, their minimum filter over the free labels and the linear
distance transform, in the same order of float32 operations as the CPU kernel, without fused
multiply–adds, so that both give the same volume bit for bit.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np

from cohortscale.ops.fieldmap import distance_transform_reach, path_axes

#: Threads per block: one block walks one plane, its threads share the labels of all its lines.
THREADS_PER_BLOCK = 1024

_SOURCE = r"""
__device__ __forceinline__ int wrap(int k, int n) { return ((k % n) + n) % n; }

extern "C" __global__ void sgm_direction(
    const float* __restrict__ cost, const float* __restrict__ weights, float* __restrict__ total,
    float* __restrict__ scratch, const int n_along, const int n_lines, const int n_labels,
    const long long along_stride, const long long line_stride, const long long weight_along_stride,
    const long long weight_line_stride, const int step_along, const int step_across, const int free_labels,
    const float penalty_per_label, const float max_penalty, const int periodic, const int reach)
{
    const int plane = blockIdx.x;
    const long long plane_size = (long long)n_along * n_lines * n_labels;
    const long long row = (long long)n_lines * n_labels;
    cost += plane * plane_size;
    total += plane * plane_size;
    weights += plane * (long long)n_along * n_lines;
    // Per plane: the previous step's path costs, two buffers of the distance transform, and per line
    // the previous minimum and the pair weight.
    float* previous = scratch + plane * (3 * row + 2 * n_lines);
    float* current = previous + row;
    float* other = current + row;
    float* floor_cost = other + row;
    float* pair = floor_cost + n_lines;

    for (int s = 0; s < n_along; ++s) {
        const int i = step_along > 0 ? s : n_along - 1 - s;
        if (s > 0) {
            const int before = i - step_along;
            for (int l = threadIdx.x; l < n_lines; l += blockDim.x) {
                const int from = l - step_across;
                if (from < 0 || from >= n_lines) continue;
                float lowest = previous[from * n_labels];
                for (int k = 1; k < n_labels; ++k) lowest = fminf(lowest, previous[from * n_labels + k]);
                floor_cost[l] = lowest;
                pair[l] = fminf(weights[i * weight_along_stride + l * weight_line_stride],
                                weights[before * weight_along_stride + from * weight_line_stride]);
            }
            // Minimum over ±free_labels (beyond the grid's ends nothing, unless the labels wrap).
            for (long long e = threadIdx.x; e < row; e += blockDim.x) {
                const int l = e / n_labels, k = e % n_labels, from = l - step_across;
                if (from < 0 || from >= n_lines) continue;
                const float* line = previous + (long long)from * n_labels;
                float lowest = line[k];
                for (int d = 1; d <= free_labels; ++d) {
                    for (int side = -1; side <= 1; side += 2) {
                        const int j = k + side * d;
                        if (periodic) lowest = fminf(lowest, line[wrap(j, n_labels)]);
                        else if (j >= 0 && j < n_labels) lowest = fminf(lowest, line[j]);
                    }
                }
                current[e] = lowest;
            }
            __syncthreads();
            // Linear distance transform by shifts of 1, 2, 4, ... labels up to the reach, each way, as the
            // CPU kernel.
            for (int shift = 1; shift <= reach; shift *= 2) {
                for (int sign = 1; sign >= -1; sign -= 2) {
                    for (long long e = threadIdx.x; e < row; e += blockDim.x) {
                        const int l = e / n_labels, k = e % n_labels, from = l - step_across;
                        if (from < 0 || from >= n_lines) continue;
                        const float step_penalty =
                            __fmul_rn(__fmul_rn(penalty_per_label, pair[l]), (float)shift);
                        const int j = k - sign * shift;
                        float moved = __int_as_float(0x7f800000);  // +inf beyond the grid's ends
                        if (periodic) moved = current[l * n_labels + wrap(j, n_labels)];
                        else if (j >= 0 && j < n_labels) moved = current[l * n_labels + j];
                        other[e] = fminf(current[e], __fadd_rn(moved, step_penalty));
                    }
                    __syncthreads();
                    float* swap = current; current = other; other = swap;
                }
            }
        }
        for (long long e = threadIdx.x; e < row; e += blockDim.x) {
            const int l = e / n_labels, k = e % n_labels, from = l - step_across;
            const long long at = i * along_stride + l * line_stride + k;
            float value = cost[at];
            if (s > 0 && from >= 0 && from < n_lines) {
                const float lowest = floor_cost[l];
                const float capped = __fadd_rn(lowest, __fmul_rn(max_penalty, pair[l]));
                value = __fadd_rn(value, __fsub_rn(fminf(current[e], capped), lowest));
            }
            previous[e] = value;
            total[at] = __fadd_rn(total[at], value);
        }
        __syncthreads();
    }
}
"""


@cache
def _kernel() -> Any:
    import cupy

    # No fused multiply–adds: each product and sum rounds to float32 as on the CPU.
    return cupy.RawKernel(_SOURCE, "sgm_direction", options=("--fmad=false",))


def aggregate_cuda(
    cost,
    weights,
    directions: tuple[tuple[int, int], ...],
    free_labels: int,
    penalty_per_label: float,
    max_penalty: float,
    periodic: bool,
):
    """:func:`cohortscale.ops.fieldmap.aggregate` of float32 CuPy arrays, one kernel launch per direction.

    Parameters
    ----------
    cost : cupy.ndarray, float32, shape (Z, Y, X, K)
    weights : cupy.ndarray, float32, shape (Z, Y, X)
    directions : tuple of (row step, column step)
        Path directions, summed in this order.
    free_labels, penalty_per_label, max_penalty, periodic
        As in :func:`~cohortscale.ops.fieldmap.aggregate`.

    Returns
    -------
    cupy.ndarray, float32, shape (Z, Y, X, K)
        The same values as the CPU walks of :func:`cohortscale.ops.fieldmap.aggregate`, bit for bit.
    """
    import cupy

    cost = cupy.ascontiguousarray(cost)
    weights = cupy.ascontiguousarray(weights)
    planes, rows, cols, n_labels = cost.shape
    total = cupy.zeros_like(cost)
    longest = max(rows, cols)
    scratch = cupy.empty(planes * (3 * longest * n_labels + 2 * longest), dtype=cupy.float32)
    for dy, dx in directions:
        along_rows, step_along, step_across = path_axes(dy, dx)
        n_along, n_lines = (rows, cols) if along_rows else (cols, rows)
        along_stride, line_stride = (cols * n_labels, n_labels) if along_rows else (n_labels, cols * n_labels)
        weight_strides = (cols, 1) if along_rows else (1, cols)
        _kernel()(
            (planes,),
            (THREADS_PER_BLOCK,),
            (
                cost,
                weights,
                total,
                scratch,
                np.int32(n_along),
                np.int32(n_lines),
                np.int32(n_labels),
                np.int64(along_stride),
                np.int64(line_stride),
                np.int64(weight_strides[0]),
                np.int64(weight_strides[1]),
                np.int32(step_along),
                np.int32(step_across),
                np.int32(free_labels),
                np.float32(penalty_per_label),
                np.float32(max_penalty),
                np.int32(periodic),
                np.int32(distance_transform_reach(n_labels, penalty_per_label, max_penalty)),
            ),
        )
    return total
