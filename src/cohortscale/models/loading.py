"""A segmentation model from its card, and the label volume it gives for one participant.

:func:`load_model` reads a model card (:class:`cohortscale.models.card.ModelCard`) and its weights file,
which lies beside it: a TorchScript module (``format = "torchscript"``, :func:`torch.jit.load`) or a
state dict for the :class:`cohortscale.models.unet.UNet3D` that the card's ``architecture`` describes
(``format = "state_dict"``; a training checkpoint of :func:`cohortscale.models.train.train` holding the
state dict under ``"model"`` is accepted too). Every problem — no weights file, weights that do not fit
the architecture, a network that does not map the card's inputs to its classes — raises
:class:`ModelLoadError` naming the card file, before any participant is processed.

:func:`segment_volume` runs a loaded model on one participant's volumes: :func:`prepare_input` (channels,
normalisation, resampling to the card's spacing), :func:`sliding_window_inference` over patches of the
card's size, and :func:`restore` (class scores back to the original grid, best class per voxel).

:func:`cached_model` keeps loaded models for the life of the process, so that a pipeline worker that
processes many batches of visits loads each model once. Entries are keyed by the resolved card path, the
modification times of the card and of its weights file, and the device: editing either file loads the
model again, and a model is loaded once per device it runs on.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cohortscale.models.card import ModelCard, weights_path
from cohortscale.models.inference import sliding_window_inference
from cohortscale.models.preprocess import PreparedGeometry, prepare_input, restore
from cohortscale.models.unet import UNet3D, UNetConfig

#: Values of a stage's ``device`` setting: a CUDA GPU where torch sees one ("auto"), or forced.
DEVICES = ("auto", "cpu", "gpu")
#: Key of the state dict in a training checkpoint (``best.pt`` / ``last.pt`` of the training loop).
CHECKPOINT_MODEL_KEY = "model"
#: Models :func:`cached_model` keeps per process (the least recently used is dropped first): a worker
#: runs one model and its cascade at a time, and spare entries cover a model used on two devices or
#: swapped back and forth.
MAX_CACHED_MODELS = 8
#: Bytes read at a time when hashing a weights file.
HASH_BLOCK_BYTES = 1 << 20
#: Mismatched parameter names listed per kind in a :class:`ModelLoadError`.
LISTED_KEYS = 3


class ModelLoadError(ValueError):
    """A model cannot be loaded or does not fit its card; the message starts with the card file."""


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to run, as :func:`cached_model` keeps it.

    Attributes
    ----------
    card : ModelCard
        The card it was loaded from.
    model : torch.nn.Module
        In eval mode, on ``device``.
    device : torch.device
        Where its parameters are.
    weights_sha256 : str
        SHA-256 of the weights file (hex), identifying the weights behind a card.
    """

    card: ModelCard
    model: torch.nn.Module
    device: torch.device
    weights_sha256: str


_CACHE: dict[tuple[str, int, int, str], LoadedModel] = {}
# Dask workers run several threads: one load per model even when threads ask for it at once.
_CACHE_LOCK = threading.Lock()


def torch_device(setting: str) -> torch.device:
    """The torch device of a ``device`` setting: CUDA for "gpu", or for "auto" where torch sees a GPU.

    Raises
    ------
    ValueError
        For a setting not in :data:`DEVICES`.
    RuntimeError
        For "gpu" where torch sees no CUDA device.
    """
    if setting not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {setting!r}")
    if setting == "gpu" and not torch.cuda.is_available():
        raise RuntimeError("device 'gpu' was asked for, but torch sees no CUDA device here")
    if setting == "gpu" or (setting == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def read_card(card_path: str | Path) -> ModelCard:
    """The model card at ``card_path``.

    Raises
    ------
    ModelLoadError
        When the file does not exist.
    ModelCardError
        When it is not a valid card (the message names the file and the field).
    """
    path = Path(card_path)
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such model card file")
    return ModelCard.load(path)


def weights_sha256(path: str | Path) -> str:
    """SHA-256 (hex) of a weights file."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(HASH_BLOCK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def _names(keys: set[str]) -> str:
    shown = sorted(keys)[:LISTED_KEYS]
    more = len(keys) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def _state_dict(card_path: Path, weights: Path) -> dict[str, torch.Tensor]:
    """The tensors of a state-dict weights file (or of a training checkpoint's ``"model"`` entry)."""
    try:
        # weights_only: a weights file is data, and unpickling arbitrary objects would run their code.
        loaded = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, UnpicklingError, EOFError… for a bad file
        raise ModelLoadError(
            f"{card_path}: weights {weights} cannot be read as a state dict ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''})"
        ) from None
    if isinstance(loaded, Mapping) and isinstance(loaded.get(CHECKPOINT_MODEL_KEY), Mapping):
        loaded = loaded[CHECKPOINT_MODEL_KEY]
    if not isinstance(loaded, Mapping) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise ModelLoadError(
            f"{card_path}: weights {weights} hold a {type(loaded).__name__}, not a state dict of tensors"
        )
    return dict(loaded)


def _unet(card_path: Path, card: ModelCard, weights: Path) -> UNet3D:
    """The card's U-Net with the state dict of ``weights``, checked against the card."""
    try:
        config = UNetConfig.from_dict(card.architecture)
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelLoadError(f"{card_path}: architecture is not a UNet3D configuration: {exc}") from None
    if config.in_channels != len(card.inputs) or config.n_classes != len(card.labels):
        raise ModelLoadError(
            f"{card_path}: architecture has {config.in_channels} input channels and {config.n_classes} "
            f"classes, but the card names {len(card.inputs)} inputs and {len(card.labels)} labels"
        )
    state = _state_dict(card_path, weights)
    model = UNet3D(config)
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    missing, unexpected = set(expected) - set(state), set(state) - set(expected)
    resized = {n for n in set(expected) & set(state) if tuple(state[n].shape) != expected[n]}
    if missing or unexpected or resized:
        problems = [
            f"{label}: {_names(keys)}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("other shape", resized))
            if keys
        ]
        raise ModelLoadError(
            f"{card_path}: weights {weights} do not fit the card's architecture {card.architecture} "
            f"({'; '.join(problems)})"
        )
    model.load_state_dict(state)
    return model


def check_model(card_path: str | Path, card: ModelCard, model: torch.nn.Module, device: torch.device) -> None:
    """Run ``model`` once on a patch of zeros and check that it gives one score map per card label.

    Raises
    ------
    ModelLoadError
        When the model fails on a (1, inputs, *patch_size) batch or returns another shape.
    """
    batch = (1, len(card.inputs), *card.patch_size)
    wanted = (1, len(card.labels), *card.patch_size)
    try:
        with torch.inference_mode():
            output = model(torch.zeros(batch, device=device))
    except Exception as exc:  # any failure of a foreign network on a well-formed batch is the card's
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
        raise ModelLoadError(
            f"{card_path}: the model fails on a batch of shape {batch} (card inputs × patch_size): "
            f"{type(exc).__name__}: {first}"
        ) from None
    if not isinstance(output, torch.Tensor) or tuple(output.shape) != wanted:
        got = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise ModelLoadError(
            f"{card_path}: the model maps a batch of shape {batch} to {got}, but the card's "
            f"{len(card.labels)} labels need {wanted}"
        )


def load_model(
    card_path: str | Path, device: torch.device | str = "cpu"
) -> tuple[ModelCard, torch.nn.Module]:
    """A model card and its network, ready for inference (eval mode, on ``device``), without caching.

    Parameters
    ----------
    card_path : path-like
        The card (``.json`` or ``.toml``); its ``weights`` file lies relative to the card's folder.
    device : torch device or str
        Where to put the network.

    Returns
    -------
    card : ModelCard
    model : torch.nn.Module
        A TorchScript module, or a :class:`UNet3D` with the state dict's weights. It has been run once
        on a patch of zeros (:func:`check_model`).

    Raises
    ------
    ModelLoadError
        When the card or its weights file is missing, the weights cannot be read, do not fit the
        architecture or the network does not fit the card; the message starts with the card file.
    ModelCardError
        When the card itself is invalid.
    """
    card_path = Path(card_path)
    device = torch.device(device)
    card = read_card(card_path)
    weights = weights_path(card_path, card)
    if not weights.is_file():
        raise ModelLoadError(f"{card_path}: weights file {weights} does not exist")
    if card.format == "torchscript":
        try:
            model: torch.nn.Module = torch.jit.load(str(weights), map_location=device)
        except Exception as exc:  # RuntimeError for a zip that is not a TorchScript archive, and others
            raise ModelLoadError(
                f"{card_path}: weights {weights} are not a TorchScript module ({type(exc).__name__}: "
                f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}); is the card's format "
                "'state_dict'?"
            ) from None
    else:
        model = _unet(card_path, card, weights).to(device)
    model.eval()
    divisor = getattr(model, "size_divisor", 1)
    if isinstance(divisor, int) and any(size % divisor for size in card.patch_size):
        raise ModelLoadError(
            f"{card_path}: patch_size {list(card.patch_size)} must be multiples of the network's size "
            f"divisor {divisor}"
        )
    check_model(card_path, card, model, device)
    return card, model


def cached_model(card_path: str | Path, device: torch.device | str = "cpu") -> LoadedModel:
    """The model of ``card_path`` on ``device``, loaded once per process (see the module docstring).

    Raises
    ------
    ModelLoadError, ModelCardError
        As :func:`load_model`.
    """
    path = Path(card_path).resolve()
    device = torch.device(device)
    card = read_card(path)
    weights = weights_path(path, card)
    if not weights.is_file():
        raise ModelLoadError(f"{path}: weights file {weights} does not exist")
    key = (str(path), path.stat().st_mtime_ns, weights.stat().st_mtime_ns, str(device))
    with _CACHE_LOCK:
        if key not in _CACHE:
            card, model = load_model(path, device)
            # An edited card or weights file replaces its model: the old one would never be asked for again.
            for old in [k for k in _CACHE if k[0] == key[0] and k[3] == key[3]]:
                del _CACHE[old]
            while len(_CACHE) >= MAX_CACHED_MODELS:
                del _CACHE[next(iter(_CACHE))]
            _CACHE[key] = LoadedModel(card, model, device, weights_sha256(weights))
        _CACHE[key] = _CACHE.pop(key)  # most recently used last: a cascade's first model is not dropped
        return _CACHE[key]


def clear_model_cache() -> None:
    """Forget every model :func:`cached_model` holds (they are freed once nothing else refers to them)."""
    with _CACHE_LOCK:
        _CACHE.clear()


def segment_volume(
    arrays: Mapping[str, np.ndarray],
    affine: Any,
    card: ModelCard,
    model: torch.nn.Module,
    device: torch.device | str = "cpu",
    batch_size: int = 4,
    overlap: float = 0.5,
) -> np.ndarray:
    """The label volume of one participant.

    Parameters
    ----------
    arrays : mapping of str to ndarray, each shape (Z, Y, X)
        Volumes by card input name (e.g. from :func:`cohortscale.models.preprocess.read_fused`), in their
        own units (signal units; fat fraction 0–1, NaN outside the body).
    affine : array-like, shape (4, 4)
        Their grid's affine (voxel (x, y, z) → LPS mm); gives the voxel spacing.
    card : ModelCard
        Inputs, normalisation, spacing, patch size and labels of the model.
    model : torch.nn.Module
        From :func:`load_model`, on ``device``.
    device : torch device or str
        Where the input is prepared and the network runs.
    batch_size : int
        Patches per network call.
    overlap : float
        Least share of a patch that its neighbour along each axis also covers, 0–1.

    Returns
    -------
    ndarray, shape (Z, Y, X)
        Card label ids on the grid of ``arrays`` (uint8 unless an id exceeds 255), on the host.
    """
    image, geometry = prepare_input(arrays, affine, card, device=torch.device(device))
    return predict_labels(image, geometry, card, model, batch_size=batch_size, overlap=overlap)


def predict_labels(
    image: torch.Tensor,
    geometry: PreparedGeometry,
    card: ModelCard,
    model: torch.nn.Module,
    *,
    batch_size: int = 4,
    overlap: float = 0.5,
    accumulate_on: torch.device | str | None = None,
) -> np.ndarray:
    """Card label ids on the original grid of an input prepared by ``prepare_input``: sliding windows
    over ``image`` (on the model's device), class scores restored to the grid, best class per voxel."""
    scores = sliding_window_inference(
        image, model, card.patch_size, overlap=overlap, batch_size=batch_size, accumulate_on=accumulate_on
    )
    return restore(scores, geometry)
