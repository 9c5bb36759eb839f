"""Block assembly of the stitched label image.

An output block is painted from the owned-cell windows of the tiles whose windows overlap it,
in ascending tile index, each pixel written only while still background. With the relabel maps of
:func:`tiledseg.stitch.assign_ids` this realises the conflict rule "the lower tile index keeps
shared pixels" and needs nothing but the few overlapping tiles' small maps.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["assemble_block"]

Window = tuple[tuple[int, int], tuple[int, int]]


def assemble_block(
    block: Window,
    pieces: Sequence[tuple[int, NDArray[np.uint32], Window, NDArray[np.uint32]]],
    *,
    out: NDArray[np.uint32] | None = None,
) -> NDArray[np.uint32]:
    """Paint one output block from tiles' owned-cell windows.

    Parameters
    ----------
    block : ((int, int), (int, int))
        The block's half-open row and column ranges in slide coordinates.
    pieces : sequence of (tile_index, labels, region, relabel_map)
        ``labels`` holds a tile's local IDs on ``region`` (slide coordinates, inside the block
        and the tile's window); ``relabel_map[local]`` is the global ID (0 = drop).
    out : (Y, X) ndarray of uint32, optional
        Where to paint (cleared first), e.g. a buffer reused for every block of a worker: a
        fresh array of an output block's size is page-faulted in anew each time.

    Returns
    -------
    (Y, X) ndarray of uint32
        The block with global IDs; 0 = background.
    """
    (br0, br1), (bc0, bc1) = block
    shape = (br1 - br0, bc1 - bc0)
    if out is None:
        out = np.zeros(shape, dtype=np.uint32)
    elif out.shape != shape or out.dtype != np.uint32:
        raise ValueError(f"`out` must be a uint32 array of shape {shape}, got {out.dtype} {out.shape}")
    else:
        out[...] = 0
    for _, labels, region, relabel in sorted(pieces, key=lambda p: p[0]):
        (r0, r1), (c0, c1) = region
        if not (br0 <= r0 <= r1 <= br1 and bc0 <= c0 <= c1 <= bc1):
            raise ValueError(f"piece region {region} lies outside the block {block}")
        target = out[r0 - br0 : r1 - br0, c0 - bc0 : c1 - bc0]
        lookup = np.asarray(relabel, dtype=np.uint32)
        local = np.asarray(labels)
        kernel = _paint_kernel()
        if kernel is not None and local.dtype == np.uint32 and kernel(target, local, lookup):
            continue
        ids = lookup[local]
        free = (target == 0) & (ids != 0)
        target[free] = ids[free]
    return out


_KERNELS: dict[str, Any] = {}


def _paint_kernel() -> Any:
    """``target[free] = lookup[labels][free]`` where ``free = (target == 0) & (lookup[labels] != 0)``.

    One compiled pass (numba) instead of a gathered copy and two masks of the piece; returns
    ``False`` at the first label without a map entry (the caller's NumPy steps then raise the
    ``IndexError``); ``None`` when numba is unavailable (the NumPy steps give the same result).
    """
    if "paint" not in _KERNELS:
        try:
            import numba

            @numba.njit(cache=True, nogil=True)  # type: ignore[misc,unused-ignore]
            def paint(target: Any, labels: Any, lookup: Any) -> bool:
                rows, cols = labels.shape
                n = lookup.size
                for y in range(rows):
                    for x in range(cols):
                        local = labels[y, x]
                        if local >= n:
                            # A label without a map entry: stop; the NumPy steps then raise on
                            # the same piece (pixels painted so far are never returned).
                            return False
                        if target[y, x] == 0:
                            target[y, x] = lookup[local]
                return True

            _KERNELS["paint"] = paint
        except Exception:  # noqa: BLE001  numba missing or failing: NumPy steps
            _KERNELS["paint"] = None
    return _KERNELS["paint"]
