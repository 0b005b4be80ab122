"""Training: the Dice + cross-entropy loss, balanced patch sampling, learning a toy task, exact resume."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from cohortscale.models.sampling import PatchSampler, crop_patch
from cohortscale.models.train import (
    BEST_CHECKPOINT,
    LAST_CHECKPOINT,
    TrainConfig,
    TrainHistory,
    dice_ce_loss,
    summarise_dice,
    train,
)
from cohortscale.models.unet import UNet3D, UNetConfig

#: Side of the synthetic training volumes, voxels.
SIDE = 24

#: Patch side used to train on them, voxels.
PATCH = 16

#: Standard deviation of the noise in the synthetic images (blob intensities are 1 and −1).
NOISE = 0.4


# --- loss -------------------------------------------------------------------------------------------


def test_loss_of_perfect_logits_is_near_zero() -> None:
    target = torch.from_numpy(np.random.default_rng(0).integers(0, 3, size=(2, 8, 8, 8)))
    logits = 20.0 * torch.nn.functional.one_hot(target, 3).movedim(-1, 1).float()
    assert dice_ce_loss(logits, target).item() < 0.01


def test_loss_of_uniform_logits_by_hand() -> None:
    target = torch.zeros((2, 4, 4, 4), dtype=torch.int64)
    target[:, :2] = 1  # half the voxels of each patch
    logits = torch.zeros((2, 2, 4, 4, 4))
    smooth = 1e-5
    n = target.numel()
    # p = 1/2 everywhere: intersection n/4, Σp = n/2, Σt = n/2.
    dice = (2 * n / 4 + smooth) / (n / 2 + n / 2 + smooth)
    assert torch.nn.functional.cross_entropy(logits, target).item() == pytest.approx(math.log(2), abs=1e-4)
    assert dice_ce_loss(logits, target, smooth=smooth).item() == pytest.approx(
        math.log(2) + 1 - dice, abs=1e-4
    )


def test_loss_without_foreground_is_cross_entropy_and_ignores_absent_classes() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn((1, 3, 4, 4, 4), generator=generator)
    background = torch.zeros((1, 4, 4, 4), dtype=torch.int64)
    cross_entropy = torch.nn.functional.cross_entropy(logits, background)
    torch.testing.assert_close(dice_ce_loss(logits, background), cross_entropy)
    # Class 2 absent from the target: its Dice is not averaged in, so confident logits still give ~0.
    target = torch.zeros((1, 4, 4, 4), dtype=torch.int64)
    target[0, 0] = 1
    perfect = 20.0 * torch.nn.functional.one_hot(target, 3).movedim(-1, 1).float()
    assert dice_ce_loss(perfect, target).item() < 0.01


def test_loss_gradient_flows_and_half_precision_logits_are_accepted() -> None:
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn((2, 3, 4, 4, 4), generator=generator, requires_grad=True)
    target = torch.randint(0, 3, (2, 4, 4, 4), generator=generator)
    loss = dice_ce_loss(logits, target)
    loss.backward()
    assert logits.grad is not None
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    half = dice_ce_loss(logits.detach().to(torch.bfloat16), target)
    assert half.dtype == torch.float32
    assert half.item() == pytest.approx(loss.item(), rel=0.05)


def test_loss_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="do not match"):
        dice_ce_loss(torch.zeros((1, 2, 4, 4, 4)), torch.zeros((1, 4, 4, 5), dtype=torch.int64))


# --- sampler ----------------------------------------------------------------------------------------


def centre_labels(targets: torch.Tensor) -> np.ndarray:
    """Label of the centre voxel (index size // 2 on every axis) of each patch."""
    z, y, x = (size // 2 for size in targets.shape[1:])
    return targets[:, z, y, x].numpy()


def test_sampler_shapes_and_dtypes() -> None:
    rng = np.random.default_rng(0)
    examples = [
        (rng.normal(size=(2, 20, 24, 28)).astype(np.float32), rng.integers(0, 3, (20, 24, 28))),
        (rng.normal(size=(2, 16, 16, 16)).astype(np.float32), np.zeros((16, 16, 16), dtype=np.int64)),
    ]
    sampler = PatchSampler(examples, (8, 12, 16), rng=np.random.default_rng(1))
    images, targets = sampler.sample(5)
    assert images.shape == (5, 2, 8, 12, 16) and images.dtype == torch.float32
    assert targets.shape == (5, 8, 12, 16) and targets.dtype == torch.int64


def test_sampler_is_reproducible_and_restores_its_state() -> None:
    rng = np.random.default_rng(0)
    examples = [(rng.normal(size=(1, 16, 16, 16)).astype(np.float32), rng.integers(0, 2, (16, 16, 16)))]
    first = PatchSampler(examples, (8, 8, 8), rng=np.random.default_rng(5))
    second = PatchSampler(examples, (8, 8, 8), rng=np.random.default_rng(5))
    first.sample(3)
    state = first.state_dict()
    expected = first.sample(4)
    second.load_state_dict(state)
    for a, b in zip(expected, second.sample(4), strict=True):
        assert torch.equal(a, b)


def test_foreground_fraction_of_patch_centres() -> None:
    target = np.zeros((32, 32, 32), dtype=np.int64)
    target[12:20, 12:21, 12:21] = 1  # 648 voxels, 2 % of the volume, away from the borders
    image = np.zeros((1, *target.shape), dtype=np.float32)
    sampler = PatchSampler(
        [(image, target)], (8, 8, 8), foreground_fraction=0.5, rng=np.random.default_rng(2)
    )
    _, targets = sampler.sample(400)
    share = (centre_labels(targets) > 0).mean()
    assert share == pytest.approx(0.5, abs=0.1)
    none = PatchSampler([(image, target)], (8, 8, 8), foreground_fraction=0.0, rng=np.random.default_rng(2))
    assert (centre_labels(none.sample(400)[1]) > 0).mean() < 0.1


def test_small_class_sampled_as_often_as_a_large_one() -> None:
    target = np.zeros((40, 40, 40), dtype=np.int64)
    target[5:15, 5:15, 5:15] = 1  # 1000 voxels
    target[28, 28, 28:31] = 2  # 3 voxels
    image = np.zeros((1, *target.shape), dtype=np.float32)
    sampler = PatchSampler(
        [(image, target)], (8, 8, 8), foreground_fraction=1.0, rng=np.random.default_rng(3)
    )
    _, targets = sampler.sample(400)
    centres = centre_labels(targets)
    assert (centres > 0).all()
    assert (centres == 2).mean() == pytest.approx(0.5, abs=0.1)
    small_seen = np.mean([(patch == 2).any() for patch in targets.numpy()])
    large_seen = np.mean([(patch == 1).any() for patch in targets.numpy()])
    assert small_seen == pytest.approx(large_seen, abs=0.15)


def test_volume_smaller_than_patch_is_zero_padded() -> None:
    rng = np.random.default_rng(4)
    image = rng.normal(1.0, 0.1, size=(2, 4, 5, 12)).astype(np.float32)
    target = rng.integers(1, 3, size=(4, 5, 12))
    sampler = PatchSampler([(image, target)], (8, 8, 8), rng=np.random.default_rng(0))
    images, targets = sampler.sample(20)
    for patch_image, patch_target in zip(images.numpy(), targets.numpy(), strict=True):
        # Z and Y are padded (corner 0); X is longer than the patch, so the window lies inside it.
        assert (patch_image[:, 4:] == 0).all() and (patch_image[:, :, 5:] == 0).all()
        assert (patch_target[4:] == 0).all() and (patch_target[:, 5:] == 0).all()
        assert (patch_target[:4, :5] > 0).all()
        assert any(
            np.array_equal(target[:, :, s : s + 8], patch_target[:4, :5])
            and np.array_equal(image[:, :, :, s : s + 8], patch_image[:, :4, :5])
            for s in range(12 - 8 + 1)
        )


def test_crop_patch_pads_past_the_end() -> None:
    image = np.ones((1, 3, 3, 3), dtype=np.float32)
    target = np.full((3, 3, 3), 2, dtype=np.int64)
    patch_image, patch_target = crop_patch(image, target, (0, 0, 0), (4, 4, 4))
    assert patch_image.sum() == 27 and patch_target.sum() == 54
    assert patch_image.dtype == np.float32 and patch_target.dtype == np.int64


def test_sampler_rejects_bad_input() -> None:
    image = np.zeros((1, 8, 8, 8), dtype=np.float32)
    target = np.zeros((8, 8, 8), dtype=np.int64)
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="at least one"):
        PatchSampler([], (4, 4, 4), rng=rng)
    with pytest.raises(ValueError, match="differs"):
        PatchSampler([(image, target[:4])], (4, 4, 4), rng=rng)
    with pytest.raises(TypeError, match="integer"):
        PatchSampler([(image, target.astype(np.float32))], (4, 4, 4), rng=rng)
    with pytest.raises(ValueError, match="patch_size"):
        PatchSampler([(image, target)], (4, 4), rng=rng)
    with pytest.raises(ValueError, match="foreground_fraction"):
        PatchSampler([(image, target)], (4, 4, 4), 1.5, rng=rng)


# --- configuration and history ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        ({"patch_size": (16, 16)}, ValueError),
        ({"batch_size": 0}, ValueError),
        ({"epochs": 2.0}, TypeError),
        ({"learning_rate": 0.0}, ValueError),
        ({"weight_decay": -1.0}, ValueError),
        ({"foreground_fraction": 1.1}, ValueError),
        ({"validation_overlap": 1.0}, ValueError),
        ({"mixed_precision": "yes"}, TypeError),
        ({"num_threads": 0}, ValueError),
    ],
)
def test_train_config_validates(overrides: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error):
        TrainConfig(**overrides)  # type: ignore[arg-type]


def test_train_config_round_trips() -> None:
    config = TrainConfig(patch_size=[16, 32, 32], mixed_precision=False)  # type: ignore[arg-type]
    assert config.patch_size == (16, 32, 32)
    assert TrainConfig.from_dict(config.to_dict()) == config
    with pytest.raises(KeyError, match="lr"):
        TrainConfig.from_dict({"lr": 0.1})


def test_history_round_trips_and_summarise_skips_absent_classes() -> None:
    history = TrainHistory()
    history.append(0.5, math.nan, {}, 1.0)
    history.append(0.4, 0.8, {1: 0.7, 2: 0.9}, 1.5)
    assert len(history) == 2 and history.best_val_dice == 0.8
    values = history.to_dict()
    assert values["val_dice"][0] is None and values["val_class_dice"][1] == {"1": 0.7, "2": 0.9}
    again = TrainHistory.from_dict(values)
    assert again.val_class_dice == history.val_class_dice and math.isnan(again.val_dice[0])
    mean, per_class = summarise_dice([{1: 0.6, 2: math.nan}, {1: 0.8, 2: 0.9}, {1: math.nan, 2: math.nan}])
    assert per_class == pytest.approx({1: 0.7, 2: 0.9})
    assert mean == pytest.approx(0.8)
    assert math.isnan(summarise_dice([{1: math.nan}])[0])


# --- training ---------------------------------------------------------------------------------------


def blob_example(rng: np.random.Generator, side: int = SIDE) -> tuple[np.ndarray, np.ndarray]:
    """Two balls in noise: class 1 bright (+1), class 2 dark (−1), each in its own half of the volume."""
    grid = np.indices((side, side, side)).astype(np.float32)
    target = np.zeros((side, side, side), dtype=np.int64)
    image = np.zeros((1, side, side, side), dtype=np.float32)
    for label, intensity, x_range in ((1, 1.0, (5, side // 2 - 4)), (2, -1.0, (side // 2 + 4, side - 5))):
        centre = np.array([rng.uniform(7, side - 7), rng.uniform(7, side - 7), rng.uniform(*x_range)])
        radius = rng.uniform(3.0, 4.5)
        inside = ((grid - centre[:, None, None, None]) ** 2).sum(axis=0) <= radius**2
        target[inside] = label
        image[0, inside] = intensity
    image += rng.normal(0.0, NOISE, size=image.shape).astype(np.float32)
    return image, target


def blob_data(seed: int, count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [blob_example(rng) for _ in range(count)]


def tiny_model(seed: int = 0) -> UNet3D:
    torch.manual_seed(seed)
    return UNet3D(UNetConfig(in_channels=1, n_classes=3, depth=2, base_width=8, blocks_per_level=1))


def test_training_learns_blobs(tmp_path: Path) -> None:
    config = TrainConfig(
        patch_size=(PATCH, PATCH, PATCH), batch_size=2, epochs=5, steps_per_epoch=20, learning_rate=1e-2
    )
    history = train(tiny_model(), blob_data(0, 4), blob_data(1, 2), config, tmp_path)
    assert len(history) == len(history.val_dice) == len(history.seconds) == config.epochs
    assert set(history.val_class_dice[-1]) == {1, 2}
    assert history.val_dice[-1] > 0.85, history.to_dict()
    assert history.loss[-1] < history.loss[0]
    assert (tmp_path / LAST_CHECKPOINT).exists() and (tmp_path / BEST_CHECKPOINT).exists()
    best = torch.load(tmp_path / BEST_CHECKPOINT, weights_only=True)
    assert best["val_dice"] == pytest.approx(history.best_val_dice)
    assert history.val_dice[best["epoch"] - 1] == pytest.approx(best["val_dice"])


def comparable(history: TrainHistory) -> dict[str, object]:
    """A history without its wall times, which differ from run to run."""
    return {k: v for k, v in history.to_dict().items() if k != "seconds"}


def test_resume_is_exact(tmp_path: Path) -> None:
    training, validation = blob_data(2, 2), blob_data(3, 1)
    config = TrainConfig(
        patch_size=(8, 8, 8), batch_size=2, epochs=2, steps_per_epoch=3, learning_rate=1e-2, seed=7
    )
    caller_state = torch.get_rng_state()
    straight = tiny_model()
    history_straight = train(straight, training, validation, config, tmp_path / "a")
    assert torch.equal(torch.get_rng_state(), caller_state)  # the caller's torch generator is untouched

    first = tiny_model()
    history_first = train(first, training, validation, dataclasses.replace(config, epochs=1), tmp_path / "b")
    assert len(history_first) == 1
    resumed = tiny_model(seed=123)  # different initial weights: all of them come from the checkpoint
    history_resumed = train(resumed, training, validation, config, tmp_path / "b")

    assert len(history_resumed) == 2
    assert comparable(history_resumed) == comparable(history_straight)
    state_straight, state_resumed = straight.state_dict(), resumed.state_dict()
    assert state_straight.keys() == state_resumed.keys()
    for name, tensor in state_straight.items():
        assert torch.equal(tensor, state_resumed[name]), name
    assert (tmp_path / "b" / BEST_CHECKPOINT).exists()

    # Nothing left to do: the checkpoint's history comes back unchanged.
    assert len(train(tiny_model(), training, validation, config, tmp_path / "b")) == 2
    changed = dataclasses.replace(config, epochs=3, learning_rate=1e-3)
    with pytest.raises(ValueError, match="learning_rate"):
        train(tiny_model(), training, validation, changed, tmp_path / "b")


def test_train_rejects_mismatched_data(tmp_path: Path) -> None:
    config = TrainConfig(patch_size=(8, 8, 8), epochs=1, steps_per_epoch=1)
    image, target = blob_data(0, 1)[0]
    with pytest.raises(ValueError, match="channels"):
        train(tiny_model(), [(np.concatenate([image, image]), target)], [(image, target)], config, tmp_path)
    with pytest.raises(ValueError, match="classes"):
        train(tiny_model(), [(image, target + 1)], [(image, target)], config, tmp_path)
    with pytest.raises(ValueError, match="size divisor"):
        train(tiny_model(), [(image, target)], [(image, target)], TrainConfig(patch_size=(7, 8, 8)), tmp_path)
