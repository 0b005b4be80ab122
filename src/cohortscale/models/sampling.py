"""Training patches for a 3-D segmentation network, balanced between foreground and background.

A body volume is mostly background, and its structures differ in size by orders of magnitude (the
subcutaneous fat against one vertebra). Patches drawn uniformly would show the network little but
background and large organs, so, as in nnU-Net, a share of the patches is centred on foreground:

1. an example is chosen uniformly;
2. with probability ``foreground_fraction`` a foreground class present in it is chosen uniformly, and
   the patch is centred on a random voxel of that class, so that a small structure is seen as often as a
   large one; otherwise the patch lies anywhere in the volume, uniformly;
3. the patch's corner is clipped so that the patch stays inside the volume; axes shorter than the patch
   are zero-padded (the target with background, channel 0).

Each example is an image, float32 (C, Z, Y, X), already normalised and resampled, and a target of channel
indices 0…K−1 (0 = background), shaped (Z, Y, X). All randomness comes from one NumPy generator, whose
state :meth:`PatchSampler.state_dict` returns, so that training can be resumed exactly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

#: Channel index of the background in targets.
BACKGROUND = 0

#: Spatial axes of an example (Z, Y, X).
SPATIAL_DIMS = 3


def check_example(image: np.ndarray, target: np.ndarray, name: str = "example") -> None:
    """Raise unless ``image`` is a (C, Z, Y, X) float array and ``target`` a matching (Z, Y, X) int array.

    Raises
    ------
    TypeError
        For arrays of the wrong kind or dtype.
    ValueError
        For wrong dimensions, mismatched shapes or negative channel indices.
    """
    if not isinstance(image, np.ndarray) or not isinstance(target, np.ndarray):
        raise TypeError(f"{name}: image and target must be NumPy arrays")
    if image.ndim != SPATIAL_DIMS + 1:
        raise ValueError(f"{name}: image must be shaped (C, Z, Y, X), got {image.shape}")
    if not np.issubdtype(image.dtype, np.floating):
        raise TypeError(f"{name}: image must be a float array, got dtype {image.dtype}")
    if not np.issubdtype(target.dtype, np.integer):
        raise TypeError(f"{name}: target must hold integer channel indices, got dtype {target.dtype}")
    if target.shape != image.shape[1:]:
        raise ValueError(f"{name}: target shape {target.shape} differs from image shape {image.shape[1:]}")
    if target.size and target.min() < 0:
        raise ValueError(f"{name}: target holds negative channel indices")


def check_patch_size(patch_size: Sequence[int]) -> tuple[int, int, int]:
    """``patch_size`` as a tuple of three positive ints, (z, y, x) voxels; ``ValueError`` otherwise."""
    values = tuple(patch_size)
    if len(values) != SPATIAL_DIMS or not all(
        isinstance(v, int | np.integer) and not isinstance(v, bool) and v > 0 for v in values
    ):
        raise ValueError(f"patch_size must be three positive integers (z, y, x), got {patch_size!r}")
    return tuple(int(v) for v in values)  # type: ignore[return-value]


@dataclass(frozen=True)
class ForegroundIndex:
    """Voxels of each foreground class of one target, found once so that sampling does not scan volumes.

    Attributes
    ----------
    classes : ndarray, int64, shape (n,)
        Foreground channel indices present in the target, ascending.
    voxels : ndarray, int32 or int64, shape (m,)
        Flat (C-order) indices of all foreground voxels, grouped by class in the order of ``classes``.
    offsets : ndarray, int64, shape (n + 1,)
        Class ``classes[i]`` owns ``voxels[offsets[i]:offsets[i + 1]]``.
    """

    classes: np.ndarray
    voxels: np.ndarray
    offsets: np.ndarray

    @classmethod
    def build(cls, target: np.ndarray) -> ForegroundIndex:
        """Index the foreground voxels of a target of channel indices."""
        flat = target.ravel()
        # One pass over the volume for all classes (a whole-body target has dozens), and one array of
        # foreground voxels rather than one per class; int32 halves it where the volume allows.
        index_dtype = np.int32 if flat.size <= np.iinfo(np.int32).max else np.int64
        voxels = np.flatnonzero(flat != BACKGROUND).astype(index_dtype)
        labels = flat[voxels]
        order = np.argsort(labels, kind="stable")
        voxels, labels = voxels[order], labels[order]
        classes, starts = np.unique(labels, return_index=True)
        offsets = np.append(starts, labels.size).astype(np.int64)
        return cls(classes=classes.astype(np.int64), voxels=voxels, offsets=offsets)

    def random_voxel(self, class_position: int, rng: np.random.Generator) -> int:
        """Flat index of a uniformly random voxel of ``classes[class_position]``."""
        start, stop = self.offsets[class_position], self.offsets[class_position + 1]
        return int(self.voxels[rng.integers(start, stop)])


def crop_patch(
    image: np.ndarray, target: np.ndarray, corner: Sequence[int], patch_size: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """The patch of ``patch_size`` voxels starting at ``corner``, zero-padded beyond the volume's end.

    Parameters
    ----------
    image : ndarray, shape (C, Z, Y, X)
    target : ndarray of int, shape (Z, Y, X)
    corner : sequence of int
        First voxel of the patch, (z, y, x); non-negative.
    patch_size : sequence of int
        Patch shape (z, y, x), voxels.

    Returns
    -------
    image_patch : ndarray, float32, shape (C, *patch_size)
        Zero where the patch extends past the volume.
    target_patch : ndarray, int64, shape patch_size
        Background (0) where the patch extends past the volume.
    """
    source = tuple(
        slice(start, min(start + size, extent))
        for start, size, extent in zip(corner, patch_size, target.shape, strict=True)
    )
    inner = tuple(slice(0, s.stop - s.start) for s in source)
    image_patch = np.zeros((image.shape[0], *patch_size), dtype=np.float32)
    target_patch = np.full(tuple(patch_size), BACKGROUND, dtype=np.int64)
    image_patch[(slice(None), *inner)] = image[(slice(None), *source)]
    target_patch[inner] = target[source]
    return image_patch, target_patch


def centred_corner(
    centre: Sequence[int], patch_size: Sequence[int], shape: Sequence[int]
) -> tuple[int, int, int]:
    """Corner of the patch centred on ``centre``, clipped so that the patch stays inside the volume.

    The volume of ``shape`` is taken as padded to at least ``patch_size`` along each axis.
    """
    return tuple(
        int(np.clip(c - size // 2, 0, max(extent - size, 0)))
        for c, size, extent in zip(centre, patch_size, shape, strict=True)
    )  # type: ignore[return-value]


class PatchSampler:
    """Random training patches from a set of examples, a share of them centred on foreground.

    Parameters
    ----------
    examples : sequence of (image, target)
        Images float (C, Z, Y, X), normalised and resampled, all with the same C; targets int (Z, Y, X)
        of channel indices (0 = background). The arrays are referenced, not copied.
    patch_size : sequence of int
        Patch shape (z, y, x), voxels.
    foreground_fraction : float
        Probability (0–1) that a patch is centred on a foreground voxel. Examples without foreground
        always give a uniformly placed patch.
    rng : numpy.random.Generator
        Source of all random draws (keyword only).

    Raises
    ------
    ValueError, TypeError
        For no examples, malformed examples, a bad patch size or fraction.
    """

    def __init__(
        self,
        examples: Sequence[tuple[np.ndarray, np.ndarray]],
        patch_size: Sequence[int],
        foreground_fraction: float = 0.5,
        *,
        rng: np.random.Generator,
    ) -> None:
        if len(examples) == 0:
            raise ValueError("PatchSampler needs at least one example")
        for i, (image, target) in enumerate(examples):
            check_example(image, target, f"example {i}")
        channels = {image.shape[0] for image, _ in examples}
        if len(channels) > 1:
            raise ValueError(f"examples have different numbers of channels: {sorted(channels)}")
        if not 0.0 <= foreground_fraction <= 1.0:
            raise ValueError(f"foreground_fraction must be in [0, 1], got {foreground_fraction}")
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
        self.examples = list(examples)
        self.patch_size = check_patch_size(patch_size)
        self.foreground_fraction = float(foreground_fraction)
        self.rng = rng
        self.indices = [ForegroundIndex.build(target) for _, target in self.examples]

    @property
    def in_channels(self) -> int:
        """Image channels C of every example."""
        return int(self.examples[0][0].shape[0])

    def corner(self, example: int) -> tuple[int, int, int]:
        """Draw the corner of one patch in example number ``example``."""
        shape = self.examples[example][1].shape
        index = self.indices[example]
        if index.classes.size and self.rng.random() < self.foreground_fraction:
            # A class first, then a voxel of it: each structure present gets the same share of patches.
            voxel = index.random_voxel(int(self.rng.integers(index.classes.size)), self.rng)
            return centred_corner(np.unravel_index(voxel, shape), self.patch_size, shape)
        return tuple(
            int(self.rng.integers(max(extent - size, 0) + 1))
            for extent, size in zip(shape, self.patch_size, strict=True)
        )  # type: ignore[return-value]

    def sample(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw a batch of patches.

        Returns
        -------
        images : Tensor, float32, shape (batch_size, C, *patch_size)
        targets : Tensor, int64, shape (batch_size, *patch_size)
            Channel indices.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        images = np.empty((batch_size, self.in_channels, *self.patch_size), dtype=np.float32)
        targets = np.empty((batch_size, *self.patch_size), dtype=np.int64)
        for i in range(batch_size):
            example = int(self.rng.integers(len(self.examples)))
            image, target = self.examples[example]
            images[i], targets[i] = crop_patch(image, target, self.corner(example), self.patch_size)
        return torch.from_numpy(images), torch.from_numpy(targets)

    def state_dict(self) -> dict[str, Any]:
        """The generator's state (plain Python types), for checkpoints."""
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the generator to a state from :meth:`state_dict`; the next draws repeat those after it."""
        self.rng.bit_generator.state = dict(state["rng"])
