"""The segmentation stage: each visit's fused Dixon volumes → a label volume per model in the store.

Per visit (on a worker): read the fused contrasts the model card names (``dixon/fused/*``, written by the
fusion stage), normalise them and resample them to the card's spacing, run the network over overlapping
patches on the worker's GPU when it has one, bring the class scores back to the fused grid and write the
best class per voxel to ``labels/<model name>`` (uint8 card label ids, 0 = background, one chunk per
participant). A card with a cascade (:mod:`cohortscale.models.cascade`) then runs its refining models,
each at its own spacing inside the box around a label of the labels so far (the packaged body model has
the spine model refine its vertebral bodies and discs). A merged vertebral-body class is named by level
(:func:`cohortscale.ops.vertebrae.label_vertebrae`). Each worker process loads the models once
(:func:`cohortscale.models.cascade.cached_cascade`). Visits run once fusion is done for them, again when
fusion re-ran them, and all again when the model changes (a card or a weights file of the cascade; not
the patch batch size or the overlap, which only trade speed against patch-border smoothing).

The ledger's ``segmentation`` records refer to the model of the latest run: segmenting with another model
runs every visit again, and the labels of the previous model stay in the store as they were.

PyTorch is imported only where a model is loaded or run, so that the command line and the other stages
start without it (about 2 s).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr

from cohortscale.config import config_to_dict
from cohortscale.io.ledger import Ledger
from cohortscale.io.store import ARRAY_NAME, ensure_arrays, open_store
from cohortscale.ops.vertebrae import VERTEBRAL_BODY_CLASS
from cohortscale.pipeline.cluster import ClusterConfig
from cohortscale.pipeline.engine import (
    EngineConfig,
    Outcome,
    StageReport,
    Visit,
    ready_visits,
    requeue_done,
    run_on_cluster,
    store_visits,
)
from cohortscale.pipeline.fusion import FUSED

if TYPE_CHECKING:
    import torch

    from cohortscale.models.card import ModelCard
    from cohortscale.models.loading import LoadedModel

#: Where label volumes live in the store: ``labels/<model name>``.
LABELS = "labels"
#: Stored label dtype, and the largest label id it holds.
LABEL_DTYPE = "uint8"
MAX_LABEL_ID = int(np.iinfo(LABEL_DTYPE).max)
#: Fill value of label rows: background, also for visits not (or no longer) segmented; the ledger tells
#: which rows hold a segmentation.
NOT_SEGMENTED = 0
#: Attribute (on the ``labels`` group and on each label array) holding the model a segmentation came
#: from: its card and the SHA-256 of its weights, and those of its cascade. A different value runs every
#: visit again.
SETTINGS_ATTR = "segmentation_model"
#: Attribute holding the other settings of the latest run (card path, patch batch size, overlap).
RUN_ATTR = "segmentation_config"
#: Stage name, and the stage whose outputs it reads.
STAGE = "segmentation"
UPSTREAM = "fusion"

#: The packaged default model's card (``cohortscale train`` on a synthetic cohort; see the README).
DEFAULT_CARD = Path(__file__).resolve().parents[1] / "models" / "weights" / "body-unet.json"


@dataclass(frozen=True)
class SegmentationConfig:
    """Settings of the segmentation stage.

    Attributes
    ----------
    card : str, optional
        Path of the model card (JSON or TOML) beside its weights file (``--card`` or ``--set
        segmentation.card=PATH``). ``None`` stands for the packaged default model (:data:`DEFAULT_CARD`),
        trained on the synthetic cohort by ``cohortscale train``.
    device : {"auto", "cpu", "gpu"}
        Where the network runs: a worker's CUDA GPU when torch sees one ("auto"), or forced.
    batch_size : int
        Patches per network call (GPU memory against speed); not the visits per task, which is
        ``engine.batch_size``.
    overlap : float
        Least share of a patch that its neighbour along each axis also covers, 0–1: more overlap averages
        more predictions per voxel, away from patch borders, at more network calls.
    """

    card: str | None = None
    device: str = "auto"
    batch_size: int = 4
    overlap: float = 0.5

    def __post_init__(self) -> None:
        if self.device not in ("auto", "cpu", "gpu"):
            raise ValueError(f"segmentation.device must be 'auto', 'cpu' or 'gpu', got {self.device!r}")
        if self.batch_size < 1:
            raise ValueError(f"segmentation.batch_size must be ≥ 1, got {self.batch_size}")
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"segmentation.overlap must be in [0, 1), got {self.overlap}")

    def card_path(self) -> Path:
        """The model card's path.

        Raises
        ------
        ValueError
            When no card is set and the packaged default model is missing.
        """
        if self.card is None or not str(self.card).strip():
            if not DEFAULT_CARD.exists():
                raise ValueError(
                    f"segmentation.card is not set, and the packaged default model ({DEFAULT_CARD}) is "
                    "missing: give a model card (--card PATH or --set segmentation.card=PATH)"
                )
            return DEFAULT_CARD
        return Path(self.card)


def labels_path(card: ModelCard) -> str:
    """Store path of a model's label volumes, ``labels/<card name>``."""
    return f"{LABELS}/{card.name}"


def check_card_for_store(root: zarr.Group, card: ModelCard, card_path: Path) -> None:
    """Check that the store can give the card its inputs and hold its labels.

    Raises
    ------
    ValueError
        When the model name cannot name a store array, a label id does not fit uint8, or the store lacks
        a fused input (the fusion stage has not run).
    """
    if not ARRAY_NAME.fullmatch(card.name):
        raise ValueError(
            f"{card_path}: model name {card.name!r} cannot name the store array {LABELS}/<name>; use "
            "letters, digits, '.', '_' and '-', starting with a letter or digit"
        )
    if max(card.labels) > MAX_LABEL_ID:
        raise ValueError(
            f"{card_path}: label id {max(card.labels)} does not fit the stored {LABEL_DTYPE} labels "
            f"(ids 0–{MAX_LABEL_ID})"
        )
    from cohortscale.models.preprocess import FUSED_ARRAYS

    needed = [f"{FUSED}/{FUSED_ARRAYS[name]}" for name in card.inputs] + [f"{FUSED}/affine"]
    missing = [path for path in needed if path not in root]
    if missing:
        raise ValueError(
            f"the store has no {', '.join(missing)}, which the model {card.name} reads: run the fusion "
            "stage first (cohortscale fuse STORE)"
        )


def model_settings(models: Sequence[LoadedModel]) -> dict[str, Any]:
    """What identifies a segmentation model: its card and the SHA-256 of its weights, and its cascade's."""
    first, *refining = models
    settings: dict[str, Any] = {"card": first.card.to_dict(), "weights_sha256": first.weights_sha256}
    if refining:
        settings["cascade"] = [
            {"card": m.card.to_dict(), "weights_sha256": m.weights_sha256} for m in refining
        ]
    return settings


def _has_signal(volume: np.ndarray) -> bool:
    """Whether any voxel is finite and non-zero (fusion fills what no station covers with 0, or NaN)."""
    return bool(np.any(np.isfinite(volume) & (volume != 0)))


def _absent_stations(root: zarr.Group, row: int) -> list[int]:
    """Station numbers that contributed no contrast to a visit's fused volumes."""
    path = f"{FUSED}/stations"
    if path not in root:
        return []
    counts = np.asarray(root[path][row])
    numbers = root[path].attrs.get("stations", list(range(1, counts.size + 1)))
    return [int(k) for k, n in zip(numbers, counts, strict=True) if n == 0]


def clear_row(root: zarr.Group, row: int, path: str) -> None:
    """Reset a visit's labels to the fill value (background)."""
    array = root[path]
    array[row] = np.full(array.shape[1:], NOT_SEGMENTED, dtype=array.dtype)


def segment_visit(
    root: zarr.Group,
    visit: Visit,
    models: Sequence[LoadedModel],
    device: torch.device,
    config: SegmentationConfig,
) -> Outcome:
    """Segment one visit with a model and its cascade, write its ``labels/<model>`` row and return its
    outcome.

    A visit without a fused volume, or with an input contrast empty everywhere, is quarantined and its
    labels cleared.
    """
    from cohortscale.models.cascade import segment_cascade
    from cohortscale.models.preprocess import read_fused, spacing_from_affine

    start = time.perf_counter()
    card = models[0].card
    row, path = visit.index, labels_path(card)
    inputs = list(dict.fromkeys(name for model in models for name in model.card.inputs))

    def quarantine(reason: str, message: str) -> Outcome:
        clear_row(root, row, path)
        return Outcome(visit.key, "quarantined", reason, message, time.perf_counter() - start)

    arrays, affine = read_fused(root, row, inputs)
    if not np.isfinite(affine).all():
        return quarantine(
            "not_fused", f"participant {visit.key}: no fused volume in the store ({FUSED}/affine is NaN)"
        )
    try:
        spacing_from_affine(affine)
    except ValueError as exc:
        return quarantine("bad_fused_affine", f"participant {visit.key}: {exc}")
    empty = [name for name, volume in arrays.items() if not _has_signal(volume)]
    if empty:
        return quarantine(
            "empty_fused_input",
            f"participant {visit.key}: fused {', '.join(empty)} empty (no non-zero voxel); nothing for "
            f"{card.name} to segment",
        )
    labels = segment_cascade(
        arrays, affine, [(m.card, m.model) for m in models], device, config.batch_size, config.overlap
    )
    spacing = spacing_from_affine(affine)
    notes = ""
    body_id = _vertebral_body_id([m.card for m in models])
    if body_id is not None and (labels == body_id).any():
        from cohortscale.ops.vertebrae import AnchorNotFoundError, label_vertebrae

        try:
            labels = label_vertebrae(labels, body_id, spacing, affine=affine)
        except AnchorNotFoundError as exc:
            notes = f"; vertebral levels not assigned ({exc}), bodies kept as {VERTEBRAL_BODY_CLASS}"
    root[path][row] = labels.astype(LABEL_DTYPE, copy=False)
    found = np.unique(labels)
    where = "GPU" if device.type == "cuda" else "CPU"
    cascade = ""
    for c in (m.card for m in models[1:]):
        if c.runs_on(spacing):
            cascade += f" + {c.name} {c.version}"
        else:  # only a roi with a max_spacing_mm skips a model
            limit = _mm(c.roi.max_spacing_mm)  # type: ignore[union-attr, arg-type]
            notes += f"; {c.name} skipped (grid {_mm(spacing)} mm, coarser than its {limit} mm)"
    message = (
        f"participant {visit.key}: segmented with {card.name} {card.version}{cascade} on {where}; "
        f"{found.size} label ids present{notes}"
    )
    absent = _absent_stations(root, row)
    if absent:
        message += (
            f"; station(s) {', '.join(map(str, absent))} absent from the fused volume (no signal to segment "
            "there)"
        )
    return Outcome(visit.key, "done", "", message, time.perf_counter() - start)


class ModelChangedError(RuntimeError):
    """The model card or weights changed between preparing the run and a worker loading them."""


@dataclass(frozen=True)
class SegmentationStage:
    """The segmentation stage for :func:`cohortscale.pipeline.engine.run_stage`.

    ``model`` is :func:`model_settings` of the model (and cascade) :func:`prepare_segmentation` checked; a
    worker that finds another one behind ``config.card`` (files edited during the run) raises rather than
    mix models in one label array.
    """

    store: str
    config: SegmentationConfig
    model: dict[str, Any] = field(default_factory=dict)
    name: str = STAGE
    gpu: bool = True

    def process(self, visits: list[Visit]) -> list[Outcome]:
        from cohortscale.models.cascade import cached_cascade
        from cohortscale.models.loading import torch_device

        root = open_store(self.store)
        device = torch_device(self.config.device)
        models = cached_cascade(self.config.card_path(), device)
        if self.model and model_settings(models) != self.model:
            raise ModelChangedError(
                f"{self.config.card}: a model card or its weights changed during the run; run again"
            )
        return [segment_visit(root, v, models, device, self.config) for v in visits]


def _mm(spacing: Sequence[float]) -> str:
    """A spacing as "3 × 2.23 × 2.23"."""
    return " × ".join(f"{s:.3g}" for s in spacing)


def _vertebral_body_id(cards: Sequence[ModelCard]) -> int | None:
    """The cascade's label id of a merged vertebral-body class, if it has one (its levels are counted)."""
    from cohortscale.models.cascade import cascade_labels

    return next((i for i, name in cascade_labels(cards).items() if name == VERTEBRAL_BODY_CLASS), None)


def output_labels(cards: Sequence[ModelCard]) -> dict[int, str]:
    """Label names of the written volumes: the cascade's, with a vertebral-body class expanded into levels."""
    from cohortscale.models.cascade import cascade_labels
    from cohortscale.synth.labels import LABEL_NAMES, VERTEBRA_IDS

    names = cascade_labels(cards)
    if _vertebral_body_id(cards) is not None:
        # Kept for visits whose levels could not be counted.
        names.update({i: LABEL_NAMES[i] for i in VERTEBRA_IDS})
    return dict(sorted(names.items()))


def _array_attrs(
    cards: Sequence[ModelCard], settings: dict[str, Any], config: SegmentationConfig
) -> dict[str, Any]:
    """Label names, model identity and settings of a label array."""
    card = cards[0]
    return {
        "units": "label id",
        "description": f"{card.name} {card.version} label per voxel of the fused grid (0: background)",
        "labels": {str(k): v for k, v in output_labels(cards).items()},
        "model": card.name,
        "model_version": card.version,
        "model_card": card.to_dict(),
        "weights_sha256": settings["weights_sha256"],
        SETTINGS_ATTR: settings,
        RUN_ATTR: config_to_dict(config),
    }


def prepare_segmentation(
    store: str | Path, config: SegmentationConfig
) -> tuple[SegmentationStage, list[Visit]]:
    """Check the model, create its label array and return the stage and the visits ready for it.

    The model and its cascade are loaded once here on the CPU (and run on one patch of zeros), so that a
    card or weights problem stops the run before any worker starts. Visits segmented with another model
    (card or weights) are segmented again (a "failed" record, reason ``model_changed``); visits that were
    segmented and are no longer ready (fusion quarantined them, or is to run them again) lose their labels.

    Returns
    -------
    stage : SegmentationStage
        With the card's absolute path, so that workers elsewhere find it.
    visits : list of Visit
        Visits whose fusion is done.

    Raises
    ------
    ValueError
        No card set, an invalid or missing card or weights file (``ModelCardError``,
        ``ModelLoadError``), cascade cards that do not fit together (``CascadeError``), a card the store
        cannot serve (:func:`check_card_for_store`), or a label array of another shape in the store.
    """
    from cohortscale.models.card import cascade_paths
    from cohortscale.models.cascade import cached_cascade
    from cohortscale.models.preprocess import FUSED_ARRAYS

    card_path = config.card_path().resolve()
    config = dataclasses.replace(config, card=str(card_path))
    root = open_store(store)
    models = cached_cascade(card_path, "cpu")
    card = models[0].card
    for path_of_card, model in zip((card_path, *cascade_paths(card_path, card)), models, strict=True):
        check_card_for_store(root, model.card, path_of_card)
    settings = model_settings(models)

    path = labels_path(card)
    # The fused grid and its dimension names, so that labels and volumes align in open_cohort.
    fused = root[f"{FUSED}/{FUSED_ARRAYS[card.inputs[0]]}"]
    dims = tuple(fused.metadata.dimension_names or ())[1:]
    ensure_arrays(root, {path: (tuple(fused.shape[1:]), LABEL_DTYPE, dims, NOT_SEGMENTED)})
    group = root[LABELS]
    previous = group.attrs.get(SETTINGS_ATTR)
    before = Ledger(store).read(STAGE)
    done_before = set(before.loc[before["status"] == "done", "participant"])
    if previous is not None and previous != settings:
        # Braces in a model name would be taken for the participant's placeholder.
        model = f"{card.name} {card.version}".replace("{", "{{").replace("}", "}}")
        requeue_done(
            store,
            STAGE,
            "model_changed",
            f"participant {{}}: segmentation model changed to {model}; segmenting again",
        )
    # After the requeue: a run cut between the two requeues again rather than keep the old model's records.
    group.attrs[SETTINGS_ATTR] = settings
    root[path].attrs.update(_array_attrs([m.card for m in models], settings, config))

    visits = store_visits(store)
    ready = ready_visits(STAGE, UPSTREAM, visits, store)
    ready_keys = {v.key for v in ready}
    for visit in visits:
        if visit.key in done_before and visit.key not in ready_keys:
            clear_row(root, visit.index, path)
    return SegmentationStage(str(store), config, settings), ready


def run_segmentation(
    store: str | Path,
    config: SegmentationConfig | None = None,
    engine: EngineConfig | None = None,
    cluster: ClusterConfig | None = None,
) -> StageReport:
    """Segment the fused volumes of every fused visit of ``store`` on a Dask cluster; resumable.

    Parameters
    ----------
    store : path-like
        Cohort store after fusion.
    config : SegmentationConfig
        The model card (default: the packaged model) and inference settings.
    engine, cluster : optional
        Engine (batching, retries, progress) and cluster settings.

    Returns
    -------
    StageReport
    """
    config = config or SegmentationConfig()
    stage, visits = prepare_segmentation(store, config)
    return run_on_cluster(stage, visits, store, engine, cluster)
