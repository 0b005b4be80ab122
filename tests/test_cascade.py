"""Cascades of segmentation models: the kernels (box around a label, the box's affine, merging a refining
model's labels) on hand-made arrays, the checks that cards fit together, and whole cascades of real
TorchScript models whose one-hot outputs are exact rules of the inputs, so that NumPy gives the labels."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from cohortscale.models.card import ModelCard, ModelCardError, RegionOfInterest
from cohortscale.models.cascade import (
    CascadeError,
    add_to_cascade,
    cached_cascade,
    cascade_labels,
    crop_affine,
    merge_refined,
    roi_box,
    segment_cascade,
)
from cohortscale.models.loading import (
    MAX_CACHED_MODELS,
    ModelLoadError,
    cached_model,
    clear_model_cache,
    segment_volume,
)
from cohortscale.models.preprocess import spacing_from_affine

# TorchScript is the cards' format for scripted models; torch 2.13 deprecates it in favour of export.
pytestmark = pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated:DeprecationWarning")

#: Normalisation window of the rule models: every uint16 value divided by a power of two, so that the
#: normalised values and the sums and differences the models form are exact in float32.
WINDOW = (0.0, 65536.0)
SCALE = WINDOW[1] - WINDOW[0]
#: Water + fat (signal units) from which the first model calls a voxel tissue.
BRIGHT = 300
#: Water + fat from which the graded refining model calls a voxel tissue or core.
BRIGHTER = 600


@pytest.fixture(autouse=True)
def _empty_model_cache():
    clear_model_cache()
    yield
    clear_model_cache()


# --------------------------------------------------------------------------------------------- roi_box


def test_roi_box_tight_without_margin() -> None:
    labels = np.zeros((5, 6, 7), dtype=np.uint8)
    labels[2, 2, 3] = labels[2, 3, 3] = 3
    labels[4, 0, 0] = 1  # another label: not in the box
    box = roi_box(labels, 3, (0.0, 0.0, 0.0), (2.0, 2.0, 2.0))
    assert box == (slice(2, 3), slice(2, 4), slice(3, 4))
    assert all(type(s.start) is int and type(s.stop) is int for s in box)
    # Two separate blobs: one box spanning both.
    labels[0, 5, 6] = 3
    assert roi_box(labels, 3, (0, 0, 0), (1, 1, 1)) == (slice(0, 3), slice(2, 6), slice(3, 7))


def test_roi_box_rounds_the_margin_up_to_whole_voxels() -> None:
    labels = np.zeros((12, 12, 12), dtype=np.int16)
    labels[5:7, 5, 5:8] = 2  # z 5–6, y 5, x 5–7
    # 5 mm at 2 mm → 2.5 → 3 voxels; exactly 4 mm at 2 mm → 2 voxels; 0.1 mm → 1 voxel.
    assert roi_box(labels, 2, (5.0, 4.0, 0.1), (2.0, 2.0, 2.0)) == (slice(2, 10), slice(3, 8), slice(4, 9))
    # Quotients that floating point puts a hair off a whole number: 2.1/0.7 = 3.0000000000000004 and
    # 0.6/0.2 = 2.9999999999999996 are both 3 voxels (not 4, and not 3 by luck of rounding).
    assert 2.1 / 0.7 > 3 and 0.6 / 0.2 < 3
    assert roi_box(labels, 2, (2.1, 0.6, 0.0), (0.7, 0.2, 1.0)) == (
        slice(2, 10),  # 5 − 3, 6 + 1 + 3
        slice(2, 9),  # 5 − 3, 5 + 1 + 3
        slice(5, 8),
    )
    assert roi_box(labels, 2, (11.0, 0.0, 0.0), (1.0, 1.0, 1.0))[0] == slice(0, 12)  # clipped both ends
    assert roi_box(labels, 2, (0.3, 0.0, 0.0), (0.1, 1.0, 1.0))[0] == slice(2, 10)  # 0.3/0.1 → 3


def test_roi_box_anisotropic_spacing() -> None:
    labels = np.zeros((10, 12, 14), dtype=np.uint8)
    labels[4, 6, 7] = 5
    # 3 mm on every side: 1 slice at 3 mm, 2 rows at 2 mm (1.5 → 2), 2 columns at 1.5 mm.
    assert roi_box(labels, 5, (3.0, 3.0, 3.0), (3.0, 2.0, 1.5)) == (slice(3, 6), slice(4, 9), slice(5, 10))
    # Per-axis margins: 6 mm z (2 slices), 0 mm y, 1 mm x (1 column).
    assert roi_box(labels, 5, (6.0, 0.0, 1.0), (3.0, 2.0, 1.5)) == (slice(2, 7), slice(6, 7), slice(6, 9))


def test_roi_box_clips_at_the_grid_edges() -> None:
    labels = np.zeros((4, 5, 6), dtype=np.uint8)
    labels[0, 0, 0] = 1
    labels[3, 4, 5] = 2
    assert roi_box(labels, 1, (2, 2, 2), (1, 1, 1)) == (slice(0, 3), slice(0, 3), slice(0, 3))
    assert roi_box(labels, 2, (2, 2, 2), (1, 1, 1)) == (slice(1, 4), slice(2, 5), slice(3, 6))
    assert roi_box(labels, 1, (100, 100, 100), (1, 1, 1)) == (slice(0, 4), slice(0, 5), slice(0, 6))


def test_roi_box_absent_label_and_bad_input() -> None:
    labels = np.zeros((3, 3, 3), dtype=np.uint8)
    labels[1, 1, 1] = 4
    assert roi_box(labels, 7, (5, 5, 5), (1, 1, 1)) is None
    assert roi_box(np.zeros((2, 2, 2), dtype=np.uint8), 1, (0, 0, 0), (1, 1, 1)) is None
    with pytest.raises(ValueError, match="3-D"):
        roi_box(np.ones((3, 3), dtype=np.uint8), 1, (0, 0, 0), (1, 1, 1))
    with pytest.raises(ValueError, match="3-D"):
        roi_box(np.ones((1, 3, 3, 3), dtype=np.uint8), 1, (0, 0, 0), (1, 1, 1))
    with pytest.raises(ValueError):
        roi_box(labels, 4, (1, 1), (1, 1, 1))  # a margin per axis is needed


# ----------------------------------------------------------------------------------------- crop_affine


def rotation(a: float, b: float, c: float) -> np.ndarray:
    """A rotation matrix: about z by a, then y by b, then x by c (radians)."""
    rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    ry = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    rx = np.array([[1, 0, 0], [0, math.cos(c), -math.sin(c)], [0, math.sin(c), math.cos(c)]])
    return rx @ ry @ rz


def oblique_affine(spacing_zyx=(3.0, 2.0, 1.5), origin=(-120.5, 80.25, 33.0)) -> np.ndarray:
    """Voxel (x, y, z) → LPS mm of an oblique grid with the given spacing (z, y, x)."""
    affine = np.eye(4)
    affine[:3, :3] = rotation(0.3, -0.2, 0.7) @ np.diag(spacing_zyx[::-1])
    affine[:3, 3] = origin
    return affine


def test_crop_affine_axis_aligned_by_hand() -> None:
    affine = np.array(
        [[-1.5, 0.0, 0.0, 10.0], [0.0, -2.0, 0.0, 20.0], [0.0, 0.0, 3.0, -30.0], [0.0, 0.0, 0.0, 1.0]]
    )
    before = affine.copy()
    out = crop_affine(affine, (slice(2, 5), slice(1, 4), slice(3, 7)))  # z0 = 2, y0 = 1, x0 = 3
    # Origin: x 10 − 3·1.5, y 20 − 1·2, z −30 + 2·3.
    expected = affine.copy()
    expected[:3, 3] = [5.5, 18.0, -24.0]
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(affine, before)  # not modified
    # A box at the origin leaves the affine as it was.
    np.testing.assert_array_equal(crop_affine(affine, (slice(0, 1), slice(0, 2), slice(0, 3))), affine)


def test_crop_affine_maps_crop_voxels_to_the_same_points() -> None:
    affine = oblique_affine()
    box = (slice(2, 5), slice(1, 4), slice(3, 7))  # z0 = 2, y0 = 1, x0 = 3; shape (3, 3, 4)
    out = crop_affine(affine, box)
    assert out.shape == (4, 4) and out.dtype == np.float64
    np.testing.assert_array_equal(out[:3, :3], affine[:3, :3])
    np.testing.assert_array_equal(out[3], [0.0, 0.0, 0.0, 1.0])
    assert spacing_from_affine(out) == spacing_from_affine(affine)
    for k in range(3):  # z
        for j in range(3):  # y
            for i in range(4):  # x
                np.testing.assert_allclose(
                    out @ [i, j, k, 1.0], affine @ [i + 3, j + 1, k + 2, 1.0], rtol=0, atol=1e-12
                )
    # The crop's first voxel is the whole grid's voxel (x 3, y 1, z 2).
    corner = affine[:3, :3] @ [3.0, 1.0, 2.0] + affine[:3, 3]
    np.testing.assert_allclose(out[:3, 3], corner, rtol=0, atol=1e-12)


# --------------------------------------------------------------------------------------- merge_refined


def test_merge_refined_by_hand() -> None:
    labels = np.array(
        [
            [[2, 0, 0, 0], [0, 2, 1, 0], [0, 3, 5, 2]],
            [[0, 0, 0, 0], [0, 0, 2, 0], [0, 1, 0, 3]],
        ],
        dtype=np.uint8,
    )  # (Z 2, Y 3, X 4)
    before = labels.copy()
    box = (slice(0, 2), slice(1, 3), slice(1, 3))  # y 1–2, x 1–2
    # Inside the box now:     z0 [[2, 1], [3, 5]],  z1 [[0, 2], [1, 0]].
    refined = np.array([[[0, 0], [0, 0]], [[2, 3], [0, 0]]], dtype=np.uint8)
    out = merge_refined(labels, box, refined, owned_ids=[2, 3])
    expected = np.array(
        [
            # (1, 1) 2 owned → 0; (1, 2) 1 kept; (2, 1) 3 owned → 0; (2, 2) 5 kept; outside: as before.
            [[2, 0, 0, 0], [0, 0, 1, 0], [0, 0, 5, 2]],
            # (1, 1) refined 2 on background; (1, 2) refined 3 over owned 2; (2, 1) 1 kept; (2, 3) 3 outside.
            [[0, 0, 0, 0], [0, 2, 3, 0], [0, 1, 0, 3]],
        ],
        dtype=np.uint8,
    )
    np.testing.assert_array_equal(out, expected)
    assert out.dtype == np.uint8 and out is not labels
    np.testing.assert_array_equal(labels, before)  # input unchanged

    # Refined foreground overwrites other classes too; without owned ids nothing is reset.
    out = merge_refined(labels, box, np.full((2, 2, 2), 7, dtype=np.uint8), owned_ids=())
    expected = labels.copy()
    expected[:, 1:3, 1:3] = 7
    np.testing.assert_array_equal(out, expected)
    out = merge_refined(labels, box, np.zeros((2, 2, 2), dtype=np.uint8), owned_ids=np.array([1, 5]))
    expected = labels.copy()
    expected[0, 1, 2] = expected[0, 2, 2] = expected[1, 2, 1] = 0  # the 1s and the 5 inside the box
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(labels, before)


def test_merge_refined_shape_mismatch() -> None:
    labels = np.zeros((3, 4, 5), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"\(2, 2, 2\).*\(2, 3, 2\)"):
        merge_refined(labels, (slice(0, 2), slice(0, 3), slice(1, 3)), np.ones((2, 2, 2)), [1])
    # A box reaching beyond the grid is clipped, and the refined labels must fit the clipped box.
    with pytest.raises(ValueError, match="do not fit"):
        merge_refined(labels, (slice(2, 5), slice(0, 4), slice(0, 5)), np.ones((3, 4, 5)), [1])
    out = merge_refined(labels, (slice(2, 5), slice(0, 4), slice(0, 5)), np.ones((1, 4, 5)), [1])
    assert out[2].sum() == 20 and out[:2].sum() == 0


# -------------------------------------------------------------------------------------- cascade_labels


def card(name: str, labels: dict, roi=None, inputs=("water", "fat"), spacing=(1.0, 1.0, 1.0), **extra):
    """A torchscript card with windowed inputs (the window over the uint16 range)."""
    return ModelCard(
        name=name,
        version="1",
        inputs=inputs,
        normalisation=[{"window": list(WINDOW)}] * len(inputs),
        spacing_mm=tuple(spacing),
        patch_size=extra.pop("patch_size", (4, 4, 4)),
        labels=labels,
        weights=extra.pop("weights", f"{name}.pt"),
        format="torchscript",
        roi=roi,
        **extra,
    )


BODY = card("body", {0: "background", 1: "tissue", 4: "liver"})


def test_cascade_labels_union() -> None:
    spine = card("spine", {0: "background", 2: "vertebra", 3: "disc"}, roi={"around": "tissue"})
    liver = card("liver", {0: "background", 4: "liver", 5: "vessel"}, roi={"around": "liver"})
    # A later refiner may run around a label an earlier refiner added.
    discs = card("discs", {0: "background", 3: "disc", 9: "nucleus"}, roi={"around": "disc"})
    labels = cascade_labels([BODY, spine, liver, discs])
    assert labels == {
        0: "background",
        1: "tissue",
        2: "vertebra",
        3: "disc",
        4: "liver",
        5: "vessel",
        9: "nucleus",
    }
    assert list(labels) == [0, 1, 2, 3, 4, 5, 9]
    assert cascade_labels([BODY]) == {0: "background", 1: "tissue", 4: "liver"}
    assert cascade_labels((BODY, spine)) == {
        0: "background",
        1: "tissue",
        2: "vertebra",
        3: "disc",
        4: "liver",
    }


@pytest.mark.parametrize(
    ("refining", "match"),
    [
        # A refining card without roi.
        ([card("fine", {0: "background", 2: "core"})], r"fine: a model of a cascade needs a roi"),
        # roi.around names no label before it (here: its own label, or none at all).
        (
            [card("fine", {0: "background", 2: "core"}, roi={"around": "core"})],
            r"fine: roi\.around 'core' is not a label of the models before it",
        ),
        (
            [card("fine", {0: "background", 2: "core"}, roi={"around": "spleen"})],
            r"fine: roi\.around 'spleen' is not a label .*\['background', 'liver', 'tissue'\]",
        ),
        # ...nor one of a card after it.
        (
            [
                card("a", {0: "background", 2: "core"}, roi={"around": "rim"}),
                card("b", {0: "background", 3: "rim"}, roi={"around": "tissue"}),
            ],
            r"a: roi\.around 'rim'",
        ),
        # An id with two names.
        (
            [card("fine", {0: "background", 1: "core"}, roi={"around": "tissue"})],
            r"fine: label id 1 is 'core', but 'tissue' before it",
        ),
        # A name with two ids.
        (
            [card("fine", {0: "background", 7: "liver"}, roi={"around": "tissue"})],
            r"fine: label 'liver' has id 7, but 4 before it",
        ),
        # ...also against a label an earlier refiner added.
        (
            [
                card("a", {0: "background", 2: "core"}, roi={"around": "tissue"}),
                card("b", {0: "background", 3: "core"}, roi={"around": "core"}),
            ],
            r"b: label 'core' has id 3, but 2 before it",
        ),
    ],
)
def test_cascade_labels_errors(refining: list[ModelCard], match: str) -> None:
    with pytest.raises(CascadeError, match=match) as info:
        cascade_labels([BODY, *refining])
    assert isinstance(info.value, ValueError)


def test_cascade_labels_first_card_and_no_card() -> None:
    # The first card runs inside a region: it belongs in another card's cascade.
    around = card("body", {0: "background", 1: "tissue"}, roi={"around": "body"})
    with pytest.raises(CascadeError, match=r"body: this model runs inside the region around 'body'"):
        cascade_labels([around])
    with pytest.raises(CascadeError, match=r"body: this model runs inside the region"):
        cascade_labels([around, BODY])
    with pytest.raises(CascadeError, match="at least one"):
        cascade_labels([])


# ------------------------------------------------------------------------- models with exact outputs


class TissueRule(torch.nn.Module):
    """Inputs (water, fat): class 1 where water + fat ≥ BRIGHT, else background; one-hot scores.

    A 1×1×1 convolution with hand-set weights forms (water + fat − BRIGHT) from the normalised channels;
    the step makes the scores exactly 0 or 1, so the blending of overlapping patches keeps them exact.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv3d(2, 1, kernel_size=1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([1.0, 1.0]).view(1, 2, 1, 1, 1))
            self.conv.bias.fill_(-BRIGHT / SCALE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tissue = self.conv(x)[:, 0] >= 0
        return torch.stack([~tissue, tissue], dim=1).to(torch.float32)


class CoreRule(torch.nn.Module):
    """Inputs (fat, water) — the other order: class "core" where fat > water, else background."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv3d(2, 1, kernel_size=1, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([1.0, -1.0]).view(1, 2, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        core = self.conv(x)[:, 0] > 0
        return torch.stack([~core, core], dim=1).to(torch.float32)


class GradedRule(torch.nn.Module):
    """Inputs (water, fat): where water + fat ≥ BRIGHTER, "core" (id 2) if fat > water else "tissue"
    (id 1); background elsewhere."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv3d(2, 2, kernel_size=1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([[1.0, 1.0], [-1.0, 1.0]]).view(2, 2, 1, 1, 1))
            self.conv.bias.copy_(torch.tensor([-BRIGHTER / SCALE, 0.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.conv(x)
        bright = features[:, 0] >= 0
        fatty = features[:, 1] > 0
        return torch.stack([~bright, bright & ~fatty, bright & fatty], dim=1).to(torch.float32)


class RimRule(torch.nn.Module):
    """Inputs (water, fat): class "rim" where fat > 2 · water, else background."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv3d(2, 1, kernel_size=1, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([-2.0, 1.0]).view(1, 2, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rim = self.conv(x)[:, 0] > 0
        return torch.stack([~rim, rim], dim=1).to(torch.float32)


#: Grid (Z, Y, X) of the test volumes, and the bright block ("tissue") in it: z 2–3, y 3–5, x 4–6.
SHAPE = (6, 9, 8)
BLOCK = (slice(2, 4), slice(3, 6), slice(4, 7))
#: The affine: oblique, spacing (z, y, x) 3, 2, 1.5 mm.
AFFINE = oblique_affine()
SPACING = spacing_from_affine(AFFINE)
#: Margin around the tissue: 3 mm z → 1 slice, 2 mm y → 1 row, 3 mm x → 2 columns.
MARGIN = (3.0, 2.0, 3.0)
#: The box by hand: z 2−1 … 3+1, y 3−1 … 5+1, x 4−2 … 6+2 clipped to X = 8.
TISSUE_BOX = (slice(1, 5), slice(2, 7), slice(2, 8))


def volumes(seed: int = 0, bright: bool = True) -> dict[str, np.ndarray]:
    """Water and fat (uint16): dim everywhere (water + fat < BRIGHT), bright (each 150–599) in BLOCK."""
    rng = np.random.default_rng(seed)
    water = rng.integers(0, 150, size=SHAPE, dtype=np.uint16)
    fat = rng.integers(0, 150, size=SHAPE, dtype=np.uint16)
    if bright:
        water[BLOCK] = rng.integers(150, 600, size=water[BLOCK].shape, dtype=np.uint16)
        fat[BLOCK] = rng.integers(150, 600, size=fat[BLOCK].shape, dtype=np.uint16)
    return {"water": water, "fat": fat}


def as_int(arrays: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    return arrays["water"].astype(np.int64), arrays["fat"].astype(np.int64)


def tissue_card(**extra) -> ModelCard:
    return card("tissue", {0: "background", 1: "tissue"}, spacing=SPACING, **extra)


def core_card(
    core_id: int = 2, margin=MARGIN, around: str = "tissue", roi: dict | None = None, **extra
) -> ModelCard:
    return card(
        "core",
        {0: "background", core_id: "core"},
        roi=roi or {"around": around, "margin_mm": list(margin)},
        inputs=("fat", "water"),
        spacing=SPACING,
        patch_size=(2, 4, 4),
        **extra,
    )


def scripted(module: torch.nn.Module) -> torch.jit.ScriptModule:
    return torch.jit.script(module.eval())


def test_roi_box_of_the_test_volume() -> None:
    """The hand-computed box the cascade tests rely on, and the spacing the affine gives."""
    np.testing.assert_allclose(SPACING, (3.0, 2.0, 1.5), rtol=1e-12)
    water, fat = as_int(volumes())
    first = (water + fat >= BRIGHT).astype(np.uint8)
    assert roi_box(first, 1, MARGIN, SPACING) == TISSUE_BOX
    assert roi_box(first, 1, (0, 0, 0), SPACING) == BLOCK


@pytest.mark.parametrize("core_id", [2, 300])
def test_segment_cascade_refines_inside_the_box(core_id: int) -> None:
    arrays = volumes()
    water, fat = as_int(arrays)
    first = np.where(water + fat >= BRIGHT, 1, 0)
    np.testing.assert_array_equal(first[BLOCK], 1)
    assert first.sum() == first[BLOCK].size  # the block is the only tissue

    expected = first.copy()
    region = expected[TISSUE_BOX]
    region[(fat > water)[TISSUE_BOX]] = core_id
    # The test data cover every case: core on the tissue and on dim voxels of the margin inside the box,
    # tissue kept where fat ≤ water, and fat > water outside the box left as background.
    outside = np.ones(SHAPE, dtype=bool)
    outside[TISSUE_BOX] = False
    assert ((expected == core_id) & (first == 1)).any() and ((expected == core_id) & (first == 0)).any()
    assert (expected == 1).any() and ((fat > water) & outside).any()

    models = [(tissue_card(), scripted(TissueRule())), (core_card(core_id), scripted(CoreRule()))]
    labels = segment_cascade(arrays, AFFINE, models, "cpu", batch_size=2, overlap=0.5)
    assert labels.shape == SHAPE
    assert labels.dtype == (np.uint8 if core_id < 256 else np.uint16)
    np.testing.assert_array_equal(labels, expected)
    # The first model alone gives its own labels, as segment_volume does.
    alone = segment_cascade(arrays, AFFINE, models[:1], "cpu", batch_size=3, overlap=0.25)
    np.testing.assert_array_equal(alone, first)
    np.testing.assert_array_equal(alone, segment_volume(arrays, AFFINE, *models[0], "cpu", 3, 0.25))


def test_segment_cascade_refiner_owns_its_classes_in_the_box() -> None:
    """A refiner giving "tissue" too: inside the box, the first model's tissue is reset and only the
    refiner's (water + fat ≥ BRIGHTER) remains; outside it the first model's labels stay."""
    arrays = volumes(seed=1)
    water, fat = as_int(arrays)
    total = water + fat
    first = np.where(total >= BRIGHT, 1, 0)
    expected = first.copy()
    region = expected[TISSUE_BOX]
    region[region == 1] = 0
    bright, fatty = (total >= BRIGHTER)[TISSUE_BOX], (fat > water)[TISSUE_BOX]
    region[bright & ~fatty] = 1
    region[bright & fatty] = 2
    # Some tissue of the first model (BRIGHT ≤ water + fat < BRIGHTER) is lost in the box.
    assert ((first == 1) & (expected == 0)).any() and (expected == 1).any() and (expected == 2).any()

    graded = card(
        "graded",
        {0: "background", 1: "tissue", 2: "core"},
        roi=RegionOfInterest("tissue", MARGIN),
        spacing=SPACING,
    )
    models = [(tissue_card(), scripted(TissueRule())), (graded, scripted(GradedRule()))]
    labels = segment_cascade(arrays, AFFINE, models, "cpu", batch_size=4, overlap=0.5)
    np.testing.assert_array_equal(labels, expected)


def test_segment_cascade_chain_runs_around_a_refiners_label() -> None:
    """A second refiner runs around "core", which the first refiner added, in the labels so far."""
    arrays = volumes(seed=2)
    water, fat = as_int(arrays)
    after_core = np.where(water + fat >= BRIGHT, 1, 0)
    after_core[TISSUE_BOX][(fat > water)[TISSUE_BOX]] = 2
    # The rim's box: around the core voxels, 3 mm in z (1 slice), none in y and x.
    rim_box = roi_box(after_core, 2, (3.0, 0.0, 0.0), SPACING)
    assert rim_box is not None and rim_box[0] == slice(0, 6)  # core on z 1 and z 4 → 0 … 5, clipped
    expected = after_core.copy()
    expected[rim_box][(fat > 2 * water)[rim_box]] = 3
    assert (expected == 3).any() and (expected == 2).any()
    # The rim's box is the core's, not the tissue's: it reaches z 0 and z 5, outside the tissue's box.
    assert (expected[[0, 5]] == 3).any()

    rim = card(
        "rim", {0: "background", 3: "rim"}, roi={"around": "core", "margin_mm": [3, 0, 0]}, spacing=SPACING
    )
    models = [
        (tissue_card(), scripted(TissueRule())),
        (core_card(), scripted(CoreRule())),
        (rim, scripted(RimRule())),
    ]
    labels = segment_cascade(arrays, AFFINE, models, "cpu", batch_size=2, overlap=0.5)
    np.testing.assert_array_equal(labels, expected)


def test_segment_cascade_skips_a_refiner_whose_label_is_absent() -> None:
    arrays = volumes(seed=3, bright=False)  # no tissue anywhere
    water, fat = as_int(arrays)
    assert (water + fat < BRIGHT).all() and (fat > water).any()  # the refiner would find core
    models = [(tissue_card(), scripted(TissueRule())), (core_card(), scripted(CoreRule()))]
    labels = segment_cascade(arrays, AFFINE, models, "cpu", batch_size=2, overlap=0.5)
    assert labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, 0)

    # A skipped refiner does not stop the ones after it: "core" around tissue (absent) is skipped, the
    # rim around "background" (everywhere) runs on the whole grid.
    rim = card("rim", {0: "background", 3: "rim"}, roi={"around": "background"}, spacing=SPACING)
    models.append((rim, scripted(RimRule())))
    labels = segment_cascade(arrays, AFFINE, models, "cpu", batch_size=2, overlap=0.5)
    np.testing.assert_array_equal(labels, np.where(fat > 2 * water, 3, 0))


def test_segment_cascade_skips_a_refiner_finer_than_the_grid() -> None:
    """A refiner whose coarsest grid is finer than the data's is skipped; at or above the grid it runs."""
    arrays = volumes()
    water, fat = as_int(arrays)
    first = np.where(water + fat >= BRIGHT, 1, 0)
    roi = {"around": "tissue", "margin_mm": list(MARGIN)}
    for max_spacing, runs in (
        ((3.0, 2.0, 1.5), True),  # the grid's own spacing: fine enough
        ((6.0, 4.0, 3.0), True),
        ((3.0, 2.0, 1.4), False),  # one axis too coarse is enough to skip
        ((2.9, 4.0, 3.0), False),
    ):
        refiner = core_card(roi={**roi, "max_spacing_mm": list(max_spacing)})
        assert refiner.roi.covers(SPACING) is runs
        models = [(tissue_card(), scripted(TissueRule())), (refiner, scripted(CoreRule()))]
        labels = segment_cascade(arrays, AFFINE, models, "cpu", batch_size=2, overlap=0.5)
        expected = first.copy()
        if runs:
            expected[TISSUE_BOX][(fat > water)[TISSUE_BOX]] = 2
        assert bool((labels == 2).any()) is runs
        np.testing.assert_array_equal(labels, expected, err_msg=str(max_spacing))


def test_segment_cascade_checks_the_cards_first() -> None:
    arrays = volumes()
    no_roi = card("core", {0: "background", 2: "core"}, spacing=SPACING)
    models = [(tissue_card(), scripted(TissueRule())), (no_roi, scripted(CoreRule()))]
    with pytest.raises(CascadeError, match="needs a roi"):
        segment_cascade(arrays, AFFINE, models)


# ------------------------------------------------------------------------------------- cached_cascade


def save_model(folder: Path, card_: ModelCard, module: torch.nn.Module) -> Path:
    """The card as ``folder/<name>.json`` and the scripted module as its weights; returns the card path."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.jit.save(torch.jit.script(module), str(folder / card_.weights))
    return card_.to_json(folder / f"{card_.name}.json")


def test_cached_cascade_loads_the_cards_cascade_once(tmp_path: Path) -> None:
    first_path = save_model(tmp_path, tissue_card(cascade=("refine/core.json",)), TissueRule())
    core_path = save_model(tmp_path / "refine", core_card(), CoreRule())
    assert json.loads(first_path.read_text())["cascade"] == ["refine/core.json"]

    loaded = cached_cascade(first_path)
    assert [m.card.name for m in loaded] == ["tissue", "core"]
    assert loaded[0].card == ModelCard.load(first_path) and loaded[1].card == ModelCard.load(core_path)
    assert all(m.device == torch.device("cpu") and not m.model.training for m in loaded)
    weights = tmp_path / "refine" / "core.pt"
    assert loaded[1].weights_sha256 == hashlib.sha256(weights.read_bytes()).hexdigest()
    again = cached_cascade(str(first_path), "cpu")
    assert len(again) == 2 and all(a is b for a, b in zip(again, loaded, strict=True))

    arrays = volumes()
    water, fat = as_int(arrays)
    expected = np.where(water + fat >= BRIGHT, 1, 0)
    expected[TISSUE_BOX][(fat > water)[TISSUE_BOX]] = 2
    labels = segment_cascade(arrays, AFFINE, [(m.card, m.model) for m in loaded], "cpu", 2, 0.5)
    np.testing.assert_array_equal(labels, expected)

    # A card without a cascade is a cascade of one.
    plain = save_model(tmp_path / "plain", tissue_card(), TissueRule())
    assert [m.card.name for m in cached_cascade(plain)] == ["tissue"]


def test_the_cache_keeps_the_models_in_use(tmp_path: Path) -> None:
    """Least recently used first out: a model asked for again stays while others come and go."""
    first = cached_model(save_model(tmp_path / "first", tissue_card(), TissueRule()))
    others = []
    for i in range(2 * MAX_CACHED_MODELS):
        others.append(cached_model(save_model(tmp_path / f"other{i}", tissue_card(), TissueRule())))
        assert cached_model(tmp_path / "first" / "tissue.json") is first
    # The cache is bounded: the first of the others, unused since, was dropped and is loaded anew.
    assert cached_model(tmp_path / "other0" / "tissue.json") is not others[0]


def test_cached_cascade_missing_card(tmp_path: Path) -> None:
    first_path = save_model(tmp_path, tissue_card(cascade=("core.json", "absent.json")), TissueRule())
    save_model(tmp_path, core_card(), CoreRule())
    with pytest.raises(ModelLoadError, match=r"absent\.json: no such model card file"):
        cached_cascade(first_path)
    with pytest.raises(ModelLoadError, match=r"nowhere\.json: no such model card file"):
        cached_cascade(tmp_path / "nowhere.json")


def test_cached_cascade_invalid_refining_card(tmp_path: Path) -> None:
    first_path = save_model(tmp_path, tissue_card(cascade=("core.json",)), TissueRule())
    core_path = save_model(tmp_path, core_card(), CoreRule())
    values = json.loads(core_path.read_text())
    values["roi"]["margin_mm"] = [3, -1, 3]
    core_path.write_text(json.dumps(values))
    with pytest.raises(ModelCardError, match=r"core\.json: roi: margin_mm"):
        cached_cascade(first_path)


@pytest.mark.parametrize(
    ("refining", "match"),
    [
        (
            card("core", {0: "background", 2: "core"}, spacing=SPACING),
            "core: a model of a cascade needs a roi",
        ),
        (core_card(around="liver"), r"core: roi\.around 'liver' is not a label"),
        (
            card("core", {0: "background", 1: "core"}, roi={"around": "tissue"}, spacing=SPACING),
            "core: label id 1 is 'core', but 'tissue' before it",
        ),
    ],
)
def test_cached_cascade_ill_fitting_cards(tmp_path: Path, refining: ModelCard, match: str) -> None:
    first_path = save_model(tmp_path, tissue_card(cascade=("core.json",)), TissueRule())
    save_model(tmp_path, refining, CoreRule())
    with pytest.raises(CascadeError, match=match):
        cached_cascade(first_path)


def test_cached_cascade_of_a_refining_card(tmp_path: Path) -> None:
    """Given a card with a roi, there is nothing for it to run around."""
    core_path = save_model(tmp_path, core_card(), CoreRule())
    with pytest.raises(CascadeError, match=r"core: this model runs inside the region around 'tissue'"):
        cached_cascade(core_path)


# ------------------------------------------------------------------------------------- add_to_cascade


def test_add_to_cascade_installs_the_refining_model(tmp_path: Path) -> None:
    first = save_model(tmp_path / "body", tissue_card(), TissueRule())
    core = save_model(tmp_path / "trained", core_card(weights="core.pt"), CoreRule())
    assert add_to_cascade(first, core) == first
    assert ModelCard.load(first).cascade == ("core.json",)
    for name in ("core.json", "core.pt"):
        assert (tmp_path / "body" / name).read_bytes() == (tmp_path / "trained" / name).read_bytes()
    loaded = cached_cascade(first)
    assert [m.card.name for m in loaded] == ["tissue", "core"]

    # Again after a new training (the installed copy is stale): its files replaced, listed once.
    (tmp_path / "body" / "core.pt").write_bytes(b"stale")
    add_to_cascade(first, core)
    assert ModelCard.load(first).cascade == ("core.json",)
    assert (tmp_path / "body" / "core.pt").read_bytes() == (tmp_path / "trained" / "core.pt").read_bytes()
    # Installed from where it already lies: nothing to copy.
    add_to_cascade(first, tmp_path / "body" / "core.json")
    assert ModelCard.load(first).cascade == ("core.json",)


def test_add_to_cascade_refuses_what_would_not_fit(tmp_path: Path) -> None:
    first = save_model(tmp_path / "body", tissue_card(), TissueRule())
    before = first.read_bytes()
    # The refining model's weights would replace the first model's.
    clash = save_model(tmp_path / "a", core_card(weights=tissue_card().weights), CoreRule())
    with pytest.raises(CascadeError, match="would replace tissue's"):
        add_to_cascade(first, clash)
    # Its region names no label of the first model: nothing copied, the card unchanged.
    lost = save_model(tmp_path / "b", core_card(around="liver", weights="core.pt"), CoreRule())
    with pytest.raises(CascadeError, match=r"roi\.around 'liver'"):
        add_to_cascade(first, lost)
    assert first.read_bytes() == before and sorted(p.name for p in first.parent.iterdir()) == [
        "tissue.json",
        tissue_card().weights,
    ]
    # No weights beside the refining card; a TOML first card is not rewritten.
    (tmp_path / "b" / "core.pt").unlink()
    with pytest.raises(ModelLoadError, match=r"core\.pt does not exist"):
        add_to_cascade(first, tmp_path / "b" / "core.json")
    toml = tmp_path / "body" / "tissue.toml"
    toml.write_text("name = 'x'\n")
    with pytest.raises(ModelCardError, match="only a JSON card"):
        add_to_cascade(toml, clash)
