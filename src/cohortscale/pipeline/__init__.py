"""Dask orchestration: stages mapped over a cohort in batches, resumable through the ledger."""

from cohortscale.pipeline.cluster import ClusterConfig, connect
from cohortscale.pipeline.engine import EngineConfig, Outcome, Stage, StageReport, Visit, run_stage
from cohortscale.pipeline.fitting import FittingConfig, run_fitting
from cohortscale.pipeline.fusion import FusionConfig, run_fusion
from cohortscale.pipeline.segmentation import SegmentationConfig, run_segmentation

__all__ = [
    "ClusterConfig",
    "EngineConfig",
    "FittingConfig",
    "FusionConfig",
    "Outcome",
    "SegmentationConfig",
    "Stage",
    "StageReport",
    "Visit",
    "connect",
    "run_fitting",
    "run_fusion",
    "run_segmentation",
    "run_stage",
]
