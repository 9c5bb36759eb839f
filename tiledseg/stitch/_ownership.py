"""Ownership: which cells of a tile's window the tile keeps.

Each tile is segmented on its window (core + halo). A cell belongs to the tile whose *core*
contains its centroid; the owner keeps the cell's complete mask from its own window, so a cell
that crosses a tile border comes whole from one segmentation and is never cut or glued from two
(the "ownership by centroid" scheme; cf. the overlap-and-assign stitching of Cellpose's
``distributed_eval`` and of StarDist's big-image prediction, here with exact whole-mask
ownership instead of IoU matching on a thin strip).

Tie rule: cores are half-open ``[start, stop)``; the owner is the tile whose core holds the pixel
``floor(centroid)``. A centroid exactly on a core edge therefore belongs to the tile below /
right of it. Centroids are computed from integer coordinate sums, so the same mask gives the
same centroid in every tile that sees it, and exactly one tile owns it.

A cell that touches its window's edge where the window is not the slide's edge may continue
beyond what the tile saw: it is larger than the halo allows. It is kept and flagged
``truncated`` so the caller can warn (never cut silently).

Owned cells are numbered ``1..n`` in the tile by a position key: centroid row, centroid column,
then bounding box, area and the backend's label value (deterministic for a deterministic backend).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from tiledseg.errors import ParameterError
from tiledseg.tiling import Tile

__all__ = ["OwnedCells", "own_cells"]


@dataclass(frozen=True)
class OwnedCells:
    """The cells a tile owns, numbered ``1..n`` by position key.

    Parameters
    ----------
    labels : (Y, X) ndarray of uint32
        The tile's window with owned cells relabelled ``1..n``; every other pixel is 0.
    area : (n,) ndarray of int64
        Pixels per owned cell.
    centroid : (n, 2) ndarray of float64
        ``(row, col)`` centroid in slide coordinates.
    bbox : (n, 4) ndarray of int64
        ``(row0, col0, row1, col1)`` half-open box in slide coordinates.
    truncated : (n,) ndarray of bool
        The cell touches an inner edge of the window.
    n_truncated_unowned : int
        Cells touching an inner window edge that the tile does *not* own (diagnostic).
    """

    labels: NDArray[np.uint32]
    area: NDArray[np.int64]
    centroid: NDArray[np.float64]
    bbox: NDArray[np.int64]
    truncated: NDArray[np.bool_]
    n_truncated_unowned: int = 0

    @property
    def n(self) -> int:
        """Number of owned cells."""
        return int(self.area.size)

    def table(self) -> NDArray[np.float64]:
        """``(n, 8)`` float64: area, centroid row/col, bbox row0/col0/row1/col1, truncated."""
        return np.column_stack(
            [
                self.area.astype(np.float64),
                self.centroid,
                self.bbox.astype(np.float64),
                self.truncated.astype(np.float64),
            ]
        ).reshape(self.n, 8)

    @classmethod
    def from_table(cls, labels: NDArray[np.uint32], table: NDArray[np.float64]) -> OwnedCells:
        """Inverse of :meth:`table` (with the tile's relabelled window)."""
        table = np.asarray(table, dtype=np.float64).reshape(-1, 8)
        return cls(
            labels=labels,
            area=table[:, 0].astype(np.int64),
            centroid=table[:, 1:3].copy(),
            bbox=table[:, 3:7].astype(np.int64),
            truncated=table[:, 7] > 0.5,
        )


def _dense(labels: NDArray[np.integer[Any]], *, tile_index: int) -> tuple[NDArray[np.intp], NDArray[np.int64]]:
    """Relabel to ``1..k`` (0 stays background); also return the original value of each label."""
    if labels.size == 0:
        return np.zeros(labels.shape, np.intp), np.zeros(0, np.int64)
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0:
        raise ParameterError(f"labels of tile {tile_index} hold negative values ({lo})")
    if hi <= 4 * labels.size + 65536:
        # Dense enough for a lookup table: one bincount and one gather, no sort.
        present = np.flatnonzero(np.bincount(labels.ravel(), minlength=hi + 1))
        values = present[present > 0].astype(np.int64)
        lut = np.zeros(hi + 1, dtype=np.intp)
        lut[values] = np.arange(1, values.size + 1)
        return lut[labels], values
    uniq, inverse = np.unique(labels.ravel(), return_inverse=True)
    if uniq[0] == 0:
        return inverse.reshape(labels.shape).astype(np.intp), uniq[1:].astype(np.int64)
    return inverse.reshape(labels.shape).astype(np.intp) + 1, uniq.astype(np.int64)


def _run_statistics(
    labels: NDArray[np.integer[Any]],
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.float64], NDArray[np.float64], NDArray[np.int64]]:
    """Per label value: sorted values, area, row and column coordinate sums, window bbox.

    Computed from the horizontal runs of equal labels (one comparison per pixel, then work per
    run), which is several times cheaper than per-pixel weighted bincounts and
    ``ndimage.find_objects`` on a segmented window. Sums are exact integers (stored as float64).
    """
    ny, nx = labels.shape
    empty = np.zeros(0, np.int64)
    if labels.size == 0:
        zeros = np.zeros(0, np.float64)
        return empty, empty, zeros, zeros, np.zeros((0, 4), np.int64)
    kernel = _statistics_kernel()
    if kernel is not None and labels.dtype in _KERNEL_DTYPES:
        hi = int(labels.max())
        if hi <= labels.size // 4 + 65536:
            # Dense label values: one compiled pass filling a table per value (integer sums, so
            # the same numbers as the runs below). The table holds 7 int64 per value, so sparse
            # IDs (a plugin's, up to millions) take the runs below instead.
            table = np.zeros((hi + 1, 7), dtype=np.int64)
            kernel(labels, table)
            values = np.flatnonzero(table[1:, 0]) + 1
            rows = table[values]
            return (
                values.astype(np.int64), rows[:, 0].copy(), rows[:, 1].astype(np.float64),
                rows[:, 2].astype(np.float64), np.ascontiguousarray(rows[:, 3:]),
            )
    start = np.empty((ny, nx), dtype=bool)
    start[:, 0] = True
    np.not_equal(labels[:, 1:], labels[:, :-1], out=start[:, 1:])
    first = np.flatnonzero(start)
    vals = labels.ravel()[first]
    row = first // nx
    nxt = np.append(first[1:], ny * nx)
    stop = np.minimum(nxt, (row + 1) * nx) - row * nx
    col = first - row * nx
    fg = vals != 0
    vals, row, col, stop = vals[fg], row[fg], col[fg], stop[fg]
    values, inverse = np.unique(vals, return_inverse=True)
    inverse = inverse.ravel()
    k = values.size
    length = stop - col
    area: NDArray[np.int64] = np.bincount(inverse, weights=length, minlength=k).astype(np.int64)
    row_sums: NDArray[np.float64] = np.bincount(inverse, weights=row * length, minlength=k).astype(np.float64)
    # sum of col .. stop - 1, an exact integer
    col_sums: NDArray[np.float64] = np.bincount(
        inverse, weights=(length * (col + stop - 1)) // 2, minlength=k
    ).astype(np.float64)
    bbox = np.empty((k, 4), dtype=np.int64)
    bbox[:, 0] = ny
    bbox[:, 1] = nx
    bbox[:, 2:] = 0
    np.minimum.at(bbox[:, 0], inverse, row)
    np.minimum.at(bbox[:, 1], inverse, col)
    np.maximum.at(bbox[:, 2], inverse, row + 1)
    np.maximum.at(bbox[:, 3], inverse, stop)
    return values.astype(np.int64), area, row_sums, col_sums, bbox


_STATISTICS_KERNEL: dict[str, Any] = {}
#: Label dtypes the compiled statistics take (others take the runs in NumPy).
_KERNEL_DTYPES = frozenset(
    np.dtype(t) for t in ("uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64")
)


def _statistics_kernel() -> Any:
    """One compiled pass of :func:`_run_statistics` (numba), or None when numba is unavailable.

    ``kernel(labels, table)`` fills ``table[v] = (area, row sum, column sum, min row, min col,
    max row + 1, max col + 1)`` for every label value ``v > 0`` (``table`` zeroed, one row per
    value up to the maximum), walking each row's runs of equal labels.
    """
    if "fn" not in _STATISTICS_KERNEL:
        try:
            import numba

            @numba.njit(cache=True, nogil=True)  # type: ignore[misc,unused-ignore]
            def statistics(labels: Any, table: Any) -> None:
                ny, nx = labels.shape
                for r in range(ny):
                    c = 0
                    while c < nx:
                        v = labels[r, c]
                        stop = c + 1
                        while stop < nx and labels[r, stop] == v:
                            stop += 1
                        if v != 0:
                            length = stop - c
                            t = table[v]
                            if t[0] == 0:
                                t[3] = r
                                t[4] = c
                                t[5] = r + 1
                                t[6] = stop
                            else:
                                t[4] = min(t[4], c)
                                t[5] = r + 1
                                t[6] = max(t[6], stop)
                            t[0] += length
                            t[1] += r * length
                            t[2] += (length * (c + stop - 1)) // 2
                        c = stop

            _STATISTICS_KERNEL["fn"] = statistics
        except Exception:  # noqa: BLE001  numba missing or failing: NumPy runs
            _STATISTICS_KERNEL["fn"] = None
    return _STATISTICS_KERNEL["fn"]


def _relabel(
    labels: NDArray[np.integer[Any]], kept: NDArray[np.int64], *, tile_index: int
) -> NDArray[np.uint32]:
    """``labels`` with value ``kept[i]`` -> ``i + 1`` and every other value -> 0."""
    hi = int(labels.max()) if labels.size else 0
    if hi <= 4 * labels.size + 65536:
        lut = np.zeros(hi + 1, dtype=np.uint32)
        lut[kept] = np.arange(1, kept.size + 1, dtype=np.uint32)
        out: NDArray[np.uint32] = lut[labels]
        return out
    dense, values = _dense(labels, tile_index=tile_index)
    lut = np.zeros(values.size + 1, dtype=np.uint32)
    lut[np.searchsorted(values, kept) + 1] = np.arange(1, kept.size + 1, dtype=np.uint32)
    out = lut[dense]
    return out


def own_cells(
    labels: NDArray[np.integer[Any]],
    *,
    tile: Tile,
    slide_shape: tuple[int, int],
) -> OwnedCells:
    """Keep the cells of a tile's window whose centroid lies in the tile's core.

    Parameters
    ----------
    labels : (Y, X) ndarray of int
        The backend's labels on ``tile.window``; 0 = background, other values arbitrary.
    tile : Tile
        The tile the window belongs to.
    slide_shape : (int, int)
        Spatial shape of the slide (to tell inner window edges from slide edges).

    Returns
    -------
    OwnedCells

    Raises
    ------
    ParameterError
        ``labels`` does not have the window's shape, or holds negative values.
    """
    labels = np.asarray(labels)
    if labels.shape != tile.window_shape:
        raise ParameterError(
            f"labels of tile {tile.index} have shape {labels.shape}; expected the window shape "
            f"{tile.window_shape}"
        )
    if labels.dtype.kind not in "iu":
        raise ParameterError(f"labels of tile {tile.index} must be integers, got {labels.dtype}")
    (wr0, wr1), (wc0, wc1) = tile.window
    (cr0, cr1), (cc0, cc1) = tile.core
    ny, nx = labels.shape
    if labels.size and int(labels.min()) < 0:
        raise ParameterError(f"labels of tile {tile.index} hold negative values ({int(labels.min())})")
    values, area, row_sums, col_sums, bbox = _run_statistics(labels)
    k = values.size
    if k == 0:
        return OwnedCells(
            labels=np.zeros((ny, nx), dtype=np.uint32),
            area=np.zeros(0, np.int64),
            centroid=np.zeros((0, 2), np.float64),
            bbox=np.zeros((0, 4), np.int64),
            truncated=np.zeros(0, bool),
        )
    # Integer coordinate sums (exact in float64 below 2**53): identical in every tile that
    # sees the same mask, so the centroid and hence the owner agree between tiles.
    centroid = np.column_stack([row_sums / area + wr0, col_sums / area + wc0])
    bbox = bbox + np.array([wr0, wc0, wr0, wc0], dtype=np.int64)
    fr = np.floor(centroid[:, 0]).astype(np.int64)
    fc = np.floor(centroid[:, 1]).astype(np.int64)
    owned = (fr >= cr0) & (fr < cr1) & (fc >= cc0) & (fc < cc1)
    touches = (
        ((bbox[:, 0] == wr0) & (wr0 > 0))
        | ((bbox[:, 2] == wr1) & (wr1 < slide_shape[0]))
        | ((bbox[:, 1] == wc0) & (wc0 > 0))
        | ((bbox[:, 3] == wc1) & (wc1 < slide_shape[1]))
    )
    idx = np.flatnonzero(owned)
    # Position key: centroid, then the box and area (distinct cells practically never tie on
    # all of them), then the backend's own label value as a last, still deterministic, resort.
    order = np.lexsort(
        (values[idx], area[idx], bbox[idx, 1], bbox[idx, 0], centroid[idx, 1], centroid[idx, 0])
    )
    idx = idx[order]
    local = _relabel(labels, values[idx], tile_index=tile.index)
    return OwnedCells(
        labels=local,
        area=area[idx],
        centroid=centroid[idx],
        bbox=bbox[idx],
        truncated=touches[idx],
        n_truncated_unowned=int((touches & ~owned).sum()),
    )
