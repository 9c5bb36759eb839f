"""Tests of the ``cellpose`` backend with a random-weight Cellpose 3 network saved at test time.

The network forward pass costs seconds per tile on two CPU cores, so only a few tests run it
(on 64 x 64 windows at the model's own scale); the others put a recording stand-in model into
the per-process model cache and check exactly what would be handed to Cellpose.
"""

from __future__ import annotations

import math
import os
import pickle
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from tests.segment.conftest_dl import (
    CHANNELS,
    SHARED_DATA,
    prepared_histograms,
    save_random_cellpose_model,
    statistics,
    synthetic_cells,
)
from tiledseg.errors import BackendError, MissingDependencyError, ModelNotFoundError, ParameterError
from tiledseg.segment import get_backend
from tiledseg.segment._dl_cache import cached_model, clear_model_cache, model_load_count
from tiledseg.segment.cellpose import (
    MODEL_ENV_VAR,
    CellposeBackend,
    _LoadedCellpose,
    load_cellpose_model,
)
from tiledseg.testing import BackendConformance, BackendSample

cellpose_models = pytest.importorskip("cellpose.models")


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_cellpose_model(tmp_path_factory.mktemp("cellpose") / "random_cp3", diam_mean=10.0)


@pytest.fixture
def fresh_cache() -> Any:
    """An empty model cache for the test, emptied again afterwards (stand-ins never leak)."""
    clear_model_cache()
    yield
    clear_model_cache()


@pytest.fixture
def no_download(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if Cellpose tries to download anything."""
    from cellpose import utils

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"Cellpose tried to download {args}")

    monkeypatch.setattr(utils, "download_url_to_file", refuse)
    monkeypatch.setattr(cellpose_models, "cache_model_path", refuse)


def _backend(model: Path | str, **kw: Any) -> CellposeBackend:
    params: dict[str, Any] = {
        "nuclear": "DNA1",
        "membrane": "CD45",
        "allow_cpu": True,
        "diameter_um": 10.0,
        # random weights: accept every pixel so that masks form at all
        "cellprob_threshold": -3.0,
        "flow_threshold": 0.0,
    }
    params.update(kw)
    return CellposeBackend(model=str(model), **params)


def _prepare(backend: CellposeBackend, image: NDArray[np.float32], pixel_size_um: float = 1.0):
    names = backend.channels(CHANNELS)
    idx = [CHANNELS.index(n) for n in names]
    prepared = backend.prepare(image[idx], pixel_size_um=pixel_size_um, stats=statistics(image))
    return prepared, backend.fit(*prepared_histograms(prepared))


class _Recorder:
    """Stands in for ``CellposeModel``: records ``eval`` calls, returns one mask per input.

    With ``compute_masks=False`` (Cellpose 3 path) it returns flows the way Cellpose does:
    ``[rgb, dP (2, [Z,] Y, X), cellprob ([Z,] Y, X)]``, squeezed.
    """

    diam_mean = np.float32(30.0)

    def __init__(self) -> None:
        import torch

        self.device = torch.device("cpu")
        self.calls: list[tuple[NDArray[np.float32], dict[str, Any]]] = []

    def eval(self, x: NDArray[np.float32], **kwargs: Any) -> tuple[Any, Any, None]:
        self.calls.append((np.array(x), kwargs))
        if kwargs.get("compute_masks", True):
            masks = (x[..., 1] > 0.5).astype(np.uint16)  # any deterministic function of the input
            return masks, None, None
        prob = 8.0 * (x[..., 0] - 0.5)
        # flows towards the window's centre: one mask of the pixels with prob > threshold
        ny, nx = prob.shape[-2:]
        yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float32)
        towards = np.stack([(ny - 1) / 2 - yy, (nx - 1) / 2 - xx])
        towards /= np.maximum(np.hypot(towards[0], towards[1]), 1.0)
        flow = np.broadcast_to(towards.reshape((2,) + (1,) * (prob.ndim - 2) + (ny, nx)),
                               (2,) + prob.shape).astype(np.float32)
        return np.zeros(0), [None, flow.squeeze(), prob.squeeze()], None


def _install_recorder(backend: CellposeBackend, *, major: int = 3) -> _Recorder:
    rec = _Recorder()
    cached_model(("cellpose", backend.model, "cpu"),
                 lambda: _LoadedCellpose(model=rec, major=major, device="cpu", diam_mean=30.0))
    return rec


# --------------------------------------------------------------------------------------------
# parameters and models
# --------------------------------------------------------------------------------------------


def test_registered_under_its_name(model_file: Path) -> None:
    backend = get_backend("cellpose", model=str(model_file), allow_cpu=True)
    assert isinstance(backend, CellposeBackend)
    assert backend.requires_gpu is True
    assert backend.params()["model"] == str(model_file.resolve())
    assert backend.halo_um() == pytest.approx(3 * backend.diameter_um)


def test_builtin_names_and_environment(monkeypatch: pytest.MonkeyPatch, model_file: Path) -> None:
    monkeypatch.delenv(MODEL_ENV_VAR, raising=False)
    assert CellposeBackend().model == "cyto3"
    assert CellposeBackend(model="nuclei").compartment == "nuclear"
    monkeypatch.setenv(MODEL_ENV_VAR, str(model_file))
    assert CellposeBackend().model == str(model_file.resolve())


def test_missing_model_file_is_an_error_without_download(tmp_path: Path, no_download: None) -> None:
    missing = tmp_path / "models" / "my_cp_model"
    with pytest.raises(ParameterError, match="no such model file"):
        CellposeBackend(model=str(missing))
    with pytest.raises(ParameterError, match="no such model name"):
        CellposeBackend(model="cyto7")
    with pytest.raises(ParameterError, match="directory"):
        CellposeBackend(model=str(tmp_path))
    # the worker-side loader checks again before Cellpose can fall back to a download
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        load_cellpose_model(str(missing), device="cpu")


def test_offline_builtin_model_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from urllib.error import URLError

    def offline(basename: str) -> str:
        raise URLError(f"no network for {basename}")

    monkeypatch.setattr(cellpose_models, "cache_model_path", offline)
    with pytest.raises(BackendError, match="without internet access"):
        load_cellpose_model("cyto3", device="cpu")
    from importlib.metadata import version

    if int(version("cellpose").split(".")[0]) < 4:
        with pytest.raises(ParameterError, match="Cellpose >= 4"):
            load_cellpose_model("cpsam", device="cpu")


def test_cellpose4_loads_cpsam_or_files_and_refuses_cellpose3_names(
    monkeypatch: pytest.MonkeyPatch, model_file: Path
) -> None:
    """Cellpose 4 would silently swap a Cellpose 3 name for cpsam: refused before it sees it."""
    import torch

    from tiledseg.segment import cellpose as module

    built: list[dict[str, Any]] = []

    class FakeModel:
        diam_mean = 30.0

        def __init__(self, **kwargs: Any) -> None:
            built.append(kwargs)

    class FakeModels:
        CellposeModel = FakeModel

    monkeypatch.setattr(module, "_import_cellpose", lambda: (torch, FakeModels, 4))
    for name in ("cyto3", "nuclei"):
        with pytest.raises(ParameterError, match=r"Cellpose 3 model.*'cpsam'"):
            load_cellpose_model(name, device="cpu")
    assert built == []
    loaded = load_cellpose_model("cpsam", device="cpu")
    assert loaded.major == 4 and built[-1]["pretrained_model"] == "cpsam"
    assert "model_type" not in built[-1]
    load_cellpose_model(str(model_file), device="cpu")
    assert built[-1]["pretrained_model"] == str(model_file)


def test_model_file_removed_before_the_worker_loads_it(tmp_path: Path, model_file: Path,
                                                        no_download: None) -> None:
    copy = tmp_path / "copy_model"
    copy.write_bytes(model_file.read_bytes())
    backend = _backend(copy)
    copy.unlink()
    prepared = np.random.default_rng(0).random((2, 32, 32), dtype=np.float32)
    fitted = backend.fit(*prepared_histograms(prepared))
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        backend.segment(prepared, pixel_size_um=1.0, fitted=fitted)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"compartment": "cytoplasm"}, "compartment"),
        ({"diameter_um": 0.0}, "diameter_um"),
        ({"normalize_percentiles": (99, 1)}, "normalize_percentiles"),
        ({"device": "cpu", "allow_cpu": False}, "allow_cpu"),
        ({"device": "cuda:x"}, "device"),
        ({"model_batch_size": 0}, "model_batch_size"),
    ],
)
def test_bad_parameters(model_file: Path, kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ParameterError, match=match):
        _backend(model_file, **kwargs)


def test_missing_cellpose_names_the_extra(model_file: Path, monkeypatch: pytest.MonkeyPatch,
                                         fresh_cache: None) -> None:
    backend = _backend(model_file)
    monkeypatch.setitem(sys.modules, "cellpose", None)
    monkeypatch.setitem(sys.modules, "cellpose.models", None)
    prepared = np.random.default_rng(0).random((2, 32, 32), dtype=np.float32)
    with pytest.raises(MissingDependencyError, match=r"tiledseg\[cellpose\]"):
        backend.segment(prepared, pixel_size_um=1.0, fitted=backend.fit(*prepared_histograms(prepared)))


def test_no_gpu_without_allow_cpu_is_an_error(model_file: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    backend = _backend(model_file, allow_cpu=False)
    prepared = np.random.default_rng(0).random((2, 32, 32), dtype=np.float32)
    with pytest.raises(BackendError, match="allow_cpu"):
        backend.segment(prepared, pixel_size_um=1.0, fitted=backend.fit(*prepared_histograms(prepared)))


# --------------------------------------------------------------------------------------------
# what is handed to Cellpose
# --------------------------------------------------------------------------------------------


def test_channel_order_membrane_first_nuclear_second(model_file: Path, fresh_cache: None) -> None:
    image, _ = synthetic_cells((48, 48))
    backend = _backend(model_file, diameter_um=12.0)
    assert backend.channels(CHANNELS) == ("CD45", "DNA1")
    prepared, fitted = _prepare(backend, image)
    rec = _install_recorder(backend)
    backend.segment(prepared, pixel_size_um=0.5, fitted=fitted)
    (x, kwargs), = rec.calls
    assert x.shape == (48, 48, 2) and kwargs["channel_axis"] == 2
    assert kwargs["channels"] == [1, 2]  # 1 = what to segment (membrane), 2 = nuclear
    membrane = (prepared[0] - fitted["low_membrane"]) / (fitted["high_membrane"] - fitted["low_membrane"])
    nuclear = (prepared[1] - fitted["low_nuclear"]) / (fitted["high_nuclear"] - fitted["low_nuclear"])
    np.testing.assert_allclose(x[..., 0], membrane, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(x[..., 1], nuclear, rtol=1e-5, atol=1e-6)
    # the membrane plane really is CD45 (ring), the nuclear plane DNA1 (spots)
    assert np.corrcoef(x[..., 1].ravel(), image[0].ravel())[0, 1] > 0.9
    assert np.corrcoef(x[..., 0].ravel(), image[1].ravel())[0, 1] > 0.9
    assert kwargs["normalize"] == {"normalize": False, "norm3D": False}
    assert kwargs["diameter"] == pytest.approx(24.0)  # 12 µm at 0.5 µm/px


def test_nuclear_model_segments_the_nuclear_plane(model_file: Path, fresh_cache: None) -> None:
    image, _ = synthetic_cells((48, 48))
    backend = _backend(model_file, compartment="nuclear")
    assert backend.channels(CHANNELS) == ("DNA1",)
    names = backend.channels(CHANNELS)
    prepared = backend.prepare(image[[CHANNELS.index(n) for n in names]], pixel_size_um=1.0,
                               stats=statistics(image))
    assert not prepared[0].any()  # no membrane plane
    fitted = backend.fit(*prepared_histograms(prepared))
    rec = _install_recorder(backend)
    backend.segment(prepared, pixel_size_um=1.0, fitted=fitted)
    (x, kwargs), = rec.calls
    assert kwargs["channels"] == [1, 0]
    assert np.corrcoef(x[..., 0].ravel(), image[0].ravel())[0, 1] > 0.9
    assert not x[..., 1].any()


def test_cellpose4_gets_no_channels_argument(model_file: Path, fresh_cache: None) -> None:
    image, _ = synthetic_cells((48, 48))
    backend = _backend(model_file)
    prepared, fitted = _prepare(backend, image)
    rec = _install_recorder(backend, major=4)
    backend.segment_batch([prepared, prepared], pixel_size_um=1.0, fitted=fitted)
    assert len(rec.calls) == 2  # Cellpose 4: one call per window
    assert all("channels" not in kw and kw["channel_axis"] == 2 for _, kw in rec.calls)


def test_fit_takes_slide_percentiles(model_file: Path) -> None:
    image, _ = synthetic_cells((96, 96))
    backend = _backend(model_file)
    prepared, fitted = _prepare(backend, image)
    for k, role in enumerate(("membrane", "nuclear")):
        assert fitted[f"low_{role}"] == pytest.approx(np.percentile(prepared[k], 1), abs=2 / 1024)
        assert fitted[f"high_{role}"] == pytest.approx(np.percentile(prepared[k], 99), abs=2 / 1024)


def test_bad_segment_inputs(model_file: Path, fresh_cache: None) -> None:
    backend = _backend(model_file)
    _install_recorder(backend)
    fitted = backend.fit(*prepared_histograms(np.zeros((2, 8, 8), np.float32)))
    with pytest.raises(ParameterError, match=r"\(2, Y, X\)"):
        backend.segment(np.zeros((16, 16), np.float32), pixel_size_um=1.0, fitted=fitted)
    with pytest.raises(ParameterError, match="low_membrane"):
        backend.segment(np.zeros((2, 16, 16), np.float32), pixel_size_um=1.0, fitted={})
    with pytest.raises(ParameterError, match="pixel_size_um"):
        backend.segment(np.zeros((2, 16, 16), np.float32), pixel_size_um=-1.0, fitted=fitted)


# --------------------------------------------------------------------------------------------
# the real network (random weights)
# --------------------------------------------------------------------------------------------


class TestCellposeConformance(BackendConformance):
    """The shared backend conformance suite, on the random-weight Cellpose 3 network."""

    @pytest.fixture(autouse=True)
    def _model(self, model_file: Path) -> None:
        self.model_file = model_file

    def make_backend(self) -> CellposeBackend:
        return _backend(self.model_file)

    def make_sample(self) -> BackendSample:
        image, _ = synthetic_cells((32, 32), spacing=12, seed=4)
        return BackendSample(image=image, channel_names=CHANNELS, pixel_size_um=1.0, min_cells=1)


def test_segments_with_the_real_network(model_file: Path, fresh_cache: None) -> None:
    image, _ = synthetic_cells((48, 48))
    backend = _backend(model_file)
    prepared, fitted = _prepare(backend, image)
    before = prepared.copy()
    labels = backend.segment(prepared, pixel_size_um=1.0, fitted=fitted)
    np.testing.assert_array_equal(prepared, before)
    assert labels.dtype == np.uint32 and labels.shape == (48, 48)
    assert labels.max() >= 1 and np.unique(labels)[0] == 0
    assert cellpose_models.normalize_default["normalize"] is True  # Cellpose's defaults untouched
    # the worker keeps the model: a pickled copy (what Dask ships) reuses it
    blob = pickle.dumps(backend)
    assert b"torch" not in blob and len(blob) < 10_000
    again = pickle.loads(blob).segment(prepared, pixel_size_um=1.0, fitted=fitted)
    np.testing.assert_array_equal(labels, again)
    assert model_load_count(("cellpose", backend.model, "cpu")) == 1


def test_segment_batch_equals_one_by_one(model_file: Path) -> None:
    """Equal-shape windows go through Cellpose as one stack; the answer must not change."""
    image, _ = synthetic_cells((48, 48), seed=2)
    backend = _backend(model_file)
    prepared, fitted = _prepare(backend, image)
    windows = [prepared[:, :40, :40].copy(), prepared[:, 8:48, 8:48].copy(),
               prepared[:, :32, 8:48].copy(), np.zeros((2, 40, 40), np.float32)]
    batched = backend.segment_batch(windows, pixel_size_um=1.0, fitted=fitted)
    single = [backend.segment(w, pixel_size_um=1.0, fitted=fitted) for w in windows]
    assert len(batched) == 4 and batched[3].max() == 0
    for b, s in zip(batched, single):
        assert b.dtype == np.uint32
        np.testing.assert_array_equal(b, s)


def test_pipeline_reproduces_cellpose_eval_of_the_stack(model_file: Path, fresh_cache: None,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Network passes split per group of windows, masks in threads: Cellpose's own answer.

    ``segment_batch`` must feed the network exactly the batches that one ``eval`` of the whole
    stack would (same tiles, same order) and return exactly its masks.
    """
    from cellpose import core

    image, _ = synthetic_cells((96, 96), seed=5)
    backend = _backend(model_file, model_batch_size=2, diameter_um=8.0)  # rescale 10 / 8
    prepared, fitted = _prepare(backend, image)
    windows = [prepared[:, r : r + 40, c : c + 40].copy() for r, c in ((0, 0), (8, 50), (50, 8), (56, 56))]
    windows.insert(2, prepared[:, :30, :44].copy())  # a shape of its own
    forwards: list[tuple[int, ...]] = []
    forward = core._forward

    def recording(net: Any, x: NDArray[np.float32]) -> Any:
        forwards.append((x.shape, float(np.asarray(x, np.float64).sum())))
        return forward(net, x)

    monkeypatch.setattr(core, "_forward", recording)
    got = backend.segment_batch(windows, pixel_size_um=1.0, fitted=fitted)
    ours, forwards = forwards, []
    loaded = backend._model()
    kwargs = backend._eval_kwargs(loaded, 1.0)
    stack = np.stack([backend._cellpose_input(w, fitted, index=0) for i, w in enumerate(windows) if i != 2])
    masks = loaded.model.eval(stack, channel_axis=3, z_axis=0, **kwargs)[0]
    single = loaded.model.eval(backend._cellpose_input(windows[2], fitted, index=2), channel_axis=2, **kwargs)[0]
    theirs = forwards
    assert sorted(ours) == sorted(theirs)  # the same forward batches (group order may differ)
    assert max(shape[0] for shape, _ in ours) == 2  # model_batch_size tiles per pass
    expected = [masks[0], masks[1], single, masks[2], masks[3]]
    assert min(int(m.max()) for m in expected) >= 1
    for g, e in zip(got, expected):
        assert g.dtype == np.uint32
        np.testing.assert_array_equal(g, e)


def test_mask_dynamics_overlap_the_network(model_file: Path, fresh_cache: None,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The masks of window k are computed while the network runs window k+1."""
    image, _ = synthetic_cells((48, 48), seed=3)
    backend = _backend(model_file, model_batch_size=1)
    prepared, fitted = _prepare(backend, image)
    windows = [prepared[:, k : k + 32, k : k + 32].copy() for k in (0, 4, 8, 12)]
    timeout = 5.0
    lock = threading.Lock()
    started: dict[tuple[str, int], threading.Event] = {}
    spans: dict[tuple[str, int], list[float]] = {}

    def begin(kind: str) -> int:
        with lock:
            k = sum(1 for key in spans if key[0] == kind)
            spans[(kind, k)] = [time.perf_counter(), math.inf]
            event = started.setdefault((kind, k), threading.Event())
        event.set()
        return k

    def wait(key: tuple[str, int]) -> None:
        with lock:
            event = started.setdefault(key, threading.Event())
        event.wait(timeout)

    rec = _install_recorder(backend)
    record_eval = rec.eval

    def gated_eval(x: NDArray[np.float32], **kwargs: Any) -> Any:
        k = begin("net")
        if k >= 1:
            wait(("masks", k - 1))
        try:
            return record_eval(x, **kwargs)
        finally:
            spans[("net", k)][1] = time.perf_counter()

    masks = CellposeBackend._masks

    def gated_masks(self: CellposeBackend, *args: Any) -> Any:
        k = begin("masks")
        if k + 1 < len(windows):
            wait(("net", k + 1))
        try:
            return masks(self, *args)
        finally:
            spans[("masks", k)][1] = time.perf_counter()

    rec.eval = gated_eval  # type: ignore[method-assign]
    monkeypatch.setattr(CellposeBackend, "_masks", gated_masks)
    start = time.perf_counter()
    got = backend.segment_batch(windows, pixel_size_um=1.0, fitted=fitted)
    elapsed = time.perf_counter() - start
    assert len(rec.calls) == 4 and all(kw["compute_masks"] is False for _, kw in rec.calls)
    for k in range(3):
        (s1, e1), (s2, e2) = spans[("net", k + 1)], spans[("masks", k)]
        assert s1 < e2 and s2 < e1, spans  # the two intervals overlap
    assert elapsed < timeout
    monkeypatch.undo()
    rec.eval = record_eval  # type: ignore[method-assign]
    for g, w in zip(got, windows):
        np.testing.assert_array_equal(g, backend.segment(w, pixel_size_um=1.0, fitted=fitted))
    assert max(int(g.max()) for g in got) >= 1


# --------------------------------------------------------------------------------------------
# GPU and real weights
# --------------------------------------------------------------------------------------------


@pytest.mark.gpu
def test_gpu_matches_cpu(model_file: Path) -> None:
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU visible to torch")
    image, _ = synthetic_cells((128, 128))
    gpu = _backend(model_file, allow_cpu=False)
    cpu = _backend(model_file, device="cpu")
    prepared, fitted = _prepare(gpu, image)
    a = gpu.segment(prepared, pixel_size_um=1.0, fitted=fitted)
    b = cpu.segment(prepared, pixel_size_um=1.0, fitted=fitted)
    assert model_load_count(("cellpose", gpu.model, "cuda")) == 1
    assert (a > 0).mean() == pytest.approx((b > 0).mean(), abs=0.02)


@pytest.mark.realdata
def test_real_cellpose_agrees_with_steinbock_masks() -> None:
    model = os.environ.get(MODEL_ENV_VAR)
    steinbock = SHARED_DATA / "imc_bodenmiller_testdata" / "steinbock"
    if not model or not Path(model).is_file() or not steinbock.is_dir():
        pytest.skip(f"needs {MODEL_ENV_VAR} (a model file) and ../shared/data/imc_bodenmiller_testdata")
    import pandas as pd
    import tifffile

    from tiledseg.segment._prepare import statistics_from_array

    panel = pd.read_csv(steinbock / "panel.csv")
    kept = panel[panel["keep"] == 1]
    name = "20210305_NE_mockData1_001.tiff"
    image = tifffile.imread(steinbock / "img" / name).astype(np.float32)
    reference = tifffile.imread(steinbock / "masks_deepcell" / name)
    names = tuple(kept["name"].astype(str))
    backend = CellposeBackend(model=model, panel=kept, allow_cpu=True, diameter_um=10.0)
    inputs = backend.channels(names)
    sub = image[[names.index(n) for n in inputs]]
    prepared = backend.prepare(sub, pixel_size_um=1.0, stats=statistics_from_array(sub, inputs))
    labels = backend.segment(prepared, pixel_size_um=1.0,
                             fitted=backend.fit(*prepared_histograms(prepared)))
    n_ref = len(np.unique(reference)) - 1
    assert labels.shape == reference.shape
    assert abs(int(labels.max()) - n_ref) <= 0.5 * n_ref
