"""Compiled region kernels of the classical backends: seeded watershed and hole filling.

Each function here computes what a scikit-image / SciPy / NumPy call of the classical pipeline
computes, in one compiled pass (numba) without the padding, type conversions and copies of the
library call, and falls back to that library call when numba is unavailable:

* :func:`seeded_watershed` -- ``skimage.segmentation.watershed(landscape, markers, mask=mask)``
  (4-connected), the same priority-flood: a heap ordered by elevation, then by entry time, every
  pixel labelled when it enters the heap. Identical labels wherever no two pixels reached from
  the markers tie in elevation; ties between marker pixels may be broken differently.
* :func:`fill_small_holes` -- ``skimage.morphology.remove_small_holes(mask, max_size=...)``
  (4-connected holes of at most ``max_size`` pixels filled), identical.

Like every kernel module, no dask, zarr or I/O here.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["fill_small_holes", "seeded_watershed"]

logger = logging.getLogger(__name__)

_KERNELS: dict[str, Any] = {}


def _kernels() -> dict[str, Any] | None:
    """The compiled kernels by name, or None when numba is unavailable (compiled lazily, cached)."""
    if "ready" not in _KERNELS:
        _KERNELS["ready"] = None
        try:
            _KERNELS.update(_compile())
            _KERNELS["ready"] = True
        except Exception as exc:  # noqa: BLE001  numba missing or failing: library fallbacks
            logger.debug("compiled region kernels unavailable (%s); using scikit-image", exc)
    return _KERNELS if _KERNELS["ready"] else None


def _compile() -> dict[str, Any]:
    import numba

    @numba.njit(cache=True, nogil=True)  # type: ignore[misc,unused-ignore]
    def push(value: Any, age: Any, where: Any, size: int, v: Any, a: int, p: int) -> int:
        # Sift (v, a, p) up from the end of the heap of ``size`` items; returns the new size.
        i = size
        while i > 0:
            parent = (i - 1) >> 1
            if v < value[parent] or (v == value[parent] and a < age[parent]):
                value[i] = value[parent]
                age[i] = age[parent]
                where[i] = where[parent]
                i = parent
            else:
                break
        value[i] = v
        age[i] = a
        where[i] = p
        return size + 1

    @numba.njit(cache=True, nogil=True)  # type: ignore[misc,unused-ignore]
    def heap_flood(height: Any, labels: Any, mask: Any, width: int) -> None:
        # Binary heap of (elevation, entry time, pixel): the ordering of scikit-image's
        # ``watershed_raveled``; markers enter at time 0 in raster order, every other pixel at
        # the next time when a popped neighbour labels it.
        n = height.size
        value = np.empty(n, dtype=np.float64)
        age = np.empty(n, dtype=np.int64)
        where = np.empty(n, dtype=np.int64)
        size = 0
        clock = 0
        for p in range(n):
            if labels[p] == 0:
                continue
            if not mask[p]:
                labels[p] = 0  # markers outside the mask are dropped, as in scikit-image
                continue
        for p in range(n):
            if labels[p] == 0:
                continue
            size = push(value, age, where, size, np.float64(height[p]), 0, p)
        while size > 0:
            p = where[0]
            # pop: move the last item down from the root
            size -= 1
            lv = value[size]
            la = age[size]
            lw = where[size]
            i = 0
            while True:
                child = 2 * i + 1
                if child >= size:
                    break
                other = child + 1
                if other < size and (
                    value[other] < value[child]
                    or (value[other] == value[child] and age[other] < age[child])
                ):
                    child = other
                if value[child] < lv or (value[child] == lv and age[child] < la):
                    value[i] = value[child]
                    age[i] = age[child]
                    where[i] = where[child]
                    i = child
                else:
                    break
            if size > 0:
                value[i] = lv
                age[i] = la
                where[i] = lw
            label = labels[p]
            col = p % width
            for k in range(4):
                # up, left, right, down: scikit-image's neighbour order
                if k == 0:
                    if p < width:
                        continue
                    q = p - width
                elif k == 1:
                    if col == 0:
                        continue
                    q = p - 1
                elif k == 2:
                    if col == width - 1:
                        continue
                    q = p + 1
                else:
                    q = p + width
                    if q >= n:
                        continue
                if not mask[q] or labels[q] != 0:
                    continue
                labels[q] = label
                clock += 1
                size = push(value, age, where, size, np.float64(height[q]), clock, q)

    @numba.njit(cache=True, nogil=True)  # type: ignore[misc,unused-ignore]
    def fill_holes(mask: Any, max_size: int, out: Any) -> None:
        # Label the 4-connected components of ~mask by a depth-first walk; fill the small ones.
        h, w = mask.shape
        seen = np.zeros((h, w), dtype=np.bool_)
        stack = np.empty(h * w, dtype=np.int64)
        members = np.empty(h * w, dtype=np.int64)
        for r0 in range(h):
            for c0 in range(w):
                if mask[r0, c0] or seen[r0, c0]:
                    continue
                seen[r0, c0] = True
                stack[0] = r0 * w + c0
                top = 1
                count = 0
                while top > 0:
                    top -= 1
                    p = stack[top]
                    members[count] = p
                    count += 1
                    r = p // w
                    c = p - r * w
                    if r > 0 and not mask[r - 1, c] and not seen[r - 1, c]:
                        seen[r - 1, c] = True
                        stack[top] = p - w
                        top += 1
                    if r < h - 1 and not mask[r + 1, c] and not seen[r + 1, c]:
                        seen[r + 1, c] = True
                        stack[top] = p + w
                        top += 1
                    if c > 0 and not mask[r, c - 1] and not seen[r, c - 1]:
                        seen[r, c - 1] = True
                        stack[top] = p - 1
                        top += 1
                    if c < w - 1 and not mask[r, c + 1] and not seen[r, c + 1]:
                        seen[r, c + 1] = True
                        stack[top] = p + 1
                        top += 1
                if count <= max_size:
                    for j in range(count):
                        p = members[j]
                        out[p // w, p % w] = True

    return {"heap_flood": heap_flood, "fill_holes": fill_holes}


def seeded_watershed(
    landscape: NDArray[Any],
    markers: NDArray[np.integer[Any]],
    mask: NDArray[np.bool_],
    *,
    compiled: bool | None = None,
) -> NDArray[np.int32]:
    """Marker-controlled watershed (4-connected) of ``landscape`` inside ``mask``.

    Parameters
    ----------
    landscape : (Y, X) ndarray of float
        Elevation; low pixels flood first.
    markers : (Y, X) ndarray of int
        Seeds, 0 = unlabelled; labels must fit in int32. Markers outside ``mask`` are dropped.
    mask : (Y, X) ndarray of bool
        Pixels the flood may enter.
    compiled : bool, optional
        True: the compiled flood (error without numba); False: scikit-image's; None: compiled
        when numba is available.

    Returns
    -------
    (Y, X) ndarray of int32
        ``markers`` grown over the ``mask`` pixels connected to them; 0 elsewhere.
    """
    landscape = np.asarray(landscape)
    markers = np.asarray(markers)
    mask = np.asarray(mask, dtype=bool)
    if landscape.ndim != 2 or landscape.shape != markers.shape or mask.shape != markers.shape:
        raise ValueError(
            "`landscape`, `markers` and `mask` must be 2-D of one shape, got "
            f"{landscape.shape}, {markers.shape}, {mask.shape}"
        )
    if markers.dtype.kind not in "iub":
        raise TypeError(f"`markers` must be an integer array, got {markers.dtype}")
    kernels = _kernels() if compiled is not False else None
    if compiled and kernels is None:
        raise RuntimeError("seeded_watershed(compiled=True) needs numba (pip install numba)")
    if kernels is None:
        from skimage.segmentation import watershed

        grown: NDArray[np.int32] = watershed(  # type: ignore[no-untyped-call]
            landscape, markers=markers, mask=mask
        ).astype(np.int32, copy=False)
        return grown
    labels = np.array(markers, dtype=np.int32, order="C")
    if labels.size:
        height = np.ascontiguousarray(landscape, dtype=np.float32 if landscape.dtype.itemsize <= 4 else np.float64)
        kernels["heap_flood"](height.ravel(), labels.ravel(), np.ascontiguousarray(mask).ravel(), labels.shape[1])
    return labels


def fill_small_holes(
    mask: NDArray[np.bool_], *, max_size: int, compiled: bool | None = None
) -> NDArray[np.bool_]:
    """``mask`` with its 4-connected holes of at most ``max_size`` pixels filled.

    ``skimage.morphology.remove_small_holes(mask, max_size=max_size)``: a hole is a connected
    component of ``~mask``, those touching the border included.

    Parameters
    ----------
    mask : (Y, X) ndarray of bool
    max_size : int
        Largest hole filled, in pixels (``< 1`` fills nothing).
    compiled : bool, optional
        As in :func:`seeded_watershed`.

    Returns
    -------
    (Y, X) ndarray of bool
        A new array.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"`mask` must be 2-D, got shape {mask.shape}")
    kernels = _kernels() if compiled is not False else None
    if compiled and kernels is None:
        raise RuntimeError("fill_small_holes(compiled=True) needs numba (pip install numba)")
    out = np.array(mask, order="C")
    if max_size < 1 or out.all():
        return out
    if kernels is None:
        from skimage.morphology import remove_small_holes

        filled: NDArray[np.bool_] = remove_small_holes(mask, max_size=int(max_size))
        return filled
    kernels["fill_holes"](np.ascontiguousarray(mask), int(max_size), out)
    return out
