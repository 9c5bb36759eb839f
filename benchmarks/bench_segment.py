"""Benchmark of the tile engine: throughput, stitching share, peak worker memory.

Run::

    .venv/bin/python benchmarks/bench_segment.py --sizes 2048 4096 --workers 1 2

For every slide edge in ``--sizes`` a synthetic 8-channel IMC-like slide (chunks 1024) is
streamed to ``--workdir``; then ``tiledseg.segment`` runs the classical ``watershed`` backend on
a fresh multi-process ``LocalCluster`` per worker count. Reported per run: wall time, Mpx/s end
to end, the share of stitching + ID assignment + label write (stages ``stitch`` and
``assemble``) in the total, and the peak resident memory of each worker process
(``getrusage`` max RSS, read from the workers after the run). Figures are appended as a
Markdown table to ``--output``.

Large slides (issue 3: 256 Mpx and 1 Gpx) are made by tiling one cached synthetic slide
periodically (``benchmarks/_bigslide.py``: stored chunks copied, no re-rendering), e.g.::

    .venv/bin/python benchmarks/bench_segment.py --periodic-from 8192 \\
        --repeats 1 1 --repeats 2 2 --repeats 4 4 --workers 1 2 --workdir /tmp/tiledseg-big

benchmarks the 8192² source (67 Mpx), 16384² (268 Mpx) and 32768² (1.07 Gpx). The source and
the tiled slides stay in ``--workdir`` and are reused by later runs (``--build-only`` just makes
them); each run's scratch tiles are deleted after it.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import platform
import resource
import shutil
import time
from pathlib import Path
from typing import Any

from distributed import Client, LocalCluster

from tiledseg.api import segment
from tiledseg.cluster._deploy import local_cluster
from tiledseg.datasets import write_synthetic_slide
from tiledseg.io import open_slide, output_status
from tiledseg.io._store import normalise_url


def _load_bigslide() -> Any:
    # benchmarks/ is not a package: load the periodic-slide writer from its file.
    spec = importlib.util.spec_from_file_location("_bigslide", Path(__file__).with_name("_bigslide.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


write_periodic_slide = _load_bigslide().write_periodic_slide


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def bench_kernels(output: str) -> None:
    """Time ownership, overlap matching and block assembly on one 1024-px tile (single thread)."""
    import numpy as np

    from tiledseg.datasets import synthetic_slide
    from tiledseg.stitch import assemble_block, own_cells, pair_overlaps
    from tiledseg.tiling import plan_tiles

    halo = 37
    syn = synthetic_slide((2048 + 2 * halo, 2048 + 2 * halo), 2, seed=0)
    plan = plan_tiles(syn.cells.shape, tile_size=1024, halo=halo)
    tile, right = plan[0], plan[1]
    labels = syn.cells[tile.window_slices]
    t0 = time.perf_counter()
    owned = own_cells(labels, tile=tile, slide_shape=plan.shape)
    t_own = time.perf_counter() - t0
    other = own_cells(syn.cells[right.window_slices], tile=right, slide_shape=plan.shape)
    t0 = time.perf_counter()
    pair_overlaps(owned.labels, tile.window, other.labels, right.window)
    t_pair = time.perf_counter() - t0
    relabel = np.arange(owned.n + 1, dtype=np.uint32)
    t0 = time.perf_counter()
    assemble_block(((0, 1024), (0, 1024)), [(0, owned.labels[:1024, :1024], ((0, 1024), (0, 1024)), relabel)])
    t_asm = time.perf_counter() - t0
    mpx = labels.size / 1e6
    text = (
        f"\n### stitching kernels on one tile ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})\n\n"
        f"window {labels.shape[0]}x{labels.shape[1]} ({mpx:.2f} Mpx, {owned.n} owned cells): "
        f"own_cells {1000 * t_own:.0f} ms, pair_overlaps with the right neighbour "
        f"{1000 * t_pair:.0f} ms, assemble_block 1024x1024 {1000 * t_asm:.0f} ms\n"
    )
    print(text)
    with Path(output).open("a", encoding="utf-8") as fh:
        fh.write(text)


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _cached(url: str, key: str, expected: dict[str, Any]) -> bool:
    """Whether ``url`` holds a complete slide whose ``attrs["tiledseg"][key]`` has ``expected``."""
    if output_status(url) != "complete":
        return False
    meta = open_slide(url).attrs.get("tiledseg", {}).get(key, {})
    return all(meta.get(k) == v for k, v in expected.items())


def _synthetic(work: Path, size: int, channels: int, *, reuse: bool) -> tuple[str, float, float]:
    """The synthetic slide of edge ``size``: ``(url, wall s, CPU s)``, written unless cached."""
    url = str(work / f"synthetic-{size}-c{channels}.ome.zarr")
    if reuse and _cached(url, "synthetic", {"shape": [size, size], "n_channels": channels, "seed": 0}):
        print(f"reusing {url}", flush=True)
        return url, 0.0, 0.0
    t0, c0 = time.perf_counter(), time.process_time()
    write_synthetic_slide(url, (size, size), channels, seed=0, chunks=(1, 1024, 1024),
                          truth=False, overwrite=True)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(f"wrote {size}x{size}x{channels} in {wall:.1f} s ({cpu:.1f} CPU s)", flush=True)
    return url, wall, cpu


def _periodic(work: Path, source: str, size: int, channels: int, repeats: tuple[int, int]) -> str:
    """The ``repeats``-fold tiling of ``source`` (``benchmarks/_bigslide.py``), built unless cached."""
    ry, rx = repeats
    url = str(work / f"periodic-{size}-{ry}x{rx}-c{channels}.ome.zarr")
    # The slide records its source as a normalised URL (absolute path).
    if _cached(url, "periodic", {"source": normalise_url(source), "repeats": [ry, rx]}):
        print(f"reusing {url}", flush=True)
        return url
    t0, c0 = time.perf_counter(), time.process_time()
    write_periodic_slide(source, url, repeats=repeats, overwrite=True)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    gib = _dir_bytes(Path(url)) / 2**30
    print(f"built {size * ry}x{size * rx}x{channels} ({size} x {ry}x{rx}) in {wall:.1f} s "
          f"({cpu:.1f} CPU s), {gib:.2f} GiB on disk", flush=True)
    return url


def _run_one(url: str, label: str, n: int, args: argparse.Namespace) -> dict[str, Any]:
    """Segment ``url`` on a fresh ``n``-worker cluster; one table row."""
    # A fresh run each time: drop the statistics and tiles an earlier run stored.
    shutil.rmtree(Path(url) / ".tiledseg", ignore_errors=True)
    # The settings of the clusters tiledseg starts (no statistical profiler, worker allocator
    # settings), as users get them; --dask-defaults measures Dask's own.
    kwargs: dict[str, Any] = {"n_workers": n, "threads_per_worker": 1, "processes": True,
                              "memory_limit": None, "dashboard_address": ":0"}
    cluster = LocalCluster(**kwargs) if args.dask_defaults else local_cluster(**kwargs)
    with Client(cluster) as client:
        cpu0 = sum(client.run(_cpu_seconds).values())
        driver0 = _cpu_seconds()
        t0 = time.perf_counter()
        result = segment(url, backend=args.backend, tile_size=args.tile_size, client=client,
                         overwrite=True, statistics_sample=args.statistics_sample)
        wall = time.perf_counter() - t0
        peaks = sorted(client.run(_peak_rss_mib).values())
        worker_cpu = sum(client.run(_cpu_seconds).values()) - cpu0
        driver_cpu = _cpu_seconds() - driver0
    cluster.close()
    st = result.stage_seconds
    stitch_share = (st.get("stitch", 0.0) + st.get("assemble", 0.0)) / wall
    _, rows, cols = open_slide(url).shape
    from tiledseg.io import open_labels

    sample = dict(open_labels(url, "cells").attrs["tiledseg"])["statistics"]["extra"]["sample"]
    mpx = rows * cols / 1e6
    return {
        "size": label,
        "mpx": mpx,
        "workers": n,
        "sample": float(sample["fraction"]),
        "tiles": result.n_tiles,
        "cells": result.n_cells,
        "wall_s": wall,
        "mpx_s": mpx / wall,
        "statistics_s": st.get("statistics", 0.0),
        "tiles_s": st.get("tiles", 0.0),
        "stitch_s": st.get("stitch", 0.0),
        "assemble_s": st.get("assemble", 0.0),
        "stitch_share": stitch_share,
        "peak_mib": max(peaks),
        "worker_cpu_s": worker_cpu,
        "driver_cpu_s": driver_cpu,
        "mpx_per_cpu_s": mpx / worker_cpu,
    }


def _table(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        (f"\n### bench_segment.py ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{platform.machine()}, backend {args.backend}, tile {args.tile_size}, "
        f"{args.channels} channels, worker settings {'Dask defaults' if args.dask_defaults else 'tiledseg'}, "
        f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} at the end)\n"),
        ("| slide | Mpx | workers | stats sample | tiles | cells | wall s | Mpx/s | statistics s | tiles s | "
        "stitch s | assemble+write s | stitch+IDs+write share | peak RSS/worker MiB | "
        "worker CPU s | Mpx per worker CPU s | driver+scheduler CPU s |"),
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['size']} | {r['mpx']:.1f} | {r['workers']} | {r['sample']:.3g} | {r['tiles']} | {r['cells']} | "
            f"{r['wall_s']:.1f} | {r['mpx_s']:.2f} | {r['statistics_s']:.1f} | {r['tiles_s']:.1f} | "
            f"{r['stitch_s']:.1f} | {r['assemble_s']:.1f} | {100 * r['stitch_share']:.1f}% | "
            f"{r['peak_mib']:.0f} | {r['worker_cpu_s']:.0f} | {r['mpx_per_cpu_s']:.3f} | {r['driver_cpu_s']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=None,
                        help="slide edges in px (default 2048 4096; not with --periodic-from)")
    parser.add_argument("--periodic-from", type=int, default=None, metavar="EDGE",
                        help="tile a cached synthetic EDGE x EDGE slide periodically (see --repeats)")
    parser.add_argument("--repeats", type=int, nargs=2, action="append", metavar=("RY", "RX"),
                        help="with --periodic-from: repeat the slide RY x RX times; give it once per "
                             "slide (1 1 = the synthetic slide itself); default 2 2")
    parser.add_argument("--build-only", action="store_true",
                        help="with --periodic-from: build (or find) the slides, run nothing")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--backend", default="watershed")
    parser.add_argument("--statistics-sample", default="auto",
                        help="statistics_sample of tiledseg.segment: auto, full or a fraction")
    parser.add_argument("--tile-size", type=int, default=1024)
    parser.add_argument("--channels", type=int, default=8)
    parser.add_argument("--workdir", default="/tmp/tiledseg-bench-segment",
                        help="where slides are written; periodic slides and their source stay "
                             "there as a cache for later runs")
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "engine.md"))
    parser.add_argument("--keep", action="store_true", help="keep the written --sizes slides")
    parser.add_argument("--dask-defaults", action="store_true",
                        help="start the workers with Dask's default settings instead of tiledseg's")
    parser.add_argument("--kernels", action="store_true", help="only time the stitching kernels")
    args = parser.parse_args()
    if args.kernels:
        bench_kernels(args.output)
        return
    if args.periodic_from is not None and args.sizes is not None:
        parser.error("give --sizes or --periodic-from, not both")
    if (args.repeats is not None or args.build_only) and args.periodic_from is None:
        parser.error("--repeats and --build-only need --periodic-from")
    if any(r < 1 for pair in args.repeats or [] for r in pair):
        parser.error(f"--repeats must be positive, got {args.repeats}")
    logging.basicConfig(level=logging.WARNING)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    if args.periodic_from is not None:
        edge = args.periodic_from
        source, _, _ = _synthetic(work, edge, args.channels, reuse=True)
        slides = []
        for ry, rx in args.repeats or [(2, 2)]:
            if (ry, rx) == (1, 1):
                slides.append((source, f"{edge}x{edge}"))
            else:
                url = _periodic(work, source, edge, args.channels, (ry, rx))
                slides.append((url, f"{edge * ry}x{edge * rx} ({edge}² x {ry}x{rx})"))
        if args.build_only:
            return
        for url, label in slides:
            for n in args.workers:
                row = _run_one(url, label, n, args)
                rows.append(row)
                print(row, flush=True)
                # The slide stays cached; its scratch tiles (GBs at 1 Gpx) do not.
                shutil.rmtree(Path(url) / ".tiledseg", ignore_errors=True)
    else:
        for size in args.sizes or [2048, 4096]:
            url, _, _ = _synthetic(work, size, args.channels, reuse=False)
            for n in args.workers:
                row = _run_one(url, f"{size}x{size}", n, args)
                rows.append(row)
                print(row, flush=True)
            if not args.keep:
                shutil.rmtree(url, ignore_errors=True)
    text = _table(rows, args)
    print(text)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a", encoding="utf-8") as fh:
        fh.write(text)
    print(f"appended to {out}")


if __name__ == "__main__":
    main()
