"""Training of the 3-D U-Net on patches: Dice + cross-entropy, AdamW, validation Dice, exact resume.

One epoch is ``steps_per_epoch`` optimiser steps on batches from :class:`PatchSampler` (half the patches
centred on foreground by default), then a validation pass: every validation volume is segmented whole by
:func:`sliding_window_inference` and scored with :func:`dice_per_class`. After each epoch ``last.pt``
holds everything needed to continue — weights, optimiser and gradient-scaler state, history, and the
states of the sampler's and torch's generators — so that training stopped after epoch n and resumed
gives, on the CPU, the same weights as training straight through; ``best.pt`` holds the weights of the
epoch with the best validation Dice.

Examples are pairs of an image, float32 (C, Z, Y, X), normalised and resampled, and a target, int
(Z, Y, X), of channel indices 0…K−1 (0 = background).
"""

from __future__ import annotations

import dataclasses
import math
import os
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from cohortscale.models.inference import sliding_window_inference
from cohortscale.models.metrics import dice_per_class
from cohortscale.models.sampling import BACKGROUND, PatchSampler, check_example, check_patch_size
from cohortscale.models.unet import UNet3D, UNetConfig

#: Checkpoint written after every epoch, from which training resumes.
LAST_CHECKPOINT = "last.pt"

#: Checkpoint of the epoch with the best validation mean Dice.
BEST_CHECKPOINT = "best.pt"

#: Layout of the checkpoint dicts this module writes and reads.
CHECKPOINT_VERSION = 1

#: Added to the numerator and denominator of the soft Dice: keeps it defined for empty predictions.
DICE_SMOOTH = 1e-5


def dice_ce_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = DICE_SMOOTH) -> torch.Tensor:
    """Cross-entropy plus soft-Dice loss of a batch of segmentation logits.

    ``loss = CE + 1 − mean_c Dice_c`` where

    * CE is the cross-entropy averaged over all voxels of the batch;
    * ``Dice_c = (2 Σ p_c t_c + smooth) / (Σ p_c + Σ t_c + smooth)`` with ``p_c`` the softmax
      probability of class ``c`` and ``t_c`` its one-hot target, summed over the whole batch (the
      "batch Dice": a patch that lacks a class then does not count as a failure for it);
    * the mean is over the foreground classes (channels 1…K−1) present in the batch's target. A class
      absent from the target has no defined overlap (as in :mod:`cohortscale.models.metrics`); false
      positives of it are still penalised by the cross-entropy. With no foreground in the batch the loss
      is the cross-entropy alone.

    Parameters
    ----------
    logits : Tensor, float, shape (B, K, *spatial)
        Unnormalised class scores; computed on in float32 whatever their dtype (e.g. float16 from
        autocast), since sums over millions of voxels overflow or lose precision in half precision.
    target : Tensor, int64, shape (B, *spatial)
        Channel indices 0…K−1.
    smooth : float
        Added to the Dice numerator and denominator (voxels); small, so that it matters only for
        classes with almost no predicted or true voxels.

    Returns
    -------
    Tensor, float32, scalar
        Non-negative; near 0 for confident correct logits. Differentiable in ``logits``.
    """
    if logits.ndim < 3 or target.shape != logits.shape[:1] + logits.shape[2:]:
        raise ValueError(
            f"logits (B, K, ...) {tuple(logits.shape)} and target (B, ...) {tuple(target.shape)} do not match"
        )
    logits = logits.float()
    n_classes = logits.shape[1]
    cross_entropy = F.cross_entropy(logits, target)
    if n_classes < 2:
        return cross_entropy
    probabilities = torch.softmax(logits, dim=1)
    # One-hot to (B, K, *spatial); sums over every axis but the class axis.
    one_hot = F.one_hot(target, n_classes).movedim(-1, 1).to(probabilities.dtype)
    axes = [0, *range(2, logits.ndim)]
    intersection = (probabilities * one_hot).sum(dim=axes)[1:]
    predicted = probabilities.sum(dim=axes)[1:]
    truth = one_hot.sum(dim=axes)[1:]
    dice = (2 * intersection + smooth) / (predicted + truth + smooth)
    present = truth > 0
    if not bool(present.any()):
        return cross_entropy
    return cross_entropy + 1 - dice[present].mean()


@dataclass(frozen=True)
class TrainConfig:
    """Settings of :func:`train`.

    Attributes
    ----------
    patch_size : tuple of int
        Training and validation patch shape (z, y, x), voxels; each a multiple of the model's
        ``size_divisor``.
    batch_size : int
        Patches per optimiser step (also per predictor call in validation).
    epochs : int
        Epochs to train in all, counting those already in a checkpoint being resumed.
    steps_per_epoch : int
        Optimiser steps per epoch.
    learning_rate : float
        AdamW learning rate (constant).
    weight_decay : float
        AdamW decoupled weight decay.
    foreground_fraction : float
        Share of patches centred on a foreground voxel, 0–1.
    seed : int
        Seed of the patch sampler and of torch's generator during training (dropout).
    mixed_precision : bool or None
        Autocast the forward pass: float16 with a gradient scaler on CUDA, bfloat16 elsewhere. ``None``:
        on CUDA only (bfloat16 on the CPU is rarely faster and costs accuracy).
    validation_overlap : float
        Overlap of the sliding windows in validation, 0–1.
    num_threads : int or None
        CPU threads torch may use while training (``None``: torch's setting); restored afterwards.
    """

    patch_size: tuple[int, int, int] = (32, 64, 64)
    batch_size: int = 2
    epochs: int = 50
    steps_per_epoch: int = 50
    learning_rate: float = 1e-3
    weight_decay: float = 1e-5
    foreground_fraction: float = 0.5
    seed: int = 0
    mixed_precision: bool | None = None
    validation_overlap: float = 0.25
    num_threads: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "patch_size", check_patch_size(self.patch_size))
        for name in ("batch_size", "epochs", "steps_per_epoch", "seed"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{name} must be an int, got {value!r}")
        for name in ("batch_size", "epochs", "steps_per_epoch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        if self.seed < 0:
            raise ValueError(f"seed must be ≥ 0, got {self.seed}")
        for name in ("learning_rate", "weight_decay", "foreground_fraction", "validation_overlap"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
                raise TypeError(f"{name} must be a finite number, got {value!r}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be ≥ 0, got {self.weight_decay}")
        if not 0.0 <= self.foreground_fraction <= 1.0:
            raise ValueError(f"foreground_fraction must be in [0, 1], got {self.foreground_fraction}")
        if not 0.0 <= self.validation_overlap < 1.0:
            raise ValueError(f"validation_overlap must be in [0, 1), got {self.validation_overlap}")
        if self.mixed_precision is not None and not isinstance(self.mixed_precision, bool):
            raise TypeError(f"mixed_precision must be true, false or None, got {self.mixed_precision!r}")
        if self.num_threads is not None and (
            not isinstance(self.num_threads, int)
            or isinstance(self.num_threads, bool)
            or self.num_threads < 1
        ):
            raise ValueError(f"num_threads must be None or an int ≥ 1, got {self.num_threads!r}")

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain JSON types (the patch size as a list)."""
        values = dataclasses.asdict(self)
        values["patch_size"] = list(self.patch_size)
        return values

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        """The configuration :meth:`to_dict` gave; ``KeyError`` for unknown keys."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - names
        if unknown:
            raise KeyError(f"unknown setting(s) {sorted(unknown)} for {cls.__name__}; known: {sorted(names)}")
        return cls(**values)


def _nan_to_none(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


@dataclass
class TrainHistory:
    """What happened in each epoch, first epoch first.

    Attributes
    ----------
    loss : list of float
        Mean training loss (:func:`dice_ce_loss`) over the epoch's steps.
    val_dice : list of float
        Validation mean Dice, 0–1, over the foreground classes present in the validation targets; NaN
        when none is.
    val_class_dice : list of dict of int to float
        Validation Dice per foreground channel index, averaged over the validation volumes whose target
        holds the class; classes in none of them are left out.
    seconds : list of float
        Wall time of the epoch, validation included, s.
    """

    loss: list[float] = field(default_factory=list)
    val_dice: list[float] = field(default_factory=list)
    val_class_dice: list[dict[int, float]] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.loss)

    def append(
        self, loss: float, val_dice: float, val_class_dice: Mapping[int, float], seconds: float
    ) -> None:
        """Record one epoch."""
        self.loss.append(float(loss))
        self.val_dice.append(float(val_dice))
        self.val_class_dice.append({int(k): float(v) for k, v in val_class_dice.items()})
        self.seconds.append(float(seconds))

    @property
    def best_val_dice(self) -> float:
        """Highest validation mean Dice so far; NaN before any epoch with a defined one."""
        values = [v for v in self.val_dice if not math.isnan(v)]
        return max(values) if values else math.nan

    def to_dict(self) -> dict[str, Any]:
        """Plain strict-JSON types: class ids as string keys, NaN as ``None``."""
        return {
            "loss": list(self.loss),
            "val_dice": [_nan_to_none(v) for v in self.val_dice],
            "val_class_dice": [{str(k): v for k, v in epoch.items()} for epoch in self.val_class_dice],
            "seconds": list(self.seconds),
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainHistory:
        """The history :meth:`to_dict` gave."""
        return cls(
            loss=[float(v) for v in values["loss"]],
            val_dice=[math.nan if v is None else float(v) for v in values["val_dice"]],
            val_class_dice=[{int(k): float(v) for k, v in e.items()} for e in values["val_class_dice"]],
            seconds=[float(v) for v in values["seconds"]],
        )


# --- validation -------------------------------------------------------------------------------------


def predict_volume(
    model: torch.nn.Module,
    image: np.ndarray,
    patch_size: tuple[int, int, int],
    *,
    device: torch.device,
    overlap: float,
    batch_size: int,
    mixed_precision: bool,
) -> np.ndarray:
    """Channel index (argmax of the blended logits) of every voxel of one (C, Z, Y, X) image, int64."""
    logits = sliding_window_inference(
        torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).to(device),
        model,
        patch_size,
        overlap=overlap,
        batch_size=batch_size,
        mixed_precision=mixed_precision,
    )
    return logits.argmax(dim=0).cpu().numpy()


def summarise_dice(per_volume: Sequence[Mapping[int, float]]) -> tuple[float, dict[int, float]]:
    """Mean Dice and per-class Dice over validation volumes from each volume's :func:`dice_per_class`.

    A class's Dice is averaged over the volumes whose truth holds it (NaN entries skipped); the mean Dice
    is the unweighted mean of those class values, so a small structure counts as much as a large one.
    Returns NaN and an empty dict when no volume holds any of the classes.
    """
    per_class: dict[int, float] = {}
    for label in sorted({label for volume in per_volume for label in volume}):
        values = [volume[label] for volume in per_volume if not math.isnan(volume.get(label, math.nan))]
        if values:
            per_class[label] = float(np.mean(values))
    mean = float(np.mean(list(per_class.values()))) if per_class else math.nan
    return mean, per_class


def validate(
    model: torch.nn.Module,
    examples: Sequence[tuple[np.ndarray, np.ndarray]],
    n_classes: int,
    config: TrainConfig,
    *,
    device: torch.device,
    mixed_precision: bool,
) -> tuple[float, dict[int, float]]:
    """Validation mean Dice and per-class Dice (foreground channels 1…K−1) of ``model`` on ``examples``.

    The model is put in eval mode and left there.
    """
    model.eval()
    foreground = range(BACKGROUND + 1, n_classes)
    scores = [
        dice_per_class(
            predict_volume(
                model,
                image,
                config.patch_size,
                device=device,
                overlap=config.validation_overlap,
                batch_size=config.batch_size,
                mixed_precision=mixed_precision,
            ),
            target,
            foreground,
        )
        for image, target in examples
    ]
    return summarise_dice(scores)


# --- checkpoints ------------------------------------------------------------------------------------


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename it over ``path``.

    A crash mid-write leaves the previous checkpoint intact rather than a truncated one.
    """
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(obj, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint written by :func:`train`, loaded on the CPU (tensors only, no pickled code)."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if checkpoint.get("version") != CHECKPOINT_VERSION:
        raise ValueError(
            f"{path}: checkpoint version {checkpoint.get('version')!r} is not {CHECKPOINT_VERSION}"
        )
    return checkpoint


def _differing(saved: Mapping[str, Any], current: Mapping[str, Any], ignore: set[str]) -> list[str]:
    return sorted(k for k in set(saved) | set(current) if k not in ignore and saved.get(k) != current.get(k))


def check_resumable(
    checkpoint: Mapping[str, Any], config: TrainConfig, model_config: UNetConfig, path: Path
) -> None:
    """Raise ``ValueError`` naming the settings in which a checkpoint differs from this run.

    Only ``epochs`` (to train longer) and ``num_threads`` (the machine's cores) may change on resume; any
    other change would make the resumed run differ from one trained straight through.
    """
    saved = TrainConfig.from_dict(checkpoint["config"]).to_dict()
    differing = _differing(saved, config.to_dict(), {"epochs", "num_threads"})
    differing += [
        f"model.{name}"
        for name in _differing(dict(checkpoint["model_config"]), model_config.to_dict(), set())
    ]
    if differing:
        raise ValueError(
            f"{path} was written with different settings: {', '.join(differing)}; use another checkpoint "
            "directory, or the same settings (only epochs and num_threads may change)"
        )


# --- training ---------------------------------------------------------------------------------------


@contextmanager
def _threads(num_threads: int | None) -> Iterator[None]:
    """Set torch's CPU thread count for the block, then restore it."""
    if num_threads is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _check_examples(
    examples: Sequence[tuple[np.ndarray, np.ndarray]], model_config: UNetConfig, name: str
) -> None:
    if len(examples) == 0:
        raise ValueError(f"{name}: at least one example is needed")
    for i, (image, target) in enumerate(examples):
        check_example(image, target, f"{name} example {i}")
        if image.shape[0] != model_config.in_channels:
            raise ValueError(
                f"{name} example {i}: {image.shape[0]} image channels, "
                f"the model takes {model_config.in_channels}"
            )
        if target.size and target.max() >= model_config.n_classes:
            raise ValueError(
                f"{name} example {i}: channel index {target.max()} in the target, "
                f"the model has {model_config.n_classes} classes"
            )


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    images: torch.Tensor,
    targets: torch.Tensor,
    autocast: Any,
) -> torch.Tensor:
    """One optimiser step on a batch; returns the (detached) loss."""
    optimizer.zero_grad(set_to_none=True)
    with autocast:
        logits = model(images)
    loss = dice_ce_loss(logits, targets)  # in float32, outside autocast
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss.detach()


def train(
    model: UNet3D,
    training: Sequence[tuple[np.ndarray, np.ndarray]],
    validation: Sequence[tuple[np.ndarray, np.ndarray]],
    config: TrainConfig,
    checkpoint_dir: str | Path,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> TrainHistory:
    """Train ``model`` in place, validating and checkpointing after every epoch; resume if a run was cut.

    Parameters
    ----------
    model : UNet3D
        The network (moved to ``device``, left in eval mode with the last epoch's weights); its initial
        weights are the caller's (seed torch before building it for a reproducible run).
    training, validation : sequence of (image, target)
        Images float (C, Z, Y, X), normalised and resampled; targets int (Z, Y, X) of channel indices
        0…K−1 (0 = background), K the model's ``n_classes``. Training patches come from
        :class:`PatchSampler`; each validation volume is segmented whole, by sliding windows.
    config : TrainConfig
        Recipe (patch size, steps, optimiser, seed…).
    checkpoint_dir : path
        Created if needed. ``last.pt`` is rewritten (atomically) after every epoch; ``best.pt`` (model
        weights, epoch, validation Dice) whenever the validation mean Dice improves. If ``last.pt``
        exists at the start, training resumes from it: weights, optimiser, scaler, history and generator
        states are restored and training continues up to ``config.epochs`` (a checkpoint already that far
        is returned as it is).
    device : str or torch.device
        Where to train.
    progress : bool
        Show a progress bar over epochs with the latest loss and validation Dice.

    Returns
    -------
    TrainHistory
        One entry per epoch trained, those of a resumed checkpoint included.

    Raises
    ------
    ValueError
        On malformed examples, a patch size the model cannot take, or a ``last.pt`` written with different
        settings (the message names them; only ``epochs`` may differ).

    Notes
    -----
    On the CPU, given the seed and the model's initial weights, training is deterministic, and stopping
    after any epoch then resuming gives the same weights as training straight through. On CUDA,
    convolution kernels need not be deterministic.
    """
    device = torch.device(device)
    checkpoint_dir = Path(checkpoint_dir)
    model_config = model.config
    for size in config.patch_size:
        if size % model.size_divisor:
            raise ValueError(
                f"patch_size {config.patch_size} must be multiples of the model's size divisor "
                f"{model.size_divisor}"
            )
    _check_examples(training, model_config, "training")
    _check_examples(validation, model_config, "validation")
    last_path = checkpoint_dir / LAST_CHECKPOINT
    checkpoint = load_checkpoint(last_path) if last_path.exists() else None
    if checkpoint is not None:
        check_resumable(checkpoint, config, model_config, last_path)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)

    model.to(device)
    use_amp = device.type == "cuda" if config.mixed_precision is None else config.mixed_precision
    # float16 needs loss scaling against gradient underflow; bfloat16 (CPU) has float32's range.
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    autocast = torch.autocast(device.type, dtype=amp_dtype) if use_amp else nullcontext()
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp and device.type == "cuda")
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    sampler = PatchSampler(
        training, config.patch_size, config.foreground_fraction, rng=np.random.default_rng(config.seed)
    )
    history = TrainHistory()

    # The training's torch generator stream is its own: the caller's is saved and restored around it.
    rng_devices: list[int] = []
    if device.type == "cuda":
        rng_devices = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=rng_devices), _threads(config.num_threads):
        torch.manual_seed(config.seed)
        if checkpoint is not None:
            model.load_state_dict(checkpoint["model"])
            optimizer.load_state_dict(checkpoint["optimizer"])
            scaler.load_state_dict(checkpoint["scaler"])
            sampler.load_state_dict(checkpoint["sampler"])
            history = TrainHistory.from_dict(checkpoint["history"])
            torch.set_rng_state(checkpoint["torch_rng"])
            if device.type == "cuda" and checkpoint.get("cuda_rng") is not None:
                torch.cuda.set_rng_state(checkpoint["cuda_rng"], device)
        _run_epochs(
            model,
            sampler,
            optimizer,
            scaler,
            autocast,
            validation,
            config,
            history,
            checkpoint_dir,
            device=device,
            use_amp=use_amp,
            progress=progress,
        )
    return history


def _run_epochs(
    model: UNet3D,
    sampler: PatchSampler,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    autocast: Any,
    validation: Sequence[tuple[np.ndarray, np.ndarray]],
    config: TrainConfig,
    history: TrainHistory,
    checkpoint_dir: Path,
    *,
    device: torch.device,
    use_amp: bool,
    progress: bool,
) -> None:
    """The epoch loop of :func:`train`, from ``len(history)`` to ``config.epochs``."""
    bar = tqdm(
        total=config.epochs,
        initial=min(len(history), config.epochs),
        desc="train",
        unit="epoch",
        disable=not progress,
    )
    for epoch in range(len(history), config.epochs):
        started = time.perf_counter()
        model.train()
        total = torch.zeros((), device=device)
        for _ in range(config.steps_per_epoch):
            images, targets = sampler.sample(config.batch_size)
            images = images.to(device, non_blocking=True)
            targets = targets.to(device, non_blocking=True)
            # Summed on the device: .item() every step would wait for the GPU.
            total += train_step(model, optimizer, scaler, images, targets, autocast)
        val_dice, val_class_dice = validate(
            model, validation, model.config.n_classes, config, device=device, mixed_precision=use_amp
        )
        best = history.best_val_dice
        improved = not math.isnan(val_dice) and (math.isnan(best) or val_dice > best)
        history.append(
            total.item() / config.steps_per_epoch, val_dice, val_class_dice, time.perf_counter() - started
        )
        # best.pt before last.pt: a crash between the two then repeats this epoch (and rewrites best.pt)
        # instead of skipping it with its best weights unsaved.
        if improved:
            atomic_save(
                {
                    "version": CHECKPOINT_VERSION,
                    "model": model.state_dict(),
                    "model_config": model.config.to_dict(),
                    "epoch": epoch + 1,
                    "val_dice": val_dice,
                    "val_class_dice": {str(k): v for k, v in val_class_dice.items()},
                },
                checkpoint_dir / BEST_CHECKPOINT,
            )
        atomic_save(
            {
                "version": CHECKPOINT_VERSION,
                "config": config.to_dict(),
                "model_config": model.config.to_dict(),
                "epoch": epoch + 1,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(),
                "history": history.to_dict(),
                "sampler": sampler.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            },
            checkpoint_dir / LAST_CHECKPOINT,
        )
        bar.update(1)
        bar.set_postfix(loss=f"{history.loss[-1]:.4f}", val_dice=f"{val_dice:.4f}")
    bar.close()
