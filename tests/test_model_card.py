"""Model cards: JSON/TOML round trips, validation errors that name the file and field, and normalisation."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cohortscale.models.card import (
    ModelCard,
    ModelCardError,
    Normalisation,
    RegionOfInterest,
    cascade_paths,
    normalise,
    weights_path,
)
from cohortscale.synth.labels import LABEL_NAMES

CARD: dict[str, Any] = {
    "card_version": 1,
    "name": "body-unet",
    "version": "0.1.0",
    "description": "Water/fat body segmentation, trained on the synthetic cohort.",
    "inputs": ["water", "fat"],
    "normalisation": [{"window": [0.0, 1000.0]}, {"zscore": True}],
    "spacing_mm": [3.0, 2.2, 2.2],
    "patch_size": [32, 64, 64],
    "labels": {"0": "background", "1": "subcutaneous_fat", "4": "liver"},
    "architecture": {"depth": 4, "base_width": 16},
    "weights": "body-unet.pt",
    "format": "state_dict",
    "training": {"seed": 0, "epochs": 50, "command": "cohortscale train --seed 0"},
}

TOML = """\
name = "body-unet"
version = "0.1.0"
inputs = ["water", "fat_fraction"]
spacing_mm = [3, 2.2, 2.2]
patch_size = [32, 64, 64]
weights = "weights/body-unet.ts.pt"
format = "torchscript"

[[normalisation]]
window = [0, 1000]

[[normalisation]]
window = [0.0, 1.0]

[labels]
0 = "background"
4 = "liver"
5 = "spleen"

[training]
seed = 3
data = "synthetic cohort, 40 participants"
"""


def write_json(folder: Path, **changes: Any) -> Path:
    """``CARD`` with ``changes`` (a value of ``...`` removes the key) as ``folder/model.json``."""
    values = {k: v for k, v in {**CARD, **changes}.items() if v is not ...}
    path = folder / "model.json"
    path.write_text(json.dumps(values))
    return path


def test_json_round_trip(tmp_path: Path) -> None:
    card = ModelCard.load(write_json(tmp_path))
    assert card.inputs == ("water", "fat")
    assert card.normalisation == (Normalisation(window=(0.0, 1000.0)), Normalisation(zscore=True))
    assert card.labels == {0: "background", 1: "subcutaneous_fat", 4: "liver"}
    assert all(type(k) is int for k in card.labels) and card.label_ids == (0, 1, 4)
    assert card.spacing_mm == (3.0, 2.2, 2.2) and card.patch_size == (32, 64, 64)
    assert card.training["seed"] == 0 and card.card_version == 1

    again = ModelCard.load(card.to_json(tmp_path / "again.json"))
    assert again == card
    assert json.loads((tmp_path / "again.json").read_text()) == CARD
    with pytest.raises(dataclasses.FrozenInstanceError):
        card.name = "other"  # type: ignore[misc]
    assert hash(card) == hash(again)  # the dict fields are compared but not hashed


def test_constructed_card_equals_its_round_trip(tmp_path: Path) -> None:
    # Lists and string ids are accepted on construction and stored as tuples and ints.
    card = ModelCard(
        name="synthetic-all",
        version="1",
        inputs=["water", "fat", "in_phase", "opposed_phase", "fat_fraction"],
        normalisation=[{"zscore": True}] * 4 + [Normalisation(window=(0, 1))],
        spacing_mm=(6, 4.4, 4.4),
        patch_size=[16, 32, 32],
        labels={str(k): v for k, v in LABEL_NAMES.items()},
        weights="synthetic-all.pt",
        format="torchscript",
    )
    assert card.labels == LABEL_NAMES and card.architecture == {} and card.description is None
    assert card.normalisation[4].window == (0.0, 1.0)
    assert ModelCard.load(card.to_json(tmp_path / "card.json")) == card
    assert "description" not in json.loads((tmp_path / "card.json").read_text())


def test_toml_card(tmp_path: Path) -> None:
    path = tmp_path / "model.toml"
    path.write_text(TOML)
    card = ModelCard.load(path)
    assert card.inputs == ("water", "fat_fraction")
    assert card.normalisation == (Normalisation(window=(0.0, 1000.0)), Normalisation(window=(0.0, 1.0)))
    assert card.labels == {0: "background", 4: "liver", 5: "spleen"}
    assert card.spacing_mm == (3.0, 2.2, 2.2) and card.format == "torchscript" and card.architecture == {}
    assert card.training == {"seed": 3, "data": "synthetic cohort, 40 participants"}
    assert weights_path(path, card) == tmp_path / "weights" / "body-unet.ts.pt"
    assert ModelCard.load(card.to_json(tmp_path / "model.json")) == card


def load_error(tmp_path: Path, changes: dict[str, Any]) -> tuple[Path, str]:
    """The card file with ``changes``, and the message of the ModelCardError (a ValueError) it raises."""
    path = write_json(tmp_path, **changes)
    with pytest.raises(ModelCardError) as info:
        ModelCard.load(path)
    assert isinstance(info.value, ValueError)
    return path, str(info.value)


@pytest.mark.parametrize(
    ("changes", "field", "detail"),
    [
        ({"inputs": ["water", "fatfrac"]}, "inputs", "'fatfrac' is not one of"),
        ({"inputs": ["water", "water"]}, "inputs", "repeated"),
        ({"normalisation": [{"zscore": True}]}, "normalisation", "1 entries for 2 inputs"),
        (
            {"normalisation": [{"window": [5, 1]}, {"zscore": True}]},
            "normalisation[0]",
            "lo must be below hi",
        ),
        (
            {"normalisation": [{"window": [0, 1], "zscore": True}, {"zscore": True}]},
            "normalisation[0]",
            "one",
        ),
        ({"normalisation": [{"zscore": True}, {"scale": 2}]}, "normalisation[1]", "'scale'"),
        ({"labels": {"0": "bg", "1": "liver"}}, "labels", "id 0 must be 'background'"),
        ({"labels": {"1": "liver", "2": "spleen"}}, "labels", "id 0 must be 'background'"),
        ({"labels": {"0": "background", "1": "liver", "2": "liver"}}, "labels", "['liver']"),
        ({"labels": {"0": "background", "1": "liver", "01": "spleen"}}, "labels", "id 1 appears twice"),
        ({"labels": {"0": "background", "-1": "liver"}}, "labels", "'-1'"),
        ({"labels": {"0": "background"}}, "labels", "at least one class"),
        ({"inptus": ["water"]}, "inptus", "unknown key"),
        ({"weights": ...}, "weights", "missing"),
        ({"format": "onnx"}, "format", "'onnx' is not one of"),
        ({"architecture": {}}, "architecture", "state_dict"),
        ({"spacing_mm": [3.0, 0.0, 2.2]}, "spacing_mm", "positive"),
        ({"patch_size": [32, 64.5, 64]}, "patch_size", "integers"),
        ({"weights": "/models/body-unet.pt"}, "weights", "relative"),
        ({"weights": "body-unet.onnx"}, "weights", ".pt"),
        ({"name": ""}, "name", "non-empty"),
        ({"card_version": 2}, "card_version", "2"),
        ({"card_version": 2, "new_field": 1}, "card_version", "2"),
    ],
)
def test_invalid_json_card_names_file_and_field(
    tmp_path: Path, changes: dict[str, Any], field: str, detail: str
) -> None:
    path, message = load_error(tmp_path, changes)
    assert message.startswith(f"{path}: {field}") or (message.startswith(f"{path}: ") and field in message)
    assert "model.json" in message and field in message and detail in message


def test_invalid_toml_and_json_files(tmp_path: Path) -> None:
    path = tmp_path / "model.toml"
    path.write_text(TOML.replace('format = "torchscript"', 'format = "torchscript"\nformt = "state_dict"'))
    with pytest.raises(ModelCardError, match=r"model\.toml: unknown key.*'formt'"):
        ModelCard.load(path)
    path.write_text(TOML.replace('"fat_fraction"', '"fat fraction"'))
    with pytest.raises(ModelCardError, match=r"model\.toml: inputs: 'fat fraction' is not one of"):
        ModelCard.load(path)
    path.write_text("name = ")
    with pytest.raises(ModelCardError, match=r"model\.toml: not valid TOML"):
        ModelCard.load(path)
    bad_json = tmp_path / "model.json"
    bad_json.write_text('{"name": "a", "name": "b"}')
    with pytest.raises(ModelCardError, match=r"model\.json: key 'name' appears twice"):
        ModelCard.load(bad_json)
    bad_json.write_text("[1, 2]")
    with pytest.raises(ModelCardError, match=r"model\.json: expected a table"):
        ModelCard.load(bad_json)
    with pytest.raises(ModelCardError, match=r"model\.yaml"):
        ModelCard.load(tmp_path / "model.yaml")


def test_normalisation_needs_exactly_one_mode() -> None:
    with pytest.raises(ModelCardError, match="exactly one"):
        Normalisation()
    with pytest.raises(ModelCardError, match="exactly one"):
        Normalisation(window=(0.0, 1.0), zscore=True)
    with pytest.raises(ModelCardError, match="window"):
        Normalisation(window=(0.0, float("inf")))
    assert Normalisation(window=[0, 2]).window == (0.0, 2.0)


def test_normalise_by_hand() -> None:
    card = ModelCard.from_dict(CARD)  # water: window [0, 1000]; fat: z-score
    image = np.array(
        [
            [[[-10.0, 250.0], [500.0, 1500.0]]],  # water, shape (Z=1, Y=2, X=2)
            [[[1.0, 2.0], [3.0, 4.0]]],  # fat
        ]
    )
    out = normalise(image, card)
    assert out.dtype == np.float32 and out.shape == (2, 1, 2, 2)
    # Window: clip to [0, 1000] then divide by 1000 → 0, 0.25, 0.5, 1.
    np.testing.assert_allclose(out[0].ravel(), [0.0, 0.25, 0.5, 1.0])
    # z-score: mean 2.5, population std √1.25 = 1.1180340 → ∓1.3416408, ∓0.4472136.
    np.testing.assert_allclose(out[1].ravel(), [-1.3416408, -0.4472136, 0.4472136, 1.3416408], rtol=1e-6)

    # A constant channel has std 0: zeros. NaN voxels become 0 and stay out of the statistics.
    image[1] = 7.0
    image[0, 0, 0, 0] = np.nan
    out = normalise(image, card)
    np.testing.assert_array_equal(out[1], 0.0)
    assert out[0, 0, 0, 0] == 0.0
    image[1] = [[[1.0, np.nan], [3.0, np.nan]]]  # finite values 1 and 3: mean 2, std 1
    np.testing.assert_allclose(normalise(image, card)[1].ravel(), [-1.0, 0.0, 1.0, 0.0])

    with pytest.raises(ValueError, match="2 channels"):
        normalise(image[:1], card)


# ---------------------------------------------------------------------------- cascades: roi and cascade

ROI = {"around": "liver", "margin_mm": [30, 24, 24.5]}


def test_roi_json_round_trip(tmp_path: Path) -> None:
    card = ModelCard.load(write_json(tmp_path, roi=ROI))
    assert card.roi == RegionOfInterest(around="liver", margin_mm=(30.0, 24.0, 24.5))
    assert all(type(v) is float for v in card.roi.margin_mm) and card.cascade == ()
    written = json.loads(card.to_json(tmp_path / "again.json").read_text())
    assert written["roi"] == {"around": "liver", "margin_mm": [30.0, 24.0, 24.5]} and "cascade" not in written
    assert written == {**CARD, "roi": written["roi"]}
    again = ModelCard.load(tmp_path / "again.json")
    assert again == card and hash(again) == hash(card)
    # The margin defaults to none; a RegionOfInterest is accepted as is.
    card = ModelCard.from_dict({**CARD, "roi": {"around": "liver"}})
    assert card.roi == RegionOfInterest("liver") and card.roi.margin_mm == (0.0, 0.0, 0.0)
    assert card.to_dict()["roi"] == {"around": "liver", "margin_mm": [0.0, 0.0, 0.0]}
    roi = RegionOfInterest("liver", [1, 2, 3])
    assert ModelCard.from_dict({**CARD, "roi": roi}).roi is roi and roi.margin_mm == (1.0, 2.0, 3.0)
    assert card != ModelCard.from_dict({**CARD, "roi": {"around": "liver", "margin_mm": [0, 0, 1]}})
    # The coarsest grid the model refines: written only when set, and compared axis by axis.
    limited = ModelCard.from_dict({**CARD, "roi": {"around": "liver", "max_spacing_mm": [4.5, 3.375, 3]}})
    assert limited.roi.max_spacing_mm == (4.5, 3.375, 3.0) and card.roi.max_spacing_mm is None
    assert limited.to_dict()["roi"]["max_spacing_mm"] == [4.5, 3.375, 3.0]
    assert ModelCard.from_dict(json.loads(json.dumps(limited.to_dict()))) == limited
    assert limited.roi.covers((3.0, 2.232, 2.232)) and limited.roi.covers((4.5, 3.375, 3.0))
    assert not limited.roi.covers((6.0, 2.0, 2.0)) and not limited.roi.covers((3.0, 2.0, 3.01))
    assert card.roi.covers((100.0, 100.0, 100.0))
    assert limited.runs_on((3.0, 2.232, 2.232)) and not limited.runs_on((12.0, 8.9, 8.9))
    assert ModelCard.from_dict(CARD).runs_on((12.0, 8.9, 8.9))  # no region: runs on any grid


def test_cascade_json_round_trip(tmp_path: Path) -> None:
    card = ModelCard.load(write_json(tmp_path, cascade=["spine.json", "fine/liver.TOML"]))
    assert card.cascade == ("spine.json", "fine/liver.TOML") and card.roi is None
    written = json.loads(card.to_json(tmp_path / "again.json").read_text())
    assert written["cascade"] == ["spine.json", "fine/liver.TOML"] and "roi" not in written
    assert ModelCard.load(tmp_path / "again.json") == card
    # Relative to the card's folder, whatever the current directory.
    assert cascade_paths(tmp_path / "model.json", card) == (
        tmp_path / "spine.json",
        tmp_path / "fine" / "liver.TOML",
    )
    assert cascade_paths("models/body.toml", card) == (
        Path("models/spine.json"),
        Path("models/fine/liver.TOML"),
    )
    # A plain card: no cascade, and neither key written.
    plain = ModelCard.from_dict(CARD)
    assert plain.cascade == () and plain.roi is None and cascade_paths(tmp_path / "m.json", plain) == ()
    assert "cascade" not in plain.to_dict() and "roi" not in plain.to_dict()
    assert ModelCard.from_dict({**CARD, "cascade": []}).to_dict() == plain.to_dict()


def test_roi_and_cascade_toml(tmp_path: Path) -> None:
    path = tmp_path / "model.toml"
    # Top-level keys go before the first table.
    path.write_text(
        TOML.replace('format = "torchscript"\n', 'format = "torchscript"\ncascade = ["spine.toml"]\n')
    )
    card = ModelCard.load(path)
    assert card.cascade == ("spine.toml",) and card.roi is None
    assert cascade_paths(path, card) == (tmp_path / "spine.toml",)
    assert ModelCard.load(card.to_json(tmp_path / "model.json")) == card

    path.write_text(TOML + '\n[roi]\naround = "spleen"\nmargin_mm = [10, 5.5, 0]\n')
    card = ModelCard.load(path)
    assert card.roi == RegionOfInterest("spleen", (10.0, 5.5, 0.0)) and card.cascade == ()
    assert ModelCard.load(card.to_json(tmp_path / "model.json")) == card

    path.write_text(TOML + '\n[roi]\naround = "spleen"\nmargn_mm = [10, 5.5, 0]\n')
    with pytest.raises(ModelCardError, match=r"model\.toml: roi: unknown key.*'margn_mm'"):
        ModelCard.load(path)


@pytest.mark.parametrize(
    ("changes", "prefix", "detail"),
    [
        ({"roi": {"around": "liver", "margn_mm": [1, 1, 1]}}, "roi: unknown key", "'margn_mm'"),
        ({"roi": {"margin_mm": [1, 1, 1]}}, "roi: missing required key", "'around'"),
        ({"roi": "liver"}, "roi: expected a table", "'liver'"),
        ({"roi": {"around": ""}}, "roi: around: expected a label name", "''"),
        ({"roi": {"around": "  "}}, "roi: around: expected a label name", "'  '"),
        ({"roi": {"around": 4}}, "roi: around: expected a label name", "4"),
        ({"roi": {"around": "liver", "margin_mm": [30, -1, 24]}}, "roi: margin_mm: expected", "≥ 0"),
        ({"roi": {"around": "liver", "margin_mm": [30, 24]}}, "roi: margin_mm: expected", "[30, 24]"),
        ({"roi": {"around": "liver", "margin_mm": [1, 2, 3, 4]}}, "roi: margin_mm: expected", "three"),
        ({"roi": {"around": "liver", "margin_mm": [1, True, 3]}}, "roi: margin_mm: expected", "True"),
        ({"roi": {"around": "liver", "margin_mm": [1, float("inf"), 3]}}, "roi: margin_mm", "inf"),
        ({"roi": {"around": "liver", "margin_mm": "30"}}, "roi: margin_mm: expected a list", "'30'"),
        ({"roi": {"around": "liver", "max_spacing_mm": [3, 0, 2]}}, "roi: max_spacing_mm", "positive"),
        ({"roi": {"around": "liver", "max_spacing_mm": [3, 2]}}, "roi: max_spacing_mm", "positive"),
        ({"cascade": "spine.json"}, "cascade: expected a list", "'spine.json'"),
        ({"cascade": ["spine.json", 3]}, "cascade: expected card file names", "3"),
        ({"cascade": [""]}, "cascade: expected card file names", "''"),
        ({"cascade": ["/models/spine.json"]}, "cascade: '/models/spine.json'", "relative"),
        ({"cascade": ["C:\\models\\spine.json"]}, "cascade: ", "relative"),
        ({"cascade": ["spine.yaml"]}, "cascade: 'spine.yaml' should end in one of", "'.json', '.toml'"),
        ({"cascade": ["spine"]}, "cascade: 'spine' should end in one of", ".json"),
        ({"cascade": ["a.json", "b.toml", "a.json"]}, "cascade: a card is repeated", "'a.json'"),
        ({"cascade": ["a.json", "./a.json"]}, "cascade: a card is repeated", "'./a.json'"),
        ({"cascade": ["a.json"], "roi": {"around": "liver"}}, "cascade: a model that runs inside", "roi"),
        ({"cascad": ["a.json"]}, "unknown key", "'cascad'"),
    ],
)
def test_invalid_roi_or_cascade_names_the_field(
    tmp_path: Path, changes: dict[str, Any], prefix: str, detail: str
) -> None:
    path, message = load_error(tmp_path, changes)
    assert message.startswith(f"{path}: {prefix}"), message
    assert detail in message, message


def test_region_of_interest_constructed() -> None:
    roi = RegionOfInterest("vertebral_body", (30, 24, 24))
    assert roi.margin_mm == (30.0, 24.0, 24.0) and roi.to_dict() == {
        "around": "vertebral_body",
        "margin_mm": [30.0, 24.0, 24.0],
    }
    assert RegionOfInterest.from_dict(roi.to_dict()) == roi and hash(
        RegionOfInterest.from_dict(roi.to_dict())
    ) == hash(roi)
    with pytest.raises(dataclasses.FrozenInstanceError):
        roi.around = "disc"  # type: ignore[misc]
    with pytest.raises(ModelCardError, match=r"^margin_mm: expected three numbers ≥ 0"):
        RegionOfInterest("disc", (0, 0, -0.5))
    with pytest.raises(ModelCardError, match=r"^around: "):
        RegionOfInterest(None)  # type: ignore[arg-type]
    with pytest.raises(ModelCardError, match=r"^unknown key"):
        RegionOfInterest.from_dict({"around": "disc", "margin": [1, 1, 1]})
    with pytest.raises(ModelCardError, match="expected a table"):
        RegionOfInterest.from_dict(["disc"])  # type: ignore[arg-type]
    # On a constructed card, the field is named too (no file).
    with pytest.raises(ModelCardError, match=r"^roi: margin_mm: "):
        ModelCard.from_dict({**CARD, "roi": {"around": "liver", "margin_mm": [-1, 0, 0]}})
    with pytest.raises(ModelCardError, match=r"^cascade: a model that runs inside a region"):
        ModelCard.from_dict({**CARD, "roi": roi, "cascade": ("spine.json",)})
    card = ModelCard.from_dict({**CARD, "cascade": ("spine.json", "liver.toml")})
    assert card.cascade == ("spine.json", "liver.toml")
