"""Slide-level channel statistics as a chunked reduction (kernels; the engine maps them).

Two passes over every pixel of the requested inputs, each a map over blocks plus an
associative merge (the tree reduction of ``dask.array.reduction``):

1. exact finite minimum and maximum per channel (:func:`minmax_partial`, :func:`merge_minmax`);
2. a histogram per channel with ``bins`` equal bins between those extremes
   (:func:`histogram_partial`, summed by :func:`merge_histograms`).

Because ``numpy.histogram`` assigns each value to a bin from the value and the edges alone, the
merged counts are exactly those of one histogram over the whole slide, so the statistics equal
:func:`tiledseg.segment._prepare.statistics_from_array` on the image in memory. Percentiles are
then interpolated inside a bin of width ``(max - min) / bins``; for integer inputs whose range is
smaller than ``bins`` every bin holds a single integer value and percentiles are exact to the
interpolation inside it.

One-pass statistics (:func:`fused_partial`, :func:`merge_fused`, :func:`finalize_fused`), used
by the engine for ``uint8`` / ``int8`` / ``uint16`` / ``int16`` inputs, read every pixel once:
exact extremes plus one count per integer value (``numpy.bincount``), merged by exact integer
sums. The final histogram (``bins`` equal bins between the exact extremes) is computed from the
values and their counts, so it is **identical** to the two-pass result and to
``statistics_from_array``, whatever the tiling, the number of workers or the order tasks finish in.

Floating-point and wide integer inputs keep the two exact passes: their bins depend on the
slide's extremes, and the whole-image reference (``statistics_from_array``) must stay
bit-identical. (A one-pass float32 variant -- a histogram of the top 20 bits of the
order-preserving bit pattern, straddling groups split by overlap -- was tried: percentiles
within 0.05 %, but that moved a few pixels of exact tiled == whole-image results; an exact
bit-pattern table lookup was slower than ``numpy.histogram`` on IMC-like data, because many
values fall in groups that straddle an edge.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from tiledseg.errors import ParameterError
from tiledseg.segment._protocol import PREPARED_BINS, ChannelStatistics

__all__ = [
    "DEFAULT_BINS",
    "FusedPartial",
    "finalize_fused",
    "finalize_statistics",
    "fused_partial",
    "histogram_partial",
    "merge_fused",
    "merge_histograms",
    "merge_minmax",
    "minmax_partial",
    "one_pass_supported",
    "prepared_edges",
    "prepared_histogram",
    "uniform_histogram",
]

#: Histogram bins per raw channel (the same as ``statistics_from_array``'s default).
DEFAULT_BINS = 4096


def minmax_partial(block: NDArray[np.generic]) -> NDArray[np.float64]:
    """``(C, 2)`` finite minimum and maximum per channel of a ``(C, Y, X)`` block (NaN if none)."""
    block = np.asarray(block)
    if block.ndim != 3:
        raise ParameterError(f"block must be (C, Y, X), got shape {block.shape}")
    out = np.full((block.shape[0], 2), np.nan)
    for c in range(block.shape[0]):
        data = block[c]
        if not data.size:
            continue
        lo, hi = data.min(), data.max()
        if data.dtype.kind == "f" and not (np.isfinite(lo) and np.isfinite(hi)):
            data = data[np.isfinite(data)]
            if not data.size:
                continue
            lo, hi = data.min(), data.max()
        out[c] = float(lo), float(hi)
    return out


def merge_minmax(parts: Sequence[NDArray[np.float64]]) -> NDArray[np.float64]:
    """Merge :func:`minmax_partial` results (associative and commutative)."""
    stack = np.stack([np.asarray(p, dtype=np.float64) for p in parts])
    with np.errstate(all="ignore"):
        lo = np.fmin.reduce(stack[:, :, 0], axis=0)
        hi = np.fmax.reduce(stack[:, :, 1], axis=0)
    return np.column_stack([lo, hi])


def _edges(minmax: NDArray[np.float64], bins: int) -> NDArray[np.float64]:
    edges = np.zeros((minmax.shape[0], bins + 1))
    for c, (lo, hi) in enumerate(minmax):
        if not np.isfinite(lo):
            edges[c] = np.linspace(0.0, 1.0, bins + 1)
            continue
        if hi <= lo:
            hi = lo + 1.0
        edges[c] = np.histogram_bin_edges(np.zeros(0), bins=bins, range=(lo, hi))
    return edges


_KERNELS: dict[str, Any] = {}


def _uniform_kernel() -> Any:
    """A compiled ``numpy.histogram`` for equal bins over a float64 range (numba), or None.

    It follows NumPy's own algorithm for equal bins step by step, in float64: keep values with
    ``lo <= x <= hi`` (NaN never passes); index ``int(((x - lo) / (hi - lo)) * bins)``, the
    last edge into the last bin; then the same one-step corrections against the
    ``linspace`` edges that NumPy applies for values within an ulp of an edge. The counts are
    therefore identical to ``numpy.histogram(values, bins, range=(lo, hi))`` with float64
    bounds, in one pass and no temporaries (NumPy makes six full-size temporaries per
    65,536-value block; this is ~10x faster on float32 IMC planes).
    """
    if "uniform" not in _KERNELS:
        try:
            import numba

            @numba.njit(cache=True, nogil=True)  # type: ignore[misc,unused-ignore]
            def uniform(values: Any, lo: float, hi: float, edges: Any, out: Any) -> None:
                n = out.size
                denom = hi - lo
                for k in range(values.size):
                    x = np.float64(values[k])
                    if not (x >= lo and x <= hi):
                        continue
                    i = int(((x - lo) / denom) * n)
                    if i == n:
                        i -= 1
                    if x < edges[i]:
                        i -= 1
                    elif x >= edges[i + 1] and i != n - 1:
                        i += 1
                    out[i] += 1

            _KERNELS["uniform"] = uniform
        except Exception:  # noqa: BLE001  numba missing or failing: numpy.histogram
            _KERNELS["uniform"] = None
    return _KERNELS["uniform"]


def uniform_histogram(values: NDArray[Any], lo: float, hi: float, bins: int) -> NDArray[np.int64]:
    """``numpy.histogram(values, bins, range=(lo, hi))[0]`` with float64 bounds, compiled when possible.

    Parameters
    ----------
    values : ndarray
        Any shape; real dtype. NaN and values outside ``[lo, hi]`` are not counted.
    lo, hi : float
        Range, ``lo < hi``, taken as float64.
    bins : int

    Returns
    -------
    (bins,) ndarray of int64
        Identical to NumPy's counts.
    """
    bounds = (np.float64(lo), np.float64(hi))  # numpy scalars on purpose: Python floats are "weak"
    kernel = _uniform_kernel()
    flat = np.ascontiguousarray(values).ravel()
    # The kernel compiles for native-order integers, float32 and float64 (not float16 or
    # big-endian data as zarr v2 may store them): NumPy counts the rest, with the same result.
    if kernel is None or flat.dtype.kind not in "fiu" or not flat.dtype.isnative or flat.dtype == np.float16:
        return np.histogram(flat, bins=bins, range=bounds)[0].astype(np.int64)  # type: ignore[arg-type]
    edges = np.histogram_bin_edges(np.zeros(0), bins=bins, range=bounds)  # type: ignore[arg-type]
    out = np.zeros(bins, dtype=np.int64)
    kernel(flat, bounds[0], bounds[1], edges, out)
    return out


def histogram_partial(
    block: NDArray[np.generic], minmax: NDArray[np.float64], *, bins: int = DEFAULT_BINS
) -> NDArray[np.int64]:
    """``(C, bins)`` counts of a ``(C, Y, X)`` block between each channel's slide extremes."""
    block = np.asarray(block)
    out = np.zeros((block.shape[0], bins), dtype=np.int64)
    for c, (lo, hi) in enumerate(np.asarray(minmax, dtype=np.float64)):
        if not np.isfinite(lo):
            continue
        if hi <= lo:
            hi = lo + 1.0
        # NaN and ±inf lie outside the range and are dropped: no copy or finite mask needed.
        out[c] = uniform_histogram(block[c], lo, hi, bins)
    return out


def merge_histograms(parts: Sequence[NDArray[np.int64]]) -> NDArray[np.int64]:
    """Sum histogram partials."""
    total: NDArray[np.int64] = np.stack([np.asarray(p, dtype=np.int64) for p in parts]).sum(axis=0)
    return total


def one_pass_supported(dtype: np.dtype[Any] | type) -> bool:
    """Whether :func:`fused_partial` handles inputs of ``dtype`` (8/16-bit integers)."""
    dt = np.dtype(dtype)
    return bool(dt.kind in "iu" and dt.itemsize <= 2)


@dataclass(frozen=True)
class FusedPartial:
    """Exact extremes and sparse fine histograms of a block, one entry per channel.

    Attributes
    ----------
    minmax : (C, 2) ndarray of float64
        Finite minimum and maximum (NaN for a channel without finite pixels).
    keys : tuple of (K_c,) ndarray of int64
        Sorted, distinct integer values present.
    counts : tuple of (K_c,) ndarray of int64
        Pixels per key.
    kind : {"int"}
    """

    minmax: NDArray[np.float64]
    keys: tuple[NDArray[np.int64], ...]
    counts: tuple[NDArray[np.int64], ...]
    kind: str


def fused_partial(block: NDArray[np.generic]) -> FusedPartial:
    """Extremes and fine histograms of a ``(C, Y, X)`` block in one read of each pixel.

    Parameters
    ----------
    block : (C, Y, X) ndarray of (u)int8 or (u)int16

    Returns
    -------
    FusedPartial

    Raises
    ------
    ParameterError
        ``block`` is not 3-D or its dtype is not supported (see :func:`one_pass_supported`).
    """
    block = np.asarray(block)
    if block.ndim != 3:
        raise ParameterError(f"`block` must be (C, Y, X), got shape {block.shape}")
    if not one_pass_supported(block.dtype):
        raise ParameterError(
            f"`block` has dtype {block.dtype}; one-pass statistics take 8/16-bit integers"
        )
    minmax = np.full((block.shape[0], 2), np.nan)
    keys: list[NDArray[np.int64]] = []
    counts: list[NDArray[np.int64]] = []
    for c in range(block.shape[0]):
        data = block[c].ravel()
        if data.size == 0:
            keys.append(np.zeros(0, np.int64))
            counts.append(np.zeros(0, np.int64))
            continue
        lo, hi = data.min(), data.max()
        minmax[c] = float(lo), float(hi)
        shifted = data.astype(np.int32)
        shifted -= np.int32(lo)
        hist = np.bincount(shifted)
        nz = np.flatnonzero(hist)
        keys.append(nz.astype(np.int64) + int(lo))
        counts.append(hist[nz].astype(np.int64))
    return FusedPartial(minmax=minmax, keys=tuple(keys), counts=tuple(counts), kind="int")


def merge_fused(parts: Sequence[FusedPartial]) -> FusedPartial:
    """Merge :func:`fused_partial` results (associative, commutative, exact).

    Raises
    ------
    ParameterError
        No parts, or parts of different kinds or channel counts.
    """
    if not parts:
        raise ParameterError("`parts` is empty: nothing to merge")
    kinds = {p.kind for p in parts}
    channels = {len(p.keys) for p in parts}
    if len(kinds) != 1 or len(channels) != 1:
        raise ParameterError(f"`parts` mix kinds {sorted(kinds)} / channel counts {sorted(channels)}")
    keys: list[NDArray[np.int64]] = []
    counts: list[NDArray[np.int64]] = []
    for c in range(channels.pop()):
        all_keys = np.concatenate([p.keys[c] for p in parts])
        all_counts = np.concatenate([p.counts[c] for p in parts])
        uniq, inverse = np.unique(all_keys, return_inverse=True)
        summed = np.zeros(uniq.size, np.int64)
        np.add.at(summed, inverse.ravel(), all_counts)
        keys.append(uniq.astype(np.int64))
        counts.append(summed)
    return FusedPartial(
        minmax=merge_minmax([p.minmax for p in parts]), keys=tuple(keys), counts=tuple(counts),
        kind=kinds.pop(),
    )


def finalize_fused(
    names: Sequence[str], merged: FusedPartial, *, n_pixels: int, bins: int = DEFAULT_BINS
) -> ChannelStatistics:
    """:class:`ChannelStatistics` (``bins`` equal bins between the exact extremes) from a merge.

    The histogram is exactly the two-pass one (and ``statistics_from_array``'s).

    Parameters
    ----------
    names : sequence of str
        Input names, one per channel.
    merged : FusedPartial
        Result of :func:`merge_fused`.
    n_pixels : int
        Pixels per channel of the slide.
    bins : int
        Bins per channel.
    """
    minmax = np.asarray(merged.minmax, dtype=np.float64)
    edges = _edges(minmax, bins)
    counts = np.zeros((minmax.shape[0], bins), dtype=np.int64)
    for c, (lo, hi) in enumerate(minmax):
        if not np.isfinite(lo) or merged.keys[c].size == 0:
            continue
        top = hi if hi > lo else lo + 1.0
        weighted = np.histogram(
            merged.keys[c].astype(np.float64), bins=bins, range=(lo, top),
            weights=merged.counts[c].astype(np.float64),
        )[0]
        counts[c] = np.rint(weighted).astype(np.int64)
    return ChannelStatistics(
        names=tuple(str(n) for n in names),
        edges=edges,
        counts=counts,
        minimum=minmax[:, 0].copy(),
        maximum=minmax[:, 1].copy(),
        n_pixels=int(n_pixels),
    )


def finalize_statistics(
    names: Sequence[str],
    minmax: NDArray[np.float64],
    counts: NDArray[np.int64],
    *,
    n_pixels: int,
) -> ChannelStatistics:
    """Assemble :class:`ChannelStatistics` from merged extremes and histograms.

    Parameters
    ----------
    names : sequence of str
        Input names, one per channel.
    minmax : (C, 2) ndarray of float64
        Merged extremes.
    counts : (C, B) ndarray of int64
        Merged histograms.
    n_pixels : int
        Pixels per channel of the slide.
    """
    counts = np.asarray(counts, dtype=np.int64)
    return ChannelStatistics(
        names=tuple(str(n) for n in names),
        edges=_edges(np.asarray(minmax, dtype=np.float64), counts.shape[1]),
        counts=counts,
        minimum=np.asarray(minmax, dtype=np.float64)[:, 0].copy(),
        maximum=np.asarray(minmax, dtype=np.float64)[:, 1].copy(),
        n_pixels=int(n_pixels),
    )


def prepared_histogram(prepared: NDArray[np.floating[Any]], *, bins: int = PREPARED_BINS) -> NDArray[np.int64]:
    """``(K, bins)`` histograms over ``[0, 1]`` of ``(K, Y, X)`` prepared planes (for ``fit``)."""
    prepared = np.asarray(prepared)
    out = np.zeros((prepared.shape[0], bins), dtype=np.int64)
    for k in range(prepared.shape[0]):
        # NaN and values outside [0, 1] fall outside the range and are dropped by numpy.histogram.
        out[k] = uniform_histogram(prepared[k], 0.0, 1.0, bins)
    return out


def prepared_edges(k: int, *, bins: int = PREPARED_BINS) -> NDArray[np.float64]:
    """``(K, bins + 1)`` edges matching :func:`prepared_histogram`."""
    return np.tile(np.histogram_bin_edges(np.zeros(0), bins=bins, range=(0.0, 1.0)), (k, 1))
