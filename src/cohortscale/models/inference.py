"""Sliding-window inference: a network applied to overlapping patches of a volume, blended by a Gaussian.

A whole-body volume does not fit a 3D network at once; patches do. Patches overlap so that every voxel is
predicted away from some patch's border, where a convolutional network lacks context, and the predictions
are averaged with a Gaussian importance map centred on each patch (Isensee et al., nnU-Net), so that
voxels near a patch centre count most and the blend has no seams.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import nullcontext

import numpy as np
import torch

#: Gaussian σ of the importance map as a share of the patch size (nnU-Net's choice).
IMPORTANCE_SIGMA_SCALE = 0.125

#: Floor of the importance map relative to its peak, so that patch corners still count.
IMPORTANCE_FLOOR = 1e-3


def gaussian_importance(
    patch_size: tuple[int, ...], sigma_scale: float = IMPORTANCE_SIGMA_SCALE
) -> np.ndarray:
    """Gaussian weights over a patch, peak 1 at its centre, floored at :data:`IMPORTANCE_FLOOR`.

    Parameters
    ----------
    patch_size : tuple of int
        Patch shape (voxels).
    sigma_scale : float
        σ per axis as a share of that axis' patch size.

    Returns
    -------
    ndarray, float32, shape ``patch_size``
    """
    weights = np.ones((), dtype=np.float64)
    for size in patch_size:
        position = np.arange(size) - (size - 1) / 2
        axis = np.exp(-(position**2) / (2 * (sigma_scale * size) ** 2))
        weights = np.multiply.outer(weights, axis)
    return np.maximum(weights / weights.max(), IMPORTANCE_FLOOR).astype(np.float32)


def patch_starts(size: int, patch: int, overlap: float) -> list[int]:
    """Start offsets of patches covering ``range(size)`` with at least ``overlap`` (0–1) shared.

    The step is ``patch · (1 − overlap)`` at most; the first patch starts at 0 and the last ends at
    ``size``, the others spread evenly between them. ``size`` must be at least ``patch`` (pad first).
    """
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if size < patch:
        raise ValueError(f"axis of {size} voxels is smaller than the patch ({patch})")
    if size == patch:
        return [0]
    max_step = max(1, int(patch * (1 - overlap)))
    count = math.ceil((size - patch) / max_step) + 1
    return [round(i * (size - patch) / (count - 1)) for i in range(count)]


def _windows(
    shape: tuple[int, ...], patch_size: tuple[int, ...], overlap: float
) -> Iterator[tuple[slice, ...]]:
    """Every patch window over a spatial ``shape``."""
    starts = [patch_starts(size, patch, overlap) for size, patch in zip(shape, patch_size, strict=True)]
    for corner in np.ndindex(*(len(s) for s in starts)):
        yield tuple(
            slice(axis_starts[i], axis_starts[i] + patch)
            for axis_starts, i, patch in zip(starts, corner, patch_size, strict=True)
        )


def sliding_window_inference(
    image: torch.Tensor,
    predictor: Callable[[torch.Tensor], torch.Tensor],
    patch_size: tuple[int, int, int],
    *,
    overlap: float = 0.5,
    batch_size: int = 4,
    sigma_scale: float = IMPORTANCE_SIGMA_SCALE,
    mixed_precision: bool | None = None,
    accumulate_on: torch.device | str | None = None,
) -> torch.Tensor:
    """Apply ``predictor`` to overlapping patches of ``image`` and blend the outputs.

    Parameters
    ----------
    image : Tensor, shape (C, Z, Y, X)
        One volume, already normalised, on the device the predictor runs on.
    predictor : callable
        Maps a batch (B, C, *patch_size) to outputs (B, K, *patch_size) — logits or probabilities; they
        are averaged as given.
    patch_size : tuple of int
        Patch shape (voxels); axes of ``image`` smaller than it are zero-padded, and the output cropped.
    overlap : float
        Least share of a patch that its neighbour along each axis also covers (0–1).
    batch_size : int
        Patches per predictor call.
    sigma_scale : float
        Importance-map σ as a share of the patch size.
    mixed_precision : bool, optional
        Run the predictor under ``torch.autocast`` (float16 on CUDA, bfloat16 on CPU); by default only on
        CUDA. Outputs are accumulated in float32 either way.
    accumulate_on : device, optional
        Where the blended output is accumulated (default: the image's device); the host saves GPU memory
        on large volumes with many classes.

    Returns
    -------
    Tensor, float32, shape (K, Z, Y, X)
        On ``accumulate_on``.
    """
    if image.ndim != 4:
        raise ValueError(f"image must be shaped (C, Z, Y, X), got {tuple(image.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    spatial = tuple(image.shape[1:])
    padded_shape = tuple(max(size, patch) for size, patch in zip(spatial, patch_size, strict=True))
    if padded_shape != spatial:
        pad = [(0, padded - size) for size, padded in zip(spatial, padded_shape, strict=True)]
        image = torch.nn.functional.pad(image, [width for axis in reversed(pad) for width in axis])
    device = image.device
    target = torch.device(accumulate_on) if accumulate_on is not None else device
    use_amp = device.type == "cuda" if mixed_precision is None else mixed_precision
    autocast = (
        torch.autocast(
            device_type=device.type, dtype=torch.float16 if device.type == "cuda" else torch.bfloat16
        )
        if use_amp
        else nullcontext()
    )
    importance = torch.from_numpy(gaussian_importance(patch_size, sigma_scale)).to(target)
    windows = list(_windows(padded_shape, patch_size, overlap))
    total = weight = None
    with torch.inference_mode():
        for first in range(0, len(windows), batch_size):
            batch_windows = windows[first : first + batch_size]
            batch = torch.stack([image[(slice(None), *window)] for window in batch_windows])
            with autocast:
                outputs = predictor(batch)
            outputs = outputs.float().to(target)
            if total is None:
                total = torch.zeros((outputs.shape[1], *padded_shape), dtype=torch.float32, device=target)
                weight = torch.zeros(padded_shape, dtype=torch.float32, device=target)
            for output, window in zip(outputs, batch_windows, strict=True):
                total[(slice(None), *window)].addcmul_(output, importance)  # in place: no temporary
                weight[window] += importance
    crop = tuple(slice(0, size) for size in spatial)
    return (total / weight)[(slice(None), *crop)]
