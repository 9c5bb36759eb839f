from __future__ import annotations

import pickle
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import zarr

from tiledseg.errors import (
    IncompleteOutputError,
    OutputExistsError,
    ParameterError,
    SlideFormatError,
    SlideNotFoundError,
)
from tiledseg.io import begin_labels, open_labels, open_slide, write_labels, write_slide


@pytest.fixture
def slide_url(tmp_path: Path, imc_image: np.ndarray) -> str:
    return write_slide(
        tmp_path / "s.ome.zarr", imc_image, channel_names=["a", "b", "c"], pixel_size_um=0.5, chunks=(1, 32, 32)
    )


@pytest.fixture
def label_image(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 40, size=(70, 90)).astype(np.int64)


def test_round_trip(slide_url: str, label_image: np.ndarray) -> None:
    url = write_labels(slide_url, "cells", label_image, metadata={"backend": "watershed", "n_cells": 39})
    assert url == slide_url + "/labels/cells"
    labels = open_labels(slide_url, "cells")
    assert labels.data.dtype == np.uint32
    np.testing.assert_array_equal(labels.data.compute(), label_image)
    assert labels.complete
    assert labels.metadata == {"backend": "watershed", "n_cells": 39, "status": "complete"}
    assert labels.attrs["tiledseg"]["status"] == "complete"
    assert [lvl.shape for lvl in labels.levels] == [(70, 90), (35, 45), (18, 23)]
    assert open_slide(slide_url).labels == ("cells",)
    ms = labels.attrs["ome"]["multiscales"][0]
    assert ms["datasets"][1]["coordinateTransformations"][0]["scale"] == [1.0, 1.0]


def test_pyramid_never_interpolates(slide_url: str, label_image: np.ndarray) -> None:
    write_labels(slide_url, "cells", label_image)
    labels = open_labels(slide_url)
    present = set(np.unique(label_image))
    for level in labels.levels[1:]:
        assert set(np.unique(level.compute())) <= present
    # each level-1 pixel is one of its own 2x2 block's labels
    lvl1 = labels.levels[1].compute()
    blocks = label_image.reshape(35, 2, 45, 2).transpose(0, 2, 1, 3).reshape(35, 45, 4)
    assert (blocks == lvl1[..., None]).any(axis=-1).all()


def test_mode_downsampling_picks_majority() -> None:
    from tiledseg.io._pyramid import downsample_labels_block

    block = np.array([[5, 5, 0, 1], [7, 5, 2, 3], [9, 9, 4, 4]], dtype=np.uint32)
    out = downsample_labels_block(block)
    # majority 5; a tie goes to the top-left value; the odd last row repeats itself
    np.testing.assert_array_equal(out, [[5, 0], [9, 4]])


def test_dask_labels_streamed(slide_url: str, label_image: np.ndarray) -> None:
    lazy = da.from_array(label_image.astype(np.uint32), chunks=(13, 29))
    write_labels(slide_url, "nuclei", lazy, chunks=(16, 16))
    labels = open_labels(slide_url, "nuclei")
    assert labels.data.chunksize == (16, 16)
    np.testing.assert_array_equal(labels.data.compute(), label_image)


def test_validates_with_ome_zarr_models(slide_url: str, label_image: np.ndarray) -> None:
    import ome_zarr_models
    from ome_zarr_models.v05 import Image

    write_labels(slide_url, "cells", label_image)
    model = ome_zarr_models.open_ome_zarr(zarr.open_group(slide_url, mode="r"))
    assert isinstance(model, Image)
    assert model.labels is not None
    assert list(model.labels.members) == ["cells"]


def test_ome_zarr_reader_sees_label(slide_url: str, label_image: np.ndarray) -> None:
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Reader

    write_labels(slide_url, "cells", label_image)
    location = parse_url(slide_url + "/labels/cells")
    assert location is not None
    nodes = list(Reader(location)())
    label_nodes = [n for n in nodes if any(isinstance(s, Label) for s in n.specs)]
    assert len(label_nodes) == 1
    np.testing.assert_array_equal(np.asarray(label_nodes[0].data[0]), label_image)


def test_memory_url(memory_url: str, imc_image: np.ndarray, label_image: np.ndarray) -> None:
    write_slide(memory_url, imc_image, channel_names=["a", "b", "c"], pixel_size_um=1.0)
    write_labels(memory_url, "cells", label_image)
    np.testing.assert_array_equal(open_labels(memory_url).data.compute(), label_image)
    assert open_slide(memory_url).labels == ("cells",)


def test_writer_regions_then_finalize(slide_url: str, label_image: np.ndarray) -> None:
    writer = begin_labels(slide_url, "cells", chunks=(32, 32), metadata={"tile_size": 32})
    writer = pickle.loads(pickle.dumps(writer))  # engine tasks receive it pickled
    with pytest.raises(IncompleteOutputError, match="tiledseg segment"):
        open_labels(slide_url, "cells")
    assert open_slide(slide_url).labels == ()
    for r in range(0, 70, 32):
        for c in range(0, 90, 32):
            writer.write_region(label_image[r : r + 32, c : c + 32], offset=(r, c))
    partial = open_labels(slide_url, "cells", allow_incomplete=True)
    assert not partial.complete
    writer.finalize(metadata={"n_cells": 39})
    labels = open_labels(slide_url, "cells")
    np.testing.assert_array_equal(labels.data.compute(), label_image)
    assert labels.metadata == {"tile_size": 32, "n_cells": 39, "status": "complete"}
    assert len(labels.levels) == 3
    assert open_slide(slide_url).labels == ("cells",)


def test_writer_region_out_of_bounds(slide_url: str) -> None:
    writer = begin_labels(slide_url, "cells")
    with pytest.raises(ParameterError, match="exceeds"):
        writer.write_region(np.ones((10, 10), np.uint32), offset=(65, 0))


def test_failed_label_write_refused(slide_url: str, label_image: np.ndarray) -> None:
    def boom(block: np.ndarray, block_info: dict | None = None) -> np.ndarray:
        if block_info is not None and block_info[0]["chunk-location"] == (1, 1):
            raise RuntimeError("worker died")
        return block

    lazy = da.from_array(label_image, chunks=(32, 32)).map_blocks(boom, dtype=label_image.dtype)
    with pytest.raises(RuntimeError, match="worker died"):
        write_labels(slide_url, "cells", lazy)
    with pytest.raises(IncompleteOutputError, match="incomplete"):
        open_labels(slide_url, "cells")
    assert open_slide(slide_url).labels == ()
    write_labels(slide_url, "cells", label_image)  # resume: no overwrite needed
    assert open_slide(slide_url).labels == ("cells",)


def test_overwrite(slide_url: str, label_image: np.ndarray) -> None:
    write_labels(slide_url, "cells", label_image)
    with pytest.raises(OutputExistsError, match="overwrite"):
        write_labels(slide_url, "cells", label_image)
    write_labels(slide_url, "cells", label_image + 1, overwrite=True)
    np.testing.assert_array_equal(open_labels(slide_url).data.compute(), label_image + 1)
    write_labels(slide_url, "nuclei", label_image)
    assert open_slide(slide_url).labels == ("cells", "nuclei")


def test_bad_labels(slide_url: str) -> None:
    with pytest.raises(SlideFormatError, match=r"must match the slide's spatial shape \(70, 90\)"):
        write_labels(slide_url, "cells", np.zeros((70, 91), np.uint32))
    with pytest.raises(SlideFormatError, match="2-D"):
        write_labels(slide_url, "cells", np.zeros((1, 70, 90), np.uint32))
    with pytest.raises(SlideFormatError, match="integer"):
        write_labels(slide_url, "cells", np.zeros((70, 90), np.float32))
    with pytest.raises(ParameterError, match="name"):
        write_labels(slide_url, "a/b", np.zeros((70, 90), np.uint32))


def test_missing(tmp_path: Path, slide_url: str) -> None:
    with pytest.raises(SlideNotFoundError, match="no label image 'cells'"):
        open_labels(slide_url, "cells")
    with pytest.raises(SlideNotFoundError, match="does not exist"):
        open_labels(tmp_path / "absent.ome.zarr")
    with pytest.raises(SlideNotFoundError):
        write_labels(tmp_path / "absent.ome.zarr", "cells", np.zeros((4, 4), np.uint32))


def test_label_values_must_fit_uint32(slide_url: str) -> None:
    bad = np.zeros((70, 90), np.int64)
    bad[5, 5] = -3
    with pytest.raises(SlideFormatError, match="must fit uint32"):
        write_labels(slide_url, "cells", da.from_array(bad, chunks=32))
    too_big = np.zeros((70, 90), np.uint64)
    too_big[60, 80] = 2**33
    with pytest.raises(SlideFormatError, match="must fit uint32"):
        write_labels(slide_url, "cells", too_big)


def _store_level0_as(slide_url: str, name: str, data: np.ndarray) -> None:
    """Replace level 0 of ``labels/<name>`` by ``data`` as stored, like another tool might."""
    write_labels(slide_url, name, np.zeros(data.shape, np.uint32), chunks=(32, 32))
    group = zarr.open_group(f"{slide_url}/labels/{name}", mode="a")
    del group["0"]
    group.create_array("0", data=data, chunks=(32, 32))


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.bool_])
def test_open_labels_refuses_non_integer_dtypes(slide_url: str, label_image: np.ndarray, dtype: type) -> None:
    _store_level0_as(slide_url, "floaty", label_image.astype(dtype))
    with pytest.raises(SlideFormatError, match=rf"labels/floaty.*integer cell IDs.*stored as {np.dtype(dtype)}"):
        open_labels(slide_url, "floaty")


@pytest.mark.parametrize("dtype", [np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint64])
def test_open_labels_reads_other_integer_dtypes(slide_url: str, label_image: np.ndarray, dtype: type) -> None:
    _store_level0_as(slide_url, "other", label_image.astype(dtype))
    labels = open_labels(slide_url, "other")
    assert labels.data.dtype == np.uint32
    got = labels.data.compute()
    assert got.dtype == np.uint32
    np.testing.assert_array_equal(got, label_image)


def test_open_labels_checks_signed_values_lazily(slide_url: str, label_image: np.ndarray) -> None:
    negative = label_image.astype(np.int32)
    negative[65, 85] = -4  # in the last chunk only
    _store_level0_as(slide_url, "negative", negative)
    labels = open_labels(slide_url, "negative")  # lazy: opening reads no pixels
    assert labels.data.dtype == np.uint32
    # blocks without negative values compute fine; the cast never wraps -4 round to 4294967292
    np.testing.assert_array_equal(labels.data[:32, :32].compute(), label_image[:32, :32])
    with pytest.raises(SlideFormatError, match=r"labels/negative.*stored as int32.*\[-4, .*non-negative"):
        labels.data.compute()
    # the check survives pickling (the graph travels to Dask workers)
    with pytest.raises(SlideFormatError, match="non-negative"):
        pickle.loads(pickle.dumps(labels.data)).compute()


def test_open_labels_checks_64_bit_values_fit(slide_url: str) -> None:
    too_big = np.zeros((70, 90), np.int64)
    too_big[3, 3] = 2**32
    _store_level0_as(slide_url, "big", too_big)
    with pytest.raises(SlideFormatError, match="fit uint32"):
        open_labels(slide_url, "big").data.compute()


def test_label_levels_use_the_unshuffled_codec_and_images_the_shuffled_one(
    slide_url: str, label_image: np.ndarray
) -> None:
    write_labels(slide_url, "cells", label_image)
    writer = begin_labels(slide_url, "engine", chunks=(32, 32))
    assert writer.create_levels(1) == 1
    writer.write_region(label_image[:64, :64].astype(np.uint32), offset=(0, 0), levels=1)
    writer.finalize(levels_written=1)
    for name in ("cells", "engine"):
        for path in ("0", "1", "2"):
            arr = zarr.open_array(f"{slide_url}/labels/{name}/{path}", mode="r")
            [codec] = arr.compressors
            assert codec.cname.value == "lz4" and codec.shuffle.value == "noshuffle", (name, path, codec)
    [image_codec] = zarr.open_array(f"{slide_url}/0", mode="r").compressors
    assert image_codec.shuffle.value == "shuffle"


def test_regions_with_two_pyramid_levels(slide_url: str, label_image: np.ndarray) -> None:
    from tiledseg.io._pyramid import downsample_labels_block

    writer = begin_labels(slide_url, "cells", chunks=(16, 16))
    assert writer.create_levels(2) == 2
    with pytest.raises(ParameterError, match="4 times the chunks"):
        writer.write_region(label_image[:32, :32].astype(np.uint32), offset=(32, 0), levels=2)
    for r in range(0, 70, 64):
        for c in range(0, 90, 64):
            writer.write_region(label_image[r : r + 64, c : c + 64].astype(np.uint32), offset=(r, c), levels=2)
    writer.finalize(levels_written=2)
    levels = [np.asarray(level.compute()) for level in open_labels(slide_url, "cells").levels]
    assert np.array_equal(levels[0], label_image)
    assert len(levels) == 4  # 70 x 90 with 16-px chunks: 35 x 45, 18 x 23, 9 x 12
    for finer, coarser in zip(levels, levels[1:], strict=False):
        assert np.array_equal(downsample_labels_block(finer), coarser)
    # a short pyramid creates only the levels it has
    small = begin_labels(slide_url, "small", chunks=(64, 64))
    assert small.create_levels(5) == 1
