"""Label images under ``<slide>/labels/<name>``: reading, writing, and lazy writing by the engine.

A label image is a ``(Y, X)`` uint32 NGFF 0.5 multiscale (0 = background) with ``image-label``
metadata and its own pyramid built by 2x2 *mode* (never interpolation). Run metadata (parameters,
statistics, tile plan, per-tile counts) lives in ``attrs["tiledseg"]`` next to the completion
marker ``attrs["tiledseg"]["status"]``. The ``labels`` group lists a label image only once it is
complete.

Two ways to write:

* :func:`write_labels` takes an array (numpy or lazy dask) and does everything.
* :func:`begin_labels` returns a picklable :class:`LabelsWriter` for an engine that writes the
  final image itself: ``writer.write_region(block, offset=(r, c))`` from any worker (regions
  aligned to ``writer.chunks`` so no two writers share a chunk) or ``writer.store(dask_array)``,
  then ``writer.finalize(metadata=...)``, which builds the pyramid and marks the group complete
  last. An engine that writes regions of ``2**k x writer.chunks`` can have the first ``k``
  pyramid levels written with them (``writer.create_levels(k)``, ``write_region(..., levels=k)``,
  ``finalize(..., levels_written=k)``): the 2x2 modes of a freshly painted region cost far less
  than reading level 0 back for the pyramid.

Each process keeps the zarr arrays a writer opened (keyed by the writer's token, never pickled),
so the many ``write_region`` calls of one run do not re-open the group and array each time.
"""

from __future__ import annotations

import copy
import logging
import os
import threading
import uuid
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import dask.array as da
import numpy as np
import zarr

from tiledseg.errors import ParameterError, SlideFormatError, SlideNotFoundError
from tiledseg.io._ngff import label_attrs, labels_group_attrs, ngff_attrs, read_multiscale
from tiledseg.io._pyramid import downsample_labels_block, level_shapes
from tiledseg.io._region import write_region
from tiledseg.io._slide import slide_spatial_info
from tiledseg.io._store import (
    STATUS_COMPLETE,
    check_complete,
    is_complete,
    join_url,
    normalise_url,
    open_group,
    prepare_output_group,
)
from tiledseg.io._write import create_level, store_array, write_pyramid

__all__ = ["Labels", "LabelsWriter", "begin_labels", "open_labels", "write_labels"]

logger = logging.getLogger(__name__)

LABEL_DTYPE = np.dtype(np.uint32)

_RESUME_LABELS = (
    "Re-run the command that wrote it (e.g. `tiledseg segment`): finished tiles are reused and "
    "the incomplete label image is replaced."
)


@dataclass(frozen=True)
class Labels:
    """An opened label image.

    Attributes
    ----------
    data : (Y, X) dask array of uint32
        Level 0; 0 is background.
    levels : tuple of (Y_l, X_l) dask arrays
        The pyramid; ``levels[0] is data``.
    attrs : dict
        A copy of the label group's attributes (run metadata under ``attrs["tiledseg"]``).
    complete : bool
        Whether the completion marker says ``"complete"`` (only ``False`` when opened with
        ``allow_incomplete=True``).
    name : str
    url : str
        URL of the label group.
    """

    data: da.Array
    levels: tuple[da.Array, ...]
    attrs: dict[str, Any]
    complete: bool
    name: str = ""
    url: str = ""

    @property
    def metadata(self) -> dict[str, Any]:
        """``attrs["tiledseg"]``: run metadata and the status."""
        meta = self.attrs.get("tiledseg", {})
        return dict(meta) if isinstance(meta, Mapping) else {}


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not name or "/" in name or name in (".", ".."):
        raise ParameterError(f"label image `name` must be a non-empty name without '/', got {name!r}")
    return name


def _stored_as_uint32(lazy: da.Array, *, url: str, path: str) -> da.Array:
    """A stored label level as uint32: unsigned up to 32 bits cast; others checked lazily.

    Float or boolean masks are refused at once. Signed or 64-bit integers (other tools write
    int32 / int64) are cast block by block as they are computed, each block checked to hold
    values in ``[0, 2**32 - 1]``, so a negative or too large ID raises instead of wrapping round
    to a plausible-looking cell ID.
    """
    dtype = np.dtype(lazy.dtype)
    if dtype.kind not in "iu":
        raise SlideFormatError(
            f"label image {url!r} (level {path!r}) must hold integer cell IDs (uint32, 0 = "
            f"background); it is stored as {dtype}"
        )
    if dtype == LABEL_DTYPE:
        return lazy
    if dtype.kind == "u" and dtype.itemsize < LABEL_DTYPE.itemsize:
        cast: da.Array = lazy.astype(LABEL_DTYPE)  # type: ignore[no-untyped-call]
        return cast
    checked: da.Array = da.map_blocks(  # type: ignore[no-untyped-call]
        _checked_stored_uint32, lazy, dtype=LABEL_DTYPE, url=url, path=path, stored=str(dtype)
    )
    return checked


def _checked_stored_uint32(
    block: np.ndarray[Any, Any], *, url: str, path: str, stored: str
) -> np.ndarray[Any, Any]:
    if block.size:
        low, high = block.min(), block.max()
        if low < 0 or high > np.iinfo(LABEL_DTYPE).max:
            raise SlideFormatError(
                f"label image {url!r} (level {path!r}, stored as {stored}) holds values in "
                f"[{low}, {high}]; cell IDs must be non-negative and fit uint32 "
                f"[0, {np.iinfo(LABEL_DTYPE).max}] (negative values are not cell IDs)"
            )
    return block.astype(LABEL_DTYPE)


def open_labels(
    url: str | os.PathLike[str],
    name: str = "cells",
    *,
    storage_options: dict[str, Any] | None = None,
    allow_incomplete: bool = False,
) -> Labels:
    """Open the label image ``labels/<name>`` of a slide lazily.

    Parameters
    ----------
    url : str or path-like
        The slide (image group) URL.
    name : str
        Label image name.
    storage_options : dict, optional
    allow_incomplete : bool
        Return an incomplete label image (``complete=False``) instead of raising.

    Returns
    -------
    Labels

    Raises
    ------
    SlideNotFoundError
        No such slide or label image.
    IncompleteOutputError
        The label image was not finished.
    SlideFormatError
        The label image is not stored as integers (a float or boolean mask). Signed or 64-bit
        integer IDs are read as uint32 and checked lazily: computing a block that holds a
        negative value (or one beyond uint32) raises this error naming the label image.
    """
    norm = normalise_url(url)
    _check_name(name)
    group_url = join_url(norm, "labels", name)
    try:
        group = open_group(group_url, storage_options=storage_options, what="label image")
    except SlideNotFoundError:
        open_group(norm, storage_options=storage_options, what="slide")
        raise SlideNotFoundError(
            f"slide {norm!r} has no label image {name!r} (expected {group_url!r})"
        ) from None
    complete = is_complete(group)
    if not allow_incomplete:
        check_complete(group, group_url, what="label image", how_to_resume=_RESUME_LABELS)
    attrs = copy.deepcopy(group.attrs.asdict())
    levels: list[da.Array] = []
    if "ome" in attrs or "multiscales" in attrs:
        info = read_multiscale(attrs, url=group_url)
        paths: Sequence[str] = info.paths
        axes: Sequence[str] = info.axes
    else:  # an incomplete group written by begin_labels before finalize
        paths, axes = ["0"], ["y", "x"]
    for path in paths:
        try:
            arr = group[path]
        except KeyError as exc:
            raise SlideFormatError(f"{group_url!r}: level {path!r} is listed but missing") from exc
        assert isinstance(arr, zarr.Array)
        lazy: da.Array = da.from_zarr(arr)  # type: ignore[no-untyped-call]
        index = tuple(slice(None) if a in ("y", "x") else 0 for a in axes)
        if any(a not in ("y", "x") and s != 1 for a, s in zip(axes, lazy.shape, strict=True)):
            raise SlideFormatError(
                f"{group_url!r}: label image has axes {list(axes)} and shape {lazy.shape}; "
                "expected (y, x) (other axes of size 1)"
            )
        levels.append(_stored_as_uint32(lazy[index], url=group_url, path=path))
    return Labels(
        data=levels[0], levels=tuple(levels), attrs=attrs, complete=complete, name=name, url=group_url
    )


#: Opened arrays per process: (writer token, level path) -> array. Bounded; never pickled.
_OPENED: OrderedDict[tuple[str, str], zarr.Array[Any]] = OrderedDict()
_OPENED_LOCK = threading.Lock()
_OPENED_MAX = 16


def _new_token() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class LabelsWriter:
    """Handle on a label image being written; picklable, so engine tasks can write regions.

    Created by :func:`begin_labels`. Call :meth:`write_region` / :meth:`store`, then
    :meth:`finalize` once everything is written.
    """

    slide_url: str
    name: str
    shape: tuple[int, int]
    chunks: tuple[int, int]
    pixel_size_um: float
    storage_options: dict[str, Any] | None = field(default=None, compare=False)
    token: str = field(default_factory=_new_token, compare=False)

    @property
    def url(self) -> str:
        """URL of the label group ``<slide>/labels/<name>``."""
        return join_url(self.slide_url, "labels", self.name)

    def _group(self, mode: str = "r+") -> zarr.Group:
        return open_group(self.url, mode=mode, storage_options=self.storage_options, what="label image")

    def _level(self, path: str) -> zarr.Array[Any]:
        key = (self.token, path)
        with _OPENED_LOCK:
            hit = _OPENED.get(key)
            if hit is not None:
                _OPENED.move_to_end(key)
                return hit
        arr = self._group()[path]
        assert isinstance(arr, zarr.Array)
        with _OPENED_LOCK:
            _OPENED[key] = arr
            while len(_OPENED) > _OPENED_MAX:
                _OPENED.popitem(last=False)
        return arr

    def array(self) -> zarr.Array[Any]:
        """The level-0 zarr array (``(Y, X)`` uint32), opened for writing (cached per process)."""
        return self._level("0")

    def create_levels(self, levels: int) -> int:
        """Create empty pyramid levels ``"1"`` .. ``"k"`` for :meth:`write_region` with ``levels=k``.

        Parameters
        ----------
        levels : int
            Levels wanted; fewer are created when the image's pyramid is shorter.

        Returns
        -------
        int
            ``k``, the number of levels created (0 when the image has no pyramid).
        """
        shapes = level_shapes(self.shape, self.chunks)
        k = max(0, min(int(levels), len(shapes) - 1))
        for i in range(1, k + 1):
            create_level(self._group(), str(i), shape=shapes[i], chunks=self.chunks, dtype=LABEL_DTYPE,
                         dimension_names=("y", "x"), labels=True)
            with _OPENED_LOCK:
                _OPENED.pop((self.token, str(i)), None)
        return k

    def write_region(
        self, block: np.ndarray[Any, Any], *, offset: tuple[int, int], levels: int = 0
    ) -> None:
        """Write ``block`` (``(h, w)`` integer) at ``(row, col) = offset`` of level 0.

        Regions should start on chunk boundaries and cover whole chunks (except at the image
        edge) when several writers work at once.

        With ``levels=k`` the block's successive 2x2 modes also
        go to pyramid levels ``1..k`` (created by :meth:`create_levels`); the region must then
        start on a multiple of ``2**k`` times the chunks and span that or reach the image edge,
        so it covers whole chunks of every level it writes.
        """
        arr = np.asarray(block)
        if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.integer):
            raise SlideFormatError(
                f"label block for {self.url!r} must be a 2-D integer array, got {arr.dtype} {arr.shape}"
            )
        r, c = int(offset[0]), int(offset[1])
        if r < 0 or c < 0 or r + arr.shape[0] > self.shape[0] or c + arr.shape[1] > self.shape[1]:
            raise ParameterError(
                f"label block {arr.shape} at offset {(r, c)} exceeds the label image shape {self.shape}"
            )
        k = int(levels)
        cy, cx = self.chunks
        h, w = arr.shape
        f = 2**k
        if k and (
            r % (f * cy) or c % (f * cx)
            or (h != f * cy and r + h != self.shape[0]) or (w != f * cx and c + w != self.shape[1])
        ):
            raise ParameterError(
                f"label block {arr.shape} at offset {(r, c)} must start on and span {f} times the "
                f"chunks {self.chunks} (or reach the image edge) to write pyramid levels 1..{k}"
            )
        arr = arr.astype(LABEL_DTYPE, copy=False)
        write_region(self.array(), arr, (r, c))
        for i in range(1, k + 1):
            arr = downsample_labels_block(arr)
            write_region(self._level(str(i)), arr, (r // 2**i, c // 2**i))

    def store(self, labels: np.ndarray[Any, Any] | da.Array) -> None:
        """Stream a whole ``(Y, X)`` label array into level 0, chunk by chunk."""
        lazy = _as_label_array(labels, shape=self.shape, url=self.url)
        store_array(lazy, self.array())

    def finalize(
        self, *, metadata: Mapping[str, Any] | None = None, levels_written: int = 0
    ) -> str:
        """Build the pyramid, write the NGFF metadata, list the image, and mark it complete.

        Parameters
        ----------
        metadata : mapping, optional
            Merged into ``attrs["tiledseg"]`` (JSON-serialisable).
        levels_written : int
            Levels ``1..k`` were written whole by ``write_region(..., levels=k)``: build the
            coarser levels from level ``k``.

        Returns
        -------
        str
            The label group URL.
        """
        group = self._group()
        start = str(min(int(levels_written), len(level_shapes(self.shape, self.chunks)) - 1))
        base = group[start]
        assert isinstance(base, zarr.Array)
        n_levels = write_pyramid(
            group, base, labels=True, dimension_names=("y", "x"), first_level=int(start)
        )
        stored = group.attrs.get("tiledseg", {})
        meta: dict[str, Any] = dict(stored) if isinstance(stored, Mapping) else {}
        meta.update(dict(metadata or {}))
        meta["status"] = STATUS_COMPLETE
        version = "0.5" if group.metadata.zarr_format == 3 else "0.4"
        group.update_attributes(
            {
                **label_attrs(
                    n_levels, pixel_size_um=self.pixel_size_um, name=self.name, version=version
                ),
                "tiledseg": meta,
            }
        )
        labels_group = open_group(
            join_url(self.slide_url, "labels"), mode="r+", storage_options=self.storage_options
        )
        _, ngff = ngff_attrs(labels_group.attrs.asdict())
        names = [str(n) for n in ngff.get("labels", [])]
        if self.name not in names:
            names.append(self.name)
        labels_group.update_attributes(labels_group_attrs(names, version=version))
        return self.url


def _as_label_array(
    labels: np.ndarray[Any, Any] | da.Array, *, shape: tuple[int, int], url: str
) -> da.Array:
    lazy = labels if isinstance(labels, da.Array) else da.asarray(np.asarray(labels))  # type: ignore[no-untyped-call]
    if lazy.ndim != 2:
        raise SlideFormatError(f"`labels` for {url!r} must be 2-D (Y, X), got shape {tuple(lazy.shape)}")
    if tuple(lazy.shape) != tuple(shape):
        raise SlideFormatError(
            f"`labels` (shape {tuple(lazy.shape)}) must match the slide's spatial shape {tuple(shape)}"
        )
    if not (np.issubdtype(lazy.dtype, np.integer) or lazy.dtype == np.bool_):
        raise SlideFormatError(f"`labels` for {url!r} must be an integer array, got dtype {lazy.dtype}")
    if lazy.dtype == LABEL_DTYPE:
        return lazy
    if lazy.dtype in (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.bool_)):
        return lazy.astype(LABEL_DTYPE)  # type: ignore[no-any-return]
    # Wider or signed integers are checked block by block as they stream (no extra pass).
    return da.map_blocks(_checked_uint32, lazy, dtype=LABEL_DTYPE, url=url)  # type: ignore[no-any-return,no-untyped-call]


def _checked_uint32(block: np.ndarray[Any, Any], *, url: str) -> np.ndarray[Any, Any]:
    if block.size and (block.min() < 0 or block.max() > np.iinfo(LABEL_DTYPE).max):
        raise SlideFormatError(
            f"`labels` for {url!r} hold values in [{block.min()}, {block.max()}]; label values "
            f"must fit uint32 [0, {np.iinfo(LABEL_DTYPE).max}]"
        )
    return block.astype(LABEL_DTYPE)


def begin_labels(
    url: str | os.PathLike[str],
    name: str = "cells",
    *,
    chunks: Sequence[int] | int | None = None,
    metadata: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    storage_options: dict[str, Any] | None = None,
) -> LabelsWriter:
    """Create ``labels/<name>`` (marked incomplete, level 0 filled with 0) and return its writer.

    Parameters
    ----------
    url : str or path-like
        The slide URL. Labels are written in the slide's format: NGFF 0.5 (zarr v3) or, for
        a zarr v2 slide, NGFF 0.4.
    name : str
    chunks : (2,) tuple of int or int, optional
        Spatial chunks; default: the slide's level-0 chunks.
    metadata : mapping, optional
        Stored under ``attrs["tiledseg"]`` now (with ``status="incomplete"``).
    overwrite : bool
        Replace a complete label image of that name.
    storage_options : dict, optional

    Raises
    ------
    OutputExistsError
        A complete label image ``name`` exists and ``overwrite`` is false.
    SlideFormatError
        ``labels`` exists under the slide but is not a group.
    """
    norm = normalise_url(url)
    _check_name(name)
    slide_group = open_group(norm, mode="r", storage_options=storage_options, what="slide")
    check_complete(slide_group, norm, what="slide", how_to_resume="Convert it again before segmenting.")
    zarr_format = slide_group.metadata.zarr_format
    version = "0.5" if zarr_format == 3 else "0.4"
    shape, slide_chunks, pixel_size = slide_spatial_info(norm, storage_options=storage_options)
    if chunks is None:
        chunk_yx = slide_chunks
    elif isinstance(chunks, (int, np.integer)):
        chunk_yx = (int(chunks), int(chunks))
    else:
        chunk_yx = tuple(int(c) for c in chunks)  # type: ignore[assignment]
    if len(chunk_yx) != 2 or min(chunk_yx) < 1:
        raise ParameterError(f"label `chunks` must be 2 positive integers, got {chunks!r}")
    chunk_yx = (min(chunk_yx[0], shape[0]), min(chunk_yx[1], shape[1]))
    labels_url = join_url(norm, "labels")
    try:
        sub = slide_group["labels"]
        if not isinstance(sub, zarr.Group):
            raise SlideFormatError(f"{labels_url!r} exists but is not a zarr group")
    except KeyError:
        zarr.open_group(
            labels_url,
            mode="w",
            zarr_format=zarr_format,
            attributes=labels_group_attrs([], version=version),
            storage_options=None if "://" not in labels_url else storage_options,
        )
    group = prepare_output_group(
        join_url(labels_url, name),
        overwrite=overwrite,
        attributes={"tiledseg": dict(metadata or {})},
        storage_options=storage_options,
        what="label image",
        zarr_format=zarr_format,
    )
    create_level(group, "0", shape=shape, chunks=chunk_yx, dtype=LABEL_DTYPE, dimension_names=("y", "x"), labels=True)
    return LabelsWriter(
        slide_url=norm,
        name=name,
        shape=shape,
        chunks=chunk_yx,
        pixel_size_um=pixel_size,
        storage_options=storage_options,
    )


def write_labels(
    url: str | os.PathLike[str],
    name: str,
    labels: np.ndarray[Any, Any] | da.Array,
    *,
    metadata: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    chunks: Sequence[int] | int | None = None,
    storage_options: dict[str, Any] | None = None,
) -> str:
    """Write a ``(Y, X)`` label image to ``<url>/labels/<name>`` with its pyramid.

    Parameters
    ----------
    url : str or path-like
        The slide URL.
    name : str
        Label image name, e.g. ``"cells"`` or ``"nuclei"``.
    labels : (Y, X) integer ndarray or dask array
        Stored as uint32 (0 = background); dask arrays are streamed chunk by chunk.
    metadata : mapping, optional
        Run metadata stored under ``attrs["tiledseg"]`` with the status.
    overwrite : bool
        Replace a complete label image of the same name.
    chunks : (2,) tuple of int or int, optional
        Spatial chunks; default: the slide's.
    storage_options : dict, optional

    Returns
    -------
    str
        URL of the label group.

    Raises
    ------
    SlideFormatError
        ``labels`` is not 2-D integer or does not match the slide's (Y, X).
    OutputExistsError
        A complete label image ``name`` exists and ``overwrite`` is false.
    """
    norm = normalise_url(url)
    shape, _, _ = slide_spatial_info(norm, storage_options=storage_options)
    lazy = _as_label_array(labels, shape=shape, url=join_url(norm, "labels", str(name)))
    writer = begin_labels(
        norm, name, chunks=chunks, metadata=metadata, overwrite=overwrite, storage_options=storage_options
    )
    writer.store(lazy)
    return writer.finalize()
