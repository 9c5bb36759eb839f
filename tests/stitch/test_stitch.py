from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray
from skimage.measure import label

from tests.stitch._helpers import assert_same_partition, disks
from tiledseg.errors import ParameterError
from tiledseg.stitch import (
    assemble_block,
    assign_ids,
    own_cells,
    pair_overlaps,
    resolve_conflicts,
    stitch_tiles,
)
from tiledseg.tiling import TilePlan, plan_tiles


def _tiles(mask: NDArray[np.bool_], plan: TilePlan) -> list[tuple[int, NDArray[np.int32]]]:
    # connected components of a threshold: halo-local for cells of radius <= halo
    return [(t.index, label(mask[t.window_slices]).astype(np.int32)) for t in plan]


@pytest.mark.parametrize(
    ("tile", "halo"),
    [(256, 0), (64, 14), (37, 12), (16, 12), (8, 8)],
    ids=["one-tile", "even", "ragged", "small", "smaller-than-a-cell"],
)
def test_stitched_equals_whole_image(tile: int, halo: int) -> None:
    mask = disks((150, 170), n=160, radius=(2, 7), seed=1)
    whole = label(mask)
    plan = plan_tiles(mask.shape, tile_size=tile, halo=halo)
    result = stitch_tiles(_tiles(mask, plan), plan=plan)
    assert result.labels.dtype == np.uint32
    assert_same_partition(result.labels, whole)
    n = int(whole.max())
    assert np.array_equal(np.unique(result.labels), np.arange(n + 1))
    assert result.counts.sum() == n
    assert not result.seam.any() and not result.truncated.any()
    assert result.n_duplicates == result.n_disagreements == 0


def test_ids_follow_tile_raster_order_then_position() -> None:
    mask = disks((120, 120), n=80, radius=(2, 5), seed=4)
    plan = plan_tiles(mask.shape, tile_size=40, halo=11)
    result = stitch_tiles(_tiles(mask, plan), plan=plan)
    ids = np.arange(1, result.labels.max() + 1)
    rows, cols = np.nonzero(result.labels)
    lab = result.labels[rows, cols].astype(np.int64)
    area = np.bincount(lab)[1:]
    cr = np.bincount(lab, weights=rows)[1:] / area
    cc = np.bincount(lab, weights=cols)[1:] / area
    tile_of = np.array([plan.tile_at(int(r), int(c)) for r, c in zip(cr, cc, strict=True)])
    assert np.all(np.diff(tile_of) >= 0)
    for t in np.unique(tile_of):
        sel = ids[tile_of == t] - 1
        assert np.all(np.diff(cr[sel]) >= 0)


def test_too_small_halo_flags_truncated_cells() -> None:
    mask = np.zeros((60, 60), dtype=bool)
    mask[5:55, 28:33] = True  # a 50-px long cell across two tiles
    plan = plan_tiles(mask.shape, tile_size=30, halo=5)
    result = stitch_tiles(_tiles(mask, plan), plan=plan)
    assert result.truncated.any()
    assert np.array_equal(np.unique(result.labels), np.arange(result.labels.max() + 1))


def test_more_than_65535_cells() -> None:
    mask = np.zeros((520, 520), dtype=bool)
    mask[::2, ::2] = True  # 67,600 one-pixel cells
    plan = plan_tiles(mask.shape, tile_size=130, halo=2)
    result = stitch_tiles(_tiles(mask, plan), plan=plan)
    assert result.labels.dtype == np.uint32
    assert int(result.labels.max()) == 260 * 260
    assert np.unique(result.labels).size == 260 * 260 + 1


def test_duplicate_is_dropped_and_disagreement_keeps_both() -> None:
    plan = plan_tiles((20, 40), tile_size=20, halo=10)
    a = np.zeros((20, 30), np.uint32)
    b = np.zeros((20, 30), np.uint32)
    # duplicate: tile 0 sees rows 2..8 x cols 17..22 (centroid col 19.5 -> tile 0),
    # tile 1 sees cols 18..23 (centroid col 20.5 -> tile 1, window starts at col 10)
    a[2:8, 17:23] = 1
    b[2:8, 18 - 10 : 24 - 10] = 1
    # disagreement: thin cells crossing at a shared patch
    a[12:14, 12:22] = 2
    b[12:18, 20 - 10 : 22 - 10] = 2
    res = stitch_tiles([(1, b), (0, a)], plan=plan)
    assert res.n_duplicates == 1 and res.n_disagreements == 1
    assert res.labels.max() == 3
    assert res.seam.sum() == 3
    # the lower tile keeps the contested pixels of the disagreement
    assert res.labels[12, 20] == res.labels[12, 12]


def test_loser_left_without_pixels_is_dropped_and_ids_stay_consecutive() -> None:
    plan = plan_tiles((20, 40), tile_size=20, halo=10)
    a = np.zeros((20, 30), np.uint32)
    b = np.zeros((20, 30), np.uint32)
    a[0:20, 10:21] = 1  # big cell of tile 0 (centroid col 15)
    b[5:7, 20 - 10 : 21 - 10] = 3  # a small cell of tile 1 inside it (centroid col 20)
    res = stitch_tiles([(0, a), (1, b)], plan=plan)
    assert res.labels.max() == 1
    assert res.counts.tolist() == [1, 0]


def test_bad_tiles_are_refused() -> None:
    plan = plan_tiles((20, 20), tile_size=10, halo=2)
    with pytest.raises(ParameterError, match="were not given"):
        stitch_tiles([(0, np.zeros((12, 12), np.uint32))], plan=plan)
    with pytest.raises(ParameterError, match="window shape"):
        own_cells(np.zeros((5, 5), np.uint32), tile=plan[0], slide_shape=plan.shape)
    with pytest.raises(ParameterError, match="given twice"):
        stitch_tiles([(0, np.zeros((12, 12), np.uint32))] * 2, plan=plan)


def test_kernels_on_empty_tiles() -> None:
    plan = plan_tiles((10, 10), tile_size=10, halo=0)
    owned = own_cells(np.zeros((10, 10), np.uint16), tile=plan[0], slide_shape=(10, 10))
    assert owned.n == 0 and owned.labels.dtype == np.uint32
    assert pair_overlaps(owned.labels, plan[0].window, owned.labels, plan[0].window).shape == (0, 3)
    maps, counts = assign_ids({0: np.zeros(0, bool)}, n_tiles=1)
    assert maps[0].tolist() == [0] and counts.tolist() == [0]
    res = resolve_conflicts({0: owned.area}, {0: owned.truncated}, {})
    assert res.n_duplicates == 0
    block = assemble_block(((0, 10), (0, 10)), [(0, owned.labels, plan[0].window, maps[0])])
    assert not block.any()


@st.composite
def _disagreeing_tiles(draw: st.DrawFn) -> tuple[TilePlan, list[tuple[int, NDArray[np.uint32]]]]:
    ny, nx = draw(st.integers(8, 40)), draw(st.integers(8, 40))
    t = draw(st.integers(4, 16))
    halo = draw(st.integers(0, t))
    plan = plan_tiles((ny, nx), tile_size=t, halo=halo)
    seed = draw(st.integers(0, 2**31))
    rng = np.random.default_rng(seed)
    tiles = []
    for tile in plan:
        wy, wx = tile.window_shape
        lab = np.zeros((wy, wx), np.uint32)
        for k in range(int(rng.integers(0, 8))):
            r0, c0 = rng.integers(0, wy), rng.integers(0, wx)
            lab[r0 : r0 + rng.integers(1, 9), c0 : c0 + rng.integers(1, 9)] = k + 1 + 1000 * tile.index
        tiles.append((tile.index, lab))
    return plan, tiles


@settings(max_examples=60, deadline=None)
@given(case=_disagreeing_tiles(), perm_seed=st.integers(0, 1000))
def test_stitching_properties_on_disagreeing_tiles(
    case: tuple[TilePlan, list[tuple[int, NDArray[np.uint32]]]], perm_seed: int
) -> None:
    plan, tiles = case
    res = stitch_tiles(tiles, plan=plan)
    n = int(res.labels.max())
    # IDs unique and consecutive, one flag per cell
    assert np.array_equal(np.unique(res.labels), np.arange(n + 1))
    assert res.seam.size == res.truncated.size == n == int(res.counts.sum())
    # determinism under permuted task order
    order = np.random.default_rng(perm_seed).permutation(len(tiles))
    again = stitch_tiles([tiles[i] for i in order], plan=plan)
    assert np.array_equal(res.labels, again.labels)
    assert np.array_equal(res.seam, again.seam)
    # no chimeras: every output cell lies inside one input cell of one tile
    windows = {i: lab for i, lab in tiles}
    for cell in range(1, n + 1):
        rows, cols = np.nonzero(res.labels == cell)
        sources = set()
        for t in plan.overlapping((int(rows.min()), int(rows.max()) + 1), (int(cols.min()), int(cols.max()) + 1)):
            (wr, wr1), (wc, wc1) = plan[t].window
            if rows.min() >= wr and rows.max() < wr1 and cols.min() >= wc and cols.max() < wc1:
                vals = np.unique(windows[t][rows - wr, cols - wc])
                if vals.size == 1 and vals[0] != 0:
                    sources.add(t)
        assert sources, f"cell {cell} is not one tile's cell"


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n_values=st.integers(1, 12),
    scale=st.sampled_from([1, 7919, 1 << 40]),
    core=st.tuples(st.integers(0, 9), st.integers(1, 9), st.integers(0, 9), st.integers(1, 9)),
)
def test_own_cells_statistics_equal_a_per_pixel_reference(
    seed: int, n_values: int, scale: int, core: tuple[int, int, int, int]
) -> None:
    # own_cells works on runs of equal labels: check it against per-pixel sums on noisy labels
    # (many short runs, labels split into several components, sparse and huge label values).
    rng = np.random.default_rng(seed)
    plan = plan_tiles((30, 31), tile_size=10, halo=4)
    tile = plan[int(rng.integers(len(plan)))]
    labels = rng.integers(0, n_values + 1, size=tile.window_shape).astype(np.uint64) * np.uint64(scale)
    owned = own_cells(labels, tile=tile, slide_shape=plan.shape)
    (wr0, _), (wc0, _) = tile.window
    (cr0, cr1), (cc0, cc1) = tile.core
    rows: list[tuple[float, float, int, int, int, int, int, int]] = []
    for value in np.unique(labels[labels > 0]):
        rr, cc = np.nonzero(labels == value)
        centroid = (rr.sum() / rr.size + wr0, cc.sum() / cc.size + wc0)
        if not (cr0 <= np.floor(centroid[0]) < cr1 and cc0 <= np.floor(centroid[1]) < cc1):
            continue
        box = (rr.min() + wr0, cc.min() + wc0, rr.max() + 1 + wr0, cc.max() + 1 + wc0)
        rows.append((*centroid, *box, rr.size, int(value)))
    rows.sort(key=lambda r: (r[0], r[1], r[3], r[2], r[6], r[7]))
    assert owned.n == len(rows)
    for i, (r, c, r0, c0, r1, c1, area, value) in enumerate(rows, start=1):
        assert owned.centroid[i - 1].tolist() == [r, c]
        assert owned.bbox[i - 1].tolist() == [r0, c0, r1, c1]
        assert owned.area[i - 1] == area
        assert np.array_equal(owned.labels == i, labels == value)
    assert np.array_equal(owned.labels > 0, np.isin(labels, [r[7] for r in rows]))


def test_compiled_run_statistics_equal_the_numpy_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("numba")
    import tiledseg.stitch._ownership as ownership

    rng = np.random.default_rng(21)
    for trial in range(120):
        h, w = (int(v) for v in rng.integers(1, 30, 2))
        dtype = (np.uint32, np.int32, np.uint16, np.int64, np.uint8, np.uint64)[trial % 6]
        labels = rng.integers(0, int(rng.integers(1, 12)), size=(h, w)).astype(dtype)
        if trial % 3 == 0:
            labels = np.repeat(labels, 3, axis=1)[:, :w]  # long runs
        if trial % 5 == 0:
            labels = labels[:, ::2]  # a strided view
        got = ownership._run_statistics(labels)
        with monkeypatch.context() as m:
            m.setitem(ownership._STATISTICS_KERNEL, "fn", None)
            ref = ownership._run_statistics(labels)
        for a, b in zip(got, ref, strict=True):
            assert a.dtype == b.dtype and a.shape == b.shape
            np.testing.assert_array_equal(a, b, err_msg=f"trial {trial}")
    # sparse IDs (a plugin's) take the runs, not a table sized by the largest ID
    sparse = (rng.integers(0, 40, size=(50, 60)) * 100_003).astype(np.uint32)
    got = ownership._run_statistics(sparse)
    with monkeypatch.context() as m:
        m.setitem(ownership._STATISTICS_KERNEL, "fn", None)
        ref = ownership._run_statistics(sparse)
    for a, b in zip(got, ref, strict=True):
        np.testing.assert_array_equal(a, b)
    # whole tiles: owned cells identical either way
    plan = plan_tiles((120, 130), tile_size=40, halo=9)
    cells = label(disks((120, 130), n=60, radius=(3, 8), seed=3)).astype(np.uint32)
    for tile in plan.tiles:
        got_owned = own_cells(cells[tile.window_slices], tile=tile, slide_shape=plan.shape)
        with monkeypatch.context() as m:
            m.setitem(ownership._STATISTICS_KERNEL, "fn", None)
            ref_owned = own_cells(cells[tile.window_slices], tile=tile, slide_shape=plan.shape)
        assert got_owned.table().tobytes() == ref_owned.table().tobytes()
        assert got_owned.labels.tobytes() == ref_owned.labels.tobytes()


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_compiled_painting_equals_numpy(seed: int) -> None:

    from tiledseg.stitch import _assemble

    rng = np.random.default_rng(seed)
    block = ((10, 50), (20, 70))
    pieces = []
    for tile in rng.permutation(4):
        r0, c0 = int(rng.integers(10, 40)), int(rng.integers(20, 60))
        r1, c1 = int(rng.integers(r0 + 1, 51)), int(rng.integers(c0 + 1, 71))
        labels = rng.integers(0, 6, size=(r1 - r0, c1 - c0)).astype(np.uint32)
        relabel = np.concatenate([[0], rng.integers(0, 100, size=5)]).astype(np.uint32)  # some dropped (0)
        pieces.append((int(tile), labels, ((r0, r1), (c0, c1)), relabel))
    compiled = assemble_block(block, pieces)
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(_assemble._KERNELS, "paint", None)
        reference = assemble_block(block, pieces)
    assert np.array_equal(compiled, reference)
    # painting into a reused buffer (cleared first) gives the same block
    buffer = np.full((40, 50), 7, dtype=np.uint32)
    assert assemble_block(block, pieces, out=buffer) is buffer
    assert np.array_equal(buffer, reference)
    with pytest.raises(ValueError, match="out"):
        assemble_block(block, pieces, out=np.zeros((40, 49), np.uint32))


def test_a_label_without_a_map_entry_raises() -> None:
    labels = np.array([[1, 2], [3, 9]], dtype=np.uint32)  # 9 has no entry in a 4-entry map
    with pytest.raises(IndexError):
        assemble_block(((0, 2), (0, 2)), [(0, labels, ((0, 2), (0, 2)), np.arange(4, dtype=np.uint32))])
