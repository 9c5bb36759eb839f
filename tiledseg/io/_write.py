"""Streaming writes of dask arrays into zarr v3 arrays, plus the pyramid built from them.

Arrays are written with :func:`dask.array.store` into zarr arrays created here, with dask chunks
aligned to the zarr chunks so that every task writes whole chunks (no two tasks touch one chunk,
no lock needed) and memory is bounded by a few chunks per worker thread. Each pyramid level is
computed from the *stored* previous level (read back lazily), never from the source graph.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import dask.array as da
import numpy as np
import zarr
from numcodecs import Blosc
from zarr.codecs import BloscCodec

from tiledseg.io._pyramid import level_shapes, pyramid_level

__all__ = [
    "DEFAULT_CHUNK",
    "compressors_for",
    "create_level",
    "n_chunks",
    "pyramid_chunk_count",
    "store_array",
    "write_pyramid",
]

#: Called with the number of chunks just written.
ChunkCallback = Callable[[int], None]

#: With progress reporting, a level is written in about this many row slabs.
_SLABS = 20

logger = logging.getLogger(__name__)

#: Default spatial chunk edge (rows = cols) of stored arrays.
DEFAULT_CHUNK = 1024


def compressors_for(dtype: np.dtype[Any], *, zarr_format: int = 3, labels: bool = False) -> tuple[Any]:
    """The codec tiledseg writes with: Blosc-LZ4, level 5, byte shuffle for images.

    Chosen over Zstd in ``benchmarks/bench_codec.py`` (see ``benchmarks/results/io.md``): the
    fastest to read (reads dominate a run) and to write, at a ~1.6x lower ratio than Zstd-1.
    Label images (``labels=True``) skip the shuffle: runs of equal uint32 IDs compress as well
    or better unshuffled, and encode ~1.3x faster (ratio 6.9 vs 6.2 on a synthetic 4096^2
    segmentation, ``benchmarks/results/engine.md``). Zarr v2 (NGFF 0.4) gets the same codec
    through numcodecs.
    """
    if zarr_format == 2:
        return (Blosc(cname="lz4", clevel=5, shuffle=Blosc.NOSHUFFLE if labels else Blosc.SHUFFLE),)
    return (
        BloscCodec(
            cname="lz4", clevel=5, shuffle="noshuffle" if labels else "shuffle",
            typesize=int(np.dtype(dtype).itemsize),
        ),
    )


def create_level(
    group: zarr.Group,
    path: str,
    *,
    shape: Sequence[int],
    chunks: Sequence[int],
    dtype: np.dtype[Any],
    dimension_names: Sequence[str],
    labels: bool = False,
) -> zarr.Array[Any]:
    """Create an empty (fill 0) array ``path`` in ``group`` (zarr v3, or v2 in a v2 group).

    ``labels`` selects the label-image codec (see :func:`compressors_for`).
    """
    clipped = tuple(max(1, min(int(c), int(s))) for c, s in zip(chunks, shape, strict=True))
    zarr_format = group.metadata.zarr_format
    extra: dict[str, Any] = (
        {"dimension_names": tuple(dimension_names)}
        if zarr_format == 3
        # NGFF 0.4 requires "/" as the chunk key separator.
        else {"chunk_key_encoding": {"name": "v2", "separator": "/"}}
    )
    return group.create_array(
        path,
        shape=tuple(int(s) for s in shape),
        chunks=clipped,
        dtype=dtype,
        compressors=compressors_for(dtype, zarr_format=zarr_format, labels=labels),
        fill_value=0,
        overwrite=True,
        **extra,
    )


def n_chunks(shape: Sequence[int], chunks: Sequence[int]) -> int:
    """Number of chunks of an array of ``shape`` chunked ``chunks``."""
    return math.prod(-(-int(s) // int(c)) for s, c in zip(shape, chunks, strict=True))


def pyramid_chunk_count(shape: Sequence[int], chunks: Sequence[int]) -> int:
    """Chunks written for level 0 and every pyramid level of an array ``shape``."""
    spatial = (int(chunks[-2]), int(chunks[-1]))
    clipped = [min(int(c), int(s)) for c, s in zip(chunks, shape, strict=True)]
    total = 0
    for rows, cols in level_shapes((int(shape[-2]), int(shape[-1])), spatial):
        level_shape = [*shape[:-2], rows, cols]
        total += n_chunks(level_shape, [*clipped[:-2], min(spatial[0], rows), min(spatial[1], cols)])
    return total


def store_array(
    data: da.Array, target: zarr.Array[Any], *, on_chunks: ChunkCallback | None = None
) -> None:
    """Compute ``data`` chunk by chunk into ``target`` (same shape), chunks aligned to the store.

    With ``on_chunks`` the array is stored in about 20 row slabs, one after the other, and
    ``on_chunks(n)`` is called after each with the number of chunks it held; without it, in one
    pass.
    """
    aligned = data.rechunk(target.chunks)  # type: ignore[no-untyped-call]
    if on_chunks is None:
        da.store(aligned, target, lock=False, compute=True)  # type: ignore[arg-type]
        return
    row_chunk = int(target.chunks[-2])
    n_rows = -(-int(target.shape[-2]) // row_chunk)
    per_slab = max(1, -(-n_rows // _SLABS)) * row_chunk
    lead = (slice(None),) * (aligned.ndim - 2)
    for r0 in range(0, int(target.shape[-2]), per_slab):
        r1 = min(r0 + per_slab, int(target.shape[-2]))
        region = (*lead, slice(r0, r1), slice(None))
        slab = aligned[region]
        da.store(slab, target, regions=region, lock=False, compute=True)  # type: ignore[arg-type]
        on_chunks(n_chunks(slab.shape, target.chunks))


def write_pyramid(
    group: zarr.Group,
    level0: zarr.Array[Any],
    *,
    labels: bool,
    dimension_names: Sequence[str],
    on_chunks: ChunkCallback | None = None,
    first_level: int = 0,
) -> int:
    """Write levels ``"1"``, ``"2"``, ... from the stored level 0; return the number of levels.

    Spatial chunks of every level equal those of level 0 (clipped to the level's shape). With
    ``first_level=k`` the given array is level ``k`` (already written) and the levels after it
    are ``"k+1"``, ...; the count returned includes the ``k`` levels before it.
    """
    spatial_chunks = (int(level0.chunks[-2]), int(level0.chunks[-1]))
    shapes = level_shapes(tuple(level0.shape[-2:]), spatial_chunks)  # type: ignore[arg-type]
    previous: zarr.Array[Any] = level0
    for level, shape in enumerate(shapes[1:], start=first_level + 1):
        lazy = pyramid_level(da.from_zarr(previous), chunks=spatial_chunks, labels=labels)  # type: ignore[no-untyped-call]
        assert lazy.shape[-2:] == shape
        target = create_level(
            group,
            str(level),
            shape=lazy.shape,
            chunks=tuple(level0.chunks[:-2]) + spatial_chunks,
            dtype=lazy.dtype,
            dimension_names=dimension_names,
            labels=labels,
        )
        store_array(lazy, target, on_chunks=on_chunks)
        logger.debug("wrote pyramid level %s %s", level, shape)
        previous = target
    return len(shapes) + first_level
