"""Batches of tiles handed to backends that stream them: lazily, with the same labels."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import zarr
from distributed import Client
from numpy.typing import NDArray
from skimage.measure import label

from tiledseg.cluster import segment_slide
from tiledseg.io import open_slide, write_slide
from tiledseg.segment import BaseBackend
from tiledseg.segment._protocol import ChannelStatistics

EVENTS: list[str] = []
LOCK = threading.Lock()


class _Threshold(BaseBackend):
    name = "streamed-test"

    def channels(self, available: Sequence[str]) -> tuple[str, ...]:
        return ("DNA1",)

    def halo_um(self) -> float:
        return 8.0

    def prepare(self, image: NDArray[Any], *, pixel_size_um: float, stats: ChannelStatistics) -> NDArray[np.float32]:
        with LOCK:
            EVENTS.append("prepare")
        return np.asarray(image, dtype=np.float32)

    def segment(self, prepared: NDArray[np.float32], *, pixel_size_um: float, fitted: Mapping[str, float]) -> NDArray[np.uint32]:
        return label(prepared[0] > 5).astype(np.uint32)


class _Streaming(_Threshold):
    streams_batches: ClassVar[bool] = True

    def segment_batch(  # type: ignore[override]
        self, prepared: Iterable[NDArray[np.float32]], *, pixel_size_um: float, fitted: Mapping[str, float]
    ) -> list[NDArray[np.uint32]]:
        with LOCK:
            EVENTS.append("batch:" + ("lazy" if isinstance(prepared, Iterator) else "list"))
        out = []
        for window in prepared:
            with LOCK:
                EVENTS.append("model")
            out.append(self.segment(window, pixel_size_um=pixel_size_um, fitted=fitted))
        return out


@pytest.fixture()
def slide_url(tmp_path: Path) -> str:
    rng = np.random.default_rng(0)
    dna = (rng.random((160, 200)) > 0.97).astype(np.float32) * 10
    return write_slide(str(tmp_path / "s.ome.zarr"), np.stack([dna, dna]), channel_names=["DNA1", "CD3"],
                       pixel_size_um=1.0, chunks=(1, 32, 32))


def test_streaming_backends_get_windows_lazily_and_the_same_labels(slide_url: str) -> None:
    with Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=":0") as client:
        EVENTS.clear()
        segment_slide(open_slide(slide_url), _Threshold(), client=client, tile_size=64, batch_size=3,
                      labels_name="plain")
        assert "batch:lazy" not in EVENTS
        plain = np.asarray(zarr.open_array(f"{slide_url}/labels/plain/0", mode="r")[...])
        EVENTS.clear()
        segment_slide(open_slide(slide_url), _Streaming(), client=client, tile_size=64, batch_size=3,
                      labels_name="streamed")
        streamed = np.asarray(zarr.open_array(f"{slide_url}/labels/streamed/0", mode="r")[...])
    assert streamed.tobytes() == plain.tobytes()
    # every batch was handed over as an iterator, and windows were prepared one by one as the
    # "model" asked for them, not all before it started
    start = EVENTS.index("batch:lazy")
    assert EVENTS[start : start + 5] == ["batch:lazy", "prepare", "model", "prepare", "model"]
