"""Throughput and accuracy of the classical backends (``watershed``, ``expand``, ``probabilities``).

1. **Kernel throughput** (Mpx/s per core): a synthetic IMC-like slide at 1 µm/px
   (:func:`tiledseg.datasets.synthetic_slide`, 8 channels) cut into core tiles read with the
   backend's halo, each run through ``prepare`` + ``segment`` -- what one Dask task does per tile
   apart from reading and stitching. Reported per CPU second of this process (``process_time``,
   single-threaded kernels), so the figure is per core and does not depend on other jobs sharing
   the machine, and per wall second.
2. **End to end** (optional, ``--end-to-end``): ``tiledseg.api.segment`` on the same slide written
   to OME-Zarr, one worker thread: statistics, tiles, stitching and assembly included.
3. **Accuracy**: F1 at IoU 0.5 for nuclei and whole cells on synthetic slides with ground truth,
   and on the DSB-2018 nuclei image (``../shared/data/nuclei_dsb2018_stardist``) when present.

4. **Tile stage** (``--tile-stage``): what one engine tile task does, in this process, on an
   8-channel OME-Zarr slide from :func:`tiledseg.datasets.write_synthetic_slide` -- read the
   window (``_Reader``), ``prepare``, ``segment``, ``own_cells``, scratch write -- in CPU
   seconds per Mpx of slide per step. Statistics and fitted thresholds are computed once
   beforehand (not timed). ``--numpy-kernels`` runs the NumPy paths instead of the compiled
   (numba) flood, group preparation and ownership statistics; ``--dask-reads`` reads windows
   through Dask and without the strip cache, as the engine did before: together, the tile
   stage before the round that added them.

Run: .venv/bin/python benchmarks/bench_watershed.py [--size 2048] [--tile 1024] [--end-to-end]
     [--write benchmarks/results/backends.md]
     .venv/bin/python benchmarks/bench_watershed.py --tile-stage 4096 [--repeats 2]
     [--numpy-kernels] [--dask-reads]
     .venv/bin/python benchmarks/bench_watershed.py --kernel-only [--numpy-kernels]
     .venv/bin/python benchmarks/bench_watershed.py --end-to-end-only [--numpy-kernels] [--dask-reads]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np

from tiledseg.datasets import synthetic_slide
from tiledseg.metrics import match_labels
from tiledseg.segment import get_backend
from tiledseg.segment._inmemory import gather_inputs, run_backend, segment_array
from tiledseg.segment._statistics import prepared_edges, prepared_histogram

ROOT = Path(__file__).resolve().parents[1]
DSB = ROOT / ".." / "shared" / "data" / "nuclei_dsb2018_stardist"
IMC = ROOT / ".." / "shared" / "data" / "imc_bodenmiller_testdata" / "steinbock"
#: Interpretation written below the figures (measured on the 2-core VM, see the file).
NOTES = """
## Notes

(Written in the first session. The throughput target is met end to end since the third session:
see "Third session" above and results/engine.md, round 4.)

* Targets (issue 4). DSB-2018 nuclei F1 >= 0.80 -- met at the nucleus size of the image
  (0.817 with `nucleus_diameter_um=24`, unchanged by the speed work below; 0.79-0.82 for 20-26
  µm; a textbook Otsu + distance transform + watershed reaches 0.67-0.73 on the same image,
  measured here). Throughput >= 3 Mpx/s per core: **met by the kernel** (prepare + segment per
  tile, 4.2-4.4 Mpx/s per CPU second at load 4-7, 2.4x the previous 1.8), **not met end to end**
  (1.2-1.3 Mpx per CPU second, previously 0.8-0.9): the engine's own work alone costs about as
  much as 3 Mpx/s per core allows on this slide (see below).
* Before / after, measured back to back on the same 2048² slide (load average 4-7; kernel:
  `kernel_throughput` of this script, best of 2; end to end: `end_to_end`, 2 runs; "before" is
  the previous `watershed.py` / `_classical.py` with the rest of the tree unchanged):

  | figure | before: CPU s / Mpx (Mpx/s per core) | after: CPU s / Mpx (Mpx/s per core) |
  | --- | ---: | ---: |
  | kernel, watershed default (membrane growth) | 0.547-0.553 (1.81-1.83) | 0.228-0.236 (4.24-4.38) |
  | kernel, growth='nearest' | 0.290-0.303 (3.30-3.45) | 0.233-0.241 (4.15-4.29) |
  | kernel, nuclei only | 0.204-0.209 (4.78-4.91) | 0.127-0.133 (7.51-7.87) |
  | end to end, watershed default | 1.10-1.20 (0.83-0.91) | 0.79-0.86 (1.17-1.26) |

* What was done for speed (this round): the cell propagation runs on `_classical.flood`, a
  bucket-queue (hierarchical queue) watershed in vectorised NumPy on the landscape quantised in
  1/128 steps -- 0.05 instead of 0.28-0.36 CPU s/Mpx; it agrees with scikit-image's watershed on
  99.4-99.7% of the pixels (ties) with the same F1. The growth limit is the same chamfer
  distance computed only up to the limit by shifted-OR dilations (exact there; 0.008 instead of
  0.025). The nuclear watershed runs only on foreground components holding two or more seeds
  (a component with one seed is flooded by it whole; the result is identical, 0.035 instead of
  0.08-0.10). Seeds: the same regional maxima from two 3 x 3 maximum filters and a labelling
  instead of `skimage.morphology.local_maxima`; the blob response as Gaussian + 5-point
  Laplacian (half the Gaussian passes of `gaussian_laplace`, within 2% of it).
  Earlier rounds: seeds from quantised regional maxima instead of `h_maxima`, float32
  throughout, watersheds on the foreground bounding box.
* What is left in the kernel (table above): channel preparation ~0.07 CPU s/Mpx (Gaussians of
  1 and 2 µm, bit-identical output kept), the nuclear split (scikit-image's heap watershed on
  about a third of the nuclear foreground) ~0.035, the propagation flood ~0.05, the blob
  response ~0.03.
* Why end to end stays below 3: the engine reads the inputs, computes raw statistics (two passes),
  runs `prepare` once more over every tile for the prepared-plane histogram that `fit` needs,
  stitches, builds the pyramid and assembles. With the trivial `threshold` backend (2 input
  channels instead of 6) the same run costs 1.3-1.7 CPU s for 4.2 Mpx (0.31-0.40 CPU s/Mpx:
  2.5-3.2 Mpx/s per core for a backend that would cost nothing); `watershed` adds its kernel
  (~0.24 CPU s/Mpx), the second `prepare` (~0.07) and the statistics and reads of 4 more
  channels. Reaching 3 end to end needs engine work outside the backend (not preparing twice,
  cheaper raw statistics), not a faster kernel alone.
* IMC agreement: watershed vs the two reference pipelines is higher than the references' mutual
  agreement (0.28); with the earlier default `max_growth_um=6` it was 0.34 / 0.40, hence the
  default of 4 µm.
"""

ROLES = {"nuclear": ["DNA1", "DNA2"], "membrane": ["CD45", "CD3", "CD20", "E-cadherin"]}


def kernel_throughput(backend: Any, image: np.ndarray, names: tuple[str, ...], *, tile: int,
                      inputs: dict[str, np.ndarray] | None = None) -> dict[str, float]:
    """Mpx/s of prepare + segment over all core tiles (halo read around each)."""
    chans = tuple(backend.channels(list(names)))
    data = gather_inputs(image, names, chans, inputs=inputs)
    from tiledseg.segment._prepare import statistics_from_array

    stats = statistics_from_array(data, chans)
    prepared = backend.prepare(data, pixel_size_um=1.0, stats=stats)
    hist = prepared_histogram(np.asarray(prepared))
    fitted = backend.fit(hist, prepared_edges(hist.shape[0]))
    del prepared
    halo = math.ceil(backend.halo_um())
    h, w = data.shape[1:]
    cpu = wall = 0.0
    cells = 0
    for r in range(0, h, tile):
        for c in range(0, w, tile):
            r0, r1 = max(r - halo, 0), min(r + tile + halo, h)
            c0, c1 = max(c - halo, 0), min(c + tile + halo, w)
            window = np.ascontiguousarray(data[:, r0:r1, c0:c1])
            t0, p0 = time.perf_counter(), time.process_time()
            labels = backend.segment(backend.prepare(window, pixel_size_um=1.0, stats=stats),
                                     pixel_size_um=1.0, fitted=fitted)
            wall += time.perf_counter() - t0
            cpu += time.process_time() - p0
            cells += int(np.count_nonzero(np.unique(labels)))
    mpx = h * w / 1e6
    return {"mpx": mpx, "cpu_s": cpu, "wall_s": wall, "mpx_per_cpu_s": mpx / cpu, "mpx_per_wall_s": mpx / wall,
            "halo_px": halo, "cells_in_windows": cells}


def breakdown(image: np.ndarray, names: tuple[str, ...], *, size: int) -> list[tuple[str, float]]:
    """CPU seconds per Mpx of each step of ``watershed`` on one ``size``² window."""
    import tiledseg.segment._classical as classical
    import tiledseg.segment.watershed as ws

    backend = get_backend("watershed", **ROLES)
    window = image[:, :size, :size]
    run = run_backend(backend, window, names, pixel_size_um=1.0)
    timings: dict[str, float] = {}

    def timed(module: Any, attr: str, label: str) -> None:
        original = getattr(module, attr)

        def wrapper(*a: Any, **k: Any) -> Any:
            t0 = time.process_time()
            try:
                return original(*a, **k)
            finally:
                timings[label] = timings.get(label, 0.0) + time.process_time() - t0

        setattr(module, attr, wrapper)

    timed(ws, "prepare_groups", "prepare (normalise, combine, smooth)")
    timed(ws, "blob_response", "nuclei: blob response (Gaussian + 5-point Laplacian)")
    timed(ws, "regional_maxima", "nuclei: seeds (quantised regional maxima)")
    timed(ws, "_split", "nuclei: watershed of components with several seeds")
    timed(ws, "_tissue", "cells: tissue foreground")
    timed(classical, "_near_distance", "cells: growth limit (chamfer distance within reach)")
    timed(classical, "flood", "cells: propagation (bucket-queue flood)")
    try:
        gather = gather_inputs(window, names, run.names)
        repeats = 3
        start = time.process_time()
        for _ in range(repeats):
            backend.segment(backend.prepare(gather, pixel_size_um=1.0, stats=run.stats), pixel_size_um=1.0,
                            fitted=run.fitted)
        total = time.process_time() - start
    finally:
        import importlib

        importlib.reload(classical)
        importlib.reload(ws)
    mpx = size * size / 1e6
    rows = [(k, v / repeats / mpx) for k, v in timings.items()]
    rows.append(("other (checks, thresholds, labelling, size filter, landscape)",
                 (total - sum(timings.values())) / repeats / mpx))
    rows.append(("**total**", total / repeats / mpx))
    return rows


def end_to_end(image: np.ndarray, names: tuple[str, ...], panel: Any, *, tile: int) -> dict[str, float]:
    from distributed import Client

    from tiledseg.api import segment
    from tiledseg.io import write_slide

    with tempfile.TemporaryDirectory() as tmp:
        url = write_slide(str(Path(tmp) / "s.ome.zarr"), image, channel_names=list(names), pixel_size_um=1.0,
                          chunks=(1, tile, tile), panel=panel)
        with Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=":0") as client:
            t0, p0 = time.perf_counter(), time.process_time()
            result = segment(url, backend="watershed", tile_size=tile, client=client)
            wall, cpu = time.perf_counter() - t0, time.process_time() - p0
    mpx = image.shape[1] * image.shape[2] / 1e6
    return {"mpx": mpx, "wall_s": wall, "cpu_s": cpu, "mpx_per_wall_s": mpx / wall, "mpx_per_cpu_s": mpx / cpu,
            "cells": result.n_cells, **{f"stage_{k}_s": v for k, v in result.stage_seconds.items()}}


def use_numpy_kernels() -> None:
    """Run the NumPy flood, group preparation and ownership runs instead of the compiled ones."""
    import tiledseg.segment._classical as classical
    import tiledseg.segment._prepare as prep
    import tiledseg.stitch._ownership as ownership

    classical._FLOOD_KERNEL["fn"] = None
    prep._GROUP_KERNEL["fn"] = None
    ownership._STATISTICS_KERNEL["fn"] = None


def use_previous_reader() -> None:
    """Read windows as the engine did before the direct chunk reader and the strip cache."""
    import tiledseg.cluster._segment as engine

    engine.zarr_channels = lambda array: None  # type: ignore[assignment]
    engine._Reader._evicted = lambda self, key, block: None  # type: ignore[method-assign]


def tile_stage(size: int, *, tile: int, repeats: int, dask_reads: bool, workdir: Path) -> dict[str, float]:
    """CPU s per Mpx of each step of the engine's tile task, over every tile of a ``size``² slide."""
    import shutil

    from tiledseg.api._segment import _build_backend
    from tiledseg.cluster._segment import _chunk_grid, _Reader, build_inputs
    from tiledseg.datasets import write_synthetic_slide
    from tiledseg.io import open_slide
    from tiledseg.io._scratch import ScratchStore
    from tiledseg.segment._prepare import statistics_from_array
    from tiledseg.segment._protocol import PREPARED_BINS
    from tiledseg.stitch import own_cells
    from tiledseg.tiling import halo_from_physics, plan_tiles

    workdir.mkdir(parents=True, exist_ok=True)
    url = str(workdir / f"synthetic-{size}.ome.zarr")
    if not Path(url).exists():
        write_synthetic_slide(url, (size, size), 8, seed=0, chunks=(1, 1024, 1024), truth=False)
    slide = open_slide(url)
    backend = _build_backend("watershed", {}, slide=slide, halo_um=None)
    names = tuple(backend.channels(slide.channel_names))
    image = build_inputs(slide, names)
    data = np.asarray(image.compute())
    stats = statistics_from_array(data, names)
    hist = prepared_histogram(np.asarray(backend.prepare(data, pixel_size_um=1.0, stats=stats)))
    fitted = backend.fit(hist, prepared_edges(hist.shape[0], bins=PREPARED_BINS))
    del data
    halo = halo_from_physics(max_cell_diameter_um=float(backend.halo_um()), pixel_size_um=1.0)
    plan = plan_tiles((size, size), tile_size=tile, halo=int(halo), chunks=_chunk_grid(image))
    if dask_reads:
        use_previous_reader()
    reader = _Reader(image, chunks=_chunk_grid(image))
    scratch_dir = workdir / f"scratch-{size}"
    shutil.rmtree(scratch_dir, ignore_errors=True)
    scratch = ScratchStore(str(scratch_dir))
    scratch.begin(fingerprint="bench")
    steps = {"read": 0.0, "prepare": 0.0, "segment": 0.0, "own_cells": 0.0, "scratch write": 0.0}

    def one(t: Any, timed: bool) -> None:
        marks = [time.process_time()]
        window = reader.read(t.window)
        marks.append(time.process_time())
        prepared = backend.prepare(window, pixel_size_um=1.0, stats=stats)
        marks.append(time.process_time())
        labels = backend.segment(prepared, pixel_size_um=1.0, fitted=fitted)
        marks.append(time.process_time())
        owned = own_cells(np.asarray(labels), tile=t, slide_shape=plan.shape)
        marks.append(time.process_time())
        scratch.write_tile(t.index, owned.labels, owned.table(), attrs={"cells": owned.n})
        marks.append(time.process_time())
        if timed:
            for key, a, b in zip(steps, marks[:-1], marks[1:], strict=True):
                steps[key] += b - a

    one(plan[0], False)  # imports, compiled-kernel cache loads
    for _ in range(repeats):
        reader._cache.clear()
        for t in plan.tiles:
            one(t, True)
    mpx = size * size / 1e6 * repeats
    out = {k: v / mpx for k, v in steps.items()}
    out["total"] = sum(out.values())
    shutil.rmtree(scratch_dir, ignore_errors=True)
    return out


def accuracy() -> list[tuple[str, float]]:
    rows = []
    for seed in (1, 2, 3):
        s = synthetic_slide((256, 256), 8, seed=seed)
        nuc = segment_array(s.image, s.channel_names, compartment="nucleus", **ROLES)
        cel = segment_array(s.image, s.channel_names, **ROLES)
        near = segment_array(s.image, s.channel_names, growth="nearest", **ROLES)
        exp = segment_array(s.image, s.channel_names, backend="expand", distance_um=3.0, nuclear=ROLES["nuclear"])
        rows += [(f"synthetic seed {seed}: watershed nuclei", match_labels(nuc, s.nuclei).f1),
                 (f"synthetic seed {seed}: watershed cells", match_labels(cel, s.cells).f1),
                 (f"synthetic seed {seed}: watershed cells, growth='nearest'", match_labels(near, s.cells).f1),
                 (f"synthetic seed {seed}: expand 3 µm cells", match_labels(exp, s.cells).f1)]
    if IMC.is_dir():
        import pandas as pd
        import tifffile

        panel = pd.read_csv(IMC / "panel.csv")
        names = tuple(panel["name"])
        f1: dict[str, list[float]] = {}
        for path in sorted((IMC / "img").glob("*.tiff")):
            image = tifffile.imread(path)
            refs = {k: tifffile.imread(IMC / f"masks_{k}" / path.name) for k in ("deepcell", "ilastik")}
            for growth in ("membrane", "nearest"):
                lab = segment_array(image, names, nuclear=["H3K27Ac"], membrane=["Cytokeratin 5"], growth=growth)
                for k, ref in refs.items():
                    f1.setdefault(f"IMC test data (15 images): watershed growth='{growth}' vs masks_{k}", []).append(
                        match_labels(lab, ref).f1)
            f1.setdefault("IMC test data: masks_ilastik vs masks_deepcell (reference agreement)", []).append(
                match_labels(refs["ilastik"], refs["deepcell"]).f1)
        rows += [(k, float(np.mean(v))) for k, v in f1.items()]
    if DSB.is_dir():
        import tifffile

        img = tifffile.imread(DSB / "img2d.tif")[None].astype(np.float32)
        truth = tifffile.imread(DSB / "mask2d.tif")
        for d in (20.0, 22.0, 24.0, 26.0):
            lab = segment_array(img, ("DNA",), nuclear=["DNA"], compartment="nucleus", nucleus_diameter_um=d)
            rows.append((f"DSB-2018 nuclei, nucleus_diameter_um={d:g}", match_labels(lab, truth).f1))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--tile", type=int, default=1024)
    parser.add_argument("--end-to-end", action="store_true")
    parser.add_argument("--write", type=Path, default=None, help="markdown file to write the figures to")
    parser.add_argument("--tile-stage", type=int, default=None, metavar="SIZE",
                        help="only profile the engine's tile task on a SIZE² OME-Zarr slide")
    parser.add_argument("--repeats", type=int, default=2, help="passes over the tiles (--tile-stage)")
    parser.add_argument("--numpy-kernels", action="store_true",
                        help="NumPy flood, group preparation and ownership instead of the compiled ones")
    parser.add_argument("--dask-reads", action="store_true",
                        help="read windows through Dask, without the strip cache (the previous reader)")
    parser.add_argument("--kernel-only", action="store_true",
                        help="only the kernel throughput of the default watershed")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/tiledseg-bench-watershed"))
    parser.add_argument("--end-to-end-only", action="store_true",
                        help="only the end-to-end run (honours --numpy-kernels and --dask-reads)")
    args = parser.parse_args()
    if args.numpy_kernels:
        use_numpy_kernels()
    if args.dask_reads:
        use_previous_reader()
    if args.end_to_end_only:
        s = synthetic_slide((args.size, args.size), 8, seed=0)
        r = end_to_end(s.image, s.channel_names, s.panel, tile=args.tile)
        print(f"end to end, {args.size}² slide, tile {args.tile}, numpy kernels {args.numpy_kernels}, dask reads "
              f"{args.dask_reads}, load {os.getloadavg()[0]:.1f}: {r['cpu_s']:.2f} CPU s, "
              f"{r['mpx_per_cpu_s']:.2f} Mpx per CPU s, {r['cells']} cells; stages (wall s) "
              + ", ".join(f"{k[6:-2]} {v:.1f}" for k, v in r.items() if k.startswith("stage_")))
        return
    if args.tile_stage is not None:
        r = tile_stage(args.tile_stage, tile=args.tile, repeats=args.repeats, dask_reads=args.dask_reads,
                       workdir=args.workdir)
        print(f"tile stage, {args.tile_stage}² slide, tile {args.tile}, numpy kernels {args.numpy_kernels}, "
              f"dask reads {args.dask_reads}, load {os.getloadavg()[0]:.1f}: CPU s per Mpx "
              + ", ".join(f"{k} {v:.4f}" for k, v in r.items()))
        return
    if args.kernel_only:
        s = synthetic_slide((args.size, args.size), 8, seed=0)
        r = kernel_throughput(get_backend("watershed", **ROLES), s.image, s.channel_names, tile=args.tile)
        print(f"kernel watershed default, {args.size}² slide, tile {args.tile}, numpy kernels "
              f"{args.numpy_kernels}, load {os.getloadavg()[0]:.1f}: {r['mpx_per_cpu_s']:.2f} Mpx/s per core "
              f"({r['cpu_s'] / r['mpx']:.4f} CPU s/Mpx)")
        return

    s = synthetic_slide((args.size, args.size), 8, seed=0)
    names = s.channel_names
    from skimage.segmentation import find_boundaries

    nucleus = (s.nuclei > 0).astype(np.float32)
    cyto = ((s.cells > 0) & (s.nuclei == 0)).astype(np.float32)
    cyto[find_boundaries(s.cells, mode="inner") & (s.nuclei == 0)] = 0.5
    probs = np.stack([nucleus, cyto, np.clip(1 - nucleus - cyto, 0, 1)])
    probs = probs / probs.sum(axis=0, keepdims=True)

    cases = [
        ("watershed (cells, default)", get_backend("watershed", **ROLES), None),
        ("watershed (cells, growth='nearest')", get_backend("watershed", growth="nearest", **ROLES), None),
        ("watershed (nuclei only)", get_backend("watershed", compartment="nucleus", **ROLES), None),
        ("expand 3 µm (watershed nuclei)", get_backend("expand", distance_um=3.0, nuclear=ROLES["nuclear"]), None),
        ("probabilities", get_backend("probabilities"), {f"probabilities:{i}": probs[i] for i in range(3)}),
    ]
    lines = [
        "# Classical backends (issue 4): throughput and accuracy",
        "",
        (f"Machine: {os.cpu_count()}-core / 24 GiB VM ({platform.processor() or platform.machine()}), "
         "shared with seven other engineers' jobs while measuring (1-minute load average "
         f"{os.getloadavg()[0]:.0f} on {os.cpu_count()} cores at the start): wall-clock figures are "
         "pessimistic; the per-CPU-second figures estimate per-core throughput (still depressed by "
         "hyper-thread and cache sharing: the same kernels measured 1.5x faster at lower load)."),
        "",
        (f"Command: `.venv/bin/python benchmarks/bench_watershed.py --size {args.size} --tile {args.tile}"
         f"{' --end-to-end' if args.end_to_end else ''}`"),
        "",
        (f"## Kernel throughput: prepare + segment per {args.tile}² core tile with halo, "
         f"{args.size}² synthetic slide, 1 µm/px, single thread"),
        "",
        "| backend | halo px | Mpx/s per core (CPU time) | Mpx/s (wall) |",
        "| --- | ---: | ---: | ---: |",
    ]
    for label, backend, extra in cases:
        r = kernel_throughput(backend, s.image, names, tile=args.tile, inputs=extra)
        print(label, r)
        lines.append(f"| {label} | {r['halo_px']} | {r['mpx_per_cpu_s']:.2f} | {r['mpx_per_wall_s']:.2f} |")
    steps = breakdown(s.image, names, size=min(args.tile, args.size))
    lines += ["", f"Where the time goes (`watershed`, one {min(args.tile, args.size)}² window, CPU s per Mpx):",
              "", "| step | CPU s / Mpx |", "| --- | ---: |"]
    for label, sec in steps:
        print(label, sec)
        lines.append(f"| {label} | {sec:.3f} |")
    if args.end_to_end:
        r = end_to_end(s.image, names, s.panel, tile=args.tile)
        print("end to end", r)
        lines += [
            "",
            "## End to end: `tiledseg.api.segment(backend='watershed')`, 1 worker thread, OME-Zarr in and out",
            "",
            f"{r['mpx']:.1f} Mpx in {r['wall_s']:.1f} s wall ({r['mpx_per_wall_s']:.2f} Mpx/s) and "
            f"{r['cpu_s']:.1f} s CPU ({r['mpx_per_cpu_s']:.2f} Mpx per CPU second), "
            f"{r['cells']} cells; stages (s, wall): "
            + ", ".join(f"{k[6:-2]} {v:.1f}" for k, v in r.items() if k.startswith("stage_")),
        ]
    lines += ["", "## Accuracy (F1 at IoU 0.5)", "", "| case | F1 |", "| --- | ---: |"]
    for label, f1 in accuracy():
        print(label, f1)
        lines.append(f"| {label} | {f1:.3f} |")
    text = "\n".join(lines) + "\n" + NOTES
    print(text)
    if args.write is not None:
        args.write.parent.mkdir(parents=True, exist_ok=True)
        args.write.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
