"""The engine: map a stage over a cohort's visits on Dask, in batches, resumably.

A stage is an object with a ``process(visits) -> outcomes`` method that runs on a worker, writes its
outputs to the cohort store and returns one :class:`Outcome` per visit. :func:`run_stage`

* skips visits whose latest ledger record for the stage is "done" or "quarantined";
* groups the rest into batches of about ``EngineConfig.batch_seconds`` of work (one Dask task each);
* keeps at most ``EngineConfig.window`` tasks in flight, so the graph never grows with the cohort;
* has each task record its outcomes in the ledger before returning, so a killed client loses nothing
  that finished; a task that still raises after Dask's retries marks its visits "failed" (reason
  ``task_error``), and the next run tries them again.
"""

from __future__ import annotations

import hashlib
import math
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

import distributed
import pandas as pd
from tqdm.auto import tqdm

from cohortscale.config import config_to_dict
from cohortscale.io.ledger import STATUSES, Ledger, Outcome
from cohortscale.io.store import open_store, participant_rows
from cohortscale.pipeline.cluster import GPU_RESOURCE, ClusterConfig, announce_dashboard, connect

__all__ = [
    "EngineConfig",
    "Outcome",
    "Stage",
    "StageReport",
    "Visit",
    "ready_visits",
    "run_stage",
    "store_visits",
]

#: Batch size when neither the configuration, the caller nor earlier runs say what a visit costs. One
#: visit per task is right for the expensive stages (ingest: tens of seconds per visit); cheap stages
#: grow their batches from the first measured tasks.
DEFAULT_BATCH_SIZE = 1
#: Upper bound on visits per task, so that one failing task never takes a large share of a run with it.
MAX_BATCH_SIZE = 512
#: In-flight window when not configured: this many tasks per worker thread, and never fewer than
#: MIN_WINDOW, so that every thread has its next task queued while it works on the current one.
WINDOW_PER_THREAD = 2
MIN_WINDOW = 4
#: Reason code of visits whose task raised on every attempt.
TASK_ERROR = "task_error"
#: Reason code of visits requeued because an upstream stage processed them again.
UPSTREAM_CHANGED = "upstream_changed"
#: Ledger statuses that settle a visit for a stage; "failed" visits are pending again.
SETTLED = ("done", "quarantined")
#: Hex digits of the per-run token in task keys.
RUN_TOKEN_DIGITS = 6


@dataclass(frozen=True)
class Visit:
    """One imaging visit of one participant: the unit every stage processes.

    Attributes
    ----------
    key : str
        ``"<eid>_<instance>"``, e.g. ``"1000107_2"``: the participant id used in the store and ledger.
    eid : int
        UK Biobank participant id.
    instance : int
        Assessment instance (2 = first imaging visit, 3 = repeat).
    index : int
        Row of this visit along the store's ``participant`` axis.
    inputs : dict of str to str
        Bulk files by UK Biobank field, e.g. ``{"20201": "/bulk/1000107_20201_2_0.zip"}``.
    """

    key: str
    eid: int
    instance: int
    index: int
    inputs: dict[str, str] = field(default_factory=dict)


class Stage(Protocol):
    """What :func:`run_stage` maps over a cohort.

    Attributes
    ----------
    name : str
        Stage name, e.g. ``"ingest"``; names the ledger directory and the Dask task keys.
    gpu : bool
        Ask for one ``GPU`` resource per task when some worker advertises one.

    Notes
    -----
    The attributes are declared as read-only properties so that plain attributes, class attributes
    and frozen dataclass fields all satisfy the protocol. Stage objects are pickled to the workers.
    ``process`` must write its outputs to the store before it returns, must be safe to run twice for
    the same visits, and must report bad input as a "quarantined" outcome rather than raise; it may
    raise for infrastructure problems, which the engine retries.
    """

    @property
    def name(self) -> str:
        """Stage name."""
        ...

    @property
    def gpu(self) -> bool:
        """Whether tasks want a GPU."""
        ...

    def process(self, visits: list[Visit]) -> list[Outcome]:
        """Process ``visits`` on a worker; one outcome per visit."""
        ...


@dataclass(frozen=True)
class EngineConfig:
    """How :func:`run_stage` cuts the work into tasks.

    Attributes
    ----------
    batch_seconds : float
        Target worker time per task, s. With a per-visit cost (given, from earlier runs, or measured as
        tasks finish) it sets the batch size; tasks of ≥ 1 s keep Dask's ~1 ms per-task overhead negligible.
    batch_size : int, optional
        Visits per task, overriding ``batch_seconds`` (batches are then consecutive runs of the pending
        visits in the given order).
    window : int, optional
        Most tasks in flight (submitted, not yet collected); default ``max(4, 2 × worker threads)``.
    retries : int
        Extra attempts Dask makes for a task that raises before its visits are marked "failed".
    progress : bool
        Show a progress bar per stage.
    """

    batch_seconds: float = 2.0
    batch_size: int | None = None
    window: int | None = None
    retries: int = 2
    progress: bool = True

    def __post_init__(self) -> None:
        if self.batch_seconds <= 0:
            raise ValueError(f"batch_seconds must be positive, got {self.batch_seconds}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1, got {self.batch_size}")
        if self.window is not None and self.window < 1:
            raise ValueError(f"window must be ≥ 1, got {self.window}")
        if self.retries < 0:
            raise ValueError(f"retries must be ≥ 0, got {self.retries}")


@dataclass
class StageReport:
    """What one :func:`run_stage` call did.

    Attributes
    ----------
    stage : str
    done, quarantined, failed : int
        Visits with each outcome in this run.
    skipped : int
        Visits already settled (done or quarantined) before this run, not processed again.
    seconds : float
        Wall time of the run, s.
    seconds_per_visit : float
        Mean worker time per processed visit, s (nan when nothing was processed).
    reasons : dict of str to int
        Count of each reason among this run's quarantined and failed visits.
    """

    stage: str
    done: int = 0
    quarantined: int = 0
    failed: int = 0
    skipped: int = 0
    seconds: float = 0.0
    seconds_per_visit: float = math.nan
    reasons: dict[str, int] = field(default_factory=dict)

    @property
    def processed(self) -> int:
        """Visits processed in this run."""
        return self.done + self.quarantined + self.failed

    def __str__(self) -> str:
        text = (
            f"{self.stage}: {self.done} done, {self.quarantined} quarantined, {self.failed} failed, "
            f"{self.skipped} already complete, in {self.seconds:.1f} s"
        )
        if self.processed:
            text += f" ({self.seconds_per_visit:.3g} s per visit in a worker)"
        if self.reasons:
            ordered = sorted(self.reasons.items(), key=lambda kv: (-kv[1], kv[0]))
            text += "; reasons: " + ", ".join(f"{reason} {n}" for reason, n in ordered)
        return text


def _complete_outcomes(visits: Sequence[Visit], outcomes: Sequence[Outcome], seconds: float) -> list[Outcome]:
    """Check that a stage answered for exactly its visits, and fill in missing times.

    A visit without an outcome is a stage bug; it is recorded as failed (and so retried) rather than
    silently dropped. Outcomes without a time get an equal share of the batch's wall time ``seconds``.
    """
    wanted = {v.key for v in visits}
    unknown = sorted({o.participant for o in outcomes} - wanted)
    if unknown:
        raise ValueError(f"stage returned outcomes for visits it was not given: {unknown[:3]}")
    share = seconds / max(len(visits), 1)
    by_key = {o.participant: o if o.seconds > 0 else replace(o, seconds=share) for o in outcomes}
    missing = [
        Outcome(
            v.key,
            "failed",
            "missing_outcome",
            f"Participant {v.key}: the stage returned no outcome for this visit (a stage bug).",
            share,
        )
        for v in visits
        if v.key not in by_key
    ]
    return [*by_key.values(), *missing]


def _run_batch(stage: Stage, batch: list[Visit], store: str) -> list[Outcome]:
    """Run ``stage`` over ``batch`` on a worker and record the outcomes in the ledger before returning.

    Exceptions from ``stage.process`` propagate so that Dask retries the task.
    """
    start = time.perf_counter()
    outcomes = stage.process(batch)
    outcomes = _complete_outcomes(batch, outcomes, time.perf_counter() - start)
    # Durable before returning: a client that dies after this point loses nothing.
    Ledger(store).record(stage.name, outcomes)
    return outcomes


def pending_visits(
    stage: str, visits: Sequence[Visit], store: str | Path
) -> tuple[list[Visit], pd.DataFrame]:
    """Visits of ``stage`` not yet settled in the ledger, and the ledger's latest records.

    Parameters
    ----------
    stage : str
    visits : sequence of Visit
        Keys must be unique.
    store : path-like

    Returns
    -------
    pending : list of Visit
        In the given order.
    latest : pandas.DataFrame
        :meth:`Ledger.read` of the stage.
    """
    keys = [v.key for v in visits]
    if len(set(keys)) != len(keys):
        duplicated = sorted(k for k, n in Counter(keys).items() if n > 1)
        raise ValueError(f"visit keys must be unique; repeated: {duplicated[:3]}")
    latest = Ledger(store).read(stage)
    settled = set(latest.loc[latest["status"].isin(SETTLED), "participant"])
    return [v for v in visits if v.key not in settled], latest


def store_visits(store: str | Path) -> list[Visit]:
    """Every visit of the cohort store as an engine visit, by key (no input files: the stages after
    ingest read the store)."""
    root = open_store(store, mode="r")
    eids, instances = root["eid"][:], root["instance"][:]
    return [
        Visit(key, int(eids[i]), int(instances[i]), i) for key, i in sorted(participant_rows(root).items())
    ]


def ready_visits(
    stage: str,
    upstream: str,
    visits: Sequence[Visit],
    store: str | Path,
    optional: bool = False,
) -> list[Visit]:
    """Visits ``stage`` can process: those whose ``upstream`` stage is done (or settled, if optional).

    The ledger of ``stage`` is brought up to date first: a visit that ``upstream`` processed again after
    ``stage`` last settled it (new input, a rerun) gets a "failed" record with reason
    ``upstream_changed``, so the engine processes it again; a visit ``upstream`` quarantined is
    quarantined here too (reason ``<upstream>_quarantined``), so every stage accounts for every visit —
    unless the upstream stage is ``optional`` to this one, which then runs on what the upstream could do.

    Parameters
    ----------
    stage, upstream : str
        Stage names, e.g. ``"fusion"`` and ``"ingest"``.
    visits : sequence of Visit
    store : path-like
    optional : bool
        Whether ``stage`` also runs for visits ``upstream`` quarantined (e.g. measures of a visit without
        a multi-echo slice to fit still include its volumes).

    Returns
    -------
    list of Visit
        In the given order.
    """
    ledger = Ledger(store)
    before = ledger.read(upstream).set_index("participant")
    mine = ledger.read(stage).set_index("participant")
    updates = []
    for visit in visits:
        if visit.key not in before.index:
            continue
        status = before.at[visit.key, "status"]
        settled_after = visit.key in mine.index and mine.at[visit.key, "time"] >= before.at[visit.key, "time"]
        if status == "done" or (optional and status == "quarantined"):
            if visit.key in mine.index and not settled_after and mine.at[visit.key, "status"] in SETTLED:
                message = f"Participant {visit.key}: {upstream} ran again after {stage}; {stage} runs again."
                updates.append(Outcome(visit.key, "failed", UPSTREAM_CHANGED, message))
        elif status == "quarantined" and not settled_after:
            reason = before.at[visit.key, "reason"]
            message = f"Participant {visit.key}: quarantined by {upstream} ({reason}); nothing to {stage}."
            updates.append(Outcome(visit.key, "quarantined", f"{upstream}_quarantined", message))
    ledger.record(stage, updates)
    accepted = SETTLED if optional else ("done",)
    return [v for v in visits if v.key in before.index and before.at[v.key, "status"] in accepted]


def requeue_done(store: str | Path, stage: str, reason: str, message: str) -> None:
    """Record every visit done in ``stage`` as failed with ``reason``, so that the next run does it again.

    ``message`` is formatted with the participant key (e.g. "participant {}: settings changed").
    """
    ledger = Ledger(store)
    records = ledger.read(stage)
    again = records.loc[records["status"] == "done", "participant"]
    ledger.record(stage, [Outcome(k, "failed", reason, message.format(k)) for k in again])


def placement_settings(config) -> dict:
    """A stage config as a dict without ``device``: the settings that shape results, not where they run."""
    settings = config_to_dict(config)
    settings.pop("device")
    return settings


def batch_size_for(batch_seconds: float, cost_per_visit_s: float | None, remaining: int, threads: int) -> int:
    """Visits in the next task.

    Parameters
    ----------
    batch_seconds : float
        Target worker time per task, s.
    cost_per_visit_s : float, optional
        Known or measured worker time per visit, s; ``None`` gives :data:`DEFAULT_BATCH_SIZE`.
    remaining : int
        Visits not yet submitted.
    threads : int
        Worker threads in the cluster.

    Returns
    -------
    int
        Between 1 and :data:`MAX_BATCH_SIZE`, and never more than an even share of ``remaining`` per
        thread, so the last tasks shrink and every thread stays busy to the end.
    """
    if cost_per_visit_s is None or cost_per_visit_s <= 0:
        size = DEFAULT_BATCH_SIZE
    else:
        size = round(batch_seconds / cost_per_visit_s)
    fair_share = math.ceil(remaining / max(threads, 1))
    return max(1, min(size, MAX_BATCH_SIZE, fair_share))


def _task_key(stage: str, batch: Sequence[Visit], run_token: str) -> str:
    """A readable, unique key: stage, first visit, batch size, content digest and run token.

    The token keeps a re-run in the same session from colliding with a released task of the previous
    run that the scheduler has not forgotten yet.
    """
    digest = hashlib.blake2b("\n".join(v.key for v in batch).encode(), digest_size=4).hexdigest()
    return f"{stage}-{batch[0].key}+{len(batch) - 1}-{digest}-{run_token}"


def _gpu_resources(stage: Stage, client: distributed.Client) -> dict[str, float] | None:
    """``{"GPU": 1}`` for a GPU stage on a cluster where some worker has a GPU; otherwise no restriction."""
    if not getattr(stage, "gpu", False):
        return None
    workers = client.scheduler_info().get("workers", {}).values()
    has_gpu = any(w.get("resources", {}).get(GPU_RESOURCE, 0) > 0 for w in workers)
    return {GPU_RESOURCE: 1} if has_gpu else None


class _Batcher:
    """Cuts pending visits into batches whose size follows the measured cost per visit."""

    def __init__(self, visits: list[Visit], config: EngineConfig, cost: float | None, threads: int) -> None:
        self.visits = visits
        self.config = config
        self.threads = threads
        self.position = 0
        # Prior cost: the caller's, else what earlier runs measured; replaced by this run's measurement.
        self.prior = cost
        self.measured_seconds = 0.0
        self.measured_visits = 0

    def observe(self, outcomes: Sequence[Outcome]) -> None:
        self.measured_seconds += sum(o.seconds for o in outcomes)
        self.measured_visits += len(outcomes)

    @property
    def cost(self) -> float | None:
        if self.measured_visits and self.measured_seconds > 0:
            return self.measured_seconds / self.measured_visits
        return self.prior

    def __iter__(self) -> Iterator[list[Visit]]:
        while self.position < len(self.visits):
            remaining = len(self.visits) - self.position
            size = self.config.batch_size or batch_size_for(
                self.config.batch_seconds, self.cost, remaining, self.threads
            )
            batch = self.visits[self.position : self.position + size]
            self.position += len(batch)
            yield batch


def _failed(
    stage: str, batch: Sequence[Visit], key: str, attempts: int, error: BaseException
) -> list[Outcome]:
    problem = f"{type(error).__name__}: {error}".strip()
    return [
        Outcome(
            v.key,
            "failed",
            TASK_ERROR,
            f"Participant {v.key}: the {stage} task {key} failed on all {attempts} attempts with {problem}; "
            "the next run will try it again.",
        )
        for v in batch
    ]


def run_stage(
    stage: Stage,
    visits: list[Visit],
    store: str | Path,
    client: distributed.Client,
    config: EngineConfig = EngineConfig(),
    cost_per_visit_s: float | None = None,
) -> StageReport:
    """Run ``stage`` over every visit not yet settled in the ledger, on ``client``'s cluster.

    Parameters
    ----------
    stage : Stage
        Picklable; its ``process`` runs on the workers.
    visits : list of Visit
        The cohort (keys unique). Visits already "done" or "quarantined" for this stage are skipped.
    store : path-like
        The cohort store, reachable from the client and every worker; the ledger lives inside it.
    client : distributed.Client
    config : EngineConfig
    cost_per_visit_s : float, optional
        Expected worker time per visit, s, to size the first batches. Default: the median of earlier
        runs' records, else :data:`DEFAULT_BATCH_SIZE` visits per task until tasks report their times.

    Returns
    -------
    StageReport
    """
    start = time.perf_counter()
    pending, latest = pending_visits(stage.name, visits, store)
    report = StageReport(stage=stage.name, skipped=len(visits) - len(pending))
    if not pending:
        report.seconds = time.perf_counter() - start
        return report

    announce_dashboard(client)
    if cost_per_visit_s is None:
        earlier = latest.loc[(latest["status"] == "done") & (latest["seconds"] > 0), "seconds"]
        cost_per_visit_s = float(earlier.median()) if len(earlier) else None
    threads = sum(client.nthreads().values())
    window = config.window or max(MIN_WINDOW, WINDOW_PER_THREAD * threads)
    resources = _gpu_resources(stage, client)
    batcher = _Batcher(pending, config, cost_per_visit_s, threads)
    batches = iter(batcher)
    run_token = uuid.uuid4().hex[:RUN_TOKEN_DIGITS]
    ledger = Ledger(store)
    in_flight: dict[str, tuple[distributed.Future, list[Visit]]] = {}
    reasons: Counter[str] = Counter()
    counts: Counter[str] = Counter()

    def submit_next(queue: distributed.as_completed) -> None:
        batch = next(batches, None)
        if batch is None:
            return
        key = _task_key(stage.name, batch, run_token)
        future = client.submit(
            _run_batch,
            stage,
            batch,
            str(store),
            key=key,
            retries=config.retries,
            pure=False,
            resources=resources,
        )
        in_flight[key] = (future, batch)
        queue.add(future)

    bar = tqdm(total=len(pending), desc=stage.name, unit="visit", disable=not config.progress)
    queue = distributed.as_completed()
    try:
        for _ in range(window):
            submit_next(queue)
        for future in queue:
            _, batch = in_flight.pop(future.key)
            if future.status == "finished":
                outcomes = future.result()
                batcher.observe(outcomes)
            else:
                try:
                    error = future.exception()
                except Exception as exc:  # e.g. cancelled: the reason is the exception itself
                    error = exc
                outcomes = _failed(stage.name, batch, future.key, config.retries + 1, error)
                ledger.record(stage.name, outcomes)
            future.release()  # collected: let the scheduler forget it now, not when the loop ends
            submit_next(queue)
            for outcome in outcomes:
                counts[outcome.status] += 1
                if outcome.status != "done":
                    reasons[outcome.reason] += 1
            # A dict keeps the columns in status order (keywords would be sorted); update() then redraws.
            bar.set_postfix({status: counts[status] for status in STATUSES}, refresh=False)
            bar.update(len(outcomes))
    finally:
        bar.close()
        if in_flight:  # interrupted: stop the tasks nobody will collect
            client.cancel([f for f, _ in in_flight.values()])

    report.done, report.quarantined, report.failed = counts["done"], counts["quarantined"], counts["failed"]
    report.reasons = dict(reasons)
    # Only visits whose task finished carry a measured time; task errors would dilute the mean.
    report.seconds_per_visit = batcher.cost if batcher.measured_visits else math.nan
    report.seconds = time.perf_counter() - start
    return report


def run_on_cluster(
    stage: Stage,
    visits: list[Visit],
    store: str | Path,
    engine: EngineConfig | None = None,
    cluster: ClusterConfig | None = None,
) -> StageReport:
    """:func:`run_stage` on a cluster opened for the run (the embedded one unless ``cluster`` says)."""
    with connect(cluster or ClusterConfig()) as client:
        return run_stage(stage, visits, store, client, engine or EngineConfig())
