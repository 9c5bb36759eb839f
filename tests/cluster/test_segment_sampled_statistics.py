"""Slide statistics from an even sample of the chunks (``statistics_sample=`` of the engine and api)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from distributed import Client
from numpy.typing import NDArray

from tests.stitch._helpers import disks
from tiledseg.cluster import resolve_statistics, segment_slide
from tiledseg.errors import ParameterError
from tiledseg.io import open_labels, open_slide, write_slide
from tiledseg.segment._prepare import statistics_from_array
from tiledseg.segment._protocol import ChannelStatistics
from tiledseg.segment._statistics import prepared_edges, prepared_histogram
from tiledseg.segment.threshold import ThresholdBackend
from tiledseg.tiling import sample_blocks

SHAPE = (256, 256)
CHUNKS = (32, 32)


@pytest.fixture(scope="module")
def client() -> Iterator[Client]:
    with Client(processes=False, n_workers=2, threads_per_worker=1, dashboard_address=":0") as c:
        yield c


def _image() -> NDArray[np.float32]:
    mask = disks(SHAPE, n=300, radius=(2, 6), seed=3)
    rng = np.random.default_rng(3)
    # brighter on the right half: a sample that missed one side would get other percentiles
    gradient = np.linspace(1.0, 3.0, SHAPE[1])[None, :]
    dna = mask * 10.0 * gradient + rng.gamma(2.0, 0.5, SHAPE)
    return np.stack([dna, rng.random(SHAPE)]).astype(np.float32)


@pytest.fixture()
def slide_url(tmp_path: Path) -> str:
    return write_slide(
        str(tmp_path / "s.ome.zarr"), _image(), channel_names=["DNA1", "CD3"], pixel_size_um=1.0,
        chunks=(1, *CHUNKS),
    )


def _meta(url: str) -> dict[str, Any]:
    return dict(open_labels(url, "cells").attrs["tiledseg"])


def test_sampled_statistics_are_exactly_those_of_the_sampled_chunks(client: Client, slide_url: str) -> None:
    backend = ThresholdBackend(nuclear="DNA1", max_cell_diameter_um=14, smooth_um=0.5)
    segment_slide(open_slide(slide_url), backend, client=client, tile_size=64, statistics_sample=0.25)
    meta = _meta(slide_url)
    image = _image()[:1]
    blocks = sample_blocks(SHAPE, CHUNKS, fraction=0.25)
    assert len(blocks) == 16
    pixels = np.concatenate([image[:, r0:r1, c0:c1].reshape(1, 1, -1) for (r0, r1), (c0, c1) in blocks], axis=2)
    ref = statistics_from_array(pixels, ["DNA1"])
    stored = meta["statistics"]
    assert np.array_equal(np.asarray(stored["counts"]), ref.counts)
    assert np.array_equal(ChannelStatistics.from_dict(stored).edges, ref.edges)
    assert stored["minimum"] == ref.minimum.tolist() and stored["maximum"] == ref.maximum.tolist()
    assert stored["n_pixels"] == 16 * 32 * 32
    assert stored["extra"]["sample"] == {"fraction": 0.25, "requested": 0.25, "blocks": 16, "pixels": 16 * 32 * 32}
    # the fitted threshold comes from the prepared planes of the same blocks, each prepared alone
    # (no neighbouring chunks decompressed) and histogrammed inside a margin of
    # min(halo, chunk / 8) px on the sides that border more slide
    halo = int(meta["tile_plan"]["halo"])
    m = min(halo, 32 // 8)
    hist = np.zeros((1, 1024), np.int64)
    for (r0, r1), (c0, c1) in blocks:
        prepared = np.asarray(backend.prepare(image[:, r0:r1, c0:c1], pixel_size_um=1.0, stats=ref))
        top, left = (m if r0 > 0 else 0), (m if c0 > 0 else 0)
        bottom, right = (m if r1 < SHAPE[0] else 0), (m if c1 < SHAPE[1] else 0)
        hist += prepared_histogram(prepared[:, top : prepared.shape[1] - bottom, left : prepared.shape[2] - right])
    assert meta["fitted"] == backend.fit(hist, prepared_edges(1))


def test_sample_does_not_depend_on_tiles_or_workers(client: Client, slide_url: str) -> None:
    backend = ThresholdBackend(nuclear="DNA1", max_cell_diameter_um=14, smooth_um=0.5)
    seen = []
    for tile_size in (64, 128):
        segment_slide(open_slide(slide_url), backend, client=client, tile_size=tile_size, statistics_sample=0.3,
                      overwrite=True)
        meta = _meta(slide_url)
        seen.append((meta["statistics"], meta["fitted"]))
    with Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=":0") as one:
        segment_slide(open_slide(slide_url), backend, client=one, tile_size=64, statistics_sample=0.3,
                      overwrite=True)
    meta = _meta(slide_url)
    seen.append((meta["statistics"], meta["fitted"]))
    assert seen[0] == seen[1] == seen[2]
    # and a sample of the bright-and-dark slide lands close to the full statistics
    full = statistics_from_array(_image()[:1], ["DNA1"])
    sampled = seen[0][0]
    from tiledseg.segment import ChannelStatistics

    got = ChannelStatistics.from_dict(sampled)
    for q in (1.0, 50.0, 99.0):
        assert got.percentile("DNA1", q) == pytest.approx(full.percentile("DNA1", q), rel=0.15)


def test_auto_reads_every_pixel_of_a_small_slide(client: Client, slide_url: str) -> None:
    backend = ThresholdBackend(nuclear="DNA1", max_cell_diameter_um=14)
    segment_slide(open_slide(slide_url), backend, client=client, tile_size=64)
    stored = _meta(slide_url)["statistics"]
    ref = statistics_from_array(_image()[:1], ["DNA1"])
    assert np.array_equal(np.asarray(stored["counts"]), ref.counts)
    assert stored["extra"]["sample"]["fraction"] == 1.0 and stored["extra"]["sample"]["requested"] == "auto"


def test_a_sample_of_every_chunk_is_the_full_statistics(client: Client, slide_url: str) -> None:
    backend = ThresholdBackend(nuclear="DNA1", max_cell_diameter_um=14)
    segment_slide(open_slide(slide_url), backend, client=client, tile_size=64, statistics_sample=1.0)
    full = _meta(slide_url)
    segment_slide(open_slide(slide_url), backend, client=client, tile_size=64, statistics_sample="full", overwrite=True)
    assert _meta(slide_url)["statistics"]["counts"] == full["statistics"]["counts"]


def test_changing_the_sample_recomputes_the_statistics(client: Client, slide_url: str) -> None:
    backend = ThresholdBackend(nuclear="DNA1", max_cell_diameter_um=14)
    segment_slide(open_slide(slide_url), backend, client=client, tile_size=64, statistics_sample=0.25, keep_scratch=True)
    first = _meta(slide_url)["statistics"]
    segment_slide(open_slide(slide_url), backend, client=client, tile_size=64, statistics_sample=0.5, overwrite=True)
    second = _meta(slide_url)["statistics"]
    assert first["extra"]["sample"]["blocks"] == 16 and second["extra"]["sample"]["blocks"] == 32
    assert first["counts"] != second["counts"]


@pytest.mark.parametrize("value", ["some", 0.0, 1.5, -1, float("nan"), True])
def test_bad_statistics_values_are_named(value: Any) -> None:
    with pytest.raises(ParameterError, match="statistics_sample"):
        resolve_statistics(value, SHAPE)


def test_statistics_values() -> None:
    assert resolve_statistics("auto", (100, 100)) == 1.0
    assert resolve_statistics("auto", (32768, 32768)) == 0.125
    assert resolve_statistics("FULL", (32768, 32768)) == 1.0
    assert resolve_statistics("0.2", (100, 100)) == 0.2
    assert resolve_statistics(0.5, (100, 100)) == 0.5


def test_api_checks_statistics_before_writing(slide_url: str) -> None:
    from tiledseg.api import segment

    with pytest.raises(ParameterError, match="statistics_sample"):
        segment(slide_url, backend="threshold", nuclear=["DNA1"], statistics_sample="half", client=None)
    assert "cells" not in open_slide(slide_url).labels


def test_fit_windows_of_sampled_chunks_read_no_neighbouring_chunk() -> None:
    from tiledseg.cluster._segment import _block_tile

    inner = _block_tile(3, ((64, 96), (32, 64)), (32, 32), 40, SHAPE)
    assert inner.window == ((64, 96), (32, 64))  # the chunk alone
    assert inner.core == ((68, 92), (36, 60))  # interior: min(halo 40, 32 / 8) px margin
    corner = _block_tile(0, ((0, 32), (224, 256)), (32, 32), 40, SHAPE)
    assert corner.core == ((0, 28), (228, 256))  # no margin on the slide's own edges
    small_halo = _block_tile(1, ((64, 96), (32, 64)), (32, 32), 2, SHAPE)
    assert small_halo.core == ((66, 94), (34, 62))
