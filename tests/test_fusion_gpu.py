"""CuPy fusion equals NumPy fusion within float32 tolerance (skipped where no CUDA GPU is present)."""

from __future__ import annotations

import numpy as np
import pytest

from cohortscale.backend import gpu_available
from cohortscale.ops.fusion import Station, fuse, fuse_dixon, neck_to_knee_grid
from cohortscale.synth.acquisition import station_slabs

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not gpu_available(), reason="needs CuPy and a CUDA GPU"),
]


def stations(seed: int) -> dict[int, Station]:
    """Six quarter-scale stations of random content at UK Biobank geometry (slices ascending)."""
    rng = np.random.default_rng(seed)
    out = {}
    for k, slab in enumerate(station_slabs(0.25, 100.0, np.array([37.0, 36.5, 38.0, 35.5, 39.0])), start=1):
        affine = slab.grid.affine.copy()
        affine[:3, 3] += (slab.grid.shape[0] - 1) * affine[:3, 2]
        affine[:3, 2] *= -1
        out[k] = Station(
            rng.integers(0, 2000, slab.grid.shape, dtype=np.uint16), affine, (0, slab.grid.shape[0])
        )
    return out


def test_cupy_equals_numpy() -> None:
    import cupy

    contrasts = {c: stations(seed) for seed, c in enumerate(("in", "opp", "fat", "water"))}
    grid = neck_to_knee_grid(list(contrasts["water"].values()), (94, 44, 56), (8.93, 8.93, 12.0))
    on_gpu = {c: {k: Station(cupy.asarray(s.volume), s.affine, s.slices) for k, s in st.items()}
              for c, st in contrasts.items()}  # fmt: skip
    for blend in ("average", "linear"):
        cpu = fuse_dixon(contrasts, grid, blend=blend, trim_slices=1, swaps="correct")
        gpu = fuse_dixon(on_gpu, grid, blend=blend, trim_slices=1, swaps="correct")
        for c in contrasts:
            np.testing.assert_allclose(gpu.volumes[c].get(), cpu.volumes[c], rtol=1e-5, atol=1e-3)
        np.testing.assert_allclose(gpu.ff.get(), cpu.ff, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(gpu.swaps.swapped, cpu.swaps.swapped)
    water = list(on_gpu["water"].values())
    np.testing.assert_allclose(
        fuse(water, grid).get(), fuse(list(contrasts["water"].values()), grid), rtol=1e-5
    )
