"""Direct chunk reads of slide channels (tiledseg.io._region): bit-identical to Dask and zarr."""

from __future__ import annotations

import pickle
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import zarr

from tiledseg.errors import SlideFormatError
from tiledseg.io import open_slide, write_slide
from tiledseg.io._region import ZarrChannels, zarr_channels

NAMES = ["DNA1", "DNA2", "CD45", "CD3", "Vim"]


def _slide(tmp_path: Path, *, shape: tuple[int, int] = (70, 90), dtype: type = np.float32,
           ngff_version: str = "0.5") -> tuple[str, np.ndarray]:
    rng = np.random.default_rng(7)
    image = (rng.random((len(NAMES), *shape)) * 300).astype(dtype)
    url = write_slide(tmp_path / "s.ome.zarr", image, channel_names=NAMES, pixel_size_um=1.0,
                      chunks=(1, 32, 32), ngff_version=ngff_version)
    return url, image


def _inputs(url: str, names: list[str]) -> da.Array:
    from tiledseg.cluster._segment import build_inputs

    return build_inputs(open_slide(url), names)


WINDOWS = [
    ((0, 32), (32, 64)),  # one whole chunk
    ((5, 69), (3, 88)),  # straddling chunks, partial everywhere
    ((64, 70), (64, 90)),  # the edge chunks (stored padded to the chunk shape)
    ((0, 70), (0, 90)),  # everything
    ((33, 34), (89, 90)),  # one pixel
]


@pytest.mark.parametrize("ngff_version", ["0.5", "0.4"])
@pytest.mark.parametrize("dtype", [np.float32, np.uint16])
def test_reads_equal_dask(tmp_path: Path, ngff_version: str, dtype: type) -> None:
    url, image = _slide(tmp_path, dtype=dtype, ngff_version=ngff_version)
    names = ["CD3", "DNA1", "Vim", "DNA1"]  # any order, repeats allowed
    lazy = _inputs(url, names)
    source = zarr_channels(lazy)
    assert source is not None
    assert source.channels == (3, 0, 4, 0)
    assert source.fast  # local store, bytes + Blosc (v3) or a Blosc compressor (v2)
    assert source.shape == lazy.shape and source.dtype == lazy.dtype
    for window in WINDOWS:
        (r0, r1), (c0, c1) = window
        got = source.read(window)
        assert got.flags.c_contiguous and got.dtype == image.dtype
        np.testing.assert_array_equal(got, lazy[:, r0:r1, c0:c1].compute())
        np.testing.assert_array_equal(got, image[[3, 0, 4, 0], r0:r1, c0:c1])
    # the zarr fallback gives the same pixels
    slow = ZarrChannels(source.store, source.channels)
    slow._fast = False
    for window in WINDOWS:
        np.testing.assert_array_equal(slow.read(window), source.read(window))
    # picklable (shipped to workers), and the copy reads the same
    copy = pickle.loads(pickle.dumps(source))
    np.testing.assert_array_equal(copy.read(WINDOWS[1]), source.read(WINDOWS[1]))


def test_other_arrays_are_not_mistaken_for_stored_channels(tmp_path: Path) -> None:
    url, _ = _slide(tmp_path)
    lazy = _inputs(url, ["DNA1", "CD45"])
    slide = open_slide(url)
    assert zarr_channels(lazy) is not None
    assert zarr_channels(lazy * 2) is None
    assert zarr_channels(lazy[::-1]) is None
    assert zarr_channels(lazy[:, :, :50]) is None
    assert zarr_channels(lazy.astype(np.float64)) is None
    assert zarr_channels(slide.image) is None  # not a stack of planes
    assert zarr_channels(da.stack([slide.image[0], slide.image[1] + 1])) is None
    extra = da.from_array(np.zeros((70, 90), np.float32), chunks=32)
    assert zarr_channels(da.stack([slide.image[0], extra])) is None
    assert zarr_channels(da.zeros((2, 70, 90), chunks=(1, 32, 32))) is None


def test_other_codecs_take_the_zarr_path_and_missing_chunks_read_as_fill(tmp_path: Path) -> None:
    data = np.arange(3 * 40 * 50, dtype=np.float32).reshape(3, 40, 50)
    z = zarr.create_array(tmp_path / "zstd.zarr", shape=data.shape, chunks=(1, 16, 16), dtype=np.float32,
                          fill_value=-1.0)
    z[...] = data
    source = ZarrChannels(z, (2, 1))
    assert not source.fast  # zarr's default codecs (zstd) are not decoded here
    np.testing.assert_array_equal(source.read(((3, 40), (7, 50))), data[[2, 1], 3:40, 7:50])

    blosc = zarr.create_array(tmp_path / "blosc.zarr", shape=data.shape, chunks=(1, 16, 16), dtype=np.float32,
                              fill_value=-1.0, compressors=zarr.codecs.BloscCodec(cname="lz4"))
    blosc[:, :16, :16] = data[:, :16, :16]  # only the first chunk of each channel is stored
    fast = ZarrChannels(blosc, (0, 2))
    assert fast.fast
    got = fast.read(((0, 40), (0, 50)))
    expected = np.full((2, 40, 50), -1.0, np.float32)
    expected[:, :16, :16] = data[[0, 2], :16, :16]
    np.testing.assert_array_equal(got, expected)

    # several channels per chunk
    multi = zarr.create_array(tmp_path / "multi.zarr", shape=data.shape, chunks=(2, 16, 16), dtype=np.float32,
                              compressors=zarr.codecs.BloscCodec(cname="lz4"))
    multi[...] = data
    source = ZarrChannels(multi, (2, 1, 0))
    assert source.fast
    np.testing.assert_array_equal(source.read(((1, 33), (0, 50))), data[[2, 1, 0], 1:33, :])


def test_bad_chunks_and_windows_are_clear_errors(tmp_path: Path) -> None:
    url, _ = _slide(tmp_path)
    source = zarr_channels(_inputs(url, ["DNA1"]))
    assert source is not None
    chunk = Path(str(source.store.store.root)) / source.store.path / "c" / "0" / "0" / "0"  # type: ignore[attr-defined]
    assert chunk.is_file()
    # a chunk that decodes to the wrong size (here: one compressed from a smaller block)
    import numcodecs

    chunk.write_bytes(numcodecs.Blosc(cname="lz4").encode(np.zeros((8, 8), np.float32)))
    with pytest.raises(SlideFormatError, match="decodes to 256 bytes"):
        source.read(((0, 10), (0, 10)))
    with pytest.raises(ValueError, match="outside"):
        source.read(((0, 71), (0, 10)))
    with pytest.raises(ValueError, match="empty"):
        source.read(((5, 5), (0, 10)))
    with pytest.raises(SlideFormatError, match="outside the array's 5 channels"):
        ZarrChannels(source.store, (5,))


def test_engine_reader_reads_stored_channels_directly(tmp_path: Path) -> None:
    from tiledseg.cluster._segment import _Reader

    url, image = _slide(tmp_path, shape=(100, 120))
    lazy = _inputs(url, ["CD45", "DNA2"])
    reader = _Reader(lazy, chunks=(32, 32), cache_blocks=4)
    assert reader.source is not None
    copy = pickle.loads(pickle.dumps(reader))
    assert copy.source is not None and copy.source.channels == (2, 1)
    for r in (reader, copy):
        for window in [((0, 50), (10, 90)), ((40, 100), (70, 120)), ((0, 100), (0, 120))]:
            (r0, r1), (c0, c1) = window
            for cache in (True, False):
                np.testing.assert_array_equal(r.read(window, cache=cache), image[[2, 1], r0:r1, c0:c1])
    # an input that is not stored channels is read through Dask, with the same result
    mixed = da.stack([lazy[0], lazy[1] * 1])
    dask_reader = _Reader(mixed, chunks=(32, 32))
    assert dask_reader.source is None
    np.testing.assert_array_equal(dask_reader.read(((3, 77), (5, 119))), reader.read(((3, 77), (5, 119))))


def test_engine_reader_strip_cache_serves_halos_exactly(tmp_path: Path) -> None:
    from tiledseg.cluster._segment import _Reader
    from tiledseg.tiling import plan_tiles

    url, image = _slide(tmp_path, shape=(100, 120))
    lazy = _inputs(url, ["Vim", "DNA1", "CD45"])
    expected = image[[4, 0, 2]]
    plan = plan_tiles((100, 120), tile_size=32, halo=5, chunks=(32, 32))

    def blocks_read(reader: _Reader) -> int:
        calls = []
        direct = reader._direct

        def counted(window: tuple[tuple[int, int], tuple[int, int]]) -> np.ndarray:
            calls.append(window)
            return direct(window)

        reader._direct = counted  # type: ignore[method-assign]
        for tile in plan.tiles:  # row by row, as one worker takes them
            (r0, r1), (c0, c1) = tile.window
            np.testing.assert_array_equal(reader.read(tile.window), expected[:, r0:r1, c0:c1])
        return len(calls)

    reader = _Reader(lazy, chunks=(32, 32))
    # each of the 4 x 4 chunk-aligned blocks is decompressed once: halos of blocks that left
    # the 9-block cache come from their strips
    assert blocks_read(reader) == 16
    assert reader._margin == 5 and reader._strips
    assert reader._strip_bytes <= reader.cache_blocks * 3 * 32 * 32 * 4
    no_strips = _Reader(lazy, chunks=(32, 32))
    no_strips._evicted = lambda key, block: None  # type: ignore[method-assign]
    assert blocks_read(no_strips) > 16
    # any order of any windows: the same pixels as an uncached read
    rng = np.random.default_rng(3)
    for _ in range(60):
        r0, c0 = int(rng.integers(0, 99)), int(rng.integers(0, 119))
        r1, c1 = int(rng.integers(r0 + 1, 101)), int(rng.integers(c0 + 1, 121))
        if rng.random() < 0.5:  # thin strips, as halos are
            r1 = min(r0 + int(rng.integers(1, 8)), 100)
        np.testing.assert_array_equal(reader.read(((r0, r1), (c0, c1))), expected[:, r0:r1, c0:c1])
    # a tiny cache: strips are dropped oldest first to stay within one block's bytes
    small = _Reader(lazy, chunks=(32, 32), cache_blocks=1)
    for tile in plan.tiles:
        (r0, r1), (c0, c1) = tile.window
        np.testing.assert_array_equal(small.read(tile.window), expected[:, r0:r1, c0:c1])
        assert small._strip_bytes <= 3 * 32 * 32 * 4
    assert small._strips


# --------------------------------------------------------------------------- direct chunk writes


def _label_array(path: Path, zarr_format: int = 3) -> zarr.Array:  # type: ignore[type-arg]
    from tiledseg.io._write import compressors_for

    return zarr.create_array(
        str(path), shape=(70, 90), chunks=(32, 32), dtype=np.uint32, fill_value=0,
        compressors=compressors_for(np.dtype(np.uint32), zarr_format=zarr_format, labels=True),
        zarr_format=zarr_format,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("zarr_format", [3, 2])
def test_direct_region_writes_read_back_through_zarr(tmp_path: Path, zarr_format: int) -> None:
    from tiledseg.io._region import _fast_codec, write_region

    arr = _label_array(tmp_path / "l.zarr", zarr_format)
    assert _fast_codec(arr)
    rng = np.random.default_rng(3)
    expected = np.zeros((70, 90), np.uint32)
    # whole chunks, the ragged edge chunks, and a block that is all background in one chunk
    for (r, c, h, w) in [(0, 0, 64, 64), (64, 0, 6, 64), (0, 64, 64, 26), (64, 64, 6, 26)]:
        block = rng.integers(0, 9, size=(h, w)).astype(np.uint32)
        block[:32, :32] = 0 if (r, c) == (0, 0) else block[:32, :32]
        write_region(arr, block, (r, c))
        expected[r : r + h, c : c + w] = block
    reread = zarr.open_array(str(tmp_path / "l.zarr"), mode="r")
    assert np.array_equal(reread[...], expected)
    # the all-background chunk is not stored, like zarr's own writes
    key = reread.metadata.encode_chunk_key((0, 0))
    assert not (tmp_path / "l.zarr" / key).exists()
    # rewriting a chunk with background removes the stale stored chunk
    write_region(arr, np.zeros((6, 26), np.uint32), (64, 64))
    assert not (tmp_path / "l.zarr" / reread.metadata.encode_chunk_key((2, 2))).exists()
    expected[64:, 64:] = 0
    assert np.array_equal(zarr.open_array(str(tmp_path / "l.zarr"), mode="r")[...], expected)
    assert not list((tmp_path / "l.zarr").rglob("*.partial"))


def test_unaligned_regions_and_other_stores_go_through_zarr(tmp_path: Path) -> None:
    from tiledseg.io._region import write_region

    arr = _label_array(tmp_path / "l.zarr")
    block = np.arange(10 * 20, dtype=np.uint32).reshape(10, 20) + 1
    write_region(arr, block, (5, 7))  # not on chunk boundaries
    assert np.array_equal(arr[5:15, 7:27], block)
    mem = zarr.create_array(zarr.storage.MemoryStore(), shape=(70, 90), chunks=(32, 32), dtype=np.uint32)
    write_region(mem, np.ones((32, 32), np.uint32), (32, 32))
    assert mem[32:64, 32:64].sum() == 32 * 32 and mem[...].sum() == 32 * 32
