"""Training data of the default model from a fused synthetic cohort: its label scheme and card, examples
(shapes, targets, the truth mapping on hand-checked ids, a misaligned truth grid), the split by
participant, and ``cohortscale train`` end to end into a model that the segmentation stage runs."""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from click.testing import CliRunner

from cohortscale.cli import main
from cohortscale.io.store import open_store, participant_rows
from cohortscale.models.card import ModelCard, RegionOfInterest
from cohortscale.models.cascade import cached_cascade
from cohortscale.models.dataset import (
    TrainingDataError,
    annotated_examples,
    split_by_participant,
    training_examples,
    truth_path,
)
from cohortscale.models.default import (
    DEFAULT_CLASSES,
    DEFAULT_INPUTS,
    FAT_WINDOW,
    SPINE_CLASSES,
    SPINE_ROI,
    SPINE_SPACING_MM,
    VERTEBRAL_BODY_ID,
    WATER_WINDOW,
    DefaultTrainingConfig,
    class_lookup,
    default_card,
    scheme_labels,
    training_preset,
)
from cohortscale.models.preprocess import channel_lookup, spacing_from_affine, target_shape
from cohortscale.models.train import TrainConfig
from cohortscale.models.unet import UNet3D, UNetConfig
from cohortscale.pipeline.cluster import ClusterConfig
from cohortscale.pipeline.engine import EngineConfig
from cohortscale.pipeline.fusion import FUSED, FusionConfig, run_fusion
from cohortscale.pipeline.labels import import_labels
from cohortscale.pipeline.segmentation import (
    DEFAULT_CARD,
    SegmentationConfig,
    output_labels,
    run_segmentation,
)
from cohortscale.synth.acquisition import fused_shape_spacing
from cohortscale.synth.labels import LABELS, VERTEBRA_IDS

CLUSTER = ClusterConfig(workers=1, threads=2)
ENGINE = EngineConfig(progress=False)
#: A small network for the tests: the default scheme's channels, two levels, four features.
TINY = UNetConfig(in_channels=3, n_classes=13, depth=2, base_width=4, blocks_per_level=1, residual=False)
#: A coarse model grid for the tests (half the quarter-scale resolution) and a patch that fits it.
COARSE_MM = (24.0, 18.0, 18.0)
TINY_PATCH = (8, 16, 16)


@pytest.fixture(scope="module")
def fused_store(clean_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The clean cohort fused on its truth grid (read-only for tests: copy it before writing to it)."""
    store = tmp_path_factory.mktemp("dataset") / "fused.zarr"
    shutil.copytree(clean_store, store)
    shape, spacing = fused_shape_spacing(0.25)
    report = run_fusion(store, FusionConfig(shape=shape, spacing_mm=spacing), ENGINE, CLUSTER)
    assert report.done == 6
    return store


def fused_spacing(store: Path) -> tuple[float, float, float]:
    return spacing_from_affine(open_store(store, mode="r")[f"{FUSED}/affine"][0])


def test_scheme_lookup_and_card() -> None:
    labels = scheme_labels()
    assert list(labels.values()) == list(DEFAULT_CLASSES)
    assert labels[1] == "subcutaneous_fat" and labels[VERTEBRAL_BODY_ID] == "vertebral_body"
    lookup = class_lookup()
    assert lookup.dtype == np.uint8 and lookup.size == 256
    checked = {
        LABELS["subcutaneous_fat"]: 1,
        LABELS["visceral_fat"]: 2,
        LABELS["other_muscle"]: 0,
        LABELS["liver"]: 4,
        LABELS["pelvis"]: 0,
        LABELS["femur_right"]: 14,
        LABELS["thigh_medial_left"]: 21,
        LABELS["gluteal_left"]: 0,
        LABELS["scanner_table"]: 0,
        LABELS["C3"]: VERTEBRAL_BODY_ID,
        LABELS["L4"]: VERTEBRAL_BODY_ID,
        LABELS["S1"]: VERTEBRAL_BODY_ID,
        200: 0,
    }
    assert {k: int(lookup[k]) for k in checked} == checked

    card = default_card(COARSE_MM, TINY_PATCH, TINY, version="9")
    assert card.inputs == DEFAULT_INPUTS and card.labels == labels and card.format == "state_dict"
    assert [n.window for n in card.normalisation] == [WATER_WINDOW, FAT_WINDOW, (0.0, 1.0)]
    assert ModelCard.from_dict(json.loads(json.dumps(card.to_dict()))) == card
    with pytest.raises(ValueError, match="2 classes"):
        default_card(COARSE_MM, TINY_PATCH, UNetConfig(in_channels=3, n_classes=2))
    with pytest.raises(ValueError, match="no id in MERGED_CLASS_IDS"):
        scheme_labels({"background": (), "fat": (1, 2)})
    with pytest.raises(ValueError, match="merged into both"):
        scheme_labels({"background": (), "a": (1,), "b": (1,)})
    with pytest.raises(ValueError, match="multiples of 8"):
        DefaultTrainingConfig(train=TrainConfig(patch_size=(32, 36, 48)))
    with pytest.raises(ValueError, match="fixed by the inputs"):
        DefaultTrainingConfig(model=UNetConfig())
    # The spine model's preset: its scheme, network, grid and region; the body model's has no region.
    spine = training_preset("spine")
    assert (spine.name, spine.model.n_classes, spine.spacing_mm) == ("spine-unet", 3, SPINE_SPACING_MM)
    assert spine.model.base_width == 8 and training_preset("body").model.base_width == 16
    assert (
        spine.roi == SPINE_ROI
        and spine.roi.around == "vertebral_body"
        and training_preset("body").roi is None
    )
    for wrong in ("brain", "Spine"):
        with pytest.raises(ValueError, match="scheme must be one of"):
            training_preset(wrong)
    with pytest.raises(ValueError, match="fixed by the inputs"):
        DefaultTrainingConfig(scheme="spine")  # the body network's 13 classes for the spine's 3


def test_examples_shapes_targets_and_split(clean_cohort: Path, fused_store: Path) -> None:
    spacing = fused_spacing(fused_store)
    # On the store's own spacing nothing is resampled: the target is exactly the mapped truth.
    card = default_card(spacing, TINY_PATCH, TINY)
    examples = training_examples(clean_cohort, fused_store, card)
    assert [e.key for e in examples] == sorted(e.key for e in examples) and len(examples) == 6
    channel = channel_lookup(card, 255)
    lookup = class_lookup()
    for example in examples:
        assert example.image.dtype == np.float32 and example.image.shape == (3, *example.labels.shape)
        assert example.target.dtype == np.int64 and example.labels.dtype == np.uint8
        assert 0.0 <= example.image.min() and example.image.max() <= 1.0
        np.testing.assert_array_equal(example.target, channel[lookup[example.labels]])
        # Hand-checked ids: a level of the spine, a thigh compartment, a label merged into background.
        spine, thigh, muscle = (
            example.labels == LABELS[n] for n in ("L2", "thigh_anterior_left", "other_muscle")
        )
        assert spine.any() and thigh.any() and muscle.any()
        assert (example.target[spine] == 12).all() and (example.target[thigh] == 6).all()
        assert (example.target[muscle] == 0).all()
    covered = set().union(*(np.unique(e.target).tolist() for e in examples))
    assert covered == set(range(len(DEFAULT_CLASSES)))

    # On the model's coarser grid: resampled image and target, the truth kept on the fused grid.
    coarse = training_examples(clean_cohort, fused_store, default_card(COARSE_MM, TINY_PATCH, TINY))
    for example, fine in zip(coarse, examples, strict=True):
        shape = target_shape(fine.labels.shape, spacing, COARSE_MM)
        assert example.image.shape == (3, *shape) and example.target.shape == shape
        np.testing.assert_array_equal(example.labels, fine.labels)
        assert example.geometry.original_shape == fine.labels.shape
    assert set(np.unique(coarse[0].target)) >= {0, 1, 2, 3, 12}

    # Whole participants: both visits of each on one side, for any seed.
    for seed in range(5):
        training, validation = split_by_participant(coarse, 0.2, seed)
        train_eids, val_eids = {e.eid for e in training}, {e.eid for e in validation}
        assert len(val_eids) == 1 and len(train_eids) == 2 and not train_eids & val_eids
        assert len(validation) == 2 and len(training) + len(validation) == 6
    assert split_by_participant(coarse, 0.2, 3) == split_by_participant(coarse, 0.2, 3)
    with pytest.raises(TrainingDataError, match="at least two"):
        split_by_participant(coarse[:2], 0.5, 0)


def test_spine_examples_are_cropped_around_the_true_bodies(clean_cohort: Path, fused_store: Path) -> None:
    """The spine scheme's examples: images and truth cut to the bodies' box grown by the card's margin."""
    spacing = fused_spacing(fused_store)
    margin = (2 * spacing[0], 3 * spacing[1], 0.5 * spacing[2])  # 2, 3 and 1 voxel(s)
    spine = UNetConfig(in_channels=3, n_classes=3, depth=2, base_width=4, blocks_per_level=1, residual=False)
    roi = RegionOfInterest(around="vertebral_body", margin_mm=margin)
    card = default_card(spacing, TINY_PATCH, spine, scheme=SPINE_CLASSES, roi=roi, name="spine")
    assert card.labels == {
        0: "background",
        LABELS["intervertebral_disc"]: "intervertebral_disc",
        30: "vertebral_body",
    }
    examples = training_examples(clean_cohort, fused_store, card, scheme=SPINE_CLASSES)
    root = open_store(fused_store, mode="r")
    rows = participant_rows(root)
    for example in examples:
        truth = zarr.open_group(str(truth_path(clean_cohort, example.key)), mode="r")["fused"]["labels"][:]
        body = np.isin(truth, VERTEBRA_IDS)
        z, y, x = (np.flatnonzero(body.any(axis=a)) for a in ((1, 2), (0, 2), (0, 1)))
        box = (
            slice(max(z[0] - 2, 0), min(z[-1] + 3, truth.shape[0])),
            slice(max(y[0] - 3, 0), min(y[-1] + 4, truth.shape[1])),
            slice(max(x[0] - 1, 0), min(x[-1] + 2, truth.shape[2])),
        )
        np.testing.assert_array_equal(example.labels, truth[box])
        assert example.image.shape == (3, *truth[box].shape)
        # The crop's affine: the fused grid's axes, its origin at the box's first voxel.
        affine = root[f"{FUSED}/affine"][rows[example.key]]
        corner = affine @ [box[2].start, box[1].start, box[0].start, 1.0]
        np.testing.assert_allclose(example.affine[:, 3], corner)
        np.testing.assert_array_equal(example.affine[:, :3], affine[:, :3])
        disc = example.labels == LABELS["intervertebral_disc"]
        assert disc.any() and (example.target[disc] == 1).all()
        assert (example.target[np.isin(example.labels, VERTEBRA_IDS)] == 2).all()
        assert (example.target[~disc & ~np.isin(example.labels, VERTEBRA_IDS)] == 0).all()
    with pytest.raises(TrainingDataError, match=r"roi\.around 'liver' is not a class"):
        training_examples(
            clean_cohort,
            fused_store,
            default_card(
                spacing, TINY_PATCH, spine, scheme=SPINE_CLASSES, roi=RegionOfInterest(around="liver")
            ),
            scheme=SPINE_CLASSES,
        )


def test_truth_off_the_fused_grid_and_unusable_visits(
    clean_cohort: Path, fused_store: Path, clean_store: Path, tmp_path: Path
) -> None:
    card = default_card(COARSE_MM, TINY_PATCH, TINY)
    cohort = tmp_path / "cohort"
    shutil.copytree(clean_cohort / "truth", cohort / "truth")
    key = sorted(p.name for p in (cohort / "truth").iterdir() if p.is_dir())[1]
    group = zarr.open_group(str(truth_path(cohort, key)), mode="r+")["fused"]
    affine = np.asarray(group.attrs["affine"])
    affine[2, 3] += 1.5  # the grid shifted head–foot by 1.5 mm
    group.attrs["affine"] = affine.tolist()
    with pytest.raises(TrainingDataError, match=rf"visit {key}: the truth affine differs .* 1\.5 mm"):
        training_examples(cohort, fused_store, card)
    group.attrs["shape_zyx"] = [10, 20, 30]
    with pytest.raises(TrainingDataError, match=rf"visit {key}: the truth grid \[10, 20, 30\]"):
        training_examples(cohort, fused_store, card, visits=[key])
    others = [k for k in sorted(p.name for p in (cohort / "truth").iterdir() if p.is_dir()) if k != key]
    assert [e.key for e in training_examples(cohort, fused_store, card, visits=others[:1])] == others[:1]
    with pytest.raises(TrainingDataError, match="fusion is not done"):
        training_examples(clean_cohort, clean_store, card, visits=[key])
    with pytest.raises(TrainingDataError, match=r"no visit .* is both fused"):
        training_examples(clean_cohort, clean_store, card)
    with pytest.raises(TrainingDataError, match="not those of the label scheme"):
        training_examples(clean_cohort, fused_store, card, scheme={"background": (), "fat": (1,)})


def test_train_command_writes_a_model_the_stage_runs(
    clean_cohort: Path, fused_store: Path, tmp_path: Path
) -> None:
    store = tmp_path / "store.zarr"
    shutil.copytree(fused_store, store)
    out = tmp_path / "model"
    args = ["train", "--cohort", str(clean_cohort), "--store", str(store), "--out", str(out)]
    tiny = [
        *("--epochs", "1", "--steps-per-epoch", "2", "--base-width", "4", "--depth", "2", "--device", "cpu"),
        *("--spacing", ",".join(map(str, COARSE_MM)), "--patch", ",".join(map(str, TINY_PATCH))),
        *(
            "--set",
            "model.blocks_per_level=1",
            "--set",
            "model.residual=false",
            "--set",
            "train.batch_size=1",
        ),
    ]
    result = CliRunner().invoke(main, [*args, *tiny])
    assert result.exit_code == 0, result.output
    print(result.output)
    assert (
        "validation Dice per class at the best epoch" in result.output and "vertebral_body" in result.output
    )
    command = result.output.split("reproduce with: ", 1)[1].strip()
    assert (
        command.startswith("cohortscale train --scheme body --cohort")
        and "--set model.residual=false" in command
    )
    card = ModelCard.load(out / "body-unet.json")
    assert card.architecture == TINY.to_dict() and card.spacing_mm == COARSE_MM
    assert card.training["command"] == command and card.training["best_epoch"] == 1
    assert len(card.training["validation_visits"]) == 2 and "liver" in card.training["validation_dice"]
    state = torch.load(out / card.weights, weights_only=True)
    assert set(state) == set(UNet3D(TINY).state_dict())
    assert json.loads((out / "history.json").read_text())["best_epoch"] == 1

    # Resumed from the checkpoint for one more epoch; a changed recipe is refused.
    more = CliRunner().invoke(main, [*args, *tiny, "--epochs", "2"])
    assert more.exit_code == 0, more.output
    assert len(json.loads((out / "history.json").read_text())["loss"]) == 2
    changed = CliRunner().invoke(main, [*args, *tiny, "--set", "train.learning_rate=0.01"])
    assert changed.exit_code == 2 and "learning_rate" in changed.output, changed.output
    bad = CliRunner().invoke(main, [*args, "--set", "train.nonsense=1"])
    assert bad.exit_code == 2 and "train.nonsense" in bad.output and "Traceback" not in bad.output

    report = run_segmentation(
        store, SegmentationConfig(card=str(out / "body-unet.json"), device="cpu"), ENGINE, CLUSTER
    )
    assert (report.done, report.quarantined, report.failed) == (6, 0, 0), report
    labels = open_store(store, mode="r")["labels/body-unet"]
    assert labels.shape == open_store(store, mode="r")[f"{FUSED}/water"].shape
    # The merged vertebral-body class is written as levels: their names join the card's.
    assert labels.attrs["labels"] == {str(k): v for k, v in output_labels([card]).items()}
    assert "L3" in labels.attrs["labels"].values()
    assert set(np.unique(labels[0])) <= set(card.labels)


def test_printed_command_reproduces_the_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """TOML < options < --set, and the command recorded in the card gives the same settings back."""
    runs: list[tuple[DefaultTrainingConfig, str]] = []

    def record(cohort, store, out, config, *, command=None, progress=False, annotations=None):
        runs.append((config, command))
        raise ValueError("not training here")

    monkeypatch.setattr("cohortscale.models.default.train_default_model", record)
    settings = tmp_path / "train.toml"
    settings.write_text(
        "spacing_mm = [24, 18, 18]\n[train]\nepochs = 3\nlearning_rate = 3e-4\n[model]\ndropout = 0.1\n"
    )
    args = ["train", "--cohort", str(tmp_path), "--store", str(tmp_path), "--out", str(tmp_path / "a b")]
    options = ["--config", str(settings), "--epochs", "4", "--depth", "3", "--patch", "16,32,32"]
    result = CliRunner().invoke(main, [*args, *options, "--set", "train.epochs=5"])
    assert result.exit_code == 2 and "not training here" in result.output, result.output
    config, command = runs[-1]
    assert (config.train.epochs, config.train.learning_rate, config.model.dropout) == (5, 3e-4, 0.1)
    assert config.spacing_mm == (24.0, 18.0, 18.0) and config.model.depth == 3
    again = CliRunner().invoke(main, shlex.split(command)[1:])
    assert again.exit_code == 2 and runs[-1] == (config, command)


def test_train_synth_makes_its_own_cohort(tmp_path: Path) -> None:
    """One command: generate, ingest and fuse a cohort in OUT/data, then train on it (tiny settings)."""
    out = tmp_path / "model"
    tiny = ["--epochs", "1", "--steps-per-epoch", "2", "--base-width", "4", "--depth", "2"]
    result = CliRunner().invoke(
        main,
        [
            "train",
            "--synth",
            "2",
            "--scale",
            "0.25",
            "--out",
            str(out),
            "--validation-fraction",
            "0.5",
            *tiny,
        ],
    )
    assert result.exit_code == 0, result.output
    assert (out / "data" / "truth").is_dir() and (out / "data" / "cohort.zarr").is_dir()
    card = ModelCard.load(out / "body-unet.json")
    assert card.training["command"].startswith(
        "cohortscale train --scheme body --synth 2 --synth-seed 103 --scale 0.25"
    )
    for bad in (["--synth", "2", "--cohort", str(tmp_path)], []):
        refused = CliRunner().invoke(main, ["train", "--out", str(tmp_path / "x"), *bad])
        assert refused.exit_code == 2 and "--synth" in refused.output, refused.output


def test_train_spine_into_a_cascade(clean_cohort: Path, fused_store: Path, tmp_path: Path) -> None:
    """``train --scheme spine --cascade-into CARD``: the spine model trained, then installed beside CARD and
    listed in its cascade (tiny settings; a TOML card is refused before any training)."""
    body = tmp_path / "body"
    body.mkdir()
    packaged = ModelCard.load(DEFAULT_CARD)
    plain = ModelCard.from_dict({**packaged.to_dict(), "cascade": []})
    card_path = plain.to_json(body / "body-unet.json")
    shutil.copyfile(DEFAULT_CARD.parent / packaged.weights, body / packaged.weights)
    out = tmp_path / "spine"
    args = ["train", "--scheme", "spine", "--cohort", str(clean_cohort), "--store", str(fused_store)]
    tiny = [
        *("--out", str(out), "--epochs", "1", "--steps-per-epoch", "1", "--base-width", "4", "--depth", "2"),
        *("--spacing", ",".join(map(str, COARSE_MM)), "--patch", ",".join(map(str, TINY_PATCH))),
        *("--device", "cpu", "--set", "train.batch_size=1"),
    ]
    toml = body / "body-unet.toml"
    toml.write_text('name = "body-unet"\n')
    refused = CliRunner().invoke(main, [*args, *tiny, "--cascade-into", str(toml)])
    assert refused.exit_code == 2 and "give a JSON model card" in refused.output, refused.output
    assert not out.exists()
    result = CliRunner().invoke(main, [*args, *tiny, "--cascade-into", str(card_path)])
    assert result.exit_code == 0, result.output
    assert f"added to the cascade of {card_path}" in result.output
    spine = ModelCard.load(out / "spine-unet.json")
    assert (
        spine.weights == "spine-unet.pt" and spine.roi == SPINE_ROI and spine.architecture["base_width"] == 4
    )
    assert ModelCard.load(card_path).cascade == ("spine-unet.json",)
    for name in ("spine-unet.json", "spine-unet.pt"):
        assert (body / name).read_bytes() == (out / name).read_bytes()
    assert [m.card.name for m in cached_cascade(card_path)] == ["body-unet", "spine-unet"]


def test_train_on_a_users_annotations(clean_cohort: Path, fused_store: Path, tmp_path: Path) -> None:
    """``train --labels NAME``: a label set imported into the store (here: fat and liver of four visits,
    drawn from the truth, with the user's own ids) trains a model whose classes are that set's."""
    store = tmp_path / "store.zarr"
    shutil.copytree(fused_store, store)
    names = {0: "background", 5: "fat", 9: "liver"}
    rows = participant_rows(open_store(store, mode="r"))
    annotated = sorted(rows)[:4]

    def annotation(key: str) -> np.ndarray:
        truth = zarr.open_group(str(truth_path(clean_cohort, key)), mode="r")["fused"]["labels"][:]
        fat = np.isin(truth, [LABELS["subcutaneous_fat"], LABELS["visceral_fat"]])
        return np.where(fat, 5, np.where(truth == LABELS["liver"], 9, 0)).astype(np.uint8)

    import_labels(store, "mine", names, ((k, annotation(k)) for k in annotated), "test annotations")
    card = default_card(
        fused_spacing(store), TINY_PATCH, UNetConfig(in_channels=3, n_classes=3), labels=names
    )
    examples = annotated_examples(store, card, "mine")
    assert [e.key for e in examples] == annotated  # the visits without annotations are left out
    for example in examples:
        np.testing.assert_array_equal(example.labels, annotation(example.key))
        np.testing.assert_array_equal(
            example.target, np.select([example.labels == 5, example.labels == 9], [1, 2])
        )
    with pytest.raises(TrainingDataError, match="no label set labels/theirs"):
        annotated_examples(store, card, "theirs")

    out = tmp_path / "model"
    tiny = [
        *("--out", str(out), "--epochs", "1", "--steps-per-epoch", "1", "--base-width", "4", "--depth", "2"),
        *("--spacing", ",".join(map(str, COARSE_MM)), "--patch", ",".join(map(str, TINY_PATCH))),
        *("--device", "cpu", "--validation-fraction", "0.5", "--set", "train.batch_size=1"),
    ]
    both = CliRunner().invoke(
        main, ["train", "--labels", "mine", "--cohort", str(clean_cohort), "--store", str(store), *tiny]
    )
    assert both.exit_code == 2 and "--labels NAME with --store only" in both.output, both.output
    result = CliRunner().invoke(main, ["train", "--labels", "mine", "--store", str(store), *tiny])
    assert result.exit_code == 0, result.output
    trained = ModelCard.load(out / "body-unet.json")
    assert trained.labels == names and trained.architecture["n_classes"] == 3
    assert trained.training["annotations"] == "mine" and "cohort" not in trained.training
    assert sorted(trained.training["training_visits"] + trained.training["validation_visits"]) == annotated
    assert trained.training["command"].startswith("cohortscale train --scheme body --labels mine --store")
    report = run_segmentation(
        store, SegmentationConfig(card=str(out / "body-unet.json"), device="cpu"), ENGINE, CLUSTER
    )
    assert report.done == 6
    segmented = open_store(store, mode="r")["labels/body-unet"]
    assert segmented.attrs["labels"] == {"0": "background", "5": "fat", "9": "liver"}
    assert set(np.unique(segmented[0])) <= {0, 5, 9}
