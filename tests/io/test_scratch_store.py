"""The per-tile scratch store: round trip, completion, removal, cached windows."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tiledseg.io._scratch import ScratchStore


def test_tile_windows_round_trip_with_the_label_codec(tmp_path: Path) -> None:
    store = ScratchStore(str(tmp_path / "scratch.zarr"))
    assert store.begin(fingerprint="run-1") is False
    labels = np.random.default_rng(0).integers(0, 50, size=(70, 90)).astype(np.uint32)
    table = np.arange(16, dtype=np.float64).reshape(2, 8)
    store.write_tile(3, labels, table, attrs={"cells": 2})
    assert store.done_tiles() == {3}
    assert np.array_equal(store.read_tile_labels(3), labels)
    assert np.array_equal(store.read_tile_labels(3, (slice(5, 9), slice(60, 90))), labels[5:9, 60:90])
    assert np.array_equal(store.read_tile_table(3), table)
    assert store.tile_attrs(3) == {"cells": 2}
    # resuming reads only the header of each finished tile: the attributes survive a cut body
    path = tmp_path / "scratch.zarr" / "tiles" / "3.tile"
    whole = path.read_bytes()
    path.write_bytes(whole[: whole.index(b'"attrs"') + 40])
    assert store.tile_attrs(3) == {"cells": 2}
    path.write_bytes(whole)
    assert sorted(p.name for p in (tmp_path / "scratch.zarr" / "tiles").iterdir()) == ["3.tile"]
    # the same fingerprint resumes, another discards
    assert store.begin(fingerprint="run-1") is True and store.done_tiles() == {3}
    assert store.begin(fingerprint="run-2") is False and store.done_tiles() == set()


def test_remove_tiles_keeps_the_store_usable(tmp_path: Path) -> None:
    store = ScratchStore(str(tmp_path / "scratch.zarr"))
    store.begin(fingerprint="run-1")
    for i in range(3):
        store.write_tile(i, np.ones((4, 4), np.uint32), np.zeros((1, 8)))
    store.update({"statistics": {"kept": True}})
    store.remove_tiles()
    assert store.done_tiles() == set()
    assert not any((tmp_path / "scratch.zarr" / "tiles").glob("*.tile"))
    assert store.attrs()["statistics"] == {"kept": True}
    store.write_tile(0, np.ones((4, 4), np.uint32), np.zeros((1, 8)))  # still writable
    assert store.done_tiles() == {0}


def test_remove_tiles_in_memory_store() -> None:
    store = ScratchStore("memory://scratch-remove-test.zarr")
    store.begin(fingerprint="run-1", reset=True)
    store.write_tile(0, np.ones((4, 4), np.uint32), np.zeros((1, 8)))
    store.remove_tiles()
    assert store.done_tiles() == set()


def test_a_half_written_tile_is_not_finished_and_a_foreign_file_is_refused(tmp_path: Path) -> None:
    import pytest

    from tiledseg.errors import SlideFormatError

    store = ScratchStore(str(tmp_path / "scratch.zarr"))
    store.begin(fingerprint="run-1")
    tiles = tmp_path / "scratch.zarr" / "tiles"
    (tiles / "5.tile.abc.partial").write_bytes(b"half")
    assert store.done_tiles() == set()
    (tiles / "6.tile").write_bytes(b"not a tile")
    with pytest.raises(SlideFormatError, match="6.tile"):
        store.read_tile_table(6)
    with pytest.raises(SlideFormatError, match="6.tile"):
        store.tile_attrs(6)


def test_windows_are_cached_per_run_and_returned_as_copies(tmp_path: Path) -> None:
    import dataclasses

    store = ScratchStore(str(tmp_path / "scratch.zarr"))
    store.begin(fingerprint="run-1")
    labels = np.arange(12, dtype=np.uint32).reshape(3, 4)
    store.write_tile(0, labels, np.zeros((0, 8)))
    run = dataclasses.replace(store, run="r1")
    first = run.read_tile_labels(0)
    first[...] = 0  # callers may modify what they get
    (tmp_path / "scratch.zarr" / "tiles" / "0.tile").unlink()
    assert np.array_equal(run.read_tile_labels(0), labels)  # served from the run's cache
    assert np.array_equal(run.read_tile_labels(0, (slice(1, 2), slice(0, 4))), labels[1:2])
    view = run.read_tile_labels(0, copy=False)
    assert np.array_equal(view, labels) and not view.flags.writeable  # the cached window itself
    store.write_tile(0, labels + 1, np.zeros((0, 8)))  # rewriting a tile drops its cached window
    assert np.array_equal(run.read_tile_labels(0), labels + 1)


def test_edge_strips_are_decoded_alone_for_regions_inside_them(tmp_path: Path, monkeypatch) -> None:
    import dataclasses

    import pytest

    import tiledseg.io._scratch as scratch
    from tiledseg.errors import ParameterError

    store = ScratchStore(str(tmp_path / "scratch.zarr"))
    store.begin(fingerprint="run-1")
    labels = np.random.default_rng(1).integers(0, 9, size=(60, 80)).astype(np.uint32)
    table = np.arange(24, dtype=np.float64).reshape(3, 8)
    store.write_tile(0, labels, table, edges=(10, 12, 0, 30))  # no left strip
    store.write_tile(1, labels, table)  # no strips (as stored by earlier builds)
    decoded: list[tuple[int, ...]] = []
    real = scratch._decode_labels

    def spy(header, data, offset):  # type: ignore[no-untyped-def]
        decoded.append(tuple(header["shape"]))
        return real(header, data, offset)

    monkeypatch.setattr(scratch, "_decode_labels", spy)
    run = dataclasses.replace(store, run="r1")
    regions = [
        (slice(0, 10), slice(5, 80)),  # top strip
        (slice(50, 60), slice(0, 80)),  # bottom strip
        (slice(48, 60), slice(70, 72)),  # bottom strip, its corner
        (slice(0, 60), slice(60, 80)),  # right strip
        (slice(0, 60), slice(0, 3)),  # left: no strip there, the whole window
        (slice(3, 40), slice(10, 20)),  # interior: the whole window
    ]
    for rows, cols in regions:
        for tile in (0, 1):
            got = run.read_tile_labels(tile, (rows, cols), copy=False)
            assert np.array_equal(got, labels[rows, cols])
            assert np.array_equal(store.read_tile_labels(tile, (rows, cols)), labels[rows, cols])
    # whole windows were decoded only for the regions outside every strip of tile 0 (once with
    # the run's cache, twice without) and for tile 1, which has no strips (once, six times)
    assert decoded == [(60, 80)] * (1 + 2 + 1 + 6)
    assert np.array_equal(store.read_tile_table(0), table) and np.array_equal(store.read_tile_table(1), table)
    assert np.array_equal(store.read_tile_labels(0), labels)
    # the table and several regions from one file read, each region from the smallest stored part
    fresh = dataclasses.replace(store, run="r2")
    reads: list[int] = []
    real_read = ScratchStore._read
    monkeypatch.setattr(ScratchStore, "_read", lambda self, i: reads.append(i) or real_read(self, i))
    decoded.clear()
    cells, views = fresh.read_tile_regions(0, [regions[0], regions[3], regions[1]])
    assert reads == [0] and np.array_equal(cells, table)
    for view, (rows, cols) in zip(views, [regions[0], regions[3], regions[1]], strict=True):
        assert np.array_equal(view, labels[rows, cols]) and not view.flags.writeable
    assert decoded == []  # top, right and bottom strips only
    monkeypatch.undo()
    # a strip wider than the window is the window
    store.write_tile(3, labels, table, edges=(0, 0, 0, 500))
    assert np.array_equal(store.read_tile_labels(3, (slice(2, 7), slice(0, 80))), labels[2:7])
    with pytest.raises(ParameterError, match="edges"):
        store.write_tile(2, labels, table, edges=(1, 2, 3))  # type: ignore[arg-type]


def test_bad_tile_labels_are_refused(tmp_path: Path) -> None:
    import pytest

    from tiledseg.errors import ParameterError

    store = ScratchStore(str(tmp_path / "scratch.zarr"))
    store.begin(fingerprint="run-1")
    with pytest.raises(ParameterError, match="2-D"):
        store.write_tile(0, np.zeros((2, 2, 2), np.uint32), np.zeros((0, 8)))
