"""Where to run: one cluster specification for the CLI, the Python API and a TOML config file.

A :class:`ClusterSpec` says *where* the tiles run; :func:`make_cluster` turns it into a cluster
object of an existing Dask deployment engine -- tiledseg never schedules anything itself:

========== ================================================= ======================
kind       engine                                            extra
========== ================================================= ======================
local      :class:`distributed.LocalCluster`                 (core)
address    an existing scheduler, ``Client("tcp://...")``    (core)
slurm      :class:`dask_jobqueue.SLURMCluster`               ``tiledseg[slurm]``
pbs        :class:`dask_jobqueue.PBSCluster`                 ``tiledseg[slurm]``
lsf        :class:`dask_jobqueue.LSFCluster`                 ``tiledseg[slurm]``
kubernetes ``dask_kubernetes.operator.KubeCluster``          ``tiledseg[kubernetes]``
local-gpu  ``dask_cuda.LocalCUDACluster``                    ``tiledseg[gpu]``
========== ================================================= ======================

Workers with GPUs advertise the Dask resource ``GPU`` (``--resources GPU=N``), which is how the
engine sends deep-learning tiles only to them. The batch-system job scripts and the Kubernetes
``DaskCluster`` resource are built here without contacting any scheduler, so they can be
inspected (``tiledseg cluster config --show``) and unit-tested.

A config file holds one ``[cluster]`` table whose keys are the fields of :class:`ClusterSpec`::

    [cluster]
    kind = "slurm"
    workers = 4            # jobs
    cores = 8              # per job
    memory = "32GiB"       # per job
    walltime = "02:00:00"
    queue = "gpu"
    account = "mylab"
    gpus = 1               # per job
    job_directives = ["--constraint=a100"]
    adaptive = { minimum = 1, maximum = 20 }
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import math
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tiledseg.errors import ClusterConfigError, MissingDependencyError

__all__ = [
    "CLUSTER_KINDS",
    "ClusterSpec",
    "embedded_config",
    "example_config",
    "format_memory",
    "job_script",
    "kubernetes_cluster_spec",
    "load_cluster_config",
    "local_cluster",
    "make_cluster",
    "parse_memory",
    "resolve_cluster",
    "worker_environment",
]

logger = logging.getLogger(__name__)

#: Every value ``ClusterSpec.kind`` accepts.
CLUSTER_KINDS: tuple[str, ...] = ("local", "address", "slurm", "pbs", "lsf", "kubernetes", "local-gpu")

_JOBQUEUE_KINDS = ("slurm", "pbs", "lsf")

#: Default container image for Kubernetes workers (matches the installed tiledseg version).
DEFAULT_IMAGE = "ghcr.io/tiledseg/tiledseg:latest"

_UNITS: dict[str, int] = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
    # Slurm-style single letters are binary (``--mem=4G`` is 4 GiB).
    "k": 2**10,
    "m": 2**20,
    "g": 2**30,
    "t": 2**40,
}
_MEMORY_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*$")


def parse_memory(value: str | float, *, name: str = "memory") -> int:
    """Parse a memory size into bytes.

    Parameters
    ----------
    value : str or int
        ``"4GiB"`` (binary), ``"4GB"`` (decimal), ``"4096MB"``, ``"4G"`` (binary, like Slurm's
        ``--mem``), or a number of bytes.
    name : str
        Parameter name used in the error message.

    Returns
    -------
    int
        Bytes, > 0.

    Raises
    ------
    ClusterConfigError
        The string is not a positive number followed by a known unit.

    Examples
    --------
    >>> parse_memory("4GiB")
    4294967296
    >>> parse_memory("1.5 GB")
    1500000000
    """
    if isinstance(value, bool):
        raise ClusterConfigError(f"`{name}` must be a size such as '4GiB', got {value!r}")
    if isinstance(value, (int, float)):
        if value <= 0 or not math.isfinite(value):
            raise ClusterConfigError(f"`{name}` must be a positive number of bytes, got {value!r}")
        return int(value)
    if not isinstance(value, str):
        raise ClusterConfigError(
            f"`{name}` must be a string such as '4GiB' or a number of bytes, got {type(value).__name__}"
        )
    match = _MEMORY_RE.match(value)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS:
        raise ClusterConfigError(
            f"`{name}` {value!r} is not a memory size; expected a number and a unit such as "
            "'4GiB', '4GB', '4096MB' or '512MiB' (units: B, kB, MB, GB, TB, KiB, MiB, GiB, TiB)"
        )
    nbytes = int(float(match.group(1)) * _UNITS[unit])
    if nbytes <= 0:
        raise ClusterConfigError(f"`{name}` must be larger than zero, got {value!r}")
    return nbytes


def format_memory(nbytes: int) -> str:
    """Bytes as a string the Dask tools parse back exactly (``"4GiB"``, ``"1500MB"``...)."""
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes % size == 0:
            return f"{nbytes // size}{unit}"
    for unit, size in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if nbytes % size == 0:
            return f"{nbytes // size}{unit}"
    return f"{nbytes}B"


@dataclass(frozen=True)
class ClusterSpec:
    """Where to run: a cluster kind and its sizing.

    Parameters
    ----------
    kind : str
        One of :data:`CLUSTER_KINDS`.
    address : str, optional
        Scheduler address for ``kind="address"`` (``"tcp://host:8786"``).
    workers : int, optional
        ``local``: worker processes (default: usable cores). ``local-gpu``: workers (default: one
        per visible GPU). Batch systems: jobs to submit. ``kubernetes``: worker pods.
    threads : int
        Threads per worker process.
    memory : str or int, optional
        Memory per worker (``local``, ``local-gpu``, ``kubernetes``) or per job (batch systems):
        ``"4GiB"``, ``"4GB"``, ``"4096MB"``. Stored as bytes.
    cores : int, optional
        Cores per job (batch systems; default ``threads * processes``) or per pod (Kubernetes).
    processes : int
        Worker processes per job (batch systems).
    walltime : str, optional
        Job wall time (``"02:00:00"``; LSF ``"02:00"``).
    queue : str, optional
        Queue / partition.
    account : str, optional
        Account / project to charge.
    gpus : int
        GPUs per job / pod / worker; workers then advertise the Dask resource ``GPU``.
    adaptive_minimum, adaptive_maximum : int, optional
        Adaptive scaling between these numbers of workers (jobs for batch systems); both or
        neither. In a config file: ``adaptive = { minimum = 1, maximum = 20 }``. A minimum of 0
        leaves no worker to start a run on; tiledseg then waits only ``wait_timeout`` seconds.
    image : str, optional
        Container image of Kubernetes pods.
    namespace : str, optional
        Kubernetes namespace.
    job_directives : tuple of str
        Extra batch directives (``"--constraint=a100"``) added to every job script.
    prologue : tuple of str
        Shell lines run before the worker starts (``"module load cuda"``, ``"source env/bin/activate"``).
    resources : dict
        Extra Dask worker resources, e.g. ``{"GPU": 1}`` to mark CPU test workers as GPU ones.
    local_directory : str, optional
        Worker scratch space (node-local disk).
    python : str, optional
        Python interpreter on the compute nodes (default: the one running tiledseg).
    name : str
        Job / cluster name.
    wait_timeout : float
        Seconds to wait for the first worker of a batch / Kubernetes cluster (jobs may queue)
        before giving up with :class:`ClusterConfigError`.
    """

    kind: str = "local"
    address: str | None = None
    workers: int | None = None
    threads: int = 1
    memory: int | str | None = None
    cores: int | None = None
    processes: int = 1
    walltime: str | None = None
    queue: str | None = None
    account: str | None = None
    gpus: int = 0
    adaptive_minimum: int | None = None
    adaptive_maximum: int | None = None
    image: str | None = None
    namespace: str | None = None
    job_directives: tuple[str, ...] = ()
    prologue: tuple[str, ...] = ()
    resources: Mapping[str, float] = field(default_factory=dict)
    local_directory: str | None = None
    python: str | None = None
    name: str = "tiledseg"
    wait_timeout: float = 3600.0

    def __post_init__(self) -> None:
        if self.kind not in CLUSTER_KINDS:
            close = difflib.get_close_matches(str(self.kind), CLUSTER_KINDS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ClusterConfigError(
                f"unknown cluster kind {self.kind!r}{hint}; expected one of {', '.join(CLUSTER_KINDS)}"
            )
        if self.memory is not None:
            object.__setattr__(self, "memory", parse_memory(self.memory))
        for key in ("workers", "cores"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ClusterConfigError(f"`{key}` must be a positive integer, got {value!r}")
        for key in ("threads", "processes"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ClusterConfigError(f"`{key}` must be a positive integer, got {value!r}")
        if not isinstance(self.wait_timeout, (int, float)) or isinstance(self.wait_timeout, bool) \
                or not self.wait_timeout > 0:
            raise ClusterConfigError(f"`wait_timeout` must be a positive number of seconds, got {self.wait_timeout!r}")
        if not isinstance(self.gpus, int) or isinstance(self.gpus, bool) or self.gpus < 0:
            raise ClusterConfigError(f"`gpus` must be an integer >= 0, got {self.gpus!r}")
        lo, hi = self.adaptive_minimum, self.adaptive_maximum
        if (lo is None) != (hi is None):
            raise ClusterConfigError(
                "adaptive scaling needs both `adaptive_minimum` and `adaptive_maximum`, "
                f"got minimum={lo!r}, maximum={hi!r}"
            )
        if lo is not None and hi is not None and (
            not (isinstance(lo, int) and isinstance(hi, int)) or lo < 0 or hi < max(lo, 1)
        ):
            raise ClusterConfigError(
                f"adaptive scaling needs 0 <= minimum <= maximum and maximum >= 1, "
                f"got minimum={lo!r}, maximum={hi!r}"
            )
        if self.kind == "address":
            if not self.address:
                raise ClusterConfigError(
                    "cluster kind 'address' needs `address`, e.g. 'tcp://scheduler:8786'"
                )
        elif self.address is not None:
            raise ClusterConfigError(
                f"`address` is only used with kind 'address', not {self.kind!r}"
            )
        if self.gpus and self.kind in _JOBQUEUE_KINDS and self.processes != 1:
            raise ClusterConfigError(
                f"GPU jobs run one worker process per job (it owns the job's {self.gpus} GPU(s)); "
                f"got processes={self.processes}"
            )
        object.__setattr__(self, "job_directives", tuple(str(d) for d in self.job_directives))
        object.__setattr__(self, "prologue", tuple(str(d) for d in self.prologue))
        resources = dict(self.resources)
        for key, value in resources.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise ClusterConfigError(f"resource {key!r} must be a positive number, got {value!r}")
        object.__setattr__(self, "resources", resources)

    @property
    def memory_bytes(self) -> int | None:
        """Memory per worker / job in bytes (``None``: the engine's default)."""
        return None if self.memory is None else parse_memory(self.memory)

    @property
    def starts_late(self) -> bool:
        """Whether workers arrive after the cluster object exists (batch jobs, pods)."""
        return self.kind in (*_JOBQUEUE_KINDS, "kubernetes")

    @property
    def adaptive(self) -> bool:
        """Whether the cluster scales adaptively."""
        return self.adaptive_maximum is not None

    def worker_resources(self) -> dict[str, float]:
        """Dask resources every worker advertises (``GPU`` for GPU workers plus ``resources``)."""
        out = dict(self.resources)
        if self.kind == "local-gpu":
            out.setdefault("GPU", 1)
        elif self.gpus:
            out.setdefault("GPU", self.gpus)
        return out

    def replace(self, **changes: Any) -> ClusterSpec:
        """A copy with ``changes`` applied (``None`` values are ignored)."""
        kept = {k: v for k, v in changes.items() if v is not None}
        return dataclasses.replace(self, **kept)

    def to_dict(self) -> dict[str, Any]:
        """The fields that differ from the defaults, as a config file would hold them."""
        default = ClusterSpec()
        out: dict[str, Any] = {"kind": self.kind}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in ("kind", "adaptive_minimum", "adaptive_maximum"):
                continue
            if value == getattr(default, f.name):
                continue
            if f.name == "memory" and value is not None:
                value = format_memory(parse_memory(value))
            elif isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, Mapping):
                value = dict(value)
            out[f.name] = value
        if self.adaptive:
            out["adaptive"] = {"minimum": self.adaptive_minimum, "maximum": self.adaptive_maximum}
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "cluster specification") -> ClusterSpec:
        """Build from a mapping such as the ``[cluster]`` table of a config file.

        Unknown keys raise :class:`ClusterConfigError` naming ``source``, the key and the known
        keys. ``adaptive = {minimum = .., maximum = ..}`` sets the adaptive bounds.
        """
        if not isinstance(data, Mapping):
            raise ClusterConfigError(f"{source}: expected a table of settings, got {type(data).__name__}")
        known = [f.name for f in dataclasses.fields(cls)] + ["adaptive"]
        values: dict[str, Any] = {}
        for key, value in data.items():
            norm = str(key).replace("-", "_")
            if norm == "partition":
                norm = "queue"
            if norm not in known:
                close = difflib.get_close_matches(norm, known, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ClusterConfigError(
                    f"{source}: unknown key {key!r}{hint}; known keys: {', '.join(sorted(known))}"
                )
            if norm == "adaptive":
                if not isinstance(value, Mapping) or set(value) - {"minimum", "maximum"}:
                    raise ClusterConfigError(
                        f"{source}: `adaptive` must be a table {{ minimum = N, maximum = M }}, got {value!r}"
                    )
                values["adaptive_minimum"] = value.get("minimum", 0)
                values["adaptive_maximum"] = value.get("maximum")
                continue
            if norm in ("job_directives", "prologue"):
                if isinstance(value, str) or not isinstance(value, Sequence):
                    raise ClusterConfigError(f"{source}: `{key}` must be a list of strings, got {value!r}")
                value = tuple(value)
            values[norm] = value
        try:
            return cls(**values)
        except ClusterConfigError as exc:
            raise ClusterConfigError(f"{source}: {exc}") from None
        except TypeError as exc:  # a wrongly typed value that __post_init__ did not catch
            raise ClusterConfigError(f"{source}: {exc}") from None


def load_cluster_config(path: str | os.PathLike[str]) -> ClusterSpec:
    """Read a :class:`ClusterSpec` from a TOML file with a ``[cluster]`` table.

    Parameters
    ----------
    path : str or path
        The config file.

    Returns
    -------
    ClusterSpec

    Raises
    ------
    ClusterConfigError
        The file is missing, is not valid TOML, lacks a ``[cluster]`` table, or holds an unknown
        kind, key or memory size; the message names the file.
    """
    p = Path(path)
    if not p.is_file():
        raise ClusterConfigError(f"cluster config file {str(p)!r} does not exist")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ClusterConfigError(f"cluster config file {str(p)!r} is not valid TOML: {exc}") from exc
    extra = sorted(set(data) - {"cluster"})
    if "cluster" not in data or extra:
        raise ClusterConfigError(
            f"cluster config file {str(p)!r} must hold one [cluster] table"
            + (f"; found unknown top-level entries {extra}" if extra else "; none found")
            + " (write an example with `tiledseg cluster config`)"
        )
    return ClusterSpec.from_dict(data["cluster"], source=f"cluster config file {str(p)!r}")


def resolve_cluster(value: ClusterSpec | str | os.PathLike[str] | None = None, **overrides: Any) -> ClusterSpec:
    """Turn what a user typed into a :class:`ClusterSpec`.

    Parameters
    ----------
    value : ClusterSpec, str or path, optional
        A spec; a kind (``"slurm"``); a scheduler address (``"tcp://host:8786"``, any
        ``scheme://``); or a ``.toml`` config file. ``None`` is ``"local"``.
    **overrides
        Fields to change (``workers=4``, ``memory="8GiB"``); ``None`` values are ignored.

    Returns
    -------
    ClusterSpec
    """
    if value is None:
        spec = ClusterSpec()
    elif isinstance(value, ClusterSpec):
        spec = value
    else:
        text = os.fspath(value)
        if "://" in text:
            spec = ClusterSpec(kind="address", address=text)
        elif text in CLUSTER_KINDS:
            spec = ClusterSpec(kind=text)
        elif text.endswith(".toml") or os.path.isfile(text):
            spec = load_cluster_config(text)
        else:
            close = difflib.get_close_matches(text, CLUSTER_KINDS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ClusterConfigError(
                f"--cluster {text!r} is neither a cluster kind{hint} ({', '.join(CLUSTER_KINDS)}), "
                "a scheduler address ('tcp://host:8786') nor a .toml config file"
            )
    return spec.replace(**overrides) if overrides else spec


# --------------------------------------------------------------------------- batch systems


def _jobqueue_kwargs(spec: ClusterSpec) -> dict[str, Any]:
    cores = spec.cores or spec.threads * spec.processes
    kwargs: dict[str, Any] = {
        "cores": cores,
        "processes": spec.processes,
        "memory": format_memory(spec.memory_bytes) if spec.memory_bytes is not None else None,
        "walltime": spec.walltime,
        "queue": spec.queue,
        "job_name": f"{spec.name}-worker",
        # tiledseg's worker settings first, so a prologue line of the user's can change them.
        "job_script_prologue": [f"export {k}={v}" for k, v in worker_environment().items()] + list(spec.prologue),
        "job_extra_directives": list(spec.job_directives),
        "worker_extra_args": [],
    }
    if spec.account is not None:
        kwargs["account"] = spec.account
    if spec.local_directory is not None:
        kwargs["local_directory"] = spec.local_directory
    if spec.python is not None:
        kwargs["python"] = spec.python
    if spec.memory is None:
        # dask-jobqueue requires a memory per job; take it from its config or fail clearly.
        import dask

        configured = dask.config.get(f"jobqueue.{spec.kind}.memory", None)
        if configured is None:
            raise ClusterConfigError(
                f"cluster kind {spec.kind!r} needs `memory` per job (e.g. memory = \"32GiB\"), "
                f"either in the spec or in the dask-jobqueue config 'jobqueue.{spec.kind}.memory'"
            )
        kwargs.pop("memory")
    if spec.gpus:
        if spec.kind == "slurm":
            kwargs["job_extra_directives"].append(f"--gres=gpu:{spec.gpus}")
        elif spec.kind == "pbs":
            # PBS Pro selects GPUs in the chunk's resource list.
            mem = f":mem={math.ceil(spec.memory_bytes / 10**9)}GB" if spec.memory_bytes else ""
            kwargs["resource_spec"] = f"select=1:ncpus={cores}{mem}:ngpus={spec.gpus}"
        elif spec.kind == "lsf":
            kwargs["job_extra_directives"].append(f'-gpu "num={spec.gpus}"')
    resources = spec.worker_resources()
    if resources:
        kwargs["worker_extra_args"] += [
            "--resources",
            " ".join(f"{k}={_num(v)}" for k, v in sorted(resources.items())),
        ]
    if spec.kind == "lsf" and spec.walltime is not None:
        kwargs["walltime"] = spec.walltime
    return {k: v for k, v in kwargs.items() if v is not None}


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _jobqueue_classes(kind: str) -> tuple[type[Any], type[Any]]:
    try:
        import dask_jobqueue
    except ImportError as exc:
        raise MissingDependencyError(
            f"cluster kind {kind!r} needs dask-jobqueue: pip install 'tiledseg[slurm]'"
        ) from exc
    cluster_cls: type[Any] = getattr(dask_jobqueue, {"slurm": "SLURMCluster", "pbs": "PBSCluster",
                                                      "lsf": "LSFCluster"}[kind])
    job_cls: type[Any] = cluster_cls.job_cls
    return cluster_cls, job_cls


def job_script(spec: ClusterSpec, *, scheduler_address: str = "tcp://SCHEDULER:8786") -> str:
    """The batch script one worker job of ``spec`` would submit (no scheduler is contacted).

    Parameters
    ----------
    spec : ClusterSpec
        A ``slurm``, ``pbs`` or ``lsf`` spec.
    scheduler_address : str
        Address written into the worker command line.

    Returns
    -------
    str
        The job script, directives first.
    """
    if spec.kind not in _JOBQUEUE_KINDS:
        raise ClusterConfigError(
            f"job scripts exist for kinds {', '.join(_JOBQUEUE_KINDS)}, not {spec.kind!r}"
        )
    _, job_cls = _jobqueue_classes(spec.kind)
    kwargs = _jobqueue_kwargs(spec)
    kwargs.setdefault("python", "python")
    job = job_cls(scheduler=scheduler_address, name=f"{spec.name}-worker", **kwargs)
    return str(job.job_script())


# --------------------------------------------------------------------------- kubernetes


def kubernetes_cluster_spec(spec: ClusterSpec) -> dict[str, Any]:
    """The ``DaskCluster`` custom resource (dask-kubernetes operator) for ``spec``.

    Built in the shape of ``dask_kubernetes.operator.make_cluster_spec``: a scheduler pod with its
    service and ``spec.worker.replicas`` worker pods running ``dask worker``. GPU pods request
    ``nvidia.com/gpu`` and advertise ``--resources GPU=N``.

    Parameters
    ----------
    spec : ClusterSpec
        A ``kubernetes`` spec.

    Returns
    -------
    dict
        JSON-serialisable resource, ready for ``KubeCluster(custom_cluster_spec=...)``.
    """
    if spec.kind != "kubernetes":
        raise ClusterConfigError(f"a Kubernetes cluster spec needs kind 'kubernetes', not {spec.kind!r}")
    image = spec.image or DEFAULT_IMAGE
    limits: dict[str, str] = {}
    requests: dict[str, str] = {}
    if spec.cores is not None:
        limits["cpu"] = requests["cpu"] = str(spec.cores)
    if spec.memory_bytes is not None:
        limits["memory"] = requests["memory"] = _k8s_quantity(spec.memory_bytes)
    if spec.gpus:
        limits["nvidia.com/gpu"] = str(spec.gpus)
    worker_args = [
        "dask",
        "worker",
        "--name",
        "$(DASK_WORKER_NAME)",
        "--nthreads",
        str(spec.threads),
        "--dashboard",
        "--dashboard-address",
        "8788",
    ]
    if spec.memory_bytes is not None:
        worker_args += ["--memory-limit", format_memory(spec.memory_bytes)]
    resources = spec.worker_resources()
    if resources:
        worker_args += ["--resources", " ".join(f"{k}={_num(v)}" for k, v in sorted(resources.items()))]
    env = [{"name": "DASK_DISTRIBUTED__WORKER__DAEMON", "value": "False"}]
    worker_env = env + [{"name": k, "value": v} for k, v in worker_environment().items()]
    worker_container: dict[str, Any] = {
        "name": "worker",
        "image": image,
        "args": worker_args,
        "env": worker_env,
        "ports": [{"name": "http-dashboard", "containerPort": 8788, "protocol": "TCP"}],
    }
    if limits:
        worker_container["resources"] = {"limits": limits, "requests": requests}
    scheduler_container = {
        "name": "scheduler",
        "image": image,
        "args": ["dask", "scheduler", "--host", "0.0.0.0"],
        "env": env,
        "ports": [
            {"name": "tcp-comm", "containerPort": 8786, "protocol": "TCP"},
            {"name": "http-dashboard", "containerPort": 8787, "protocol": "TCP"},
        ],
        "readinessProbe": {"httpGet": {"port": "http-dashboard", "path": "/health"},
                           "initialDelaySeconds": 0, "periodSeconds": 1, "timeoutSeconds": 300},
        "livenessProbe": {"httpGet": {"port": "http-dashboard", "path": "/health"},
                          "initialDelaySeconds": 15, "periodSeconds": 20},
    }
    replicas = spec.workers if spec.workers is not None else (spec.adaptive_minimum or 1)
    metadata: dict[str, Any] = {"name": spec.name}
    if spec.namespace is not None:
        metadata["namespace"] = spec.namespace
    return {
        "apiVersion": "kubernetes.dask.org/v1",
        "kind": "DaskCluster",
        "metadata": metadata,
        "spec": {
            "idleTimeout": 0,
            "worker": {"replicas": replicas, "spec": {"containers": [worker_container]}},
            "scheduler": {
                "spec": {"containers": [scheduler_container]},
                "service": {
                    "type": "ClusterIP",
                    "selector": {
                        "dask.org/cluster-name": spec.name,
                        "dask.org/component": "scheduler",
                    },
                    "ports": [
                        {"name": "tcp-comm", "protocol": "TCP", "port": 8786, "targetPort": "tcp-comm"},
                        {"name": "http-dashboard", "protocol": "TCP", "port": 8787,
                         "targetPort": "http-dashboard"},
                    ],
                },
            },
        },
    }


def _k8s_quantity(nbytes: int) -> str:
    for unit, size in (("Ti", 2**40), ("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if nbytes % size == 0:
            return f"{nbytes // size}{unit}"
    for unit, size in (("T", 10**12), ("G", 10**9), ("M", 10**6), ("k", 10**3)):
        if nbytes % size == 0:
            return f"{nbytes // size}{unit}"
    return str(nbytes)


# --------------------------------------------------------------------------- creating clusters


#: Environment variable that, when set, leaves Dask's statistical profiler as it says.
PROFILE_ENV = "DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED"

#: glibc allocator settings for worker processes (bytes): arrays below the mmap threshold come
#: from the heap and freed memory is returned to the system only above the trim threshold.
WORKER_MALLOC = {"MALLOC_MMAP_THRESHOLD_": 64 * 2**20, "MALLOC_TRIM_THRESHOLD_": 256 * 2**20}


def embedded_config() -> dict[str, Any]:
    """Dask settings of the clusters tiledseg starts on this machine (``local`` kinds).

    * No statistical profiler: Dask samples every worker thread's stack every 10 ms for the
      dashboard's "Profile" page, about 5 % of a core per worker on tile tasks. Setting
      :data:`PROFILE_ENV` keeps Dask's own choice.
    * :data:`WORKER_MALLOC` for worker processes instead of Dask's ``MALLOC_TRIM_THRESHOLD_=65536``.
      Dask's setting hands every freed array back to the system, so each of the tile stage's
      megabyte-sized temporaries is page-faulted in afresh: with it a worker process spent
      about 40 % of its time in the kernel (9.6 s system against 15.5 s user on a 67-Mpx
      slide; 1.1-2.0 s with these settings, for about 10 % more peak memory; figures in
      benchmarks/results/engine.md). Variables set in the environment win, as in Dask.

    Returns
    -------
    dict
        Dotted Dask configuration keys, for ``dask.config.set`` around the cluster's creation
        (the nannies read the allocator settings when they start) and for the nannies'
        ``config=`` (workers started later).
    """
    settings: dict[str, Any] = {
        f"distributed.nanny.pre-spawn-environ.{key}": value for key, value in WORKER_MALLOC.items()
    }
    if PROFILE_ENV not in os.environ:
        settings["distributed.worker.profile.enabled"] = False
    return settings


def local_cluster(**kwargs: Any) -> Any:
    """A :class:`distributed.LocalCluster` started with :func:`embedded_config`'s settings.

    The allocator variables are also put in this process's environment where unset (as Dask's
    nannies do with their own values), so worker processes started later, by adaptive scaling
    or after a worker died, inherit them too; a value already there wins, as in Dask.
    """
    import dask
    from distributed import LocalCluster

    for key, value in WORKER_MALLOC.items():
        os.environ.setdefault(key, str(value))
    settings = embedded_config()
    if kwargs.get("processes", True):
        kwargs = {"config": settings, **kwargs}  # each nanny hands these to its worker process
    # Nannies and in-process workers read the settings when they start.
    with dask.config.set(settings):
        return LocalCluster(**kwargs)  # type: ignore[no-untyped-call]


def worker_environment() -> dict[str, str]:
    """The settings of :func:`embedded_config` as environment variables for workers started elsewhere.

    Added to batch job scripts (before the spec's own ``prologue`` lines) and Kubernetes worker
    pods: the nanny there hands the allocator settings to its worker process, and Dask reads
    the profiler switch from the environment.
    """
    env = {key: str(value) for key, value in WORKER_MALLOC.items()}
    env[PROFILE_ENV] = "False"
    return env


def make_cluster(spec: ClusterSpec) -> Any:
    """Create the cluster ``spec`` describes, scaled as asked; the caller closes it.

    Parameters
    ----------
    spec : ClusterSpec
        Any kind but ``address`` (which has no cluster object: connect a ``Client`` to it, or
        use :func:`~tiledseg.cluster.open_client`).

    Returns
    -------
    distributed.deploy.Cluster
        A ``LocalCluster``, ``LocalCUDACluster``, ``SLURMCluster``/``PBSCluster``/``LSFCluster``
        or ``KubeCluster``.

    Raises
    ------
    MissingDependencyError
        The engine for ``spec.kind`` is not installed; names the extra
        (``tiledseg[slurm]``, ``tiledseg[kubernetes]``, ``tiledseg[gpu]``).
    ClusterConfigError
        ``kind="address"`` or a spec the engine cannot satisfy.
    """
    kind = spec.kind
    if kind == "address":
        raise ClusterConfigError(
            f"kind 'address' connects to the running scheduler {spec.address!r}; there is no cluster to create"
        )
    if kind == "local":
        workers = spec.workers or _usable_cores()
        memory: str | int = spec.memory_bytes if spec.memory_bytes is not None else "auto"
        cluster: Any = local_cluster(
            n_workers=0 if spec.adaptive else workers,
            threads_per_worker=spec.threads,
            memory_limit=memory,
            processes=True,
            dashboard_address=":0",
            resources=spec.worker_resources() or None,
            local_directory=spec.local_directory,
        )
        logger.info("local cluster: %d workers x %d threads", workers, spec.threads)
    elif kind == "local-gpu":
        try:
            from dask_cuda import LocalCUDACluster
        except ImportError as exc:
            raise MissingDependencyError(
                "cluster kind 'local-gpu' needs dask-cuda and a CUDA GPU: pip install 'tiledseg[gpu]'"
            ) from exc
        kwargs: dict[str, Any] = {
            "threads_per_worker": spec.threads,
            "resources": spec.worker_resources(),
            "dashboard_address": ":0",
        }
        if spec.workers is not None:
            kwargs["n_workers"] = spec.workers
        if spec.memory_bytes is not None:
            kwargs["memory_limit"] = spec.memory_bytes
        if spec.local_directory is not None:
            kwargs["local_directory"] = spec.local_directory
        cluster = LocalCUDACluster(**kwargs)
    elif kind in _JOBQUEUE_KINDS:
        cluster_cls, _ = _jobqueue_classes(kind)
        cluster = cluster_cls(name=f"{spec.name}-worker", **_jobqueue_kwargs(spec))
        if not spec.adaptive:
            cluster.scale(jobs=spec.workers or 1)
        logger.info("%s cluster: job script\n%s", kind, cluster.job_script())
    elif kind == "kubernetes":
        try:
            from dask_kubernetes.operator import KubeCluster
        except ImportError as exc:
            raise MissingDependencyError(
                "cluster kind 'kubernetes' needs dask-kubernetes: pip install 'tiledseg[kubernetes]'"
            ) from exc
        k8s = kubernetes_cluster_spec(spec)
        kwargs = {"custom_cluster_spec": k8s}
        if spec.namespace is not None:
            kwargs["namespace"] = spec.namespace
        cluster = KubeCluster(**kwargs)
    else:  # pragma: no cover - guarded by ClusterSpec.__post_init__
        raise ClusterConfigError(f"unknown cluster kind {kind!r}")
    if spec.adaptive:
        if kind in _JOBQUEUE_KINDS:
            cluster.adapt(minimum_jobs=spec.adaptive_minimum, maximum_jobs=spec.adaptive_maximum)
        else:
            cluster.adapt(minimum=spec.adaptive_minimum, maximum=spec.adaptive_maximum)
    return cluster


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def example_config(kind: str = "slurm") -> str:
    """A commented example config file for ``kind`` (what ``tiledseg cluster config`` writes)."""
    if kind not in CLUSTER_KINDS:
        ClusterSpec(kind=kind)  # raises the clear error
    lines = [
        "# tiledseg cluster configuration: use it with `tiledseg run ... --cluster THIS_FILE`",
        "# or tiledseg.run(..., cluster=tiledseg.load_cluster_config(\"THIS_FILE\")).",
        "# Memory sizes: \"4GiB\" (binary), \"4GB\" (decimal), \"4096MB\".",
        "[cluster]",
        f'kind = "{kind}"',
    ]
    if kind == "local":
        lines += [
            "workers = 4              # worker processes (default: one per core)",
            "threads = 1              # threads per worker",
            'memory = "4GiB"          # per worker (default: machine memory / workers)',
        ]
    elif kind == "address":
        lines += ['address = "tcp://scheduler.example.org:8786"']
    elif kind in _JOBQUEUE_KINDS:
        walltime = "02:00" if kind == "lsf" else "02:00:00"
        lines += [
            "workers = 4              # jobs to submit (ignored when adaptive is set)",
            "cores = 8                # cores per job",
            "processes = 1            # worker processes per job",
            "threads = 8              # threads per worker process",
            'memory = "32GiB"         # memory per job',
            f'walltime = "{walltime}"',
            'queue = "normal"         # queue / partition',
            '# account = "mylab"',
            "gpus = 0                 # GPUs per job; GPU workers advertise the GPU resource",
            "# job_directives = [\"--constraint=a100\"]",
            "# prologue = [\"module load cuda\", \"source ~/envs/tiledseg/bin/activate\"]",
            '# local_directory = "/scratch/$USER"',
            "# adaptive = { minimum = 1, maximum = 20 }",
            "# wait_timeout = 3600      # seconds to wait for the first worker (queued jobs)",
        ]
    elif kind == "kubernetes":
        lines += [
            "workers = 4              # worker pods",
            "cores = 4                # CPU per pod",
            "threads = 4",
            'memory = "16GiB"         # per pod',
            "gpus = 0                 # nvidia.com/gpu per pod",
            f'image = "{DEFAULT_IMAGE}"',
            '# namespace = "imaging"',
            "# adaptive = { minimum = 1, maximum = 20 }",
        ]
    elif kind == "local-gpu":
        lines += [
            "# one worker per visible GPU (CUDA_VISIBLE_DEVICES), each advertising GPU=1",
            "threads = 1",
            '# memory = "32GiB"       # host memory per worker',
        ]
    return "\n".join(lines) + "\n"
