"""The model card: what a segmentation model needs to be run correctly, shipped as a file beside its weights.

A card names the model's input contrasts and how each is normalised, the voxel spacing and patch size it
was trained at, its label ids and names, its architecture (for state-dict weights) and its weights file,
with free-form training provenance. It is read from JSON or TOML and written as JSON::

    {
      "card_version": 1,
      "name": "body-unet", "version": "0.1.0",
      "inputs": ["water", "fat"],
      "normalisation": [{"window": [0.0, 1000.0]}, {"zscore": true}],
      "spacing_mm": [3.0, 2.2, 2.2],
      "patch_size": [32, 128, 128],
      "labels": {"0": "background", "1": "subcutaneous_fat", "4": "liver"},
      "architecture": {"channels": [16, 32, 64]},
      "weights": "body-unet.pt", "format": "state_dict",
      "training": {"seed": 0, "epochs": 50},
      "cascade": ["spine-unet.json"]
    }

A *cascade* refines a model's labels with further models, each run at its own (finer) spacing inside a
region of interest: the box around the voxels already given one label, grown by a margin. The first
model's card lists the refining cards (``cascade``, files beside it); each of those says where it runs
(``roi``: ``{"around": "vertebral_body", "margin_mm": [30, 24, 24]}``) and owns its labels inside that
box (:mod:`cohortscale.models.cascade`). So a coarse whole-body model can find the spine and a fine spine
model segment it, at a fraction of the cost of running the fine model everywhere.

Reading is strict, as in :mod:`cohortscale.config`: an unknown key, a wrong type or an inconsistent value
raises :class:`ModelCardError` naming the file and the field.
"""

from __future__ import annotations

import json
import math
import numbers
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np

#: Contrasts a model may take as input channels (the fused Dixon volumes and the fat fraction, 0–1).
INPUT_CHANNELS = ("water", "fat", "in_phase", "opposed_phase", "fat_fraction")

#: How the weights file is stored: a TorchScript module, or a state dict for ``architecture``.
WEIGHT_FORMATS = ("torchscript", "state_dict")

#: Suffixes accepted for the weights file.
WEIGHT_SUFFIXES = (".pt", ".pth")

#: The card format this module reads and writes.
CARD_VERSION = 1

#: Name that label id 0 must carry.
BACKGROUND = "background"

#: Card file formats :meth:`ModelCard.load` reads, by suffix.
CARD_SUFFIXES = (".json", ".toml")


class ModelCardError(ValueError):
    """A model card is invalid; the message names the file (when read from one) and the field."""


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _sequence(value: Any, name: str) -> tuple[Any, ...]:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise ModelCardError(f"{name}: expected a list, got {value!r}")
    return tuple(value)


def _triple(value: Any, name: str, kind: type) -> tuple[Any, Any, Any]:
    """Three positive numbers (``kind`` float or int), e.g. a spacing or a patch size in (z, y, x)."""
    items = _sequence(value, name)
    check = _is_int if kind is int else _is_real
    if len(items) != 3 or not all(check(v) and math.isfinite(v) and v > 0 for v in items):
        what = "integers" if kind is int else "numbers"
        raise ModelCardError(f"{name}: expected three positive {what} (z, y, x), got {list(items)!r}")
    return tuple(kind(v) for v in items)  # type: ignore[return-value]


def _relative_file(value: Any, name: str, expected: str, suffixes: Sequence[str]) -> None:
    """Check a file name of the card: a non-empty string, relative to the card's folder, with a suffix of
    ``suffixes``; ``expected`` says what was wanted (e.g. "a file name")."""
    if not isinstance(value, str) or not value.strip():
        raise ModelCardError(f"{name}: expected {expected}, got {value!r}")
    if PurePosixPath(value).is_absolute() or PureWindowsPath(value).is_absolute():
        raise ModelCardError(f"{name}: {value!r} must be relative to the card's folder")
    if PurePosixPath(value).suffix.lower() not in suffixes:
        raise ModelCardError(f"{name}: {value!r} should end in one of {list(suffixes)}")


def _json_dict(value: Any, name: str) -> dict[str, Any]:
    """A JSON-ready copy of a free-form table (tuples become lists), so a card equals its round trip."""
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise ModelCardError(f"{name}: expected a table with string keys, got {value!r}")
    try:
        return json.loads(json.dumps(dict(value), allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ModelCardError(f"{name}: not representable in JSON ({exc})") from None


def _label_id(key: Any) -> int:
    if _is_int(key) and key >= 0:
        return int(key)
    if isinstance(key, str) and re.fullmatch(r"\d+", key.strip()):
        return int(key)
    raise ModelCardError(f"labels: id {key!r} is not a non-negative integer")


def _version_error(version: Any) -> ModelCardError:
    return ModelCardError(
        f"card_version: {version!r} is not a version this cohortscale reads ({CARD_VERSION})"
    )


def _check_keys(values: Mapping[str, Any], cls: type, required: set[str]) -> None:
    """Typo protection: every key must be a field of ``cls``, and the ``required`` ones present."""
    known = [f.name for f in fields(cls)]
    unknown = sorted(set(values) - set(known), key=str)
    if unknown:
        raise ModelCardError(f"unknown key(s) {unknown}; known keys: {known}")
    missing = sorted(required - set(values))
    if missing:
        raise ModelCardError(f"missing required key(s) {missing}")


@dataclass(frozen=True)
class Normalisation:
    """Intensity normalisation of one input channel: a fixed window, or a z-score over the channel.

    Exactly one mode is set.

    Attributes
    ----------
    window : tuple of float (lo, hi) or None
        Clip to [lo, hi], in the channel's units (signal units; 0–1 for ``fat_fraction``), then map
        linearly to [0, 1]. Requires lo < hi.
    zscore : bool
        Subtract the channel's mean and divide by its standard deviation, both over the whole channel
        volume being normalised.
    """

    window: tuple[float, float] | None = None
    zscore: bool = False

    def __post_init__(self) -> None:
        if self.window is not None:
            lo_hi = _sequence(self.window, "window")
            if len(lo_hi) != 2 or not all(_is_real(v) and math.isfinite(v) for v in lo_hi):
                raise ModelCardError(f"window: expected two finite numbers [lo, hi], got {self.window!r}")
            if not lo_hi[0] < lo_hi[1]:
                raise ModelCardError(f"window: lo must be below hi, got {list(lo_hi)!r}")
            object.__setattr__(self, "window", (float(lo_hi[0]), float(lo_hi[1])))
        if not isinstance(self.zscore, bool | np.bool_):
            raise ModelCardError(f"zscore: expected true or false, got {self.zscore!r}")
        object.__setattr__(self, "zscore", bool(self.zscore))
        if (self.window is None) == (not self.zscore):
            raise ModelCardError("set exactly one of window and zscore")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Normalisation:
        """From a card's table, e.g. ``{"window": [0, 1000]}`` or ``{"zscore": true}``."""
        if not isinstance(values, Mapping):
            raise ModelCardError(f'expected a table such as {{"zscore": true}}, got {values!r}')
        _check_keys(values, cls, set())
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """The card's table of this normalisation: only the mode in use."""
        return {"window": list(self.window)} if self.window is not None else {"zscore": True}


@dataclass(frozen=True)
class RegionOfInterest:
    """Where a cascade model runs: the box around the voxels the models before it labelled ``around``.

    Attributes
    ----------
    around : str
        Label name (of the models before it in the cascade) whose voxels' bounding box is the region.
    margin_mm : tuple of float
        How far the box is grown on every side, (z, y, x), mm, ≥ 0: it must cover what the earlier models
        missed of the structure, and give the network its surroundings.
    max_spacing_mm : tuple of float or None
        The coarsest grid (z, y, x), mm, the model refines; on a grid coarser along any axis it is skipped
        and the labels so far kept: such data do not hold the detail the model was trained to see, and
        upsampled to its spacing they are unlike anything it was trained on. None: any grid.
    """

    around: str
    margin_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    max_spacing_mm: tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.around, str) or not self.around.strip():
            raise ModelCardError(f"around: expected a label name, got {self.around!r}")
        margin = _sequence(self.margin_mm, "margin_mm")
        if len(margin) != 3 or not all(_is_real(v) and math.isfinite(v) and v >= 0 for v in margin):
            raise ModelCardError(f"margin_mm: expected three numbers ≥ 0 (z, y, x), got {list(margin)!r}")
        object.__setattr__(self, "margin_mm", tuple(float(v) for v in margin))
        if self.max_spacing_mm is not None:
            object.__setattr__(self, "max_spacing_mm", _triple(self.max_spacing_mm, "max_spacing_mm", float))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> RegionOfInterest:
        """From a card's table, e.g. ``{"around": "vertebral_body", "margin_mm": [30, 24, 24]}``."""
        if not isinstance(values, Mapping):
            raise ModelCardError(f'expected a table such as {{"around": "liver"}}, got {values!r}')
        _check_keys(values, cls, {"around"})
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """The card's table of this region."""
        out: dict[str, Any] = {"around": self.around, "margin_mm": list(self.margin_mm)}
        if self.max_spacing_mm is not None:
            out["max_spacing_mm"] = list(self.max_spacing_mm)
        return out

    def covers(self, spacing_mm: Sequence[float]) -> bool:
        """Whether a grid of this spacing (z, y, x), mm, is fine enough for the model (``max_spacing_mm``)."""
        if self.max_spacing_mm is None:
            return True
        return all(float(s) <= m * (1 + 1e-6) for s, m in zip(spacing_mm, self.max_spacing_mm, strict=True))


@dataclass(frozen=True, kw_only=True)
class ModelCard:
    """Everything needed to run a segmentation model on cohort volumes. Keyword arguments only.

    Sequences may be given as lists and label ids as digit strings; they are stored as tuples and ints.
    Every field is validated on construction (:class:`ModelCardError`, naming the field).

    Attributes
    ----------
    name : str
        Model name.
    version : str
        Model version (free text, e.g. ``"0.1.0"``).
    inputs : tuple of str
        Input channels in order, each one of :data:`INPUT_CHANNELS`, without repeats.
    normalisation : tuple of Normalisation
        One per input channel, in the same order (tables are accepted and converted).
    spacing_mm : tuple of float
        Voxel spacing the model expects, (z, y, x), mm; volumes are resampled to it before inference.
    patch_size : tuple of int
        Patch shape the model was trained on, (z, y, x), voxels.
    labels : dict of int to str
        Output class id → name, sorted by id. Id 0 is ``"background"``; ids are non-negative and names
        unique. The synthetic cohort's classes are :data:`cohortscale.synth.labels.LABEL_NAMES`.
    weights : str
        File name of the weights, relative to the card's folder (``.pt`` or ``.pth``).
    format : str
        ``"torchscript"`` (a scripted module; ``architecture`` may be empty) or ``"state_dict"`` (weights
        for the network that ``architecture`` describes; it must not be empty).
    architecture : dict
        Free-form JSON table describing the network, e.g. a UNet config.
    description : str or None
        Free text.
    training : dict
        Free-form JSON provenance: data, seed, epochs, command…
    roi : RegionOfInterest or None
        For a model of a cascade: the region it runs in (tables are accepted and converted); None for a
        model that runs on the whole volume.
    cascade : tuple of str
        Cards (``.json`` or ``.toml`` files relative to this card's folder) of the models that refine this
        one's labels, run in order; each has a ``roi``. Only a model without ``roi`` has a cascade.
    card_version : int
        Card format version; only :data:`CARD_VERSION` is read.
    """

    name: str
    version: str
    inputs: tuple[str, ...]
    normalisation: tuple[Normalisation, ...]
    spacing_mm: tuple[float, float, float]
    patch_size: tuple[int, int, int]
    labels: dict[int, str] = field(hash=False)
    architecture: dict[str, Any] = field(default_factory=dict, hash=False)
    weights: str
    format: str
    description: str | None = None
    training: dict[str, Any] = field(default_factory=dict, hash=False)
    roi: RegionOfInterest | None = None
    cascade: tuple[str, ...] = ()
    card_version: int = CARD_VERSION

    def __post_init__(self) -> None:
        def store(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        if not _is_int(self.card_version) or self.card_version != CARD_VERSION:
            raise _version_error(self.card_version)
        for name in ("name", "version"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ModelCardError(f"{name}: expected a non-empty string, got {value!r}")
        if self.description is not None and not isinstance(self.description, str):
            raise ModelCardError(f"description: expected a string, got {self.description!r}")

        inputs = _sequence(self.inputs, "inputs")
        if not inputs:
            raise ModelCardError("inputs: at least one input channel is needed")
        for item in inputs:
            if item not in INPUT_CHANNELS:
                raise ModelCardError(f"inputs: {item!r} is not one of {list(INPUT_CHANNELS)}")
        if len(set(inputs)) != len(inputs):
            raise ModelCardError(f"inputs: a channel is repeated in {list(inputs)}")
        store("inputs", inputs)

        normalisation = []
        for i, item in enumerate(_sequence(self.normalisation, "normalisation")):
            try:
                normalisation.append(
                    item if isinstance(item, Normalisation) else Normalisation.from_dict(item)
                )
            except ModelCardError as exc:
                raise ModelCardError(f"normalisation[{i}]: {exc}") from None
        if len(normalisation) != len(inputs):
            raise ModelCardError(
                f"normalisation: {len(normalisation)} entries for {len(inputs)} inputs {list(inputs)}; "
                "give one per input"
            )
        store("normalisation", tuple(normalisation))

        store("spacing_mm", _triple(self.spacing_mm, "spacing_mm", float))
        store("patch_size", _triple(self.patch_size, "patch_size", int))
        store("labels", self._checked_labels())

        if not isinstance(self.format, str) or self.format not in WEIGHT_FORMATS:
            raise ModelCardError(f"format: {self.format!r} is not one of {list(WEIGHT_FORMATS)}")
        store("architecture", _json_dict(self.architecture, "architecture"))
        if self.format == "state_dict" and not self.architecture:
            raise ModelCardError("architecture: a state_dict model needs the architecture its weights fit")
        store("training", _json_dict(self.training, "training"))
        self._check_weights()
        if self.roi is not None and not isinstance(self.roi, RegionOfInterest):
            try:
                store("roi", RegionOfInterest.from_dict(self.roi))
            except ModelCardError as exc:
                raise ModelCardError(f"roi: {exc}") from None
        store("cascade", self._checked_cascade())

    def _checked_cascade(self) -> tuple[str, ...]:
        cascade = _sequence(self.cascade, "cascade")
        for item in cascade:
            _relative_file(item, "cascade", "card file names", CARD_SUFFIXES)
        if len({PurePosixPath(item.replace("\\", "/")) for item in cascade}) != len(cascade):
            raise ModelCardError(f"cascade: a card is repeated in {list(cascade)}")
        if cascade and self.roi is not None:
            raise ModelCardError("cascade: a model that runs inside a region (roi) cannot have a cascade")
        return tuple(cascade)

    def _checked_labels(self) -> dict[int, str]:
        if not isinstance(self.labels, Mapping):
            raise ModelCardError(f"labels: expected a table of id = name, got {self.labels!r}")
        labels: dict[int, str] = {}
        for key, label in self.labels.items():
            label_id = _label_id(key)
            if label_id in labels:
                raise ModelCardError(f"labels: id {label_id} appears twice")
            if not isinstance(label, str) or not label.strip():
                raise ModelCardError(
                    f"labels: name of id {label_id} must be a non-empty string, got {label!r}"
                )
            labels[label_id] = label
        if labels.get(0) != BACKGROUND:
            raise ModelCardError(f"labels: id 0 must be {BACKGROUND!r}, got {labels.get(0)!r}")
        if len(labels) < 2:
            raise ModelCardError("labels: background and at least one class are needed")
        names = list(labels.values())
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ModelCardError(f"labels: name(s) {repeated} given to more than one id")
        return dict(sorted(labels.items()))

    def _check_weights(self) -> None:
        _relative_file(self.weights, "weights", "a file name", WEIGHT_SUFFIXES)

    def runs_on(self, spacing_mm: Sequence[float]) -> bool:
        """Whether the model runs on a grid of this spacing (z, y, x), mm: a model of a cascade is skipped
        on grids coarser than its ``roi.max_spacing_mm``; any other runs everywhere."""
        return self.roi is None or self.roi.covers(spacing_mm)

    @property
    def label_ids(self) -> tuple[int, ...]:
        """The label ids, ascending."""
        return tuple(self.labels)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ModelCard:
        """A card from a parsed JSON or TOML document (label keys may be strings).

        Raises
        ------
        ModelCardError
            On an unknown or missing key, or any invalid field (the message names the field).
        """
        if not isinstance(values, Mapping):
            raise ModelCardError(f"expected a table of card fields, got {type(values).__name__}")
        version = values.get("card_version", CARD_VERSION)
        if version != CARD_VERSION:  # before the key check: a newer card may have new keys
            raise _version_error(version)
        required = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}
        _check_keys(values, cls, required)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of the card: tuples as lists, label ids as strings, no None ``description``."""
        out: dict[str, Any] = {
            "card_version": self.card_version,
            "name": self.name,
            "version": self.version,
        }
        if self.description is not None:
            out["description"] = self.description
        out |= {
            "inputs": list(self.inputs),
            "normalisation": [n.to_dict() for n in self.normalisation],
            "spacing_mm": list(self.spacing_mm),
            "patch_size": list(self.patch_size),
            "labels": {str(k): v for k, v in self.labels.items()},
            "architecture": self.architecture,
            "weights": self.weights,
            "format": self.format,
            "training": self.training,
        }
        # Only when set, so that the card of a plain model is as before.
        if self.roi is not None:
            out["roi"] = self.roi.to_dict()
        if self.cascade:
            out["cascade"] = list(self.cascade)
        return out

    def to_json(self, path: str | Path) -> Path:
        """Write the card as JSON (UTF-8, indented) and return its path."""
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> ModelCard:
        """Read a card from a ``.json`` or ``.toml`` file.

        In TOML, labels are a table with integer-looking keys (``[labels]`` then ``0 = "background"``) and
        normalisations an array of tables (``[[normalisation]]`` then ``window = [0.0, 1000.0]``).

        Raises
        ------
        ModelCardError
            When the file is not valid JSON/TOML or the card is invalid; the message starts with the file
            and names the field, e.g. ``model.json: inputs: 'fatfrac' is not one of [...]``.
        FileNotFoundError
            When the file does not exist.
        """
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix not in CARD_SUFFIXES:
            raise ModelCardError(f"{path}: a model card must be one of {list(CARD_SUFFIXES)} files")
        text = path.read_text(encoding="utf-8")
        try:
            if suffix == ".json":
                try:
                    values = json.loads(text, object_pairs_hook=_unique_keys)
                except json.JSONDecodeError as exc:
                    raise ModelCardError(f"not valid JSON ({exc})") from None
            else:
                try:
                    values = tomllib.loads(text)
                except tomllib.TOMLDecodeError as exc:
                    raise ModelCardError(f"not valid TOML ({exc})") from None
            return cls.from_dict(values)
        except ModelCardError as exc:
            raise ModelCardError(f"{path}: {exc}") from None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """JSON object hook that rejects repeated keys (``json`` would keep the last silently)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ModelCardError(f"key {key!r} appears twice in one object")
        out[key] = value
    return out


def weights_path(card_path: str | Path, card: ModelCard) -> Path:
    """The weights file of ``card``, which lies relative to the folder of the card file ``card_path``.

    The path is not checked for existence: loading it reports a missing file.
    """
    return Path(card_path).parent / card.weights


def cascade_paths(card_path: str | Path, card: ModelCard) -> tuple[Path, ...]:
    """The card files of ``card``'s cascade, relative to the folder of ``card_path`` (not checked)."""
    return tuple(Path(card_path).parent / item for item in card.cascade)


def normalise(image: np.ndarray, card: ModelCard) -> np.ndarray:
    """Normalise each input channel as the card says, for the model.

    Parameters
    ----------
    image : ndarray, shape (C, Z, Y, X)
        Input volumes stacked in the order of ``card.inputs`` (any trailing shape is accepted), in their
        own units (signal units; fat fraction 0–1).
    card : ModelCard
        Its ``normalisation`` gives each channel's mode.

    Returns
    -------
    ndarray, float32, same shape
        Window channels clipped to [lo, hi] and mapped to [0, 1]; z-score channels as ``(x − mean) / std``
        over the channel (all zeros where std is 0). NaN voxels (e.g. a fat fraction where there is no
        signal) become 0 and do not enter the z-score statistics; ±inf clip to the window's ends.

    Raises
    ------
    ValueError
        When the number of channels differs from ``len(card.inputs)``.
    """
    image = np.asarray(image)
    if image.ndim < 1 or image.shape[0] != len(card.inputs):
        raise ValueError(
            f"image of shape {image.shape} must have {len(card.inputs)} channels first ({list(card.inputs)})"
        )
    out = np.empty(image.shape, dtype=np.float32)
    for channel, mode, target in zip(image, card.normalisation, out, strict=True):
        target[...] = channel
        if mode.window is not None:
            lo, hi = mode.window
            np.clip(target, lo, hi, out=target)
            target -= lo
            target /= hi - lo
            np.nan_to_num(target, copy=False, nan=0.0)
        else:
            finite = np.isfinite(target)
            values = target if finite.all() else target[finite]
            mean = values.mean(dtype=np.float64) if values.size else 0.0
            std = values.std(dtype=np.float64) if values.size else 0.0
            if std > 0:
                target -= mean
                target /= std
                target[~finite] = 0.0
            else:
                target[...] = 0.0
    return out
