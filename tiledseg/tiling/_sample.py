"""Deterministic, spatially stratified samples of a slide's storage chunks (for statistics).

Slide-level statistics (percentiles for normalisation, thresholds fitted on prepared planes)
need every tile to see the same numbers, not every pixel to be read: on a giga-pixel slide,
reading all pixels two or three times before segmenting costs about as much as segmenting.
:func:`sample_blocks` picks a fraction of the chunk grid that covers the slide evenly, so the
statistics are taken at full resolution (unlike a pyramid level, whose 2x2 means shrink the
tails that percentile clipping looks at) on a sample whose choice depends only on the slide's
shape and chunking -- never on the tile size, the number of workers or the order tasks finish.

The blocks are evenly spaced in raster order (stratified over rows), and each row's columns are
shifted by a golden-ratio step of the grid's width (stratified over columns: a plain raster
stride that divides the width would sample the same columns in every row, e.g. a vertical
stripe of the tissue).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from tiledseg.errors import ParameterError

__all__ = ["sample_blocks", "statistics_fraction"]

Window = tuple[tuple[int, int], tuple[int, int]]

#: The golden ratio.
_GOLDEN = (1.0 + math.sqrt(5.0)) / 2.0


def statistics_fraction(
    shape: Sequence[int], *, min_pixels: float = 2.0**24, min_fraction: float = 0.125
) -> float:
    """The fraction of a slide that ``statistics_sample="auto"`` reads: all of it below ``min_pixels``.

    Parameters
    ----------
    shape : (int, int)
        Slide ``(rows, cols)``.
    min_pixels : float
        Read at least this many pixels (default 2**24 = 16.8 Mpx, a 4096 x 4096 slide: ~16,800 pixels above a 99.9th percentile).
    min_fraction : float
        And at least this fraction of the slide.

    Returns
    -------
    float
        In ``(0, 1]``; ``1.0`` means every pixel.
    """
    rows, cols = (int(s) for s in shape)
    total = rows * cols
    if total <= 0:
        return 1.0
    return float(min(1.0, max(min_fraction, min_pixels / total)))


def sample_blocks(shape: Sequence[int], chunks: Sequence[int], *, fraction: float) -> list[Window]:
    """Chunk-aligned blocks covering about ``fraction`` of a slide, spread evenly, raster order.

    Parameters
    ----------
    shape : (int, int)
        Slide ``(rows, cols)``.
    chunks : (int, int)
        Storage chunk ``(rows, cols)``; blocks are whole chunks (clipped at the slide's edge).
    fraction : float
        In ``(0, 1]``: the share of the chunk grid to take (at least one block). ``1`` takes all.

    Returns
    -------
    list of ((int, int), (int, int))
        ``((row0, row1), (col0, col1))`` half-open windows, distinct, in raster order; the same
        for the same arguments.

    Raises
    ------
    ParameterError
        ``fraction`` outside ``(0, 1]``, or a non-positive shape or chunk size.

    Examples
    --------
    >>> len(sample_blocks((4096, 4096), (1024, 1024), fraction=0.25))
    4
    >>> len(sample_blocks((4096, 4096), (1024, 1024), fraction=1.0))
    16
    """
    rows, cols = (int(s) for s in shape)
    cy, cx = (int(c) for c in chunks)
    if rows <= 0 or cols <= 0:
        raise ParameterError(f"slide shape must be positive, got {(rows, cols)}")
    if cy <= 0 or cx <= 0:
        raise ParameterError(f"chunk size must be positive, got {(cy, cx)}")
    if not (math.isfinite(fraction) and 0.0 < fraction <= 1.0):
        raise ParameterError(f"statistics sample fraction must lie in (0, 1], got {fraction}")
    gy, gx = -(-rows // cy), -(-cols // cx)
    total = gy * gx
    wanted = min(total, max(1, math.ceil(fraction * total - 1e-9)))
    # Evenly spaced picks in raster order give every band of rows its share; shifting each
    # row's columns by a golden-ratio step keeps the columns balanced too (without it, a stride
    # that divides the grid's width would sample the same columns in every row).
    shift = 0
    if gx > 1:
        # the nearest step coprime with the width, so the shifts visit every column
        base = round(gx / _GOLDEN)
        shift = min((d for d in range(1, gx) if math.gcd(d, gx) == 1), key=lambda d: (abs(d - base), d))
    picked = set()
    for k in range(wanted):
        t = int((k + 0.5) * total / wanted)
        r, c = divmod(t, gx)
        picked.add((r, (c + r * shift) % gx))
    return [
        ((r * cy, min((r + 1) * cy, rows)), (c * cx, min((c + 1) * cx, cols)))
        for r, c in sorted(picked)
    ]
