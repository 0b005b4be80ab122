"""The 3-D U-Net: shapes, configuration, scripting, parameter counts, and that it learns a toy task."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from cohortscale.models.unet import UNet3D, UNetConfig, count_parameters

# torch 2.13 deprecates TorchScript in favour of torch.export; the model is still meant to script.
pytestmark = pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated:DeprecationWarning")

#: Side of the test volumes, voxels (a multiple of every size divisor used here).
SIZE = 16


def tiny(**overrides: object) -> UNetConfig:
    """A small config (depth 2, width 4) unless asked otherwise."""
    settings = {"in_channels": 2, "n_classes": 3, "depth": 2, "base_width": 4, **overrides}
    return UNetConfig(**settings)  # type: ignore[arg-type]


def volume(config: UNetConfig, batch: int = 1, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, config.in_channels, SIZE, SIZE, SIZE, generator=generator)


@pytest.mark.parametrize(
    "overrides",
    [
        {"depth": 1},
        {"depth": 2, "residual": False},
        {"depth": 3, "residual": True, "blocks_per_level": 1},
        {"depth": 3, "norm": "batch"},
        {"depth": 3, "norm": "none", "residual": False},
        {"depth": 2, "dropout": 0.2},
        {"depth": 3, "base_width": 8, "max_width": 8},
    ],
)
def test_output_shape_and_dtype(overrides: dict[str, object]) -> None:
    torch.manual_seed(0)
    config = tiny(**overrides)
    model = UNet3D(config).eval()
    x = volume(config, batch=2)
    with torch.no_grad():
        out = model(x)
        again = model(x)
    assert out.shape == (2, config.n_classes, SIZE, SIZE, SIZE)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, again)  # eval mode: dropout off, batch norm on running stats
    assert model.size_divisor == 2 ** (config.depth - 1)


def test_widths_double_and_cap() -> None:
    assert UNetConfig(depth=5, base_width=16, max_width=64).widths == (16, 32, 64, 64, 64)


def test_wrong_spatial_size_names_the_shape() -> None:
    model = UNet3D(tiny(depth=3))
    with pytest.raises(ValueError, match=r"\[1, 2, 16, 12, 18\].*multiples of 4"):
        model(torch.zeros(1, 2, 16, 12, 18))
    with pytest.raises(ValueError, match=r"\(N, C, Z, Y, X\).*\[2, 16, 16, 16\]"):
        model(torch.zeros(2, 16, 16, 16))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"norm": "layer"}, "unknown norm 'layer'"),
        ({"depth": 0}, "depth must be ≥ 1"),
        ({"base_width": 32, "max_width": 16}, "max_width"),
        ({"dropout": 1.0}, "dropout"),
        ({"negative_slope": -0.1}, "negative_slope"),
    ],
)
def test_bad_settings_raise(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tiny(**overrides)


def test_wrong_types_raise() -> None:
    with pytest.raises(TypeError, match="base_width"):
        tiny(base_width="8")
    with pytest.raises(TypeError, match="depth"):
        tiny(depth=2.0)
    with pytest.raises(TypeError, match="residual"):
        tiny(residual="yes")


@pytest.mark.parametrize("overrides", [{"depth": 3}, {"depth": 2, "residual": False, "norm": "batch"}])
def test_script_matches_eager_and_survives_save_load(overrides, tmp_path) -> None:
    torch.manual_seed(0)
    config = tiny(**overrides)
    model = UNet3D(config).eval()
    scripted = torch.jit.script(model)
    x = volume(config)
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(scripted(x), expected, rtol=1e-5, atol=1e-5)
        path = tmp_path / "unet.pt"
        torch.jit.save(scripted, str(path))
        loaded = torch.jit.load(str(path))
        torch.testing.assert_close(loaded(x), expected, rtol=1e-5, atol=1e-5)
    assert loaded.size_divisor == model.size_divisor
    # The size check is compiled too (TorchScript re-raises it as torch.jit.Error with the same message).
    with pytest.raises(torch.jit.Error, match=r"\[1, 2, 16, 16, 15\]"):
        loaded(torch.zeros(1, 2, 16, 16, 15))


def test_state_dict_round_trip_through_config_dict() -> None:
    torch.manual_seed(0)
    config = tiny(depth=3, dropout=0.1, negative_slope=0.02)
    stored = json.loads(json.dumps(config.to_dict()))  # as a model card would keep it
    restored = UNetConfig.from_dict(stored)
    assert restored == config
    model = UNet3D(config).eval()
    torch.manual_seed(1)  # a differently initialised copy: the weights must come from the state dict
    fresh = UNet3D(restored)
    fresh.load_state_dict(model.state_dict())
    fresh.eval()
    x = volume(config)
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))


def test_from_dict_rejects_unknown_keys() -> None:
    values = {**tiny().to_dict(), "width_multiplier": 2}
    with pytest.raises(KeyError, match="width_multiplier"):
        UNetConfig.from_dict(values)


def test_from_dict_fills_missing_keys_with_defaults() -> None:
    assert UNetConfig.from_dict({"n_classes": 5}) == UNetConfig(n_classes=5)


@pytest.mark.parametrize(
    ("norm", "present", "absent"),
    [
        ("instance", nn.InstanceNorm3d, nn.BatchNorm3d),
        ("batch", nn.BatchNorm3d, nn.InstanceNorm3d),
        ("none", None, (nn.InstanceNorm3d, nn.BatchNorm3d)),
    ],
)
def test_norm_layers(norm, present, absent) -> None:
    modules = list(UNet3D(tiny(norm=norm)).modules())
    if present is not None:
        norms = [m for m in modules if isinstance(m, present)]
        assert norms and all(m.affine for m in norms)
    assert not any(isinstance(m, absent) for m in modules)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        # in 2, width 4, 3 classes, one level, one plain block, instance norm:
        #   3×3×3 conv 2→4 without bias (the norm removes it): 2·4·27 = 216
        #   affine instance norm, a weight and a bias per channel: 2·4 = 8
        #   1×1×1 head 4→3 with bias: 4·3 + 3 = 15                             total 239
        ({"depth": 1, "blocks_per_level": 1, "residual": False}, 239),
        # the same without norm: the conv keeps its bias (216 + 4) and the head adds 15       total 235
        ({"depth": 1, "blocks_per_level": 1, "residual": False, "norm": "none"}, 235),
        # one residual block, no norm:
        #   conv 2→4: 216 + 4 = 220;  conv 4→4: 4·4·27 + 4 = 436
        #   1×1×1 projection shortcut 2→4 (the width changes): 2·4 + 4 = 12;  head 15     total 683
        ({"depth": 1, "blocks_per_level": 1, "residual": True, "norm": "none"}, 683),
        # in 1, widths (2, 4), 2 classes, two levels, one plain block each, no norm:
        #   encoder level 0, conv 1→2: 1·2·27 + 2 = 56
        #   downsampling conv 2→4 (stride 2): 2·4·27 + 4 = 220
        #   encoder level 1, conv 4→4: 4·4·27 + 4 = 436
        #   transposed conv 4→2 (kernel 2): 4·2·8 + 2 = 66
        #   decoder level 0, conv (2 + 2 concatenated)→2: 4·2·27 + 2 = 218
        #   head 2→2: 2·2 + 2 = 6                                                    total 1002
        (
            {
                "in_channels": 1,
                "n_classes": 2,
                "base_width": 2,
                "depth": 2,
                "blocks_per_level": 1,
                "residual": False,
                "norm": "none",
            },
            1002,
        ),
    ],
)
def test_exact_parameter_counts(overrides: dict[str, object], expected: int) -> None:
    assert count_parameters(UNet3D(tiny(**overrides))) == expected


def test_parameter_count_grows_quadratically_with_width() -> None:
    # Feature convolutions scale with width²; only the first conv and the head scale linearly, so doubling
    # the width multiplies the count by a little under 4.
    small = count_parameters(UNet3D(tiny(depth=3, base_width=4)))
    large = count_parameters(UNet3D(tiny(depth=3, base_width=8)))
    assert 3.5 < large / small < 4.0


def test_count_parameters_trainable_only() -> None:
    model = UNet3D(tiny(depth=1))
    total = count_parameters(model)
    model.head.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == total - count_parameters(model.head)


#: Noise standard deviation of the toy segmentation task (signal 1 inside the sphere, 0 outside).
NOISE_SD = 0.3


def spheres(generator: torch.Generator, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy one-channel images of random balls (radius 3–6 voxels) and their 0/1 label volumes."""
    axis = torch.arange(SIZE, dtype=torch.float32)
    grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"))  # (3, Z, Y, X)
    centres = 4 + torch.rand(batch, 3, 1, 1, 1, generator=generator) * (SIZE - 8)
    radii = 3 + torch.rand(batch, 1, 1, 1, generator=generator) * 3
    labels = (((grid - centres) ** 2).sum(dim=1) <= radii**2).long()
    images = labels[:, None].float() + NOISE_SD * torch.randn(batch, 1, SIZE, SIZE, SIZE, generator=generator)
    return images, labels


def dice(prediction: torch.Tensor, truth: torch.Tensor) -> float:
    """Dice overlap of two boolean masks."""
    return (2 * (prediction & truth).sum() / (prediction.sum() + truth.sum())).item()


def test_learns_to_segment_noisy_spheres() -> None:
    torch.manual_seed(0)
    training = torch.Generator().manual_seed(1)
    model = UNet3D(UNetConfig(in_channels=1, n_classes=2, depth=2, base_width=8))
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        images, labels = spheres(training, batch=2)
        loss = nn.functional.cross_entropy(model(images), labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()

    images, labels = spheres(torch.Generator().manual_seed(99), batch=4)  # volumes not trained on
    model.eval()
    with torch.no_grad():
        predicted = model(images).argmax(dim=1) == 1
    learned = dice(predicted, labels == 1)
    # Thresholding each voxel alone misclassifies ~5 % of voxels (Dice ≈ 0.83 here): beating it clearly
    # shows the network uses spatial context, not just the intensity.
    threshold = dice(images[:, 0] > 0.5, labels == 1)
    assert learned > 0.9
    assert learned > threshold + 0.05
