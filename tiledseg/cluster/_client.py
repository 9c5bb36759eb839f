"""Getting a Dask client: the caller's, a scheduler address, a cluster spec, or a LocalCluster.

The engine only ever asks for ``with open_client(client) as c: ...``; what ``client`` may be:

* a :class:`distributed.Client` -- used as is, never closed here;
* a scheduler address ``"tcp://host:8786"`` -- connected to, the connection closed afterwards;
* a :class:`~tiledseg.cluster.ClusterSpec` (or ``cluster=`` spec) -- the cluster is created with
  :func:`~tiledseg.cluster.make_cluster`, used, and shut down afterwards;
* ``None`` -- an embedded :class:`distributed.LocalCluster` sized to the machine.

This module also answers "what is this cluster?" (:func:`cluster_info`) and "will a tile fit in a
worker?" (:func:`predict_tile_memory`, :func:`check_tile_memory`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from distributed import Client

from tiledseg.cluster._deploy import ClusterSpec, local_cluster, make_cluster
from tiledseg.errors import ClusterConfigError

__all__ = [
    "ClusterInfo",
    "WorkerInfo",
    "check_tile_memory",
    "cluster_info",
    "open_client",
    "predict_tile_memory",
]

logger = logging.getLogger(__name__)


def _connect(address: str, *, timeout: float = 30.0) -> Client:
    if not address:
        raise ClusterConfigError("`client` address is empty; expected e.g. 'tcp://host:8786'")
    logger.info("connecting to scheduler %s", address)
    try:
        return Client(address, timeout=f"{timeout}s")  # type: ignore[no-untyped-call]
    except (OSError, TimeoutError) as exc:
        raise ClusterConfigError(f"could not reach the Dask scheduler at {address!r}: {exc}") from exc


@contextlib.contextmanager
def open_client(
    client: Client | str | ClusterSpec | None = None,
    *,
    cluster: ClusterSpec | None = None,
    n_workers: int | None = None,
    threads_per_worker: int = 1,
    memory_limit: str | None = "auto",
    processes: bool = True,
    wait_for_workers: int | None = None,
    wait_timeout: float = 600.0,
    connect_timeout: float = 30.0,
    **cluster_kwargs: Any,
) -> Iterator[Client]:
    """Yield a :class:`distributed.Client`, creating (and closing) a cluster when needed.

    Parameters
    ----------
    client : Client, str or ClusterSpec, optional
        An existing client (used as is, never closed here), a scheduler address
        (``"tcp://host:8786"``) or a cluster specification. ``None`` uses ``cluster`` when given,
        else starts an embedded :class:`distributed.LocalCluster` with one single-threaded
        worker process per core, without Dask's statistical profiler (see
        :func:`~tiledseg.cluster._deploy.embedded_config`).
    cluster : ClusterSpec, optional
        Where to run when ``client`` is ``None`` (see :class:`~tiledseg.cluster.ClusterSpec`).
    n_workers : int, optional
        Workers of the embedded cluster; default: the number of usable cores.
    threads_per_worker : int
        Threads per embedded worker (1: kernels release the GIL poorly).
    memory_limit : str, optional
        Memory limit per embedded worker (``"auto"`` splits the machine's memory).
    processes : bool
        Worker processes (default) or threads in this process.
    wait_for_workers : int, optional
        Block until this many workers joined. ``None``: wait for the first worker of batch and
        Kubernetes specs (up to ``ClusterSpec.wait_timeout``), not otherwise.
    wait_timeout : float
        Seconds to wait for them before raising :class:`ClusterConfigError`.
    connect_timeout : float
        Seconds to try reaching a scheduler address.
    **cluster_kwargs
        Passed to the embedded ``LocalCluster``.

    Yields
    ------
    Client

    Raises
    ------
    ClusterConfigError
        An unreachable scheduler, an empty address, a wrong type, or workers that never came.
    MissingDependencyError
        The spec's engine is not installed (the message names the extra).
    """
    if client is not None and cluster is not None:
        raise ClusterConfigError("give either `client` or `cluster`, not both")
    if isinstance(client, ClusterSpec):
        client, cluster = None, client
    if isinstance(client, Client):
        yield client
        return
    if isinstance(client, str):
        c = _connect(client, timeout=connect_timeout)
        try:
            _wait(c, wait_for_workers, wait_timeout)
            yield c
        finally:
            c.close()  # type: ignore[no-untyped-call]
        return
    if client is not None:
        raise ClusterConfigError(
            f"`client` must be a distributed.Client, a scheduler address, a ClusterSpec or None, "
            f"got {type(client).__name__}"
        )
    if cluster is not None:
        if cluster.kind == "address":
            assert cluster.address is not None  # guaranteed by ClusterSpec
            with open_client(cluster.address, wait_for_workers=wait_for_workers,
                             wait_timeout=wait_timeout, connect_timeout=connect_timeout) as c:
                yield c
            return
        if wait_for_workers is None and cluster.starts_late:
            # The engine scatters to workers before it submits tiles; wait for the first job/pod.
            wait_for_workers, wait_timeout = 1, cluster.wait_timeout
        made = make_cluster(cluster)
        try:
            c = Client(made)  # type: ignore[no-untyped-call]
            logger.info("started a %s Dask cluster, dashboard %s", cluster.kind, c.dashboard_link)
            try:
                _wait(c, wait_for_workers, wait_timeout)
                yield c
            finally:
                c.close()  # type: ignore[no-untyped-call]
        finally:
            made.close()
        return
    workers = n_workers or len(os.sched_getaffinity(0))
    local = local_cluster(
        n_workers=workers,
        threads_per_worker=threads_per_worker,
        memory_limit=memory_limit,
        processes=processes,
        dashboard_address=":0",
        **cluster_kwargs,
    )
    c = Client(local)  # type: ignore[no-untyped-call]
    logger.info("started a local Dask cluster: %d workers, dashboard %s", workers, c.dashboard_link)
    try:
        yield c
    finally:
        c.close()  # type: ignore[no-untyped-call]
        local.close()


def _wait(client: Client, n: int | None, timeout: float) -> None:
    if not n:
        return
    try:
        client.wait_for_workers(n, timeout=timeout)
    except TimeoutError as exc:
        have = len(client.scheduler_info(n_workers=-1).get("workers", {}))
        raise ClusterConfigError(
            f"only {have} of {n} Dask workers joined within {timeout:g} s; are the batch jobs queued "
            "(squeue / qstat / bjobs) or the pods pending?"
        ) from exc


@dataclass(frozen=True)
class WorkerInfo:
    """One worker as the scheduler sees it.

    Parameters
    ----------
    address, name : str
        Worker address and name.
    threads : int
        Threads of the worker.
    memory_limit : int
        Bytes (0: unlimited).
    resources : dict
        Advertised resources, e.g. ``{"GPU": 1}``.
    host : str
        Host name or IP.
    """

    address: str
    name: str
    threads: int
    memory_limit: int
    resources: dict[str, float] = field(default_factory=dict)
    host: str = ""


@dataclass(frozen=True)
class ClusterInfo:
    """A snapshot of a cluster: scheduler, dashboard and workers.

    Attributes
    ----------
    scheduler : str
        Scheduler address.
    dashboard : str or None
        Dashboard URL.
    workers : tuple of WorkerInfo
        Workers, sorted by name.
    """

    scheduler: str
    dashboard: str | None
    workers: tuple[WorkerInfo, ...]

    @property
    def n_workers(self) -> int:
        """Number of workers."""
        return len(self.workers)

    @property
    def threads(self) -> int:
        """Threads over all workers."""
        return sum(w.threads for w in self.workers)

    @property
    def memory(self) -> int:
        """Memory limit over all workers in bytes."""
        return sum(w.memory_limit for w in self.workers)

    @property
    def gpus(self) -> float:
        """``GPU`` resources over all workers."""
        return sum(w.resources.get("GPU", 0) for w in self.workers)

    def min_worker_memory(self) -> int | None:
        """The smallest per-worker memory limit in bytes (``None`` when none is limited)."""
        limits = [w.memory_limit for w in self.workers if w.memory_limit]
        return min(limits) if limits else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {
            "scheduler": self.scheduler,
            "dashboard": self.dashboard,
            "workers": [w.__dict__ for w in self.workers],
        }

    def summary(self) -> str:
        """One line: workers, threads, memory, GPUs."""
        gpu = f", {self.gpus:g} GPU" if self.gpus else ""
        return (
            f"{self.n_workers} workers, {self.threads} threads, "
            f"{_human(self.memory) + ' memory' if self.memory else 'unlimited memory'}{gpu}"
        )


def cluster_info(client: Client) -> ClusterInfo:
    """Describe the cluster ``client`` is connected to.

    Parameters
    ----------
    client : Client

    Returns
    -------
    ClusterInfo
    """
    info = client.scheduler_info(n_workers=-1)
    workers = []
    for address, w in info.get("workers", {}).items():
        workers.append(
            WorkerInfo(
                address=address,
                name=str(w.get("name", address)),
                threads=int(w.get("nthreads", 0)),
                memory_limit=int(w.get("memory_limit") or 0),
                resources={k: float(v) for k, v in (w.get("resources") or {}).items()},
                host=str(w.get("host", "")),
            )
        )
    workers.sort(key=lambda w: (w.name, w.address))
    dashboard: str | None
    try:
        dashboard = client.dashboard_link
    except (AttributeError, KeyError, ValueError):  # no dashboard (bokeh missing or disabled)
        dashboard = None
    return ClusterInfo(scheduler=str(info.get("address", "")), dashboard=dashboard, workers=tuple(workers))


#: Bytes of working memory the engine needs per pixel of a tile window, per prepared plane,
#: on top of the raw input: float32 prepared plane, float32 temporaries of filtering/watershed
#: (about three), int32 markers and uint32 labels.
_BYTES_PER_PREPARED_PIXEL = 4 * 4
_BYTES_PER_LABEL_PIXEL = 4 * 3


def predict_tile_memory(
    tile_size: int | tuple[int, int],
    halo_px: int,
    n_channels: int,
    *,
    itemsize: int = 4,
    prepared_planes: int = 2,
    batch: int = 1,
) -> int:
    """Bytes one tile task is expected to hold at its peak.

    The window is ``(tile + 2 * halo)`` on each side; the task holds the raw ``n_channels``
    window, the backend's prepared planes with their float temporaries, and the label images
    (segmentation, markers, relabelled output). Measured peaks of the watershed backend stay
    within this bound (benchmarks/results/cluster.md).

    Parameters
    ----------
    tile_size : int or (int, int)
        Core tile edge(s) in pixels.
    halo_px : int
        Halo in pixels each side.
    n_channels : int
        Channels read for the tile.
    itemsize : int
        Bytes per raw pixel (4 for IMC float32, 2 for uint16).
    prepared_planes : int
        Planes the backend prepares (2 for nuclear + membrane).
    batch : int
        Tiles per task.

    Returns
    -------
    int
        Bytes.
    """
    rows, cols = (tile_size, tile_size) if isinstance(tile_size, int) else tile_size
    if rows < 1 or cols < 1 or halo_px < 0 or n_channels < 1:
        raise ClusterConfigError(
            f"tile memory needs tile_size >= 1, halo_px >= 0 and n_channels >= 1, "
            f"got tile_size={tile_size!r}, halo_px={halo_px!r}, n_channels={n_channels!r}"
        )
    pixels = (rows + 2 * halo_px) * (cols + 2 * halo_px)
    per_pixel = n_channels * itemsize + prepared_planes * _BYTES_PER_PREPARED_PIXEL + _BYTES_PER_LABEL_PIXEL
    return int(math.ceil(pixels * per_pixel * batch))


def check_tile_memory(client: Client, nbytes: int, *, threads: int | None = None, what: str = "tile") -> bool:
    """Warn (``ResourceWarning``) before starting when tasks will not fit a worker's memory.

    A worker runs ``threads`` tasks at once; Dask pauses a worker at 80% of its limit and kills
    it at 95%, so the tasks must fit in about 60% to leave room for the results in flight.

    Parameters
    ----------
    client : Client
    nbytes : int
        Peak bytes of one task (:func:`predict_tile_memory`).
    threads : int, optional
        Concurrent tasks per worker; default: the workers' thread count.
    what : str
        Name of the task in the message.

    Returns
    -------
    bool
        True when the tasks fit (or the workers have no limit).
    """
    info = cluster_info(client)
    smallest = info.min_worker_memory()
    if smallest is None:
        return True
    concurrent = threads or max((w.threads for w in info.workers), default=1)
    need = nbytes * concurrent
    if need <= 0.6 * smallest:
        return True
    warnings.warn(
        f"each {what} task needs about {_human(nbytes)} and a worker runs "
        f"{concurrent} at once ({_human(need)}), more than 60% of the smallest "
        f"worker memory limit {_human(smallest)}: workers may pause or be killed; use a "
        "smaller tile_size, fewer threads per worker or more memory per worker",
        ResourceWarning,
        stacklevel=2,
    )
    return False


def _human(nbytes: int) -> str:
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= size:
            return f"{nbytes / size:.1f} {unit}"
    return f"{nbytes} B"


