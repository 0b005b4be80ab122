"""Training examples from a synthetic cohort: fused volumes from the store, targets from the ground truth.

For each visit of the cohort store whose fusion is done (its ``fusion`` ledger record) and whose cohort
directory holds its truth (``truth/<eid>_<inst>/maps.zarr``, group ``fused``):

1. the card's input contrasts are read from the store and prepared as for inference
   (:func:`cohortscale.models.preprocess.prepare_input`: normalised, resampled to the card's spacing);
2. the truth labels, on the same grid as the fused volumes (checked: a cohort fused on another grid
   would silently misalign targets and images), are mapped synthetic id → card label id
   (:func:`cohortscale.models.default.class_lookup`) → output channel, and resampled by nearest neighbour
   to the network's grid.

For a card with a region of interest (a cascade's refining model, e.g. the spine model), images and truth
are first cropped to the box around the truth's ``roi.around`` class grown by the card's margin
(:func:`cohortscale.models.cascade.roi_box`), where the cascade runs the model.

The truth itself is kept on the fused grid (or its box), so that a model is scored on the labels the
segmentation stage would write (:func:`cohortscale.models.default.evaluate`). :func:`split_by_participant`
holds out whole participants: a repeat visit of a validation participant in the training set would flatter
the score.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

from cohortscale.io.ledger import Ledger
from cohortscale.io.store import open_store, participant_rows
from cohortscale.models.card import ModelCard
from cohortscale.models.default import DEFAULT_CLASSES, LOOKUP_SIZE, class_lookup, scheme_labels
from cohortscale.models.preprocess import (
    PreparedGeometry,
    channel_lookup,
    prepare_input,
    read_fused,
    resample_labels,
    spacing_from_affine,
)

#: Stage whose "done" visits have fused volumes (the fusion stage's name; not imported, to keep the
#: pipeline out of the models package).
FUSION_STAGE = "fusion"
#: Truth of a visit inside the cohort directory, and its group on the fused grid.
TRUTH_DIR = "truth"
TRUTH_MAPS = "maps.zarr"
TRUTH_GROUP = "fused"
#: Largest difference between the truth's and the store's fused affines, mm (both come from the same
#: grid arithmetic, so they agree to rounding; a different grid differs by whole millimetres).
GRID_TOLERANCE_MM = 1e-3


class TrainingDataError(ValueError):
    """The cohort cannot give training examples; the message names the visit and the problem."""


@dataclass(frozen=True, eq=False)
class Example:
    """One visit, ready for training and for scoring on the fused grid.

    Attributes
    ----------
    key : str
        Visit key ``<eid>_<instance>``.
    eid : int
        Participant (repeat visits share it).
    instance : int
        UK Biobank instance (2 first imaging visit, 3 repeat).
    image : ndarray, float32, shape (C, Z', Y', X')
        The card's inputs, normalised and resampled to its spacing.
    target : ndarray, int64, shape (Z', Y', X')
        Output channel of each voxel of ``image`` (0 background).
    labels : ndarray, uint8, shape (Z, Y, X)
        The truth's synthetic label ids on the fused grid (its region-of-interest box for a card with one)
        (:data:`cohortscale.synth.labels.LABEL_NAMES`; ``class_lookup(scheme)[labels]`` gives card ids).
    geometry : PreparedGeometry
        From the fused grid to the network's and back (:func:`cohortscale.models.preprocess.restore`).
    affine : ndarray, float64, shape (4, 4)
        The fused grid's affine (voxel (x, y, z) → LPS mm), or its box's.
    """

    key: str
    eid: int
    instance: int
    image: np.ndarray
    target: np.ndarray
    labels: np.ndarray
    geometry: PreparedGeometry
    affine: np.ndarray

    @property
    def pair(self) -> tuple[np.ndarray, np.ndarray]:
        """``(image, target)``, as :func:`cohortscale.models.train.train` takes examples."""
        return self.image, self.target


def truth_path(cohort_dir: str | Path, key: str) -> Path:
    """The truth maps of visit ``key`` in a synthetic cohort directory."""
    return Path(cohort_dir) / TRUTH_DIR / key / TRUTH_MAPS


def fused_visits(store: str | Path) -> list[str]:
    """Keys of the store's visits whose fusion is done, sorted (from the ledger, which stays unchanged)."""
    records = Ledger(store).read(FUSION_STAGE)
    return sorted(str(k) for k in records.loc[records["status"] == "done", "participant"])


def check_truth_grid(key: str, truth: zarr.Group, shape: Sequence[int], affine: np.ndarray) -> None:
    """Raise :class:`TrainingDataError` unless a visit's truth lies on its fused grid.

    Parameters
    ----------
    key : str
        Visit, for the message.
    truth : zarr.Group
        The truth's ``fused`` group (``labels`` and attributes ``affine``, ``shape_zyx``).
    shape : sequence of int
        Fused grid shape (Z, Y, X) in the store.
    affine : ndarray, shape (4, 4)
        The visit's fused affine in the store.
    """
    truth_shape = tuple(int(n) for n in truth.attrs.get("shape_zyx", truth["labels"].shape))
    truth_affine = np.asarray(truth.attrs.get("affine", np.full((4, 4), np.nan)), dtype=np.float64)
    labels_shape = tuple(truth["labels"].shape)
    if truth_shape != tuple(shape) or labels_shape != tuple(shape):
        raise TrainingDataError(
            f"visit {key}: the truth grid {list(truth_shape)} (labels {list(labels_shape)}) differs from the "
            f"store's fused grid {list(shape)}; fuse the store on the cohort's grid "
            "(cohortscale.synth.acquisition.fused_shape_spacing of its scale)"
        )
    difference = np.abs(truth_affine - affine)
    if truth_affine.shape != (4, 4) or not np.all(difference <= GRID_TOLERANCE_MM):
        worst = float(np.nanmax(difference)) if truth_affine.shape == (4, 4) else float("nan")
        raise TrainingDataError(
            f"visit {key}: the truth affine differs from the store's fused affine by up to {worst:.4g} mm "
            f"(tolerance {GRID_TOLERANCE_MM} mm); the images and labels would not align"
        )


def _usable_keys(
    cohort_dir: Path, store: str | Path, rows: Mapping[str, int], visits: Sequence[str] | None
) -> list[str]:
    fused = set(fused_visits(store))
    if visits is None:
        return [k for k in sorted(rows) if k in fused and truth_path(cohort_dir, k).is_dir()]
    for key in visits:
        if key not in rows:
            raise TrainingDataError(f"visit {key}: not in the store {store}")
        if key not in fused:
            raise TrainingDataError(f"visit {key}: its fusion is not done in the store {store}")
        if not truth_path(cohort_dir, key).is_dir():
            raise TrainingDataError(f"visit {key}: no truth at {truth_path(cohort_dir, key)}")
    return list(visits)


def training_examples(
    cohort_dir: str | Path,
    store: str | Path,
    card: ModelCard,
    *,
    visits: Sequence[str] | None = None,
    scheme: Mapping[str, Sequence[int]] = DEFAULT_CLASSES,
) -> list[Example]:
    """The training examples of a synthetic cohort for a model card.

    Parameters
    ----------
    cohort_dir : path-like
        The synthetic cohort directory (``truth/<eid>_<inst>/maps.zarr``).
    store : path-like
        Its cohort store after fusion.
    card : ModelCard
        Inputs, normalisation, spacing and labels; its labels must be the scheme's
        (:func:`cohortscale.models.default.scheme_labels`).
    visits : sequence of str, optional
        Visit keys to use (each must be fused and have truth); default every fused visit with truth.
    scheme : mapping
        Class name → synthetic label ids (:data:`cohortscale.models.default.DEFAULT_CLASSES`).

    Returns
    -------
    list of Example
        In visit-key order.

    Raises
    ------
    TrainingDataError
        When the card's labels are not the scheme's, no visit qualifies, a visit asked for does not, a
        truth grid differs from the store's fused grid, or a truth lacks the card's ``roi.around`` class
        (naming the visit).
    """
    labels = scheme_labels(scheme)
    if dict(card.labels) != labels:
        raise TrainingDataError(f"the card's labels {card.labels} are not those of the label scheme {labels}")
    if card.roi is not None and card.roi.around not in labels.values():
        raise TrainingDataError(f"roi.around {card.roi.around!r} is not a class of the label scheme {labels}")
    cohort_dir = Path(cohort_dir)
    root = open_store(store, mode="r")
    rows = participant_rows(root)
    keys = _usable_keys(cohort_dir, store, rows, visits)
    if not keys:
        raise TrainingDataError(
            f"no visit of {store} is both fused (fusion done) and has truth in {cohort_dir / TRUTH_DIR}"
        )
    to_card = class_lookup(scheme)
    to_channel = channel_lookup(card, int(to_card.max()))
    examples = []
    for key in keys:
        row = rows[key]
        arrays, affine = read_fused(root, row, card.inputs)
        shape = next(iter(arrays.values())).shape
        truth = zarr.open_group(str(truth_path(cohort_dir, key)), mode="r")[TRUTH_GROUP]
        check_truth_grid(key, truth, shape, affine)
        truth_labels = np.asarray(truth["labels"][...])
        if truth_labels.dtype != np.uint8:
            raise TrainingDataError(f"visit {key}: truth labels are {truth_labels.dtype}, expected uint8")
        examples.append(_example(key, arrays, affine, truth_labels, card, to_card, to_channel))
    return examples


def annotation_labels(store: str | Path, name: str) -> dict[int, str]:
    """Label id → name of the store's label set ``labels/<name>`` (its ``labels`` attribute), sorted.

    Raises
    ------
    TrainingDataError
        When the store has no such label set, or it names no labels.
    """
    return _label_set(open_store(store, mode="r"), store, name)[1]


def _label_set(root: zarr.Group, store: str | Path, name: str) -> tuple[zarr.Array, dict[int, str]]:
    """The store's array ``labels/<name>`` and its label names (see :func:`annotation_labels`)."""
    path = f"labels/{name}"
    if path not in root:
        raise TrainingDataError(f"{store} has no label set {path} (import annotations with import_labels)")
    names = {int(k): str(v) for k, v in dict(root[path].attrs.get("labels", {})).items()}
    if 0 not in names or len(names) < 2:
        raise TrainingDataError(f"{store}: {path} names no labels besides background ({names})")
    return root[path], dict(sorted(names.items()))


def identity_lookup(labels: Mapping[int, str]) -> np.ndarray:
    """Label id → itself for the ids of ``labels``, 0 for any other id (a table like
    :func:`cohortscale.models.default.class_lookup`, for labels that are already card ids)."""
    table = np.zeros(LOOKUP_SIZE, dtype=np.uint8)
    table[list(labels)] = list(labels)
    return table


def annotated_examples(
    store: str | Path, card: ModelCard, name: str, *, visits: Sequence[str] | None = None
) -> list[Example]:
    """Training examples from a label set in the store: a user's annotations (or any labels imported with
    :func:`cohortscale.pipeline.labels.import_labels`) in ``labels/<name>``, on the fused grid.

    Parameters
    ----------
    store : path-like
        Cohort store after fusion, holding ``labels/<name>``.
    card : ModelCard
        Its labels must be the label set's (the array's ``labels`` attribute); ids are used as they are.
    name : str
        The label set.
    visits : sequence of str, optional
        Visit keys to use (each fused); default every fused visit with at least one labelled voxel (the
        annotated ones: the rows of the others hold the fill value, background).

    Returns
    -------
    list of Example
        In visit-key order; ``labels`` hold the card's ids.

    Raises
    ------
    TrainingDataError
        When the store has no such label set, the card's labels are not its labels, no visit is annotated,
        or a visit asked for is not fused.
    """
    root = open_store(store, mode="r")
    array, names = _label_set(root, store, name)
    if dict(card.labels) != names:
        raise TrainingDataError(f"the card's labels {card.labels} are not those of labels/{name} {names}")
    rows = participant_rows(root)
    fused = set(fused_visits(store))
    if visits is None:
        keys = [k for k in sorted(rows) if k in fused and np.asarray(array[rows[k]]).any()]
    else:
        keys = list(visits)
        for key in keys:
            if key not in fused:
                raise TrainingDataError(f"visit {key}: its fusion is not done in the store {store}")
    if not keys:
        raise TrainingDataError(f"no fused visit of {store} has a labelled voxel in labels/{name}")
    identity = identity_lookup(card.labels)
    to_channel = channel_lookup(card, int(identity.max()))
    examples = []
    for key in keys:
        arrays, affine = read_fused(root, rows[key], card.inputs)
        labels = np.asarray(array[rows[key]])
        examples.append(_example(key, arrays, affine, labels, card, identity, to_channel))
    return examples


def _example(
    key: str,
    arrays: dict[str, np.ndarray],
    affine: np.ndarray,
    labels: np.ndarray,
    card: ModelCard,
    to_card: np.ndarray,
    to_channel: np.ndarray,
) -> Example:
    """One visit's example: cropped to the card's region when it has one, resampled to its spacing, the
    labels mapped by ``to_card`` to card ids and by ``to_channel`` to output channels."""
    from cohortscale.models.cascade import crop_affine, roi_box

    if card.roi is not None:
        around = next(i for i, label in card.labels.items() if label == card.roi.around)
        box = roi_box(to_card[labels], around, card.roi.margin_mm, spacing_from_affine(affine))
        if box is None:
            raise TrainingDataError(f"visit {key}: no {card.roi.around} in the labels to crop around")
        arrays = {name: volume[box] for name, volume in arrays.items()}
        labels, affine = labels[box], crop_affine(affine, box)
    image, geometry = prepare_input(arrays, affine, card)
    card_labels = resample_labels(to_card[labels], geometry.resampled_shape)
    eid, _, instance = key.rpartition("_")
    return Example(
        key=key,
        eid=int(eid),
        instance=int(instance),
        image=image.numpy(),
        target=to_channel[card_labels],
        labels=labels,
        geometry=geometry,
        affine=affine,
    )


def split_by_participant(
    examples: Sequence[Example], validation_fraction: float, seed: int
) -> tuple[list[Example], list[Example]]:
    """Split examples into training and validation by participant, so that no participant is in both.

    Parameters
    ----------
    examples : sequence of Example
    validation_fraction : float
        Share of the participants held out, in (0, 1); rounded to whole participants, at least one and
        leaving at least one for training.
    seed : int
        Seed of the shuffle of the participants.

    Returns
    -------
    training, validation : list of Example
        Each in the order of ``examples``.

    Raises
    ------
    TrainingDataError
        With fewer than two participants.
    ValueError
        For a fraction outside (0, 1).
    """
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction}")
    participants = sorted({example.eid for example in examples})
    if len(participants) < 2:
        raise TrainingDataError(
            f"{len(participants)} participant(s) in the examples; a split by participant needs at least two"
        )
    n_validation = min(len(participants) - 1, max(1, round(validation_fraction * len(participants))))
    shuffled = np.random.default_rng(seed).permutation(participants)
    held_out = {int(eid) for eid in shuffled[:n_validation]}
    training = [e for e in examples if e.eid not in held_out]
    validation = [e for e in examples if e.eid in held_out]
    return training, validation
