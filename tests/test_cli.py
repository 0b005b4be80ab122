"""The command line as a user runs it: synth, demo (the README's main job) and bad settings."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from click.testing import CliRunner

from cohortscale.cli import main
from cohortscale.io.ledger import Ledger
from conftest import ingested


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
    assert "Ingest: bulk zips" in page and "ingest:" in result.output
    assert "Fitting: multi-echo slices" in page and "fitting:" in result.output
    fitted = Ledger(out / "cohort.zarr").read("fitting")
    assert len(fitted) == 2 and set(fitted["status"]) <= {"done", "quarantined"}
    recorded = Ledger(out / "cohort.zarr").read("ingest")
    assert len(recorded) == 2 and set(recorded["status"]) <= {"done", "quarantined"}
    assert (out / "cohort.zarr" / "manifest.parquet").exists()
    assert (out / "coronal.png").stat().st_size > 10_000 and (out / "multiecho.png").exists()
    # The main job ends with the IDP table: one row per visit, and its section in the report.
    assert "Measures: one row of image-derived phenotypes" in page and '<img src="idps.png"' in page
    assert f"IDP table: {out / 'idps.parquet'}" in result.output
    assert len(pd.read_parquet(out / "idps.parquet")) == 2
    # ... and the statistics of the study recipes, linked from the page.
    assert 'href="analysis/report.html"' in page and (out / "analysis" / "report.html").exists()


def test_bad_setting_is_reported(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["synth", "--out", str(tmp_path), "--set", "anomalies.nonsense=1"])
    assert result.exit_code != 0
    assert "anomalies.nonsense" in result.output and "Traceback" not in result.output


def test_ingest_and_status_commands(make_cohort, tmp_path: Path) -> None:
    cohort = make_cohort("corrupt", participants=1, seed=5, **{"anomalies.corrupt_zip": 1.0})
    store = tmp_path / "store.zarr"
    args = ["ingest", str(cohort / "bulk"), "--store", str(store), "--workers", "1"]
    lenient = CliRunner().invoke(main, args)
    assert lenient.exit_code == 0, lenient.output
    assert "1 quarantined" in lenient.output
    strict = CliRunner().invoke(main, [*args, "--strict"])
    assert strict.exit_code == 1  # nothing new to do, but the cohort still holds a quarantined visit
    status = CliRunner().invoke(main, ["status", str(store)])
    assert status.exit_code == 0 and "corrupt_zip" in status.output and "quarantined" in status.output


def test_fit_command(make_cohort, tmp_path: Path) -> None:
    cohort = make_cohort("no_multiecho", participants=1, seed=5, **{"anomalies.missing_multiecho": 1.0})
    store = ingested(cohort, tmp_path / "store.zarr")
    args = ["fit", str(store), "--workers", "1", "--set", "fitting.options.iterations=4"]
    lenient = CliRunner().invoke(main, args)
    assert lenient.exit_code == 0, lenient.output
    assert "fitting: 0 done, 1 quarantined" in lenient.output and "no_multiecho 1" in lenient.output
    assert CliRunner().invoke(main, [*args, "--strict"]).exit_code == 1
    status = CliRunner().invoke(main, ["status", str(store)])
    assert "fitting" in status.output and "no_multiecho" in status.output
    bad = CliRunner().invoke(main, ["fit", str(store), "--set", "fitting.spectrum=olive_oil"])
    assert bad.exit_code == 2 and "olive_oil" in bad.output and "Traceback" not in bad.output
    bad = CliRunner().invoke(main, ["fit", str(store), "--set", "fitting.options.model=free"])
    assert bad.exit_code == 2 and "got 'free" in bad.output and "Traceback" not in bad.output


def test_analyse_and_report(tmp_path: Path) -> None:
    """analyse runs recipes on a phenotype-only cohort, prints the models' summaries and writes the report;
    report rewrites it from the result folders; a bad recipe name is a usage error."""
    cohort = tmp_path / "pheno"
    made = CliRunner().invoke(main, ["synth", "--participants", "1500", "--no-images", "--out", str(cohort)])
    assert made.exit_code == 0, made.output
    args = ["--idps", str(cohort / "truth" / "idps.csv"), "--phenotypes", str(cohort / "phenotypes.csv")]
    out = tmp_path / "results"
    result = CliRunner().invoke(main, ["analyse", *args, "--recipe", "thigh", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "thigh: 1500 participants, 5 steps" in result.output and "per decade" in result.output
    assert (out / "thigh" / "pa_tertiles.csv").exists() and (out / "report.html").exists()
    (out / "report.html").unlink()
    again = CliRunner().invoke(main, ["report", str(out)])
    assert again.exit_code == 0 and (out / "report.html").exists()
    bad = CliRunner().invoke(main, ["analyse", *args, "--recipe", "nope", "--out", str(out)])
    assert bad.exit_code == 2 and "no packaged recipe" in bad.output


def test_run_on_a_folder_without_bulk_zips(tmp_path: Path) -> None:
    """A run pointed at a folder holding no bulk zips is a usage error, not an empty table."""
    (tmp_path / "bulk").mkdir()
    result = CliRunner().invoke(
        main, ["run", str(tmp_path / "bulk"), "--store", str(tmp_path / "c.zarr"), "--workers", "1"]
    )
    assert result.exit_code == 2 and "no UK Biobank bulk zips" in result.output
