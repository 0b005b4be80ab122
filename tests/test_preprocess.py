"""Preprocessing for the segmentation network: channels, spacing, resampling, and restoring labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from cohortscale.models.card import ModelCard, normalise
from cohortscale.models.preprocess import (
    FUSED_ARRAYS,
    PreparedGeometry,
    assemble_channels,
    channel_lookup,
    label_lookup,
    prepare_input,
    read_fused,
    resample_image,
    resample_labels,
    resample_scores,
    restore,
    spacing_from_affine,
    target_shape,
)

DEMO_STORE = Path(__file__).resolve().parents[1] / "demo" / "cohort.zarr"

#: Non-contiguous label ids, as in the synthetic anatomy (which has no id 30).
LABELS = {0: "background", 3: "liver", 7: "kidney"}


def make_card(spacing_mm=(3.0, 2.0, 2.0), inputs=("water", "fat_fraction")) -> ModelCard:
    windows = {"water": [0.0, 1000.0], "fat": [0.0, 1000.0], "fat_fraction": [0.0, 1.0]}
    return ModelCard(
        name="test",
        version="0",
        inputs=inputs,
        normalisation=[{"window": windows.get(name, [0.0, 1000.0])} for name in inputs],
        spacing_mm=spacing_mm,
        patch_size=(16, 16, 16),
        labels=LABELS,
        weights="test.pt",
        format="torchscript",
    )


def affine_for(spacing_mm) -> np.ndarray:
    """An LPS affine of (z, y, x) spacing with the store's orientation (slices descending)."""
    dz, dy, dx = spacing_mm
    return np.array(
        [[dx, 0, 0, -100.0], [0, dy, 0, -80.0], [0, 0, -dz, 90.0], [0, 0, 0, 1]], dtype=np.float64
    )


def blob_labels(shape=(40, 48, 48)) -> np.ndarray:
    """Background with an ellipsoid of id 3 that holds a smaller ball of id 7 off its centre."""
    z, y, x = np.ogrid[tuple(slice(0, n) for n in shape)]
    labels = np.zeros(shape, dtype=np.uint8)
    labels[((z - 20) / 13) ** 2 + ((y - 24) / 17) ** 2 + ((x - 22) / 15) ** 2 <= 1] = 3
    labels[((z - 18) / 6) ** 2 + ((y - 28) / 8) ** 2 + ((x - 28) / 8) ** 2 <= 1] = 7
    return labels


def one_hot_scores(labels: np.ndarray, card: ModelCard) -> torch.Tensor:
    """A perfect "network": one-hot class scores of ``labels`` in the card's channel order."""
    channels = torch.from_numpy(channel_lookup(card, int(labels.max()))[labels])
    return torch.nn.functional.one_hot(channels, len(card.labels)).permute(3, 0, 1, 2).float()


# --- spacing, channels, shapes ---------------------------------------------------------------------------


def test_spacing_from_affine_is_the_column_lengths_in_zyx_order():
    assert spacing_from_affine(affine_for((3.0, 2.2, 1.5))) == pytest.approx((3.0, 2.2, 1.5))
    # Columns with permuted axes and mixed signs: x along −y, y along +z, z along −x.
    permuted = np.array([[0, 0, -3.0, 5], [-2.0, 0, 0, 6], [0, 1.5, 0, 7], [0, 0, 0, 1]])
    assert spacing_from_affine(permuted) == pytest.approx((3.0, 1.5, 2.0))
    # Oblique: a rotation times the spacings.
    angle = 0.3
    rotation = np.array(
        [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
    ) @ np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]])
    oblique = np.eye(4)
    oblique[:3, :3] = rotation @ np.diag([0.9, 1.1, 4.0])
    assert spacing_from_affine(oblique.tolist()) == pytest.approx((4.0, 1.1, 0.9))
    with pytest.raises(ValueError, match="4 × 4"):
        spacing_from_affine(np.eye(3))
    with pytest.raises(ValueError, match="fusion stage"):
        spacing_from_affine(np.zeros((4, 4)))
    with pytest.raises(ValueError, match="fusion stage"):
        spacing_from_affine(np.full((4, 4), np.nan))


def test_assemble_channels_follows_the_input_order_and_zeroes_nan():
    water = np.arange(24, dtype=np.uint16).reshape(2, 3, 4)
    ff = np.full((2, 3, 4), 0.25, dtype=np.float32)
    ff[0, 0, :2] = np.nan  # air
    arrays = {"water": water, "fat_fraction": ff, "fat": water + 100}
    stacked = assemble_channels(arrays, ["fat_fraction", "water"])
    assert stacked.dtype == np.float32 and stacked.shape == (2, 2, 3, 4)
    np.testing.assert_array_equal(stacked[1], water)
    assert np.all(np.isfinite(stacked))
    np.testing.assert_array_equal(stacked[0, 0, 0, :2], 0.0)
    np.testing.assert_array_equal(stacked[0].ravel()[2:], 0.25)
    np.testing.assert_array_equal(assemble_channels(arrays, ("fat",))[0], water + 100)
    with pytest.raises(KeyError, match="opposed_phase"):
        assemble_channels(arrays, ["water", "opposed_phase"])
    with pytest.raises(ValueError, match="one shape"):
        assemble_channels({"water": water, "fat": water[:1]}, ["water", "fat"])
    with pytest.raises(ValueError, match="at least one"):
        assemble_channels(arrays, [])


def test_fused_arrays_cover_every_card_input():
    from cohortscale.models.card import INPUT_CHANNELS

    assert set(FUSED_ARRAYS) == set(INPUT_CHANNELS)
    assert FUSED_ARRAYS["in_phase"] == "in" and FUSED_ARRAYS["fat_fraction"] == "ff"


def test_target_shape_keeps_the_extent():
    assert target_shape(
        (376, 174, 224), (3.0, 2.232142925, 2.232142925), (3.0, 2.232142925, 2.232142925)
    ) == (
        376,
        174,
        224,
    )
    assert target_shape((100, 50, 60), (3.0, 2.0, 2.0), (6.0, 1.0, 3.0)) == (50, 100, 40)
    assert target_shape((94, 44, 56), (12.0, 8.93, 8.93), (3.0, 2.2, 2.2)) == (376, 179, 227)
    assert target_shape((3, 5, 7), (1.0, 1.0, 1.0), (2.0, 2.0, 2.0)) == (2, 3, 4)  # halves round up
    assert target_shape((1, 2, 3), (1.0, 1.0, 1.0), (50.0, 50.0, 50.0)) == (1, 1, 1)  # at least 1
    with pytest.raises(ValueError, match="spacing_mm"):
        target_shape((10, 10, 10), (1.0, 0.0, 1.0), (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="shape"):
        target_shape((10, 10), (1.0, 1.0, 1.0), (1.0, 1.0, 1.0))


# --- resampling -------------------------------------------------------------------------------------------


def test_resample_image_reproduces_a_linear_ramp_at_the_new_voxel_centres():
    old = (9, 10, 12)
    new = (13, 7, 17)
    z, y, x = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in old), indexing="ij")
    slopes = [(0.5, 0.2, -0.3, 1.0), (-0.1, 0.4, 0.25, 2.0)]
    image = np.stack([a * z + b * y + c * x + d for a, b, c, d in slopes]).astype(np.float32)

    out = resample_image(image, new)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and out.shape == (2, *new)
    torch.testing.assert_close(resample_image(torch.from_numpy(image), new), out)

    # New voxel j samples old coordinate (j + ½)·n/m − ½; trilinear is exact on a ramp where no clamping.
    coords = [(np.arange(m) + 0.5) * n / m - 0.5 for n, m in zip(old, new, strict=True)]
    sz, sy, sx = np.meshgrid(*coords, indexing="ij")
    inside = np.ones(new, dtype=bool)
    for c, n in zip((sz, sy, sx), old, strict=True):
        inside &= (c >= 0) & (c <= n - 1)
    assert inside.sum() > 0.4 * inside.size
    for channel, (a, b, c, d) in zip(out.numpy(), slopes, strict=True):
        expected = a * sz + b * sy + c * sx + d
        np.testing.assert_allclose(channel[inside], expected[inside], atol=1e-4, rtol=0)


def test_resample_image_at_the_same_shape_is_a_copy():
    image = np.random.default_rng(0).random((1, 4, 5, 6), dtype=np.float32)
    out = resample_image(image, (4, 5, 6))
    np.testing.assert_array_equal(out.numpy(), image)
    out += 1
    assert image.max() < 1  # no shared memory
    with pytest.raises(ValueError, match="C, Z, Y, X"):
        resample_image(image[0], (4, 5, 6))


def test_resample_labels_copies_ids_and_inverts_an_integer_upsampling():
    rng = np.random.default_rng(1)
    ids = np.array([0, 3, 7, 200], dtype=np.uint8)
    labels = ids[rng.integers(0, 4, size=(6, 7, 8))]
    for shape in [(9, 5, 13), (3, 11, 4), (12, 14, 16)]:
        out = resample_labels(labels, shape)
        assert isinstance(out, np.ndarray) and out.dtype == np.uint8 and out.shape == shape
        assert set(np.unique(out)) <= set(ids.tolist())  # never blended
    up = resample_labels(labels, (12, 14, 16))
    np.testing.assert_array_equal(up[::2, ::2, ::2], labels)
    np.testing.assert_array_equal(resample_labels(up, labels.shape), labels)

    # Wide dtypes and tensors: ids beyond float32's exact integers survive; a tensor comes back a tensor.
    wide = (labels.astype(np.int64) * 100_000_001).reshape(labels.shape)
    out = resample_labels(wide, (12, 14, 16))
    assert out.dtype == np.int64 and set(np.unique(out)) == set(np.unique(wide))
    tensor = resample_labels(torch.from_numpy(labels), (12, 14, 16))
    assert isinstance(tensor, torch.Tensor) and tensor.dtype == torch.uint8
    np.testing.assert_array_equal(tensor.numpy(), up)
    with pytest.raises(TypeError, match="integer"):
        resample_labels(labels.astype(np.float32), (3, 3, 3))


def test_resample_scores_is_trilinear():
    scores = torch.rand(3, 5, 6, 7, generator=torch.Generator().manual_seed(0))
    out = resample_scores(scores, (10, 12, 14))
    assert out.shape == (3, 10, 12, 14) and out.dtype == torch.float32
    torch.testing.assert_close(out, resample_image(scores, (10, 12, 14)))
    assert out.min() >= scores.min() and out.max() <= scores.max()  # convex combinations


# --- lookups, prepare and restore --------------------------------------------------------------------------


def test_label_and_channel_lookups_are_inverse():
    card = make_card()
    np.testing.assert_array_equal(label_lookup(card), [0, 3, 7])
    table = channel_lookup(card, 255)
    assert table.shape == (256,) and table.dtype == np.int64
    assert table[[0, 3, 7]].tolist() == [0, 1, 2]
    assert (np.delete(table, [0, 3, 7]) == -1).all()
    assert channel_lookup(card, 4).shape == (8,)  # always covers the card's ids
    np.testing.assert_array_equal(label_lookup(card)[table[[0, 3, 7]]], [0, 3, 7])


def test_prepare_input_at_the_data_spacing_only_normalises_and_restore_is_exact():
    card = make_card(spacing_mm=(3.0, 2.0, 2.0))
    labels = blob_labels((20, 24, 22))
    labels = np.where(labels == 3, 7, np.where(labels == 7, 3, 0)).astype(np.uint8)
    water = (labels * 100).astype(np.uint16)
    ff = np.where(labels > 0, 0.1, np.nan).astype(np.float32)
    arrays = {"water": water, "fat_fraction": ff, "fat": water}
    image, geometry = prepare_input(arrays, affine_for((3.0, 2.0, 2.0)), card)

    assert geometry == PreparedGeometry((20, 24, 22), (3.0, 2.0, 2.0), (20, 24, 22), (0, 3, 7))
    assert geometry.resampled_spacing_mm == pytest.approx((3.0, 2.0, 2.0))
    expected = normalise(assemble_channels(arrays, card.inputs), card)
    np.testing.assert_array_equal(image.numpy(), expected)

    restored = restore(one_hot_scores(labels, card), geometry)
    assert restored.dtype == np.uint8 and restored.shape == labels.shape
    np.testing.assert_array_equal(restored, labels)
    np.testing.assert_array_equal(
        restore(one_hot_scores(labels, card).numpy(), geometry, class_chunk=1), labels
    )


def test_restore_at_a_coarser_card_spacing_recovers_blobs():
    card = make_card(spacing_mm=(4.5, 3.0, 3.0))
    labels = blob_labels()
    water = (labels.astype(np.float32) * 80).astype(np.uint16)
    ff = np.full(labels.shape, 0.3, dtype=np.float32)
    image, geometry = prepare_input({"water": water, "fat_fraction": ff}, affine_for((3.0, 2.0, 2.0)), card)

    assert geometry.resampled_shape == (27, 32, 32) and image.shape == (2, 27, 32, 32)
    assert image.dtype == torch.float32 and torch.isfinite(image).all()
    assert geometry.resampled_spacing_mm == pytest.approx((40 * 3.0 / 27, 3.0, 3.0))

    coarse_truth = resample_labels(labels, geometry.resampled_shape)
    restored = restore(one_hot_scores(coarse_truth, card), geometry)
    assert restored.shape == labels.shape
    assert set(np.unique(restored)) == {0, 3, 7}
    assert (restored == labels).mean() > 0.95
    for label_id in (3, 7):
        dice = (
            2
            * ((restored == label_id) & (labels == label_id)).sum()
            / ((restored == label_id).sum() + (labels == label_id).sum())
        )
        assert dice > 0.85, (label_id, dice)


def test_restore_in_chunks_equals_the_argmax_of_resampled_scores():
    card = make_card(spacing_mm=(4.5, 3.0, 3.0))
    geometry = PreparedGeometry((12, 10, 9), (3.0, 2.0, 2.0), (8, 7, 6), card.label_ids)
    scores = torch.randn(3, 8, 7, 6, generator=torch.Generator().manual_seed(2))
    expected = label_lookup(card)[resample_scores(scores, (12, 10, 9)).argmax(dim=0).numpy()]
    for chunk in (1, 2, 8):
        np.testing.assert_array_equal(restore(scores, geometry, class_chunk=chunk), expected)
    with pytest.raises(ValueError, match="do not fit"):
        restore(scores[:2], geometry)
    with pytest.raises(ValueError, match="do not fit"):
        restore(scores[:, :4], geometry)


# --- reading the store ------------------------------------------------------------------------------------


def test_read_fused_reads_one_row_of_the_requested_inputs(tmp_path):
    shape = (3, 4, 5, 6)
    rng = np.random.default_rng(3)
    root = zarr.open_group(str(tmp_path / "cohort.zarr"), mode="w")
    fused = root.create_group("dixon").create_group("fused")
    data = {}
    for name in ("water", "fat", "in", "opp"):
        data[name] = rng.integers(0, 4000, size=shape, dtype=np.uint16)
        fused.create_array(name, shape=shape, dtype="uint16")[...] = data[name]
    data["ff"] = rng.random(shape, dtype=np.float32)
    data["ff"][:, 0] = np.nan
    fused.create_array("ff", shape=shape, dtype="float32", fill_value=np.nan)[...] = data["ff"]
    affines = np.stack([affine_for((3.0 + p, 2.0, 2.0)) for p in range(shape[0])])
    fused.create_array("affine", shape=(shape[0], 4, 4), dtype="float64")[...] = affines

    for source in (tmp_path / "cohort.zarr", str(tmp_path / "cohort.zarr"), root):
        arrays, affine = read_fused(source, 1, ["fat_fraction", "water", "opposed_phase"])
        assert list(arrays) == ["fat_fraction", "water", "opposed_phase"]
        np.testing.assert_array_equal(arrays["water"], data["water"][1])
        np.testing.assert_array_equal(arrays["opposed_phase"], data["opp"][1])
        np.testing.assert_array_equal(arrays["fat_fraction"], data["ff"][1])
        assert arrays["water"].dtype == np.uint16 and arrays["fat_fraction"].dtype == np.float32
        np.testing.assert_array_equal(affine, affines[1])
    assert spacing_from_affine(affine) == pytest.approx((4.0, 2.0, 2.0))

    with pytest.raises(KeyError, match="ff"):
        read_fused(root, 0, ["ff"])  # store names are not input names
    with pytest.raises(IndexError, match="3 rows"):
        read_fused(root, 3, ["water"])


@pytest.mark.skipif(not DEMO_STORE.exists(), reason="demo/cohort.zarr not built (make demo)")
def test_read_fused_and_prepare_on_the_demo_cohort():
    arrays, affine = read_fused(DEMO_STORE, 0, list(FUSED_ARRAYS))
    shape = arrays["water"].shape
    assert len(shape) == 3 and all(a.shape == shape for a in arrays.values())
    assert arrays["water"].dtype == np.uint16 and arrays["fat_fraction"].dtype == np.float32
    assert np.isnan(arrays["fat_fraction"]).any()  # air
    spacing = spacing_from_affine(affine)
    assert all(1.0 < s < 20.0 for s in spacing)

    card = make_card(spacing_mm=tuple(1.5 * s for s in spacing), inputs=("water", "fat", "fat_fraction"))
    image, geometry = prepare_input(arrays, affine, card)
    assert geometry.original_shape == shape
    assert image.shape == (3, *target_shape(shape, spacing, card.spacing_mm))
    assert torch.isfinite(image).all()
    scores = torch.zeros((3, *geometry.resampled_shape))
    scores[0] = 1.0
    assert (restore(scores, geometry) == 0).all() and restore(scores, geometry).shape == shape
