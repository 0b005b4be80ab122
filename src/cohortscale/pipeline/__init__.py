"""Dask orchestration: stages mapped over a cohort in batches, resumable through the ledger."""

from cohortscale.pipeline.cluster import ClusterConfig, connect
from cohortscale.pipeline.engine import EngineConfig, Outcome, Stage, StageReport, Visit, run_stage

__all__ = [
    "ClusterConfig",
    "EngineConfig",
    "Outcome",
    "Stage",
    "StageReport",
    "Visit",
    "connect",
    "run_stage",
]
