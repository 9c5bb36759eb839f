"""The tile engine's scratch store and the per-cell stitching flags.

While ``tiledseg segment`` runs, every finished tile's owned-cell window and cell table are
written to a scratch store next to the label image, so memory stays bounded (nothing is held
for the whole slide) and a re-run of the same command skips finished tiles (resume). Layout,
inside the slide's group::

    <slide>/.tiledseg/<labels name>/          attrs: run fingerprint, statistics, fitted
        tiles/<index>.tile                    one file per finished tile: a JSON header (window
                                              shape, cell count, edge widths, attrs), the
                                              (Y_w, X_w) uint32 owned-cell window (local IDs
                                              1..n, Blosc-LZ4), the (n, 8) float64 table
                                              (stitch.OwnedCells.table), then the window's edge
                                              strips (top, bottom, left, right; Blosc-LZ4)
        flags/seam, flags/truncated           (N,) bool per cell, index cell_id - 1

A tile file is written under a temporary name and renamed when complete (a single PUT on
object stores), so a tile interrupted half-way is never seen and is recomputed. One plain file
per tile instead of a zarr group with two arrays: a tile is written once and read about seven
times (its own stitching, its neighbours', the output blocks it overlaps), and zarr's metadata
documents and async round trips cost more than the data (write 22 -> 4 ms, read 4 -> 2.5 ms
for a 1098^2 window). The engine also stores the window's four edge bands that neighbouring
windows overlap (``write_tile(edges=...)``, after the table): stitching reads only those, and
an output block that only touches a tile's margin decodes one strip, not the whole window.
When the run's fingerprint (backend,
parameters, tile plan, statistics) changes, the stored tiles are discarded. After a successful
run the tiles are deleted and only the flags stay; :func:`read_cell_flags` gives them to the
measurement stage.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import fsspec
import numpy as np
import zarr
import zarr.errors
from numpy.typing import NDArray

from tiledseg.errors import ParameterError, SlideFormatError
from tiledseg.io._store import join_url, normalise_url
from tiledseg.io._write import compressors_for

__all__ = ["ScratchStore", "read_cell_flags", "scratch_url"]

logger = logging.getLogger(__name__)

SCRATCH_DIR = ".tiledseg"
FLAG_NAMES = ("seam", "truncated")


def scratch_url(slide_url: str, labels_name: str) -> str:
    """URL of the scratch group of label image ``labels_name`` of a slide."""
    return join_url(normalise_url(slide_url), SCRATCH_DIR, labels_name)


def _opts(url: str, storage_options: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if "://" not in url else storage_options


def _open(url: str, mode: str, storage_options: dict[str, Any] | None) -> zarr.Group:
    return zarr.open_group(url, mode=mode, zarr_format=3, storage_options=_opts(url, storage_options))  # type: ignore[arg-type]


@dataclass(frozen=True)
class ScratchStore:
    """Picklable handle on a scratch group; engine tasks write tiles through it.

    Parameters
    ----------
    url : str
        The scratch group URL (see :func:`scratch_url`).
    storage_options : dict, optional
        fsspec options for remote URLs.
    """

    url: str
    storage_options: dict[str, Any] | None = field(default=None, compare=False)
    run: str = ""

    @classmethod
    def for_labels(
        cls, slide_url: str, labels_name: str, *, storage_options: dict[str, Any] | None = None
    ) -> ScratchStore:
        """The scratch store of ``labels/<labels_name>`` of a slide."""
        return cls(scratch_url(slide_url, labels_name), storage_options)

    def _root(self, mode: str = "r") -> zarr.Group:
        return _open(self.url, mode, self.storage_options)

    def attrs(self) -> dict[str, Any]:
        """The root attributes (``{}`` when nothing is stored yet)."""
        try:
            return dict(self._root("r").attrs.asdict())
        except (FileNotFoundError, KeyError, zarr.errors.GroupNotFoundError):
            return {}

    def begin(self, *, fingerprint: str, reset: bool = False) -> bool:
        """Open the store for a run; discard stored tiles of a different run (or all with ``reset``).

        Returns
        -------
        bool
            Whether stored tiles were kept for resuming.
        """
        previous = self.attrs()
        keep = not reset and previous.get("fingerprint") == fingerprint
        if keep:
            return True
        if previous:
            logger.info("discarding scratch tiles of a different run in %s", self.url)
        self.remove_tiles()
        _open(self.url, "a", self.storage_options).update_attributes({"fingerprint": fingerprint})
        return False

    def update(self, attrs: dict[str, Any]) -> None:
        """Merge ``attrs`` into the root attributes."""
        self._root("a").update_attributes(attrs)

    def _fs(self) -> tuple[Any, str]:
        """``(filesystem, path)`` of the store (plain local paths use the local filesystem)."""
        if "://" not in self.url:
            return fsspec.filesystem("file"), self.url
        fs, path = fsspec.core.url_to_fs(self.url, **(self.storage_options or {}))
        return fs, str(path)

    def _tile_path(self, fs_root: str, index: int) -> str:
        return f"{fs_root.rstrip('/')}/tiles/{int(index)}{_TILE_SUFFIX}"

    def done_tiles(self) -> set[int]:
        """Indices of the tiles whose results are completely stored."""
        fs, root = self._fs()
        try:
            names = fs.ls(f"{root.rstrip('/')}/tiles", detail=False)
        except FileNotFoundError:
            return set()
        done = set()
        for name in names:
            base = str(name).rstrip("/").rsplit("/", 1)[-1]
            stem = base.removesuffix(_TILE_SUFFIX)
            if base.endswith(_TILE_SUFFIX) and stem.isdigit():
                done.add(int(stem))
        return done

    def write_tile(
        self,
        index: int,
        labels: NDArray[np.uint32],
        table: NDArray[np.float64],
        *,
        attrs: dict[str, Any] | None = None,
        edges: tuple[int, int, int, int] | None = None,
    ) -> None:
        """Store one tile's owned-cell window and cell table; visible only once complete.

        ``edges`` = ``(top, bottom, left, right)`` widths in pixels of the window's edge strips
        to store separately as well (the bands its neighbours' windows overlap): a read of a
        region inside one of them then decodes that strip instead of the whole window.
        """
        payload = _encode_tile(labels, table, attrs or {}, edges)
        fs, root = self._fs()
        path = self._tile_path(root, index)
        tmp = f"{path}.{uuid.uuid4().hex}.partial"
        fs.makedirs(f"{root.rstrip('/')}/tiles", exist_ok=True)
        fs.pipe_file(tmp, payload)
        fs.mv(tmp, path)
        _forget(self.url, index)

    def _read(self, index: int) -> tuple[dict[str, Any], bytes, int]:
        fs, root = self._fs()
        data = fs.cat_file(self._tile_path(root, index))
        header, offset = _decode_header(data, self._tile_path(root, index))
        return header, data, offset

    def tile_attrs(self, index: int) -> dict[str, Any]:
        """Attributes stored with tile ``index`` (reads the file's header only)."""
        fs, root = self._fs()
        path = self._tile_path(root, index)
        with fs.open(path, "rb") as f:
            head = f.read(len(_MAGIC) + 8)
            size = int.from_bytes(head[len(_MAGIC) :], "little") if head.startswith(_MAGIC) else 0
            header, _ = _decode_header(head + f.read(size), path)
        return dict(header["attrs"])

    def _window(self, index: int, read: tuple[dict[str, Any], bytes, int] | None = None) -> NDArray[np.uint32]:
        """The decoded window of tile ``index`` (from the run's cache, ``read``, or the store)."""
        hit = _cached(self.url, self.run, index, "window") if self.run else None
        if hit is not None:
            return hit.array
        header, data, offset = read if read is not None else self._read(index)
        window = _decode_labels(header, data, offset)
        if self.run:
            _remember(self.url, self.run, index, "window", _Piece(window, 0, 0))
        return window

    def _piece(
        self, index: int, rows: slice, cols: slice, read: tuple[dict[str, Any], bytes, int] | None = None
    ) -> NDArray[np.uint32]:
        """Window rows/cols of tile ``index``, decoding only a stored edge strip when one holds them."""
        parts = ("window", *_EDGES)
        for part in parts if self.run else ():
            hit = _cached(self.url, self.run, index, part)
            if hit is not None and hit.holds(rows, cols):
                return hit.view(rows, cols)
        header, data, offset = read if read is not None else self._read(index)
        shape = (int(header["shape"][0]), int(header["shape"][1]))
        rows, cols = slice(*rows.indices(shape[0])[:2]), slice(*cols.indices(shape[1])[:2])
        for k, width in enumerate(header.get("edges") or ()):
            box = _edge_box(_EDGES[k], int(width), shape)
            if box is not None and _holds(box, rows, cols):
                strip = _Piece(_decode_edge(header, data, offset, k), box[0], box[1])
                if self.run:
                    _remember(self.url, self.run, index, _EDGES[k], strip)
                return strip.view(rows, cols)
        return self._window(index, (header, data, offset))[rows, cols]

    def read_tile_labels(
        self, index: int, region: tuple[slice, slice] | None = None, *, copy: bool = True
    ) -> NDArray[np.uint32]:
        """Owned-cell window of tile ``index`` (or a region of it, window-relative slices).

        With ``copy=False`` the result may be a read-only view of the run's cached window
        (cheaper for callers that only read it). A region inside one of the edge strips stored
        with the tile (``write_tile(edges=...)``) decodes that strip only.
        """
        if region is None or any(s.step not in (None, 1) for s in region):
            window = self._window(index)
            view = window if region is None else window[region]
        else:
            view = self._piece(index, *region)
        return view if not copy else np.array(view, dtype=np.uint32)

    def read_tile_table(self, index: int) -> NDArray[np.float64]:
        """``(n, 8)`` cell table of tile ``index``."""
        return _decode_table(*self._read(index))

    def read_tile_regions(
        self, index: int, regions: Sequence[tuple[slice, slice]]
    ) -> tuple[NDArray[np.float64], list[NDArray[np.uint32]]]:
        """Cell table and read-only views of ``regions`` (window-relative) of tile ``index``, one file read.

        Each region decodes the smallest stored part holding it (an edge strip or the window),
        as :meth:`read_tile_labels` with ``copy=False`` does.
        """
        read = self._read(index)
        return _decode_table(*read), [self._piece(index, rows, cols, read) for rows, cols in regions]

    def remove_tiles(self) -> None:
        """Delete the stored tiles (after a successful run)."""
        fs, root = self._fs()
        tiles = f"{root.rstrip('/')}/tiles"
        if "://" not in self.url:
            shutil.rmtree(tiles, ignore_errors=True)
            fs.makedirs(tiles, exist_ok=True)
        elif fs.exists(tiles):
            fs.rm(tiles, recursive=True)
        _forget(self.url)

    def write_flags(self, flags: dict[str, NDArray[np.bool_]], *, fingerprint: str) -> None:
        """Store per-cell flags (index ``cell_id - 1``) for the run ``fingerprint``."""
        group = _open(join_url(self.url, "flags"), "w", self.storage_options)
        for name, values in flags.items():
            data = np.ascontiguousarray(values, dtype=bool)
            arr = group.create_array(name, shape=data.shape, chunks=(max(min(data.size, 1 << 20), 1),), dtype=bool)
            if data.size:
                arr[...] = data
        group.update_attributes({"fingerprint": fingerprint, "n_cells": len(next(iter(flags.values()), [])), "complete": True})


_TILE_SUFFIX = ".tile"
_MAGIC = b"TILEDSEG-TILE-1\n"
_LABEL_CODEC = compressors_for(np.dtype(np.uint32), zarr_format=2, labels=True)[0]  # the label images' codec


#: Edge strips a tile file may hold besides its window, in the order of ``edges``.
_EDGES = ("top", "bottom", "left", "right")


def _holds(box: tuple[int, int, int, int], rows: slice, cols: slice) -> bool:
    """Whether the window region ``rows, cols`` (explicit bounds) lies in ``box`` = (r0, c0, h, w)."""
    r0, c0, h, w = box
    if None in (rows.start, rows.stop, cols.start, cols.stop):
        return False
    return bool(r0 <= rows.start <= rows.stop <= r0 + h and c0 <= cols.start <= cols.stop <= c0 + w)


@dataclass(frozen=True)
class _Piece:
    """A decoded part of a tile window: ``array`` starts at window row ``r0``, column ``c0``."""

    array: NDArray[np.uint32]
    r0: int
    c0: int

    def holds(self, rows: slice, cols: slice) -> bool:
        h, w = self.array.shape
        return _holds((self.r0, self.c0, int(h), int(w)), rows, cols)

    def view(self, rows: slice, cols: slice) -> NDArray[np.uint32]:
        return self.array[rows.start - self.r0 : rows.stop - self.r0, cols.start - self.c0 : cols.stop - self.c0]


def _edge_box(part: str, width: int, shape: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """``(r0, c0, h, w)`` of edge strip ``part`` of ``width`` pixels in a window of ``shape``."""
    h, w = shape
    width = min(width, h if part in ("top", "bottom") else w)
    if width <= 0:
        return None
    return {
        "top": (0, 0, width, w), "bottom": (h - width, 0, width, w),
        "left": (0, 0, h, width), "right": (0, w - width, h, width),
    }[part]


def _edge(lab: NDArray[np.uint32], part: str, width: int) -> NDArray[np.uint32]:
    box = _edge_box(part, width, (int(lab.shape[0]), int(lab.shape[1])))
    if box is None:
        return lab[:0, :0]
    r0, c0, h, w = box
    return lab[r0 : r0 + h, c0 : c0 + w]


def _encode_tile(
    labels: NDArray[np.uint32],
    table: NDArray[np.float64],
    attrs: dict[str, Any],
    edges: tuple[int, int, int, int] | None = None,
) -> bytes:
    lab = np.ascontiguousarray(labels, dtype="<u4")
    if lab.ndim != 2:
        raise ParameterError(f"tile labels must be 2-D (Y, X), got shape {lab.shape}")
    tab = np.ascontiguousarray(table, dtype="<f8").reshape(-1, 8)
    blob = bytes(_LABEL_CODEC.encode(lab))
    fields: dict[str, Any] = {"shape": list(lab.shape), "n": int(tab.shape[0]), "labels_bytes": len(blob)}
    strips: list[bytes] = []
    if edges is not None:
        if len(edges) != 4 or any(int(e) < 0 for e in edges):
            raise ParameterError(f"`edges` must be four widths >= 0 (top, bottom, left, right), got {edges!r}")
        widths = [int(e) for e in edges]
        strips = [
            bytes(_LABEL_CODEC.encode(np.ascontiguousarray(_edge(lab, part, width)))) if _edge(lab, part, width).size
            else b""
            for part, width in zip(_EDGES, widths, strict=True)
        ]
        fields["edges"] = widths
        fields["edge_bytes"] = [len(b) for b in strips]
    header = json.dumps({**fields, "attrs": attrs}, default=str).encode()
    return b"".join([_MAGIC, len(header).to_bytes(8, "little"), header, blob, tab.tobytes(), *strips])


def _decode_header(data: bytes, path: str) -> tuple[dict[str, Any], int]:
    if not data.startswith(_MAGIC):
        raise SlideFormatError(f"scratch tile {path!r} is not a tiledseg tile file")
    start = len(_MAGIC)
    size = int.from_bytes(data[start : start + 8], "little")
    header: dict[str, Any] = json.loads(data[start + 8 : start + 8 + size])
    return header, start + 8 + size


def _decode_table(header: dict[str, Any], data: bytes, offset: int) -> NDArray[np.float64]:
    start = offset + int(header["labels_bytes"])
    n = int(header["n"])
    return np.frombuffer(data, dtype="<f8", count=n * 8, offset=start).reshape(n, 8).astype(np.float64)


def _decode_labels(header: dict[str, Any], data: bytes, offset: int) -> NDArray[np.uint32]:
    rows, cols = (int(v) for v in header["shape"])
    blob = data[offset : offset + int(header["labels_bytes"])]
    out = np.empty((rows, cols), dtype="<u4")
    _LABEL_CODEC.decode(blob, out=out)
    return out.astype(np.uint32, copy=False)


def _decode_edge(header: dict[str, Any], data: bytes, offset: int, k: int) -> NDArray[np.uint32]:
    """Edge strip ``k`` (see :data:`_EDGES`) stored after the table."""
    shape = (int(header["shape"][0]), int(header["shape"][1]))
    box = _edge_box(_EDGES[k], int(header["edges"][k]), shape)
    assert box is not None  # only called for stored strips
    sizes = [int(b) for b in header["edge_bytes"]]
    start = offset + int(header["labels_bytes"]) + int(header["n"]) * 64 + sum(sizes[:k])
    out = np.empty(box[2:], dtype="<u4")
    _LABEL_CODEC.decode(data[start : start + sizes[k]], out=out)
    return out.astype(np.uint32, copy=False)


# Within one run a stored tile never changes, and a worker often reads the same window again
# (for its own stitching and its neighbours', then for each output block it overlaps): keep a
# few decoded windows and edge strips per process. Bounded in bytes, so worker memory does not
# grow with the slide.
_WINDOWS: OrderedDict[tuple[str, str, int, str], _Piece] = OrderedDict()
_WINDOWS_BYTES = 96 * 2**20
_WINDOWS_LOCK = threading.Lock()


def _cached(url: str, run: str, index: int, part: str) -> _Piece | None:
    with _WINDOWS_LOCK:
        hit = _WINDOWS.get((url, run, index, part))
        if hit is not None:
            _WINDOWS.move_to_end((url, run, index, part))
        return hit


def _remember(url: str, run: str, index: int, part: str, piece: _Piece) -> None:
    piece.array.setflags(write=False)
    with _WINDOWS_LOCK:
        _WINDOWS[(url, run, index, part)] = piece
        total = sum(p.array.nbytes for p in _WINDOWS.values())
        while total > _WINDOWS_BYTES and len(_WINDOWS) > 1:
            _, old = _WINDOWS.popitem(last=False)
            total -= old.array.nbytes


def _forget(url: str, index: int | None = None) -> None:
    with _WINDOWS_LOCK:
        for key in [k for k in _WINDOWS if k[0] == url and (index is None or k[2] == index)]:
            del _WINDOWS[key]


def read_cell_flags(
    slide_url: str,
    labels_name: str = "cells",
    *,
    storage_options: dict[str, Any] | None = None,
) -> dict[str, NDArray[np.bool_]] | None:
    """Per-cell stitching flags of a label image written by ``tiledseg segment``.

    Parameters
    ----------
    slide_url : str
        The slide URL.
    labels_name : str
        The label image name.
    storage_options : dict, optional

    Returns
    -------
    dict of str -> (N,) ndarray of bool, or None
        ``{"seam": ..., "truncated": ...}`` indexed by ``cell_id - 1``; ``None`` when the label
        image was not written by the tile engine, or the flags belong to another run than the
        stored label image.
    """
    base = scratch_url(slide_url, labels_name)
    try:
        group = _open(join_url(base, "flags"), "r", storage_options)
    except (FileNotFoundError, KeyError, zarr.errors.GroupNotFoundError):
        return None
    if group.attrs.get("complete") is not True:
        return None
    try:
        labels_group = _open(join_url(normalise_url(slide_url), "labels", labels_name), "r", storage_options)
        meta = labels_group.attrs.get("tiledseg", {})
    except (FileNotFoundError, KeyError, zarr.errors.GroupNotFoundError):
        return None
    if not isinstance(meta, dict) or meta.get("fingerprint") != group.attrs.get("fingerprint"):
        return None
    out: dict[str, NDArray[np.bool_]] = {}
    for name in FLAG_NAMES:
        arr = group[name]
        assert isinstance(arr, zarr.Array)
        out[name] = np.asarray(arr[...], dtype=bool)
    return out
