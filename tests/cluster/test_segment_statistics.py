"""Slide statistics kernels, the ``threshold`` test backend and ``FunctionBackend`` (no cluster)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from tiledseg.errors import BackendError, ChannelNotFoundError, ParameterError
from tiledseg.segment import Backend
from tiledseg.segment._function import FunctionBackend
from tiledseg.segment._prepare import statistics_from_array
from tiledseg.segment._statistics import (
    finalize_fused,
    finalize_statistics,
    fused_partial,
    histogram_partial,
    merge_fused,
    merge_histograms,
    merge_minmax,
    minmax_partial,
    one_pass_supported,
    prepared_edges,
    prepared_histogram,
)
from tiledseg.segment.threshold import ThresholdBackend


def _chunked(image: NDArray[np.generic], step: tuple[int, int], names: list[str]):  # type: ignore[no-untyped-def]
    blocks = [
        image[:, r : r + step[0], c : c + step[1]]
        for r in range(0, image.shape[1], step[0])
        for c in range(0, image.shape[2], step[1])
    ]
    parts = [minmax_partial(b) for b in blocks]
    order = np.random.default_rng(0).permutation(len(parts))  # merge order does not matter
    mm = merge_minmax([parts[i] for i in order])
    counts = merge_histograms([histogram_partial(b, mm) for b in blocks])
    return finalize_statistics(names, mm, counts, n_pixels=image.shape[1] * image.shape[2])


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 1000),
    step=st.tuples(st.integers(1, 40), st.integers(1, 40)),
    dtype=st.sampled_from(["float32", "uint16", "float64"]),
)
def test_chunked_statistics_equal_whole_image(seed: int, step: tuple[int, int], dtype: str) -> None:
    rng = np.random.default_rng(seed)
    image = (rng.gamma(2.0, 50.0, size=(2, 37, 45))).astype(dtype)
    if dtype.startswith("float"):
        image[0, 3, 4] = np.nan
        image[1, 5, 6] = np.inf
    ref = statistics_from_array(image, ["a", "b"])
    got = _chunked(image, step, ["a", "b"])
    assert np.array_equal(got.counts, ref.counts)
    assert np.array_equal(got.edges, ref.edges)
    assert np.array_equal(got.minimum, ref.minimum) and np.array_equal(got.maximum, ref.maximum)
    for q in (1.0, 50.0, 99.9):
        assert got.percentile("a", q) == ref.percentile("a", q)


def test_percentiles_are_accurate_and_exact_for_small_integer_ranges() -> None:
    rng = np.random.default_rng(1)
    data = rng.integers(0, 1000, size=(1, 300, 300)).astype(np.uint16)
    stats = _chunked(data, (64, 64), ["x"])
    for q in (1.0, 50.0, 99.0):
        assert abs(stats.percentile("x", q) - np.percentile(data, q)) <= 1.0
    floats = rng.normal(size=(1, 300, 300)).astype(np.float32)
    stats = _chunked(floats, (100, 100), ["x"])
    width = (floats.max() - floats.min()) / 4096
    assert abs(stats.percentile("x", 99.0) - np.percentile(floats, 99.0)) <= width


def test_constant_and_empty_channels() -> None:
    image = np.full((2, 10, 10), 3.0, np.float32)
    image[1] = np.nan
    stats = _chunked(image, (4, 4), ["c", "n"])
    assert stats.minimum[0] == stats.maximum[0] == 3.0
    assert stats.counts[0].sum() == 100 and stats.counts[1].sum() == 0
    assert np.isnan(stats.minimum[1])
    with pytest.raises(ParameterError, match=r"\(C, Y, X\)"):
        minmax_partial(np.zeros((3, 3)))


def test_prepared_histogram() -> None:
    planes = np.linspace(0, 1, 1000, dtype=np.float32).reshape(1, 10, 100)
    hist = prepared_histogram(planes)
    edges = prepared_edges(1)
    assert hist.shape == (1, 1024) and edges.shape == (1, 1025) and hist.sum() == 1000
    assert edges[0, 0] == 0.0 and edges[0, -1] == 1.0


def test_threshold_backend() -> None:
    backend = ThresholdBackend(nuclear="DNA1", min_area_um2=4.0, max_cell_diameter_um=10, smooth_um=0.5)
    assert isinstance(backend, Backend)
    assert backend.channels(["CD3", "DNA1"]) == ("DNA1",)
    assert backend.halo_um() == pytest.approx(12.0)
    image = np.zeros((1, 40, 40), np.float32)
    image[0, 5:12, 5:12] = 10
    image[0, 30, 30] = 10  # too small
    stats = statistics_from_array(image, ["DNA1"])
    before = image.copy()
    prepared = backend.prepare(image, pixel_size_um=1.0, stats=stats)
    assert np.array_equal(image, before)
    fitted = backend.fit(prepared_histogram(prepared), prepared_edges(1))
    labels = backend.segment(prepared, pixel_size_um=1.0, fitted=fitted)
    assert labels.dtype == np.uint32 and labels.shape == (40, 40)
    assert np.unique(labels).size == 2 and labels[30, 30] == 0 and labels[8, 8] > 0
    with pytest.raises(ChannelNotFoundError, match="CD99"):
        ThresholdBackend(nuclear="CD99").channels(["DNA1"])
    with pytest.raises(ParameterError, match="threshold"):
        ThresholdBackend(threshold=2.0)
    assert ThresholdBackend(threshold=0.3).fit(np.zeros((1, 4), np.int64), np.zeros((1, 5))) == {"threshold": 0.3}


def test_function_backend_wraps_and_checks_the_function() -> None:
    def fn(image: NDArray[np.float32], *, pixel_size_um: float, level: float = 0.5) -> NDArray[np.int64]:
        return (image[0] > level).astype(np.int64)

    backend = FunctionBackend(fn, channels=["b"], halo_um=3.0, level=2.0)
    assert isinstance(backend, Backend)
    assert backend.channels(["a", "b"]) == ("b",)
    assert backend.params()["level"] == 2.0 and backend.params()["function"].endswith("fn")
    image = np.arange(16, dtype=np.float32).reshape(1, 4, 4)
    out = backend.segment(backend.prepare(image, pixel_size_um=1.0, stats=None), pixel_size_um=1.0, fitted={})  # type: ignore[arg-type]
    assert out.dtype == np.uint32 and out.sum() == 13
    no_px = FunctionBackend(lambda im: im[0] > 3, halo_um=1.0)  # no pixel_size_um keyword is fine
    assert no_px.segment(image, pixel_size_um=1.0, fitted={}).sum() == 12
    assert no_px.channels(["a", "b"]) == ("a", "b")
    with pytest.raises(ChannelNotFoundError, match="zz"):
        FunctionBackend(fn, channels=["zz"], halo_um=1).channels(["a"])
    with pytest.raises(BackendError, match="shape"):
        FunctionBackend(lambda im, **_: im[0, :2], halo_um=1).segment(image, pixel_size_um=1.0, fitted={})
    with pytest.raises(BackendError, match="integers"):
        FunctionBackend(lambda im, **_: im[0], halo_um=1).segment(image, pixel_size_um=1.0, fitted={})
    with pytest.raises(ParameterError, match="halo_um"):
        FunctionBackend(fn, halo_um=-1)
    with pytest.raises(ParameterError, match="callable"):
        FunctionBackend(3, halo_um=1)  # type: ignore[arg-type]


def _fused(image: NDArray[np.generic], step: tuple[int, int], names: list[str]):  # type: ignore[no-untyped-def]
    parts = [
        fused_partial(image[:, r : r + step[0], c : c + step[1]])
        for r in range(0, image.shape[1], step[0])
        for c in range(0, image.shape[2], step[1])
    ]
    order = np.random.default_rng(0).permutation(len(parts))
    shuffled = [parts[i] for i in order]
    # a tree of merges in a shuffled order, as the engine does on the workers
    half = max(1, len(shuffled) // 2)
    groups = [g for g in (shuffled[:half], shuffled[half:]) if g]
    merged = merge_fused([merge_fused(g) for g in groups])
    return finalize_fused(names, merged, n_pixels=image.shape[1] * image.shape[2])


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 1000),
    step=st.tuples(st.integers(1, 40), st.integers(1, 40)),
    dtype=st.sampled_from(["uint8", "int8", "uint16", "int16"]),
)
def test_one_pass_statistics_of_integers_equal_two_pass(seed: int, step: tuple[int, int], dtype: str) -> None:
    rng = np.random.default_rng(seed)
    info = np.iinfo(dtype)
    image = rng.integers(info.min, info.max, size=(2, 37, 45), endpoint=True).astype(dtype)
    image[1] = np.clip(rng.gamma(2.0, 20.0, size=(37, 45)), info.min, info.max).astype(dtype)
    ref = statistics_from_array(image, ["a", "b"])
    got = _fused(image, step, ["a", "b"])
    assert np.array_equal(got.counts, ref.counts) and np.array_equal(got.edges, ref.edges)
    assert np.array_equal(got.minimum, ref.minimum) and np.array_equal(got.maximum, ref.maximum)
    for q in (1.0, 50.0, 99.9):
        assert got.percentile("b", q) == ref.percentile("b", q)


def test_one_pass_statistics_edge_cases() -> None:
    image = np.full((2, 10, 10), 3, np.uint16)
    image[1, 0, 0] = 7
    got = _fused(image, (4, 4), ["c", "d"])
    ref = statistics_from_array(image, ["c", "d"])
    assert np.array_equal(got.counts, ref.counts) and np.array_equal(got.edges, ref.edges)
    assert got.minimum[0] == got.maximum[0] == 3.0 and got.counts[0].sum() == 100
    assert one_pass_supported(np.uint16) and one_pass_supported(np.int8)
    assert not one_pass_supported(np.float32) and not one_pass_supported(np.uint32)
    with pytest.raises(ParameterError, match="block"):
        fused_partial(np.zeros((1, 3, 3), np.float32))
    with pytest.raises(ParameterError, match="block"):
        fused_partial(np.zeros((3, 3), np.uint8))
    with pytest.raises(ParameterError, match="parts"):
        merge_fused([])
    with pytest.raises(ParameterError, match="parts"):
        merge_fused([fused_partial(np.zeros((1, 2, 2), np.uint8)), fused_partial(np.zeros((2, 2, 2), np.uint8))])


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    dtype=st.sampled_from(["float32", "float64", "uint16", "int16", "uint8", "float16", ">u2", ">f4"]),
    bins=st.sampled_from([1, 7, 1024, 4096]),
    size=st.integers(0, 3000),
)
def test_uniform_histogram_equals_numpy(seed: int, dtype: str, bins: int, size: int) -> None:
    from tiledseg.segment._statistics import uniform_histogram

    rng = np.random.default_rng(seed)
    values = (rng.gamma(1.5, 40.0, size) - 5).astype(dtype)
    finite = values[np.isfinite(values)] if values.dtype.kind == "f" else values
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if hi <= lo:
        hi = lo + 1.0
    # values exactly on the edges, the ends, and non-finite ones are the delicate cases
    edges = np.histogram_bin_edges(np.zeros(0), bins=bins, range=(np.float64(lo), np.float64(hi)))
    extra = edges[rng.integers(0, edges.size, size=min(size, 50))].astype(dtype)
    values = np.concatenate([values, extra, np.array([lo, hi], dtype=dtype)])
    if dtype == "float64":  # one ulp either side of every edge: NumPy's correction steps
        values = np.concatenate([values, np.nextafter(edges, -np.inf), np.nextafter(edges, np.inf)])
    if values.dtype.kind == "f":
        values = np.concatenate([values, np.array([np.nan, np.inf, -np.inf], dtype=dtype)])
    got = uniform_histogram(values.reshape(1, -1), lo, hi, bins)
    ref = np.histogram(values, bins=bins, range=(np.float64(lo), np.float64(hi)))[0]
    assert got.dtype == np.int64 and np.array_equal(got, ref)


def test_uniform_histogram_without_numba(monkeypatch: pytest.MonkeyPatch) -> None:
    from tiledseg.segment import _statistics

    monkeypatch.setitem(_statistics._KERNELS, "uniform", None)
    values = np.random.default_rng(1).random((30, 40)).astype(np.float32)
    got = _statistics.uniform_histogram(values, 0.0, 1.0, 16)
    assert np.array_equal(got, np.histogram(values, bins=16, range=(0.0, 1.0))[0])
