"""The end-to-end run: bulk zips → ingest → fuse → segment → fit → measure → IDP table, on one cluster.

Each stage is resumable on its own (its ledger says what is settled), so the run is too: killed anywhere
and started again, it redoes only the work in flight; a finished run started again does no work. Settings
are grouped in :class:`RunConfig` so one TOML file (or ``--set section.key=value``) configures it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from cohortscale.models.card import ModelCard
from cohortscale.pipeline.cluster import ClusterConfig, connect
from cohortscale.pipeline.engine import EngineConfig, Stage, StageReport, Visit, run_stage
from cohortscale.pipeline.fitting import FittingConfig, prepare_fitting
from cohortscale.pipeline.fusion import FusionConfig, prepare_fusion
from cohortscale.pipeline.ingest import IngestConfig, consolidate_manifest, prepare_ingest
from cohortscale.pipeline.measure import MeasureConfig, prepare_measure
from cohortscale.pipeline.reduce import IdpTables, reduce_idps
from cohortscale.pipeline.segmentation import SegmentationConfig, prepare_segmentation


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
    measure : MeasureConfig
        Label set, ROI thresholds and pixel quality of the measure stage.
    """

    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    fitting: FittingConfig = field(default_factory=FittingConfig)
    segmentation: SegmentationConfig = field(default_factory=SegmentationConfig)
    measure: MeasureConfig = field(default_factory=MeasureConfig)


@dataclass
class RunSummary:
    """What :func:`run_cohort` did: each stage's report, the IDP table and the wall time.

    ``str()`` gives the summary a user reads at the end of a run: per stage, visits done / quarantined /
    failed / already complete and seconds per visit; then participants measured, excluded and why.
    """

    reports: list[StageReport]
    tables: IdpTables
    seconds: float

    def __str__(self) -> str:
        header = f"{'stage':<13}{'done':>6}{'quar.':>7}{'failed':>8}{'skipped':>9}{'wall s':>9}{'s/visit':>9}"
        lines = [header]
        for r in self.reports:
            per_visit = "" if math.isnan(r.seconds_per_visit) else f"{r.seconds_per_visit:.3g}"
            lines.append(
                f"{r.stage:<13}{r.done:>6}{r.quarantined:>7}{r.failed:>8}{r.skipped:>9}"
                f"{r.seconds:>9.1f}{per_visit:>9}"
            )
        table = self.tables.table
        counts = self.tables.counts()
        lines.append(
            f"participants: {counts.get('measured', 0)} measured, {counts.get('excluded', 0)} excluded, "
            f"{counts.get('failed', 0)} failed, {counts.get('pending', 0)} pending (of {len(table)} visits)"
        )
        reasons = table.loc[table["status"] != "measured", "reason"].value_counts()
        lines.extend(f"  excluded: {reason} ({n})" for reason, n in reasons.items() if reason)
        qc = table.filter(like="qc_")
        for column in qc.columns:
            for reason, n in qc[column][qc[column] != ""].value_counts().items():
                lines.append(f"  {column[3:]} measures missing: {reason} ({n})")
        lines.append(f"run time: {self.seconds:.1f} s")
        lines.append(f"IDP table: {self.tables.parquet} (and {self.tables.csv.name})")
        return "\n".join(lines)


def _stages(
    bulk: str | Path, store: str | Path, config: RunConfig
) -> list[Callable[[], tuple[Stage, list[Visit]]]]:
    """Each stage's preparation, in run order: it readies the store and returns the stage and its visits."""

    def ingest() -> tuple[Stage, list[Visit]]:
        stage, visits = prepare_ingest(bulk, store, config.ingest)
        if not visits:
            raise ValueError(f"no UK Biobank bulk zips (<eid>_<field>_<instance>_<array>.zip) in {bulk}")
        return stage, visits

    def measure() -> tuple[Stage, list[Visit]]:
        measure_config = config.measure
        if measure_config.labels is None:
            measure_config = replace(
                measure_config, labels=ModelCard.load(config.segmentation.card_path()).name
            )
        return prepare_measure(store, measure_config)

    return [
        ingest,
        lambda: prepare_fusion(store, config.fusion),
        lambda: prepare_segmentation(store, config.segmentation),
        lambda: prepare_fitting(store, config.fitting),
        measure,
    ]


def run_cohort(
    bulk: str | Path,
    store: str | Path,
    config: RunConfig | None = None,
    table_dir: str | Path | None = None,
) -> RunSummary:
    """Run every stage on the cohort of ``bulk`` into ``store`` on one Dask cluster, then reduce the IDPs.

    Parameters
    ----------
    bulk : path-like
        Directory of UK Biobank bulk zips (read once; later runs ingest only new or changed zips).
    store : path-like
        Cohort store (created or extended).
    config : RunConfig, optional
    table_dir : path-like, optional
        Where ``idps.parquet`` and ``idps.csv`` go; default the store's parent directory.

    Returns
    -------
    RunSummary
    """
    config = config or RunConfig()
    start = time.perf_counter()
    reports = []
    with connect(config.cluster) as client:
        for prepare in _stages(bulk, store, config):
            stage, visits = prepare()
            reports.append(run_stage(stage, visits, store, client, config.engine))
            if stage.name == "ingest":
                consolidate_manifest(store)
    tables = reduce_idps(store, table_dir)
    return RunSummary(reports, tables, time.perf_counter() - start)
