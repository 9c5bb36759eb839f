"""Tests of ``benchmarks/_bigslide.py``: periodic tilings of a slide for the engine benchmarks."""

from __future__ import annotations

import importlib.util
import itertools
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import zarr

from tiledseg.datasets import write_synthetic_slide
from tiledseg.errors import IncompleteOutputError, OutputExistsError, ParameterError
from tiledseg.io import open_slide, write_slide
from tiledseg.io._pyramid import downsample_mean_block

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "_bigslide.py"


def _load() -> ModuleType:
    # benchmarks/ is not a package: load the module from its file.
    spec = importlib.util.spec_from_file_location("tiledseg_bench_bigslide", _PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


bigslide = _load()


def _source(tmp_path: Path, shape: tuple[int, int], *, name: str = "src", **kw: Any) -> str:
    url: str = write_synthetic_slide(
        tmp_path / f"{name}.ome.zarr", shape, 3, seed=4, chunks=(1, 32, 32), truth=False,
        pixel_size_um=0.5, **kw,
    )
    return url


def _chunk_files(url: str, level: str) -> list[Path]:
    return sorted(p for p in (Path(url) / level / "c").rglob("*") if p.is_file())


def _check_pyramid(url: str) -> None:
    """Every level is the 2x2-mean of the level below, as ``write_slide`` makes it."""
    levels = [np.asarray(lv) for lv in open_slide(url).levels]
    for finer, coarser in itertools.pairwise(levels):
        np.testing.assert_array_equal(coarser, downsample_mean_block(finer))


def test_levels_are_tiles_of_the_source_and_slide_metadata_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src_url = _source(tmp_path, (64, 64))

    def no_decode(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("aligned levels must be copied, not decoded")

    monkeypatch.setattr(bigslide, "store_array", no_decode)
    out = bigslide.write_periodic_slide(src_url, tmp_path / "big.ome.zarr", repeats=(2, 3))
    src, big = open_slide(src_url), open_slide(out)
    assert big.shape == (3, 128, 192)
    assert big.channel_names == src.channel_names
    assert big.pixel_size_um == src.pixel_size_um == 0.5
    assert big.panel is not None and src.panel is not None
    assert big.panel.equals(src.panel)
    assert big.attrs["tiledseg"]["synthetic"] == src.attrs["tiledseg"]["synthetic"]
    assert big.attrs["tiledseg"]["periodic"] == {
        "source": src_url, "source_shape": [3, 64, 64], "repeats": [2, 3],
    }
    assert big.attrs["tiledseg"]["status"] == "complete"
    # 128x192 -> 64x96 -> 32x48 -> 16x24: two levels tiled from the source, two rebuilt.
    assert [lv.shape[1:] for lv in big.levels] == [(128, 192), (64, 96), (32, 48), (16, 24)]
    for k, level in enumerate(src.levels):
        np.testing.assert_array_equal(np.asarray(big.levels[k]), np.tile(np.asarray(level), (1, 2, 3)))
    _check_pyramid(out)
    group = zarr.open_group(out, mode="r")
    src_group = zarr.open_group(src_url, mode="r")
    for path in ("0", "1", "2", "3"):
        arr, ref = group[path], src_group["0"]
        assert isinstance(arr, zarr.Array) and isinstance(ref, zarr.Array)
        assert arr.chunks == tuple(min(c, s) for c, s in zip(ref.chunks, arr.shape))
        assert arr.compressors == ref.compressors and arr.dtype == ref.dtype
    # Aligned levels are stored byte for byte: level 0 holds 2*3 copies of each source chunk.
    src_bytes = sorted(p.read_bytes() for p in _chunk_files(src_url, "0"))
    big_bytes = sorted(p.read_bytes() for p in _chunk_files(out, "0"))
    assert big_bytes == sorted(src_bytes * 6)


def _random_source(tmp_path: Path, shape: tuple[int, int]) -> str:
    image = np.random.default_rng(1).random((2, *shape), dtype=np.float32)
    url: str = write_slide(
        tmp_path / "rnd.ome.zarr", image, channel_names=["a", "b"], pixel_size_um=1.0, chunks=(1, 32, 32)
    )
    return url


@pytest.mark.parametrize("shape", [(48, 40), (70, 40)])
def test_unaligned_and_odd_sources_decode_and_rebuild(tmp_path: Path, shape: tuple[int, int]) -> None:
    # 48x40 with 32-px chunks: chunks straddle the seams, so levels are decoded and re-tiled.
    # 70x40: level 1 is 35x20 (odd rows), so level 2 of the tiling is no tile of the source's
    # level 2 and must be rebuilt from the tiled level 1.
    src_url = _random_source(tmp_path, shape)
    out = bigslide.write_periodic_slide(src_url, tmp_path / "big.ome.zarr", repeats=(2, 3))
    src, big = open_slide(src_url), open_slide(out)
    assert big.shape == (2, 2 * shape[0], 3 * shape[1])
    for k in range(2):
        np.testing.assert_array_equal(np.asarray(big.levels[k]), np.tile(np.asarray(src.levels[k]), (1, 2, 3)))
    _check_pyramid(out)


def test_repeats_of_one_reproduce_the_source(tmp_path: Path) -> None:
    src_url = _source(tmp_path, (46, 34))
    out = bigslide.write_periodic_slide(src_url, tmp_path / "same.ome.zarr", repeats=(1, 1))
    src, same = open_slide(src_url), open_slide(out)
    assert len(same.levels) == len(src.levels)
    for a, b in zip(src.levels, same.levels):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_incomplete_source_refused_and_overwrite_rules(tmp_path: Path) -> None:
    src_url = _source(tmp_path, (64, 64))
    group = zarr.open_group(src_url, mode="r+")
    meta = dict(group.attrs["tiledseg"])  # type: ignore[arg-type]
    group.update_attributes({"tiledseg": {**meta, "status": "incomplete"}})
    with pytest.raises(IncompleteOutputError, match="src.ome.zarr.*incomplete"):
        bigslide.write_periodic_slide(src_url, tmp_path / "big.ome.zarr", repeats=(2, 2))
    assert not (tmp_path / "big.ome.zarr").exists()
    group.update_attributes({"tiledseg": meta})
    out = bigslide.write_periodic_slide(src_url, tmp_path / "big.ome.zarr", repeats=(2, 2))
    with pytest.raises(OutputExistsError, match="big.ome.zarr"):
        bigslide.write_periodic_slide(src_url, out, repeats=(2, 2))
    bigslide.write_periodic_slide(src_url, out, repeats=(1, 2), overwrite=True)
    assert open_slide(out).shape == (3, 64, 128)


def test_bad_repeats_and_same_destination(tmp_path: Path) -> None:
    src_url = _source(tmp_path, (64, 64))
    for repeats in [(0, 2), (2,), (2, 2, 2), (1.5, 2)]:
        with pytest.raises(ParameterError, match="`repeats`"):
            bigslide.write_periodic_slide(src_url, tmp_path / "big.ome.zarr", repeats=repeats)
    with pytest.raises(ParameterError, match="`dest_url`"):
        bigslide.write_periodic_slide(src_url, src_url, repeats=(2, 2))


def test_ngff_04_zarr_v2_source(tmp_path: Path) -> None:
    image = np.random.default_rng(0).integers(0, 60000, size=(2, 64, 96), dtype=np.uint16)
    src_url = write_slide(
        tmp_path / "v2.ome.zarr", image, channel_names=["a", "b"], pixel_size_um=2.0,
        chunks=(1, 32, 32), ngff_version="0.4",
    )
    out = bigslide.write_periodic_slide(src_url, tmp_path / "big.ome.zarr", repeats=(3, 1))
    big = open_slide(out)
    assert zarr.open_group(out, mode="r").metadata.zarr_format == 2
    assert big.channel_names == ("a", "b") and big.pixel_size_um == 2.0
    np.testing.assert_array_equal(np.asarray(big.image), np.tile(image, (1, 3, 1)))
    assert big.image.dtype == np.uint16
    _check_pyramid(out)
