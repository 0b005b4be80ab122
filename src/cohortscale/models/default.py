"""The default models for the synthetic cohort: their label schemes, their cards, and how they are trained.

Two models ship with the package and run as one cascade (:mod:`cohortscale.models.cascade`): the body
model on the whole volume at a coarse spacing, and the spine model (:data:`SPINE_CLASSES`, at
:data:`SPINE_SPACING_MM`) inside the box around the body model's vertebral bodies, where discs a few
millimetres thick must separate the bodies for their levels to be counted. Each is trained by
:func:`train_default_model` with its preset (:func:`training_preset`, ``cohortscale train --scheme``).

The scheme (:data:`DEFAULT_CLASSES`) merges the synthetic anatomy's 53 labels
(:data:`cohortscale.synth.labels.LABELS`) into the 13 classes the body-composition and thigh-muscle IDPs
need. A class's label id in the model card is the synthetic id of its single source label, so that card
labels and truth labels agree wherever they can; a class merged from several labels takes a dedicated id
that the synthetic anatomy does not use (:data:`MERGED_CLASS_IDS`). The only one is ``vertebral_body``
(:data:`VERTEBRAL_BODY_ID`, 30): a patch-based network can segment "vertebral body" but cannot tell L3
from L4, so it learns all 23 levels as one class, and the levels are named afterwards by counting with
:func:`cohortscale.ops.vertebrae.label_vertebrae` (``labels``, ``VERTEBRAL_BODY_ID``, the grid's spacing
and affine), which turns id 30 back into the synthetic level ids 31–53. The scheme has no pelvis class,
so the S1 anchor is not checked against the sacrum there (the check is skipped when the pelvis id has no
voxels).

:func:`default_card` describes such a model: water, fat and fat fraction in, windowed to fixed ranges
measured on the demo cohort (:data:`WATER_WINDOW`, :data:`FAT_WINDOW`), at :data:`DEFAULT_SPACING_MM`.
:func:`train_default_model` builds the examples of a synthetic cohort
(:func:`cohortscale.models.dataset.training_examples`), splits them by participant, trains a
:class:`UNet3D` (:func:`cohortscale.models.train.train`, resumable) and writes the card, the weights of the
best epoch and the training history into one folder that ``cohortscale segment --card`` reads.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from cohortscale.io.store import ARRAY_NAME
from cohortscale.models.card import ModelCard, Normalisation, RegionOfInterest
from cohortscale.models.loading import predict_labels, torch_device
from cohortscale.models.metrics import overlap_table
from cohortscale.models.train import (
    BEST_CHECKPOINT,
    LAST_CHECKPOINT,
    TrainConfig,
    TrainHistory,
    atomic_save,
    load_checkpoint,
    train,
)
from cohortscale.models.unet import UNet3D, UNetConfig
from cohortscale.ops.vertebrae import VERTEBRAL_BODY_CLASS
from cohortscale.synth.labels import LABEL_NAMES, LABELS, VERTEBRA_IDS

if TYPE_CHECKING:
    from cohortscale.models.dataset import Example

#: Card label id of the merged vertebral-body class: unused by the synthetic anatomy (29 is the scanner
#: table, 31–53 the levels C3–S1), so a label volume never confuses it with a source label.
VERTEBRAL_BODY_ID = 30

#: Output class name → synthetic label ids merged into it, in channel order. Background is everything
#: not named (no ids of its own): other muscle, organs, bone, table and air.
DEFAULT_CLASSES: dict[str, tuple[int, ...]] = {
    "background": (),
    "subcutaneous_fat": (LABELS["subcutaneous_fat"],),
    "visceral_fat": (LABELS["visceral_fat"],),
    "liver": (LABELS["liver"],),
    "femur_left": (LABELS["femur_left"],),
    "femur_right": (LABELS["femur_right"],),
    "thigh_anterior_left": (LABELS["thigh_anterior_left"],),
    "thigh_anterior_right": (LABELS["thigh_anterior_right"],),
    "thigh_posterior_left": (LABELS["thigh_posterior_left"],),
    "thigh_posterior_right": (LABELS["thigh_posterior_right"],),
    "thigh_medial_left": (LABELS["thigh_medial_left"],),
    "thigh_medial_right": (LABELS["thigh_medial_right"],),
    VERTEBRAL_BODY_CLASS: VERTEBRA_IDS,
}

#: The spine model's classes: the vertebral bodies (all levels as one, named by counting as the body
#: model's) and the discs between them, which separate the bodies.
SPINE_CLASSES: dict[str, tuple[int, ...]] = {
    "background": (),
    "intervertebral_disc": (LABELS["intervertebral_disc"],),
    VERTEBRAL_BODY_CLASS: VERTEBRA_IDS,
}

#: Label schemes by the name ``cohortscale train --scheme`` takes.
SCHEMES: dict[str, dict[str, tuple[int, ...]]] = {"body": DEFAULT_CLASSES, "spine": SPINE_CLASSES}

#: Card label ids of the classes merged from several synthetic labels (see the module docstring).
MERGED_CLASS_IDS: dict[str, int] = {VERTEBRAL_BODY_CLASS: VERTEBRAL_BODY_ID}

#: Size of :func:`class_lookup`'s table: every id a uint8 truth volume can hold.
LOOKUP_SIZE = 256

#: Input contrasts of the default model. The fat fraction is the one contrast free of the participant's
#: signal gain and the coil bias (both scale water and fat alike, ±10 % between demo participants), so it
#: separates fat from lean tissue where the windowed water and fat images vary in brightness.
DEFAULT_INPUTS: tuple[str, ...] = ("water", "fat", "fat_fraction")

#: Window of the stored uint16 water signal. The 99.5th percentile inside the body (truth labels but
#: background and scanner table) is 1137 over the 7 fused visits of ``demo/cohort.zarr`` (1043–1265 per
#: visit); 1300 keeps every visit's top below the clip.
WATER_WINDOW = (0.0, 1300.0)
#: Window of the stored uint16 fat signal: body 99.5th percentile 2106 over the demo (1999–2150 per visit).
FAT_WINDOW = (0.0, 2200.0)
#: Window of the fat fraction, already 0–1 (NaN in air becomes 0).
FAT_FRACTION_WINDOW = (0.0, 1.0)
#: Window per input contrast.
INPUT_WINDOWS: dict[str, tuple[float, float]] = {
    "water": WATER_WINDOW,
    "fat": FAT_WINDOW,
    "fat_fraction": FAT_FRACTION_WINDOW,
}

#: Model spacing (z, y, x), mm: the quarter-scale fused grid's (12, 8.93, 8.93) rounded. A fixed default
#: keeps a model's field of view independent of the cohort's scale (a full-scale cohort is downsampled to
#: it; give a finer spacing for a full-resolution model).
DEFAULT_SPACING_MM = (12.0, 9.0, 9.0)
#: Patch (z, y, x), voxels: multiples of 8 (depth 4) covering 40 × 48 of the 44 × 56 quarter-scale
#: cross-section at 9 mm, so each patch sees nearly the whole body across; ~0.7 s per step of 2 on one core.
DEFAULT_PATCH_SIZE = (32, 40, 48)
#: Network depth and top-level width of the default U-Net.
DEFAULT_DEPTH = 4
DEFAULT_BASE_WIDTH = 16
#: Share of the participants held out for validation.
DEFAULT_VALIDATION_FRACTION = 0.2
#: Spine model spacing (z, y, x), mm: the full-scale fused grid's (3, 2.23, 2.23) rounded, on which the
#: thinnest disc (~4 mm) still covers a slice.
SPINE_SPACING_MM = (3.0, 2.25, 2.25)
#: Spine model patch (z, y, x), voxels: 144 mm of the column, and 90 mm across, the region's box (lumbar
#: bodies ~40 mm wide, 18 voxels, in a held-out participant, and the 24 mm margin on each side).
SPINE_PATCH_SIZE = (48, 40, 40)
#: Spine model top-level width: half the body model's. Its three classes need fewer features; at width 16
#: it scored the same on held-out participants (levels 0.929–1.000 against 0.935–1.000) at 4× the
#: parameters and 1.4× the time.
SPINE_BASE_WIDTH = 8
#: The coarsest grid the spine model refines: 1.5 times its spacing (the full-scale cohort's). Coarser
#: grids miss the discs that separate the bodies and reach it only upsampled: on three quarter-scale demo
#: visits a training checkpoint lowered the bodies' Dice from 0.87 to 0.81, at 7–11 s more per visit.
SPINE_MAX_GRID_SPACING_MM = tuple(1.5 * s for s in SPINE_SPACING_MM)
#: Where the spine model runs: the box around the body model's vertebral bodies, grown enough to hold
#: what a 12 × 9 × 9 mm model misses (a body or disc at either end, a voxel or two across) and give the
#: network the tissue around the column.
SPINE_ROI = RegionOfInterest(
    around=VERTEBRAL_BODY_CLASS, margin_mm=(36.0, 24.0, 24.0), max_spacing_mm=SPINE_MAX_GRID_SPACING_MM
)
SPINE_NAME = "spine-unet"
#: Name, version and weights file of the default model (its labels go to ``labels/<name>`` in the store).
#: Training names the weights after the model (``<name>.pt``), so that the models of a cascade can share
#: a folder.
DEFAULT_NAME = "body-unet"
DEFAULT_VERSION = "0.1.0"
WEIGHTS_SUFFIX = ".pt"
DEFAULT_WEIGHTS = f"{DEFAULT_NAME}{WEIGHTS_SUFFIX}"
#: Devices :class:`DefaultTrainingConfig` accepts (as the segmentation stage's).
TRAIN_DEVICES = ("auto", "cpu", "gpu")
#: Folder of the training checkpoints inside the model folder, and the file recording the split there.
CHECKPOINT_DIR = "checkpoints"
SPLIT_FILE = "split.json"
#: Training history written beside the card.
HISTORY_FILE = "history.json"
#: Patch overlap of the final validation: the segmentation stage's default, so that the Dice reported is
#: the one ``cohortscale segment`` gets.
EVALUATION_OVERLAP = 0.5
#: Patches per network call in the final validation.
EVALUATION_BATCH_SIZE = 2


def _check_scheme(scheme: Mapping[str, Sequence[int]]) -> None:
    names = list(scheme)
    if not names or names[0] != "background" or tuple(scheme["background"]):
        raise ValueError("a label scheme starts with 'background', which has no synthetic ids of its own")
    seen: dict[int, str] = {}
    for name, ids in scheme.items():
        for label in ids:
            if int(label) not in LABEL_NAMES or int(label) == 0:
                raise ValueError(f"class {name!r}: {label} is not a synthetic foreground label id")
            if int(label) in seen:
                raise ValueError(f"synthetic label {label} is merged into both {seen[label]!r} and {name!r}")
            seen[int(label)] = name
        if name != "background" and not ids:
            raise ValueError(f"class {name!r} has no synthetic label ids")


def scheme_labels(scheme: Mapping[str, Sequence[int]] = DEFAULT_CLASSES) -> dict[int, str]:
    """Card label id → class name of a label scheme.

    Parameters
    ----------
    scheme : mapping of str to sequence of int
        Class name → synthetic label ids merged into it (e.g. :data:`DEFAULT_CLASSES`); the first class is
        ``"background"`` with no ids.

    Returns
    -------
    dict of int to str
        Ascending ids: 0 for background, the synthetic id for a class of one source label, and
        :data:`MERGED_CLASS_IDS` for a class of several.

    Raises
    ------
    ValueError
        For a malformed scheme, a merged class without a dedicated id, a dedicated id that the synthetic
        anatomy uses, or two classes with one id.
    """
    _check_scheme(scheme)
    labels: dict[int, str] = {}
    for name, ids in scheme.items():
        if name == "background":
            label_id = 0
        elif len(ids) == 1:
            label_id = int(ids[0])
        elif name in MERGED_CLASS_IDS:
            label_id = MERGED_CLASS_IDS[name]
            if label_id in LABEL_NAMES:
                raise ValueError(
                    f"class {name!r}: id {label_id} is a synthetic label ({LABEL_NAMES[label_id]})"
                )
        else:
            raise ValueError(f"class {name!r} merges {len(ids)} labels but has no id in MERGED_CLASS_IDS")
        if label_id in labels:
            raise ValueError(f"classes {labels[label_id]!r} and {name!r} both get id {label_id}")
        labels[label_id] = name
    return dict(sorted(labels.items()))


def class_lookup(scheme: Mapping[str, Sequence[int]] = DEFAULT_CLASSES) -> np.ndarray:
    """Synthetic label id → card label id of a label scheme.

    Returns
    -------
    ndarray, uint8, shape (:data:`LOOKUP_SIZE`,)
        ``table[truth]`` maps a uint8 truth volume to card ids (:func:`scheme_labels`); ids no class names
        map to 0 (background).
    """
    labels = {name: label_id for label_id, name in scheme_labels(scheme).items()}
    table = np.zeros(LOOKUP_SIZE, dtype=np.uint8)
    for name, ids in scheme.items():
        table[np.asarray(ids, dtype=np.int64)] = labels[name]
    return table


def default_card(
    spacing_mm: Sequence[float],
    patch_size: Sequence[int],
    architecture: UNetConfig | Mapping[str, Any],
    weights: str = DEFAULT_WEIGHTS,
    version: str = DEFAULT_VERSION,
    *,
    name: str = DEFAULT_NAME,
    scheme: Mapping[str, Sequence[int]] = DEFAULT_CLASSES,
    training: Mapping[str, Any] | None = None,
    roi: RegionOfInterest | None = None,
    cascade: Sequence[str] = (),
    labels: Mapping[int, str] | None = None,
) -> ModelCard:
    """The card of a default model: :data:`DEFAULT_INPUTS` windowed by :data:`INPUT_WINDOWS`.

    Parameters
    ----------
    spacing_mm : sequence of float
        Model spacing (z, y, x), mm.
    patch_size : sequence of int
        Patch (z, y, x), voxels.
    architecture : UNetConfig or mapping
        The network; a :class:`UNetConfig` must take one channel per input and give one per label.
    weights : str
        State-dict file beside the card.
    version, name : str
        Model version and name.
    scheme : mapping
        Label scheme (:func:`scheme_labels` gives the card's labels).
    training : mapping, optional
        Provenance for the card's ``training`` table.
    roi : RegionOfInterest, optional
        Where the model runs, for a model of a cascade (the spine model).
    cascade : sequence of str
        Cards of the models that refine this one's labels (the body model's: the spine model's card).
    labels : mapping of int to str, optional
        The card's labels, instead of the scheme's (a model trained on a user's label set).

    Returns
    -------
    ModelCard
        Format ``"state_dict"``.
    """
    labels = dict(labels) if labels is not None else scheme_labels(scheme)
    if isinstance(architecture, UNetConfig):
        if (architecture.in_channels, architecture.n_classes) != (len(DEFAULT_INPUTS), len(labels)):
            raise ValueError(
                f"the network takes {architecture.in_channels} channels to {architecture.n_classes} classes; "
                f"the card has {len(DEFAULT_INPUTS)} inputs {list(DEFAULT_INPUTS)} and {len(labels)} labels"
            )
        architecture = architecture.to_dict()
    classes = ", ".join(name for name in labels.values() if name != "background")
    return ModelCard(
        name=name,
        version=version,
        description=(
            f"3-D U-Net for the synthetic UK Biobank-like cohort: {classes} (vertebral bodies as one class, "
            f"id {VERTEBRAL_BODY_ID}; name the levels with cohortscale.ops.vertebrae.label_vertebrae)"
        ),
        inputs=DEFAULT_INPUTS,
        normalisation=tuple(Normalisation(window=INPUT_WINDOWS[channel]) for channel in DEFAULT_INPUTS),
        spacing_mm=tuple(spacing_mm),
        patch_size=tuple(patch_size),
        labels=labels,
        architecture=dict(architecture),
        weights=weights,
        format="state_dict",
        training=dict(training or {}),
        roi=roi,
        cascade=tuple(cascade),
    )


def _default_network(scheme: str = "body") -> UNetConfig:
    return UNetConfig(
        in_channels=len(DEFAULT_INPUTS),
        n_classes=len(SCHEMES[scheme]),
        depth=DEFAULT_DEPTH,
        base_width=SPINE_BASE_WIDTH if scheme == "spine" else DEFAULT_BASE_WIDTH,
    )


@dataclass(frozen=True)
class DefaultTrainingConfig:
    """Settings of :func:`train_default_model` (``cohortscale train``: options, ``--config``, ``--set``).

    The defaults are the body model's; :func:`training_preset` gives the spine model's.

    Attributes
    ----------
    scheme : {"body", "spine"}
        Label scheme (:data:`SCHEMES`). The spine model is trained on the box around the truth's vertebral
        bodies (:data:`SPINE_ROI`), where the cascade runs it.
    name, version : str
        Model name (also its store array ``labels/<name>`` and card file ``<name>.json``) and version.
    spacing_mm : tuple of float
        Model spacing (z, y, x), mm.
    validation_fraction : float
        Share of the participants (all their visits) held out for validation, in (0, 1).
    device : {"auto", "cpu", "gpu"}
        Where to train: CUDA when torch sees a GPU ("auto"), or forced.
    train : TrainConfig
        Recipe: patch size, batch, epochs, steps, optimiser, seed (also the split's).
    model : UNetConfig
        Network; ``in_channels`` and ``n_classes`` are fixed by the inputs and the label scheme.
    """

    scheme: str = "body"
    name: str = DEFAULT_NAME
    version: str = DEFAULT_VERSION
    spacing_mm: tuple[float, float, float] = DEFAULT_SPACING_MM
    validation_fraction: float = DEFAULT_VALIDATION_FRACTION
    device: str = "auto"
    train: TrainConfig = field(default_factory=lambda: TrainConfig(patch_size=DEFAULT_PATCH_SIZE))
    model: UNetConfig = field(default_factory=_default_network)

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise ValueError(f"scheme must be one of {list(SCHEMES)}, got {self.scheme!r}")
        if not 0.0 < self.validation_fraction < 1.0:
            raise ValueError(f"validation_fraction must be in (0, 1), got {self.validation_fraction}")
        if self.device not in TRAIN_DEVICES:
            raise ValueError(f"device must be one of {TRAIN_DEVICES}, got {self.device!r}")
        if len(self.spacing_mm) != 3 or not all(math.isfinite(s) and s > 0 for s in self.spacing_mm):
            raise ValueError(f"spacing_mm must be three positive numbers (z, y, x), got {self.spacing_mm!r}")
        wanted = (len(DEFAULT_INPUTS), len(SCHEMES[self.scheme]))
        if (self.model.in_channels, self.model.n_classes) != wanted:
            raise ValueError(
                f"model.in_channels and model.n_classes are fixed by the inputs and the label scheme at "
                f"{wanted}, got ({self.model.in_channels}, {self.model.n_classes})"
            )
        divisor = self.model.size_divisor
        if any(size % divisor for size in self.train.patch_size):
            raise ValueError(
                f"train.patch_size {list(self.train.patch_size)} must be multiples of {divisor} for a "
                f"depth-{self.model.depth} network"
            )

    @property
    def roi(self) -> RegionOfInterest | None:
        """Where the model runs: :data:`SPINE_ROI` for the spine model, the whole volume (None) else."""
        return SPINE_ROI if self.scheme == "spine" else None


def training_preset(scheme: str) -> DefaultTrainingConfig:
    """The training settings of a scheme's default model (:data:`SCHEMES`), before any override.

    ``"body"``: :data:`DEFAULT_NAME` at :data:`DEFAULT_SPACING_MM`; ``"spine"``: :data:`SPINE_NAME` at
    :data:`SPINE_SPACING_MM` with :data:`SPINE_PATCH_SIZE` and width :data:`SPINE_BASE_WIDTH`.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {list(SCHEMES)}, got {scheme!r}")
    if scheme == "body":
        return DefaultTrainingConfig()
    return DefaultTrainingConfig(
        scheme=scheme,
        name=SPINE_NAME,
        spacing_mm=SPINE_SPACING_MM,
        train=TrainConfig(patch_size=SPINE_PATCH_SIZE),
        model=_default_network(scheme),
    )


@dataclass(frozen=True, eq=False)
class TrainingResult:
    """What :func:`train_default_model` wrote and measured.

    Attributes
    ----------
    card_path, weights_path, history_path : Path
        The card, the best epoch's state dict and the history (JSON).
    history : TrainHistory
        Every epoch, those of a resumed run included.
    best_epoch : int
        1-based epoch whose weights were written.
    validation : pandas.DataFrame
        Per card class at the best epoch, on the fused grid: ``id``, ``name``, ``dice`` (mean over the
        validation visits whose truth holds the class; NaN if none does), ``visits`` (that count),
        ``truth_voxels`` and ``predicted_voxels`` (summed).
    training_keys, validation_keys : tuple of str
        Visits trained and validated on.
    """

    card_path: Path
    weights_path: Path
    history_path: Path
    history: TrainHistory
    best_epoch: int
    validation: pd.DataFrame
    training_keys: tuple[str, ...]
    validation_keys: tuple[str, ...]

    @property
    def mean_dice(self) -> float:
        """Mean validation Dice over the foreground classes present (NaN when none is)."""
        foreground = self.validation[self.validation["id"] != 0]["dice"]
        return float(foreground.mean(skipna=True)) if foreground.notna().any() else math.nan


def evaluate(
    model: torch.nn.Module,
    examples: Sequence[Example],
    card: ModelCard,
    scheme: Mapping[str, Sequence[int]] = DEFAULT_CLASSES,
    *,
    device: torch.device | str = "cpu",
    overlap: float = EVALUATION_OVERLAP,
    batch_size: int = EVALUATION_BATCH_SIZE,
    lookup: np.ndarray | None = None,
) -> pd.DataFrame:
    """Per-class overlap of a model's labels with the truth on the fused grid, as the stage would write them.

    Each example's prepared image is segmented by sliding windows, its scores restored to the fused grid
    (:func:`restore`) and compared by :func:`overlap_table` with its truth mapped to card ids.

    Parameters
    ----------
    model : torch.nn.Module
        In eval mode, on ``device``.
    examples : sequence of Example
        From :func:`cohortscale.models.dataset.training_examples` for ``card``.
    card : ModelCard
    scheme : mapping
        The card's label scheme.
    device : torch device or str
    overlap : float
        Patch overlap, 0–1.
    batch_size : int
        Patches per network call.
    lookup : ndarray, optional
        Example label id → card id, instead of the scheme's (:func:`class_lookup`).

    Returns
    -------
    pandas.DataFrame
        As :attr:`TrainingResult.validation`.
    """
    if not examples:
        raise ValueError("no examples to evaluate on")
    lookup = class_lookup(scheme) if lookup is None else lookup
    tables = []
    for example in examples:
        image = torch.from_numpy(np.ascontiguousarray(example.image)).to(device)
        predicted = predict_labels(
            image, example.geometry, card, model, batch_size=batch_size, overlap=overlap, accumulate_on="cpu"
        )
        tables.append(overlap_table(predicted, lookup[example.labels], card.labels))
    stacked = pd.concat(tables)
    grouped = stacked.groupby(["id", "name"], sort=True)
    return pd.DataFrame(
        {
            "dice": grouped["dice"].mean(),  # skips NaN: visits without the class
            "visits": grouped["dice"].count(),
            "truth_voxels": grouped["truth_voxels"].sum(),
            "predicted_voxels": grouped["predicted_voxels"].sum(),
        }
    ).reset_index()


def _check_split(path: Path, split: dict[str, list[str]], resuming: bool) -> None:
    """Record the split beside the checkpoints; a resumed run must see the same one."""
    if resuming and path.is_file():
        saved = json.loads(path.read_text(encoding="utf-8"))
        if saved != split:
            raise ValueError(
                f"{path}: the checkpoints were trained on other visits than the cohort gives now (a visit "
                "was added, fused or removed since); train into another --out folder"
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(split, indent=1) + "\n", encoding="utf-8")


def train_default_model(
    cohort_dir: str | Path | None,
    store: str | Path,
    out_dir: str | Path,
    config: DefaultTrainingConfig | None = None,
    *,
    command: str | None = None,
    progress: bool = False,
    annotations: str | None = None,
) -> TrainingResult:
    """Train a model on a cohort's fused visits and write it where the stage reads it: on a synthetic
    cohort's truth (merged into the config's scheme), or on a label set in the store (a user's annotations).

    Parameters
    ----------
    cohort_dir : path-like or None
        The synthetic cohort (its ``truth/<eid>_<inst>/maps.zarr`` labels are the targets); None with
        ``annotations``.
    store : path-like
        The cohort store after fusion (the inputs).
    out_dir : path-like
        Model folder: ``<name>.json`` (card), the weights, ``history.json`` and ``checkpoints/``
        (``last.pt``, ``best.pt``, ``split.json``). Training resumes from ``checkpoints/last.pt``.
    config : DefaultTrainingConfig, optional
        Settings (defaults suit a quarter-scale cohort).
    command : str, optional
        The command line that reproduces the run, recorded in the card.
    progress : bool
        Show a progress bar over epochs.
    annotations : str, optional
        Train on the store's ``labels/<annotations>`` (imported with
        :func:`cohortscale.pipeline.labels.import_labels`) instead: its visits with a labelled voxel, its
        label ids and names as the card's classes (the network's output channels follow them).

    Returns
    -------
    TrainingResult

    Raises
    ------
    TrainingDataError
        No usable visit, a truth grid unlike the fused one, or too few participants to split.
    ValueError
        Checkpoints of other settings or other visits in ``out_dir``, or a name unfit for a store array.
    """
    # Here, not at the top: dataset imports this module's label scheme.
    from cohortscale.models.dataset import (
        annotated_examples,
        annotation_labels,
        identity_lookup,
        split_by_participant,
        training_examples,
    )

    config = config or DefaultTrainingConfig()
    scheme = SCHEMES[config.scheme]
    if not ARRAY_NAME.fullmatch(config.name):
        raise ValueError(
            f"name {config.name!r} cannot name the store array labels/<name>; use letters, digits, '.', "
            "'_' and '-', starting with a letter or digit"
        )
    out = Path(out_dir)
    checkpoints = out / CHECKPOINT_DIR
    device = torch_device(config.device)
    labels = lookup = None
    network = config.model
    if annotations is not None:
        labels = annotation_labels(store, annotations)
        network = dataclasses.replace(network, n_classes=len(labels))
        lookup = identity_lookup(labels)
    elif cohort_dir is None:
        raise ValueError("give the synthetic cohort's directory, or a label set of the store (annotations)")
    card = default_card(
        config.spacing_mm,
        config.train.patch_size,
        network,
        f"{config.name}{WEIGHTS_SUFFIX}",
        config.version,
        name=config.name,
        scheme=scheme,
        roi=config.roi,
        labels=labels,
    )

    examples = (
        annotated_examples(store, card, annotations)
        if annotations is not None
        else training_examples(cohort_dir, store, card, scheme=scheme)
    )
    training, validation = split_by_participant(examples, config.validation_fraction, config.train.seed)
    split = {"training": [e.key for e in training], "validation": [e.key for e in validation]}
    _check_split(checkpoints / SPLIT_FILE, split, (checkpoints / LAST_CHECKPOINT).exists())

    torch.manual_seed(config.train.seed)  # the initial weights; a resumed run loads its own
    model = UNet3D(network)
    history = train(
        model,
        [e.pair for e in training],
        [e.pair for e in validation],
        config.train,
        checkpoints,
        device,
        progress,
    )
    best_path = checkpoints / BEST_CHECKPOINT
    # best.pt exists once an epoch had a defined validation Dice, which any body in the truth gives.
    best = load_checkpoint(best_path if best_path.is_file() else checkpoints / LAST_CHECKPOINT)
    best_epoch = int(best["epoch"])
    model.load_state_dict(best["model"])
    model.to(device).eval()
    table = evaluate(model, validation, card, scheme, device=device, lookup=lookup)

    weights = out / card.weights
    atomic_save(best["model"], weights)
    history_path = out / HISTORY_FILE
    channels = {str(i): name for i, name in enumerate(card.labels.values())}
    history_path.write_text(
        json.dumps({**history.to_dict(), "best_epoch": best_epoch, "channels": channels}, indent=1) + "\n",
        encoding="utf-8",
    )
    provenance = {
        **({"annotations": annotations} if annotations is not None else {"cohort": str(cohort_dir)}),
        "store": str(store),
        "training_visits": split["training"],
        "validation_visits": split["validation"],
        "config": {
            "train": config.train.to_dict(),
            "validation_fraction": config.validation_fraction,
            "device": device.type,
        },
        "epochs": len(history),
        "best_epoch": best_epoch,
        "validation_dice": {
            str(row.name): (None if math.isnan(row.dice) else round(float(row.dice), 4))
            for row in table.itertuples()
        },
        **({"command": command} if command else {}),
    }
    # The card last: a card in the folder means its weights are there too.
    card = dataclasses.replace(card, training=provenance)
    card_path = card.to_json(out / f"{card.name}.json")
    return TrainingResult(
        card_path=card_path,
        weights_path=weights,
        history_path=history_path,
        history=history,
        best_epoch=best_epoch,
        validation=table,
        training_keys=tuple(split["training"]),
        validation_keys=tuple(split["validation"]),
    )
