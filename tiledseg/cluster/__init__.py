"""The only home of dask/distributed: clients, the tile engine, resources and progress."""

from __future__ import annotations

from tiledseg.cluster._client import open_client
from tiledseg.cluster._deploy import worker_environment
from tiledseg.cluster._segment import (
    EngineResult,
    build_inputs,
    gpu_workers,
    resolve_statistics,
    segment_slide,
)

__all__ = [
    "EngineResult",
    "build_inputs",
    "gpu_workers",
    "open_client",
    "resolve_statistics",
    "segment_slide",
    "worker_environment",
]
