"""Dask clusters: an embedded local one by default, a local multi-GPU one, or an existing scheduler.

The same pipeline code runs on all three; only :class:`ClusterConfig` changes. Schedulers started
elsewhere (SLURM via dask-jobqueue, Kubernetes via the dask operator, ``dask scheduler`` by hand) are
reached by address, and :func:`connect` then leaves them running when it exits.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import TextIO

import dask
import distributed
from dask.system import CPU_COUNT

#: Resource name that GPU workers advertise and GPU stages request (one per task).
GPU_RESOURCE = "GPU"
#: Logger hierarchy of Dask's distributed runtime, quietened while connected.
DISTRIBUTED_LOGGER = "distributed"
#: Dask setting of the environment a nanny gives its worker process before spawning it.
PRE_SPAWN_ENVIRON = "distributed.nanny.pre-spawn-environ"

# Dashboard links already shown in this process, so that each is printed once however many stages run.
_ANNOUNCED: set[str] = set()


@dataclass(frozen=True)
class ClusterConfig:
    """Where the work runs.

    Attributes
    ----------
    scheduler : str, optional
        Address of an existing scheduler, e.g. ``"tcp://10.0.0.5:8786"``. When set, the other fields that
        shape a local cluster are ignored.
    workers : int, optional
        Worker processes of the embedded cluster; default ``cores // threads`` (at least 1), or one per
        GPU with ``gpus``.
    threads : int
        Threads per worker process.
    gpus : bool
        Start a ``dask_cuda.LocalCUDACluster`` (one worker per GPU, each advertising one ``GPU`` resource).
    memory_limit : str
        Memory limit per worker, e.g. ``"8GiB"``, or ``"auto"`` (the machine's memory shared evenly).
    dashboard_address : str
        Where the embedded cluster serves its dashboard; ``":0"`` picks a free port.
    log_level : str
        Level below which Dask's own log messages are hidden while connected (they are mostly routine
        start-up and shut-down chatter); ``"INFO"`` shows them all.
    malloc_mmap_threshold : int
        ``MALLOC_MMAP_THRESHOLD_`` (bytes) of the embedded cluster's worker processes; 0 leaves glibc's
        default. Dask's nanny sets ``MALLOC_TRIM_THRESHOLD_``, which freezes glibc's mmap threshold at
        128 kB, so every volume-sized temporary is a fresh mmap whose pages fault in on first touch:
        fusion then ran 2× slower in a worker than in a plain process (3.4 s against 1.7 s per
        full-scale visit). Serving them from the heap removes that; the trim threshold still returns
        freed memory. Workers started elsewhere take it from ``distributed.nanny.pre-spawn-environ``.
    """

    scheduler: str | None = None
    workers: int | None = None
    threads: int = 1
    gpus: bool = False
    memory_limit: str = "auto"
    dashboard_address: str = ":0"
    log_level: str = "ERROR"
    malloc_mmap_threshold: int = 2**30

    def __post_init__(self) -> None:
        if self.threads < 1:
            raise ValueError(f"threads must be ≥ 1, got {self.threads}")
        if self.malloc_mmap_threshold < 0:
            raise ValueError(f"malloc_mmap_threshold must be ≥ 0, got {self.malloc_mmap_threshold}")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers must be ≥ 1, got {self.workers}")
        if not isinstance(logging.getLevelName(self.log_level.upper()), int):
            raise ValueError(f"log_level must be a logging level name, got {self.log_level!r}")


def default_workers(threads: int) -> int:
    """Worker processes that fill this machine's cores (cgroup-aware) with ``threads`` threads each."""
    return max(1, CPU_COUNT // threads)


def dashboard_link(client: distributed.Client) -> str | None:
    """The scheduler's dashboard URL, or ``None`` when it serves none (bokeh missing or disabled)."""
    if "dashboard" not in client.scheduler_info().get("services", {}):
        return None
    return client.dashboard_link


def announce_dashboard(client: distributed.Client, stream: TextIO | None = None) -> None:
    """Print the dashboard link of ``client``'s scheduler, once per link per process.

    Parameters
    ----------
    client : distributed.Client
    stream : file-like, optional
        Where to print; standard error by default, so that standard output stays for results.
    """
    link = dashboard_link(client)
    key = link or client.scheduler.address
    if key in _ANNOUNCED:
        return
    _ANNOUNCED.add(key)
    text = f"Dask dashboard: {link}" if link else f"Dask scheduler {key} (no dashboard)"
    print(text, file=stream or sys.stderr, flush=True)


@contextmanager
def _quiet_distributed(level: str) -> Iterator[None]:
    """Raise the threshold of distributed's log handlers in this process, restoring it on exit."""
    numeric = logging.getLevelName(level.upper())
    handlers = [
        h for h in logging.getLogger(DISTRIBUTED_LOGGER).handlers if isinstance(h, logging.StreamHandler)
    ]
    previous = [h.level for h in handlers]
    for handler in handlers:
        handler.setLevel(max(handler.level, numeric))
    try:
        yield
    finally:
        for handler, old in zip(handlers, previous, strict=True):
            handler.setLevel(old)


def _local_cluster(config: ClusterConfig) -> distributed.LocalCluster:
    level = logging.getLevelName(config.log_level.upper())
    common = {
        "threads_per_worker": config.threads,
        "memory_limit": config.memory_limit,
        "dashboard_address": config.dashboard_address,
        "silence_logs": level,
    }
    if config.gpus:
        try:
            from dask_cuda import LocalCUDACluster
        except ImportError as exc:
            raise RuntimeError(
                "a GPU cluster needs dask-cuda, which is not installed; install it with "
                "`pip install 'cohortscale[gpu]'` or run without GPUs"
            ) from exc
        # LocalCUDACluster passes unknown keywords to its workers: each advertises the GPU it owns.
        return LocalCUDACluster(n_workers=config.workers, resources={GPU_RESOURCE: 1}, **common)
    workers = config.workers or default_workers(config.threads)
    return distributed.LocalCluster(n_workers=workers, processes=True, **common)


@contextmanager
def _worker_environment(config: ClusterConfig) -> Iterator[None]:
    """Environment of the worker processes an embedded cluster spawns (read by glibc at their start)."""
    settings = {}
    if config.malloc_mmap_threshold > 0:
        settings[f"{PRE_SPAWN_ENVIRON}.MALLOC_MMAP_THRESHOLD_"] = config.malloc_mmap_threshold
    with dask.config.set(settings):
        yield


@contextmanager
def connect(config: ClusterConfig | None = None) -> Iterator[distributed.Client]:
    """Start or reach a Dask cluster and yield a client to it; close what was started on exit.

    Parameters
    ----------
    config : ClusterConfig, optional
        Defaults to an embedded ``LocalCluster`` of worker processes filling this machine.

    Yields
    ------
    distributed.Client
        Connected, with the dashboard link printed to standard error. A cluster reached by address is
        left running on exit; an embedded one is shut down.

    Raises
    ------
    RuntimeError
        ``gpus`` was asked for but dask-cuda is not installed.
    ConnectionError
        The scheduler at ``config.scheduler`` could not be reached.
    """
    config = config or ClusterConfig()
    with ExitStack() as stack:
        stack.enter_context(_quiet_distributed(config.log_level))
        if config.scheduler:
            try:
                client = distributed.Client(config.scheduler)
            except OSError as exc:
                raise ConnectionError(
                    f"cannot reach the Dask scheduler at {config.scheduler}: {exc}; is it running, and is "
                    "the address (tcp://host:port) right?"
                ) from exc
            # Closing a client never shuts down a scheduler it did not start.
            stack.callback(client.close)
        else:
            with _worker_environment(config):
                cluster = stack.enter_context(_local_cluster(config))
            client = stack.enter_context(distributed.Client(cluster))
        announce_dashboard(client)
        yield client
