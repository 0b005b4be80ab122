"""The command line as a user runs it: synth, demo (the README's main job) and bad settings."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from click.testing import CliRunner

from cohortscale.cli import main


def test_synth_command(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main,
        [
            "synth",
            "--participants",
            "2",
            "--scale",
            "0.25",
            "--out",
            str(tmp_path),
            "--set",
            "repeat_visit_rate=0",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "2 participants, 2 imaging visits" in result.output
    assert len(list((tmp_path / "bulk").glob("*_20201_2_0.zip"))) == 2
    phenotypes = pd.read_csv(tmp_path / "phenotypes.csv")
    assert list(phenotypes.columns[:1]) == ["eid"] and len(phenotypes) == 2


def test_demo_writes_a_report(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = CliRunner().invoke(
        main, ["demo", "--out", str(out), "--set", "participants=2", "--set", "workers=1"]
    )
    assert result.exit_code == 0, result.output
    page = (out / "report.html").read_text()
    assert '<img src="coronal.png"' in page and "Phenotypes against the published cohorts" in page
    assert (out / "coronal.png").stat().st_size > 10_000 and (out / "multiecho.png").exists()


def test_bad_setting_is_reported(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["synth", "--out", str(tmp_path), "--set", "anomalies.nonsense=1"])
    assert result.exit_code != 0
    assert "anomalies.nonsense" in result.output and "Traceback" not in result.output
