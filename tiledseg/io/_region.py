"""Reading rectangular regions of selected channels of a ``(C, Y, X)`` zarr array, chunk by chunk.

The tile engine reads each tile's window (core plus halo) of the backend's input channels. Going
through a Dask graph per window, then zarr's asynchronous codec pipeline, costs about twice the
decompression itself: the graph is sliced, culled and run, every chunk is decoded into one buffer,
copied into zarr's output, and concatenated again by Dask. :class:`ZarrChannels` reads the same
pixels straight from the store instead:

* :func:`zarr_channels` recognises the array :func:`tiledseg.cluster.build_inputs` makes for slide
  channels -- ``da.stack([from_zarr(z)[k] for k in channels])`` -- and returns the zarr array and
  channel indices behind it. The match is checked by rebuilding that expression and comparing
  Dask's content-derived name with the given array's, so any other array (a transposed or cast
  level, an extra image, a label image) is never mistaken for one; it then gets ``None`` and the
  caller keeps reading through Dask.
* :meth:`ZarrChannels.read` decodes each stored chunk of a local store whose codecs are plain
  little-endian bytes plus Blosc (what :mod:`tiledseg.io._write` writes; zarr v3, or zarr v2 with a
  Blosc compressor and no filters) with numcodecs directly into the output, or into one reused
  buffer for partial and edge chunks. Every other layout or store (remote, sharded, other
  codecs) reads each channel's region through zarr's own selection, which is exact too.

Either way the result equals ``array[channels][:, rows, cols]`` bit for bit.
"""

from __future__ import annotations

import os
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numcodecs.blosc
import numpy as np
import zarr
from numpy.typing import NDArray

from tiledseg.errors import SlideFormatError

__all__ = ["ZarrChannels", "write_region", "zarr_channels"]

Window = tuple[tuple[int, int], tuple[int, int]]


def _from_zarr_layers(array: da.Array) -> list[tuple[str, zarr.Array[Any]]]:
    """``(dask name, zarr array)`` of every ``from_zarr`` input in ``array``'s graph."""
    graph = array.dask
    layers = getattr(graph, "layers", None)
    if layers is None:
        return []
    found = []
    for name, layer in layers.items():
        if not name.startswith("original-from-zarr-"):
            continue
        values = list(layer.values()) if len(layer) == 1 else []
        if values and isinstance(values[0], zarr.Array):
            found.append((name[len("original-"):], values[0]))
    return found


def zarr_channels(array: da.Array) -> ZarrChannels | None:
    """The zarr array and channels behind a ``(C, Y, X)`` stack of stored channels, if it is one.

    Parameters
    ----------
    array : (C, Y, X) dask array
        Typically the engine's input array (:func:`tiledseg.cluster.build_inputs`).

    Returns
    -------
    ZarrChannels or None
        ``None`` unless ``array`` is exactly ``da.stack([from_zarr(z)[k] for k in ks])`` of one
        3-D zarr array ``z`` (checked through Dask's names, which derive from the expression).
    """
    if not isinstance(array, da.Array) or array.ndim != 3:
        return None
    for name, store in _from_zarr_layers(array):
        if store.ndim != 3 or tuple(store.shape[1:]) != tuple(array.shape[1:]) or store.dtype != array.dtype:
            continue
        base = da.Array(array.dask, name, chunks=da.core.normalize_chunks(store.chunks, store.shape), dtype=store.dtype)  # type: ignore[no-untyped-call]
        if tuple(base.chunks[1:]) != tuple(array.chunks[1:]):
            continue
        planes = {base[k].name: k for k in range(store.shape[0])}
        stack_layer = array.dask.layers.get(array.name)
        if stack_layer is None:
            continue
        channels = []
        for i in range(array.shape[0]):
            key = (array.name, i, *([0] * (array.ndim - 1)))
            if key not in stack_layer:
                break
            graph: dict[Any, Any] = {(n, 0, 0): None for n in planes}
            graph[key] = stack_layer[key]
            deps = dask.core.get_dependencies(graph, key)
            hits = [planes[d[0]] for d in deps if isinstance(d, tuple) and d[0] in planes]
            if len(hits) != 1:
                break
            channels.append(hits[0])
        if len(channels) != array.shape[0]:
            continue
        rebuilt = da.stack([base[k] for k in channels])  # type: ignore[no-untyped-call]
        if rebuilt.name == array.name:
            return ZarrChannels(store, tuple(channels))
    return None


def _fast_codec(store: zarr.Array[Any]) -> bool:
    """Whether chunks are little-endian bytes compressed by Blosc only, in a local store."""
    if not hasattr(store.store, "root") or type(store.store).__name__ != "LocalStore":
        return False
    dtype = np.dtype(store.dtype)
    if dtype.kind not in "biuf" or (dtype.itemsize > 1 and dtype.byteorder == ">") or sys.byteorder != "little":
        return False
    meta = store.metadata
    if meta.zarr_format == 3:
        codecs = list(meta.codecs)
        if len(codecs) != 2 or type(codecs[0]).__name__ != "BytesCodec" or type(codecs[1]).__name__ != "BloscCodec":
            return False
        endian = getattr(codecs[0], "endian", None)
        return dtype.itemsize == 1 or getattr(endian, "value", endian) == "little"
    compressor = getattr(meta, "compressor", None)
    return (
        getattr(meta, "filters", None) in (None, ())
        and getattr(meta, "order", "C") == "C"
        and compressor is not None
        and getattr(compressor, "codec_id", None) == "blosc"
    )


@dataclass
class ZarrChannels:
    """Reader of windows of selected channels of a ``(C, Y, X)`` zarr array (picklable).

    Parameters
    ----------
    store : zarr.Array
        ``(C, Y, X)`` array chunked as ``(1, cy, cx)`` or more channels per chunk.
    channels : tuple of int
        Channel indices, in the order the output stacks them (repeats allowed).
    """

    store: zarr.Array[Any]
    channels: tuple[int, ...]
    _fast: bool | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        n = int(self.store.shape[0])
        bad = [k for k in self.channels if not 0 <= k < n]
        if bad:
            raise SlideFormatError(f"channel indices {bad} are outside the array's {n} channels")

    def __getstate__(self) -> dict[str, Any]:
        return {"store": self.store, "channels": self.channels}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.store = state["store"]
        self.channels = tuple(state["channels"])
        self._fast = None

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(len(channels), Y, X)``."""
        return (len(self.channels), int(self.store.shape[1]), int(self.store.shape[2]))

    @property
    def dtype(self) -> np.dtype[Any]:
        return np.dtype(self.store.dtype)

    @property
    def fast(self) -> bool:
        """Whether chunks are decoded directly with numcodecs (local store, bytes + Blosc)."""
        if self._fast is None:
            self._fast = _fast_codec(self.store)
        return self._fast

    def read(self, window: Window) -> NDArray[Any]:
        """``(len(channels), rows, cols)`` pixels of ``window`` (a new C-contiguous array).

        Raises
        ------
        SlideFormatError
            A stored chunk whose decoded size does not match the array's chunk shape.
        """
        (r0, r1), (c0, c1) = window
        ny, nx = int(self.store.shape[1]), int(self.store.shape[2])
        if not (0 <= r0 < r1 <= ny and 0 <= c0 < c1 <= nx):
            raise ValueError(f"window {window} is empty or outside the array's spatial shape {(ny, nx)}")
        out = np.empty((len(self.channels), r1 - r0, c1 - c0), dtype=self.dtype)
        if not self.fast:
            for i, k in enumerate(self.channels):
                out[i] = self.store[k, r0:r1, c0:c1]
            return out
        self._read_chunks(out, window)
        return out

    def _read_chunks(self, out: NDArray[Any], window: Window) -> None:
        (r0, r1), (c0, c1) = window
        kc, cy, cx = (int(c) for c in self.store.chunks)
        ny, nx = int(self.store.shape[1]), int(self.store.shape[2])
        meta = self.store.metadata
        root = Path(str(self.store.store.root)) / self.store.path  # type: ignore[attr-defined]
        fill = np.asarray(meta.fill_value if meta.fill_value is not None else 0).astype(self.dtype)
        buffer = np.empty((kc, cy, cx), dtype=self.dtype)
        for i, k in enumerate(self.channels):
            ck, within = divmod(k, kc)
            for bi in range(r0 // cy, (r1 - 1) // cy + 1):
                for bj in range(c0 // cx, (c1 - 1) // cx + 1):
                    br0, bc0 = bi * cy, bj * cx
                    rr0, rr1 = max(r0, br0), min(r1, br0 + cy, ny)
                    cc0, cc1 = max(c0, bc0), min(c1, bc0 + cx, nx)
                    dest = out[i, rr0 - r0 : rr1 - r0, cc0 - c0 : cc1 - c0]
                    path = root / meta.encode_chunk_key((ck, bi, bj))
                    try:
                        raw = path.read_bytes()
                    except FileNotFoundError:
                        dest[...] = fill
                        continue
                    # Blosc's 16-byte header holds the decoded size at bytes 4-7 (little-endian).
                    nbytes = int.from_bytes(raw[4:8], "little") if len(raw) >= 16 else -1
                    if nbytes != buffer.nbytes:
                        raise SlideFormatError(
                            f"chunk {path} decodes to {nbytes} bytes; expected {buffer.nbytes} for a "
                            f"chunk of shape {buffer.shape} and dtype {buffer.dtype}"
                        )
                    whole = kc == 1 and (rr0, rr1, cc0, cc1) == (br0, br0 + cy, bc0, bc0 + cx)
                    if whole and dest.flags.c_contiguous:
                        numcodecs.blosc.decompress(raw, dest)
                        continue
                    numcodecs.blosc.decompress(raw, buffer)
                    dest[...] = buffer[within, rr0 - br0 : rr1 - br0, cc0 - bc0 : cc1 - bc0]



def write_region(store: zarr.Array[Any], block: NDArray[Any], offset: tuple[int, int]) -> None:
    """``store[r:r+h, c:c+w] = block`` for a 2-D array, encoding whole chunks directly when possible.

    For a local store whose chunks are little-endian bytes plus Blosc (see
    :func:`_fast_codec`) and a region made of whole chunks (edge chunks may be cut by the
    array's edge), each chunk is padded with the fill value to the full chunk shape as zarr
    stores it, compressed with numcodecs' Blosc with the array's own settings and written
    under a temporary name, then renamed over the chunk key; a chunk that is all fill value is
    deleted instead (zarr's default of not storing empty chunks). This skips zarr's
    asynchronous codec pipeline, which costs more than the compression itself for label
    chunks. Any other store, codec or region goes through ``store[...] = block``.

    Parameters
    ----------
    store : zarr.Array
        A 2-D array.
    block : (h, w) ndarray
        Cast to the array's dtype.
    offset : (int, int)
        ``(row, col)`` of the block's top-left pixel.
    """
    r, c = int(offset[0]), int(offset[1])
    data = np.asarray(block).astype(store.dtype, copy=False)
    h, w = data.shape
    ny, nx = (int(s) for s in store.shape)
    cy, cx = (int(s) for s in store.chunks)
    aligned = r % cy == 0 and c % cx == 0 and (h % cy == 0 or r + h == ny) and (w % cx == 0 or c + w == nx)
    if store.ndim != 2 or not aligned or not _fast_codec(store):
        store[r : r + h, c : c + w] = data
        return
    meta = store.metadata
    fill = np.asarray(meta.fill_value if meta.fill_value is not None else 0).astype(store.dtype)
    blosc: Any = list(meta.codecs)[1] if meta.zarr_format == 3 else meta.compressor
    if meta.zarr_format == 3:
        cname = str(getattr(blosc.cname, "value", blosc.cname))
        shuffle = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}[str(getattr(blosc.shuffle, "value", blosc.shuffle))]
        clevel, blocksize = int(blosc.clevel), int(blosc.blocksize)
    else:
        cname, clevel, shuffle, blocksize = str(blosc.cname), int(blosc.clevel), int(blosc.shuffle), int(blosc.blocksize)
    root = Path(str(store.store.root)) / store.path  # type: ignore[attr-defined]
    chunk = np.empty((cy, cx), dtype=store.dtype)
    for bi in range(r // cy, -(-(r + h) // cy)):
        for bj in range(c // cx, -(-(c + w) // cx)):
            part = data[bi * cy - r : (bi + 1) * cy - r, bj * cx - c : (bj + 1) * cx - c]
            path = root / meta.encode_chunk_key((bi, bj))
            # count_nonzero reads the uint32 view directly; any() would cast it to bool first.
            if not (np.count_nonzero(part) if fill == 0 else np.any(part != fill)):
                path.unlink(missing_ok=True)
                continue
            if part.shape == chunk.shape:
                source = np.ascontiguousarray(part)
            else:  # an edge chunk, stored padded to the chunk shape
                chunk[...] = fill
                chunk[: part.shape[0], : part.shape[1]] = part
                source = chunk
            encoded = numcodecs.blosc.compress(source, cname.encode(), clevel, shuffle, blocksize)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.partial")
            tmp.write_bytes(encoded)
            os.replace(tmp, path)
