"""A 3-D U-Net for volumetric segmentation (nnU-Net-style plain or residual encoder–decoder).

The network, for ``depth`` resolution levels with widths ``base_width · 2**level`` (capped at
``max_width``):

1. an encoder: at each level ``blocks_per_level`` blocks, and between levels a strided 3×3×3 convolution
   (stride 2) that halves every spatial size and widens the features;
2. a decoder: at each level but the deepest a transposed convolution (kernel 2, stride 2) that doubles
   every spatial size, concatenation with the encoder's features of that level (the skip), then
   ``blocks_per_level`` blocks;
3. a 1×1×1 convolution to ``n_classes`` logits.

A block is either one 3×3×3 convolution → norm → LeakyReLU (``residual=False``) or a residual block of
two such convolutions whose sum with a shortcut (a 1×1×1 projection where the width changes) goes through
the final LeakyReLU (``residual=True``).

Input is (N, C, Z, Y, X) float with every spatial size divisible by :attr:`UNet3D.size_divisor`
(``2**(depth - 1)``); output is (N, n_classes, Z, Y, X) logits. The model compiles with
``torch.jit.script``; its :class:`UNetConfig` round-trips through a plain JSON-able dict for model cards.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

#: Normalisation layers :class:`UNetConfig` accepts.
NORMS = ("instance", "batch", "none")

#: Kernel of the feature convolutions and of the downsampling convolutions (voxels per side).
CONV_KERNEL = 3
#: Factor by which each level's spatial sizes shrink (downsampling stride) and grow back (upsampling).
SCALE_FACTOR = 2


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of a :class:`UNet3D`.

    Attributes
    ----------
    in_channels : int
        Input channels (e.g. 2 for water and fat images).
    n_classes : int
        Output classes, background included; the network returns one logit map per class.
    depth : int
        Resolution levels; the deepest works at ``1 / 2**(depth - 1)`` of the input size per axis.
    base_width : int
        Feature channels at the top (full-resolution) level; they double at each level down.
    max_width : int
        Cap on the feature channels of any level (bounds memory at the deep levels).
    blocks_per_level : int
        Blocks at each level of the encoder and, separately, of the decoder.
    residual : bool
        Residual blocks (two 3×3×3 convolutions plus a shortcut) instead of single convolutions.
    norm : str
        ``"instance"`` (affine instance norm: independent of batch size, the usual choice for the small
        batches of 3-D patches), ``"batch"`` or ``"none"``.
    dropout : float
        Channel dropout probability after each activation, 0–1 (0: no dropout layers at all).
    negative_slope : float
        Slope of the LeakyReLU for negative inputs.
    """

    in_channels: int = 2
    n_classes: int = 2
    depth: int = 4
    base_width: int = 16
    max_width: int = 256
    blocks_per_level: int = 2
    residual: bool = True
    norm: str = "instance"
    dropout: float = 0.0
    negative_slope: float = 0.01

    def __post_init__(self) -> None:
        # Types are checked too: values come from JSON model cards, where a "16" or a 16.0 would
        # otherwise build a network or fail somewhere deep inside torch.
        for name in ("in_channels", "n_classes", "depth", "base_width", "max_width", "blocks_per_level"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{name} must be an int, got {value!r}")
            if value < 1:
                raise ValueError(f"{name} must be ≥ 1, got {value}")
        if self.max_width < self.base_width:
            raise ValueError(f"max_width ({self.max_width}) must be ≥ base_width ({self.base_width})")
        if not isinstance(self.residual, bool):
            raise TypeError(f"residual must be a bool, got {self.residual!r}")
        if self.norm not in NORMS:
            raise ValueError(f"unknown norm {self.norm!r}; known: {list(NORMS)}")
        for name in ("dropout", "negative_slope"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise TypeError(f"{name} must be a number, got {value!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.negative_slope < 0.0:
            raise ValueError(f"negative_slope must be ≥ 0, got {self.negative_slope}")

    @property
    def widths(self) -> tuple[int, ...]:
        """Feature channels of each level, top (full resolution) first."""
        return tuple(
            min(self.base_width * SCALE_FACTOR**level, self.max_width) for level in range(self.depth)
        )

    @property
    def size_divisor(self) -> int:
        """Number every spatial size of the input must be a multiple of: ``2**(depth - 1)``."""
        return SCALE_FACTOR ** (self.depth - 1)

    def to_dict(self) -> dict[str, Any]:
        """The settings as a plain dict of JSON types (ints, floats, a bool and a str)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> UNetConfig:
        """The configuration :meth:`to_dict` gave; missing keys take their defaults.

        Raises
        ------
        KeyError
            For keys that are not settings (a card written by a different architecture, or a typo).
        TypeError, ValueError
            For values of the wrong type or out of range.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - names
        if unknown:
            raise KeyError(f"unknown setting(s) {sorted(unknown)} for {cls.__name__}; known: {sorted(names)}")
        # Missing keys are allowed so that cards written before a setting existed still load; a card
        # whose weights then do not fit the architecture fails in load_state_dict.
        return cls(**values)


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "instance":
        return nn.InstanceNorm3d(channels, affine=True)
    if kind == "batch":
        return nn.BatchNorm3d(channels)
    return nn.Identity()


class ConvNormAct(nn.Sequential):
    """3×3×3 convolution (optionally strided) → norm → LeakyReLU → channel dropout (when > 0)."""

    def __init__(self, in_channels: int, out_channels: int, config: UNetConfig, stride: int = 1) -> None:
        layers: list[nn.Module] = [
            nn.Conv3d(
                in_channels,
                out_channels,
                CONV_KERNEL,
                stride=stride,
                padding=CONV_KERNEL // 2,
                # A norm subtracts the per-channel mean, so a bias before it would do nothing.
                bias=config.norm == "none",
            ),
            _norm(config.norm, out_channels),
            nn.LeakyReLU(config.negative_slope, inplace=True),
        ]
        if config.dropout > 0:
            layers.append(nn.Dropout3d(config.dropout))
        super().__init__(*layers)


class ResidualBlock(nn.Module):
    """Two 3×3×3 convolutions with a shortcut: ``act(norm(conv(act(norm(conv(x))))) + shortcut(x))``.

    The shortcut is the identity when the width is kept and a 1×1×1 convolution → norm where it changes.
    """

    def __init__(self, in_channels: int, out_channels: int, config: UNetConfig) -> None:
        super().__init__()
        bias = config.norm == "none"
        self.conv1 = nn.Conv3d(in_channels, out_channels, CONV_KERNEL, padding=CONV_KERNEL // 2, bias=bias)
        self.norm1 = _norm(config.norm, out_channels)
        self.act1 = nn.LeakyReLU(config.negative_slope, inplace=True)
        self.dropout = nn.Dropout3d(config.dropout) if config.dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv3d(out_channels, out_channels, CONV_KERNEL, padding=CONV_KERNEL // 2, bias=bias)
        self.norm2 = _norm(config.norm, out_channels)
        self.shortcut: nn.Module = (
            nn.Identity()
            if in_channels == out_channels
            else nn.Sequential(
                nn.Conv3d(in_channels, out_channels, 1, bias=bias), _norm(config.norm, out_channels)
            )
        )
        self.act2 = nn.LeakyReLU(config.negative_slope, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.dropout(self.act1(self.norm1(self.conv1(x))))
        out = self.norm2(self.conv2(out))
        return self.act2(out + self.shortcut(x))


def _blocks(in_channels: int, out_channels: int, config: UNetConfig) -> list[nn.Module]:
    """``blocks_per_level`` blocks, the first changing the width from ``in_channels`` to ``out_channels``."""
    block = ResidualBlock if config.residual else ConvNormAct
    return [
        block(in_channels if i == 0 else out_channels, out_channels, config)
        for i in range(config.blocks_per_level)
    ]


class UpStage(nn.Module):
    """One decoder level: upsample by a transposed convolution, concatenate the skip, then the blocks."""

    def __init__(self, in_channels: int, out_channels: int, config: UNetConfig) -> None:
        super().__init__()
        self.up = nn.ConvTranspose3d(in_channels, out_channels, SCALE_FACTOR, stride=SCALE_FACTOR)
        self.blocks = nn.Sequential(*_blocks(2 * out_channels, out_channels, config))

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.blocks(torch.cat([self.up(x), skip], dim=1))


class UNet3D(nn.Module):
    """3-D U-Net: (N, in_channels, Z, Y, X) float → (N, n_classes, Z, Y, X) logits.

    Parameters
    ----------
    config : UNetConfig
        The architecture; kept as ``self.config`` (eager modules only: scripting drops it).

    Attributes
    ----------
    size_divisor : int
        Number every spatial size of the input must be a multiple of, ``2**(depth - 1)``; kept by
        ``torch.jit.script`` and ``torch.jit.save``/``load``, so sliding-window inference can read it from a
        loaded model.

    Notes
    -----
    Every spatial size of the input must be a multiple of :attr:`size_divisor`, so that downsampling and
    upsampling give back the input's size exactly; ``forward`` raises a ``ValueError`` otherwise (in a
    scripted module, a ``torch.jit.Error`` carrying the same message).
    """

    # Scripting compiles only the modules and tensors; the dataclass is for Python callers.
    __jit_ignored_attributes__ = ("config",)

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        # A plain attribute, not a property: scripted modules (also after torch.jit.save/load) keep
        # attributes, while a property on them reads as a bare property object or is gone.
        self.size_divisor: int = config.size_divisor
        widths = config.widths
        encoder: list[nn.Module] = [nn.Sequential(*_blocks(config.in_channels, widths[0], config))]
        for level in range(1, config.depth):
            down = ConvNormAct(widths[level - 1], widths[level], config, stride=SCALE_FACTOR)
            encoder.append(nn.Sequential(down, *_blocks(widths[level], widths[level], config)))
        self.encoder = nn.ModuleList(encoder)
        # Deepest first, the order in which forward visits them.
        self.decoder = nn.ModuleList(
            [UpStage(widths[level + 1], widths[level], config) for level in reversed(range(config.depth - 1))]
        )
        self.head = nn.Conv3d(widths[0], config.n_classes, 1)
        self._init_weights(config.negative_slope)

    def _init_weights(self, negative_slope: float) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv3d):
                # He initialisation for the LeakyReLU that follows: keeps activations' variance through depth.
                nn.init.kaiming_normal_(module.weight, a=negative_slope, nonlinearity="leaky_relu")
            elif isinstance(module, nn.ConvTranspose3d):
                # With kernel = stride, each output voxel sees exactly one tap per input channel, so the
                # fan-in is in_channels (torch's fan for this weight layout would count out_channels · 8);
                # no activation follows, hence unit gain.
                nn.init.normal_(module.weight, std=1.0 / math.sqrt(module.in_channels))
            else:
                continue
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5:
            raise ValueError(f"UNet3D expects (N, C, Z, Y, X) input, got shape {list(x.shape)}")
        for size in x.shape[2:]:
            if size % self.size_divisor != 0:
                raise ValueError(
                    f"spatial sizes of input shape {list(x.shape)} must be multiples of "
                    f"{self.size_divisor} (2**(depth - 1))"
                )
        skips: list[torch.Tensor] = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        skips.pop()  # the deepest level's output is x itself, not a skip
        for stage in self.decoder:
            x = stage(x, skips.pop())
        return self.head(x)


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters of ``module`` (those with ``requires_grad`` if ``trainable_only``)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
