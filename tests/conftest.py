"""Shared fixtures: small synthetic cohorts generated once per test session."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from cohortscale.config import AnomalyRates, SynthConfig, load_config
from cohortscale.pipeline.cluster import ClusterConfig
from cohortscale.pipeline.engine import EngineConfig
from cohortscale.pipeline.ingest import run_ingest
from cohortscale.synth import synthesize

NO_ANOMALIES = {f"anomalies.{f.name}": 0.0 for f in dataclasses.fields(AnomalyRates)}


def make_config(**overrides: object) -> SynthConfig:
    """A quarter-scale config with no anomalies or repeat visits unless asked (dotted keys override)."""
    settings = {"scale": 0.25, "participants": 1, "repeat_visit_rate": 0.0, **NO_ANOMALIES, **overrides}
    return load_config(SynthConfig, overrides=settings)


@pytest.fixture(scope="session")
def make_cohort(tmp_path_factory: pytest.TempPathFactory):
    """Generate (once per session and settings) a cohort and return its directory."""
    cache: dict[str, Path] = {}

    def _make(name: str, **overrides: object) -> Path:
        if name not in cache:
            out = tmp_path_factory.mktemp(name)
            synthesize(make_config(**overrides), out, progress=False)
            cache[name] = out
        return cache[name]

    return _make


@pytest.fixture(scope="session")
def clean_cohort(make_cohort) -> Path:
    """Three participants, quarter scale, both multi-echo protocols, all with a repeat visit, no anomalies."""
    return make_cohort("clean", participants=3, multiecho_fields="20254,20203", repeat_visit_rate=1.0, seed=7)


@pytest.fixture(scope="session")
def noiseless_cohort(make_cohort) -> Path:
    """One half-scale participant without noise or slab roll-off, for signal-model checks."""
    return make_cohort(
        "noiseless",
        scale=0.5,
        dixon_snr=1e7,
        multiecho_snr=1e7,
        edge_rolloff=0.0,
        multiecho_fields="20254,20203",
    )


ALL_BUT_CORRUPT = {
    f"anomalies.{name}": 1.0
    for name in (
        "duplicate_station",
        "missing_series",
        "short_station",
        "swap_station",
        "swap_leg",
        "ghost_slices",
        "truncated_dicom",
        "size_mismatch",
    )
}


@pytest.fixture(scope="session")
def anomalous(make_cohort) -> Path:
    """Two participants with every anomaly but a corrupt zip."""
    return make_cohort("anomalous", participants=2, seed=11, **ALL_BUT_CORRUPT)


def ingested(cohort: Path, store: Path) -> Path:
    """Ingest ``cohort``'s bulk zips into ``store`` on a small embedded cluster."""
    run_ingest(
        cohort / "bulk",
        store,
        cluster=ClusterConfig(workers=2, threads=1),
        engine=EngineConfig(progress=False),
    )
    return store


@pytest.fixture(scope="session")
def clean_store(clean_cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The clean cohort ingested (read-only for tests: copy it before running later stages on it)."""
    return ingested(clean_cohort, tmp_path_factory.mktemp("ingest") / "clean.zarr")


@pytest.fixture(scope="session")
def anomalous_store(anomalous: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The anomalous cohort ingested (read-only for tests)."""
    return ingested(anomalous, tmp_path_factory.mktemp("ingest") / "anomalous.zarr")
