"""The compiled seeded watershed and hole filling against scikit-image."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage as ndi
from skimage.morphology import remove_small_holes
from skimage.segmentation import watershed

import tiledseg.segment._basins as basins
from tiledseg.segment._basins import fill_small_holes, seeded_watershed
from tiledseg.segment.watershed import segment_nuclei

pytest.importorskip("numba")


def test_the_compiled_kernels_are_the_ones_running() -> None:
    """With numba installed the kernels compile (a failure would silently fall back to the
    library calls, which the equality tests below could not tell apart)."""
    kernels = basins._kernels()
    assert kernels is not None and {"heap_flood", "fill_holes"} <= set(kernels)


def _case(seed: int, shape: tuple[int, int], n_markers: int, fill: float) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    # distinct elevations: the result is then fully determined, whatever the heap does on ties
    landscape = ndi.gaussian_filter(rng.random(shape), 2.0) + rng.random(shape) * 1e-6
    mask = ndi.gaussian_filter(rng.random(shape), 1.5) < np.quantile(ndi.gaussian_filter(rng.random(shape), 1.5), fill)
    markers = np.zeros(shape, np.int32)
    rows = rng.integers(0, shape[0], n_markers)
    cols = rng.integers(0, shape[1], n_markers)
    markers[rows, cols] = rng.permutation(np.arange(1, n_markers + 1))
    return landscape.astype(np.float32), markers, mask


@pytest.mark.parametrize("shape", [(1, 1), (1, 40), (40, 1), (7, 9), (96, 131)])
@pytest.mark.parametrize("fill", [0.3, 0.7, 1.0])
def test_seeded_watershed_equals_scikit_image_without_ties(shape: tuple[int, int], fill: float) -> None:
    for seed in range(3):
        landscape, markers, mask = _case(seed, shape, max(1, shape[0] * shape[1] // 150), fill)
        before = (landscape.copy(), markers.copy(), mask.copy())
        got = seeded_watershed(landscape, markers, mask)
        expected = watershed(landscape, markers=markers, mask=mask)
        assert got.dtype == np.int32
        np.testing.assert_array_equal(got, expected)
        for a, b in zip((landscape, markers, mask), before, strict=True):
            np.testing.assert_array_equal(a, b)  # inputs untouched


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    h=st.integers(1, 30),
    w=st.integers(1, 30),
    levels=st.integers(2, 6),
    n=st.integers(1, 8),
)
def test_seeded_watershed_on_plateaus_stays_a_valid_flood(seed: int, h: int, w: int, levels: int, n: int) -> None:
    """With ties (a few elevation levels) the labels may differ from scikit-image's only where
    equal elevations meet; they always cover the same pixels and keep every region connected to
    its marker."""
    rng = np.random.default_rng(seed)
    landscape = rng.integers(0, levels, (h, w)).astype(np.float64)
    mask = rng.random((h, w)) < 0.8
    markers = np.zeros((h, w), np.int64)
    markers.flat[rng.choice(h * w, size=min(n, h * w), replace=False)] = np.arange(1, min(n, h * w) + 1)
    got = seeded_watershed(landscape, markers, mask)
    expected = watershed(landscape, markers=markers, mask=mask)
    np.testing.assert_array_equal(got > 0, expected > 0)
    kept = markers * mask
    np.testing.assert_array_equal(got[kept > 0], kept[kept > 0])
    for label in np.unique(got[got > 0]):
        parts, count = ndi.label(got == label)
        assert count == 1, f"label {label} is split in {count} pieces"


def test_seeded_watershed_drops_markers_outside_the_mask_and_handles_empty_input() -> None:
    landscape = np.zeros((5, 6), np.float32)
    markers = np.zeros((5, 6), np.int32)
    markers[0, 0] = 1
    markers[4, 5] = 2
    mask = np.ones((5, 6), bool)
    mask[0, 0] = False
    got = seeded_watershed(landscape, markers, mask)
    assert set(np.unique(got).tolist()) == {0, 2} and got[0, 0] == 0 and (got[mask] == 2).all()
    np.testing.assert_array_equal(got, watershed(landscape, markers=markers, mask=mask))
    empty = np.zeros((0, 4))
    assert seeded_watershed(empty, empty.astype(np.int32), empty.astype(bool)).shape == (0, 4)
    no_markers = seeded_watershed(landscape, np.zeros((5, 6), np.int32), mask)
    assert not no_markers.any()


def test_seeded_watershed_errors() -> None:
    with pytest.raises(ValueError, match="one shape"):
        seeded_watershed(np.zeros((3, 3)), np.zeros((3, 4), np.int32), np.ones((3, 3), bool))
    with pytest.raises(TypeError, match="integer"):
        seeded_watershed(np.zeros((3, 3)), np.zeros((3, 3)), np.ones((3, 3), bool))


def test_library_fallbacks_give_the_same_results(monkeypatch: pytest.MonkeyPatch) -> None:
    landscape, markers, mask = _case(7, (64, 80), 30, 0.6)
    compiled = seeded_watershed(landscape, markers, mask)
    holes = ndi.gaussian_filter(np.random.default_rng(1).random((64, 80)), 1.0) > 0.5
    filled = fill_small_holes(holes, max_size=12)
    monkeypatch.setattr(basins, "_KERNELS", {"ready": None})
    np.testing.assert_array_equal(seeded_watershed(landscape, markers, mask), compiled)
    np.testing.assert_array_equal(fill_small_holes(holes, max_size=12), filled)
    with pytest.raises(RuntimeError, match="numba"):
        seeded_watershed(landscape, markers, mask, compiled=True)
    with pytest.raises(RuntimeError, match="numba"):
        fill_small_holes(holes, max_size=3, compiled=True)


@pytest.mark.parametrize("shape", [(1, 1), (1, 30), (30, 1), (17, 23), (120, 90)])
@pytest.mark.parametrize("max_size", [0, 1, 5, 40, 10_000])
def test_fill_small_holes_equals_scikit_image(shape: tuple[int, int], max_size: int) -> None:
    rng = np.random.default_rng(max_size)
    for density in (0.0, 0.3, 0.55, 0.8, 1.0):
        mask = ndi.gaussian_filter(rng.random(shape), 1.0) < np.quantile(rng.random(shape), density)
        if density == 1.0:
            mask[...] = True
        before = mask.copy()
        got = fill_small_holes(mask, max_size=max_size)
        expected = remove_small_holes(mask, max_size=max_size) if max_size > 0 else mask
        assert got.dtype == bool and got is not mask
        np.testing.assert_array_equal(got, expected)
        np.testing.assert_array_equal(mask, before)


def test_nuclei_split_by_the_compiled_watershed_equal_scikit_image(monkeypatch: pytest.MonkeyPatch) -> None:
    """The watershed backend's nuclei are the same with either flood (touching nuclei included)."""
    yy, xx = np.mgrid[:120, :160]
    plane = np.zeros((120, 160), np.float32)
    for cy, cx in [(30, 30), (30, 41), (80, 100), (86, 109), (60, 140)]:
        plane += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 5.0**2)).astype(np.float32)
    plane /= plane.max()
    kwargs = {"threshold": 0.2, "seed_sigma_px": 2.5, "smooth_sigma_px": 0.0, "seed_h": 0.01, "min_area_px": 5}
    compiled = segment_nuclei(plane, **kwargs)  # type: ignore[arg-type]
    assert len(np.unique(compiled)) - 1 == 5
    monkeypatch.setattr(basins, "_KERNELS", {"ready": None})
    np.testing.assert_array_equal(segment_nuclei(plane, **kwargs), compiled)  # type: ignore[arg-type]
