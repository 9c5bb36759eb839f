"""``tiledseg segment``: segment a slide tile by tile into ``labels/<name>``."""

from __future__ import annotations

import inspect
import json
import math
from pathlib import Path
from typing import Any

import typer

from tiledseg.api import segment
from tiledseg.cli._app import app, console, err_console
from tiledseg.cli._cluster import spec_from_options
from tiledseg.cli._progress import progress_reporter
from tiledseg.errors import ParameterError

__all__ = ["client_from_options", "parse_params", "segment_command"]

_WORDS: dict[str, Any] = {"true": True, "false": False, "none": None, "null": None}


def _names(text: str | None, option: str) -> list[str] | None:
    if text is None:
        return None
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ParameterError(f"`{option}` needs comma-separated channel names, got {text!r}")
    return names


def _param_value(text: str) -> Any:
    """A ``--param`` value: JSON when it parses (numbers, lists, objects, true/false/null), else text."""
    stripped = text.strip()
    if stripped.lower() in _WORDS:
        return _WORDS[stripped.lower()]
    try:
        value = json.loads(stripped)
    except ValueError:
        return stripped
    if isinstance(value, float) and not math.isfinite(value):
        return stripped
    return value


def parse_params(items: list[str], *, option: str = "--param") -> dict[str, Any]:
    """Backend parameters from repeated ``KEY=VALUE`` options.

    Values are parsed as JSON where possible (``3``, ``0.5``, ``true``, ``[1, 99.9]``,
    ``{"radius": 2}``; ``none``/``null`` is None), otherwise kept as text (``DNA1``).

    Parameters
    ----------
    items : list of str
        The option's values, e.g. ``["max_growth_um=5", "growth=nearest"]``.
    option : str
        The option's name, for messages.

    Returns
    -------
    dict of str -> object

    Raises
    ------
    ParameterError
        An item without ``=``, with an empty or non-identifier key, or a key given twice.

    Examples
    --------
    >>> parse_params(["max_growth_um=5", "growth=nearest", "clip=[1, 99]"])
    {'max_growth_um': 5, 'growth': 'nearest', 'clip': [1, 99]}
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise ParameterError(
                f"`{option}` expects KEY=VALUE with KEY a parameter name (e.g. max_growth_um=5), "
                f"got {item!r}"
            )
        if key in out:
            raise ParameterError(f"`{option}` sets {key!r} twice ({out[key]!r} and {value.strip()!r})")
        out[key] = _param_value(value)
    return out


def client_from_options(cluster: str | None, scheduler: str | None, workers: int | None) -> tuple[Any, int | None]:
    """The ``client`` and ``n_workers`` arguments of an api call from ``--cluster/--scheduler/--workers``.

    With ``--cluster`` (a kind, an address or a TOML file) the result is its resolved
    :class:`~tiledseg.api.ClusterSpec`, ``--workers`` overriding its worker count; otherwise the
    scheduler address (or None, an embedded local cluster of ``--workers`` workers).

    Raises
    ------
    ClusterConfigError
        Both ``--cluster`` and ``--scheduler``, or an unknown kind / missing file.
    """
    if cluster is None:
        return scheduler, workers
    return spec_from_options(cluster, scheduler, None, workers=workers), None


#: Keyword arguments of :func:`tiledseg.api.segment` itself, which ``--param`` cannot set.
_SEGMENT_OPTIONS = frozenset(
    name for name, p in inspect.signature(segment).parameters.items()
    if p.kind is not inspect.Parameter.VAR_KEYWORD
)


def _check_not_options(params: dict[str, Any]) -> None:
    clash = sorted(set(params) & _SEGMENT_OPTIONS)
    if clash:
        raise ParameterError(
            f"`--param` {clash} name(s) options of `tiledseg segment`, not backend parameters; set "
            "them with their command-line option or in the config file's [segment] table"
        )


def _add(params: dict[str, Any], key: str, value: Any, option: str) -> None:
    if value is None:
        return
    if key in params:
        raise ParameterError(f"{option} and `--param {key}=...` both set {key!r}; give it once")
    params[key] = value


@app.command("segment")
def segment_command(
    slide: str = typer.Argument(..., help="OME-Zarr slide (path or URL).", show_default=False),
    backend: str | None = typer.Option(None, "--backend", "-b", help="Backend name (default: watershed, or the config's)."),
    tile_size: int | None = typer.Option(None, "--tile-size", help="Core tile edge in pixels (a multiple of the chunks)."),
    halo_um: float | None = typer.Option(None, "--halo-um", help="Context each side of a tile in µm (default: the backend's)."),
    nuclear: str | None = typer.Option(None, "--nuclear", help="Nuclear channels, comma-separated (default: panel / guess)."),
    membrane: str | None = typer.Option(None, "--membrane", help="Membrane channels, comma-separated (default: panel)."),
    model_path: str | None = typer.Option(None, "--model-path", help="mesmer: the Mesmer TensorFlow SavedModel folder."),
    model: str | None = typer.Option(None, "--model", help="cellpose: a built-in model name (cyto3, nuclei, cpsam...) or a model file."),
    probabilities: str | None = typer.Option(
        None, "--probabilities",
        help="probabilities: the 3-class probability map (OME-Zarr or TIFF; nucleus, cytoplasm, background).",
    ),
    param: list[str] = typer.Option(  # noqa: B008  typer declares options this way
        [], "--param", "-p", help="Backend parameter KEY=VALUE (JSON values, e.g. max_growth_um=5, clip=[1,99]); repeatable.",
    ),
    labels_name: str = typer.Option("cells", "--labels-name", help="Name of the label image to write."),
    config: Path | None = typer.Option(  # noqa: B008  typer declares options this way
        None, "--config", help="TOML config (\\[segment] options, \\[backend] parameters), e.g. from `tiledseg init`."
    ),
    cluster: str | None = typer.Option(
        None, "--cluster", help="Where to run: local, slurm, pbs, lsf, kubernetes, local-gpu, an address or a .toml file."
    ),
    scheduler: str | None = typer.Option(None, "--scheduler", help="Dask scheduler address (default: a local cluster)."),
    workers: int | None = typer.Option(None, "--workers", help="Workers of the local cluster (default: cores)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing label image."),
    allow_cpu: bool = typer.Option(False, "--allow-cpu", help="Run a GPU backend on CPU when no GPU worker exists."),
    json_log: str | None = typer.Option(None, "--json-log", help="Write one JSON event per line to FILE ('-' = stdout)."),
    statistics_sample: str | None = typer.Option(
        None, "--statistics-sample",
        help="Slide statistics from: auto (default: every pixel up to 16 Mpx, else an even sample of max(1/8, 16 Mpx) of the chunks), full, or a fraction in (0, 1].",
    ),
) -> None:
    """Segment every cell of SLIDE tile by tile and write labels/<name> with IDs 1..N."""
    params = parse_params(param)
    _check_not_options(params)
    _add(params, "nuclear", _names(nuclear, "--nuclear"), "--nuclear")
    _add(params, "membrane", _names(membrane, "--membrane"), "--membrane")
    _add(params, "model_path", model_path, "--model-path")
    _add(params, "model", model, "--model")
    inputs = None if probabilities is None else {"probabilities": probabilities}
    client, n_workers = client_from_options(cluster, scheduler, workers)
    with progress_reporter(json_log) as report:
        result = segment(
            slide,
            backend=backend if backend is not None else "watershed",
            tile_size=tile_size,
            halo_um=halo_um,
            labels_name=labels_name,
            client=client,
            n_workers=n_workers,
            overwrite=overwrite,
            allow_cpu=allow_cpu,
            config=config,
            inputs=inputs,
            progress=report,
            statistics_sample=statistics_sample if statistics_sample is not None else "auto",
            **params,
        )
    lines = [
        (
            f"segmented {result.slide_url} with {result.backend}: {result.n_cells} cells in "
            f"{result.n_tiles} tiles ({result.tiles_resumed} resumed) in {result.seconds:.1f} s"
        ),
        f"labels: {result.labels_url}",
    ]
    if result.n_truncated:
        lines.append(f"warning: {result.n_truncated} cells touch their tile's window edge; consider a larger --halo-um")
    if result.n_seam:
        lines.append(f"{result.n_seam} cells resolved at tile seams (flag `seam`)")
    # With --json-log - stdout carries the JSON lines; the summary then goes to stderr.
    target = err_console if json_log == "-" else console
    for line in lines:
        target.print(line, highlight=False, soft_wrap=True)
