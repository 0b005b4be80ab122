"""Segmentation overlap metrics: Dice, IoU and the confusion matrix they come from, on hand-counted cases."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from cohortscale.models import metrics
from cohortscale.models.metrics import (
    TABLE_COLUMNS,
    confusion_matrix,
    dice_per_class,
    iou_per_class,
    mean_dice,
    mean_iou,
    overlap_table,
)
from cohortscale.synth.labels import LABEL_NAMES

# Voxel:       0  1  2  3  4  5  6  7
TRUTH_1D = [0, 0, 1, 1, 2, 2, 0, 0]
PRED_1D = [0, 1, 1, 1, 2, 0, 0, 0]
# class 0: |T| = 4 (0, 1, 6, 7), |P| = 4 (0, 5, 6, 7), |P∩T| = 3 → Dice 6/8 = 0.75, IoU 3/5 = 0.6
# class 1: |T| = 2 (2, 3),       |P| = 3 (1, 2, 3),    |P∩T| = 2 → Dice 4/5 = 0.8,  IoU 2/3
# class 2: |T| = 2 (4, 5),       |P| = 1 (4),          |P∩T| = 1 → Dice 2/3,        IoU 1/2


def test_hand_counted_1d() -> None:
    truth, pred = np.array(TRUTH_1D), np.array(PRED_1D)
    dice = dice_per_class(pred, truth, [0, 1, 2])
    iou = iou_per_class(pred, truth, [0, 1, 2])
    assert dice == pytest.approx({0: 0.75, 1: 0.8, 2: 2 / 3})
    assert iou == pytest.approx({0: 0.6, 1: 2 / 3, 2: 0.5})
    assert all(type(k) is int and type(v) is float for k, v in dice.items())
    # IoU = Dice / (2 − Dice) class by class.
    assert all(iou[k] == pytest.approx(d / (2 - d)) for k, d in dice.items())


def test_hand_counted_confusion_matrix() -> None:
    # Rows are truth, columns prediction: truth 0 → predicted 0 at voxels 0, 6, 7 and 1 at voxel 1; truth 1
    # → 1 at voxels 2, 3; truth 2 → 2 at voxel 4 and 0 at voxel 5.
    expected = np.array([[3, 1, 0], [0, 2, 0], [1, 0, 1]])
    np.testing.assert_array_equal(confusion_matrix(np.array(PRED_1D), np.array(TRUTH_1D), 3), expected)
    # A larger K only adds empty rows and columns.
    big = confusion_matrix(np.array(PRED_1D), np.array(TRUTH_1D), 5)
    np.testing.assert_array_equal(big[:3, :3], expected)
    assert big.sum() == len(TRUTH_1D) and big.dtype == np.int64


def test_class_absent_from_truth_is_nan_and_left_out_of_means() -> None:
    truth = np.array(
        [
            [0, 0, 1, 1],
            [0, 0, 1, 1],
        ],
        dtype=np.uint8,
    )
    pred = np.array(
        [
            [0, 3, 1, 1],  # class 3 predicted at one voxel, absent from the truth
            [0, 0, 1, 0],
        ],
        dtype=np.uint8,
    )
    # class 0: |T| = 4, |P| = 4 (incl. [1, 3]), |P∩T| = 3 → Dice 0.75, IoU 3/5
    # class 1: |T| = 4, |P| = 3, |P∩T| = 3 → Dice 6/7, IoU 3/4
    # class 3: |T| = 0 → NaN (not 0 for the false positive); class 5: in neither → NaN
    dice = dice_per_class(pred, truth, [0, 1, 3, 5])
    assert dice[0] == pytest.approx(0.75) and dice[1] == pytest.approx(6 / 7)
    assert math.isnan(dice[3]) and math.isnan(dice[5])
    iou = iou_per_class(pred, truth, [0, 1, 3, 5])
    assert iou[1] == pytest.approx(0.75) and math.isnan(iou[3]) and math.isnan(iou[5])

    table = overlap_table(pred, truth, {0: "background", 1: "liver", 3: "spleen", 5: "heart"})
    assert tuple(table.columns) == TABLE_COLUMNS
    assert table["id"].tolist() == [0, 1, 3, 5]
    assert table["name"].tolist() == ["background", "liver", "spleen", "heart"]
    assert table["truth_voxels"].tolist() == [4, 4, 0, 0]
    assert table["predicted_voxels"].tolist() == [4, 3, 1, 0]
    # Means skip the background (unless asked) and the NaN classes 3 and 5: only class 1 is left.
    assert mean_dice(table) == pytest.approx(6 / 7)
    assert mean_iou(table) == pytest.approx(0.75)
    assert mean_dice(table, include_background=True) == pytest.approx((0.75 + 6 / 7) / 2)
    assert mean_iou(table, include_background=True) == pytest.approx((0.6 + 0.75) / 2)


def test_mean_of_no_present_class_is_nan() -> None:
    truth = np.zeros(6, dtype=np.uint8)
    pred = np.array([0, 0, 0, 2, 2, 0])
    table = overlap_table(pred, truth, {0: "background", 2: "visceral_fat"})
    assert math.isnan(table.loc[1, "dice"]) and table.loc[1, "predicted_voxels"] == 2
    assert math.isnan(mean_dice(table)) and math.isnan(mean_iou(table))
    assert mean_dice(table, include_background=True) == pytest.approx(2 * 4 / (6 + 4))


def test_perfect_prediction() -> None:
    truth = np.random.default_rng(3).integers(0, 4, size=(3, 5, 7))
    dice = dice_per_class(truth.copy(), truth, range(4))
    assert dice == {0: 1.0, 1: 1.0, 2: 1.0, 3: 1.0}
    assert iou_per_class(truth.copy(), truth, range(4)) == {0: 1.0, 1: 1.0, 2: 1.0, 3: 1.0}


def test_torch_tensors_give_the_numpy_result() -> None:
    rng = np.random.default_rng(7)
    truth = rng.integers(0, 5, size=(4, 6, 6))
    pred = np.where(rng.random(truth.shape) < 0.8, truth, rng.integers(0, 5, size=truth.shape))
    expected = dice_per_class(pred, truth, range(5))
    assert (
        dice_per_class(torch.from_numpy(pred), torch.from_numpy(truth).to(torch.uint8), range(5)) == expected
    )
    assert iou_per_class(torch.from_numpy(pred), truth, range(5)) == iou_per_class(pred, truth, range(5))
    # A tensor that requires grad (e.g. straight from a model's argmax pipeline) is detached.
    logits = torch.zeros((5, *truth.shape), requires_grad=True)
    assert dice_per_class(logits.argmax(0), torch.from_numpy(truth), [0])[0] == pytest.approx(
        2 * (truth == 0).sum() / ((truth == 0).sum() + truth.size)
    )


def test_shape_mismatch_names_both_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(3, 2\)"):
        dice_per_class(np.zeros((2, 3), int), np.zeros((3, 2), int), [0])
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(np.zeros(4, int), np.zeros(5, int), 2)


def test_bad_label_volumes() -> None:
    with pytest.raises(TypeError, match="integer"):
        dice_per_class(np.zeros(3), np.zeros(3, int), [0])
    with pytest.raises(ValueError, match=r"truth: label ids must lie in \[0, 2\)"):
        confusion_matrix(np.zeros(3, int), np.array([0, 1, 2]), 2)
    with pytest.raises(ValueError, match="prediction"):
        confusion_matrix(np.array([0, -1, 0]), np.zeros(3, int), 2)
    with pytest.raises(ValueError, match="non-negative"):
        dice_per_class(np.zeros(3, int), np.zeros(3, int), [-1])


def test_confusion_matrix_matches_a_naive_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(2024)
    n_labels = 7
    truth = rng.integers(0, n_labels, size=(5, 6, 7)).astype(np.uint8)
    pred = rng.integers(0, n_labels, size=truth.shape).astype(np.int16)
    naive = np.zeros((n_labels, n_labels), dtype=np.int64)
    for t, p in zip(truth.ravel(), pred.ravel(), strict=True):
        naive[t, p] += 1
    np.testing.assert_array_equal(confusion_matrix(pred, truth, n_labels), naive)
    np.testing.assert_array_equal(
        confusion_matrix(pred, truth, n_labels).sum(axis=1), np.bincount(truth.ravel())
    )
    # The same in chunks of 11 voxels (210 voxels → 20 chunks, the last one short), and from a transposed
    # (non-contiguous) view.
    monkeypatch.setattr(metrics, "CHUNK_VOXELS", 11)
    np.testing.assert_array_equal(confusion_matrix(pred, truth, n_labels), naive)
    np.testing.assert_array_equal(confusion_matrix(pred.T, truth.T, n_labels), naive)
    # uint64 and boolean volumes count the same.
    np.testing.assert_array_equal(confusion_matrix(pred.astype(np.uint64), truth, n_labels), naive)
    np.testing.assert_array_equal(
        confusion_matrix(pred > 3, truth > 3, 2),
        [[np.sum((truth <= 3) & (pred <= 3)), np.sum((truth <= 3) & (pred > 3))],
         [np.sum((truth > 3) & (pred <= 3)), np.sum((truth > 3) & (pred > 3))]],
    )  # fmt: skip


def test_synthetic_label_ids_and_unlisted_ids() -> None:
    # The synthetic cohort's ids are not contiguous (no 30; vertebrae 31–53). Voxels of an id that is not
    # listed still count: predicting 30 (unlisted) where the truth is liver (4) lowers the liver's Dice.
    truth = np.array([0, 4, 4, 4, 53, 53], dtype=np.uint8)
    pred = np.array([0, 4, 4, 30, 53, 0], dtype=np.uint8)
    table = overlap_table(pred, truth, LABEL_NAMES)
    assert len(table) == len(LABEL_NAMES) and table["id"].is_monotonic_increasing
    row = table.set_index("name").loc[["liver", "S1"]]
    # liver: |T| = 3, |P| = 2, |P∩T| = 2 → Dice 0.8; S1 (53): |T| = 2, |P| = 1, |P∩T| = 1 → Dice 2/3
    assert row["dice"].tolist() == pytest.approx([0.8, 2 / 3])
    assert table["dice"].notna().sum() == 3  # background, liver, S1: the others are absent from the truth
    assert mean_dice(table) == pytest.approx((0.8 + 2 / 3) / 2)
    assert isinstance(table, pd.DataFrame)
