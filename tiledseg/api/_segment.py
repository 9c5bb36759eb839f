"""``tiledseg.segment``: segment a whole slide tile by tile and write ``labels/<name>``."""

from __future__ import annotations

import inspect
import logging
import math
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tiledseg.cluster import open_client, resolve_statistics, segment_slide
from tiledseg.errors import (
    OutputExistsError,
    PanelError,
    ParameterError,
    SlideFormatError,
    SlideNotFoundError,
)
from tiledseg.io import Slide, open_slide
from tiledseg.io._tiff import read_tiff
from tiledseg.progress import ProgressCallback
from tiledseg.segment import get_backend
from tiledseg.segment._function import FunctionBackend
from tiledseg.segment._prepare import channel_roles_from_panel
from tiledseg.segment._registry import _load_class

__all__ = ["SegmentResult", "load_segment_config", "segment"]

logger = logging.getLogger(__name__)

#: ``[segment]`` keys a config file may set (the keyword options of :func:`segment`).
SEGMENT_KEYS = (
    "backend",
    "tile_size",
    "halo_um",
    "halo_px",
    "labels_name",
    "overwrite",
    "allow_cpu",
    "batch_size",
    "retries",
    "statistics_sample",
)


@dataclass(frozen=True)
class SegmentResult:
    """Summary of a :func:`segment` run.

    Attributes
    ----------
    labels_url : str
        URL of the written label group (``<slide>/labels/<name>``).
    slide_url, labels_name, backend : str
    n_cells, n_tiles : int
    n_truncated : int
        Cells touching their tile's window edge (possibly larger than the halo allows).
    n_seam : int
        Cells involved in a cross-tile conflict (flag ``seam`` in the measurement tables).
    seconds : float
        Wall time of the run.
    tiles_computed, tiles_resumed : int
        Tiles segmented by this run / taken from an interrupted earlier run.
    stage_seconds : dict of str -> float
        Wall time per stage (statistics, tiles, stitch, assemble); ``pyramid`` is the part of
        ``assemble`` spent building the label pyramid and marking the output complete.
    """

    labels_url: str
    slide_url: str
    labels_name: str
    backend: str
    n_cells: int
    n_tiles: int
    n_truncated: int
    n_seam: int
    seconds: float
    tiles_computed: int
    tiles_resumed: int
    n_duplicates: int = 0
    n_disagreements: int = 0
    stage_seconds: dict[str, float] = field(default_factory=dict)


def load_segment_config(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read a TOML run configuration.

    The file's ``[segment]`` table holds :func:`segment` options (``backend``, ``tile_size``,
    ``halo_um``, ...), its ``[backend]`` table the backend's parameters.

    Returns
    -------
    (dict, dict)
        The segment options and the backend parameters.

    Raises
    ------
    ParameterError
        The file is missing, not TOML, or has an unknown ``[segment]`` key.
    """
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ParameterError(f"config file {str(p)!r} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ParameterError(f"config file {str(p)!r} is not valid TOML: {exc}") from exc
    seg = data.get("segment", {})
    params = data.get("backend", {})
    if not isinstance(seg, dict) or not isinstance(params, dict):
        raise ParameterError(f"config file {str(p)!r}: [segment] and [backend] must be tables")
    unknown = sorted(set(seg) - set(SEGMENT_KEYS))
    if unknown:
        raise ParameterError(
            f"config file {str(p)!r}: unknown [segment] key(s) {unknown}; known: {list(SEGMENT_KEYS)}"
        )
    return dict(seg), dict(params)


def _is_default(value: Any, default: Any) -> bool:
    return value is default or (isinstance(value, (str, int, float, bool)) and value == default)


def _constructor_params(cls: type[Any]) -> set[str]:
    try:
        return set(inspect.signature(cls).parameters)
    except (TypeError, ValueError):
        return set()


def _check_params(cls: type[Any], name: str, params: Mapping[str, Any]) -> None:
    """Unknown backend parameters as a :class:`ParameterError` listing the known ones."""
    try:
        signature = inspect.signature(cls)
    except (TypeError, ValueError):
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values()):
        return
    unknown = sorted(set(params) - set(signature.parameters))
    if unknown:
        raise ParameterError(
            f"backend {name!r} has no parameter(s) {unknown}; its parameters are "
            f"{sorted(signature.parameters)}"
        )


#: Panel role column of backends whose constructor has no ``panel_column`` parameter.
_PANEL_COLUMNS = {"cellpose": "cellpose"}


def _panel_column(cls: type[Any], params: Mapping[str, Any]) -> str:
    """The panel column a backend reads its channel roles from.

    A ``panel_column`` parameter (given, else its default) wins; otherwise the backend's name
    decides (``cellpose`` reads the ``cellpose`` column, every other backend ``deepcell``).
    """
    if params.get("panel_column") is not None:
        return str(params["panel_column"])
    try:
        default = inspect.signature(cls).parameters["panel_column"].default
    except (TypeError, ValueError, KeyError):
        default = inspect.Parameter.empty
    if isinstance(default, str):
        return default
    return _PANEL_COLUMNS.get(str(getattr(cls, "name", "")), "deepcell")


def _panel_roles(
    slide: Slide, wanted: set[str], params: dict[str, Any], *, column: str = "deepcell"
) -> dict[str, Any]:
    """Fill unset ``nuclear`` / ``membrane`` from the panel's role ``column``."""
    missing = [k for k in ("nuclear", "membrane") if k in wanted and params.get(k) is None]
    if not missing or slide.panel is None:
        return params
    if column not in slide.panel.columns:
        logger.info("the slide's panel has no %r column; channel roles are not taken from it", column)
        return params
    try:
        roles = channel_roles_from_panel(slide.panel, column=column)
    except PanelError as exc:
        logger.warning("ignoring the panel's %s column: %s", column, exc)
        return params
    out = dict(params)
    if "nuclear" in missing and roles.nuclear:
        out["nuclear"] = list(roles.nuclear)
    if "membrane" in missing and roles.membrane:
        out["membrane"] = list(roles.membrane)
    if out != params:
        logger.info(
            "channel roles from the panel's %s column: nuclear=%s membrane=%s",
            column, out.get("nuclear"), out.get("membrane"),
        )
    return out


def _class_params(
    cls: type[Any], params: dict[str, Any], *, slide: Slide, allow_cpu: bool
) -> dict[str, Any]:
    """``params`` completed for backend class ``cls``: panel roles and ``allow_cpu``."""
    accepted = _constructor_params(cls)
    _check_params(cls, str(getattr(cls, "name", cls.__name__)), params)
    out = _panel_roles(slide, accepted, params, column=_panel_column(cls, params))
    # Only a granted ``allow_cpu`` is handed on: the backends' default (None) already defers to
    # the engine, which refuses CPU workers for a GPU backend unless allow_cpu is true.
    if allow_cpu and "allow_cpu" in accepted and out.get("allow_cpu") is None:
        out = {**out, "allow_cpu": True}
    return out


def _build_backend(
    backend: str | Callable[..., Any] | Any,
    params: dict[str, Any],
    *,
    slide: Slide,
    halo_um: float | None,
    allow_cpu: bool = False,
) -> Any:
    if isinstance(backend, str):
        cls = _load_class(backend)
        return get_backend(backend, **_class_params(cls, params, slide=slide, allow_cpu=allow_cpu))
    if isinstance(backend, type):
        return backend(**_class_params(backend, params, slide=slide, allow_cpu=allow_cpu))
    if hasattr(backend, "segment") and hasattr(backend, "channels"):
        if params:
            raise ParameterError(
                f"backend parameters {sorted(params)} cannot be applied to a backend instance "
                f"({type(backend).__name__}); set them when building it"
            )
        return backend
    if callable(backend):
        if halo_um is None:
            raise ParameterError(
                "a function backend needs `halo_um` (µm of context each side of a tile: the largest "
                "cell plus what the function looks at)"
            )
        channels = params.pop("channels", None)
        return FunctionBackend(backend, channels=channels, halo_um=halo_um, **params)
    raise ParameterError(
        f"`backend` must be a backend name, a backend object or a function, got {type(backend).__name__}"
    )


_TIFF_SUFFIXES = (".tif", ".tiff")


def _open_input(key: str, value: Any) -> Any:
    """An extra input as an array: paths to an OME-Zarr image or a TIFF are opened.

    An OME-Zarr image stays lazy (read tile by tile on the workers); a TIFF is read into memory
    (convert a large one to OME-Zarr first with ``tiledseg convert``).
    """
    if not isinstance(value, (str, os.PathLike)):
        return value
    text = os.fspath(value)
    where = f"`inputs[{key!r}]`"
    local = "://" not in text
    if local and not os.path.exists(text):
        raise SlideNotFoundError(f"{where}: {text!r} does not exist; expected an OME-Zarr image or a TIFF file")
    lowered = text.rstrip("/").lower()
    if lowered.endswith(_TIFF_SUFFIXES):
        with read_tiff(text) as src:
            # Read here, in this process: the open TIFF handle cannot travel to a cluster.
            data: np.ndarray[Any, Any] = src.image.compute(scheduler="synchronous")  # type: ignore[no-untyped-call]
            return data
    if lowered.endswith(".zarr") or (local and os.path.isdir(text)):
        return open_slide(text).image
    raise SlideFormatError(
        f"{where}: {text!r} is neither an OME-Zarr image (a .zarr folder) nor a TIFF file "
        "(.tif/.tiff)"
    )


def _open_inputs(inputs: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if inputs is None:
        return None
    return {str(key): _open_input(str(key), value) for key, value in inputs.items()}


def segment(
    slide: str | os.PathLike[str] | Slide,
    *,
    backend: str | Callable[..., Any] | Any = "watershed",
    tile_size: int | None = None,
    halo_um: float | None = None,
    halo_px: int | None = None,
    labels_name: str = "cells",
    client: Any = None,
    overwrite: bool = False,
    allow_cpu: bool = False,
    config: str | os.PathLike[str] | None = None,
    inputs: Mapping[str, Any] | None = None,
    progress: ProgressCallback | None = None,
    batch_size: int | None = None,
    retries: int = 0,
    n_workers: int | None = None,
    statistics_sample: str | float = "auto",
    **backend_params: Any,
) -> SegmentResult:
    """Segment every cell of a slide, tile by tile, into ``labels/<labels_name>``.

    The slide is cut into core tiles aligned to its chunks, each segmented with a halo of context;
    each cell is kept whole by the tile whose core holds its centroid; IDs are ``1..N``,
    consecutive and deterministic (the same whatever the number of workers or a resume).
    Re-running after an interruption reuses the finished tiles.

    Parameters
    ----------
    slide : str, path or Slide
        An OME-Zarr slide (NGFF 0.5, e.g. from ``tiledseg convert``).
    backend : str, backend object or function
        A registered backend name (``"watershed"``, ``"threshold"``, ``"mesmer"``, ...), a
        backend instance, or a function ``fn(image (C, Y, X), *, pixel_size_um) -> labels``
        (then pass ``channels=[...]`` and ``halo_um``).
    tile_size : int, optional
        Core tile edge in pixels, a multiple of the slide's chunk size; default: the backend's.
    halo_um, halo_px : float / int, optional
        Context each side of a tile; default: the backend's ``halo_um()``. ``halo_px`` wins.
    labels_name : str
        Name of the label image to write.
    client : distributed.Client, str or ClusterSpec, optional
        A client, a scheduler address or a :class:`~tiledseg.cluster.ClusterSpec` (see
        :func:`~tiledseg.api.resolve_cluster`); default: a local cluster sized to the machine.
    overwrite : bool
        Replace an existing complete label image of that name.
    allow_cpu : bool
        Let a GPU backend run on CPU workers when no worker has a ``GPU`` resource. Also handed
        to backends whose constructor takes ``allow_cpu`` (``mesmer``, ``cellpose``), unless the
        backend parameters set it.
    config : str or path, optional
        TOML file: ``[segment]`` options and ``[backend]`` parameters (explicit arguments win).
    inputs : mapping, optional
        Extra images for backends that read ``key:channel`` (the ``probabilities`` backend reads
        ``probabilities:0..2``): a ``(C, Y, X)`` or ``(Y, X)`` array (numpy or dask) of the
        slide's spatial shape, or the path of an OME-Zarr image (read lazily) or a TIFF file (read
        into memory), e.g. ``{"probabilities": "slide_probabilities.tiff"}``.
    progress : callable, optional
        Receives :class:`~tiledseg.progress.ProgressEvent` s.
    batch_size : int, optional
        Tiles per task (GPU backends batch them); default 4 for GPU backends, else 1.
    retries : int
        Retries of a tile task lost with its worker.
    n_workers : int, optional
        Workers of the embedded local cluster (ignored with ``client``).
    statistics_sample : {"auto", "full"} or float
        Where the slide-level statistics (percentiles, fitted thresholds) come from: ``"full"``
        reads every pixel; a fraction in ``(0, 1]`` reads that share of the slide's storage
        chunks, spread evenly; ``"auto"`` reads every pixel of slides up to 16 Mpx and
        ``max(1/8, 16 Mpx)`` of larger ones. The sample depends only on the slide (never on the
        tile size or the workers) and is recorded in the label metadata.
    **backend_params
        Parameters of the backend (e.g. ``nuclear=["DNA1"]``). ``nuclear``/``membrane`` left unset
        are filled from the slide panel's role column (1 nuclear, 2 membrane): the backend's
        ``panel_column`` parameter where it has one (``watershed``), ``cellpose`` for the
        ``cellpose`` backend, else ``deepcell``.

    Returns
    -------
    SegmentResult

    Raises
    ------
    OutputExistsError
        ``labels/<labels_name>`` exists and ``overwrite`` is false.
    ChannelNotFoundError
        The backend needs a channel the slide does not have.
    ParameterError
        Halo larger than the tile, tile not a multiple of the chunks, bad config, a parameter
        the backend does not have.
    SlideNotFoundError, SlideFormatError
        An ``inputs`` path that does not exist or is neither OME-Zarr nor TIFF.
    NoGPUWorkerError
        GPU backend, no GPU worker and ``allow_cpu`` false.
    TileFailedError
        A tile raised; names the tile and its window. Finished tiles stay stored.

    Examples
    --------
    >>> result = segment("slide.ome.zarr", backend="threshold", nuclear=["DNA1"])  # doctest: +SKIP
    >>> result.n_cells, result.labels_url  # doctest: +SKIP
    """
    options: dict[str, Any] = {}
    params = dict(backend_params)
    if config is not None:
        seg_cfg, backend_cfg = load_segment_config(config)
        options = seg_cfg
        params = {**backend_cfg, **params}
    defaults: dict[str, Any] = {
        "backend": "watershed", "tile_size": None, "halo_um": None, "halo_px": None,
        "labels_name": "cells", "overwrite": False, "allow_cpu": False, "batch_size": None,
        "retries": 0, "statistics_sample": "auto",
    }
    given: dict[str, Any] = {
        "backend": backend, "tile_size": tile_size, "halo_um": halo_um, "halo_px": halo_px,
        "labels_name": labels_name, "overwrite": overwrite, "allow_cpu": allow_cpu,
        "batch_size": batch_size, "retries": retries, "statistics_sample": statistics_sample,
    }
    merged: dict[str, Any] = {
        k: options[k] if k in options and _is_default(given[k], defaults[k]) else given[k]
        for k in defaults
    }
    opened = slide if isinstance(slide, Slide) else open_slide(slide)
    if merged["labels_name"] in opened.labels and not merged["overwrite"]:
        raise OutputExistsError(
            f"slide {opened.url!r} already has a label image {merged['labels_name']!r}; pass "
            "overwrite=True (--overwrite) to replace it"
        )
    if merged["halo_um"] is not None and not float(merged["halo_um"]) >= 0:
        raise ParameterError(f"`halo_um` must be >= 0 µm, got {merged['halo_um']}")
    resolve_statistics(merged["statistics_sample"], tuple(int(n) for n in opened.image.shape[1:3]))  # type: ignore[arg-type]
    if merged["halo_px"] is not None and int(merged["halo_px"]) < 0:
        raise ParameterError(f"`halo_px` must be >= 0 pixels, got {merged['halo_px']}")
    built = _build_backend(
        merged["backend"], params, slide=opened, halo_um=merged["halo_um"],
        allow_cpu=bool(merged["allow_cpu"]),
    )
    extra = _open_inputs(inputs)
    halo = merged["halo_px"]
    if halo is None and merged["halo_um"] is not None:
        halo = math.ceil(round(float(merged["halo_um"]) / opened.pixel_size_um, 9))
    with open_client(client, n_workers=n_workers) as c:
        res = segment_slide(
            opened,
            built,
            client=c,
            tile_size=merged["tile_size"],
            halo_px=halo,
            labels_name=merged["labels_name"],
            overwrite=bool(merged["overwrite"]),
            allow_cpu=bool(merged["allow_cpu"]),
            inputs=extra,
            progress=progress,
            batch_size=merged["batch_size"],
            retries=int(merged["retries"]),
            statistics_sample=merged["statistics_sample"],
        )
    return SegmentResult(
        labels_url=res.labels_url,
        slide_url=opened.url,
        labels_name=merged["labels_name"],
        backend=str(built.name),
        n_cells=res.n_cells,
        n_tiles=res.n_tiles,
        n_truncated=res.n_truncated,
        n_seam=res.n_seam,
        seconds=res.seconds,
        tiles_computed=res.tiles_computed,
        tiles_resumed=res.tiles_resumed,
        n_duplicates=res.n_duplicates,
        n_disagreements=res.n_disagreements,
        stage_seconds=dict(res.stage_seconds),
    )
