"""Cascades of segmentation models: finer models refine a first model's labels inside regions of interest.

A whole-body model at a coarse spacing finds structures; a model at a fine spacing, run only in the box
around one of them, segments that structure where detail matters (the vertebral bodies and the discs
between them, which a 12 mm model blurs together). The first card lists the refining cards (its
``cascade``); each refining card's ``roi`` names the label it runs around and the margin
(:class:`cohortscale.models.card.RegionOfInterest`).

Each refining model *owns* its classes inside its box: there, voxels the labels so far gave one of its
classes are reset to background, and every voxel it calls foreground takes its class. Outside the box,
and for the other classes inside it, the labels stay as they were. Classes are matched by name, so a
refining model's label ids must agree with those the labels already use for the same names. A refining
model may name the coarsest grid it refines (``roi.max_spacing_mm``): on coarser data it is skipped, as
it would only see its inputs upsampled.

The kernels (:func:`roi_box`, :func:`merge_refined`, :func:`crop_affine`) are plain functions of arrays;
:func:`cascade_labels` checks that cards fit together; :func:`segment_cascade` runs loaded models on one
participant's volumes, :func:`cached_cascade` loads a card's cascade once per process, and
:func:`add_to_cascade` installs a refining model beside a card and lists it there.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from cohortscale.models.card import ModelCard, ModelCardError, cascade_paths, weights_path
from cohortscale.models.loading import LoadedModel, ModelLoadError, cached_model, read_card, segment_volume
from cohortscale.models.preprocess import spacing_from_affine

#: A box on a (Z, Y, X) grid: one slice per axis.
Box = tuple[slice, slice, slice]


class CascadeError(ValueError):
    """The cards of a cascade do not fit together; the message names the card and the label."""


def cascade_labels(cards: Sequence[ModelCard]) -> dict[int, str]:
    """The label ids and names a cascade can write, checking that its cards fit together.

    Parameters
    ----------
    cards : sequence of ModelCard
        The first model's card, then its cascade's cards in order.

    Returns
    -------
    dict of int to str
        Every card's labels, sorted by id.

    Raises
    ------
    CascadeError
        When the first card has a ``roi`` or a refining card has none, a refining card's ``roi.around``
        names no label of the cards before it, or two cards give one id two names or one name two ids.
    """
    if not cards:
        raise CascadeError("a cascade needs at least one model card")
    first, *refining = cards
    if first.roi is not None:
        raise CascadeError(
            f"{first.name}: this model runs inside the region around {first.roi.around!r} of another model's "
            "labels (roi); give the card of the model whose cascade lists it"
        )
    labels = dict(first.labels)
    for card in refining:
        if card.roi is None:
            raise CascadeError(f"{card.name}: a model of a cascade needs a roi (the label it runs around)")
        if card.roi.around not in labels.values():
            raise CascadeError(
                f"{card.name}: roi.around {card.roi.around!r} is not a label of the models before it "
                f"({sorted(set(labels.values()))})"
            )
        ids_of = {name: label_id for label_id, name in labels.items()}
        for label_id, name in card.labels.items():
            if labels.get(label_id, name) != name:
                raise CascadeError(
                    f"{card.name}: label id {label_id} is {name!r}, but {labels[label_id]!r} before it"
                )
            if ids_of.get(name, label_id) != label_id:
                raise CascadeError(
                    f"{card.name}: label {name!r} has id {label_id}, but {ids_of[name]} before it"
                )
            labels[label_id] = name
    return dict(sorted(labels.items()))


def roi_box(
    labels: np.ndarray, label_id: int, margin_mm: Sequence[float], spacing_mm: Sequence[float]
) -> Box | None:
    """The bounding box of one label's voxels, grown by a margin and clipped to the grid.

    Parameters
    ----------
    labels : ndarray, shape (Z, Y, X)
        Label volume.
    label_id : int
        The label whose voxels the box holds.
    margin_mm : (float, float, float)
        Growth on every side, (z, y, x), mm; rounded up to whole voxels.
    spacing_mm : (float, float, float)
        Voxel spacing (z, y, x), mm.

    Returns
    -------
    tuple of slice or None
        One slice per axis, or None when no voxel has the label.
    """
    mask = np.asarray(labels) == label_id
    if mask.ndim != 3:
        raise ValueError(f"labels must be 3-D (Z, Y, X), got shape {mask.shape}")
    if not mask.any():
        return None
    box = []
    for axis, (margin, spacing) in enumerate(zip(margin_mm, spacing_mm, strict=True)):
        others = tuple(a for a in range(3) if a != axis)
        occupied = np.flatnonzero(mask.any(axis=others))
        grow = math.ceil(float(margin) / float(spacing) - 1e-9)
        box.append(
            slice(max(0, int(occupied[0]) - grow), min(mask.shape[axis], int(occupied[-1]) + 1 + grow))
        )
    return tuple(box)  # type: ignore[return-value]


def crop_affine(affine: np.ndarray, box: Box) -> np.ndarray:
    """The affine of a box's grid: the same axes, its origin at the box's first voxel.

    Parameters
    ----------
    affine : ndarray, shape (4, 4)
        Voxel (x, y, z) → LPS mm of the whole grid (indices in reverse order of the (Z, Y, X) arrays).
    box : tuple of slice
        (z, y, x) slices, as :func:`roi_box` gives.
    """
    affine = np.asarray(affine, dtype=np.float64)
    corner = np.array([box[2].start, box[1].start, box[0].start, 1.0])
    out = affine.copy()
    out[:, 3] = affine @ corner
    return out


def merge_refined(labels: np.ndarray, box: Box, refined: np.ndarray, owned_ids: Sequence[int]) -> np.ndarray:
    """Labels with a refining model's output written into its box.

    Parameters
    ----------
    labels : ndarray, shape (Z, Y, X)
        The labels so far (not modified).
    box : tuple of slice
        Where ``refined`` lies in ``labels``.
    refined : ndarray, shape of the box
        The refining model's label ids (0 background).
    owned_ids : sequence of int
        The refining model's foreground ids: inside the box, the labels so far lose them (to background)
        unless the refining model gives them too.

    Returns
    -------
    ndarray, shape and dtype of ``labels``
    """
    refined = np.asarray(refined)
    out = np.array(labels, copy=True)
    region = out[box]
    if region.shape != refined.shape:
        raise ValueError(
            f"refined labels of shape {refined.shape} do not fit the box of shape {region.shape}"
        )
    region[np.isin(region, list(owned_ids))] = 0
    foreground = refined != 0
    region[foreground] = refined[foreground]
    return out


def segment_cascade(
    arrays: Mapping[str, np.ndarray],
    affine: np.ndarray,
    models: Sequence[tuple[ModelCard, torch.nn.Module]],
    device: torch.device | str = "cpu",
    batch_size: int = 4,
    overlap: float = 0.5,
) -> np.ndarray:
    """The label volume of one participant from a cascade of models.

    Parameters
    ----------
    arrays : mapping of str to ndarray, each shape (Z, Y, X)
        Volumes by input name, holding every input of every card.
    affine : ndarray, shape (4, 4)
        Their grid's affine (voxel (x, y, z) → LPS mm).
    models : sequence of (ModelCard, torch.nn.Module)
        The first model, then the refining ones (see :func:`cascade_labels`), on ``device``.
    device, batch_size, overlap
        As :func:`cohortscale.models.loading.segment_volume`.

    Returns
    -------
    ndarray, shape (Z, Y, X)
        Label ids of the cascade's cards. A refining model is skipped where its ``roi.around`` label is
        absent, or the grid is coarser than its ``roi.max_spacing_mm``.
    """
    names = cascade_labels([card for card, _ in models])
    id_of = {name: label_id for label_id, name in names.items()}
    first_card, first_model = models[0]
    labels = segment_volume(arrays, affine, first_card, first_model, device, batch_size, overlap)
    spacing = spacing_from_affine(affine)
    for card, model in models[1:]:
        assert card.roi is not None  # checked by cascade_labels
        if not card.runs_on(spacing):
            continue
        box = roi_box(labels, id_of[card.roi.around], card.roi.margin_mm, spacing)
        if box is None:
            continue
        crop = {name: arrays[name][box] for name in card.inputs if name in arrays}  # a missing one: named
        refined = segment_volume(crop, crop_affine(affine, box), card, model, device, batch_size, overlap)
        owned = [label_id for label_id in card.labels if label_id != 0]
        dtype = np.promote_types(labels.dtype, refined.dtype)
        labels = merge_refined(labels.astype(dtype, copy=False), box, refined, owned)
    return labels


def cached_cascade(card_path: str | Path, device: torch.device | str = "cpu") -> tuple[LoadedModel, ...]:
    """A model and its cascade (the cards its card lists), each loaded once per process.

    Parameters
    ----------
    card_path : path-like
        The first model's card; its cascade's cards lie relative to its folder.
    device : torch device or str

    Returns
    -------
    tuple of LoadedModel
        The first model, then the refining ones in cascade order.

    Raises
    ------
    ModelLoadError, ModelCardError
        As :func:`cohortscale.models.loading.cached_model`, for any card of the cascade.
    CascadeError
        When the cards do not fit together (:func:`cascade_labels`).
    """
    first = cached_model(card_path, device)
    loaded = (first, *(cached_model(path, device) for path in cascade_paths(card_path, first.card)))
    cascade_labels([model.card for model in loaded])
    return loaded


def add_to_cascade(card_path: str | Path, refining_card_path: str | Path) -> Path:
    """Make a model part of another's cascade: its card and weights copied beside the first card, and its
    card listed last in that card's ``cascade`` (once; a new training of it replaces its files).

    Parameters
    ----------
    card_path : path-like
        The first model's JSON card, rewritten in place.
    refining_card_path : path-like
        The refining model's card (with a ``roi``), its weights beside it.

    Returns
    -------
    Path
        The first card's path.

    Raises
    ------
    CascadeError
        When the cascade would not fit together (:func:`cascade_labels`), or a file of the refining model
        would take the name of the first card or its weights.
    ModelCardError, ModelLoadError
        For an invalid or non-JSON first card, an invalid refining card or a missing weights file.
    """
    card_path, refining_path = Path(card_path), Path(refining_card_path)
    if card_path.suffix.lower() != ".json":
        raise ModelCardError(f"{card_path}: only a JSON card is rewritten; convert it first")
    card, refining = read_card(card_path), read_card(refining_path)
    weights = weights_path(refining_path, refining)
    if not weights.is_file():
        raise ModelLoadError(f"{refining_path}: weights file {weights} does not exist")
    taken = {card_path.name, card.weights}
    clashes = sorted({refining_path.name, refining.weights} & taken)
    if clashes:
        raise CascadeError(
            f"{refining_path}: its file(s) {clashes} would replace {card.name}'s beside {card_path}; "
            "rename the refining model's card or weights"
        )
    others = [item for item in card.cascade if item != refining_path.name]
    cascade_labels([card, *(read_card(card_path.parent / item) for item in others), refining])
    for source in (refining_path, weights):
        target = card_path.parent / source.name
        if not (target.exists() and target.samefile(source)):
            shutil.copyfile(source, target)
    dataclasses.replace(card, cascade=(*others, refining_path.name)).to_json(card_path)
    return card_path
