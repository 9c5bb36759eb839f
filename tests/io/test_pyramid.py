from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tiledseg.io._pyramid import (
    downsample_labels_block,
    downsample_mean_block,
    level_shapes,
    pyramid_level,
)


def _reference_mean(image: np.ndarray) -> np.ndarray:
    rows, cols = image.shape[-2:]
    out = np.empty(image.shape[:-2] + ((rows + 1) // 2, (cols + 1) // 2))
    for r in range(out.shape[-2]):
        for c in range(out.shape[-1]):
            out[..., r, c] = image[..., 2 * r : 2 * r + 2, 2 * c : 2 * c + 2].astype(np.float64).mean(axis=(-2, -1))
    return out


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 9),
    cols=st.integers(1, 9),
    dtype=st.sampled_from([np.float32, np.float64, np.uint16, np.int32]),
    seed=st.integers(0, 2**16),
)
def test_mean_block_matches_reference(rows: int, cols: int, dtype: type, seed: int) -> None:
    image = (np.random.default_rng(seed).random((2, rows, cols)) * 1000).astype(dtype)
    out = downsample_mean_block(image)
    ref = _reference_mean(image)
    assert out.dtype == image.dtype
    if np.issubdtype(image.dtype, np.integer):
        np.testing.assert_array_equal(out, np.rint(ref).astype(dtype))
    else:
        np.testing.assert_allclose(out, ref, rtol=1e-5)


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 9), cols=st.integers(1, 9), seed=st.integers(0, 2**16))
def test_label_block_values_come_from_their_block(rows: int, cols: int, seed: int) -> None:
    labels = np.random.default_rng(seed).integers(0, 4, size=(rows, cols)).astype(np.uint32)
    out = downsample_labels_block(labels)
    assert out.shape == ((rows + 1) // 2, (cols + 1) // 2)
    assert out.dtype == np.uint32
    for r in range(out.shape[0]):
        for c in range(out.shape[1]):
            block = labels[2 * r : 2 * r + 2, 2 * c : 2 * c + 2].ravel()
            values, counts = np.unique(block, return_counts=True)
            assert out[r, c] in values[counts == counts.max()]


def _mode_by_counting(labels: np.ndarray) -> np.ndarray:  # type: ignore[type-arg]
    """Reference: count all 16 pairs of each padded 2x2 block; ties to (tl, tr, bl, br) order."""
    rows, cols = labels.shape[-2:]
    pad = [(0, 0)] * (labels.ndim - 2) + [(0, rows % 2), (0, cols % 2)]
    padded = np.pad(labels, pad, mode="edge")
    quads = np.stack([padded[..., 0::2, 0::2], padded[..., 0::2, 1::2], padded[..., 1::2, 0::2], padded[..., 1::2, 1::2]])
    votes = (quads[:, None] == quads[None, :]).sum(axis=1)
    return np.take_along_axis(quads, np.argmax(votes, axis=0)[None], axis=0)[0]


@settings(max_examples=60, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 3), st.integers(1, 12), st.integers(1, 12)),
    values=st.integers(1, 5),
    seed=st.integers(0, 2**16),
)
def test_label_mode_ties_go_to_the_first_value_in_block_order(shape: tuple[int, int, int], values: int, seed: int) -> None:
    labels = np.random.default_rng(seed).integers(0, values, size=shape).astype(np.uint32)
    assert np.array_equal(downsample_labels_block(labels), _mode_by_counting(labels))
    assert np.array_equal(downsample_labels_block(labels[0]), _mode_by_counting(labels[0]))


def test_level_shapes() -> None:
    assert level_shapes((1000, 300), (256, 256)) == [(1000, 300), (500, 150), (250, 75)]
    assert level_shapes((10, 10), (1024, 1024)) == [(10, 10)]


@pytest.mark.parametrize("labels", [False, True])
def test_dask_level_equals_whole_block(labels: bool) -> None:
    image = np.random.default_rng(0).integers(0, 9, size=(2, 37, 51)).astype(np.uint16)
    lazy = da.from_array(image, chunks=(1, 10, 7))
    out = pyramid_level(lazy, chunks=(5, 6), labels=labels)
    func = downsample_labels_block if labels else downsample_mean_block
    np.testing.assert_array_equal(out.compute(), func(image))
    assert out.chunks[-2][0] == 5 and out.chunks[-1][0] == 6
