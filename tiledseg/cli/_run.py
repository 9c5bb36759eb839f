"""``tiledseg run``: convert -> segment -> measure for one or many slides on one cluster."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tiledseg.api import RunSummary, run
from tiledseg.cli._app import app, console, err_console
from tiledseg.cli._cluster import spec_from_options
from tiledseg.cli._progress import progress_reporter
from tiledseg.errors import ParameterError

__all__ = ["print_summary", "run_command"]


def _names(text: str | None, option: str) -> list[str] | None:
    if text is None:
        return None
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ParameterError(f"`{option}` needs comma-separated names, got {text!r}")
    return names


def _quantiles(text: str | None) -> tuple[float, ...]:
    if not text:
        return ()
    out = []
    for part in text.split(","):
        try:
            q = float(part)
        except ValueError:
            raise ParameterError(f"--quantiles needs numbers in [0, 1] such as 0.5,0.9, got {part!r}") from None
        if not 0.0 <= q <= 1.0:
            raise ParameterError(f"--quantiles values must lie in [0, 1], got {q}")
        out.append(q)
    return tuple(out)


def print_summary(summary: RunSummary, *, out: Console | None = None) -> None:
    """The end-of-run table: one row per slide with status, cells, tiles, time and warnings."""
    target = out or console
    table = Table(title=f"tiledseg run: {len(summary.slides)} slide(s) in {summary.seconds:.1f} s")
    for col, justify in (("slide", "left"), ("status", "left"), ("cells", "right"), ("tiles", "right"),
                         ("time", "right"), ("warnings", "right"), ("output / error", "left")):
        table.add_column(col, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for s in summary.slides:
        status = {"failed": "[red]failed[/]", "reused": "[cyan]reused[/]"}.get(s.status, "[green]done[/]")
        tiles = f"{s.tiles_computed}" + (f" (+{s.tiles_resumed} resumed)" if s.tiles_resumed else "")
        detail = s.error if s.error else (s.table or s.labels or s.slide or "")
        table.add_row(escape(s.name), status, "" if s.n_cells is None else f"{s.n_cells:,}", tiles,
                      f"{s.seconds:.1f} s", str(len(s.warnings)) if s.warnings else "", escape(detail))
    target.print(table)
    for s in summary.slides:
        for w in s.warnings:
            target.print(f"[yellow]warning[/] {escape(s.name)}: {escape(w)}", highlight=False, soft_wrap=True)
    target.print(f"manifest: {Path(summary.output_dir) / 'tiledseg-run.json'}", highlight=False, soft_wrap=True,
                 markup=False)


@app.command("run")
def run_command(
    sources: list[str] = typer.Argument(
        ..., show_default=False,
        help="Slides (.ome.zarr), .mcd/.txt/.tiff files, steinbock folders, folders of them, or globs ('raw/*.mcd').",
    ),
    output: Path = typer.Option(..., "--output", "-o", help="Output folder (slides, tables, reports, manifest)."),
    backend: str = typer.Option("watershed", "--backend", "-b", help="Segmentation backend."),
    nuclear: str | None = typer.Option(None, "--nuclear", help="Nuclear channels, comma-separated (default: panel)."),
    membrane: str | None = typer.Option(None, "--membrane", help="Membrane channels, comma-separated (default: panel)."),
    tile_size: int | None = typer.Option(None, "--tile-size", help="Core tile edge in pixels (a multiple of the chunks)."),
    halo_um: float | None = typer.Option(None, "--halo-um", help="Context each side of a tile in µm."),
    panel: Path | None = typer.Option(None, "--panel", help="steinbock panel.csv for conversion."),
    pixel_size: float | None = typer.Option(None, "--pixel-size", help="Pixel size in µm for inputs without one."),
    statistics_sample: str = typer.Option(
        "auto", "--statistics-sample",
        help="Slide statistics for segmentation from: auto, full, or a fraction in (0, 1] of the chunks.",
    ),
    statistics: str = typer.Option("mean", "--statistics", help="Intensity statistics, comma-separated (mean,median,...)."),
    quantiles: str | None = typer.Option(None, "--quantiles", help="Intensity quantiles, e.g. 0.5,0.9."),
    neighbors: str = typer.Option("borders", "--neighbors", help="Neighbour graph: borders, expansion, centroids or none."),
    table_format: str = typer.Option("parquet", "--format", help="Table format: parquet, h5ad, csv or steinbock."),
    report: bool = typer.Option(False, "--report", help="Also write an HTML QC report per slide."),
    cluster: str | None = typer.Option(
        None, "--cluster", help="Where to run: local, slurm, pbs, lsf, kubernetes, local-gpu, an address or a .toml file."
    ),
    scheduler: str | None = typer.Option(None, "--scheduler", help="Address of a running Dask scheduler."),
    workers: int | None = typer.Option(None, "--workers", help="Workers (local) or jobs (batch systems)."),
    threads: int | None = typer.Option(None, "--threads", help="Threads per worker."),
    memory: str | None = typer.Option(None, "--memory", help="Memory per worker/job, e.g. 4GiB."),
    retries: int = typer.Option(2, "--retries", help="Retries of a tile task lost with its worker."),
    allow_cpu: bool = typer.Option(False, "--allow-cpu", help="Run a GPU backend on CPU when no GPU worker exists."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Recompute everything instead of resuming."),
    stop_on_error: bool = typer.Option(False, "--stop-on-error", help="Stop at the first failed slide."),
    json_log: str | None = typer.Option(None, "--json-log", help="Append one JSON event per line to FILE ('-' = stdout)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or messages."),
) -> None:
    """Convert, segment and measure SOURCES on one cluster; re-run the same command to resume."""
    params: dict[str, Any] = {}
    nuc, mem = _names(nuclear, "--nuclear"), _names(membrane, "--membrane")
    if nuc is not None:
        params["nuclear"] = nuc
    if mem is not None:
        params["membrane"] = mem
    spec = spec_from_options(cluster, scheduler, None, workers=workers, threads=threads, memory=memory)
    stats = _names(statistics, "--statistics") or ["mean"]
    with progress_reporter(json_log, quiet=quiet) as progress:
        summary = run(
            sources,
            output_dir=output,
            backend=backend,
            cluster=spec,
            panel=panel,
            pixel_size_um=pixel_size,
            tile_size=tile_size,
            halo_um=halo_um,
            statistics_sample=statistics_sample,
            statistics=tuple(stats),
            quantiles=_quantiles(quantiles),
            neighbors=None if neighbors == "none" else neighbors,
            format=table_format,
            report=report,
            retries=retries,
            allow_cpu=allow_cpu,
            overwrite=overwrite,
            on_error="raise" if stop_on_error else "continue",
            progress=progress,
            backend_params=params,
        )
    print_summary(summary, out=err_console if json_log == "-" else console)
    if not summary.ok:
        raise typer.Exit(1)
