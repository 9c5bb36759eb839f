"""One model instance per worker process, and the choice of the device it runs on.

Deep-learning backends are small, picklable parameter objects that Dask ships to every worker;
the network itself never travels with them. Instead each worker process keeps a module-level
cache keyed by ``(framework, model path or name, device)``: the first tile that needs a model
loads it, every later tile of the same process reuses it. A lock makes concurrent first tiles on
a multi-threaded worker load it once.

Device rule (the same for Mesmer and Cellpose): ``device=None`` means "the first GPU". When no GPU
is visible, ``allow_cpu`` decides: ``False`` refuses to run (a clear error), ``True`` runs on the
CPU, and ``None`` (the default) defers to the tile engine, which already refused to start a GPU
backend without GPU workers unless the user passed ``allow_cpu=True`` / ``--allow-cpu``; it runs
on the CPU and logs a warning once per worker, so a GPU job never falls back to CPU unnoticed.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import Counter
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

from tiledseg.errors import BackendError, ParameterError

__all__ = [
    "cached_model",
    "clear_model_cache",
    "model_load_count",
    "postprocess_threads",
    "resolve_device",
    "validate_device",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

_MODELS: dict[Hashable, Any] = {}
_LOADS: Counter[Hashable] = Counter()
_LOCK = threading.Lock()


def cached_model(key: Hashable, loader: Callable[[], T]) -> T:
    """The model cached under ``key`` in this process, loading it with ``loader`` on first use.

    Parameters
    ----------
    key : hashable
        Identifies the model: framework, resolved path or name, device.
    loader : callable
        Called with no argument, at most once per key and process (unless the cache is cleared).

    Returns
    -------
    object
        The loaded model.
    """
    try:
        return _MODELS[key]  # type: ignore[no-any-return]
    except KeyError:
        pass
    with _LOCK:
        if key not in _MODELS:
            logger.info("loading model %s in this worker process", key)
            _MODELS[key] = loader()
            _LOADS[key] += 1
        return _MODELS[key]  # type: ignore[no-any-return]


def model_load_count(key: Hashable | None = None) -> int:
    """How often a model was loaded in this process (all keys when ``key`` is None)."""
    if key is None:
        return sum(_LOADS.values())
    return _LOADS[key]


def clear_model_cache() -> None:
    """Drop every cached model (frees GPU memory held by this process's models)."""
    with _LOCK:
        _MODELS.clear()
        _LOADS.clear()


def _normalise_device(device: str | None) -> str:
    spec = "auto" if device is None else str(device).strip().lower()
    if spec.startswith("gpu"):
        spec = "cuda" + spec[3:]
    valid = spec in ("auto", "cpu", "cuda") or (spec.startswith("cuda:") and spec[5:].isdigit())
    if not valid:
        raise ParameterError(f"`device` must be None, 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    return spec


def validate_device(device: str | None, *, allow_cpu: bool | None, backend: str) -> None:
    """Check ``device``'s spelling, and that ``"cpu"`` is not combined with ``allow_cpu=False``."""
    if _normalise_device(device) == "cpu" and allow_cpu is False:
        raise ParameterError(
            f"backend {backend!r}: `device='cpu'` contradicts `allow_cpu=False`"
        )


def resolve_device(
    device: str | None,
    *,
    gpu_available: bool,
    allow_cpu: bool | None,
    backend: str,
) -> str:
    """Decide the device string (``"cuda"``, ``"cuda:1"`` or ``"cpu"``) a backend runs on.

    Parameters
    ----------
    device : str, optional
        ``None`` (first GPU), ``"cuda"``, ``"cuda:N"``, ``"gpu"``, ``"gpu:N"`` or ``"cpu"``.
    gpu_available : bool
        Whether the framework sees a GPU in this process.
    allow_cpu : bool or None
        When no GPU is visible: ``False`` raises, ``True`` or ``None`` (defer to the engine's
        check) runs on the CPU.
    backend : str
        Backend name, for messages.

    Returns
    -------
    str
        ``"cpu"`` or ``"cuda[:N]"``.

    Raises
    ------
    ParameterError
        ``device`` is not one of the accepted spellings.
    BackendError
        A GPU is required (``device`` names one, or ``device=None`` with ``allow_cpu=False``)
        but none is visible in this process.
    """
    spec = _normalise_device(device)
    if spec == "cpu":
        validate_device(device, allow_cpu=allow_cpu, backend=backend)
        return "cpu"
    if gpu_available:
        return "cuda" if spec == "auto" else spec
    if spec == "auto" and allow_cpu is not False:
        return "cpu"
    raise BackendError(
        f"backend {backend!r} needs a GPU but none is visible in this worker process "
        f"(device={device!r}); run it on a worker with a CUDA GPU (Dask resource GPU=1) or pass "
        "`allow_cpu=True` (CLI: --allow-cpu) to accept slow CPU inference"
    )


def postprocess_threads() -> int:
    """Threads for a backend's CPU post-processing pool: half this process's cores, 2 to 8."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 2)
    return max(2, min(8, cores // 2))
