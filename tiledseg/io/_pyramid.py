"""2x multiscale pyramids built level by level from the previous stored level.

Each level halves rows and columns (ceiling division, so no edge pixel is dropped) until the
level fits in a single chunk. Images are reduced by the mean of each 2x2 block over the pixels
that exist (edge blocks of odd-sized levels average 1 or 2 pixels), computed in float64 and cast
back to the input dtype (rounded for integers). Label images are reduced by the *mode* of each
2x2 block (ties go to the top-left-most value), so every output value is a label that exists in
the input: labels are never interpolated. This is the scheme of ``ome_zarr.scale`` /
``skimage.transform.downscale_local_mean`` for images and of napari's label pyramids, done per
dask block so that memory stays bounded: each task reads one (2*chunk, 2*chunk) region of the
previous level and produces one output chunk.
"""

from __future__ import annotations

from typing import Any

import dask.array as da
import numpy as np
from numpy.typing import NDArray

__all__ = ["downsample_labels_block", "downsample_mean_block", "level_shapes", "pyramid_level"]


def level_shapes(shape: tuple[int, int], chunks: tuple[int, int]) -> list[tuple[int, int]]:
    """Spatial shapes of every level: halve (ceil) until a level fits in one chunk.

    Parameters
    ----------
    shape : (2,) tuple of int
        Rows, columns of level 0.
    chunks : (2,) tuple of int
        Chunk rows, columns.

    Returns
    -------
    list of (2,) tuple of int
        ``[shape, shape/2, ...]``; the last one fits in ``chunks``.
    """
    shapes = [tuple(int(s) for s in shape)]
    while shapes[-1][0] > chunks[0] or shapes[-1][1] > chunks[1]:
        rows, cols = shapes[-1]
        shapes.append(((rows + 1) // 2, (cols + 1) // 2))
    return shapes  # type: ignore[return-value]


def downsample_mean_block(block: NDArray[Any]) -> NDArray[Any]:
    """Mean of each 2x2 block over the last two axes (ceil output shape), input dtype kept.

    Parameters
    ----------
    block : (..., Y, X) ndarray

    Returns
    -------
    (..., ceil(Y/2), ceil(X/2)) ndarray
    """
    rows, cols = block.shape[-2:]
    pr, pc = rows % 2, cols % 2
    if not (pr or pc):
        # Fast path for whole 2x2 blocks (all but the last chunk of odd-sized levels): four
        # strided adds, in float32 for float32 input (exact enough for a mean of four values).
        acc = np.float32 if block.dtype == np.float32 else np.float64
        total: NDArray[Any] = block[..., 0::2, 0::2].astype(acc)
        total += block[..., 0::2, 1::2]
        total += block[..., 1::2, 0::2]
        total += block[..., 1::2, 1::2]
        total *= 0.25
        if np.issubdtype(block.dtype, np.integer):
            np.rint(total, out=total)
        return total.astype(block.dtype, copy=False)
    values = block.astype(np.float64)
    weights = np.ones((rows, cols), dtype=np.float64)
    if pr or pc:
        pad = [(0, 0)] * (block.ndim - 2) + [(0, pr), (0, pc)]
        values = np.pad(values, pad)
        weights = np.pad(weights, [(0, pr), (0, pc)])
    r2, c2 = values.shape[-2] // 2, values.shape[-1] // 2
    sums = values.reshape(*values.shape[:-2], r2, 2, c2, 2).sum(axis=(-3, -1))
    counts = weights.reshape(r2, 2, c2, 2).sum(axis=(-3, -1))
    mean = sums / counts
    if np.issubdtype(block.dtype, np.integer):
        mean = np.rint(mean)
    return mean.astype(block.dtype, copy=False)  # type: ignore[no-any-return]


def downsample_labels_block(block: NDArray[np.integer[Any]]) -> NDArray[np.integer[Any]]:
    """Mode of each 2x2 block over the last two axes (ceil output shape); never interpolates.

    Ties go to the first value in (top-left, top-right, bottom-left, bottom-right) order, so the
    result is deterministic; background (0) is a value like any other.

    Parameters
    ----------
    block : (..., Y, X) integer ndarray

    Returns
    -------
    (..., ceil(Y/2), ceil(X/2)) ndarray of the same dtype
    """
    kernel = _mode_kernel() if block.ndim == 2 and block.dtype.kind in "iu" and block.size else None
    if kernel is not None:
        out = np.empty(((block.shape[0] + 1) // 2, (block.shape[1] + 1) // 2), dtype=block.dtype)
        kernel(block, out)
        return out
    rows, cols = block.shape[-2:]
    pr, pc = rows % 2, cols % 2
    if pr or pc:
        pad = [(0, 0)] * (block.ndim - 2) + [(0, pr), (0, pc)]
        block = np.pad(block, pad, mode="edge")
    # The mode of four values with ties in (a, b, c, d) order, in a few comparisons instead of
    # counting all 16 pairs: a wins whenever it occurs twice (its count is then maximal or tied
    # first); otherwise b when it occurs twice; otherwise c when c == d; otherwise all differ
    # and a (first) wins.
    a, b = block[..., 0::2, 0::2], block[..., 0::2, 1::2]
    c, d = block[..., 1::2, 0::2], block[..., 1::2, 1::2]
    result: NDArray[np.integer[Any]] = np.where(c == d, c, a)
    np.copyto(result, b, where=(b == c) | (b == d))
    np.copyto(result, a, where=(a == b) | (a == c) | (a == d))
    return result


_KERNELS: dict[str, Any] = {}


def _mode_kernel() -> Any:
    """The same 2x2 mode (edge rows/columns repeated) in one compiled pass (numba), or None."""
    if "mode" not in _KERNELS:
        try:
            import numba

            @numba.njit(cache=True, nogil=True)  # type: ignore[misc,unused-ignore]
            def mode(block: Any, out: Any) -> None:
                rows, cols = block.shape
                for i in range(out.shape[0]):
                    r0 = 2 * i
                    r1 = min(r0 + 1, rows - 1)
                    for j in range(out.shape[1]):
                        c0 = 2 * j
                        c1 = min(c0 + 1, cols - 1)
                        a = block[r0, c0]
                        b = block[r0, c1]
                        c = block[r1, c0]
                        d = block[r1, c1]
                        if a == b or a == c or a == d:
                            out[i, j] = a
                        elif b == c or b == d:
                            out[i, j] = b
                        elif c == d:
                            out[i, j] = c
                        else:
                            out[i, j] = a

            _KERNELS["mode"] = mode
        except Exception:  # noqa: BLE001  numba missing or failing: NumPy steps
            _KERNELS["mode"] = None
    return _KERNELS["mode"]


def pyramid_level(previous: da.Array, *, chunks: tuple[int, int], labels: bool) -> da.Array:
    """The next pyramid level of ``previous`` as a lazy dask array chunked ``chunks`` spatially.

    Parameters
    ----------
    previous : (..., Y, X) dask array
        The previous level, ideally read back from the store so it is not recomputed.
    chunks : (2,) tuple of int
        Spatial chunk shape of the *output* level.
    labels : bool
        Mode (labels) instead of mean (images).

    Returns
    -------
    (..., ceil(Y/2), ceil(X/2)) dask array
    """
    lead = previous.chunks[:-2]
    # Each input block is exactly 2x an output chunk, so block-wise ceil reductions equal the
    # whole-level reduction (only the last block along an axis can have odd size).
    source = previous.rechunk(tuple(1 for _ in lead) + (2 * chunks[0], 2 * chunks[1]))  # type: ignore[no-untyped-call]
    out_chunks = source.chunks[:-2] + tuple(
        tuple((c + 1) // 2 for c in axis) for axis in source.chunks[-2:]
    )
    func = downsample_labels_block if labels else downsample_mean_block
    return source.map_blocks(func, chunks=out_chunks, dtype=previous.dtype)  # type: ignore[no-any-return]
