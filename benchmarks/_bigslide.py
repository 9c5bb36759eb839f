"""Large benchmark slides made fast by tiling a smaller synthetic slide periodically.

:func:`tiledseg.datasets.write_synthetic_slide` renders every pixel (about 1.4 CPU s per Mpx at
8 channels), so a 1-Gpx slide takes most of half an hour on two cores just to make.
:func:`write_periodic_slide` instead repeats an existing OME-Zarr slide ``(ry, rx)`` times: an
8192² slide x (4, 4) is a 32768² (1.07-Gpx) slide with the same channels, panel, pixel size,
chunking and codec. Where the chunk grid of a level tiles evenly, the *stored* chunk bytes are
copied (each source chunk read once, written ``ry * rx`` times, never decoded); elsewhere the
level is decoded, tiled with :func:`dask.array.tile` and re-encoded chunk by chunk.

Every pyramid level of the result equals what :func:`tiledseg.io.write_slide` would write for the
tiled level 0: level ``k`` of the tiling is the tiling of source level ``k`` as long as every
finer source level has even rows and columns (2x2 means then never straddle a seam); from the
first level where that fails, and for the extra levels a bigger slide has, the coarse levels are
rebuilt by tiledseg's own pyramid writer (:func:`tiledseg.io._write.write_pyramid`). The group
is marked incomplete first and complete last (:mod:`tiledseg.io`), so an interrupted build is
refused by :func:`tiledseg.io.open_slide` and replaced by the next build.

Cells cut by the source's edges meet foreign cells at the seams; that changes nothing for
throughput and memory benchmarks, which is all these slides are for (no ground truth is
written).
"""

from __future__ import annotations

import asyncio
import copy
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import dask.array as da
import zarr
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from tiledseg.errors import ParameterError, SlideFormatError
from tiledseg.io import open_slide
from tiledseg.io._ngff import NGFF_VERSION, image_attrs, read_multiscale
from tiledseg.io._pyramid import level_shapes
from tiledseg.io._slide import _channel_windows
from tiledseg.io._store import STATUS_COMPLETE, normalise_url, open_group, prepare_output_group
from tiledseg.io._write import create_level, store_array, write_pyramid

__all__ = ["write_periodic_slide"]

logger = logging.getLogger(__name__)

#: Chunk copies in flight at once (each holds one compressed chunk in memory).
_CONCURRENCY = 32

#: Keys of the NGFF metadata, rebuilt for the new slide rather than copied.
_NGFF_KEYS = frozenset({"ome", "multiscales", "omero", "labels", "bioformats2raw.layout"})

_DIMS = ("c", "y", "x")


def _check_repeats(repeats: Sequence[int]) -> tuple[int, int]:
    values = tuple(repeats)
    if len(values) != 2 or not all(isinstance(r, int) and not isinstance(r, bool) and r >= 1 for r in values):
        raise ParameterError(f"`repeats` must be two positive integers (rows, cols), got {repeats!r}")
    return int(values[0]), int(values[1])


def _layout(meta: Any) -> dict[str, Any]:
    """What decides the stored bytes of one chunk: everything but shape and attributes."""
    out = dict(meta.to_dict())
    for key in ("shape", "attributes", "dimension_names"):
        out.pop(key, None)
    return out


def _aligned(src: zarr.Array[Any], dst: zarr.Array[Any], repeats: tuple[int, int]) -> bool:
    """Whether chunk ``(c, i, j)`` of ``dst`` is byte for byte chunk ``(c, i % ni, j % nj)`` of ``src``."""
    if _layout(src.metadata) != _layout(dst.metadata) or src.chunks != dst.chunks:
        return False
    # An axis tiled more than once must end on a chunk boundary, or chunks straddle the seams.
    return all(
        r == 1 or int(size) % int(chunk) == 0
        for r, size, chunk in zip(repeats, src.shape[-2:], src.chunks[-2:], strict=True)
    )


def _chunk_key(arr: zarr.Array[Any], coords: tuple[int, ...]) -> str:
    prefix = arr.store_path.path
    key = arr.metadata.encode_chunk_key(coords)
    return f"{prefix}/{key}" if prefix else key


async def _copy_chunks(src: zarr.Array[Any], dst: zarr.Array[Any], repeats: tuple[int, int]) -> int:
    """Copy every stored chunk of ``src`` to its ``ry * rx`` places in ``dst``; return the copies."""
    src_store, dst_store = src.store_path.store, dst.store_path.store
    prototype = default_buffer_prototype()
    grid = tuple(-(-int(s) // int(c)) for s, c in zip(src.shape, src.chunks, strict=True))
    ry, rx = repeats
    limit = asyncio.Semaphore(_CONCURRENCY)

    async def one(coords: tuple[int, int, int]) -> int:
        async with limit:
            data = await src_store.get(_chunk_key(src, coords), prototype=prototype)
            if data is None:  # never written: the fill value, which dst shares
                return 0
            c, i, j = coords
            for a in range(ry):
                for b in range(rx):
                    target = (c, i + a * grid[1], j + b * grid[2])
                    await dst_store.set(_chunk_key(dst, target), data)
            return ry * rx

    jobs = [one((c, i, j)) for c in range(grid[0]) for i in range(grid[1]) for j in range(grid[2])]
    return sum(await asyncio.gather(*jobs))


def _consistent_levels(shapes: Sequence[tuple[int, int]], repeats: tuple[int, int]) -> int:
    """How many leading source levels tile into levels of the tiled slide's pyramid.

    Level ``k`` of the tiling equals the 2x2-mean pyramid of the tiled level 0 when every finer
    level has an even size along each axis that is repeated.
    """
    count = 1
    for shape in shapes[:-1]:
        if any(r > 1 and size % 2 for r, size in zip(repeats, shape, strict=True)):
            break
        count += 1
    return count


def write_periodic_slide(
    source_url: str | os.PathLike[str],
    dest_url: str | os.PathLike[str],
    *,
    repeats: Sequence[int],
    overwrite: bool = False,
    metadata: Mapping[str, Any] | None = None,
) -> str:
    """Write ``dest_url`` as the ``repeats``-fold periodic tiling of the slide at ``source_url``.

    Parameters
    ----------
    source_url : str or path-like
        A complete ``(c, y, x)`` OME-Zarr slide, e.g. from
        :func:`tiledseg.datasets.write_synthetic_slide`.
    dest_url : str or path-like
        Output path; gets shape ``(C, Y * ry, X * rx)``, the source's channel names, panel,
        pixel size, chunks, codec and NGFF version.
    repeats : (ry, rx) sequence of int
        How often the source is repeated along rows and columns (each >= 1).
    overwrite : bool
        Replace a complete slide at ``dest_url`` (an incomplete leftover is always replaced).
    metadata : mapping, optional
        JSON-serialisable extras added under ``attrs["tiledseg"]`` next to the source's and a
        ``"periodic"`` entry ``{"source", "source_shape", "repeats"}``.

    Returns
    -------
    str
        The normalised URL written.

    Raises
    ------
    IncompleteOutputError
        The source slide's write did not finish.
    SlideNotFoundError
        Nothing is stored at ``source_url``.
    SlideFormatError
        The source's levels are not 3-D ``(c, y, x)`` arrays.
    ParameterError
        Bad ``repeats``, or ``dest_url`` is the source.
    OutputExistsError
        A complete slide exists at ``dest_url`` and ``overwrite`` is false.
    """
    reps = _check_repeats(repeats)
    slide = open_slide(source_url)  # refuses missing and incomplete sources with a clear error
    src_url, out_url = slide.url, normalise_url(dest_url)
    if src_url == out_url:
        raise ParameterError(f"`dest_url` {out_url!r} must differ from `source_url`")
    src_group = open_group(src_url, what="slide")
    info = read_multiscale(slide.attrs, url=src_url)
    if tuple(info.axes) != _DIMS:
        raise SlideFormatError(
            f"source slide {src_url!r} has axes {list(info.axes)}; write_periodic_slide needs (c, y, x)"
        )
    src_levels: list[zarr.Array[Any]] = []
    for path in info.paths:
        arr = src_group[path]
        assert isinstance(arr, zarr.Array)  # open_slide checked the levels
        src_levels.append(arr)
    level0 = src_levels[0]
    src_shapes = [(int(a.shape[1]), int(a.shape[2])) for a in src_levels]
    expected = level_shapes(src_shapes[0], (int(level0.chunks[1]), int(level0.chunks[2])))
    if src_shapes != expected:
        raise SlideFormatError(
            f"source slide {src_url!r} has level shapes {src_shapes}; expected the 2x pyramid {expected}"
        )
    ry, rx = reps
    zarr_format = int(src_group.metadata.zarr_format)
    version = "0.4" if zarr_format == 2 else NGFF_VERSION  # the NGFF version each zarr format holds
    out_shape = (int(level0.shape[0]), src_shapes[0][0] * ry, src_shapes[0][1] * rx)
    chunks = tuple(int(c) for c in level0.chunks)
    out_shapes = level_shapes(out_shape[1:], chunks[1:])  # type: ignore[arg-type]
    n_tiled = _consistent_levels(src_shapes, reps)

    meta: dict[str, Any] = copy.deepcopy(dict(slide.attrs.get("tiledseg") or {}))
    meta.pop("status", None)
    meta.update(metadata or {})
    meta["periodic"] = {"source": src_url, "source_shape": list(level0.shape), "repeats": [ry, rx]}
    extra = {k: copy.deepcopy(v) for k, v in slide.attrs.items() if k not in _NGFF_KEYS | {"tiledseg"}}
    group = prepare_output_group(
        out_url,
        overwrite=overwrite,
        attributes={**extra, "tiledseg": meta},
        what="slide",
        zarr_format=zarr_format,
    )
    previous: zarr.Array[Any] | None = None
    for level in range(n_tiled):
        src = src_levels[level]
        rows, cols = out_shapes[level]
        target = create_level(
            group, str(level), shape=(out_shape[0], rows, cols), chunks=chunks, dtype=src.dtype,
            dimension_names=_DIMS,
        )
        if _aligned(src, target, reps):
            copies = sync(_copy_chunks(src, target, reps))
            logger.info("level %s %s: copied %s stored chunks", level, (rows, cols), copies)
        else:
            tiled = da.tile(da.from_zarr(src), (1, ry, rx))  # type: ignore[no-untyped-call]
            store_array(tiled, target)
            logger.info("level %s %s: decoded, tiled and re-encoded", level, (rows, cols))
        previous = target
    assert previous is not None
    n_levels = write_pyramid(
        group, previous, labels=False, dimension_names=_DIMS, first_level=n_tiled - 1
    )
    assert n_levels == len(out_shapes)
    smallest = group[str(n_levels - 1)]
    assert isinstance(smallest, zarr.Array)
    name = os.path.basename(out_url.rstrip("/")).removesuffix(".zarr").removesuffix(".ome")
    ngff = image_attrs(
        n_levels,
        pixel_size_um=slide.pixel_size_um,
        name=name,
        channel_names=slide.channel_names,
        windows=_channel_windows(smallest),
        version=version,
    )
    meta["status"] = STATUS_COMPLETE
    # As write_slide: NGFF metadata and completion marker in one attribute write, last.
    group.update_attributes({**ngff, "tiledseg": meta})
    return out_url
