"""From fused Dixon volumes to a network's input and from its class scores back to a label volume.

The way in, :func:`prepare_input`, for one participant:

1. stack the contrasts the model card names as channels, in the card's order (:func:`assemble_channels`);
2. normalise each channel as the card says (:func:`cohortscale.models.card.normalise`);
3. resample trilinearly from the volume's own voxel spacing (:func:`spacing_from_affine`) to the card's
   (:func:`target_shape`, :func:`resample_image`).

The way back, :func:`restore`: resample the network's per-class scores trilinearly to the original grid
and take the best class per voxel there, which gives smoother and more accurate boundaries than taking
it on the model's grid and resampling the labels by nearest neighbour. Channel ``i`` of the scores is
the card's ``i``-th smallest label id (:func:`label_lookup`; :func:`channel_lookup` is the inverse, for
training targets).

Resampling keeps the volume's physical extent: along each axis the ``n`` old and ``m`` new voxels both
span ``n · spacing`` mm, and new voxel ``j`` samples old index ``(j + ½)·n/m − ½`` (voxel centres;
``align_corners=False`` in :func:`torch.nn.functional.interpolate`). As ``m`` is rounded, the new
spacing is the card's only to within half a voxel over the extent
(:attr:`PreparedGeometry.resampled_spacing_mm`).

Everything here is a pure function of arrays except :func:`read_fused`, which reads one participant's
volumes from a cohort store.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr

from cohortscale.models.card import ModelCard, normalise

#: Card input name → array name under :data:`FUSED_GROUP` in the cohort store.
FUSED_ARRAYS: dict[str, str] = {
    "water": "water",
    "fat": "fat",
    "in_phase": "in",
    "opposed_phase": "opp",
    "fat_fraction": "ff",
}

#: Store group of the fused volumes, [participant, Z, Y, X], and their affines, [participant, 4, 4]
#: (the fusion stage's ``cohortscale.pipeline.fusion.FUSED``, not imported to keep Dask out of this module).
FUSED_GROUP = "dixon/fused"

#: Classes resampled at once by :func:`restore`: bounds its memory to this many float32 class volumes on
#: the original grid (about 0.5 GB at full scale), not one per class (53 for the synthetic anatomy).
RESTORE_CLASS_CHUNK = 8

#: Largest label id a float32 copy holds exactly (2**24); :func:`resample_labels` uses float64 above it.
FLOAT32_EXACT_INT = 1 << 24

#: Integer dtypes whose every value a float32 holds exactly.
_FLOAT32_EXACT_DTYPES = (torch.bool, torch.uint8, torch.int8, torch.int16, torch.uint16)


@dataclass(frozen=True)
class PreparedGeometry:
    """Where a prepared input came from, so that :func:`restore` can bring the output back there.

    Attributes
    ----------
    original_shape : tuple of int
        Volume shape (Z, Y, X) on the store's grid, voxels.
    original_spacing_mm : tuple of float
        Its voxel spacing (z, y, x), mm.
    resampled_shape : tuple of int
        Shape (Z, Y, X) of the network input, voxels.
    label_ids : tuple of int
        The card's label ids, ascending: output channel ``i`` is class ``label_ids[i]``.
    """

    original_shape: tuple[int, int, int]
    original_spacing_mm: tuple[float, float, float]
    resampled_shape: tuple[int, int, int]
    label_ids: tuple[int, ...]

    @property
    def resampled_spacing_mm(self) -> tuple[float, float, float]:
        """Actual voxel spacing (z, y, x) of the network input, mm: the card's up to shape rounding."""
        return tuple(  # type: ignore[return-value]
            n * s / m
            for n, s, m in zip(
                self.original_shape, self.original_spacing_mm, self.resampled_shape, strict=True
            )
        )


def spacing_from_affine(affine: Any) -> tuple[float, float, float]:
    """Voxel spacing (z, y, x) of a grid from its affine.

    Parameters
    ----------
    affine : array-like, shape (4, 4)
        Maps voxel index (x, y, z) = (column, row, slice) to patient LPS, mm. Its columns may point
        anywhere (signs and obliquity do not matter), only their lengths are used.

    Returns
    -------
    tuple of float
        Lengths of the affine's 3rd, 2nd and 1st columns, mm: the (z, y, x) order of the volumes.

    Raises
    ------
    ValueError
        When the affine is not 4 × 4, or a column is zero or not finite (e.g. a store row that the fusion
        stage has not filled).
    """
    matrix = np.asarray(affine, dtype=np.float64)
    if matrix.shape != (4, 4):
        raise ValueError(f"affine must be 4 × 4, got shape {matrix.shape}")
    lengths = np.linalg.norm(matrix[:3, :3], axis=0)
    if not (np.all(np.isfinite(lengths)) and np.all(lengths > 0)):
        raise ValueError(
            f"affine has a zero or non-finite axis (column lengths {lengths.tolist()} mm); "
            "was this row filled by the fusion stage?"
        )
    return float(lengths[2]), float(lengths[1]), float(lengths[0])


def assemble_channels(arrays: Mapping[str, np.ndarray], inputs: Sequence[str]) -> np.ndarray:
    """Stack the input contrasts as channels, in the model's order.

    Parameters
    ----------
    arrays : mapping of str to ndarray, each shape (Z, Y, X)
        Volumes by card input name (``"water"``, ``"fat_fraction"``…; see :data:`FUSED_ARRAYS`), in their
        own units (signal units; fat fraction 0–1). Extra entries are ignored.
    inputs : sequence of str
        Channel names in order, e.g. a card's ``inputs``.

    Returns
    -------
    ndarray, float32, shape (C, Z, Y, X)
        NaN voxels are 0. The fat fraction is NaN in air, where it is undefined; 0 there agrees with the
        other contrasts (no signal, no fat), and neither interpolation nor a network can take NaN: one NaN
        would spread to every output voxel it touches.

    Raises
    ------
    KeyError
        When an input is missing from ``arrays`` (the message names it and what is there).
    ValueError
        When no input is given, or the volumes are not 3-D or differ in shape.
    """
    if not inputs:
        raise ValueError("at least one input channel is needed")
    missing = [name for name in inputs if name not in arrays]
    if missing:
        raise KeyError(f"input(s) {missing} missing from the arrays given, which hold {sorted(arrays)}")
    shapes = {name: np.shape(arrays[name]) for name in inputs}
    first = shapes[inputs[0]]
    if len(first) != 3 or any(shape != first for shape in shapes.values()):
        raise ValueError(f"inputs must be 3-D volumes (Z, Y, X) of one shape, got {shapes}")
    out = np.empty((len(inputs), *first), dtype=np.float32)
    for name, channel in zip(inputs, out, strict=True):
        channel[...] = arrays[name]
    np.nan_to_num(out, copy=False, nan=0.0, posinf=np.inf, neginf=-np.inf)
    return out


def _shape3(shape: Sequence[int], name: str) -> tuple[int, int, int]:
    values = tuple(shape)
    if len(values) != 3 or not all(isinstance(v, int | np.integer) and v >= 1 for v in values):
        raise ValueError(f"{name}: expected three positive integers (Z, Y, X), got {values!r}")
    return tuple(int(v) for v in values)  # type: ignore[return-value]


def _spacing3(spacing: Sequence[float], name: str) -> tuple[float, float, float]:
    values = tuple(float(v) for v in spacing)
    if len(values) != 3 or not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"{name}: expected three positive spacings (z, y, x) in mm, got {values!r}")
    return values  # type: ignore[return-value]


def target_shape(
    shape: Sequence[int], spacing_mm: Sequence[float], target_mm: Sequence[float]
) -> tuple[int, int, int]:
    """Shape of a volume resampled to another spacing over the same extent.

    Parameters
    ----------
    shape : sequence of int
        Shape (Z, Y, X), voxels.
    spacing_mm : sequence of float
        Its spacing (z, y, x), mm.
    target_mm : sequence of float
        The spacing wanted (z, y, x), mm.

    Returns
    -------
    tuple of int
        ``shape · spacing / target`` per axis, rounded to nearest (halves up), at least 1.
    """
    shape = _shape3(shape, "shape")
    spacing = _spacing3(spacing_mm, "spacing_mm")
    target = _spacing3(target_mm, "target_mm")
    # The small tolerance keeps an exact half (e.g. 3 voxels × 1 mm at 2 mm) from rounding down through
    # floating-point error in the product.
    return tuple(  # type: ignore[return-value]
        max(1, math.floor(n * s / t + 0.5 + 1e-9)) for n, s, t in zip(shape, spacing, target, strict=True)
    )


def _float_tensor(volume: Any) -> torch.Tensor:
    """A float32 tensor of a NumPy array or tensor (a tensor stays on its device; may share memory)."""
    if isinstance(volume, torch.Tensor):
        return volume.to(torch.float32)
    return torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))


def _trilinear(volume: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """Trilinear resampling of a float (C, Z, Y, X) tensor to spatial ``shape``; as is when unchanged."""
    if tuple(volume.shape[1:]) == shape:
        return volume
    return torch.nn.functional.interpolate(volume[None], size=shape, mode="trilinear", align_corners=False)[0]


def _check_4d(volume: Any, name: str) -> None:
    if len(volume.shape) != 4:
        raise ValueError(f"{name} must be shaped (C, Z, Y, X), got {tuple(volume.shape)}")


def resample_image(image: np.ndarray | torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Resample a multi-channel volume trilinearly to a new grid over the same extent.

    Parameters
    ----------
    image : ndarray or Tensor, shape (C, Z, Y, X)
        Any real dtype; a tensor is resampled on its device.
    shape : sequence of int
        New spatial shape (Z, Y, X), e.g. from :func:`target_shape`.

    Returns
    -------
    Tensor, float32, shape (C, *shape)
        A new tensor (never a view of ``image``). Sample positions follow the voxel-centre convention of
        the module docstring; samples beyond the outer voxel centres take the edge value. There is no
        anti-alias filter: downsampling by much more than 2× skips detail rather than averaging it.
    """
    _check_4d(image, "image")
    out = _trilinear(_float_tensor(image), _shape3(shape, "shape"))
    return out.clone() if tuple(out.shape[1:]) == tuple(image.shape[1:]) else out


def resample_scores(scores: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Resample per-class network outputs trilinearly, e.g. back to the original grid before the argmax.

    Parameters
    ----------
    scores : Tensor, shape (K, Z, Y, X)
        Logits or probabilities, one volume per class, on any device.
    shape : sequence of int
        New spatial shape (Z, Y, X).

    Returns
    -------
    Tensor, float32, shape (K, *shape)
        On the device of ``scores``; a new tensor. Interpolating scores and then taking the best class
        places boundaries between the coarse voxels, where nearest-neighbour resampling of labels would
        give a staircase. For many classes on a large grid, :func:`restore` does this a few classes at
        a time.
    """
    return resample_image(scores, shape)


def resample_labels(labels: np.ndarray | torch.Tensor, shape: Sequence[int]) -> np.ndarray | torch.Tensor:
    """Resample a label volume by nearest neighbour, so that ids are copied and never blended.

    Parameters
    ----------
    labels : ndarray or Tensor of int (or bool), shape (Z, Y, X)
        Class ids.
    shape : sequence of int
        New spatial shape (Z, Y, X).

    Returns
    -------
    ndarray or Tensor, same type and dtype as ``labels``, shape ``shape``
        New voxel ``j`` takes old voxel ``min(⌊(j + ½)·n/m⌋, n − 1)`` along each axis (the old voxel whose
        extent holds the new centre; PyTorch's ``"nearest-exact"``). Resampling by an integer factor up
        and back down gives the original volume.

    Raises
    ------
    TypeError
        When ``labels`` does not hold integers.
    """
    is_tensor = isinstance(labels, torch.Tensor)
    source = labels if is_tensor else torch.from_numpy(np.ascontiguousarray(labels))
    if source.dtype.is_floating_point or source.dtype.is_complex:
        raise TypeError(f"labels must hold integer ids, got dtype {source.dtype}")
    if source.ndim != 3:
        raise ValueError(f"labels must be shaped (Z, Y, X), got {tuple(source.shape)}")
    shape = _shape3(shape, "shape")
    if source.numel() == 0 or tuple(source.shape) == shape:
        out = source.clone()
    else:
        # Interpolation wants floats; ids survive the round trip through a float that holds them exactly
        # (float32 up to 2**24, float64 up to 2**53).
        if source.dtype in _FLOAT32_EXACT_DTYPES:
            working = source.to(torch.float32)
        else:
            working = source.to(torch.float64)
            if float(working.abs().max()) <= FLOAT32_EXACT_INT:
                working = working.to(torch.float32)
        out = torch.nn.functional.interpolate(working[None, None], size=shape, mode="nearest-exact")[0, 0]
        out = out.to(source.dtype)
    return out if is_tensor else out.numpy()


def label_lookup(card: ModelCard) -> np.ndarray:
    """Output channel → label id of a card's network.

    Returns
    -------
    ndarray, int64, shape (K,)
        The card's label ids, ascending: channel ``i`` is the ``i``-th smallest id.
    """
    return np.asarray(card.label_ids, dtype=np.int64)


def channel_lookup(card: ModelCard, max_id: int) -> np.ndarray:
    """Label id → output channel of a card's network, for turning label volumes into training targets.

    Parameters
    ----------
    card : ModelCard
        Its label ids, ascending, are channels 0, 1, ….
    max_id : int
        Largest id that may occur in the label volumes (e.g. 255 for uint8, or ``labels.max()``).

    Returns
    -------
    ndarray, int64, shape (max(max_id, largest card id) + 1,)
        ``table[labels]`` gives each voxel's channel; ids the card does not name map to −1 (pass
        ``ignore_index=-1`` to the loss, or map them to background first).
    """
    if max_id < 0:
        raise ValueError(f"max_id must be non-negative, got {max_id}")
    ids = label_lookup(card)
    table = np.full(max(int(max_id), int(ids.max())) + 1, -1, dtype=np.int64)
    table[ids] = np.arange(ids.size)
    return table


def prepare_input(
    arrays: Mapping[str, np.ndarray],
    affine: Any,
    card: ModelCard,
    *,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, PreparedGeometry]:
    """The network input of one participant, and where it came from.

    Parameters
    ----------
    arrays : mapping of str to ndarray, each shape (Z, Y, X)
        Volumes by card input name, e.g. from :func:`read_fused`; every one of ``card.inputs`` is needed.
    affine : array-like, shape (4, 4)
        Their grid's affine (voxel (x, y, z) → LPS mm).
    card : ModelCard
        Inputs, normalisation, spacing and labels of the model.
    device : torch device, optional
        Where to resample and return the input (default: the CPU).

    Returns
    -------
    image : Tensor, float32, shape (C, Z', Y', X')
        Channels in the card's order, normalised, resampled to ``card.spacing_mm`` (ready for
        :func:`cohortscale.models.inference.sliding_window_inference`).
    geometry : PreparedGeometry
        For :func:`restore`.
    """
    stacked = assemble_channels(arrays, card.inputs)
    spacing = spacing_from_affine(affine)
    original_shape = tuple(int(n) for n in stacked.shape[1:])
    resampled_shape = target_shape(original_shape, spacing, card.spacing_mm)
    image = torch.from_numpy(normalise(stacked, card))
    del stacked
    if device is not None:
        image = image.to(device)
    geometry = PreparedGeometry(
        original_shape=original_shape,  # type: ignore[arg-type]
        original_spacing_mm=spacing,
        resampled_shape=resampled_shape,
        label_ids=card.label_ids,
    )
    return _trilinear(image, resampled_shape), geometry


def restore(
    scores: torch.Tensor | np.ndarray,
    geometry: PreparedGeometry,
    *,
    class_chunk: int = RESTORE_CLASS_CHUNK,
) -> np.ndarray:
    """The label volume on the original grid from a network's class scores on the model's grid.

    Parameters
    ----------
    scores : Tensor or ndarray, shape (K, Z', Y', X')
        Logits or probabilities, channel ``i`` for label id ``geometry.label_ids[i]``, on the grid of
        :func:`prepare_input` (``geometry.resampled_shape``); a tensor is resampled on its device.
    geometry : PreparedGeometry
        From :func:`prepare_input`.
    class_chunk : int
        Classes resampled at once (memory: that many float32 volumes on the original grid).

    Returns
    -------
    ndarray, shape ``geometry.original_shape``
        Label id of the class with the highest trilinearly resampled score at each voxel (the first on a
        tie), as uint8 (wider only for a card with ids above 255), on the host.

    Raises
    ------
    ValueError
        When the scores' shape does not fit the geometry.
    """
    scores = _float_tensor(scores)
    _check_4d(scores, "scores")
    n_classes = len(geometry.label_ids)
    if scores.shape[0] != n_classes or tuple(scores.shape[1:]) != tuple(geometry.resampled_shape):
        raise ValueError(
            f"scores of shape {tuple(scores.shape)} do not fit the geometry: expected "
            f"({n_classes}, *{tuple(geometry.resampled_shape)}) for label ids {list(geometry.label_ids)}"
        )
    if class_chunk < 1:
        raise ValueError(f"class_chunk must be at least 1, got {class_chunk}")
    best_value = best_channel = None
    # A running maximum over chunks of classes: the same argmax as over all classes at once, but only
    # ``class_chunk`` resampled volumes exist at a time.
    for first in range(0, n_classes, class_chunk):
        part = _trilinear(scores[first : first + class_chunk], geometry.original_shape)
        value, channel = part.max(dim=0)
        channel += first
        if best_value is None:
            best_value, best_channel = value, channel
        else:
            better = value > best_value  # strict: the earlier channel wins a tie, as in argmax
            best_value = torch.where(better, value, best_value)
            best_channel = torch.where(better, channel, best_channel)
    ids = np.asarray(geometry.label_ids, dtype=np.min_scalar_type(max(geometry.label_ids)))
    return ids[best_channel.cpu().numpy()]


def read_fused(
    root_or_path: zarr.Group | str | Path, row: int, inputs: Sequence[str]
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """One participant's fused volumes and affine from a cohort store.

    Parameters
    ----------
    root_or_path : zarr.Group or path-like
        The store's root group, or its path (opened read-only).
    row : int
        Participant row (0-based; see ``cohortscale.io.store.participant_rows``).
    inputs : sequence of str
        Card input names to read (e.g. ``card.inputs``), each a key of :data:`FUSED_ARRAYS`.

    Returns
    -------
    arrays : dict of str to ndarray, each shape (Z, Y, X)
        By input name, in the stored dtype (uint16; float32 fat fraction, NaN outside the body).
    affine : ndarray, float64, shape (4, 4)
        The fused grid's affine.

    Raises
    ------
    KeyError
        For an input name not in :data:`FUSED_ARRAYS`, or a store without the fused volumes.
    IndexError
        When ``row`` is not a row of the store.
    """
    unknown = [name for name in inputs if name not in FUSED_ARRAYS]
    if unknown:
        raise KeyError(f"input(s) {unknown} are not fused volumes; known: {list(FUSED_ARRAYS)}")
    root = (
        root_or_path if isinstance(root_or_path, zarr.Group) else zarr.open_group(str(root_or_path), mode="r")
    )
    affines = root[f"{FUSED_GROUP}/affine"]
    if not 0 <= row < affines.shape[0]:
        raise IndexError(f"row {row} is not in the store, which has {affines.shape[0]} rows")
    arrays = {name: np.asarray(root[f"{FUSED_GROUP}/{FUSED_ARRAYS[name]}"][row]) for name in inputs}
    return arrays, np.asarray(affines[row], dtype=np.float64)
