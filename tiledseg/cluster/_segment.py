"""The tile engine: slide statistics, per-tile segmentation, stitching and label assembly on Dask.

Stages (each emits :class:`~tiledseg.progress.ProgressEvent` s under its name):

``statistics``
    Over every pixel (slides up to 16.8 Mpx, or ``statistics_sample="full"``), or over an even,
    deterministic sample of whole storage chunks (:func:`tiledseg.tiling.sample_blocks`; by
    default ``max(1/8, 16.8 Mpx)`` of a larger slide), which depends on the slide alone, never
    on the tile size or the workers. Per tile core or sampled chunk, merged into
    :class:`~tiledseg.segment.ChannelStatistics` (:mod:`tiledseg.segment._statistics`). 8- and
    16-bit integer inputs take one read of every pixel: exact extremes plus exact per-value
    counts, merged on the workers in a small tree. Other inputs (float32 IMC) take two exact
    passes: extremes, then histograms between them. Either way the result equals
    ``statistics_from_array`` on the pixels read. When the backend overrides ``fit``, a second pass
    prepares every window and histograms the prepared planes *on the core only*, so the
    slide-level histograms are exact, and ``backend.fit`` turns them into slide-level
    parameters (on a sample: each sampled chunk prepared alone, histogrammed on its interior).
    Both are stored with the run, with the sample, and reused on resume.
``tiles``
    One task per tile (or per batch of tiles for GPU backends): read the window's inputs,
    ``prepare`` / ``segment``, keep owned cells (:func:`tiledseg.stitch.own_cells`) and write
    them to the scratch store (:mod:`tiledseg.io._scratch`). Finished tiles are skipped on a
    re-run. A tile that raises is reported with its index and window once every other tile has
    finished and been stored.
``stitch``
    Per tile, overlaps of its owned cells with those of its higher-index neighbours
    (:func:`tiledseg.stitch.pair_overlaps`); a small resolution on the client
    (:func:`tiledseg.stitch.resolve_conflicts`); exact pixel counts for the rare cells that might
    lose every pixel; per-tile counts -> prefix-sum IDs -> per-tile relabel maps.
``assemble``
    One task per 4 x 4 output chunks (2 x 2 on small slides): paint them from the overlapping
    tiles' owned cells with their relabel maps (:func:`tiledseg.stitch.assemble_block`), write
    them to ``labels/<name>`` and their successive 2x2 modes to pyramid levels 1 and 2 (whole
    chunks of each, so level 0 is never read back); then the coarser levels from the last one
    written, the run metadata, and the completion marker, last.

Only the small per-tile maps travel to each block; no task ever holds the slide.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import threading
import time
import traceback
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import dask.array as da
import numpy as np
from distributed import Client, Future, as_completed
from numpy.typing import NDArray

from tiledseg.errors import (
    ChannelNotFoundError,
    NoGPUWorkerError,
    OutputExistsError,
    ParameterError,
    TileFailedError,
)
from tiledseg.io import Slide, begin_labels, open_labels
from tiledseg.io._region import ZarrChannels, zarr_channels
from tiledseg.io._scratch import ScratchStore
from tiledseg.progress import ProgressCallback, ProgressEvent, emit
from tiledseg.segment._protocol import PREPARED_BINS, BaseBackend, ChannelStatistics
from tiledseg.segment._statistics import (
    DEFAULT_BINS,
    FusedPartial,
    finalize_fused,
    finalize_statistics,
    fused_partial,
    histogram_partial,
    merge_fused,
    merge_histograms,
    merge_minmax,
    minmax_partial,
    one_pass_supported,
    prepared_edges,
    prepared_histogram,
)
from tiledseg.stitch import (
    OwnedCells,
    assemble_block,
    assign_ids,
    claimed_pixels,
    own_cells,
    pair_overlaps,
    resolve_conflicts,
)
from tiledseg.tiling import Tile, halo_from_physics, plan_tiles, sample_blocks, statistics_fraction

__all__ = ["EngineResult", "build_inputs", "gpu_workers", "resolve_statistics", "segment_slide"]

logger = logging.getLogger(__name__)

Window = tuple[tuple[int, int], tuple[int, int]]


# --------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------


def build_inputs(
    slide: Slide,
    names: Sequence[str],
    *,
    extra: Mapping[str, Any] | None = None,
    storage_options: dict[str, Any] | None = None,
) -> da.Array:
    """The ``(C, Y, X)`` lazy array of the inputs a backend asked for, in its order.

    Parameters
    ----------
    slide : Slide
    names : sequence of str
        Input names (see :mod:`tiledseg.segment._protocol`): slide channels, ``labels:<name>``,
        ``<key>:<channel>`` of an extra image.
    extra : mapping of str -> (C, Y, X) or (Y, X) array, optional
        Extra images by key (numpy or dask), same spatial shape as the slide.

    Raises
    ------
    ChannelNotFoundError
        A name that is neither a channel, a complete label image, nor a channel of an extra image.
    """
    if not names:
        raise ChannelNotFoundError("the backend asked for no input channels")
    shape = tuple(slide.image.shape[1:])
    planes: list[da.Array] = []
    for name in names:
        if name in slide.channel_names:
            planes.append(slide.image[slide.channel_names.index(name)])
            continue
        key, sep, sub = name.partition(":")
        if sep and key == "labels":
            if sub not in slide.labels:
                raise ChannelNotFoundError(
                    f"input {name!r}: slide {slide.url!r} has no complete label image {sub!r} "
                    f"(label images: {list(slide.labels)})"
                )
            planes.append(open_labels(slide.url, sub, storage_options=storage_options).data)
            continue
        if sep and extra is not None and key in extra:
            arr = extra[key]
            lazy = arr if isinstance(arr, da.Array) else da.from_array(np.asarray(arr))  # type: ignore[no-untyped-call]
            if lazy.ndim == 2:
                lazy = lazy[None]
            if tuple(lazy.shape[1:]) != shape:
                raise ParameterError(
                    f"extra input {key!r} has spatial shape {tuple(lazy.shape[1:])}; expected the "
                    f"slide's {shape}"
                )
            index = int(sub) if sub.isdigit() else -1
            if not 0 <= index < lazy.shape[0]:
                raise ChannelNotFoundError(
                    f"input {name!r}: extra image {key!r} has {lazy.shape[0]} channels; "
                    f"channel {sub!r} is not an index among them"
                )
            planes.append(lazy[index])
            continue
        raise ChannelNotFoundError(
            f"slide {slide.url!r} has no channel {name!r}; channels: {list(slide.channel_names)}"
        )
    dtype = np.result_type(*[p.dtype for p in planes])
    stacked: da.Array = da.stack([p.astype(dtype) for p in planes])  # type: ignore[no-untyped-call]
    return stacked


#: Slides whose inputs take at most this many bytes (and at most a quarter of the smallest
#: worker's memory limit, see :func:`_whole_slide_budget`) are kept decoded in each worker's
#: reader during a run (see ``segment_slide``); larger ones use the bounded block cache.
WHOLE_SLIDE_CACHE_BYTES = 512 * 2**20


def _whole_slide_budget(client: Client) -> int:
    """Input bytes a worker may keep decoded for a run: :data:`WHOLE_SLIDE_CACHE_BYTES`, at most a
    quarter of the smallest worker memory limit the scheduler knows of."""
    try:
        workers = client.scheduler_info()["workers"].values()
        limits = [int(w.get("memory_limit") or 0) for w in workers]
    except Exception:  # noqa: BLE001  an odd client: the fixed budget
        limits = []
    return min([WHOLE_SLIDE_CACHE_BYTES] + [limit // 4 for limit in limits if limit > 0])


class _Reader:
    """Reads windows of the input array inside a task (no data moves between workers).

    A window with its halo straddles up to 3 x 3 storage chunks, and each chunk is decompressed
    whole; neighbouring tiles share most of them. Each worker therefore keeps the last
    ``cache_blocks`` chunk-aligned blocks (all inputs of one chunk) it read. A block pushed out
    of that cache leaves its four border strips behind (as wide as the widest part of a block
    a window has needed without needing all of it: the halo), in a second cache of at most as
    many bytes, which serves the halos later windows read from it. Along rows of tiles this
    decompresses each chunk about twice (once as the core's neighbour below, once as a core)
    instead of three times. Memory stays bounded by about ``2 x cache_blocks x inputs x chunk
    size``, independent of the slide. The engine raises ``cache_blocks`` to every block of a
    slide whose inputs fit :func:`_whole_slide_budget` (512 MiB, at most a quarter of a
    worker's memory limit), so a small slide is decompressed once per run and per worker.
    """

    def __init__(self, array: da.Array, *, chunks: tuple[int, int], cache_blocks: int = 9) -> None:
        self.array = array
        self.chunks = chunks
        self.cache_blocks = cache_blocks
        # Stored slide channels are read chunk by chunk straight from the store (bit-identical,
        # half the CPU of a Dask graph per block); anything else goes through Dask.
        self.source: ZarrChannels | None = zarr_channels(array)
        self._init_caches()

    def _init_caches(self) -> None:
        self._cache: OrderedDict[tuple[int, int], NDArray[Any]] = OrderedDict()
        # (block) -> (strip width, top, bottom, left, right) of evicted blocks
        self._strips: OrderedDict[tuple[int, int], tuple[int, tuple[NDArray[Any], ...]]] = OrderedDict()
        self._strip_bytes = 0
        self._margin = 0
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {"array": self.array, "chunks": self.chunks, "cache_blocks": self.cache_blocks, "source": self.source}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.array = state["array"]
        self.chunks = state["chunks"]
        self.cache_blocks = state["cache_blocks"]
        self.source = state["source"]
        self._init_caches()

    def _direct(self, window: Window) -> NDArray[Any]:
        if self.source is not None:
            return self.source.read(window)
        (r0, r1), (c0, c1) = window
        return np.asarray(self.array[:, r0:r1, c0:c1].compute(scheduler="sync"))

    def _from_strips(self, key: tuple[int, int], rows: slice, cols: slice, shape: tuple[int, int]) -> NDArray[Any] | None:
        """The part ``[:, rows, cols]`` of an evicted block, when its strips hold it (lock held)."""
        kept = self._strips.get(key)
        if kept is None:
            return None
        width, (top, bottom, left, right) = kept
        h, w = shape
        r0, r1, c0, c1 = rows.start, rows.stop, cols.start, cols.stop
        if r1 <= width:
            return top[:, r0:r1, c0:c1]
        if r0 >= h - width:
            return bottom[:, r0 - (h - width) : r1 - (h - width), c0:c1]
        if c1 <= width:
            return left[:, r0:r1, c0:c1]
        if c0 >= w - width:
            return right[:, r0:r1, c0 - (w - width) : c1 - (w - width)]
        return None

    def _evicted(self, key: tuple[int, int], block: NDArray[Any]) -> None:
        """Keep the border strips of a block leaving the cache (lock held)."""
        h, w = block.shape[1:]
        width = self._margin
        if width <= 0 or 2 * width >= min(h, w):
            return
        strips = tuple(
            np.ascontiguousarray(part)
            for part in (block[:, :width], block[:, h - width :], block[:, :, :width], block[:, :, w - width :])
        )
        old = self._strips.pop(key, None)
        if old is not None:
            self._strip_bytes -= sum(p.nbytes for p in old[1])
        self._strips[key] = (width, strips)
        self._strip_bytes += sum(p.nbytes for p in strips)
        budget = self.cache_blocks * block.nbytes
        while self._strip_bytes > budget and self._strips:
            _, (_, dropped) = self._strips.popitem(last=False)
            self._strip_bytes -= sum(p.nbytes for p in dropped)

    def _part(self, bi: int, bj: int, rows: slice, cols: slice) -> NDArray[Any]:
        """``block[:, rows, cols]`` of chunk-aligned block ``(bi, bj)`` (block coordinates)."""
        key = (bi, bj)
        cy, cx = self.chunks
        ny, nx = int(self.array.shape[1]), int(self.array.shape[2])
        shape = (min((bi + 1) * cy, ny) - bi * cy, min((bj + 1) * cx, nx) - bj * cx)
        partial = (rows.stop - rows.start, cols.stop - cols.start) != shape
        with self._lock:
            if partial:
                self._margin = max(self._margin, min(rows.stop - rows.start, cols.stop - cols.start))
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit[:, rows, cols]
            if partial:
                strip = self._from_strips(key, rows, cols, shape)
                if strip is not None:
                    self._strips.move_to_end(key)
                    return strip
        block = self._direct(((bi * cy, bi * cy + shape[0]), (bj * cx, bj * cx + shape[1])))
        with self._lock:
            self._cache[key] = block
            while len(self._cache) > self.cache_blocks:
                old_key, old = self._cache.popitem(last=False)
                self._evicted(old_key, old)
        return block[:, rows, cols]

    def read(self, window: Window, *, cache: bool = True) -> NDArray[Any]:
        """``(C, rows, cols)`` inputs on ``window`` (a new array)."""
        if not cache or self.cache_blocks <= 0:
            return self._direct(window)
        (r0, r1), (c0, c1) = window
        cy, cx = self.chunks
        ny, nx = int(self.array.shape[1]), int(self.array.shape[2])
        out = np.empty((int(self.array.shape[0]), r1 - r0, c1 - c0), dtype=self.array.dtype)
        for bi in range(r0 // cy, (r1 - 1) // cy + 1):
            for bj in range(c0 // cx, (c1 - 1) // cx + 1):
                br0, bc0 = bi * cy, bj * cx
                rr0, rr1 = max(r0, br0), min(r1, br0 + cy, ny)
                cc0, cc1 = max(c0, bc0), min(c1, bc0 + cx, nx)
                out[:, rr0 - r0 : rr1 - r0, cc0 - c0 : cc1 - c0] = self._part(
                    bi, bj, slice(rr0 - br0, rr1 - br0), slice(cc0 - bc0, cc1 - bc0)
                )
        return out


# --------------------------------------------------------------------------------------------
# task functions (module level: pickled to workers)
# --------------------------------------------------------------------------------------------


def _task_minmax(reader: _Reader, window: Window, cache: bool = False) -> NDArray[np.float64]:
    return minmax_partial(reader.read(window, cache=cache))


def _task_fused(reader: _Reader, window: Window, cache: bool = False) -> FusedPartial:
    return fused_partial(reader.read(window, cache=cache))


def _task_histogram(
    reader: _Reader, window: Window, minmax: NDArray[np.float64], bins: int, cache: bool = False
) -> NDArray[np.int64]:
    return histogram_partial(reader.read(window, cache=cache), minmax, bins=bins)


def _task_prepared_histogram(
    reader: _Reader, backend: Any, tile: Tile, pixel_size_um: float, stats: ChannelStatistics,
    cache: bool = True,
) -> NDArray[np.int64]:
    # Sampled chunks are rarely neighbours: caching them would only churn the tile cache.
    prepared = backend.prepare(reader.read(tile.window, cache=cache), pixel_size_um=pixel_size_um, stats=stats)
    rows, cols = tile.core_in_window
    return prepared_histogram(np.asarray(prepared)[:, rows, cols])


def _task_tiles(
    reader: _Reader,
    backend: Any,
    tiles: Sequence[Tile],
    slide_shape: tuple[int, int],
    pixel_size_um: float,
    stats: ChannelStatistics,
    fitted: Mapping[str, float],
    scratch: ScratchStore,
    retries: int,
    halo: int,
) -> list[dict[str, Any]]:
    """Segment a batch of tiles and store each; failures come back as records, never raised.

    A tile whose backend raises is tried again up to ``retries`` times inside the task (a
    flaky GPU, a transient read error) before its error is recorded.
    """
    out: list[dict[str, Any]] = []
    pending = list(tiles)
    for attempt in range(retries + 1):
        if not pending:
            break
        start = time.perf_counter()
        try:
            windows = (
                backend.prepare(reader.read(t.window), pixel_size_um=pixel_size_um, stats=stats)
                for t in pending
            )
            if len(pending) == 1:
                labels = [backend.segment(next(windows), pixel_size_um=pixel_size_um, fitted=fitted)]
            elif getattr(backend, "streams_batches", False):
                # The backend consumes the windows lazily (e.g. in a prefetch thread), so reading
                # and preparing window k + 1 overlaps the model working on window k.
                labels = list(backend.segment_batch(windows, pixel_size_um=pixel_size_um, fitted=fitted))
            else:
                labels = list(backend.segment_batch(list(windows), pixel_size_um=pixel_size_um, fitted=fitted))
            del windows
            seconds = (time.perf_counter() - start) / len(pending)
            for tile, lab in zip(pending, labels, strict=True):
                owned = own_cells(np.asarray(lab), tile=tile, slide_shape=slide_shape)
                info = {"cells": owned.n, "truncated": int(owned.truncated.sum()), "seconds": round(seconds, 4)}
                scratch.write_tile(
                    tile.index, owned.labels, owned.table(), attrs=info, edges=_edge_widths(tile, slide_shape, halo)
                )
                out.append({"tile": tile.index, **info})
            pending = []
        except Exception as exc:  # noqa: BLE001  reported per tile on the client, with its window
            done = {r["tile"] for r in out}
            pending = [t for t in pending if t.index not in done]
            if attempt < retries:
                logger.warning(
                    "tiles %s failed (%s: %s); retrying (%d of %d)",
                    [t.index for t in pending], type(exc).__name__, exc, attempt + 1, retries,
                )
                continue
            text = traceback.format_exc()
            out.extend({"tile": t.index, "error": exc, "traceback": text} for t in pending)
    return out


def _edge_widths(tile: Tile, slide_shape: tuple[int, int], halo: int) -> tuple[int, int, int, int]:
    """Widths (top, bottom, left, right) of the bands of ``tile``'s window that neighbours' windows overlap.

    A neighbour's window reaches the plan's ``halo`` past its core, which meets this tile's core,
    so on a side with a neighbour the band is this window's margin there plus ``halo`` (the
    scratch store clips it to the window). Stored as separate strips in the scratch tile, they
    let stitching (and output blocks that only touch the tile's margin) decode a strip instead
    of the whole window.
    """
    (wr0, wr1), (wc0, wc1) = tile.window
    (cr0, cr1), (cc0, cc1) = tile.core
    ny, nx = slide_shape
    return (
        cr0 - wr0 + halo if cr0 > 0 else 0,
        wr1 - cr1 + halo if cr1 < ny else 0,
        cc0 - wc0 + halo if cc0 > 0 else 0,
        wc1 - cc1 + halo if cc1 < nx else 0,
    )


def _crop(tile: Tile, box: Window) -> tuple[slice, slice]:
    (wr, _), (wc, _) = tile.window
    (r0, r1), (c0, c1) = box
    return slice(r0 - wr, r1 - wr), slice(c0 - wc, c1 - wc)


def _intersect(a: Window, b: Window) -> Window | None:
    r0, r1 = max(a[0][0], b[0][0]), min(a[0][1], b[0][1])
    c0, c1 = max(a[1][0], b[1][0]), min(a[1][1], b[1][1])
    return None if r0 >= r1 or c0 >= c1 else ((r0, r1), (c0, c1))


def _task_overlaps(
    scratch: ScratchStore, tile: Tile, others: Sequence[Tile]
) -> tuple[NDArray[np.int64], NDArray[np.bool_], dict[tuple[int, int], NDArray[np.int64]]]:
    """A tile's cell areas and truncation flags, and its overlaps with higher-index neighbours.

    Only the overlapping bands are read (the tiles' stored edge strips), never whole windows.
    """
    boxes = [(other, box) for other in others if (box := _intersect(tile.window, other.window)) is not None]
    cells, mine = scratch.read_tile_regions(tile.index, [_crop(tile, box) for _, box in boxes])
    table = OwnedCells.from_table(np.zeros((0, 0), np.uint32), cells)
    out: dict[tuple[int, int], NDArray[np.int64]] = {}
    if table.n:
        for (other, box), own in zip(boxes, mine, strict=True):
            theirs = scratch.read_tile_labels(other.index, _crop(other, box), copy=False)
            pairs = pair_overlaps(own, box, theirs, box)
            if pairs.size:
                out[(tile.index, other.index)] = pairs
    return table.area, table.truncated, out


def _task_overlaps_batch(
    scratch: ScratchStore, items: Sequence[tuple[Tile, Sequence[Tile]]]
) -> list[tuple[NDArray[np.int64], NDArray[np.bool_], dict[tuple[int, int], NDArray[np.int64]]]]:
    """:func:`_task_overlaps` for several tiles, in order."""
    return [_task_overlaps(scratch, tile, others) for tile, others in items]


def _n_threads(client: Client) -> int:
    """Worker threads of the cluster (1 when it cannot be asked)."""
    try:
        threads: dict[str, int] = client.nthreads()  # type: ignore[no-untyped-call]
        return int(sum(threads.values())) or 1
    except Exception:  # noqa: BLE001  an odd client: batch as for one thread
        return 1


def _task_claimed(
    scratch: ScratchStore, tile: Tile, higher: Sequence[tuple[Tile, NDArray[np.bool_]]]
) -> NDArray[np.int64]:
    mine = scratch.read_tile_labels(tile.index)
    claims = []
    for other, keep in higher:
        box = _intersect(tile.window, other.window)
        if box is not None:
            claims.append((scratch.read_tile_labels(other.index, _crop(other, box), copy=False), box, keep))
    return claimed_pixels(mine, tile.window, claims)


def _task_assemble(
    scratch: ScratchStore,
    writer: Any,
    block: Window,
    pieces: Sequence[tuple[Tile, NDArray[np.uint32]]],
    levels: int = 0,
) -> None:
    loaded = []
    for tile, relabel in pieces:
        box = _intersect(tile.window, block)
        if box is None:
            continue
        loaded.append((tile.index, scratch.read_tile_labels(tile.index, _crop(tile, box), copy=False), box, relabel))
    (r0, r1), (c0, c1) = block
    out = assemble_block(block, loaded, out=_region_buffer((r1 - r0, c1 - c0)))
    writer.write_region(out, offset=(r0, c0), levels=levels)


_BUFFERS = threading.local()


def _region_buffer(shape: tuple[int, int]) -> NDArray[np.uint32]:
    """A uint32 array of ``shape`` reused by this thread's output blocks (one kept per thread)."""
    buffer: NDArray[np.uint32] | None = getattr(_BUFFERS, "region", None)
    if buffer is None or buffer.size < shape[0] * shape[1]:
        buffer = np.empty(shape[0] * shape[1], dtype=np.uint32)
        _BUFFERS.region = buffer
    return buffer[: shape[0] * shape[1]].reshape(shape)


# --------------------------------------------------------------------------------------------
# the engine
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EngineResult:
    """What a tile-engine run did (see :class:`tiledseg.api.SegmentResult` for users)."""

    labels_url: str
    n_cells: int
    n_tiles: int
    n_truncated: int
    n_seam: int
    n_duplicates: int
    n_disagreements: int
    tiles_computed: int
    tiles_resumed: int
    seconds: float
    stage_seconds: dict[str, float] = field(default_factory=dict)
    fingerprint: str = ""


def _hash(obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _chunk_grid(image: da.Array) -> tuple[int, int]:
    """The regular spatial chunk size of the input array (its first chunk)."""
    return int(image.chunks[1][0]), int(image.chunks[2][0])


def _content_digest(slide: Slide, names: Sequence[str]) -> str:
    """Digest of the smallest pyramid level of the input channels.

    Cheap (a few KiB read) and enough to notice a slide re-written at the same path, so stale
    statistics and tiles are never reused for different pixels.
    """
    index = [slide.channel_names.index(n) for n in names if n in slide.channel_names]
    digest = hashlib.sha256()
    if index:
        small = np.ascontiguousarray(slide.levels[-1][index].compute(scheduler="sync"))
        digest.update(str(small.shape).encode())
        digest.update(small.tobytes())
    return digest.hexdigest()[:32]


def gpu_workers(client: Client) -> list[str]:
    """Addresses of the workers that advertise a ``GPU`` resource."""
    info = client.scheduler_info(n_workers=-1) if _accepts_n_workers(client) else client.scheduler_info()
    return sorted(
        addr for addr, w in info.get("workers", {}).items() if float(w.get("resources", {}).get("GPU", 0)) > 0
    )


def _accepts_n_workers(client: Client) -> bool:
    import inspect

    try:
        return "n_workers" in inspect.signature(client.scheduler_info).parameters
    except (TypeError, ValueError):
        return False


def _requested(statistics_sample: str | float) -> str | float:
    """``statistics_sample`` normalised: ``"auto"``, ``"full"`` or a fraction in ``(0, 1]``.

    Raises
    ------
    ParameterError
        Anything else.
    """
    message = f"`statistics_sample` must be 'auto', 'full' or a fraction in (0, 1], got {statistics_sample!r}"
    if isinstance(statistics_sample, str):
        text = statistics_sample.strip().lower()
        if text == "auto":
            return "auto"
        if text in ("full", "all", "exact"):
            return "full"
        try:
            value = float(text)
        except ValueError:
            raise ParameterError(message) from None
    elif isinstance(statistics_sample, bool):
        raise ParameterError(message)
    else:
        value = float(statistics_sample)
    if not (np.isfinite(value) and 0.0 < value <= 1.0):
        raise ParameterError(message)
    return value


def resolve_statistics(statistics_sample: str | float, shape: tuple[int, int]) -> float:
    """The fraction of a slide that slide-level statistics read (see :func:`segment_slide`).

    Raises
    ------
    ParameterError
        Not ``"auto"``, ``"full"`` or a number in ``(0, 1]``.
    """
    requested = _requested(statistics_sample)
    if requested == "auto":
        return statistics_fraction(shape)
    return 1.0 if requested == "full" else float(requested)


def _block_tile(
    index: int, block: Window, chunks: tuple[int, int], halo: int, shape: tuple[int, int]
) -> Tile:
    """A sampled chunk as a :class:`Tile` for the ``fit`` pass: window = the chunk alone.

    Reading the chunk with a halo would decompress its eight neighbours (nine chunks for one,
    as sampled chunks are rarely adjacent), so the chunk is prepared on its own and only its
    interior -- ``min(halo, chunk / 8)`` px from each side that borders more slide -- enters
    the histograms, where the prepared values equal the tiles' up to filters wider than that.
    """
    (r0, r1), (c0, c1) = block
    margin = max(0, min(int(halo), min(chunks) // 8))
    core = (
        (r0 + (margin if r0 > 0 else 0), r1 - (margin if r1 < shape[0] else 0)),
        (c0 + (margin if c0 > 0 else 0), c1 - (margin if c1 < shape[1] else 0)),
    )
    if core[0][0] >= core[0][1] or core[1][0] >= core[1][1]:
        core = block
    return Tile(index=index, grid=(r0 // chunks[0], c0 // chunks[1]), core=core, window=block)


def _overrides_fit(backend: Any) -> bool:
    fit = getattr(type(backend), "fit", None)
    return not (isinstance(backend, BaseBackend) and fit is BaseBackend.fit)


def _default_tile_size(backend: Any, chunks: tuple[int, int]) -> int:
    wanted = int(getattr(backend, "default_tile_size", 1024) or 1024)
    c = max(chunks)
    return max(1, round(wanted / c)) * c


class _Stage:
    """Progress bookkeeping for one stage."""

    def __init__(self, name: str, total: int, progress: ProgressCallback | None) -> None:
        self.name, self.total, self.done, self.progress = name, total, 0, progress
        self.start = time.perf_counter()
        emit(progress, ProgressEvent(name, 0, total, "start"))

    def advance(self, n: int = 1, **detail: Any) -> None:
        self.done += n
        emit(self.progress, ProgressEvent(self.name, self.done, self.total, "advance", detail))

    def end(self) -> float:
        emit(self.progress, ProgressEvent(self.name, self.done, self.total, "end"))
        return time.perf_counter() - self.start


def _gather_all(
    client: Client,
    futures: Sequence[Future[Any]],
    on_result: Callable[[Any], None] | None = None,
) -> list[Any]:
    """Results in submission order; callback as each finishes."""
    index = {f.key: i for i, f in enumerate(futures)}
    results: list[Any] = [None] * len(futures)
    for fut in as_completed(futures):  # type: ignore[no-untyped-call]
        res = fut.result()
        results[index[fut.key]] = res
        if on_result is not None:
            on_result(res)
    return results


def _merge_parts(*parts: FusedPartial) -> FusedPartial:
    return merge_fused(parts)


def _tree_merge(
    client: Client, leaves: Sequence[Future[Any]], on_leaf: Callable[[Any], None], fan_in: int = 8
) -> FusedPartial:
    """Merge fused partials on the workers, ``fan_in`` at a time, in submission order.

    Partials hold up to 65,536 value counts per input; merging them where they were made keeps
    the client from receiving one per tile. The merge is exact, so the tree shape
    does not change the result.
    """
    level: list[Future[Any]] = list(leaves)
    while len(level) > 1:
        level = [
            client.submit(_merge_parts, *level[i : i + fan_in], pure=False)
            for i in range(0, len(level), fan_in)
        ]
    for fut in as_completed(leaves):  # type: ignore[no-untyped-call]
        fut.result()
        on_leaf(None)
    result: FusedPartial = level[0].result()
    return result


def segment_slide(
    slide: Slide,
    backend: Any,
    *,
    client: Client,
    tile_size: int | None = None,
    halo_px: int | None = None,
    labels_name: str = "cells",
    overwrite: bool = False,
    allow_cpu: bool = False,
    inputs: Mapping[str, Any] | None = None,
    progress: ProgressCallback | None = None,
    batch_size: int | None = None,
    retries: int = 0,
    keep_scratch: bool = False,
    metadata: Mapping[str, Any] | None = None,
    storage_options: dict[str, Any] | None = None,
    statistics_sample: str | float = "auto",
) -> EngineResult:
    """Segment a slide tile by tile on ``client`` and write ``labels/<labels_name>``.

    Parameters
    ----------
    slide : Slide
        The opened slide.
    backend : Backend
        A built backend.
    client : distributed.Client
    tile_size : int, optional
        Core tile edge; a multiple of the slide's chunks. Default: the backend's, rounded to the
        chunks.
    halo_px : int, optional
        Halo in pixels; default ``ceil(backend.halo_um() / slide.pixel_size_um)``.
    labels_name : str
    overwrite : bool
        Replace a complete label image of that name.
    allow_cpu : bool
        Run a GPU backend on CPU workers when no worker advertises a ``GPU`` resource.
    inputs : mapping, optional
        Extra images by key for inputs named ``key:channel``.
    progress : callable, optional
    batch_size : int, optional
        Tiles per task (``segment_batch``); default 4 for GPU backends, else 1.
    retries : int
        Retries of a failed tile task (worker loss) before the tile counts as failed.
    keep_scratch : bool
        Keep the per-tile scratch store after success (default: delete it; flags stay).
    metadata : mapping, optional
        Extra run metadata stored in the label group's ``attrs["tiledseg"]``.
    statistics_sample : {"auto", "full"} or float
        Pixels the slide-level statistics (and the backend's ``fit``) are taken from: ``"full"``
        every pixel (exactly ``statistics_from_array`` of the whole image); a fraction in
        ``(0, 1]`` whole storage chunks spread evenly over the slide
        (:func:`tiledseg.tiling.sample_blocks`); ``"auto"`` (default) every pixel up to 16 Mpx,
        else ``max(1/8, 16 Mpx)`` of the slide (:func:`tiledseg.tiling.statistics_fraction`).
        The choice depends only on the slide, never on tiles or workers, and is stored with
        the statistics in the label metadata (``statistics.extra.sample``).

    Returns
    -------
    EngineResult

    Raises
    ------
    OutputExistsError, ChannelNotFoundError, ParameterError, NoGPUWorkerError, TileFailedError
    """
    t_start = time.perf_counter()
    stage_seconds: dict[str, float] = {}
    if labels_name in slide.labels and not overwrite:
        raise OutputExistsError(
            f"slide {slide.url!r} already has a complete label image {labels_name!r}; pass "
            "overwrite=True (--overwrite) to replace it"
        )
    names = tuple(backend.channels(slide.channel_names))
    image = build_inputs(slide, names, extra=inputs, storage_options=storage_options)
    _, ny, nx = (int(s) for s in image.shape)
    chunks = (int(slide.image.chunksize[1]), int(slide.image.chunksize[2]))
    pixel_size = float(slide.pixel_size_um)
    if tile_size is None:
        tile_size = _default_tile_size(backend, chunks)
    if halo_px is None:
        halo_px = halo_from_physics(max_cell_diameter_um=float(backend.halo_um()), pixel_size_um=pixel_size)
    plan = plan_tiles((ny, nx), tile_size=tile_size, halo=int(halo_px), chunks=chunks)
    requires_gpu = bool(getattr(backend, "requires_gpu", False))
    resources: dict[str, float] | None = None
    if requires_gpu:
        if gpu_workers(client):
            resources = {"GPU": 1}
        elif not allow_cpu:
            raise NoGPUWorkerError(
                f"backend {backend.name!r} needs a GPU but no Dask worker advertises a 'GPU' "
                "resource; start workers with `--resources GPU=1` (or dask-cuda), or pass "
                "allow_cpu=True (--allow-cpu) to run it on CPU"
            )
        else:
            logger.warning("no GPU worker: running GPU backend %s on CPU (allow_cpu)", backend.name)
    if batch_size is None:
        batch_size = 4 if requires_gpu else 1
    if batch_size < 1:
        raise ParameterError(f"`batch_size` must be >= 1, got {batch_size}")

    scratch = ScratchStore.for_labels(slide.url, labels_name, storage_options=storage_options)
    # A slide whose inputs fit the whole-slide budget stays decoded in each worker's reader
    # for the whole run: the statistics passes, the fit pass and the tiles then decompress
    # every chunk once instead of four times.
    grid = _chunk_grid(image)
    n_blocks = -(-ny // grid[0]) * -(-nx // grid[1])
    whole = int(image.nbytes) <= _whole_slide_budget(client)
    reader = _Reader(image, chunks=grid, cache_blocks=n_blocks if whole else 9)
    [reader_f] = client.scatter([reader], broadcast=True, hash=False)  # type: ignore[no-untyped-call]
    [backend_f] = client.scatter([backend], broadcast=True, hash=False)  # type: ignore[no-untyped-call]
    tiles = plan.tiles

    # ---- statistics ------------------------------------------------------------------------
    fraction = resolve_statistics(statistics_sample, (ny, nx))
    # Whole storage chunks, spread evenly: independent of the tile size and the workers.
    stat_windows = sample_blocks((ny, nx), chunks, fraction=fraction) if fraction < 1.0 else []
    sampled = 0 < len(stat_windows) < -(-ny // chunks[0]) * -(-nx // chunks[1])
    if sampled:
        fit_tiles = [_block_tile(i, w, chunks, plan.halo, (ny, nx)) for i, w in enumerate(stat_windows)]
    else:
        stat_windows = [t.core for t in tiles]
        fit_tiles = list(tiles)
    n_stat_pixels = sum((r1 - r0) * (c1 - c0) for (r0, r1), (c0, c1) in stat_windows)
    sample_info = {
        "fraction": round(n_stat_pixels / (ny * nx), 6),
        "requested": _requested(statistics_sample),
        "blocks": len(stat_windows),
        "pixels": n_stat_pixels,
    }
    stats_key = _hash(
        {
            "slide": slide.url,
            "content": _content_digest(slide, names),
            "shape": [ny, nx],
            "inputs": list(names),
            "dtype": str(image.dtype),
            "bins": DEFAULT_BINS,
            # Statistics stored by a build whose one-pass float32 statistics were approximate
            # are not reused.
            "method": "exact" if not sampled else f"sample:{[list(map(list, w)) for w in stat_windows]}",
        }
    )
    previous = scratch.attrs()
    fit_needed = _overrides_fit(backend)
    fit_key = _hash({"stats": stats_key, "backend": backend.name, "params": backend.params(), "halo": plan.halo})
    if previous.get("stats_key") == stats_key and "statistics" in previous:
        stats = ChannelStatistics.from_dict(previous["statistics"])
        logger.info("reusing slide statistics stored by an earlier run")
        stage = _Stage("statistics", 1, progress)
        stage.advance(resumed=True)
    else:
        if sampled:
            logger.info(
                "slide statistics from %d of the slide's chunks (%.1f %% of %d pixels)",
                len(stat_windows), 100.0 * n_stat_pixels / (ny * nx), ny * nx,
            )
        n_win = len(stat_windows)
        if one_pass_supported(image.dtype):
            # One read of every input pixel: exact extremes plus fine histograms.
            stage = _Stage("statistics", n_win, progress)
            leaves = client.map(_task_fused, [reader_f] * n_win, stat_windows, [whole] * n_win, pure=False)
            raw = _tree_merge(client, leaves, lambda _: stage.advance())
            stats = finalize_fused(names, raw, n_pixels=n_stat_pixels)
        else:
            stage = _Stage("statistics", 2 * n_win, progress)
            parts = _gather_all(
                client,
                client.map(_task_minmax, [reader_f] * n_win, stat_windows, [whole] * n_win, pure=False),
                lambda _: stage.advance(),
            )
            minmax = merge_minmax(parts)
            hists = _gather_all(
                client,
                client.map(
                    _task_histogram, [reader_f] * n_win, stat_windows, [minmax] * n_win,
                    [DEFAULT_BINS] * n_win, [whole] * n_win, pure=False,
                ),
                lambda _: stage.advance(),
            )
            stats = finalize_statistics(names, minmax, merge_histograms(hists), n_pixels=n_stat_pixels)
        stats = dataclasses.replace(stats, extra={**dict(stats.extra), "sample": sample_info})
        scratch.update({"stats_key": stats_key, "statistics": stats.to_dict()})
    stage_seconds["statistics"] = stage.end()
    # Statistics hold a few thousand bins per input: send them to each worker once.
    [stats_f] = client.scatter([stats], broadcast=True, hash=False)  # type: ignore[no-untyped-call]

    if not fit_needed:
        fitted: dict[str, float] = {}
    elif previous.get("fit_key") == fit_key and "fitted" in previous and previous.get("stats_key") == stats_key:
        fitted = {str(k): float(v) for k, v in previous["fitted"].items()}
    else:
        stage = _Stage("statistics", len(fit_tiles), progress)
        hists = _gather_all(
            client,
            [
                client.submit(
                    _task_prepared_histogram, reader_f, backend_f, t, pixel_size, stats_f, whole or not sampled,
                    pure=False, resources=resources, retries=retries,
                )
                for t in fit_tiles
            ],
            lambda _: stage.advance(),
        )
        merged = merge_histograms(hists)
        fitted = {str(k): float(v) for k, v in backend.fit(merged, prepared_edges(merged.shape[0], bins=PREPARED_BINS)).items()}
        scratch.update({"fit_key": fit_key, "fitted": fitted})
        stage_seconds["statistics"] += stage.end()

    # ---- tiles -------------------------------------------------------------------------------
    fingerprint = _hash(
        {
            "stats": stats_key,
            "backend": backend.name,
            "params": backend.params(),
            "fitted": fitted,
            "plan": plan.to_dict(),
            "pixel_size_um": pixel_size,
        }
    )
    resumed = scratch.begin(fingerprint=fingerprint)
    # Tiles written in this run are immutable: let readers cache opened arrays under this key.
    scratch = dataclasses.replace(scratch, run=fingerprint + uuid.uuid4().hex)
    scratch.update({"stats_key": stats_key, "statistics": stats.to_dict(), "fit_key": fit_key, "fitted": fitted})
    done = scratch.done_tiles() if resumed else set()
    done &= set(range(len(plan)))
    todo = [t for t in tiles if t.index not in done]
    stage = _Stage("tiles", len(plan), progress)
    for i in sorted(done):
        info = scratch.tile_attrs(i)
        stage.advance(tile=i, window=[list(w) for w in plan[i].window], cells=info.get("cells"),
                      seconds=0.0, resumed=True)
    batches = [todo[i : i + batch_size] for i in range(0, len(todo), batch_size)]
    failures: dict[int, dict[str, Any]] = {}

    def _on_tiles(records: list[dict[str, Any]]) -> None:
        for rec in records:
            if "error" in rec:
                failures[rec["tile"]] = rec
                logger.error("tile %s failed: %s", rec["tile"], rec["error"])
                continue
            stage.advance(tile=rec["tile"], window=[list(w) for w in plan[rec["tile"]].window],
                          cells=rec["cells"], seconds=rec["seconds"], resumed=False)

    batch_of: dict[Any, Sequence[Tile]] = {}
    tile_futures: list[Future[Any]] = []
    for batch in batches:
        fut = client.submit(
            _task_tiles, reader_f, backend_f, batch, plan.shape, pixel_size, stats_f, fitted, scratch, retries,
            plan.halo, pure=False, resources=resources, retries=retries,
        )
        batch_of[fut.key] = batch
        tile_futures.append(fut)
    for fut in as_completed(tile_futures):  # type: ignore[no-untyped-call]
        try:
            records = fut.result()
        except Exception as exc:  # noqa: BLE001  the task was lost (its worker died too often)
            text = "".join(traceback.format_exception(exc))
            records = [{"tile": t.index, "error": exc, "traceback": text} for t in batch_of[fut.key]]
        _on_tiles(records)
    stage_seconds["tiles"] = stage.end()
    if failures:
        first = min(failures)
        rec = failures[first]
        window = plan[first].window_slices
        others = sorted(set(failures) - {first})
        more = f"; {len(others)} other tile(s) failed too: {others[:10]}" if others else ""
        raise TileFailedError(
            f"tile {first} (rows {window[0].start}:{window[0].stop}, cols "
            f"{window[1].start}:{window[1].stop}) failed: {type(rec['error']).__name__}: "
            f"{rec['error']}{more}. The other finished tiles are stored; re-run the same command "
            f"to retry only the failed ones.\n--- worker traceback ---\n{rec['traceback']}",
            tile_index=first,
            window=window,
        ) from rec["error"]

    # ---- stitch ----------------------------------------------------------------------------
    stage = _Stage("stitch", len(plan), progress)
    # Runs of consecutive tiles per task: a few tasks per worker thread instead of one per tile
    # (the per-task round trips cost more than the work), and a worker reuses the windows it
    # decoded for one tile as the next tile's neighbours.
    per_task = max(1, -(-len(plan) // (4 * max(1, _n_threads(client)))))
    runs = [tiles[i : i + per_task] for i in range(0, len(plan), per_task)]
    parts = [
        part
        for batch in _gather_all(
            client,
            [
                client.submit(
                    _task_overlaps_batch, scratch,
                    [(tile, [plan[o] for o in plan.neighbours(tile.index) if o > tile.index]) for tile in run],
                    pure=False, retries=retries,
                )
                for run in runs
            ],
            lambda batch: stage.advance(len(batch)),
        )
        for part in batch
    ]
    areas = {t: part[0] for t, part in enumerate(parts)}
    truncated_of = {t: part[1] for t, part in enumerate(parts)}
    overlaps: dict[tuple[int, int], NDArray[np.int64]] = {}
    for part in parts:
        overlaps.update(part[2])
    res = resolve_conflicts(areas, truncated_of, overlaps)
    keep = {t: k.copy() for t, k in res.keep.items()}
    risky = [t for t in sorted(res.at_risk) if res.at_risk[t].any()]
    if risky:
        left = _gather_all(
            client,
            [
                client.submit(
                    _task_claimed, scratch, plan[t],
                    [(plan[o], res.keep[o]) for o in plan.neighbours(t) if o < t], pure=False,
                )
                for t in risky
            ],
        )
        for t, remaining in zip(risky, left, strict=True):
            keep[t] &= ~(res.at_risk[t] & (remaining == 0))
    maps, counts = assign_ids(keep, n_tiles=len(plan))
    n_cells = int(counts.sum())
    seam = np.concatenate([res.seam[t][keep[t]] for t in range(len(plan))]) if len(plan) else np.zeros(0, bool)
    truncated = np.concatenate([truncated_of[t][keep[t]] for t in range(len(plan))])
    stage_seconds["stitch"] = stage.end()
    n_trunc, n_seam = int(truncated.sum()), int(seam.sum())
    if n_trunc:
        message = (
            f"{n_trunc} cell(s) touch the edge of their tile's window: they may be larger than the "
            f"halo ({plan.halo} px) allows and can be cut; increase halo_um / --halo-um"
        )
        logger.warning(message)
        emit(progress, ProgressEvent("stitch", stage.done, stage.total, "message", {"message": message}))

    # ---- assemble ----------------------------------------------------------------------------
    run_meta: dict[str, Any] = {
        "fingerprint": fingerprint,
        "backend": backend.name,
        "backend_params": backend.params(),
        "inputs": list(names),
        "pixel_size_um": pixel_size,
        "tile_plan": plan.to_dict(),
        "tile_counts": counts.tolist(),
        "n_cells": n_cells,
        "n_truncated": n_trunc,
        "n_seam": n_seam,
        "n_duplicates": res.n_duplicates,
        "n_disagreements": res.n_disagreements,
        "statistics": stats.to_dict(),
        "fitted": fitted,
        **dict(metadata or {}),
    }
    writer = begin_labels(
        slide.url, labels_name, chunks=chunks, overwrite=overwrite, storage_options=storage_options,
        metadata={"fingerprint": fingerprint},
    )
    cy, cx = writer.chunks
    # Regions of 2**k x 2**k output chunks also give whole chunks of pyramid levels 1..k,
    # written from the painted region instead of reading level 0 back in `finalize`: k = 2
    # (4096^2 regions with 1024^2 chunks; fewer tiles decoded twice at region borders, and the
    # pyramid left to `finalize` is 1/16 of level 0) while that leaves at least two regions per
    # worker thread, else k = 1.
    threads = _n_threads(client)
    k = 1
    if -(-ny // (4 * cy)) * -(-nx // (4 * cx)) >= 2 * threads:
        k = 2
    levels = writer.create_levels(k)
    sy, sx = (2**levels * cy, 2**levels * cx)
    blocks = [
        ((r, min(r + sy, ny)), (c, min(c + sx, nx))) for r in range(0, ny, sy) for c in range(0, nx, sx)
    ]
    n_chunks = [-(-(b[0][1] - b[0][0]) // cy) * -(-(b[1][1] - b[1][0]) // cx) for b in blocks]
    stage = _Stage("assemble", sum(n_chunks), progress)
    futures = []
    for block in blocks:
        pieces = [(plan[t], maps[t]) for t in plan.overlapping(block[0], block[1]) if counts[t] > 0]
        futures.append(
            client.submit(_task_assemble, scratch, writer, block, pieces, levels, pure=False, retries=retries)
        )
    chunks_of = {f.key: n for f, n in zip(futures, n_chunks, strict=True)}
    for fut in as_completed(futures):  # type: ignore[no-untyped-call]
        fut.result()
        stage.advance(chunks_of[fut.key])
    scratch.write_flags({"seam": seam, "truncated": truncated}, fingerprint=fingerprint)
    t_pyramid = time.perf_counter()
    url = writer.finalize(metadata=run_meta, levels_written=levels)
    stage_seconds["pyramid"] = time.perf_counter() - t_pyramid
    stage_seconds["assemble"] = stage.end()
    if not keep_scratch:
        scratch.remove_tiles()
    seconds = time.perf_counter() - t_start
    logger.info("segmented %s: %d cells in %d tiles, %.1f s", slide.url, n_cells, len(plan), seconds)
    return EngineResult(
        labels_url=url,
        n_cells=n_cells,
        n_tiles=len(plan),
        n_truncated=n_trunc,
        n_seam=n_seam,
        n_duplicates=res.n_duplicates,
        n_disagreements=res.n_disagreements,
        tiles_computed=len(todo),
        tiles_resumed=len(done),
        seconds=seconds,
        stage_seconds=stage_seconds,
        fingerprint=fingerprint,
    )
