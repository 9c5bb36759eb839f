"""Channel preparation shared by all backends (:mod:`tiledseg.segment._prepare`)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu

from tiledseg.errors import ChannelNotFoundError, PanelError, ParameterError, SlideFormatError
from tiledseg.segment._protocol import ChannelStatistics
from tiledseg.segment._prepare import (
    ChannelRoles,
    channel_roles_from_panel,
    clip_bounds,
    combine_planes,
    guess_nuclear_channels,
    normalize_plane,
    prepare_groups,
    remove_hot_pixels,
    resolve_channel_roles,
    smooth_plane,
    statistics_from_array,
    threshold_otsu_histogram,
)

PANEL = [
    {"channel": "Ir191", "name": "DNA1", "keep": 1, "deepcell": 1, "cellpose": 2},
    {"channel": "Ir193", "name": "DNA2", "keep": 1, "deepcell": 1.0, "cellpose": None},
    {"channel": "Sm152", "name": "CD45", "keep": 1, "deepcell": 2, "cellpose": 1},
    {"channel": "Er167", "name": "E-cad", "keep": 1, "deepcell": "2", "cellpose": ""},
    {"channel": "Nd143", "name": "Vim", "keep": 1, "deepcell": float("nan"), "cellpose": None},
    {"channel": "Xe131", "name": "Dropped", "keep": 0, "deepcell": 1, "cellpose": None},
]


# -- roles -------------------------------------------------------------------------------------


def test_roles_from_panel_rows_and_dataframe() -> None:
    expected = ChannelRoles(nuclear=("DNA1", "DNA2"), membrane=("CD45", "E-cad"))
    assert channel_roles_from_panel(PANEL) == expected
    assert channel_roles_from_panel(pd.DataFrame(PANEL)) == expected
    # pandas nullable integers, as the io layer writes them
    frame = pd.DataFrame(PANEL)
    frame["deepcell"] = pd.array([1, 1, 2, 2, None, 1], dtype="Int64")
    assert channel_roles_from_panel(frame) == expected


def test_roles_from_cellpose_column() -> None:
    roles = channel_roles_from_panel(PANEL, column="cellpose")
    assert roles == ChannelRoles(nuclear=("CD45",), membrane=("DNA1",))


def test_roles_from_panel_bad_values() -> None:
    with pytest.raises(PanelError, match="deepcell.*row 0.*got 3"):
        channel_roles_from_panel([{"name": "DNA1", "deepcell": 3}])
    with pytest.raises(PanelError, match="no column 'deepcell'"):
        channel_roles_from_panel([{"name": "DNA1"}])
    with pytest.raises(PanelError, match="row 0 must be a mapping"):
        channel_roles_from_panel(["DNA1"])


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (["CD3", "Ir191", "Ir193"], ("Ir191", "Ir193")),
        (["CD45", "DNA1", "DNA2", "H3"], ("DNA1", "DNA2")),
        (["Cytokeratin 5", "H3K27Ac", "YBX1"], ("H3K27Ac",)),
        (["CD3", "Histone H3"], ("Histone H3",)),
        (["Ch1", "DAPI"], ("DAPI",)),
        (["hoechst 33342", "GFP"], ("hoechst 33342",)),
        (["191Ir_DNA1", "CD3"], ("191Ir_DNA1",)),
    ],
)
def test_guess_nuclear(names: list[str], expected: tuple[str, ...]) -> None:
    assert guess_nuclear_channels(names) == expected


def test_guess_nuclear_fails_listing_channels() -> None:
    with pytest.raises(ParameterError, match=r"\['CD3', 'CD45'\].*nuclear="):
        guess_nuclear_channels(["CD3", "CD45"])


def test_resolve_roles_priorities() -> None:
    available = ["DNA1", "DNA2", "CD45", "E-cad", "Vim"]
    assert resolve_channel_roles(available, panel=PANEL).nuclear == ("DNA1", "DNA2")
    explicit = resolve_channel_roles(available, nuclear="DNA2", membrane=["Vim"], panel=PANEL)
    assert explicit == ChannelRoles(nuclear=("DNA2",), membrane=("Vim",))
    # no panel: nuclear guessed, membrane empty
    assert resolve_channel_roles(available) == ChannelRoles(nuclear=("DNA1", "DNA2"), membrane=())
    with pytest.raises(ChannelNotFoundError, match="'CD99'.*available channels"):
        resolve_channel_roles(available, nuclear=["CD99"])
    with pytest.raises(ChannelNotFoundError, match="'Nope'"):
        resolve_channel_roles(available, membrane=["Nope"])
    with pytest.raises(ParameterError, match="at least one"):
        resolve_channel_roles(available, nuclear=[])


# -- per-plane operations ---------------------------------------------------------------------


def test_normalize_plane_clips_and_handles_nan() -> None:
    plane = np.array([[0.0, 5.0, 10.0, 20.0], [np.nan, np.inf, -np.inf, 7.5]], dtype=np.float32)
    before = plane.copy()
    out = normalize_plane(plane, low=5.0, high=15.0)
    np.testing.assert_array_equal(plane, before)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0, 0, 0.5, 1], [0, 0, 0, 0.25]])
    assert not normalize_plane(plane, low=3.0, high=3.0).any()


def test_clip_bounds_from_statistics() -> None:
    rng = np.random.default_rng(0)
    data = rng.gamma(2.0, 10.0, (1, 200, 200)).astype(np.float32)
    stats = statistics_from_array(data, ["X"])
    low, high = clip_bounds(stats, "X", clip=(1.0, 99.9))
    # Within a histogram bin of the true quantiles: the fraction of pixels below each bound.
    assert abs(float((data < low).mean()) - 0.01) < 5e-4
    assert abs(float((data < high).mean()) - 0.999) < 2e-4
    assert low < high
    with pytest.raises(ChannelNotFoundError, match="'Y'"):
        clip_bounds(stats, "Y")
    with pytest.raises(ParameterError, match="clip"):
        clip_bounds(stats, "X", clip=(50.0, 10.0))


def test_hot_pixel_filter_matches_definition() -> None:
    rng = np.random.default_rng(1)
    plane = rng.poisson(5.0, (40, 50)).astype(np.float32)
    plane[10, 10] = 500.0  # hot
    plane[0, 0] = 300.0  # hot, in a corner
    plane[20, 20] = 30.0  # bright but below threshold
    before = plane.copy()
    out = remove_hot_pixels(plane, threshold=50.0)
    np.testing.assert_array_equal(plane, before)
    footprint = np.ones((3, 3), bool)
    footprint[1, 1] = False
    neighbour_max = ndi.maximum_filter(plane, footprint=footprint, mode="nearest")
    expected = np.where(plane - neighbour_max > 50.0, neighbour_max, plane)
    np.testing.assert_array_equal(out, expected)
    assert out[10, 10] == neighbour_max[10, 10] and out[0, 0] == neighbour_max[0, 0]
    assert out[20, 20] == 30.0
    with pytest.raises(ParameterError, match="hot_pixel_threshold"):
        remove_hot_pixels(plane, threshold=-1.0)


def test_smoothing_sigma_in_um() -> None:
    plane = np.zeros((41, 41), np.float32)
    plane[20, 20] = 1.0
    a = smooth_plane(plane, sigma_um=2.0, pixel_size_um=0.5)  # 4 px
    b = ndi.gaussian_filter(plane, 4.0, mode="nearest")
    np.testing.assert_allclose(a, b, atol=1e-7)
    np.testing.assert_array_equal(smooth_plane(plane, sigma_um=0.0, pixel_size_um=1.0), plane)
    with pytest.raises(ParameterError, match="pixel_size_um"):
        smooth_plane(plane, sigma_um=1.0, pixel_size_um=0.0)


def test_combine_mean_and_sum() -> None:
    a = np.full((2, 2), 0.2, np.float32)
    b = np.full((2, 2), 0.9, np.float32)
    np.testing.assert_allclose(combine_planes([a, b], method="mean"), 0.55)
    np.testing.assert_allclose(combine_planes([a, b], method="sum"), 1.0)  # clipped
    np.testing.assert_allclose(combine_planes([a, a], method="sum"), 0.4)
    with pytest.raises(ParameterError, match="combine"):
        combine_planes([a], method="max")


def test_otsu_from_histogram_matches_skimage() -> None:
    rng = np.random.default_rng(2)
    x = np.clip(np.concatenate([rng.normal(0.2, 0.05, 20000), rng.normal(0.7, 0.08, 6000)]), 0, 1)
    counts, edges = np.histogram(x, bins=1024, range=(0, 1))
    t = threshold_otsu_histogram(counts, edges)
    assert abs(t - threshold_otsu(x)) < 2e-3
    assert np.isnan(threshold_otsu_histogram(np.zeros(8, np.int64), np.linspace(0, 1, 9)))
    single = np.zeros(8, np.int64)
    single[3] = 10
    assert np.isnan(threshold_otsu_histogram(single, np.linspace(0, 1, 9)))


# -- whole preparation ------------------------------------------------------------------------


def _image() -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(3)
    image = rng.gamma(2.0, 5.0, (3, 60, 70)).astype(np.float32)
    return image, ["DNA1", "CD45", "CD3"]


def test_prepare_groups_mean_of_normalised_channels() -> None:
    image, names = _image()
    stats = statistics_from_array(image, names)
    before = image.copy()
    out = prepare_groups(image, names, [["DNA1"], ["CD45", "CD3"], []], stats=stats, pixel_size_um=1.0)
    np.testing.assert_array_equal(image, before)
    assert out.shape == (3, 60, 70) and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 1
    n = [normalize_plane(image[i], low=clip_bounds(stats, names[i])[0],
                         high=clip_bounds(stats, names[i])[1]) for i in range(3)]
    np.testing.assert_allclose(out[0], n[0])
    np.testing.assert_allclose(out[1], (n[1] + n[2]) / 2, atol=1e-6)
    assert not out[2].any()  # empty group


def test_prepare_uses_slide_statistics_not_the_window() -> None:
    image, names = _image()
    stats = statistics_from_array(image, names)
    whole = prepare_groups(image, names, [["DNA1"]], stats=stats, pixel_size_um=1.0)
    crop = prepare_groups(image[:, 10:30, 20:50], names, [["DNA1"]], stats=stats, pixel_size_um=1.0)
    np.testing.assert_array_equal(crop[0], whole[0, 10:30, 20:50])


def test_prepare_smoothing_is_local() -> None:
    image, names = _image()
    stats = statistics_from_array(image, names)
    whole = prepare_groups(image, names, [["DNA1"]], stats=stats, pixel_size_um=1.0, smooth_um=1.5)
    crop = prepare_groups(image[:, 10:50, 10:60], names, [["DNA1"]], stats=stats, pixel_size_um=1.0,
                          smooth_um=1.5)
    halo = 7  # 4 sigma + 1
    np.testing.assert_allclose(crop[0, halo:-halo, halo:-halo], whole[0, 10 + halo:50 - halo, 10 + halo:60 - halo],
                               atol=1e-6)


def test_prepare_nan_pixels_become_zero_and_do_not_spread() -> None:
    image, names = _image()
    stats = statistics_from_array(image, names)
    holed = image.copy()
    holed[0, 30, 30] = np.nan
    holed[0, 5, 5] = np.inf
    out = prepare_groups(holed, names, [["DNA1"]], stats=stats, pixel_size_um=1.0, smooth_um=1.0,
                         hot_pixel_threshold=5.0)
    assert np.isfinite(out).all()
    all_nan = np.full_like(image, np.nan)
    assert not prepare_groups(all_nan, names, [["DNA1"]], stats=stats, pixel_size_um=1.0).any()


def test_prepare_constant_slide_gives_zero_plane() -> None:
    image = np.full((1, 20, 20), 7.0, np.float32)
    stats = statistics_from_array(image, ["DNA1"])
    assert not prepare_groups(image, ["DNA1"], [["DNA1"]], stats=stats, pixel_size_um=1.0).any()


def test_prepare_groups_bad_input() -> None:
    image, names = _image()
    stats = statistics_from_array(image, names)
    with pytest.raises(SlideFormatError, match=r"\(C, Y, X\)"):
        prepare_groups(image[0], names, [["DNA1"]], stats=stats, pixel_size_um=1.0)
    with pytest.raises(SlideFormatError, match="3 channels but 2"):
        prepare_groups(image, names[:2], [["DNA1"]], stats=stats, pixel_size_um=1.0)
    with pytest.raises(ChannelNotFoundError, match="'CD99'"):
        prepare_groups(image, names, [["CD99"]], stats=stats, pixel_size_um=1.0)
    with pytest.raises(ParameterError, match="combine"):
        prepare_groups(image, names, [["DNA1"]], stats=stats, pixel_size_um=1.0, combine="median")
    with pytest.raises(ParameterError, match="pixel_size_um"):
        prepare_groups(image, names, [["DNA1"]], stats=stats, pixel_size_um=-1.0)
    with pytest.raises(ParameterError, match="smooth_um"):
        prepare_groups(image, names, [["DNA1"], ["CD3"]], stats=stats, pixel_size_um=1.0, smooth_um=[1.0])


def test_statistics_from_array_ignores_nan() -> None:
    image = np.array([[[1.0, 2.0], [np.nan, 4.0]]], np.float32)
    stats = statistics_from_array(image, ["A"], bins=4)
    assert stats.counts.sum() == 3 and stats.minimum[0] == 1.0 and stats.maximum[0] == 4.0
    with pytest.raises(ParameterError):
        statistics_from_array(image, ["A", "B"])


def test_statistics_round_trip_stores_even_edges_compactly() -> None:
    rng = np.random.default_rng(3)
    image = np.stack([rng.gamma(2.0, 30.0, (40, 50)), np.full((40, 50), 7.0), rng.random((40, 50)) * 1e-3])
    image[2, 0, 0] = np.nan
    stats = statistics_from_array(image.astype(np.float32), ["A", "B", "C"])
    data = json.loads(json.dumps(stats.to_dict()))
    assert set(data["edges"]) == {"first", "last", "bins"}  # three numbers per channel, not 4097
    back = ChannelStatistics.from_dict(data)
    assert back.edges.dtype == np.float64 and np.array_equal(back.edges, stats.edges)
    assert np.array_equal(back.counts, stats.counts) and back.names == stats.names
    assert [back.percentile("A", q) for q in (1, 50, 99.9)] == [stats.percentile("A", q) for q in (1, 50, 99.9)]
    # uneven edges (a caller's own statistics) and edges stored in full by earlier builds
    uneven = dataclasses.replace(stats, edges=stats.edges ** 1.5)
    data = json.loads(json.dumps(uneven.to_dict()))
    assert isinstance(data["edges"], list)
    assert np.array_equal(ChannelStatistics.from_dict(data).edges, uneven.edges)


@settings(max_examples=30, deadline=None)
@given(
    image=arrays(np.float32, (2, 24, 30), elements=st.one_of(
        st.floats(0, 1000, width=32), st.just(np.float32(np.nan)))),
    sigma=st.sampled_from([0.0, 0.7, 1.5]),
    hpf=st.sampled_from([None, 20.0]),
    combine=st.sampled_from(["mean", "sum"]),
    r0=st.integers(0, 10), c0=st.integers(0, 12),
)
def test_prepare_properties(image: np.ndarray, sigma: float, hpf: float | None, combine: str,
                            r0: int, c0: int) -> None:
    """In [0, 1], finite, input untouched, and a window equals the whole image away from its edge."""
    names = ["A", "B"]
    stats = statistics_from_array(image, names)
    before = image.copy()
    kw = {"stats": stats, "pixel_size_um": 1.0, "smooth_um": sigma, "hot_pixel_threshold": hpf,
          "combine": combine}
    whole = prepare_groups(image, names, [["A"], ["A", "B"]], **kw)
    np.testing.assert_array_equal(image, before)
    assert whole.dtype == np.float32 and np.isfinite(whole).all()
    assert whole.min() >= 0.0 and whole.max() <= 1.0
    window = prepare_groups(image[:, r0 : r0 + 14, c0 : c0 + 18], names, [["A"], ["A", "B"]], **kw)
    m = int(np.ceil(4 * sigma)) + (1 if hpf is not None else 0) + 1
    inner = window[:, m : 14 - m, m : 18 - m]
    ref = whole[:, r0 + m : r0 + 14 - m, c0 + m : c0 + 18 - m]
    np.testing.assert_allclose(inner, ref, atol=1e-5)
