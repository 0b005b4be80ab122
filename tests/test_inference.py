"""Sliding-window inference: patch layout, importance map, and exact blending of a pointwise network."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cohortscale.models.inference import gaussian_importance, patch_starts, sliding_window_inference


def pointwise_network(in_channels: int = 2, classes: int = 3) -> torch.nn.Module:
    """A 1×1×1 convolution: its output at a voxel depends on that voxel only, so any patching is exact."""
    torch.manual_seed(0)
    return torch.nn.Conv3d(in_channels, classes, kernel_size=1).eval()


def test_patch_starts_cover_the_axis_with_the_overlap():
    assert patch_starts(32, 32, 0.5) == [0]
    assert patch_starts(40, 16, 0.5) == [0, 8, 16, 24]
    starts = patch_starts(50, 16, 0.5)
    assert starts[0] == 0 and starts[-1] == 50 - 16
    assert max(np.diff(starts)) <= 8  # at least half of each patch shared with the next
    assert patch_starts(17, 16, 0.0) == [0, 1]
    with pytest.raises(ValueError, match="smaller than the patch"):
        patch_starts(10, 16, 0.5)
    with pytest.raises(ValueError, match="overlap"):
        patch_starts(40, 16, 1.0)


def test_gaussian_importance_peaks_at_the_centre():
    weights = gaussian_importance((9, 8, 7))
    assert weights.shape == (9, 8, 7) and weights.dtype == np.float32
    assert weights.max() == pytest.approx(1.0, abs=0.02)  # even sizes have no single centre voxel
    assert weights[4, 3:5, 3].min() == pytest.approx(weights.max())
    assert weights.min() >= 1e-3
    # Separable: the map is the outer product of its central lines.
    outer = np.multiply.outer(np.multiply.outer(weights[:, 3, 3], weights[4, :, 3]), weights[4, 3, :])
    assert np.allclose(weights, np.maximum(outer / outer.max(), 1e-3), rtol=1e-5)


@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_pointwise_network_is_blended_exactly(overlap, batch_size):
    network = pointwise_network()
    image = torch.randn(2, 21, 30, 17, generator=torch.Generator().manual_seed(1))
    blended = sliding_window_inference(image, network, (8, 16, 8), overlap=overlap, batch_size=batch_size)
    with torch.inference_mode():
        direct = network(image[None])[0]
    assert blended.shape == (3, 21, 30, 17)
    assert torch.allclose(blended, direct, atol=1e-5)


def test_volume_smaller_than_the_patch_is_padded_and_cropped():
    network = pointwise_network()
    image = torch.randn(2, 5, 12, 9, generator=torch.Generator().manual_seed(2))
    blended = sliding_window_inference(image, network, (8, 8, 8))
    with torch.inference_mode():
        direct = network(image[None])[0]
    assert blended.shape == (3, 5, 12, 9)
    assert torch.allclose(blended, direct, atol=1e-5)


def test_context_network_agrees_with_whole_volume_away_from_borders():
    """A 3×3×3 convolution sees one voxel of context: with overlap, every voxel is predicted from a patch
    where it is interior somewhere, and the blend stays close to the whole-volume output."""
    torch.manual_seed(3)
    network = torch.nn.Conv3d(1, 2, kernel_size=3, padding=1).eval()
    image = torch.randn(1, 24, 24, 24, generator=torch.Generator().manual_seed(4))
    blended = sliding_window_inference(image, network, (12, 12, 12), overlap=0.5)
    with torch.inference_mode():
        direct = network(image[None])[0]
    inner = (slice(None), slice(1, -1), slice(1, -1), slice(1, -1))
    # Patch-border voxels see zero padding instead of their neighbours, but the Gaussian weights them
    # little where another patch has them inside.
    error = (blended - direct)[inner].abs()
    assert float(error.mean()) < 0.02 * float(direct.abs().mean())


def test_mixed_precision_on_the_host_runs_in_bfloat16():
    network = pointwise_network()
    image = torch.randn(2, 16, 16, 16, generator=torch.Generator().manual_seed(5))
    blended = sliding_window_inference(image, network, (8, 8, 8), mixed_precision=True)
    with torch.inference_mode():
        direct = network(image[None])[0]
    assert blended.dtype == torch.float32
    assert torch.allclose(blended, direct, atol=0.05)  # bfloat16 has 8 bits of mantissa


def test_bad_shapes_are_named():
    network = pointwise_network()
    with pytest.raises(ValueError, match=r"\(C, Z, Y, X\)"):
        sliding_window_inference(torch.zeros(16, 16, 16), network, (8, 8, 8))
    with pytest.raises(ValueError, match="batch_size"):
        sliding_window_inference(torch.zeros(2, 16, 16, 16), network, (8, 8, 8), batch_size=0)
