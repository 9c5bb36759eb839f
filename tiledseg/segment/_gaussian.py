"""Gaussian smoothing of a float32 plane, bit for bit what ``scipy.ndimage.gaussian_filter`` gives.

The classical backends smooth every prepared plane once or twice and the watershed's blob
response once more, always with ``mode="nearest"``, ``truncate=4`` and float32 in and out.
``scipy.ndimage.gaussian_filter`` does this line by line with a scalar inner loop on float64 line
buffers; about a fifth of a classical tile's time went there. :func:`gaussian_filter` runs the
same arithmetic in a compiled kernel (numba) that works on whole rows at a time, so the inner
loops vectorise, and falls back to scipy when numba is missing or fails to compile.

Same arithmetic, so the same bits. SciPy 1.x (``scipy/ndimage/_filters.py`` and
``src/ni_filters.c::NI_Correlate1D``), for ``sigma > 1e-15``:

* weights ``phi = exp(-0.5 / sigma**2 * x**2)`` for ``x = -r .. r`` with
  ``r = int(truncate * sigma + 0.5)``, divided by ``phi.sum()`` (float64, NumPy's sum);
* axis 0 first, its result stored in the float32 output, then axis 1 on that output;
* a pass converts each line to float64, extends it by ``r`` copies of its end values
  (``mode="nearest"``) and, the kernel being symmetric, computes per sample
  ``acc = v[i] * w[0]`` then ``acc += (v[i - j] + v[i + j]) * w[j]`` for ``j = r, r - 1, ..., 1``
  (outermost pair first), stored as float32 (round to nearest).

The kernel keeps that order per sample (float64, no fast-math, so no fused multiply-add) and only
changes which samples are computed together: the axis-0 pass accumulates whole rows into a
float64 row buffer, the axis-1 pass whole padded rows. ``sigma <= 1e-15`` copies the plane, as
SciPy does.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage as ndi

from tiledseg.errors import ParameterError
from tiledseg.segment._checks import check_nonnegative

__all__ = ["gaussian_filter", "gaussian_weights"]

logger = logging.getLogger(__name__)

#: SciPy leaves an axis unfiltered when its sigma is not above this.
_SIGMA_EPS = 1e-15

_GAUSSIAN_KERNEL: dict[str, Any] = {}


def gaussian_weights(sigma: float, *, truncate: float = 4.0) -> NDArray[np.float64]:
    """One half of SciPy's normalised Gaussian kernel, centre first.

    Parameters
    ----------
    sigma : float
        Standard deviation in pixels, ``> 0``.
    truncate : float
        Half-width in standard deviations.

    Returns
    -------
    (r + 1,) ndarray of float64
        ``w[j]`` is the weight at offset ``±j``; ``r = int(truncate * sigma + 0.5)``. The full
        kernel is ``w[::-1]`` followed by ``w[1:]`` and sums to 1 (as SciPy normalises it).
    """
    radius = int(truncate * sigma + 0.5)
    # Spelled as scipy.ndimage._filters._gaussian_kernel1d (order 0) spells it: same bits.
    sigma2 = sigma * sigma
    x = np.arange(-radius, radius + 1)
    phi = np.exp(-0.5 / sigma2 * x**2)
    phi = phi / phi.sum()
    return np.ascontiguousarray(phi[radius:])


def _check_sigma(sigma: Any, truncate: Any) -> tuple[float, float]:
    return check_nonnegative("sigma", sigma, unit=" (pixels)"), check_nonnegative("truncate", truncate, unit=" (sigmas)")


def gaussian_filter(
    plane: NDArray[Any], sigma: float, *, truncate: float = 4.0
) -> NDArray[np.float32]:
    """Gaussian smoothing of a 2-D plane with nearest-edge borders, in float32.

    Exactly (bit for bit) ``scipy.ndimage.gaussian_filter(np.asarray(plane, np.float32),
    float(sigma), mode="nearest", truncate=truncate, output=np.float32)``, several times faster
    when numba is available (the compiled kernel is built on first use and cached on disk);
    SciPy itself runs otherwise.

    Parameters
    ----------
    plane : (Y, X) array_like
        Real values (any integer, bool or float dtype; converted to float32 first). Not modified.
    sigma : float
        Standard deviation in pixels, the same on both axes; ``0`` returns a float32 copy.
    truncate : float
        Kernel half-width in standard deviations (the kernel reads ``int(truncate * sigma + 0.5)``
        pixels on each side).

    Returns
    -------
    (Y, X) ndarray of float32
        A new C-contiguous array.

    Raises
    ------
    ParameterError
        ``plane`` is not 2-D or not real, or ``sigma`` / ``truncate`` is negative, NaN or infinite.

    Examples
    --------
    >>> import numpy as np
    >>> plane = np.zeros((5, 5), np.float32)
    >>> plane[2, 2] = 1.0
    >>> out = gaussian_filter(plane, 1.0)
    >>> out.dtype, out.shape, bool(out[2, 2] > out[2, 1] > out[2, 0] > 0)
    (dtype('float32'), (5, 5), True)
    """
    s, t = _check_sigma(sigma, truncate)
    arr = np.asarray(plane)
    if arr.ndim != 2:
        raise ParameterError(f"`plane` must be a 2-D (Y, X) array, got shape {arr.shape}")
    if arr.dtype.kind not in "biuf":
        raise ParameterError(f"`plane` must hold real numbers, got dtype {arr.dtype}")
    data = np.ascontiguousarray(arr, dtype=np.float32)
    if s <= _SIGMA_EPS:
        return data.copy() if np.may_share_memory(data, arr) else data
    kernel = _gaussian_kernel() if data.size else None
    if kernel is None:
        out: NDArray[np.float32] = ndi.gaussian_filter(
            data, s, mode="nearest", truncate=t, output=np.float32
        )
        return out
    result = np.empty(data.shape, dtype=np.float32)
    kernel(data, gaussian_weights(s, truncate=t), result)
    return result


def _gaussian_kernel() -> Any:
    """The compiled two-pass smoothing (numba), or None when numba is unavailable.

    ``kernel(image, weights, out)`` reads the C-contiguous float32 ``(Y, X)`` ``image`` (at
    least one pixel) and writes the smoothed plane into ``out`` (same shape, float32, not
    overlapping ``image``), ``weights`` being :func:`gaussian_weights`. Per output sample it does
    SciPy's float64 operations in SciPy's order (see the module docstring); the loops over a
    row's samples are innermost and independent, so LLVM vectorises them (no fast-math: no
    reassociation, no fused multiply-add). Row by row: axis 0 for the row, its float32 rounding
    (SciPy's intermediate), then axis 1 on it while it is still in cache.
    """
    if "fn" not in _GAUSSIAN_KERNEL:
        try:
            import numba

            @numba.njit(cache=True, nogil=True)  # type: ignore[misc,unused-ignore]
            def smooth(image: Any, weights: Any, out: Any) -> None:
                height, width = image.shape
                radius = weights.size - 1
                w0 = weights[0]
                acc = np.empty(width, dtype=np.float64)
                line = np.empty(width + 2 * radius, dtype=np.float64)
                centre = line[radius : radius + width]
                last = height - 1
                for y in range(height):
                    # Axis 0 for row y: rows y - j and y + j (clamped: "nearest") enter the
                    # float64 row buffer as one pair per j, outermost pair first. Four pairs per
                    # sweep of the buffer, then two, then one (same order per sample, a quarter
                    # of the loads and stores of ``acc``).
                    row = image[y]
                    for x in range(width):
                        acc[x] = np.float64(row[x]) * w0
                    j = radius
                    while j >= 4:
                        a1 = image[max(y - j, 0)]
                        b1 = image[min(y + j, last)]
                        a2 = image[max(y - j + 1, 0)]
                        b2 = image[min(y + j - 1, last)]
                        a3 = image[max(y - j + 2, 0)]
                        b3 = image[min(y + j - 2, last)]
                        a4 = image[max(y - j + 3, 0)]
                        b4 = image[min(y + j - 3, last)]
                        w1, w2, w3, w4 = weights[j], weights[j - 1], weights[j - 2], weights[j - 3]
                        for x in range(width):
                            v = acc[x] + (np.float64(a1[x]) + np.float64(b1[x])) * w1
                            v = v + (np.float64(a2[x]) + np.float64(b2[x])) * w2
                            v = v + (np.float64(a3[x]) + np.float64(b3[x])) * w3
                            acc[x] = v + (np.float64(a4[x]) + np.float64(b4[x])) * w4
                        j -= 4
                    if j >= 2:
                        a1 = image[max(y - j, 0)]
                        b1 = image[min(y + j, last)]
                        a2 = image[max(y - j + 1, 0)]
                        b2 = image[min(y + j - 1, last)]
                        w1, w2 = weights[j], weights[j - 1]
                        for x in range(width):
                            v = acc[x] + (np.float64(a1[x]) + np.float64(b1[x])) * w1
                            acc[x] = v + (np.float64(a2[x]) + np.float64(b2[x])) * w2
                        j -= 2
                    if j == 1:
                        a1 = image[max(y - 1, 0)]
                        b1 = image[min(y + 1, last)]
                        w1 = weights[1]
                        for x in range(width):
                            acc[x] += (np.float64(a1[x]) + np.float64(b1[x])) * w1
                    # Row y of SciPy's float32 intermediate is complete: axis 1 runs on it at
                    # once, from a float64 line padded with ``radius`` copies of each end value
                    # (the intermediate never goes through memory).
                    for x in range(width):
                        centre[x] = np.float64(np.float32(acc[x]))
                    for k in range(radius):
                        line[k] = centre[0]
                        line[radius + width + k] = centre[width - 1]
                    for x in range(width):
                        acc[x] = centre[x] * w0
                    j = radius
                    while j >= 4:
                        a1 = line[radius - j : radius - j + width]
                        b1 = line[radius + j : radius + j + width]
                        a2 = line[radius - j + 1 : radius - j + 1 + width]
                        b2 = line[radius + j - 1 : radius + j - 1 + width]
                        a3 = line[radius - j + 2 : radius - j + 2 + width]
                        b3 = line[radius + j - 2 : radius + j - 2 + width]
                        a4 = line[radius - j + 3 : radius - j + 3 + width]
                        b4 = line[radius + j - 3 : radius + j - 3 + width]
                        w1, w2, w3, w4 = weights[j], weights[j - 1], weights[j - 2], weights[j - 3]
                        for x in range(width):
                            v = acc[x] + (a1[x] + b1[x]) * w1
                            v = v + (a2[x] + b2[x]) * w2
                            v = v + (a3[x] + b3[x]) * w3
                            acc[x] = v + (a4[x] + b4[x]) * w4
                        j -= 4
                    if j >= 2:
                        a1 = line[radius - j : radius - j + width]
                        b1 = line[radius + j : radius + j + width]
                        a2 = line[radius - j + 1 : radius - j + 1 + width]
                        b2 = line[radius + j - 1 : radius + j - 1 + width]
                        w1, w2 = weights[j], weights[j - 1]
                        for x in range(width):
                            v = acc[x] + (a1[x] + b1[x]) * w1
                            acc[x] = v + (a2[x] + b2[x]) * w2
                        j -= 2
                    if j == 1:
                        a1 = line[radius - 1 : radius - 1 + width]
                        b1 = line[radius + 1 : radius + 1 + width]
                        w1 = weights[1]
                        for x in range(width):
                            acc[x] += (a1[x] + b1[x]) * w1
                    dest = out[y]
                    for x in range(width):
                        dest[x] = np.float32(acc[x])

            _GAUSSIAN_KERNEL["fn"] = smooth
        except Exception:  # numba missing or failing: SciPy
            logger.debug("numba unavailable, Gaussian smoothing runs in SciPy", exc_info=True)
            _GAUSSIAN_KERNEL["fn"] = None
    return _GAUSSIAN_KERNEL["fn"]
