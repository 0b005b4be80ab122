"""Typed configuration from TOML and command-line overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from cohortscale.config import SynthConfig, config_to_dict, load_config


def test_defaults_file_and_overrides(tmp_path: Path) -> None:
    toml = tmp_path / "synth.toml"
    toml.write_text(
        "participants = 12\nscale = 0.5\nmultiecho_fields = [20254, 20203]\n[anomalies]\ncorrupt_zip = 0.2\n"
    )
    config = load_config(SynthConfig, toml, ["seed=9", "anomalies.swap_leg=0.3", "images=false"])
    assert config.participants == 12 and config.scale == 0.5 and config.seed == 9
    assert config.multiecho_fields == (20254, 20203)
    assert config.anomalies.corrupt_zip == 0.2 and config.anomalies.swap_leg == 0.3
    assert config.anomalies.duplicate_station == SynthConfig().anomalies.duplicate_station
    assert config.images is False
    assert load_config(SynthConfig, overrides=config_to_dict(config)) == config


@pytest.mark.parametrize(
    ("override", "error"),
    [
        ("partcipants=3", KeyError),
        ("participants=three", ValueError),
        ("scale=2", ValueError),
        ("multiecho_fields=20999", ValueError),
        ("anomalies.nonsense=1", KeyError),
        ("participants", ValueError),
    ],
)
def test_bad_settings_fail_loudly(override: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        load_config(SynthConfig, overrides=[override])
