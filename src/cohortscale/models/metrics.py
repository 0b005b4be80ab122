"""Overlap of segmentations with their ground truth: Dice and IoU per class, from one confusion matrix.

Label volumes are integer arrays of class ids (the synthetic cohort's ids and names are
:data:`cohortscale.synth.labels.LABEL_NAMES`), as NumPy arrays, torch tensors (any device) or CuPy arrays.
All classes are counted at once: :func:`confusion_matrix` is one ``np.bincount`` of the joint index
``truth · K + prediction``, and Dice and IoU come from its diagonal and margins.

A class absent from the ground truth has no defined overlap: its Dice and IoU are NaN whatever was
predicted (not 0, which would punish a correct "nothing here", nor 1), so means over classes skip it.
Voxels predicted for such a class still count against the truth classes they overlap, and the table of
:func:`overlap_table` shows them in ``predicted_voxels``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from cohortscale.backend import to_numpy

#: Label id of the background, left out of :func:`mean_dice` and :func:`mean_iou` unless asked.
BACKGROUND_ID = 0

#: Voxels per ``np.bincount`` call: bounds the int64 joint-index temporary to 128 MiB for any volume.
CHUNK_VOXELS = 1 << 24

#: Largest label id + 1 the per-class metrics accept: the confusion matrix is K × K int64 (32 MiB at 2048).
MAX_LABELS = 2048

#: Columns of :func:`overlap_table`, in order.
TABLE_COLUMNS = ("id", "name", "dice", "iou", "truth_voxels", "predicted_voxels")


def _label_array(volume: Any, name: str) -> np.ndarray:
    """A NumPy integer array of a label volume given as a NumPy array, torch tensor or CuPy array."""
    if hasattr(volume, "detach") and hasattr(volume, "cpu"):  # torch.Tensor, without importing torch
        volume = volume.detach().cpu().numpy()
    array = to_numpy(volume)
    if array.dtype == np.bool_:
        return array.view(np.uint8)
    if not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"{name}: a label volume must hold integer class ids, got dtype {array.dtype}")
    return array


def _label_pair(prediction: Any, truth: Any) -> tuple[np.ndarray, np.ndarray]:
    """Both volumes as NumPy integer arrays of the same shape."""
    pred = _label_array(prediction, "prediction")
    true = _label_array(truth, "truth")
    if pred.shape != true.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from truth shape {true.shape}")
    return pred, true


def confusion_matrix(prediction: Any, truth: Any, n_labels: int) -> np.ndarray:
    """Voxel counts of every (true class, predicted class) pair.

    Parameters
    ----------
    prediction, truth : array-like of int, same shape
        Label volumes (NumPy arrays, torch tensors or CuPy arrays) with ids in ``[0, n_labels)``.
    n_labels : int
        Number of classes K; the matrix is K × K.

    Returns
    -------
    ndarray, int64, shape (n_labels, n_labels)
        ``matrix[t, p]`` is the number of voxels of true class ``t`` predicted as ``p``: rows sum to the
        true class sizes, columns to the predicted ones, and the diagonal holds the intersections.

    Raises
    ------
    ValueError
        When the shapes differ, ``n_labels < 1``, or a voxel holds an id outside ``[0, n_labels)``.
    TypeError
        When a volume is not of an integer (or boolean) dtype.
    """
    pred, true = _label_pair(prediction, truth)
    n_labels = int(n_labels)
    if n_labels < 1:
        raise ValueError(f"n_labels must be ≥ 1, got {n_labels}")
    for name, array in (("prediction", pred), ("truth", true)):
        if array.size and (array.min() < 0 or array.max() >= n_labels):
            raise ValueError(
                f"{name}: label ids must lie in [0, {n_labels}), got {array.min()}–{array.max()}"
            )
    # uint64 does not add into int64 in place (NumPy promotes the pair to float64); the ids fit in int64.
    pred, true = (a.astype(np.int64) if a.dtype == np.uint64 else a for a in (pred.ravel(), true.ravel()))
    counts = np.zeros(n_labels * n_labels, dtype=np.int64)
    for start in range(0, true.size, CHUNK_VOXELS):  # chunks of voxels, not single voxels
        joint = true[start : start + CHUNK_VOXELS].astype(np.int64)
        joint *= n_labels
        joint += pred[start : start + CHUNK_VOXELS]
        counts += np.bincount(joint, minlength=n_labels * n_labels)
    return counts.reshape(n_labels, n_labels)


def _class_counts(
    prediction: Any, truth: Any, labels: Iterable[int]
) -> tuple[list[int], np.ndarray, np.ndarray, np.ndarray]:
    """Label ids and, per id, the intersection, true and predicted voxel counts."""
    pred, true = _label_pair(prediction, truth)
    ids = [int(label) for label in labels]
    if any(label < 0 for label in ids):
        raise ValueError(f"labels must be non-negative ids, got {sorted(ids)}")
    data_max = [int(array.max()) for array in (pred, true) if array.size]
    n_labels = max([0, *ids, *data_max]) + 1
    if n_labels > MAX_LABELS:
        raise ValueError(
            f"label ids up to {n_labels - 1} would need a {n_labels} × {n_labels} confusion matrix; "
            f"renumber the classes below {MAX_LABELS}"
        )
    matrix = confusion_matrix(pred, true, n_labels)
    index = np.asarray(ids, dtype=np.intp)
    return ids, matrix[index, index], matrix.sum(axis=1)[index], matrix.sum(axis=0)[index]


def _ratio(numerator: np.ndarray, denominator: np.ndarray, present: np.ndarray) -> np.ndarray:
    """``numerator / denominator`` where ``present``, NaN elsewhere."""
    out = np.full(numerator.shape, np.nan)
    np.divide(numerator, denominator, out=out, where=present)
    return out


def _dice(intersection: np.ndarray, truth_voxels: np.ndarray, predicted_voxels: np.ndarray) -> np.ndarray:
    return _ratio(2 * intersection, truth_voxels + predicted_voxels, truth_voxels > 0)


def _iou(intersection: np.ndarray, truth_voxels: np.ndarray, predicted_voxels: np.ndarray) -> np.ndarray:
    return _ratio(intersection, truth_voxels + predicted_voxels - intersection, truth_voxels > 0)


def dice_per_class(prediction: Any, truth: Any, labels: Iterable[int]) -> dict[int, float]:
    """Dice coefficient ``2|P ∩ T| / (|P| + |T|)`` of each class.

    Parameters
    ----------
    prediction, truth : array-like of int, same shape
        Label volumes (NumPy arrays, torch tensors or CuPy arrays) of non-negative class ids.
    labels : iterable of int
        Class ids to report (a ``{id: name}`` mapping gives its ids). Ids in the volumes but not listed
        are counted, just not reported.

    Returns
    -------
    dict of int to float
        Dice per id, 0–1; NaN for a class absent from ``truth`` (whatever was predicted).

    Raises
    ------
    ValueError
        When the shapes differ or an id is negative.
    """
    ids, intersection, truth_voxels, predicted_voxels = _class_counts(prediction, truth, labels)
    return dict(zip(ids, _dice(intersection, truth_voxels, predicted_voxels).tolist(), strict=True))


def iou_per_class(prediction: Any, truth: Any, labels: Iterable[int]) -> dict[int, float]:
    """Intersection over union (Jaccard index) ``|P ∩ T| / |P ∪ T|`` of each class.

    Parameters and NaN rule as :func:`dice_per_class`. IoU = Dice / (2 − Dice) class by class.
    """
    ids, intersection, truth_voxels, predicted_voxels = _class_counts(prediction, truth, labels)
    return dict(zip(ids, _iou(intersection, truth_voxels, predicted_voxels).tolist(), strict=True))


def overlap_table(prediction: Any, truth: Any, label_names: Mapping[int, str]) -> pd.DataFrame:
    """Dice, IoU and voxel counts of each named class, one row per class in order of id.

    Parameters
    ----------
    prediction, truth : array-like of int, same shape
        Label volumes (NumPy arrays, torch tensors or CuPy arrays).
    label_names : mapping of int to str
        The classes to report, e.g. a model card's ``labels`` or
        :data:`cohortscale.synth.labels.LABEL_NAMES`. Include id 0 to get a background row.

    Returns
    -------
    pandas.DataFrame
        Columns ``id`` (int), ``name`` (str), ``dice`` and ``iou`` (float, 0–1, NaN for a class absent from
        the truth), ``truth_voxels`` and ``predicted_voxels`` (int, voxel counts; multiply by the voxel
        volume for a volume).
    """
    ids = sorted(int(label) for label in label_names)
    ids, intersection, truth_voxels, predicted_voxels = _class_counts(prediction, truth, ids)
    names = {int(k): str(v) for k, v in label_names.items()}
    return pd.DataFrame(
        {
            "id": np.asarray(ids, dtype=np.int64),
            "name": [names[i] for i in ids],
            "dice": _dice(intersection, truth_voxels, predicted_voxels),
            "iou": _iou(intersection, truth_voxels, predicted_voxels),
            "truth_voxels": truth_voxels,
            "predicted_voxels": predicted_voxels,
        },
        columns=list(TABLE_COLUMNS),
    )


def _class_mean(table: pd.DataFrame, column: str, include_background: bool) -> float:
    missing = {"id", column} - set(table.columns)
    if missing:
        raise ValueError(f"table lacks column(s) {sorted(missing)}; expected an overlap_table()")
    rows = table if include_background else table[table["id"] != BACKGROUND_ID]
    return float(rows[column].mean(skipna=True)) if len(rows) else float("nan")


def mean_dice(table: pd.DataFrame, include_background: bool = False) -> float:
    """Mean Dice over the classes present in the truth, from an :func:`overlap_table`.

    Parameters
    ----------
    table : pandas.DataFrame
        The result of :func:`overlap_table`.
    include_background : bool
        Average the background row (id 0) too. Off by default: the background is most of a body volume
        and its near-perfect Dice would hide the organs' errors.

    Returns
    -------
    float
        Unweighted mean over classes whose Dice is not NaN (classes absent from the truth are skipped);
        NaN when no class is left.
    """
    return _class_mean(table, "dice", include_background)


def mean_iou(table: pd.DataFrame, include_background: bool = False) -> float:
    """Mean IoU over the classes present in the truth, from an :func:`overlap_table`.

    Background (id 0) is excluded unless ``include_background``; NaN rows are skipped, as in
    :func:`mean_dice`.
    """
    return _class_mean(table, "iou", include_background)
