"""The tile engine end to end on small slides (threaded Dask clients, one per module)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from distributed import Client
from numpy.typing import NDArray
from skimage.measure import label

from tests.stitch._helpers import disks
from tiledseg.cluster import segment_slide
from tiledseg.errors import (
    ChannelNotFoundError,
    NoGPUWorkerError,
    OutputExistsError,
    ParameterError,
    TileFailedError,
)
from tiledseg.io import open_labels, open_slide, write_slide
from tiledseg.io._scratch import ScratchStore, read_cell_flags
from tiledseg.progress import ProgressEvent
from tiledseg.segment._function import FunctionBackend
from tiledseg.segment._prepare import statistics_from_array
from tiledseg.segment._statistics import prepared_edges, prepared_histogram
from tiledseg.segment.threshold import ThresholdBackend
from tiledseg.testing import assert_consecutive_labels, assert_equivalent_labeling

SHAPE = (200, 230)


@pytest.fixture(scope="module")
def client() -> Iterator[Client]:
    with Client(processes=False, n_workers=2, threads_per_worker=1, dashboard_address=":0") as c:
        yield c


@pytest.fixture(scope="module")
def one_worker() -> Iterator[Client]:
    with Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=":0") as c:
        yield c


def _image(seed: int = 1, shape: tuple[int, int] = SHAPE) -> NDArray[np.float32]:
    mask = disks(shape, n=240, radius=(2, 7), seed=seed)
    rng = np.random.default_rng(seed)
    dna = mask * 10.0 + rng.random(shape)
    return np.stack([dna, rng.random(shape)]).astype(np.float32)


@pytest.fixture()
def slide_url(tmp_path: Path) -> str:
    return write_slide(
        str(tmp_path / "s.ome.zarr"), _image(), channel_names=["DNA1", "CD3"], pixel_size_um=1.0,
        chunks=(1, 64, 64),
    )


def _whole_image_reference(backend: Any, image: NDArray[np.float32], names: list[str]) -> NDArray[np.uint32]:
    inputs = image[[names.index(n) for n in backend.channels(names)]]
    stats = statistics_from_array(inputs, list(backend.channels(names)))
    prepared = backend.prepare(inputs, pixel_size_um=1.0, stats=stats)
    hist = prepared_histogram(prepared)
    fitted = backend.fit(hist, prepared_edges(hist.shape[0]))
    return np.asarray(backend.segment(prepared, pixel_size_um=1.0, fitted=fitted))


def _stored(url: str, name: str = "cells") -> NDArray[np.uint32]:
    return np.asarray(zarr.open_array(f"{url}/labels/{name}/0", mode="r")[...])


@pytest.mark.parametrize("tile_size", [64, 128, 256], ids=["ragged-small", "ragged", "one-tile"])
def test_tiled_equals_whole_image(client: Client, slide_url: str, tile_size: int) -> None:
    backend = ThresholdBackend(nuclear="DNA1", max_cell_diameter_um=16, smooth_um=0.5)
    result = segment_slide(open_slide(slide_url), backend, client=client, tile_size=tile_size)
    labels = open_labels(slide_url).data.compute()
    reference = _whole_image_reference(backend, _image(), ["DNA1", "CD3"])
    assert labels.dtype == np.uint32
    assert_equivalent_labeling(labels, reference)
    assert_consecutive_labels(labels)
    assert result.n_cells == int(labels.max()) == np.unique(reference).size - 1
    assert result.n_truncated == 0 and result.n_seam == 0
    assert result.tiles_computed == result.n_tiles


def test_same_bytes_with_one_and_two_workers_and_metadata(
    client: Client, one_worker: Client, tmp_path: Path
) -> None:
    image = _image(seed=3)
    urls = []
    for k, c in enumerate([client, one_worker]):
        url = write_slide(
            str(tmp_path / f"s{k}.ome.zarr"), image, channel_names=["DNA1", "CD3"], pixel_size_um=1.0,
            chunks=(1, 64, 64),
        )
        segment_slide(open_slide(url), ThresholdBackend(max_cell_diameter_um=16), client=c, tile_size=64)
        urls.append(url)
    a, b = _stored(urls[0]), _stored(urls[1])
    assert a.dtype == b.dtype == np.uint32
    assert a.tobytes() == b.tobytes()
    meta = open_labels(urls[0]).metadata
    assert meta["status"] == "complete"
    assert meta["tile_plan"]["n_tiles"] == 16 and sum(meta["tile_counts"]) == int(a.max())
    assert meta["statistics"]["names"] == ["DNA1"] and "threshold" in meta["fitted"]
    assert meta["backend"] == "threshold" and meta["backend_params"]["max_cell_diameter_um"] == 16
    flags = read_cell_flags(urls[0], "cells")
    assert flags is not None and flags["seam"].shape == flags["truncated"].shape == (int(a.max()),)


def test_failed_tile_names_it_and_the_rerun_resumes(client: Client, slide_url: str) -> None:
    calls: list[int] = []
    state = {"fail": True}

    def fn(image: NDArray[np.float32], *, pixel_size_um: float) -> NDArray[np.int32]:
        calls.append(1)
        if state["fail"] and image.shape == (1, 24, 54):  # tile 15 (the ragged corner) of 4x4
            raise RuntimeError("boom")
        return label(image[0] > 5).astype(np.int32)

    backend = FunctionBackend(fn, channels=["DNA1"], halo_um=16)
    slide = open_slide(slide_url)
    with pytest.raises(TileFailedError, match=r"tile 15 \(rows 176:200, cols 176:230\).*boom") as info:
        segment_slide(slide, backend, client=client, tile_size=64)
    assert info.value.tile_index == 15
    assert info.value.window == (slice(176, 200), slice(176, 230))
    assert isinstance(info.value.__cause__, RuntimeError)
    scratch = ScratchStore.for_labels(slide_url, "cells")
    assert scratch.done_tiles() == set(range(15))
    with pytest.raises(Exception, match="incomplete|no label image"):
        open_labels(slide_url)
    state["fail"] = False
    calls.clear()
    events: list[ProgressEvent] = []
    result = segment_slide(open_slide(slide_url), backend, client=client, tile_size=64, progress=events.append)
    assert result.tiles_computed == 1 and result.tiles_resumed == 15 and len(calls) == 1
    resumed = [e for e in events if e.stage == "tiles" and e.kind == "advance"]
    assert sum(bool(e.detail["resumed"]) for e in resumed) == 15
    assert {"tile", "window", "cells", "seconds", "resumed"} <= set(resumed[0].detail)
    assert {e.stage for e in events} == {"statistics", "tiles", "stitch", "assemble"}
    resumed_labels = _stored(slide_url)
    # undisturbed run on a fresh copy gives the same bytes
    fresh = write_slide(
        slide_url + "-fresh", _image(), channel_names=["DNA1", "CD3"], pixel_size_um=1.0, chunks=(1, 64, 64)
    )
    segment_slide(open_slide(fresh), backend, client=client, tile_size=64)
    assert _stored(fresh).tobytes() == resumed_labels.tobytes()
    assert scratch.done_tiles() == set()  # tiles are removed after success


def test_incomplete_label_output_is_redone(client: Client, slide_url: str) -> None:
    backend = ThresholdBackend(max_cell_diameter_um=16)
    segment_slide(open_slide(slide_url), backend, client=client, tile_size=64, keep_scratch=True)
    before = _stored(slide_url)
    group = zarr.open_group(f"{slide_url}/labels/cells", mode="a")
    meta = dict(group.attrs["tiledseg"])  # type: ignore[arg-type]
    meta["status"] = "incomplete"
    group.update_attributes({"tiledseg": meta})
    arr = zarr.open_array(f"{slide_url}/labels/cells/0", mode="a")
    arr[:100, :100] = 0  # half-written output
    result = segment_slide(open_slide(slide_url), backend, client=client, tile_size=64)
    assert result.tiles_resumed == 16 and result.tiles_computed == 0
    assert _stored(slide_url).tobytes() == before.tobytes()


def test_existing_labels_need_overwrite(client: Client, slide_url: str) -> None:
    backend = ThresholdBackend(max_cell_diameter_um=16)
    segment_slide(open_slide(slide_url), backend, client=client, tile_size=256)
    with pytest.raises(OutputExistsError, match="overwrite"):
        segment_slide(open_slide(slide_url), backend, client=client, tile_size=256)
    result = segment_slide(open_slide(slide_url), backend, client=client, tile_size=128, overwrite=True)
    assert result.n_tiles == 4


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"tile_size": 96}, ParameterError, "multiple of the slide's chunk size"),
        ({"tile_size": 64, "halo_px": 70}, ParameterError, "must not exceed the tile size"),
    ],
)
def test_bad_plans(client: Client, slide_url: str, kwargs: dict[str, Any], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        segment_slide(open_slide(slide_url), ThresholdBackend(), client=client, **kwargs)


def test_missing_channel(client: Client, slide_url: str) -> None:
    with pytest.raises(ChannelNotFoundError, match="CD8"):
        segment_slide(open_slide(slide_url), ThresholdBackend(nuclear=["CD8"]), client=client)
    fn = FunctionBackend(lambda im, *, pixel_size_um: im[0] > 0, channels=["DNA9"], halo_um=4)
    with pytest.raises(ChannelNotFoundError, match="DNA9"):
        segment_slide(open_slide(slide_url), fn, client=client)


class _GPUThreshold(ThresholdBackend):
    requires_gpu = True
    name = "gputhreshold"


def test_gpu_backend_needs_a_gpu_worker_unless_allowed(client: Client, slide_url: str) -> None:
    backend = _GPUThreshold(max_cell_diameter_um=16)
    with pytest.raises(NoGPUWorkerError, match="allow_cpu"):
        segment_slide(open_slide(slide_url), backend, client=client, tile_size=64)
    result = segment_slide(open_slide(slide_url), backend, client=client, tile_size=64, allow_cpu=True)
    assert result.n_cells > 0
    labels = open_labels(slide_url).data.compute()
    reference = _whole_image_reference(ThresholdBackend(max_cell_diameter_um=16), _image(), ["DNA1", "CD3"])
    assert_equivalent_labeling(labels, reference)  # batched tiles (segment_batch) too


def test_truncated_cells_are_flagged(client: Client, tmp_path: Path) -> None:
    image = np.zeros((2, 128, 128), np.float32)
    image[0, 10:120, 60:66] = 10  # a 110-px long cell
    image[0, 20:26, 20:26] = 10
    url = write_slide(str(tmp_path / "t.ome.zarr"), image, channel_names=["DNA1", "CD3"], pixel_size_um=1.0,
                      chunks=(1, 32, 32))
    backend = FunctionBackend(lambda im, *, pixel_size_um: label(im[0] > 5), channels=["DNA1"], halo_um=8)
    result = segment_slide(open_slide(url), backend, client=client, tile_size=32)
    flags = read_cell_flags(url, "cells")
    assert flags is not None
    assert result.n_truncated >= 1 and int(flags["truncated"].sum()) == result.n_truncated
    labels = open_labels(url).data.compute()
    assert_consecutive_labels(labels)
    assert not flags["truncated"][labels[22, 22] - 1]


def test_more_than_65535_cells(client: Client, tmp_path: Path) -> None:
    image = np.zeros((1, 520, 520), np.float32)
    image[0, ::2, ::2] = 1
    url = write_slide(str(tmp_path / "dots.ome.zarr"), image, channel_names=["DNA1"], pixel_size_um=1.0,
                      chunks=(1, 130, 130))
    backend = FunctionBackend(lambda im, *, pixel_size_um: label(im[0] > 0.5), channels=["DNA1"], halo_um=2)
    result = segment_slide(open_slide(url), backend, client=client, tile_size=260)
    labels = open_labels(url).data.compute()
    assert result.n_cells == 260 * 260 == int(labels.max())
    assert labels.dtype == np.uint32
    assert np.unique(labels).size == 260 * 260 + 1


def test_rewritten_slide_does_not_reuse_stale_tiles(client: Client, slide_url: str) -> None:
    backend = ThresholdBackend(max_cell_diameter_um=16)
    segment_slide(open_slide(slide_url), backend, client=client, tile_size=128, keep_scratch=True)
    write_slide(slide_url, _image(seed=9), channel_names=["DNA1", "CD3"], pixel_size_um=1.0,
                chunks=(1, 64, 64), overwrite=True)
    result = segment_slide(open_slide(slide_url), backend, client=client, tile_size=128, overwrite=True)
    assert result.tiles_resumed == 0 and result.tiles_computed == 4
    reference = _whole_image_reference(backend, _image(seed=9), ["DNA1", "CD3"])
    assert_equivalent_labeling(open_labels(slide_url).data.compute(), reference)


def test_tile_failing_once_is_retried_in_task(client: Client, slide_url: str) -> None:
    failed: list[int] = []

    def flaky(image: NDArray[np.float32], *, pixel_size_um: float) -> NDArray[np.int32]:
        if not failed:
            failed.append(1)
            raise OSError("transient")
        return label(image[0] > 5).astype(np.int32)

    backend = FunctionBackend(flaky, channels=["DNA1"], halo_um=16)
    result = segment_slide(open_slide(slide_url), backend, client=client, tile_size=128, retries=1)
    assert failed and result.tiles_computed == 4
    assert_equivalent_labeling(open_labels(slide_url).data.compute(), label(_image()[0] > 5))


@pytest.mark.parametrize("tile_size", [64, 128])
def test_label_pyramid_written_with_the_blocks_equals_the_mode_pyramid(
    client: Client, slide_url: str, tile_size: int
) -> None:
    # level 1 is painted by the assembly tasks (2x2 chunks each); every level must equal the
    # 2x2-mode pyramid of the stored level 0 (odd edges included: 200 x 230 px, chunks 64)
    from tiledseg.io._pyramid import downsample_labels_block

    segment_slide(open_slide(slide_url), ThresholdBackend(max_cell_diameter_um=16), client=client,
                  tile_size=tile_size, overwrite=True)
    levels = [np.asarray(level.compute()) for level in open_labels(slide_url).levels]
    assert [lv.shape for lv in levels] == [(200, 230), (100, 115), (50, 58)]
    for finer, coarser in itertools.pairwise(levels):
        assert np.array_equal(downsample_labels_block(finer), coarser)


def test_larger_slides_write_two_pyramid_levels_with_the_blocks(client: Client, tmp_path: Path) -> None:
    # 17 x 19 chunks of 32 px: 4 x 4-chunk regions (levels 1 and 2 painted by the tasks), odd
    # edges at every level; the stored pyramid must still be the 2x2-mode pyramid of level 0
    from tiledseg.io._pyramid import downsample_labels_block

    shape = (520, 600)
    url = write_slide(str(tmp_path / "big.ome.zarr"), _image(seed=4, shape=shape), channel_names=["DNA1", "CD3"],
                      pixel_size_um=1.0, chunks=(1, 32, 32))
    segment_slide(open_slide(url), ThresholdBackend(max_cell_diameter_um=16), client=client, tile_size=64)
    levels = [np.asarray(level.compute()) for level in open_labels(url).levels]
    assert [lv.shape for lv in levels][:4] == [(520, 600), (260, 300), (130, 150), (65, 75)]
    for finer, coarser in itertools.pairwise(levels):
        assert np.array_equal(downsample_labels_block(finer), coarser)
    assert_consecutive_labels(levels[0])


def test_level1_regions_must_cover_whole_level1_chunks(slide_url: str) -> None:
    from tiledseg.io import begin_labels

    writer = begin_labels(slide_url, "cells", chunks=(64, 64))
    assert writer.create_levels(1) == 1
    with pytest.raises(ParameterError, match="2 times the chunks"):
        writer.write_region(np.ones((64, 64), np.uint32), offset=(64, 0), levels=1)



@pytest.mark.parametrize(
    ("shape", "tile", "halo"),
    [((300, 410), 100, 12), ((95, 260), 64, 20), ((50, 50), 64, 8), ((1034, 1034), 1024, 64)],  # last: thin edge tiles
)
def test_stored_edge_strips_cover_every_overlap_with_a_neighbour(shape: tuple[int, int], tile: int, halo: int) -> None:
    """Stitching reads only edge strips: each overlap of two windows lies inside a strip of both."""
    from tiledseg.cluster._segment import _crop, _edge_widths, _intersect
    from tiledseg.io._scratch import _EDGES, _edge_box, _holds
    from tiledseg.tiling import plan_tiles

    plan = plan_tiles(shape, tile_size=tile, halo=halo)
    for t in plan.tiles:
        widths = _edge_widths(t, plan.shape, plan.halo)
        size = t.window_shape
        boxes = [_edge_box(part, w, size) for part, w in zip(_EDGES, widths, strict=True)]
        assert sum(w > 0 for w in widths) == sum(  # a strip exactly on the sides with neighbours
            [t.core[0][0] > 0, t.core[0][1] < shape[0], t.core[1][0] > 0, t.core[1][1] < shape[1]]
        )
        for o in plan.neighbours(t.index):
            box = _intersect(t.window, plan[o].window)
            assert box is not None
            assert any(b is not None and _holds(b, *_crop(t, box)) for b in boxes), (t.index, o)
        # strips are no wider than the overlap needs: twice the halo
        assert all(w <= 2 * halo for w in widths)


def test_a_small_slide_is_decompressed_once_per_run(
    one_worker: Client, slide_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Inputs that fit WHOLE_SLIDE_CACHE_BYTES stay decoded in the worker's reader: statistics,
    fit and tiles read every chunk once (four times without the cache), with the same labels."""
    import tiledseg.cluster._segment as engine

    reads: list[object] = []
    direct = engine._Reader._direct

    def counted(self: Any, window: Any) -> Any:
        reads.append(window)
        return direct(self, window)

    monkeypatch.setattr(engine._Reader, "_direct", counted)
    backend = ThresholdBackend(nuclear="DNA1", max_cell_diameter_um=14, smooth_um=0.5)
    segment_slide(open_slide(slide_url), backend, client=one_worker, tile_size=64, statistics_sample="full")
    cached = _stored(slide_url)
    n_chunks = -(-SHAPE[0] // 64) * -(-SHAPE[1] // 64)
    assert len(reads) == n_chunks
    reads.clear()
    monkeypatch.setattr(engine, "WHOLE_SLIDE_CACHE_BYTES", 0)
    ScratchStore.for_labels(slide_url, "cells").begin(fingerprint="other", reset=True)
    ScratchStore.for_labels(slide_url, "cells").update({"stats_key": "", "fit_key": ""})  # recompute them
    segment_slide(open_slide(slide_url), backend, client=one_worker, tile_size=64, statistics_sample="full",
                  overwrite=True)
    assert len(reads) >= 3 * n_chunks  # minmax, histogram and fit/tiles passes each decode the chunks
    np.testing.assert_array_equal(_stored(slide_url), cached)


def test_whole_slide_budget_respects_worker_memory(one_worker: Client) -> None:
    from tiledseg.cluster._segment import WHOLE_SLIDE_CACHE_BYTES, _whole_slide_budget

    class Fake:
        def __init__(self, limits: list[int | None]) -> None:
            self.limits = limits

        def scheduler_info(self) -> dict[str, Any]:
            return {"workers": {str(i): {"memory_limit": m} for i, m in enumerate(self.limits)}}

    assert _whole_slide_budget(Fake([2**30, 8 * 2**30])) == 2**28  # a quarter of the smallest
    assert _whole_slide_budget(Fake([None, 0])) == WHOLE_SLIDE_CACHE_BYTES  # no limits known
    assert _whole_slide_budget(Fake([64 * 2**30])) == WHOLE_SLIDE_CACHE_BYTES
    assert _whole_slide_budget(object()) == WHOLE_SLIDE_CACHE_BYTES  # type: ignore[arg-type]
    assert 0 < _whole_slide_budget(one_worker) <= WHOLE_SLIDE_CACHE_BYTES
