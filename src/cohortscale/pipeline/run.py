"""Settings of a pipeline run, grouped so one TOML file (or ``--set section.key=value``) configures it."""

from __future__ import annotations

from dataclasses import dataclass, field

from cohortscale.pipeline.cluster import ClusterConfig
from cohortscale.pipeline.engine import EngineConfig
from cohortscale.pipeline.fitting import FittingConfig
from cohortscale.pipeline.fusion import FusionConfig
from cohortscale.pipeline.ingest import IngestConfig
from cohortscale.pipeline.segmentation import SegmentationConfig


@dataclass(frozen=True)
class RunConfig:
    """Cluster, engine and per-stage settings of a run.

    Attributes
    ----------
    cluster : ClusterConfig
        Where the work runs (embedded LocalCluster, LocalCUDACluster or a scheduler address).
    engine : EngineConfig
        Batching, window of tasks in flight, retries, progress display.
    ingest : IngestConfig
        Series patterns, archive limits, phase scaling of the ingest stage.
    fusion : FusionConfig
        Fused grid, blending, ghost trimming, fat–water swap handling and device of the fusion stage.
    fitting : FittingConfig
        Fat spectrum, phase sign, combination of dynamics, fit options and device of the fitting stage.
    segmentation : SegmentationConfig
        Model card, device, patches per network call and patch overlap of the segmentation stage.
    """

    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    fitting: FittingConfig = field(default_factory=FittingConfig)
    segmentation: SegmentationConfig = field(default_factory=SegmentationConfig)
