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
    window, cells = store.read_tile(3)
    assert np.array_equal(window, labels) and np.array_equal(cells, table)
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


def test_bad_tile_labels_are_refused(tmp_path: Path) -> None:
    import pytest

    from tiledseg.errors import ParameterError

    store = ScratchStore(str(tmp_path / "scratch.zarr"))
    store.begin(fingerprint="run-1")
    with pytest.raises(ParameterError, match="2-D"):
        store.write_tile(0, np.zeros((2, 2, 2), np.uint32), np.zeros((0, 8)))
