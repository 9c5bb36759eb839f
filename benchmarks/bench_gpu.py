"""GPU throughput of the deep-learning backends: raw model vs tiledseg end to end.

For each backend (``mesmer``, ``cellpose``) this script measures

1. **raw model throughput**: forward passes alone on random input at the same batch size and
   patch size the backend uses, and from it the time the forward passes of the whole run would
   take (the patches of every tile window, halos included);
2. **tiledseg end to end** on a synthetic slide (default 16k x 16k, 3 channels, 1 µm/px) written to
   OME-Zarr: ``tiledseg.segment(..., backend=...)`` on a local Dask cluster whose worker(s)
   advertise a ``GPU`` resource (read -> prepare -> model -> post-processing -> stitch -> write);
3. **GPU utilisation** sampled with ``nvidia-smi`` every 200 ms during both.

It prints a markdown table (slide Mpx/s, the ratio "raw forward time / end-to-end time", which the
issue's target puts at >= 0.9, mean GPU utilisation) and appends it to ``--out``.

Weights: real ones with ``--mesmer-model DIR`` / ``--cellpose-model FILE_OR_NAME``; otherwise
stand-ins are built in ``--workdir``. Mesmer: a SavedModel with Mesmer's signature that runs a
random-weight ResNet50 + upsampling heads on every patch but returns interpretable heads, so the
deep watershed finds the synthetic cells (:func:`build_mesmer_standin`). Cellpose: a random
Cellpose 3 network of the real architecture; it finds few masks, so pass
``--cellprob-threshold -3`` to put the mask dynamics on every pixel (their worst case). Random
weights change the segmentation, not the speed of the forward pass.

Examples
--------
On a GPU machine::

    python benchmarks/bench_gpu.py --backend mesmer cellpose --size 16384 --out results.md

Pipelining check on any machine (Mesmer's ``segment_batch`` with a simulated GPU of 0.5 s per
forward pass, pipelined vs serial)::

    python benchmarks/bench_gpu.py --pipeline-check 0.5

A tiny CPU smoke run (checks that the script works, measures nothing meaningful)::

    python benchmarks/bench_gpu.py --backend mesmer cellpose --size 256 --tile-size 128 \\
        --stand-in tiny --allow-cpu --raw-batches 2 --batch-size 4
"""

from __future__ import annotations

import argparse
import math
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

CHANNELS = ("DNA1", "CD45", "Other")


# ----------------------------------------------------------------------------------------------
# GPU utilisation
# ----------------------------------------------------------------------------------------------


class GpuSampler:
    """Samples ``nvidia-smi`` utilisation and memory every ``interval_ms`` in a background thread."""

    def __init__(self, interval_ms: int = 200) -> None:
        self.interval_ms = interval_ms
        self.samples: list[tuple[float, float]] = []
        self._proc: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> GpuSampler:  # noqa: PYI034 - a plain class, not subclassed
        exe = shutil.which("nvidia-smi")
        if exe is None:
            return self
        self._proc = subprocess.Popen(
            [exe, "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits",
             f"-lms={self.interval_ms}"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            try:
                util, mem = (float(v) for v in line.strip().split(",")[:2])
            except ValueError:
                continue
            self.samples.append((util, mem))

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=10)
        if self._thread is not None:
            self._thread.join(timeout=10)

    def summary(self) -> str:
        if not self.samples:
            return "n/a (no nvidia-smi)"
        util = [u for u, _ in self.samples]
        mem = max(m for _, m in self.samples)
        return f"mean {statistics.mean(util):.0f} %, median {statistics.median(util):.0f} %, peak mem {mem:.0f} MiB"


# ----------------------------------------------------------------------------------------------
# stand-in models
# ----------------------------------------------------------------------------------------------


def build_mesmer_standin(path: Path, kind: str) -> Path:
    """A SavedModel with Mesmer's signature: ``resnet50`` (real-size compute) or ``tiny``.

    ``resnet50``: a random-weight ResNet50 trunk + upsampled heads runs on every patch (GPU cost
    of the order of Mesmer's PanopticNet, whose FPN and full-resolution heads make the real one
    somewhat heavier), but the heads returned are the interpretable ones of the ``tiny``
    stand-in (blurred nuclear channel as inner distance, blurred foreground as interior), tied
    to the ResNet output by a negligible term so that the network cannot be pruned. The deep
    watershed therefore finds the synthetic cells, and the post-processing costs what it costs
    on real tissue instead of running on empty predictions.
    """
    import tensorflow as tf

    if kind == "tiny":
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from tests.segment.conftest_dl import save_mesmer_like_model

        return save_mesmer_like_model(path)
    import keras

    inp = keras.Input((256, 256, 2), name="input_0")
    three = keras.layers.Concatenate()([inp, inp[..., :1]])
    base = keras.applications.ResNet50(weights=None, include_top=False, input_tensor=three)
    feats = keras.layers.Conv2D(128, 1, activation="relu")(base.output)  # 8 x 8
    up = keras.layers.UpSampling2D(32, interpolation="bilinear")(feats)
    heads = {}
    for i in range(4):
        if i % 2 == 0:
            heads[f"semantic_{i}"] = keras.layers.Conv2D(1, 3, padding="same", activation="relu")(up)
        else:
            heads[f"semantic_{i}"] = keras.layers.Conv2D(3, 3, padding="same", activation="softmax")(up)
    model = keras.Model(inp, heads)
    g = np.exp(-0.5 * (np.arange(-6, 7) / 2.5) ** 2)
    g /= g.sum()
    blur = np.outer(g, g).astype("float32")[:, :, None, None]

    class Serving(tf.Module):
        def __init__(self, net: Any) -> None:
            super().__init__()
            self.net = net
            self.blur = tf.Variable(blur, trainable=False)

        @tf.function(input_signature=[tf.TensorSpec([None, 256, 256, 2], tf.float32, name="input_0")])
        def serve(self, input_0: Any) -> Any:
            out = self.net(input_0, training=False)
            tie = 1e-9 * tf.add_n([tf.reduce_mean(out[f"semantic_{i}"], axis=[1, 2, 3], keepdims=True)
                                   for i in range(4)])
            nuc = input_0[..., 0:1]
            inner = tf.nn.conv2d(nuc, self.blur, 1, "SAME") + tie
            fg = tf.sigmoid(12.0 * (tf.nn.conv2d(tf.maximum(nuc, input_0[..., 1:2]), self.blur, 1, "SAME") - 0.35))
            fg_nuc = tf.sigmoid(12.0 * (tf.nn.conv2d(nuc, self.blur, 1, "SAME") - 0.35))
            pix = tf.concat([1.0 - fg, fg, tf.zeros_like(fg)], axis=-1)
            pix_nuc = tf.concat([1.0 - fg_nuc, fg_nuc, tf.zeros_like(fg_nuc)], axis=-1)
            return {"semantic_0": inner, "semantic_1": pix, "semantic_2": inner, "semantic_3": pix_nuc}

    module = Serving(model)
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path


def build_cellpose_standin(path: Path) -> Path:
    """A Cellpose 3 network of the real architecture with random weights (diam_mean 30)."""
    import torch
    from cellpose import models

    torch.manual_seed(0)
    model = models.CellposeModel(gpu=False, pretrained_model=False, diam_mean=30.0)
    model.net.save_model(str(path))
    return path


# ----------------------------------------------------------------------------------------------
# synthetic slide
# ----------------------------------------------------------------------------------------------


def _block(block_id: tuple[int, ...], *, block: int, spacing: int, seed: int) -> np.ndarray:
    from scipy import ndimage as ndi

    _, by, bx = block_id
    rng = np.random.default_rng([seed, by, bx])
    pad = 2 * spacing
    size = block + 2 * pad
    impulses = np.zeros((size, size), np.float32)
    # the same cell lattice in every block, jittered by global position -> cells cross blocks
    oy, ox = by * block - pad, bx * block - pad
    ys = np.arange(math.ceil(oy / spacing) * spacing, oy + size, spacing)
    xs = np.arange(math.ceil(ox / spacing) * spacing, ox + size, spacing)
    gy, gx = np.meshgrid(ys.astype(np.float64), xs.astype(np.float64), indexing="ij")
    # a deterministic jitter from the global lattice position (same in every block)
    jy = np.modf(np.abs(np.sin(gy * 12.9898 + gx * 78.233 + seed)) * 43758.5453)[0] * 4 - 2
    jx = np.modf(np.abs(np.sin(gy * 39.3468 + gx * 11.135 + seed)) * 24634.6345)[0] * 4 - 2
    r = np.rint(gy - oy + jy).astype(int).ravel()
    c = np.rint(gx - ox + jx).astype(int).ravel()
    keep = (r >= 0) & (r < size) & (c >= 0) & (c < size)
    impulses[r[keep], c[keep]] = 1.0
    dna = ndi.gaussian_filter(impulses, 3.0) * 400.0
    cell = ndi.gaussian_filter(impulses, 6.0) * 1600.0
    mem = np.clip(ndi.gaussian_laplace(cell, 2.0) * -8.0, 0, None)
    core = (slice(pad, pad + block), slice(pad, pad + block))
    noise = rng.poisson(0.5, size=(3, block, block)).astype(np.float32)
    out = np.stack([dna[core], mem[core], np.zeros((block, block), np.float32)]) + noise
    return out.astype(np.float32)


def write_synthetic_slide(url: str, size: int, *, chunk: int = 1024, seed: int = 0) -> str:
    """A ``(3, size, size)`` IMC-like float32 slide of cells on a jittered 16-px lattice."""
    import dask.array as da

    from tiledseg.io import write_slide

    chunk = min(chunk, size)
    template = da.zeros((3, size, size), chunks=(3, chunk, chunk), dtype=np.float32)
    image = template.map_blocks(
        lambda x, block_id=None: _block(block_id, block=chunk, spacing=16, seed=seed)[
            :, : x.shape[1], : x.shape[2]
        ],
        dtype=np.float32,
    )
    return write_slide(url, image, channel_names=CHANNELS, pixel_size_um=1.0,
                       chunks=(1, chunk, chunk), overwrite=True)


# ----------------------------------------------------------------------------------------------
# raw model throughput
# ----------------------------------------------------------------------------------------------


def _windows(size: int, tile: int, halo: int, chunk: int) -> list[tuple[int, int]]:
    """``(rows, cols)`` of every tile window the engine reads (its own tile plan)."""
    from tiledseg.tiling import plan_tiles

    plan = plan_tiles((size, size), tile_size=tile, halo=halo, chunks=(chunk, chunk))
    return [(r1 - r0, c1 - c0) for (r0, r1), (c0, c1) in (t.window for t in plan.tiles)]


def raw_mesmer(model_dir: str, device: str, batch: int, n_batches: int,
               windows: list[tuple[int, int]], pixel_size: float) -> dict[str, float]:
    """Forward passes alone (host -> device -> host, as the backend calls them)."""
    from tiledseg.segment._dl_patches import patch_layout
    from tiledseg.segment.mesmer import MODEL_MPP, load_mesmer_model

    model = load_mesmer_model(model_dir, device=device)
    x = np.random.default_rng(0).random((batch, model.patch, model.patch, 2), dtype=np.float32)
    model(x)
    model(x)
    t0 = time.perf_counter()
    for _ in range(n_batches):
        model(x)
    per_patch = (time.perf_counter() - t0) / (n_batches * batch)
    scale = pixel_size / MODEL_MPP
    n_patches = sum(patch_layout((max(1, int(wy * scale)), max(1, int(wx * scale))), patch=model.patch).n_patches
                    for wy, wx in windows)
    # the engine batches ``model_batch_size`` patches across the windows of a task: count
    # passes as full batches (the last pass of a task may be partial: a small overestimate)
    return {"patches_per_s": 1.0 / per_patch, "n_patches": n_patches,
            "forward_s": n_patches * per_patch,
            "model_mpx_s": model.patch * model.patch / per_patch / 1e6}


def _cellpose_tiles(shape: tuple[int, int], rescale: float, bsize: int) -> int:
    """Network tiles Cellpose's ``run_net`` cuts one window into (``tile_overlap=0.1``)."""
    from cellpose.transforms import get_pad_yx

    ly, lx = shape
    if rescale != 1.0:
        ly, lx = int(ly * rescale), int(lx * rescale)
    ypad1, ypad2, xpad1, xpad2 = get_pad_yx(ly, lx)
    ly, lx = ly + ypad1 + ypad2, lx + xpad1 + xpad2
    ny = 1 if ly <= bsize else math.ceil(1.2 * ly / bsize)
    nx = 1 if lx <= bsize else math.ceil(1.2 * lx / bsize)
    return ny * nx


def raw_cellpose(model_spec: str, device: str, batch: int, n_batches: int,
                 windows: list[tuple[int, int]], diameter_px: float) -> dict[str, float]:
    """Cellpose's own forward call (``cellpose.core._forward``: host -> device -> host)."""
    from cellpose import core

    from tiledseg.segment.cellpose import load_cellpose_model

    loaded = load_cellpose_model(model_spec, device=device)
    net = loaded.model.net
    bsize = 224 if loaded.major < 4 else 256
    nchan = 2 if loaded.major < 4 else 3
    x = np.random.default_rng(0).random((batch, nchan, bsize, bsize), dtype=np.float32)
    core._forward(net, x)
    core._forward(net, x)
    t0 = time.perf_counter()
    for _ in range(n_batches):
        core._forward(net, x)  # returns numpy: synchronises with the GPU
    per_tile = (time.perf_counter() - t0) / (n_batches * batch)
    rescale = (loaded.diam_mean if loaded.major < 4 else 30.0) / diameter_px
    n_tiles = sum(_cellpose_tiles(w, rescale, bsize) for w in windows)
    return {"patches_per_s": 1.0 / per_tile, "n_patches": n_tiles, "forward_s": n_tiles * per_tile,
            "model_mpx_s": bsize * bsize / per_tile / 1e6}


# ----------------------------------------------------------------------------------------------
# pipelining check (no GPU needed)
# ----------------------------------------------------------------------------------------------


def pipeline_check(work: Path, gpu_seconds: float, *, size: int = 384, n_windows: int = 4) -> str:
    """Mesmer's ``segment_batch`` with a simulated GPU, pipelined vs one step after the other.

    The model is the tiny stand-in plus a sleep of ``gpu_seconds`` per forward pass (a sleep
    frees the CPU as a GPU kernel does). The serial run calls the same pieces in turn. Returns a
    markdown table; raises if the labels differ.
    """
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.segment.conftest_dl import prepared_histograms, statistics, synthetic_cells
    from tiledseg.segment._dl_cache import cached_model, clear_model_cache
    from tiledseg.segment._dl_patches import cut_patches
    from tiledseg.segment.mesmer import MesmerBackend, load_mesmer_model

    model_dir = build_mesmer_standin(work / "mesmer_tiny", "tiny")
    image, _ = synthetic_cells((size, size), seed=1)
    backend = MesmerBackend(model_path=str(model_dir), nuclear="DNA1", membrane="CD45", allow_cpu=True)
    prepared = backend.prepare(image[:2], pixel_size_um=1.0, stats=statistics(image))
    fitted = backend.fit(*prepared_histograms(prepared))
    real = load_mesmer_model(model_dir, device="cpu")
    passes: list[int] = []

    class SimulatedGpu:
        patch = real.patch

        def __call__(self, x: np.ndarray) -> list[np.ndarray]:
            passes.append(len(x))
            out = real(x)
            time.sleep(gpu_seconds)
            return out

    def serial() -> list[np.ndarray]:
        model = backend._model()
        clips = backend._clips(fitted)
        out = []
        for w in windows:
            patches, layout = cut_patches(backend._preprocess(w, pixel_size_um=1.0, clips=clips), patch=model.patch)
            maps = np.concatenate([backend._select(model(patches[s : s + backend.model_batch_size]))
                                   for s in range(0, len(patches), backend.model_batch_size)])
            out.append(backend._finish(maps, layout, (size, size)))
        return out

    windows = [prepared.copy() for _ in range(n_windows)]
    rows, results = [], {}
    for name, run in (("serial", serial),
                      ("pipelined", lambda: backend.segment_batch(windows, pixel_size_um=1.0, fitted=fitted))) * 2:
        clear_model_cache()
        cached_model(("mesmer", backend.model_path, "cpu"), SimulatedGpu)
        passes.clear()
        w0, c0 = time.perf_counter(), time.process_time()
        results[name] = run()
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        rows.append(f"| {name} | {n_windows} x {size}² | {len(passes)} x {gpu_seconds} s | {wall:.2f} | {cpu:.2f} |")
    clear_model_cache()
    if not all(np.array_equal(a, b) for a, b in zip(results["serial"], results["pipelined"], strict=True)):
        raise AssertionError("pipelined labels differ from the serial ones")
    head = ["| Mesmer segment_batch | windows (1 µm/px) | simulated GPU passes | wall s | CPU s |",
            "| --- | --- | --- | --- | --- |"]
    return "\n".join(head + rows) + "\n\nlabels identical\n"


# ----------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", nargs="+", default=["mesmer", "cellpose"], choices=["mesmer", "cellpose"])
    ap.add_argument("--size", type=int, default=16384, help="slide edge in pixels (1 µm/px)")
    ap.add_argument("--tile-size", type=int, default=None, help="core tile edge (default: backend's)")
    ap.add_argument("--batch-size", type=int, default=16, help="model patches per forward pass")
    ap.add_argument("--tiles-per-task", type=int, default=4, help="engine batch (segment_batch)")
    ap.add_argument("--tasks-per-gpu", type=int, default=2,
                    help="concurrent tile tasks per GPU worker (overlaps CPU post-processing)")
    ap.add_argument("--mesmer-model", default=None, help="Mesmer SavedModel dir (default: stand-in)")
    ap.add_argument("--cellpose-model", default=None, help="Cellpose model file or name (default: stand-in)")
    ap.add_argument("--stand-in", choices=["resnet50", "tiny"], default="resnet50")
    ap.add_argument("--diameter-um", type=float, default=10.0, help="Cellpose cell diameter")
    ap.add_argument("--cellprob-threshold", type=float, default=None,
                    help="Cellpose cellprob_threshold (default: Cellpose's 0.0; with random weights "
                         "-3 makes every pixel foreground, the worst case for the mask dynamics)")
    ap.add_argument("--raw-batches", type=int, default=20)
    ap.add_argument("--allow-cpu", action="store_true", help="run without a GPU (smoke test only)")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--out", default=None, help="append the markdown table to this file")
    ap.add_argument("--pipeline-check", type=float, default=None, metavar="GPU_S",
                    help="only compare Mesmer's pipelined segment_batch with a serial run, on the CPU, "
                         "with a simulated GPU taking GPU_S seconds per forward pass")
    args = ap.parse_args(argv)
    if args.pipeline_check is not None:
        work = Path(args.workdir or tempfile.mkdtemp(prefix="tiledseg-bench-gpu-"))
        work.mkdir(parents=True, exist_ok=True)
        print(pipeline_check(work, args.pipeline_check))
        return 0

    from distributed import Client, LocalCluster

    import tiledseg.api
    from tiledseg.segment import get_backend
    from tiledseg.tiling import halo_from_physics

    work = Path(args.workdir or tempfile.mkdtemp(prefix="tiledseg-bench-gpu-"))
    work.mkdir(parents=True, exist_ok=True)
    gpu = shutil.which("nvidia-smi") is not None
    if not gpu and not args.allow_cpu:
        print("no GPU found (nvidia-smi missing); pass --allow-cpu for a CPU smoke run", file=sys.stderr)
        return 2
    device = "cuda" if gpu else "cpu"

    t0 = time.perf_counter()
    chunk = min(1024, args.tile_size or 1024, args.size)
    slide = write_synthetic_slide(str(work / "synthetic.ome.zarr"), args.size, chunk=chunk)
    print(f"wrote {args.size} x {args.size} synthetic slide in {time.perf_counter() - t0:.1f} s")

    rows: list[str] = []
    for name in args.backend:
        if name == "mesmer":
            model = args.mesmer_model or str(build_mesmer_standin(work / f"mesmer_{args.stand_in}", args.stand_in))
            params: dict[str, Any] = {"model_path": model, "nuclear": ["DNA1"], "membrane": ["CD45"],
                                      "model_batch_size": args.batch_size}
        else:
            model = args.cellpose_model or str(build_cellpose_standin(work / "cellpose_random"))
            diameter = args.diameter_um if args.stand_in != "tiny" else 30.0
            params = {"model": model, "nuclear": ["DNA1"], "membrane": ["CD45"],
                      "model_batch_size": args.batch_size, "diameter_um": diameter}
            if args.cellprob_threshold is not None:
                params["cellprob_threshold"] = args.cellprob_threshold
        backend = get_backend(name, allow_cpu=True if args.allow_cpu else None, **params)
        tile = args.tile_size or backend.default_tile_size
        halo = halo_from_physics(max_cell_diameter_um=backend.halo_um(), pixel_size_um=1.0)
        windows = _windows(args.size, tile, halo, chunk)

        with GpuSampler() as raw_gpu:
            if name == "mesmer":
                raw = raw_mesmer(model, device, args.batch_size, args.raw_batches, windows, 1.0)
            else:
                raw = raw_cellpose(model, device, args.batch_size, args.raw_batches, windows,
                                   params["diameter_um"] / 1.0)

        resources = {"GPU": args.tasks_per_gpu}
        with (
            LocalCluster(n_workers=1, threads_per_worker=max(2, args.tasks_per_gpu), processes=True,
                         resources=resources, dashboard_address=":0") as cluster,
            Client(cluster) as client,
            GpuSampler() as e2e_gpu,
        ):
            t0 = time.perf_counter()
            result = tiledseg.api.segment(
                slide, backend=name, client=client, tile_size=tile, overwrite=True,
                labels_name=f"bench_{name}", batch_size=args.tiles_per_task,
                allow_cpu=args.allow_cpu, **params,
            )
            seconds = time.perf_counter() - t0
        mpx = args.size * args.size / 1e6
        ratio = raw["forward_s"] / seconds
        rows.append(
            f"| {name} | {args.size}² | {tile} | {args.batch_size} | {raw['model_mpx_s']:.3g} | "
            f"{raw['n_patches']} | {raw['forward_s']:.3g} | {seconds:.3g} | {mpx / seconds:.3g} | "
            f"{ratio:.2f} | {result.n_cells} | {raw_gpu.summary()} | {e2e_gpu.summary()} |"
        )
        print(rows[-1], flush=True)

    header = [
        (
            f"Machine: {platform.node()} ({platform.processor() or platform.machine()}), "
            f"device {device}; `{' '.join(['python', 'benchmarks/bench_gpu.py', *(argv or sys.argv[1:])])}`"
        ),
        "",
        (
            "| backend | slide | tile | batch | raw model Mpx/s (model px) | patches | forward-only s | "
            "end-to-end s | end-to-end slide Mpx/s | forward / end-to-end | cells | GPU during raw | "
            "GPU during end-to-end |"
        ),
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    table = "\n".join(header + rows) + "\n"
    print(table)
    if args.out:
        with open(args.out, "a", encoding="utf-8") as fh:
            fh.write(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
