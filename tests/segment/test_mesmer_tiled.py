"""``mesmer`` through the real tile engine: GPU scheduling rule, IDs, tiled vs whole image."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.segment.conftest_dl import (
    CHANNELS,
    prepared_histograms,
    save_mesmer_like_model,
    synthetic_cells,
)
from tiledseg.errors import NoGPUWorkerError
from tiledseg.metrics import match_labels
from tiledseg.segment._prepare import statistics_from_array
from tiledseg.segment.mesmer import MesmerBackend

pytest.importorskip("tensorflow")


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      dashboard_address=":0") as cluster, Client(cluster) as c:
        yield c


def test_tiled_mesmer_matches_whole_image(tmp_path: Path, client: Any) -> None:
    from tiledseg.api import segment
    from tiledseg.io import open_labels, write_slide

    model = save_mesmer_like_model(tmp_path / "MultiplexSegmentation")
    image, nuclei = synthetic_cells((256, 256), seed=9)
    url = write_slide(str(tmp_path / "slide.ome.zarr"), image, channel_names=CHANNELS,
                      pixel_size_um=1.0, chunks=(1, 64, 64))
    params = {"model_path": str(model), "nuclear": ["DNA1"], "membrane": ["CD45"]}

    # no worker advertises a GPU resource: refused unless CPU inference is allowed
    with pytest.raises(NoGPUWorkerError, match="allow_cpu"):
        segment(url, backend="mesmer", client=client, tile_size=128, **params)

    result = segment(url, backend="mesmer", client=client, tile_size=128, allow_cpu=True, **params)
    assert result.n_tiles == 4
    tiled = np.asarray(open_labels(url, "cells").data)
    assert tiled.dtype == np.uint32 and tiled.shape == (256, 256)
    ids = np.unique(tiled)
    np.testing.assert_array_equal(ids, np.arange(ids.size))  # 0 and 1..N, no gaps

    backend = MesmerBackend(**params)
    data = image[:2]
    prepared = backend.prepare(data, pixel_size_um=1.0,
                               stats=statistics_from_array(data, ("DNA1", "CD45")))
    whole = backend.segment(prepared, pixel_size_um=1.0,
                            fitted=backend.fit(*prepared_histograms(prepared)))
    match = match_labels(tiled, whole, iou_threshold=0.5)
    assert result.n_cells == whole.max() == nuclei.max()
    assert match.f1 >= 0.97, match


def _worker_facts(key: tuple[str, str, str]) -> tuple[int, int]:
    import os

    from tiledseg.segment._dl_cache import model_load_count

    return os.getpid(), model_load_count(key)


@pytest.mark.slow
def test_one_model_per_worker_process_reused_across_batches(tmp_path: Path) -> None:
    """A worker process advertising ``GPU`` loads the model once and reuses it for every batch.

    The worker advertises ``GPU=2`` with two threads, so two tile tasks share the GPU (one
    reads and post-processes while the other runs the model, as docs/models.md recommends):
    they share the one model instance of the process too.
    """
    import os

    from distributed import Client, LocalCluster

    from tiledseg.api import segment
    from tiledseg.io import write_slide

    model = save_mesmer_like_model(tmp_path / "MultiplexSegmentation")
    image, nuclei = synthetic_cells((192, 192), seed=2)
    url = write_slide(str(tmp_path / "slide.ome.zarr"), image, channel_names=CHANNELS,
                      pixel_size_um=1.0, chunks=(1, 48, 48))
    params = {"model_path": str(model), "nuclear": ["DNA1"], "membrane": ["CD45"],
              "max_cell_diameter_um": 12.0, "context_um": 12.0}
    key = ("mesmer", str(Path(model).resolve()), "cpu")
    with (
        LocalCluster(n_workers=1, threads_per_worker=2, processes=True, resources={"GPU": 2},
                     dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        # a GPU worker (by its resource) without a visible GPU: no allow_cpu needed, the
        # backend defers to the engine and runs on the CPU with a warning in the worker log
        result = segment(url, backend="mesmer", client=client, tile_size=48, batch_size=4, **params)
        facts = client.run(_worker_facts, key)
    assert result.n_tiles == 16  # 4 tasks of 4 tiles
    assert result.n_cells == nuclei.max()
    ((pid, loads),) = facts.values()
    assert pid != os.getpid()  # the model lived in the worker process, not here
    assert loads == 1
