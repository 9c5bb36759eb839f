"""Statistics samples of the chunk grid: deterministic, chunk-aligned, spread evenly."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tiledseg.errors import ParameterError
from tiledseg.tiling import sample_blocks, statistics_fraction


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(1, 900),
    cols=st.integers(1, 900),
    cy=st.integers(16, 128),
    cx=st.integers(16, 128),
    fraction=st.floats(0.01, 1.0),
)
def test_blocks_are_distinct_whole_chunks_inside_the_slide(
    rows: int, cols: int, cy: int, cx: int, fraction: float
) -> None:
    blocks = sample_blocks((rows, cols), (cy, cx), fraction=fraction)
    gy, gx = -(-rows // cy), -(-cols // cx)
    assert len(blocks) == min(gy * gx, max(1, math.ceil(fraction * gy * gx - 1e-9)))
    assert len(set(blocks)) == len(blocks)
    assert blocks == sorted(blocks)  # raster order
    for (r0, r1), (c0, c1) in blocks:
        assert r0 % cy == 0 and c0 % cx == 0
        assert r1 == min(r0 + cy, rows) and c1 == min(c0 + cx, cols)
    assert blocks == sample_blocks((rows, cols), (cy, cx), fraction=fraction)


def test_full_fraction_takes_every_chunk() -> None:
    blocks = sample_blocks((100, 70), (32, 32), fraction=1.0)
    assert len(blocks) == 4 * 3
    covered = np.zeros((100, 70), int)
    for (r0, r1), (c0, c1) in blocks:
        covered[r0:r1, c0:c1] += 1
    assert (covered == 1).all()


@pytest.mark.parametrize(("grid", "fraction"), [((8, 8), 0.25), ((32, 32), 0.125), ((16, 16), 0.125), ((12, 20), 0.2)])
def test_every_band_of_rows_and_columns_gets_its_share(grid: tuple[int, int], fraction: float) -> None:
    gy, gx = grid
    blocks = sample_blocks((gy * 10, gx * 10), (10, 10), fraction=fraction)
    picked = np.zeros(grid, int)
    for (r0, _), (c0, _) in blocks:
        picked[r0 // 10, c0 // 10] = 1
    per_row, per_col = picked.sum(axis=1), picked.sum(axis=0)
    # even spread: no row or column more than one block from the mean (a raster stride that
    # divides the width would give whole columns of zeros)
    assert per_row.max() - per_row.min() <= 1
    assert per_col.max() - per_col.min() <= 1
    # and each quarter of the slide holds about a quarter of the sample
    quarters = [picked[: gy // 2, : gx // 2], picked[: gy // 2, gx // 2 :], picked[gy // 2 :, : gx // 2], picked[gy // 2 :, gx // 2 :]]
    shares = np.array([q.sum() for q in quarters]) / picked.sum()
    assert np.all(np.abs(shares - 0.25) < 0.1)


def test_auto_fraction() -> None:
    assert statistics_fraction((4096, 4096)) == 1.0  # 16.8 Mpx: every pixel
    assert statistics_fraction((1000, 1000)) == 1.0
    assert statistics_fraction((8192, 8192)) == 0.25
    assert statistics_fraction((32768, 32768)) == 0.125
    assert statistics_fraction((32768, 32768), min_fraction=0.05, min_pixels=1e6) == 0.05


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5, float("nan")])
def test_bad_fraction_is_named(fraction: float) -> None:
    with pytest.raises(ParameterError, match="fraction"):
        sample_blocks((100, 100), (10, 10), fraction=fraction)


def test_bad_shape_and_chunks() -> None:
    with pytest.raises(ParameterError, match="shape"):
        sample_blocks((0, 100), (10, 10), fraction=0.5)
    with pytest.raises(ParameterError, match="chunk"):
        sample_blocks((100, 100), (0, 10), fraction=0.5)
