"""Mesmer's pre-processing with slide-level statistics, and its deep-watershed post-processing.

Pre-processing (DeepCell's ``mesmer_preprocess``: ``percentile_threshold`` then
``histogram_normalization``; Greenwald et al., *Nat. Biotechnol.* 2022) is, per image and
channel:

1. clip at the 99.9th percentile of the *non-zero* pixels;
2. ``rescale_intensity`` to ``[0, 1]`` with the image's own minimum and maximum;
3. CLAHE (:func:`skimage.exposure.equalize_adapthist`, ``kernel_size=128`` at 0.5 µm/px,
   ``clip_limit=0.01``, 256 bins), which again stretches its input and its output by the image's
   own extremes.

Steps 1--2 and the two stretches inside step 3 depend on the whole image: run per tile they give
every tile a different normalisation. tiledseg therefore computes the step-1 clip value once per
slide (:func:`percentile_nonzero_from_histogram` on the slide histogram of the prepared plane,
from the backend's ``fit``), rescales with the slide range ``[0, clip]``, and runs the CLAHE
kernel of scikit-image on grey levels fixed by that range instead of the tile's
(:func:`histogram_normalization`). What is left tile-dependent is CLAHE's own locality: a pixel
reads its contextual regions within 1.5 kernels (96 µm at the model's 0.5 µm/px), so the backend's
halo covers one kernel and the seam test measures the rest. On an image that contains both 0 and
1 the result is an affine map of the reference's (asserted in the tests against an independent
re-statement of DeepCell's formulas).

Post-processing is DeepCell's ``deep_watershed`` (deepcell-toolbox 0.12): markers are the
``h``-maxima of the (optionally smoothed) inner-distance prediction within a disk of ``radius``,
labelled; a marker-controlled watershed of the negated (smoothed) interior probability inside
``interior > interior_threshold`` grows them into objects; optional edge erosion, removal of
objects smaller than ``small_objects_threshold`` pixels, filling of holes smaller than
``fill_holes_threshold`` pixels, then sequential relabelling. Mesmer's defaults are
:data:`MESMER_WHOLE_CELL_DEFAULTS` and :data:`MESMER_NUCLEAR_DEFAULTS` (``Mesmer.predict``).
The ``h``-maxima are scikit-image's, bit for bit, with the grey reconstruction compiled
(:func:`h_maxima_float`): scikit-image's sorts every pixel and took most of the time.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage as ndi
from skimage.exposure import equalize_adapthist
from skimage.morphology import disk, h_maxima
from skimage.segmentation import find_boundaries, relabel_sequential, watershed

from tiledseg.segment._protocol import histogram_percentile

__all__ = [
    "MESMER_NUCLEAR_DEFAULTS",
    "MESMER_WHOLE_CELL_DEFAULTS",
    "deep_watershed",
    "fill_holes",
    "h_maxima_float",
    "histogram_normalization",
    "percentile_nonzero_from_histogram",
    "remove_small_labels",
]

logger = logging.getLogger(__name__)

#: ``Mesmer.predict`` defaults for the whole-cell compartment (deepcell 0.12).
MESMER_WHOLE_CELL_DEFAULTS: dict[str, float] = {
    "maxima_threshold": 0.075,
    "maxima_smooth": 0.0,
    "interior_threshold": 0.2,
    "interior_smooth": 2.0,
    "small_objects_threshold": 15,
    "fill_holes_threshold": 15,
    "radius": 2,
}

#: ``Mesmer.predict`` defaults for the nuclear compartment (deepcell 0.12).
MESMER_NUCLEAR_DEFAULTS: dict[str, float] = {
    "maxima_threshold": 0.1,
    "maxima_smooth": 0.0,
    "interior_threshold": 0.2,
    "interior_smooth": 2.0,
    "small_objects_threshold": 15,
    "fill_holes_threshold": 15,
    "radius": 2,
}

#: Grey levels scikit-image's CLAHE works with (``skimage.exposure._adapthist.NR_OF_GRAY``).
_NR_OF_GRAY = 2**14


def percentile_nonzero_from_histogram(
    counts: NDArray[np.integer[Any]], edges: NDArray[np.floating[Any]], q: float
) -> float:
    """The ``q``-th percentile of the non-zero pixels, from a slide histogram.

    The slide-level counterpart of DeepCell's ``np.percentile(x[np.nonzero(x)], q)``. Exact zeros
    cannot be told apart from small values inside the first bin, so the first bin (``[0, 1/B)``
    for prepared planes) counts as "zero"; values inside a bin are taken as uniform.

    Parameters
    ----------
    counts : (B,) ndarray of int
        Histogram counts.
    edges : (B + 1,) ndarray of float
        Bin edges, increasing.
    q : float
        Percentile in ``[0, 100]``.

    Returns
    -------
    float
        The percentile, or ``nan`` when no pixel lies above the first bin (a blank channel, which
        the reference leaves unclipped and all-zero).
    """
    counts = np.asarray(counts, dtype=np.float64)
    edges = np.asarray(edges, dtype=np.float64)
    if counts.ndim != 1 or edges.shape != (counts.size + 1,):
        raise ValueError(
            f"histogram needs B counts and B + 1 edges, got {counts.shape} and {edges.shape}"
        )
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"`q` must lie in [0, 100], got {q}")
    upper = counts[1:]
    total = float(upper.sum())
    if total <= 0:
        return float("nan")
    return histogram_percentile(upper, edges[1:], q)


def _clahe_kernel() -> Any:
    try:
        from skimage.exposure._adapthist import _clahe
    except ImportError:  # pragma: no cover - depends on scikit-image internals
        return None
    return _clahe


def histogram_normalization(
    plane: NDArray[np.floating[Any]],
    *,
    kernel_size: int = 128,
    clip_limit: float = 0.01,
    nbins: int = 256,
) -> NDArray[np.float32]:
    """CLAHE on grey levels fixed by the slide range ``[0, 1]`` (not by the tile's extremes).

    Parameters
    ----------
    plane : (Y, X) ndarray of float
        Values already scaled to ``[0, 1]`` with slide-level bounds; clipped to it here.
    kernel_size : int
        CLAHE contextual region edge in pixels (Mesmer: 128 at 0.5 µm/px).
    clip_limit : float
        CLAHE clip limit (scikit-image's default 0.01, which Mesmer uses).
    nbins : int
        Histogram bins (256, scikit-image's default).

    Returns
    -------
    (Y, X) ndarray of float32
        In ``[0, 1]``: grey level ``g`` of scikit-image's CLAHE becomes ``g / (2**14 - 1)``.
    """
    x = np.clip(np.asarray(plane, dtype=np.float64), 0.0, 1.0)
    kernel = _clahe_kernel()
    if kernel is None:  # pragma: no cover - depends on scikit-image internals
        logger.warning(
            "scikit-image's CLAHE kernel is not importable; falling back to equalize_adapthist, "
            "whose per-tile stretch makes tiles normalise differently"
        )
        return np.asarray(equalize_adapthist(x, kernel_size=kernel_size, clip_limit=clip_limit,
                                             nbins=nbins), dtype=np.float32)
    # The same two roundings as equalize_adapthist (img_as_uint, then rescale to 2**14 levels),
    # with the range fixed to [0, 1] instead of the image's min and max.
    as_uint = np.round(x * 65535.0)
    levels = np.round(as_uint * ((_NR_OF_GRAY - 1) / 65535.0)).astype(np.uint16)
    size = [int(kernel_size)] * 2
    out = kernel(levels, size, clip_limit, nbins)
    return (np.asarray(out, dtype=np.float32) / np.float32(_NR_OF_GRAY - 1)).astype(np.float32)


def remove_small_labels(
    labels: NDArray[np.integer[Any]], min_size: int
) -> NDArray[np.integer[Any]]:
    """Set labels with fewer than ``min_size`` pixels to 0 (a new array)."""
    out = np.array(labels, copy=True)
    if min_size <= 0 or out.size == 0:
        return out
    sizes = np.bincount(out.ravel().astype(np.int64, copy=False))
    small = sizes < min_size
    small[0] = False
    if small.any():
        out[small[out]] = 0
    return out


def fill_holes(labels: NDArray[np.integer[Any]], size: int) -> NDArray[np.integer[Any]]:
    """Fill holes of fewer than ``size`` pixels enclosed by a single label (a new array).

    DeepCell fills, for objects with holes, small background components of the object's bounding
    box; here only components enclosed by the object are filled, which leaves neighbouring cells
    that merely touch the bounding box alone.
    """
    out = np.array(labels, copy=True)
    if size <= 0:
        return out
    for index, sl in enumerate(ndi.find_objects(out.astype(np.int64, copy=False))):
        if sl is None:
            continue
        value = index + 1
        obj = out[sl] == value
        holes = ndi.binary_fill_holes(obj) & ~obj
        if not holes.any():
            continue
        hole_labels, n = ndi.label(holes)
        hole_sizes = np.bincount(hole_labels.ravel(), minlength=n + 1)
        fill = (hole_sizes < size) & (np.arange(n + 1) > 0)
        patch = out[sl]
        patch[fill[hole_labels]] = value
    return out


_RECONSTRUCT: dict[str, Any] = {}


def _reconstruct_kernel() -> Any:
    """The compiled grey reconstruction by dilation (numba), or None when numba is unavailable.

    ``kernel(seed, mask, dy, dx)`` overwrites the 2-D float64 ``seed`` (``<= mask``) with its
    reconstruction by dilation under ``mask`` for the neighbourhood of offsets ``(dy, dx)``
    (symmetric, without ``(0, 0)``): Vincent's hybrid algorithm (IEEE TIP 2, 1993), a forward and
    a backward raster scan, then a FIFO propagation from the pixels the scans could not settle.
    The reconstruction is unique and every output is a value of ``seed`` or ``mask``, so the
    result is exactly scikit-image's ``reconstruction(..., method="dilation")``, without the
    global sort that makes that one slow.
    """
    if "fn" not in _RECONSTRUCT:
        try:
            import numba

            @numba.njit(cache=True, nogil=True)  # type: ignore[misc,unused-ignore]
            def reconstruct(seed: Any, mask: Any, dy: Any, dx: Any) -> None:  # pragma: no cover
                ny, nx = seed.shape
                k = dy.size
                for y in range(ny):  # forward scan: neighbours before p in raster order
                    for x in range(nx):
                        v = seed[y, x]
                        for j in range(k):
                            if dy[j] < 0 or (dy[j] == 0 and dx[j] < 0):
                                yy, xx = y + dy[j], x + dx[j]
                                if 0 <= yy < ny and 0 <= xx < nx and seed[yy, xx] > v:
                                    v = seed[yy, xx]
                        seed[y, x] = min(v, mask[y, x])
                n = ny * nx
                queue = np.empty(max(n, 1), np.int64)
                queued = np.zeros(max(n, 1), np.bool_)
                head = 0
                count = 0
                for y in range(ny - 1, -1, -1):  # backward scan: neighbours after p
                    for x in range(nx - 1, -1, -1):
                        v = seed[y, x]
                        for j in range(k):
                            if dy[j] > 0 or (dy[j] == 0 and dx[j] > 0):
                                yy, xx = y + dy[j], x + dx[j]
                                if 0 <= yy < ny and 0 <= xx < nx and seed[yy, xx] > v:
                                    v = seed[yy, xx]
                        v = min(v, mask[y, x])
                        seed[y, x] = v
                        for j in range(k):
                            if dy[j] > 0 or (dy[j] == 0 and dx[j] > 0):
                                yy, xx = y + dy[j], x + dx[j]
                                if (0 <= yy < ny and 0 <= xx < nx and seed[yy, xx] < v
                                        and seed[yy, xx] < mask[yy, xx]):
                                    p = y * nx + x
                                    queue[(head + count) % n] = p
                                    queued[p] = True
                                    count += 1
                                    break
                while count > 0:  # propagation
                    p = queue[head]
                    head = (head + 1) % n
                    count -= 1
                    queued[p] = False
                    y, x = p // nx, p % nx
                    v = seed[y, x]
                    for j in range(k):
                        yy, xx = y + dy[j], x + dx[j]
                        if 0 <= yy < ny and 0 <= xx < nx:
                            w = seed[yy, xx]
                            m = mask[yy, xx]
                            if w < v and w != m:
                                seed[yy, xx] = min(v, m)
                                q = yy * nx + xx
                                if not queued[q]:
                                    queue[(head + count) % n] = q
                                    queued[q] = True
                                    count += 1

            _RECONSTRUCT["fn"] = reconstruct
        except Exception:  # noqa: BLE001  numba missing or failing: scikit-image
            _RECONSTRUCT["fn"] = None
    return _RECONSTRUCT["fn"]


def h_maxima_float(
    image: NDArray[np.float64], h: float, *, footprint: NDArray[Any]
) -> NDArray[np.uint8]:
    """:func:`skimage.morphology.h_maxima` of a float64 image, with a compiled reconstruction.

    The same steps as scikit-image (``image - h - resolution`` reconstructed by dilation under
    ``image``; maxima where the residue is ``>= h``) and the same result, bit for bit; the grey
    reconstruction, which is most of Mesmer's post-processing time in scikit-image, runs in
    :func:`_reconstruct_kernel`. Falls back to scikit-image for what the kernel does not cover
    (no numba, ``h <= 0``, non-2-D or asymmetric footprints).

    Parameters
    ----------
    image : (Y, X) ndarray of float64
        Not modified.
    h : float
        Minimal height of a maximum above its surroundings (``> 0``).
    footprint : (2r+1, 2r+1) ndarray
        Neighbourhood (symmetric, e.g. :func:`skimage.morphology.disk`).

    Returns
    -------
    (Y, X) ndarray of uint8
        1 at the ``h``-maxima, 0 elsewhere.

    Raises
    ------
    ValueError
        ``image`` holds NaN or infinite values.
    """
    img = np.asarray(image)
    if not bool(np.isfinite(img).all()):
        # scikit-image's reconstruction crashes the process (segfault) on NaN
        raise ValueError("h-maxima need finite values; the model's inner-distance map has NaN or inf")
    fp = np.asarray(footprint, dtype=bool)
    kernel = _reconstruct_kernel()
    simple = (
        kernel is not None
        and img.dtype == np.float64
        and img.ndim == 2
        and fp.ndim == 2
        and fp.shape[0] % 2 == 1
        and fp.shape[1] % 2 == 1
        and np.array_equal(fp, fp[::-1, ::-1])
        and float(h) > 0
    )
    if not simple:
        return np.asarray(h_maxima(img, h, footprint=footprint), dtype=np.uint8)  # type: ignore[no-untyped-call]
    if h > np.ptp(img):
        return np.zeros(img.shape, dtype=np.uint8)
    resolution = 2 * np.finfo(img.dtype).resolution * np.abs(img)
    rec = img - h - resolution
    cy, cx = fp.shape[0] // 2, fp.shape[1] // 2
    dy, dx = np.nonzero(fp)
    keep = (dy != cy) | (dx != cx)
    kernel(rec, img, (dy[keep] - cy).astype(np.int64), (dx[keep] - cx).astype(np.int64))
    residue = img - rec
    return (residue >= h).astype(np.uint8)


def deep_watershed(
    maxima: NDArray[np.floating[Any]],
    interior: NDArray[np.floating[Any]],
    *,
    radius: int = 2,
    maxima_threshold: float = 0.1,
    interior_threshold: float = 0.2,
    maxima_smooth: float = 0.0,
    interior_smooth: float = 2.0,
    small_objects_threshold: int = 15,
    fill_holes_threshold: int = 15,
    label_erosion: int = 0,
    pixel_expansion: int | None = None,
) -> NDArray[np.uint32]:
    """DeepCell's deep watershed: inner-distance maxima as markers, interior as landscape.

    Parameters
    ----------
    maxima : (Y, X) ndarray of float
        Inner-distance prediction (Mesmer ``semantic_0`` / ``semantic_2``).
    interior : (Y, X) ndarray of float
        Interior probability (channel 1 of Mesmer ``semantic_1`` / ``semantic_3``).
    radius : int
        Disk radius of the ``h``-maxima footprint.
    maxima_threshold : float
        ``h`` of the ``h``-maxima.
    interior_threshold : float
        Foreground: ``interior > interior_threshold``.
    maxima_smooth, interior_smooth : float
        Gaussian sigmas in pixels (0 = none).
    small_objects_threshold : int
        Objects with fewer pixels are removed.
    fill_holes_threshold : int
        Enclosed holes with fewer pixels are filled.
    label_erosion : int
        Pixels eroded from every object's edge.
    pixel_expansion : int, optional
        Grey dilation of the interior map by a square of ``2 * n + 1``.

    Returns
    -------
    (Y, X) ndarray of uint32
        Labels ``1..N`` in raster order of their markers, ``0`` = background.
    """
    if maxima.shape != interior.shape or maxima.ndim != 2:
        raise ValueError(
            f"`maxima` {maxima.shape} and `interior` {interior.shape} must be equal 2-D shapes"
        )
    mx = np.asarray(maxima, dtype=np.float64)
    it = np.asarray(interior, dtype=np.float64)
    if maxima_smooth:
        mx = ndi.gaussian_filter(mx, maxima_smooth)
    if interior_smooth:
        it = ndi.gaussian_filter(it, interior_smooth)
    if pixel_expansion:
        it = ndi.grey_dilation(it, size=(2 * pixel_expansion + 1,) * 2)
    markers = h_maxima_float(mx, maxima_threshold, footprint=disk(int(radius)))  # type: ignore[no-untyped-call]
    markers, _ = ndi.label(markers)
    labels = watershed(  # type: ignore[no-untyped-call]
        -it, markers, mask=it > interior_threshold, watershed_line=False
    )
    if label_erosion:
        for _ in range(int(label_erosion)):
            labels[find_boundaries(labels, mode="inner")] = 0  # type: ignore[no-untyped-call]
    if small_objects_threshold:
        labels = remove_small_labels(labels, int(small_objects_threshold))
    if fill_holes_threshold > 0:
        labels = fill_holes(labels, int(fill_holes_threshold))
    relabelled, _, _ = relabel_sequential(labels)  # type: ignore[no-untyped-call]
    return np.asarray(relabelled, dtype=np.uint32)


def compartment_kwargs(
    compartment: str, overrides: Mapping[str, Any] | None
) -> dict[str, Any]:
    """Mesmer's post-processing defaults for ``compartment`` updated with ``overrides``."""
    base = MESMER_WHOLE_CELL_DEFAULTS if compartment == "whole-cell" else MESMER_NUCLEAR_DEFAULTS
    merged: dict[str, Any] = dict(base)
    for key, value in (overrides or {}).items():
        if key not in base and key not in ("label_erosion", "pixel_expansion"):
            raise KeyError(key)
        merged[key] = value
    return merged
