"""The compiled Gaussian smoothing returns SciPy's bits exactly, on every path."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from numpy.typing import NDArray
from scipy import ndimage as ndi

from tiledseg.errors import ParameterError
from tiledseg.segment import _gaussian, _prepare
from tiledseg.segment._gaussian import gaussian_filter, gaussian_weights
from tiledseg.segment._prepare import smooth_plane

SIGMAS = (0.5, 1.0, 1.7320508, 2.0, 3.3, 10.0)
SHAPES = ((1, 1), (1, 7), (7, 1), (3, 50), (50, 3), (2, 2), (5, 9), (31, 40), (64, 97))


def _scipy(plane: Any, sigma: float, truncate: float = 4.0) -> NDArray[np.float32]:
    out: NDArray[np.float32] = ndi.gaussian_filter(
        np.asarray(plane, np.float32), sigma, mode="nearest", truncate=truncate, output=np.float32
    )
    return out


def _assert_bits(got: NDArray[Any], expected: NDArray[Any]) -> None:
    assert got.dtype == np.float32 and got.shape == expected.shape
    # Same bits, not merely close (NaN compared as NaN).
    same = (got.view(np.uint32) == expected.view(np.uint32)) | (np.isnan(got) & np.isnan(expected))
    assert same.all(), f"{(~same).sum()} of {same.size} samples differ"


def _compiled_available() -> bool:
    return _gaussian._gaussian_kernel() is not None


@pytest.fixture
def scipy_only() -> Iterator[None]:
    """The fallback path: the kernel forced to None, as the benchmarks do."""
    saved = dict(_gaussian._GAUSSIAN_KERNEL)
    _gaussian._GAUSSIAN_KERNEL["fn"] = None
    try:
        yield
    finally:
        _gaussian._GAUSSIAN_KERNEL.clear()
        _gaussian._GAUSSIAN_KERNEL.update(saved)


def _structured(shape: tuple[int, int], rng: np.random.Generator) -> list[NDArray[np.float32]]:
    y, x = np.indices(shape)
    impulse = np.zeros(shape, np.float32)
    impulse[shape[0] // 2, shape[1] // 2] = 1.0
    step = (x >= shape[1] // 2).astype(np.float32) * np.float32(3.5)
    ramp = (0.37 * y - 1.3 * x).astype(np.float32)
    wide = (rng.standard_normal(shape) * 10.0 ** rng.integers(-30, 30, shape)).astype(np.float32)
    return [
        rng.random(shape, dtype=np.float32),
        (rng.standard_normal(shape) * 1000).astype(np.float32),
        impulse,
        step,
        ramp,
        np.full(shape, 0.1, np.float32),
        wide,
    ]


def test_the_compiled_kernel_is_what_runs() -> None:
    pytest.importorskip("numba")
    # Otherwise every identity test below would compare SciPy with itself.
    assert _compiled_available()


@pytest.mark.parametrize("sigma", SIGMAS)
@pytest.mark.parametrize("shape", SHAPES)
def test_bit_identical_to_scipy(shape: tuple[int, int], sigma: float) -> None:
    rng = np.random.default_rng(hash((shape, sigma)) % 2**32)
    for plane in _structured(shape, rng):
        before = plane.copy()
        _assert_bits(gaussian_filter(plane, sigma), _scipy(plane, sigma))
        np.testing.assert_array_equal(plane, before)


def test_tile_sized_plane() -> None:
    rng = np.random.default_rng(7)
    plane = rng.random((300, 257), dtype=np.float32)
    for sigma in (1.0, 1.7320508, 2.0):
        _assert_bits(gaussian_filter(plane, sigma), _scipy(plane, sigma))


@pytest.mark.parametrize("sigma", [2.0, 10.0, 40.0])
def test_radius_larger_than_the_image(sigma: float) -> None:
    rng = np.random.default_rng(3)
    for shape in ((1, 1), (2, 3), (4, 1), (7, 6)):
        plane = rng.random(shape, dtype=np.float32)
        assert int(4.0 * sigma + 0.5) > max(shape)
        _assert_bits(gaussian_filter(plane, sigma), _scipy(plane, sigma))


@pytest.mark.parametrize("truncate", [0.0, 0.1, 1.0, 2.5, 6.0])
def test_truncate(truncate: float) -> None:
    plane = np.random.default_rng(11).random((23, 31), dtype=np.float32)
    for sigma in (0.7, 2.0, 3.3):
        _assert_bits(gaussian_filter(plane, sigma, truncate=truncate), _scipy(plane, sigma, truncate))


def test_tiny_sigmas() -> None:
    plane = np.random.default_rng(5).random((6, 5), dtype=np.float32)
    # 1e-16: SciPy skips the axes (a copy); 0.1: a one-tap kernel of weight 1.
    for sigma in (1e-16, 1e-15, 1e-10, 0.1, 0.124):
        _assert_bits(gaussian_filter(plane, sigma), _scipy(plane, sigma))


def test_sigma_zero_is_a_float32_copy() -> None:
    plane = np.random.default_rng(2).random((8, 9), dtype=np.float32)
    out = gaussian_filter(plane, 0.0)
    np.testing.assert_array_equal(out, plane)
    assert out.dtype == np.float32 and not np.shares_memory(out, plane)
    out[0, 0] = -1.0
    assert plane[0, 0] != -1.0
    ints = np.arange(12, dtype=np.uint16).reshape(3, 4)
    _assert_bits(gaussian_filter(ints, 0), ints.astype(np.float32))
    strided = plane[::2, ::3]
    _assert_bits(gaussian_filter(strided, 0), np.ascontiguousarray(strided))


@pytest.mark.parametrize("dtype", ["float64", "uint16", "int32", "uint8", "bool", "float16"])
def test_other_dtypes_convert_to_float32_first(dtype: str) -> None:
    rng = np.random.default_rng(4)
    plane = (rng.random((17, 21)) * (1 if dtype in ("bool", "float16") else 300)).astype(np.float64)
    if dtype == "bool":
        plane = plane > 0.5
    arr = plane.astype(dtype)
    for sigma in (1.0, 2.0):
        _assert_bits(gaussian_filter(arr, sigma), _scipy(arr, sigma))


def test_non_contiguous_inputs() -> None:
    rng = np.random.default_rng(6)
    base = rng.random((40, 60), dtype=np.float32)
    for view in (base.T, base[::2, ::3], base[5:30, 7:50], np.asfortranarray(base), base[::-1, ::-2]):
        assert not view.flags.c_contiguous or view is base
        before = base.copy()
        for sigma in (1.0, 1.7320508):
            out = gaussian_filter(view, sigma)
            assert out.flags.c_contiguous
            _assert_bits(out, _scipy(view, sigma))
        np.testing.assert_array_equal(base, before)


def test_non_finite_values_spread_as_in_scipy() -> None:
    plane = np.random.default_rng(8).random((20, 20), dtype=np.float32)
    plane[3, 4] = np.nan
    plane[15, 15] = np.inf
    plane[15, 17] = -np.inf
    _assert_bits(gaussian_filter(plane, 1.5), _scipy(plane, 1.5))


def test_empty_planes() -> None:
    for shape in ((0, 5), (5, 0), (0, 0)):
        out = gaussian_filter(np.zeros(shape, np.float32), 2.0)
        assert out.shape == shape and out.dtype == np.float32


@pytest.mark.parametrize("sigma", SIGMAS)
def test_scipy_fallback_is_identical(scipy_only: None, sigma: float) -> None:
    assert _gaussian._gaussian_kernel() is None
    rng = np.random.default_rng(9)
    for shape in ((1, 1), (3, 50), (33, 20)):
        for plane in _structured(shape, rng)[:3]:
            _assert_bits(gaussian_filter(plane, sigma), _scipy(plane, sigma))


def test_weights_are_scipys_kernel() -> None:
    for sigma in SIGMAS:
        w = gaussian_weights(sigma)
        radius = w.size - 1
        assert radius == int(4.0 * sigma + 0.5)
        # SciPy's response to a float64 impulse is its kernel exactly (every other term adds 0).
        impulse = np.zeros(2 * radius + 1)
        impulse[radius] = 1.0
        response = ndi.gaussian_filter1d(impulse, sigma, mode="constant", truncate=4.0)
        np.testing.assert_array_equal(np.concatenate([w[::-1], w[1:]]), response)
        assert np.all(np.diff(w) < 0)


@settings(max_examples=60, deadline=None)
@given(
    plane=hnp.arrays(
        np.float32,
        st.tuples(st.integers(1, 24), st.integers(1, 24)),
        elements=st.floats(-1e6, 1e6, width=32, allow_nan=False),
    ),
    sigma=st.one_of(st.sampled_from(SIGMAS), st.floats(0.0, 12.0)),
    truncate=st.sampled_from([4.0, 4.0, 2.0, 0.5]),
)
def test_property_bit_identical(plane: NDArray[np.float32], sigma: float, truncate: float) -> None:
    _assert_bits(gaussian_filter(plane, sigma, truncate=truncate), _scipy(plane, sigma, truncate))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"sigma": -1.0}, "`sigma`"),
        ({"sigma": float("nan")}, "`sigma`"),
        ({"sigma": float("inf")}, "`sigma`"),
        ({"sigma": "wide"}, "`sigma`"),
        ({"sigma": None}, "`sigma`"),
        ({"sigma": 1.0, "truncate": -4.0}, "`truncate`"),
        ({"sigma": 1.0, "truncate": float("nan")}, "`truncate`"),
    ],
)
def test_bad_parameters(kwargs: dict[str, Any], match: str) -> None:
    plane = np.zeros((4, 4), np.float32)
    with pytest.raises(ParameterError, match=match):
        gaussian_filter(plane, **kwargs)
    with pytest.raises(ValueError, match=match):
        gaussian_filter(plane, **kwargs)


@pytest.mark.parametrize(
    "plane",
    [np.zeros(5, np.float32), np.zeros((2, 3, 4), np.float32), np.zeros((3, 3), np.complex64),
     np.array([["a", "b"]])],
)
def test_bad_planes(plane: NDArray[Any]) -> None:
    with pytest.raises(ParameterError, match="`plane`"):
        gaussian_filter(plane, 1.0)


def test_smooth_plane_uses_it_and_keeps_scipys_bits(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(10)
    plane = rng.random((45, 38)).astype(np.float64)
    for sigma_um, pixel in ((1.0, 1.0), (2.0, 1.0), (1.0, 0.6), (3.0, 0.5)):
        _assert_bits(
            smooth_plane(plane, sigma_um=sigma_um, pixel_size_um=pixel), _scipy(plane, sigma_um / pixel)
        )
    calls: list[float] = []

    def spy(data: NDArray[np.float32], sigma: float, *, truncate: float = 4.0) -> NDArray[np.float32]:
        calls.append(sigma)
        return gaussian_filter(data, sigma, truncate=truncate)

    monkeypatch.setattr(_prepare, "gaussian_filter", spy)
    smooth_plane(plane, sigma_um=1.5, pixel_size_um=0.5)
    assert calls == [3.0]
