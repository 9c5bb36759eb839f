"""``tiledseg.api.run``: convert -> segment -> measure for many slides on one cluster.

The cluster is opened once (:func:`tiledseg.cluster.open_client`, from a
:class:`~tiledseg.cluster.ClusterSpec`, an address, a ``Client`` or nothing) and every slide
runs on it, one after the other. Every stage is resumable, so re-running the same call after an
interruption continues where it stopped:

* conversion reuses a complete ``<output_dir>/<name>.ome.zarr`` (an incomplete one is replaced);
* segmentation reuses a complete ``labels/<labels_name>`` made by an earlier ``run`` with the same
  options, recomputes it when they changed, and otherwise resumes from the engine's per-tile
  scratch store (only unfinished tiles are computed); labels that ``run`` did not make (the
  user's own, in their slide) are measured as they are, never replaced without ``overwrite``;
* tables and reports are reused when their options and the labels are unchanged (the table
  writers are atomic; a per-slide state file ``<output_dir>/.tiledseg-run/<name>.json``, written
  after each stage, records the options every finished stage used).

A slide that fails does not stop the others (``on_error="continue"``, the default): its error is
in the summary, and :meth:`RunSummary.raise_for_failures` re-raises it. A manifest
``<output_dir>/tiledseg-run.json`` is rewritten after every slide.

This module also holds the cluster helpers the CLI needs (``describe_cluster``), so the CLI
never touches :mod:`tiledseg.cluster` directly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import json
import logging
import math
import os
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tiledseg.cluster import resolve_statistics
from tiledseg.cluster._client import (
    ClusterInfo,
    check_tile_memory,
    cluster_info,
    open_client,
    predict_tile_memory,
)
from tiledseg.cluster._deploy import (
    ClusterSpec,
    example_config,
    job_script,
    kubernetes_cluster_spec,
    load_cluster_config,
    resolve_cluster,
)
from tiledseg.errors import (
    ParameterError,
    SlideNotFoundError,
    TiledsegError,
)
from tiledseg.progress import ProgressCallback, ProgressEvent, emit

__all__ = [
    "ClusterInfo",
    "ClusterSpec",
    "RunSummary",
    "SlideRun",
    "cluster_job_script",
    "describe_cluster",
    "example_cluster_config",
    "kubernetes_cluster_spec",
    "load_cluster_config",
    "resolve_cluster",
    "run",
    "score_labels",
]

logger = logging.getLogger(__name__)

MANIFEST = "tiledseg-run.json"
#: Per-slide record of the options each finished stage used (what decides reuse vs recompute).
STATE_DIR = ".tiledseg-run"
_TABLE_SUFFIX = {"parquet": ".cells.parquet", "h5ad": ".cells.h5ad", "csv": ".cells.csv", "steinbock": ".steinbock"}


# --------------------------------------------------------------------------- cluster helpers


def describe_cluster(cluster: ClusterSpec | str | Any | None = None, *, connect_timeout: float = 30.0) -> ClusterInfo:
    """Open the cluster ``cluster`` names, describe its workers, and close it again.

    Parameters
    ----------
    cluster : ClusterSpec, str or Client, optional
        As accepted by :func:`~tiledseg.api.run` (a kind, an address, a ``.toml`` file, a spec or
        a ``Client``); ``None`` describes the default local cluster.
    connect_timeout : float
        Seconds to try reaching a scheduler address.

    Returns
    -------
    ClusterInfo
    """
    target = _cluster_target(cluster)
    with open_client(target, connect_timeout=connect_timeout) as client:
        return cluster_info(client)


def example_cluster_config(kind: str = "slurm") -> str:
    """A commented example cluster config file (TOML) for ``kind``."""
    return example_config(kind)


def cluster_job_script(cluster: ClusterSpec | str) -> str:
    """The batch job script of a ``slurm`` / ``pbs`` / ``lsf`` cluster spec (nothing is submitted)."""
    return job_script(resolve_cluster(cluster) if not isinstance(cluster, ClusterSpec) else cluster)


def _cluster_target(cluster: Any) -> Any:
    if cluster is None or isinstance(cluster, ClusterSpec):
        return cluster
    if isinstance(cluster, (str, os.PathLike)):
        return resolve_cluster(cluster)
    return cluster  # a distributed.Client; open_client checks the type


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class SlideRun:
    """What happened to one slide in :func:`run`.

    Attributes
    ----------
    name : str
        Slide name (file or acquisition name).
    source : str
        The input it came from.
    status : str
        ``"done"`` (computed now), ``"reused"`` (everything was already there) or ``"failed"``.
    slide, labels, table, report : str or None
        Output locations.
    n_cells : int or None
        Cells segmented.
    tiles_computed, tiles_resumed : int
        Tiles computed in this call, and tiles taken from an earlier interrupted run.
    seconds : float
        Wall time spent on this slide in this call.
    stage_seconds : dict
        Seconds per stage (``convert``, ``segment``, ``measure``, ``report``).
    warnings : tuple of str
        Warnings raised or logged while the slide ran.
    error : str or None
        The error that stopped the slide (``status == "failed"``).
    """

    name: str
    source: str
    status: str
    slide: str | None = None
    labels: str | None = None
    table: str | None = None
    report: str | None = None
    n_cells: int | None = None
    tiles_computed: int = 0
    tiles_resumed: int = 0
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    error: str | None = None
    exception: BaseException | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (without the exception object)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "exception"}
        out["warnings"] = list(self.warnings)
        return out


@dataclass(frozen=True)
class RunSummary:
    """The result of :func:`run`: one :class:`SlideRun` per slide, in input order.

    Attributes
    ----------
    slides : tuple of SlideRun
    output_dir : str
    cluster : dict
        The cluster the run used (:meth:`ClusterInfo.to_dict`).
    seconds : float
        Wall time of the whole call.
    """

    slides: tuple[SlideRun, ...]
    output_dir: str
    cluster: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def failed(self) -> tuple[SlideRun, ...]:
        """Slides that failed."""
        return tuple(s for s in self.slides if s.status == "failed")

    @property
    def ok(self) -> bool:
        """True when no slide failed."""
        return not self.failed

    @property
    def n_cells(self) -> int:
        """Cells over all slides that finished."""
        return sum(s.n_cells or 0 for s in self.slides)

    def to_frame(self) -> Any:
        """One row per slide (``pandas.DataFrame``): status, cells, tiles, seconds, warnings, error."""
        import pandas as pd

        rows = [
            {
                "slide": s.name,
                "status": s.status,
                "cells": s.n_cells,
                "tiles_computed": s.tiles_computed,
                "tiles_resumed": s.tiles_resumed,
                "seconds": round(s.seconds, 2),
                "warnings": len(s.warnings),
                "error": s.error,
                "table": s.table,
            }
            for s in self.slides
        ]
        return pd.DataFrame(rows).set_index("slide") if rows else pd.DataFrame()

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (what the manifest holds)."""
        return {
            "output_dir": self.output_dir,
            "seconds": round(self.seconds, 3),
            "cluster": self.cluster,
            "slides": [s.to_dict() for s in self.slides],
        }

    def raise_for_failures(self) -> None:
        """Re-raise the first failed slide's error (chained), if any."""
        for s in self.failed:
            if s.exception is not None:
                raise s.exception
            raise TiledsegError(f"slide {s.name!r} failed: {s.error}")


# --------------------------------------------------------------------------- inputs


_GLOB_CHARS = set("*?[")


def _expand(sources: Any) -> list[str]:
    items = [sources] if isinstance(sources, (str, os.PathLike)) else list(sources)
    if not items:
        raise SlideNotFoundError("no sources given; expected slides, folders or glob patterns")
    out: list[str] = []
    for item in items:
        text = os.path.expanduser(os.fspath(item))
        if _GLOB_CHARS & set(text):
            found = sorted(glob.glob(text))
            if not found:
                raise SlideNotFoundError(f"the pattern {text!r} matches no file or folder")
            out.extend(found)
        else:
            out.append(text)
    return out


@dataclass(frozen=True)
class _Planned:
    name: str
    source: str
    spec: Any  # tiledseg.io._ingest.SourceSpec
    existing: str | None  # an OME-Zarr used in place


def _plan(sources: Any, panel: Any) -> list[_Planned]:
    from tiledseg.io import find_sources

    specs = find_sources(_expand(sources), panel=panel)
    return [
        _Planned(
            name=s.name,
            source=s.path,
            spec=s,
            existing=s.path if s.kind == "ome-zarr" and s.panel is None else None,
        )
        for s in specs
    ]


# --------------------------------------------------------------------------- per-slide stages


def _is_complete_slide(url: str) -> bool:
    from tiledseg.io import open_slide

    try:
        open_slide(url)
    except (TiledsegError, FileNotFoundError):  # absent, incomplete or unreadable: write it again
        return False
    return True


def _convert_one(item: _Planned, target: str, *, pixel_size_um: float | None, chunks: Any) -> tuple[str, bool]:
    """Write one planned slide (returns url, reused)."""
    if item.existing is not None:
        return item.existing, True
    if _is_complete_slide(target):
        logger.info("reusing converted slide %s", target)
        return target, True
    from tiledseg.api._convert import write_source

    # write_source converts with local threads even while a distributed Client is the default.
    url = write_source(item.spec, target, pixel_size_um=pixel_size_um, chunks=chunks)
    return url, False


def _labels_fingerprint(url: str, labels_name: str) -> str | None:
    """The engine's fingerprint of a complete label image, ``""`` for foreign labels, None if absent."""
    from tiledseg.io import open_labels, open_slide

    if labels_name not in open_slide(url).labels:
        return None
    meta = dict(open_labels(url, labels_name).attrs).get("tiledseg", {})
    return str(meta.get("fingerprint", "")) if isinstance(meta, Mapping) else ""


def _state_path(out_dir: Path, name: str) -> Path:
    return out_dir / STATE_DIR / f"{name}.json"


def _read_state(out_dir: Path, name: str) -> dict[str, Any]:
    path = _state_path(out_dir, name)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_state(out_dir: Path, name: str, state: Mapping[str, Any]) -> None:
    path = _state_path(out_dir, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(_jsonable(state), indent=1, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def _predict_memory_warning(client: Any, url: str, backend: str, backend_params: Mapping[str, Any],
                            tile_size: int | None, halo_px: int | None, halo_um: float | None) -> None:
    """Warn before a slide starts when its tile tasks will not fit a worker's memory."""
    import numpy as np

    from tiledseg.io import open_slide
    from tiledseg.segment import get_backend

    slide = open_slide(url)
    b = get_backend(backend, **dict(backend_params))
    names = b.channels(slide.channel_names)
    n_inputs = len(names)
    px = float(slide.pixel_size_um)
    halo = halo_px if halo_px is not None else math.ceil((halo_um if halo_um is not None else b.halo_um()) / px)
    chunk = int(max(slide.image.chunksize[1:]))
    tile = tile_size or max(1, round(int(getattr(b, "default_tile_size", 1024)) / chunk)) * chunk
    batch = 4 if getattr(b, "requires_gpu", False) else 1
    nbytes = predict_tile_memory(tile, int(halo), n_inputs, itemsize=np.dtype(slide.image.dtype).itemsize,
                                 prepared_planes=max(2, n_inputs), batch=batch)
    check_tile_memory(client, nbytes, what=f"tile ({tile}+2x{halo} px, {n_inputs} inputs)")


def _table_path(out_dir: Path, name: str, fmt: str) -> Path:
    # steinbock tables of every slide share one project folder (intensities/<slide>.csv, ...)
    return out_dir / "steinbock" if fmt == "steinbock" else out_dir / f"{name}{_TABLE_SUFFIX[fmt]}"


@contextlib.contextmanager
def _capture_warnings(sink: list[str]) -> Iterator[None]:
    """Collect warnings and WARNING log records of tiledseg while a slide runs."""

    class _Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            sink.append(record.getMessage())

    handler = _Handler(level=logging.WARNING)
    root = logging.getLogger("tiledseg")
    root.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                yield
            finally:
                for w in caught:
                    text = f"{w.category.__name__}: {w.message}"
                    sink.append(text)
                    logger.warning("%s", text)
    finally:
        root.removeHandler(handler)


def _tag(progress: ProgressCallback | None, name: str) -> ProgressCallback | None:
    if progress is None:
        return None

    def tagged(event: ProgressEvent) -> None:
        progress(dataclasses.replace(event, detail={**event.detail, "slide": name}))

    return tagged


# --------------------------------------------------------------------------- run


def run(
    sources: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    output_dir: str | os.PathLike[str],
    backend: str = "watershed",
    cluster: ClusterSpec | str | os.PathLike[str] | None = None,
    client: Any = None,
    panel: str | os.PathLike[str] | Any = None,
    pixel_size_um: float | None = None,
    chunks: int | Sequence[int] | None = None,
    tile_size: int | None = None,
    halo_um: float | None = None,
    halo_px: int | None = None,
    labels_name: str = "cells",
    statistics_sample: str | float = "auto",
    statistics: Sequence[str] = ("mean",),
    quantiles: Sequence[float] = (),
    neighbors: str | None = "borders",
    format: str = "parquet",
    report: bool = False,
    retries: int = 2,
    allow_cpu: bool = False,
    overwrite: bool = False,
    on_error: str = "continue",
    progress: ProgressCallback | None = None,
    backend_params: Mapping[str, Any] | None = None,
) -> RunSummary:
    """Convert, segment and measure several slides on one cluster, resumably.

    Parameters
    ----------
    sources : path, glob or sequence of them
        Slides (``.ome.zarr``), ``.mcd`` / ``.txt`` / ``.tiff`` files, steinbock folders
        (``img/`` + ``panel.csv``), folders of those, or glob patterns (``"raw/*.mcd"``).
        Existing OME-Zarr slides are used in place (labels are added to them); everything else
        is converted to ``<output_dir>/<name>.ome.zarr``.
    output_dir : path
        Where converted slides, tables, reports and the run manifest go.
    backend : str
        Segmentation backend (``tiledseg.segment.available_backends()``).
    cluster : ClusterSpec, str or path, optional
        Where to run: a spec, a kind (``"local"``, ``"slurm"``...), a scheduler address or a
        ``.toml`` config file. Default: a local cluster sized to the machine.
    client : distributed.Client, optional
        An existing client instead of ``cluster`` (not closed here).
    panel : path or DataFrame, optional
        steinbock panel applied when converting.
    pixel_size_um : float, optional
        Pixel size for inputs that carry none.
    chunks : int or tuple, optional
        Chunks of converted slides.
    tile_size, halo_um, halo_px : optional
        Tiling (see :func:`tiledseg.api.segment`).
    labels_name : str
        Name of the label image written under ``labels/``.
    statistics_sample : {"auto", "full"} or float
        Share of each slide its slide-level segmentation statistics are taken from (see
        :func:`tiledseg.api.segment`).
    statistics, quantiles, neighbors, format
        Measurement options (see :func:`tiledseg.api.measure`); ``format`` is ``"parquet"``,
        ``"h5ad"``, ``"csv"`` or ``"steinbock"``.
    report : bool
        Also write an HTML QC report per slide (when :func:`tiledseg.api.report` is available).
    retries : int
        Times a failed tile task is retried (e.g. after a worker died) before it counts as failed.
    allow_cpu : bool
        Let a GPU backend run on CPU workers when no worker advertises a ``GPU`` resource.
    overwrite : bool
        Recompute everything, ignoring finished outputs.
    on_error : {"continue", "raise"}
        Go on with the next slide after a failure (default; see :attr:`RunSummary.failed`), or
        stop at once.
    progress : callable, optional
        Receives every stage's :class:`~tiledseg.progress.ProgressEvent`, tagged with
        ``detail["slide"]``; a ``"message"`` event carries the dashboard link at start.
    backend_params : mapping, optional
        Parameters of the backend.

    Returns
    -------
    RunSummary

    Raises
    ------
    SlideNotFoundError
        A source does not exist or a pattern matches nothing.
    ParameterError
        A bad option.
    ClusterConfigError, MissingDependencyError
        The cluster cannot be created or reached.

    Examples
    --------
    >>> summary = run(["raw/*.mcd"], output_dir="out", cluster="cluster.toml")  # doctest: +SKIP
    >>> summary.to_frame()  # doctest: +SKIP
    """
    t0 = time.perf_counter()
    if on_error not in ("continue", "raise"):
        raise ParameterError(f"`on_error` must be 'continue' or 'raise', got {on_error!r}")
    if format not in _TABLE_SUFFIX:
        raise ParameterError(f"`format` must be one of {sorted(_TABLE_SUFFIX)}, got {format!r}")
    if not isinstance(retries, int) or retries < 0:
        raise ParameterError(f"`retries` must be an integer >= 0, got {retries!r}")
    if client is not None and cluster is not None:
        raise ParameterError("give either `cluster` or `client`, not both")
    params = dict(backend_params or {})
    from tiledseg.segment import get_backend

    get_backend(backend, **params)  # unknown backend or bad parameter: fail before any work
    resolve_statistics(statistics_sample, (1, 1))  # a bad statistics_sample too
    out_dir = Path(os.fspath(output_dir)).expanduser()
    if out_dir.exists() and not out_dir.is_dir():
        raise ParameterError(f"`output_dir` {str(out_dir)!r} exists and is not a folder")
    planned = _plan(sources, panel)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = client if client is not None else _cluster_target(cluster)
    results: list[SlideRun] = []
    info: ClusterInfo | None = None
    emit(progress, ProgressEvent("slides", 0, len(planned), "start"))
    with open_client(target) as c:
        info = cluster_info(c)
        emit(progress, ProgressEvent("cluster", 0, 0, "message", {
            "message": f"Dask dashboard: {info.dashboard} ({info.summary()})",
            "dashboard": info.dashboard, "scheduler": info.scheduler, "workers": info.n_workers,
        }))
        for k, item in enumerate(planned):
            one = _run_slide(
                item, out_dir=out_dir, client=c, backend=backend, params=params,
                pixel_size_um=pixel_size_um, chunks=chunks, tile_size=tile_size, halo_um=halo_um,
                halo_px=halo_px, labels_name=labels_name, statistics_sample=statistics_sample, measure_options={
                    "statistics": tuple(statistics), "quantiles": tuple(quantiles), "neighbors": neighbors,
                },
                fmt=format, report=report, retries=retries, allow_cpu=allow_cpu, overwrite=overwrite,
                progress=progress,
            )
            results.append(one)
            _write_manifest(out_dir, RunSummary(tuple(results), str(out_dir), info.to_dict(),
                                                time.perf_counter() - t0))
            emit(progress, ProgressEvent("slides", k + 1, len(planned), "advance", {
                "slide": one.name, "status": one.status, "cells": one.n_cells, "seconds": round(one.seconds, 3),
                **({"error": one.error} if one.error else {}),
            }))
            if one.status == "failed" and on_error == "raise":
                assert one.exception is not None
                raise one.exception
    emit(progress, ProgressEvent("slides", len(planned), len(planned), "end"))
    summary = RunSummary(tuple(results), str(out_dir), info.to_dict() if info else {}, time.perf_counter() - t0)
    _write_manifest(out_dir, summary)
    return summary


def _write_manifest(out_dir: Path, summary: RunSummary) -> None:
    path = out_dir / MANIFEST
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(summary.to_dict(), indent=2, default=str), encoding="utf-8")
    os.replace(tmp, path)


def _run_slide(
    item: _Planned,
    *,
    out_dir: Path,
    client: Any,
    backend: str,
    params: dict[str, Any],
    pixel_size_um: float | None,
    chunks: Any,
    tile_size: int | None,
    halo_um: float | None,
    halo_px: int | None,
    labels_name: str,
    statistics_sample: str | float,
    measure_options: dict[str, Any],
    fmt: str,
    report: bool,
    retries: int,
    allow_cpu: bool,
    overwrite: bool,
    progress: ProgressCallback | None,
) -> SlideRun:
    from tiledseg import api
    from tiledseg.api._segment import segment

    t0 = time.perf_counter()
    stage_seconds: dict[str, float] = {}
    notes: list[str] = []
    values: dict[str, Any] = {"name": item.name, "source": item.source}
    reused_everything = True
    tagged = _tag(progress, item.name)
    try:
        with _capture_warnings(notes):
            # ---- convert
            t = time.perf_counter()
            target = str(out_dir / f"{item.name}.ome.zarr")
            url, reused = _convert_one(item, target, pixel_size_um=pixel_size_um, chunks=chunks)
            reused_everything &= reused
            values["slide"] = url
            stage_seconds["convert"] = time.perf_counter() - t
            # ---- segment
            t = time.perf_counter()
            seg_key = _jsonable({"backend": backend, "params": params, "tile_size": tile_size,
                                 "halo_um": halo_um, "halo_px": halo_px, "labels_name": labels_name,
                                 "statistics_sample": statistics_sample})
            state = _read_state(out_dir, item.name)
            fingerprint = _labels_fingerprint(url, labels_name)
            if overwrite or fingerprint is None:
                recompute = True
            elif state.get("segment") == seg_key and state.get("fingerprint") == fingerprint:
                recompute = False
            elif not state and item.existing is None:
                recompute = True  # our own converted slide: labels of unknown options
            elif not state:
                # labels that this run did not make (e.g. the user's own, in their slide): keep them
                notes.append(f"labels/{labels_name} already exists in {url} and was not made by `tiledseg run`; "
                             "measuring it as is (pass overwrite=True / --overwrite to re-segment)")
                recompute = False
            else:
                logger.warning("slide %s: the segmentation options changed since labels/%s was made; recomputing",
                               item.name, labels_name)
                recompute = True
            if recompute:
                _predict_memory_warning(client, url, backend, params, tile_size, halo_px, halo_um)
                seg = segment(
                    url, backend=backend, tile_size=tile_size, halo_um=halo_um, halo_px=halo_px,
                    statistics_sample=statistics_sample,
                    labels_name=labels_name, client=client, overwrite=fingerprint is not None,
                    progress=tagged, retries=retries, allow_cpu=allow_cpu, **params,
                )
                reused_everything = False
                values["n_cells"] = int(seg.n_cells)
                values["tiles_computed"] = int(seg.tiles_computed)
                values["tiles_resumed"] = int(seg.tiles_resumed)
                values["labels"] = str(seg.labels_url)
                fingerprint = _labels_fingerprint(url, labels_name)
                state = {"segment": seg_key, "fingerprint": fingerprint}
                _write_state(out_dir, item.name, state)
            else:
                from tiledseg.io import open_labels

                meta = dict(open_labels(url, labels_name).attrs).get("tiledseg", {})
                values["n_cells"] = meta.get("n_cells") if isinstance(meta, Mapping) else None
                values["labels"] = f"{url}/labels/{labels_name}"
            stage_seconds["segment"] = time.perf_counter() - t
            # ---- measure
            measure = getattr(api, "measure", None)
            if measure is None:
                notes.append("measurement is not available in this build (tiledseg.api.measure missing)")
            else:
                t = time.perf_counter()
                table = _table_path(out_dir, item.name, fmt)
                measure_key = _jsonable({"format": fmt, "labels_name": labels_name, **measure_options})
                if table.exists() and not recompute and state.get("measure") == measure_key:
                    values["table"] = str(table)
                else:
                    # the table writers are atomic; the state file, written after, marks it done
                    res = measure(url, labels=labels_name, output=str(table), format=fmt, client=client,
                                  overwrite=True, progress=tagged, **measure_options)
                    values["table"] = str(table)
                    reused_everything = False
                    recompute = True  # what comes after depends on the table
                    if values.get("n_cells") is None:
                        values["n_cells"] = int(res.n_cells)
                    state = {**state, "measure": measure_key}
                    _write_state(out_dir, item.name, state)
                stage_seconds["measure"] = time.perf_counter() - t
            # ---- report
            if report:
                make_report = getattr(api, "report", None)
                if make_report is None:
                    notes.append("QC reports are not available in this build (tiledseg.api.report missing)")
                else:
                    t = time.perf_counter()
                    html = out_dir / f"{item.name}.report.html"
                    if html.exists() and not recompute and state.get("report") is True:
                        values["report"] = str(html)
                    else:
                        made = make_report(url, output=str(html), labels=labels_name,
                                           table=values.get("table") if fmt == "parquet" else None,
                                           client=client, overwrite=True, progress=tagged)
                        values["report"] = str(made)
                        reused_everything = False
                        state = {**state, "report": True}
                        _write_state(out_dir, item.name, state)
                    stage_seconds["report"] = time.perf_counter() - t
    except (TiledsegError, OSError, ValueError, RuntimeError, MemoryError) as exc:
        logger.error("slide %s failed: %s", item.name, exc)
        return SlideRun(
            **values, status="failed", seconds=time.perf_counter() - t0, stage_seconds=stage_seconds,
            warnings=tuple(notes), error=f"{type(exc).__name__}: {exc}", exception=exc,
        )
    return SlideRun(
        **values, status="reused" if reused_everything else "done", seconds=time.perf_counter() - t0,
        stage_seconds=stage_seconds, warnings=tuple(notes),
    )


def score_labels(
    slide: str | os.PathLike[str],
    *,
    labels: str = "cells",
    truth: str = "truth_cells",
    iou_threshold: float = 0.5,
) -> Any:
    """Match a slide's label image against a ground-truth label image of the same slide.

    Reads both label images whole, so it is meant for demo and benchmark slides (synthetic
    slides written by :func:`tiledseg.datasets.write_synthetic_slide` carry ``truth_cells``).

    Parameters
    ----------
    slide : str or path
        The OME-Zarr slide.
    labels, truth : str
        Names of the predicted and the true label images under ``labels/``.
    iou_threshold : float
        Minimum IoU of a match.

    Returns
    -------
    tiledseg.metrics.MatchResult
        ``tp``, ``fp``, ``fn``, ``precision``, ``recall``, ``f1``...

    Raises
    ------
    SlideNotFoundError
        A label image is missing.
    """
    from tiledseg.io import open_labels, open_slide
    from tiledseg.metrics import match_labels

    url = os.fspath(slide)
    present = open_slide(url).labels
    for name in (labels, truth):
        if name not in present:
            raise SlideNotFoundError(
                f"slide {url!r} has no complete label image {name!r}; it has {list(present)}"
            )
    pred = open_labels(url, labels).data.compute()  # type: ignore[no-untyped-call]
    true = open_labels(url, truth).data.compute()  # type: ignore[no-untyped-call]
    return match_labels(pred, true, iou_threshold=iou_threshold)
