"""Tests of the ``mesmer`` backend with a Mesmer-signature SavedModel built at test time."""

from __future__ import annotations

import json
import math
import os
import pickle
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from skimage.exposure import equalize_adapthist, rescale_intensity
from skimage.measure import label as cc_label
from skimage.morphology import disk, h_maxima
from skimage.segmentation import relabel_sequential, watershed

from tests.segment.conftest_dl import (
    CHANNELS,
    SHARED_DATA,
    prepared_histograms,
    save_mesmer_like_model,
    statistics,
    synthetic_cells,
)
from tiledseg.errors import BackendError, MissingDependencyError, ModelNotFoundError, ParameterError
from tiledseg.segment import get_backend
from tiledseg.segment._dl_cache import (
    cached_model,
    clear_model_cache,
    model_load_count,
    resolve_device,
)
from tiledseg.segment._dl_patches import assemble_patches, cut_patches, resize_labels
from tiledseg.segment._dl_watershed import (
    deep_watershed,
    histogram_normalization,
    percentile_nonzero_from_histogram,
)
from tiledseg.segment.mesmer import MODEL_ENV_VAR, MesmerBackend, load_mesmer_model
from tiledseg.testing import BackendConformance, BackendSample

pytest.importorskip("tensorflow")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_mesmer_like_model(tmp_path_factory.mktemp("mesmer") / "MultiplexSegmentation")


def _backend(model_dir: Path, **kw: Any) -> MesmerBackend:
    params: dict[str, Any] = {"nuclear": "DNA1", "membrane": "CD45", "allow_cpu": True}
    params.update(kw)
    return MesmerBackend(model_path=str(model_dir), **params)


def _run(backend: MesmerBackend, image: NDArray[np.float32], pixel_size_um: float = 1.0):
    names = backend.channels(CHANNELS)
    idx = [CHANNELS.index(n) for n in names]
    stats = statistics(image)
    prepared = backend.prepare(image[idx], pixel_size_um=pixel_size_um, stats=stats)
    fitted = backend.fit(*prepared_histograms(prepared))
    return prepared, fitted


# --------------------------------------------------------------------------------------------
# import, registry, parameters
# --------------------------------------------------------------------------------------------


def test_module_import_does_not_import_frameworks() -> None:
    code = (
        "import sys, tiledseg.segment.mesmer, tiledseg.segment.cellpose\n"
        "heavy = [m for m in ('tensorflow', 'torch', 'cellpose', 'keras') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])


def test_registered_under_its_name(model_dir: Path) -> None:
    backend = get_backend("mesmer", model_path=str(model_dir), allow_cpu=True)
    assert isinstance(backend, MesmerBackend)
    assert backend.requires_gpu is True
    assert backend.params()["model_path"] == str(model_dir.resolve())


def test_no_model_says_how_to_get_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MODEL_ENV_VAR, raising=False)
    with pytest.raises(ModelNotFoundError, match=MODEL_ENV_VAR) as info:
        MesmerBackend()
    assert "deepcell" in str(info.value).lower() and "docs/models.md" in str(info.value)


def test_model_path_from_environment(monkeypatch: pytest.MonkeyPatch, model_dir: Path) -> None:
    monkeypatch.setenv(MODEL_ENV_VAR, str(model_dir))
    assert MesmerBackend().model_path == str(model_dir.resolve())


def test_bad_model_paths(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        MesmerBackend(model_path=str(tmp_path / "nope"))
    with pytest.raises(ModelNotFoundError, match="saved_model.pb"):
        MesmerBackend(model_path=str(tmp_path))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"compartment": "cytoplasm"}, "compartment"),
        ({"postprocess": {"maxima_treshold": 0.1}}, "maxima_treshold"),
        ({"device": "tpu"}, "device"),
        ({"device": "cpu", "allow_cpu": False}, "allow_cpu"),
        ({"model_batch_size": 0}, "model_batch_size"),
        ({"combine": "max"}, "combine"),
    ],
)
def test_bad_parameters(model_dir: Path, kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ParameterError, match=match):
        _backend(model_dir, **kwargs)


@pytest.mark.parametrize(
    ("device", "gpu", "allow_cpu", "expected"),
    [
        (None, True, False, "cuda"),
        ("cuda:1", True, None, "cuda:1"),
        ("gpu", True, None, "cuda"),
        (None, False, True, "cpu"),
        (None, False, None, "cpu"),  # the engine already checked --allow-cpu
        (None, False, False, BackendError),
        ("cuda", False, True, BackendError),  # an explicit GPU never falls back
        ("cpu", True, None, "cpu"),
        ("cpu", True, False, ParameterError),
        ("tpu", True, True, ParameterError),
    ],
)
def test_device_rules(device: str | None, gpu: bool, allow_cpu: bool | None, expected: Any) -> None:
    if isinstance(expected, str):
        got = resolve_device(device, gpu_available=gpu, allow_cpu=allow_cpu, backend="mesmer")
        assert got == expected
    else:
        with pytest.raises(expected):
            resolve_device(device, gpu_available=gpu, allow_cpu=allow_cpu, backend="mesmer")


def test_missing_tensorflow_names_the_extra(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = _backend(model_dir)
    monkeypatch.setitem(sys.modules, "tensorflow", None)
    prepared = np.random.default_rng(0).random((2, 32, 32), dtype=np.float32)
    with pytest.raises(MissingDependencyError, match=r"tiledseg\[mesmer\]"):
        backend.segment(prepared, pixel_size_um=1.0, fitted={"clip_nuclear": 1, "clip_membrane": 1})


def test_no_gpu_without_allow_cpu_is_an_error(model_dir: Path) -> None:
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("a GPU is visible")
    backend = _backend(model_dir, allow_cpu=False)
    with pytest.raises(BackendError, match="allow_cpu"):
        backend.segment(np.random.default_rng(0).random((2, 32, 32), dtype=np.float32),
                        pixel_size_um=1.0, fitted={"clip_nuclear": 1.0, "clip_membrane": 1.0})


# --------------------------------------------------------------------------------------------
# segmentation
# --------------------------------------------------------------------------------------------


class TestMesmerConformance(BackendConformance):
    """The shared backend conformance suite, on the stand-in SavedModel."""

    @pytest.fixture(autouse=True)
    def _model(self, model_dir: Path) -> None:
        self.model_dir = model_dir

    def make_backend(self) -> MesmerBackend:
        return _backend(self.model_dir)

    def make_sample(self) -> BackendSample:
        image, nuclei = synthetic_cells((80, 80), seed=4)
        return BackendSample(image=image, channel_names=CHANNELS, pixel_size_um=1.0,
                             min_cells=int(nuclei.max()) - 2)


def test_segments_synthetic_cells(model_dir: Path) -> None:
    image, nuclei = synthetic_cells((96, 96))
    backend = _backend(model_dir)
    prepared, fitted = _run(backend, image)
    before = prepared.copy()
    labels = backend.segment(prepared, pixel_size_um=1.0, fitted=fitted)
    assert labels.dtype == np.uint32 and labels.shape == (96, 96)
    np.testing.assert_array_equal(prepared, before)  # input untouched
    ids = np.unique(labels)
    assert ids[0] == 0 and labels.max() >= 1
    # every synthetic nucleus lies in its own cell
    owners = [np.bincount(labels[nuclei == k]).argmax() for k in range(1, nuclei.max() + 1)]
    assert 0 not in owners
    assert len(set(owners)) == nuclei.max()
    again = backend.segment(prepared, pixel_size_um=1.0, fitted=fitted)
    np.testing.assert_array_equal(labels, again)  # deterministic


def test_nuclear_compartment_uses_nuclear_heads(model_dir: Path) -> None:
    image, nuclei = synthetic_cells((96, 96))
    whole = _backend(model_dir)
    nuc = _backend(model_dir, compartment="nuclear")
    prepared, fitted = _run(whole, image)
    cells = whole.segment(prepared, pixel_size_um=1.0, fitted=fitted)
    nuclear = nuc.segment(prepared, pixel_size_um=1.0, fitted=fitted)
    assert nuclear.max() == cells.max() == nuclei.max()
    # the stand-in nuclear heads see the nuclear channel only: smaller objects
    assert (nuclear > 0).sum() < 0.8 * (cells > 0).sum()


def test_model_loaded_once_per_process(model_dir: Path) -> None:
    clear_model_cache()
    image, _ = synthetic_cells((64, 64))
    backend = _backend(model_dir)
    prepared, fitted = _run(backend, image)
    backend.segment(prepared, pixel_size_um=1.0, fitted=fitted)
    # what Dask ships to a worker: the pickled parameters, never the model
    blob = pickle.dumps(backend)
    assert len(blob) < 10_000 and b"tensorflow" not in blob
    shipped = pickle.loads(blob)
    shipped.segment(prepared, pixel_size_um=1.0, fitted=fitted)
    shipped.segment_batch([prepared, prepared], pixel_size_um=1.0, fitted=fitted)
    assert model_load_count(("mesmer", backend.model_path, "cpu")) == 1


def test_segment_batch_equals_one_by_one(model_dir: Path) -> None:
    image, _ = synthetic_cells((176, 176), seed=3)
    backend = _backend(model_dir, model_batch_size=3)
    prepared, fitted = _run(backend, image)
    # 4, 1 and 4 model patches: batches of 3 end in the middle of windows
    windows = [
        prepared[:, :160, :160].copy(),
        prepared[:, 10:74, 20:100].copy(),
        prepared[:, 26:176, 36:176].copy(),
    ]
    batched = backend.segment_batch(windows, pixel_size_um=1.0, fitted=fitted)
    single = [backend.segment(w, pixel_size_um=1.0, fitted=fitted) for w in windows]
    assert len(batched) == 3
    for b, s in zip(batched, single):
        np.testing.assert_array_equal(b, s)
    assert backend.segment_batch([], pixel_size_um=1.0, fitted=fitted) == []


def test_pixel_size_is_resampled_to_the_model_grid(model_dir: Path) -> None:
    """A slide at 0.5 µm/px and the same slide at 1 µm/px give the same cells."""
    image, nuclei = synthetic_cells((80, 80), seed=5)
    fine = np.repeat(np.repeat(image, 2, axis=1), 2, axis=2)
    backend = _backend(model_dir)
    prep_c, fit_c = _run(backend, image, pixel_size_um=1.0)
    prep_f, fit_f = _run(backend, fine, pixel_size_um=0.5)
    coarse = backend.segment(prep_c, pixel_size_um=1.0, fitted=fit_c)
    detailed = backend.segment(prep_f, pixel_size_um=0.5, fitted=fit_f)
    assert detailed.shape == (160, 160) and coarse.shape == (80, 80)
    assert abs(int(detailed.max()) - int(coarse.max())) <= 1
    assert abs(int(coarse.max()) - int(nuclei.max())) <= 1
    # odd sizes and pixel sizes come back on the slide grid
    odd = backend.segment(prep_c[:, :75, :67].copy(), pixel_size_um=0.8, fitted=fit_c)
    assert odd.shape == (75, 67) and odd.dtype == np.uint32


def test_blank_tile_gives_no_cells(model_dir: Path) -> None:
    backend = _backend(model_dir)
    blank = np.zeros((2, 64, 64), np.float32)
    fitted = backend.fit(*prepared_histograms(blank))
    assert fitted == {"clip_nuclear": 0.0, "clip_membrane": 0.0}
    labels = backend.segment(blank, pixel_size_um=1.0, fitted=fitted)
    assert labels.dtype == np.uint32 and labels.max() == 0


def test_bad_segment_inputs(model_dir: Path) -> None:
    backend = _backend(model_dir)
    with pytest.raises(ParameterError, match=r"\(2, Y, X\)"):
        backend.segment(np.zeros((3, 16, 16), np.float32), pixel_size_um=1.0,
                        fitted={"clip_nuclear": 1.0, "clip_membrane": 1.0})
    with pytest.raises(ParameterError, match="clip_nuclear"):
        backend.segment(np.zeros((2, 16, 16), np.float32), pixel_size_um=1.0, fitted={})
    with pytest.raises(ParameterError, match="pixel_size_um"):
        backend.segment(np.zeros((2, 16, 16), np.float32), pixel_size_um=0.0,
                        fitted={"clip_nuclear": 1.0, "clip_membrane": 1.0})


def test_channels_from_panel(model_dir: Path) -> None:
    import pandas as pd

    panel = pd.DataFrame({"name": ["DNA1", "CD45", "Other"], "keep": [1, 1, 1],
                          "deepcell": [1.0, 2.0, np.nan], "ilastik": [1, 2, 3]})
    backend = MesmerBackend(model_path=str(model_dir), panel=panel, allow_cpu=True)
    assert backend.channels(CHANNELS) == ("DNA1", "CD45")
    # the stored parameters are JSON-clean and rebuild the same backend
    params = json.loads(json.dumps(backend.params(), allow_nan=False))
    assert params["panel"][2] == {"name": "Other", "keep": 1, "deepcell": None}
    assert MesmerBackend(**params).channels(CHANNELS) == ("DNA1", "CD45")


# --------------------------------------------------------------------------------------------
# the reference formulas, restated independently of the implementation
# --------------------------------------------------------------------------------------------


def _reference_percentile_threshold(x: NDArray[np.float64], percentile: float = 99.9) -> NDArray[np.float64]:
    # deepcell_toolbox.processing.percentile_threshold for one image and channel
    out = np.zeros_like(x)
    nonzero = x[np.nonzero(x)]
    if len(nonzero) > 0:
        top = np.percentile(nonzero, percentile)
        out = np.where(x > top, top, x)
    return out


def _reference_histogram_normalization(x: NDArray[np.float64], kernel_size: int = 128) -> NDArray[np.float64]:
    # deepcell_toolbox.processing.histogram_normalization for one image and channel
    x = x.astype("float32")
    x = rescale_intensity(x, out_range="float")
    return np.asarray(equalize_adapthist(x, kernel_size=(kernel_size, kernel_size)), dtype=np.float64)


def _fixed_plane(shape: tuple[int, int] = (300, 280), seed: int = 7) -> NDArray[np.float64]:
    rng = np.random.default_rng(seed)
    x = rng.gamma(2.0, 0.1, size=shape)
    x[rng.random(shape) < 0.3] = 0.0  # IMC-like exact zeros
    x[5, 5] = 4.0  # a hot pixel the percentile clip must catch
    return x


def test_percentile_clip_matches_reference() -> None:
    x = _fixed_plane()
    x = x / x.max()
    x[(x > 0) & (x < 2 / 1024)] = 2 / 1024  # nothing non-zero inside the "zero" bin
    expected_top = np.percentile(x[np.nonzero(x)], 99.9)
    counts, edges = np.histogram(x, bins=1024, range=(0.0, 1.0))
    got = percentile_nonzero_from_histogram(counts, edges, 99.9)
    assert got == pytest.approx(expected_top, abs=1.5 / 1024)
    assert np.isnan(percentile_nonzero_from_histogram(np.r_[10, np.zeros(9)], np.linspace(0, 1, 11), 99.9))


def test_histogram_normalization_matches_reference_clahe() -> None:
    """With the slide range equal to the image range, ours is the reference up to its stretch."""
    x = _fixed_plane()
    reference = _reference_histogram_normalization(_reference_percentile_threshold(x))
    top = np.percentile(x[np.nonzero(x)], 99.9)  # what fit() provides, per slide
    ours = histogram_normalization(np.minimum(x, top) / top, kernel_size=128)
    assert ours.dtype == np.float32 and ours.shape == x.shape
    np.testing.assert_allclose(rescale_intensity(ours.astype(np.float64), out_range=(0.0, 1.0)),
                               reference, atol=1e-5)


def test_histogram_normalization_is_local_unlike_reference() -> None:
    """A bright pixel far away changes every reference pixel but none of ours nearby."""
    x = _fixed_plane((512, 512))
    x = 0.8 * x / x.max()
    y = x.copy()
    y[500, 500] = 1.0
    ours_x, ours_y = histogram_normalization(x), histogram_normalization(y)
    np.testing.assert_array_equal(ours_x[:200, :200], ours_y[:200, :200])
    ref_x, ref_y = _reference_histogram_normalization(x), _reference_histogram_normalization(y)
    assert np.abs(ref_x[:200, :200] - ref_y[:200, :200]).max() > 1e-3


def _reference_deep_watershed(maxima, interior, *, radius, maxima_threshold, interior_threshold,
                              maxima_smooth, interior_smooth, small_objects_threshold):
    from scipy import ndimage as nd

    # deepcell_toolbox.deep_watershed.deep_watershed (h_maxima branch) for one image
    maxima = nd.gaussian_filter(maxima, maxima_smooth)
    interior = nd.gaussian_filter(interior, interior_smooth)
    markers = cc_label(h_maxima(image=maxima, h=maxima_threshold, footprint=disk(radius)))
    lab = watershed(-1 * interior, markers, mask=interior > interior_threshold, watershed_line=0)
    sizes = np.bincount(lab.ravel())
    lab[(sizes < small_objects_threshold)[lab] & (lab > 0)] = 0  # remove_small_objects(min_size)
    lab, _, _ = relabel_sequential(lab)
    return lab


def test_deep_watershed_matches_reference() -> None:
    rng = np.random.default_rng(11)
    rows, cols = np.mgrid[0:120, 0:120]
    maxima = np.zeros((120, 120))
    for r, c in rng.uniform(10, 110, size=(14, 2)):
        maxima = np.maximum(maxima, np.clip(1 - np.hypot(rows - r, cols - c) / 9, 0, None))
    interior = np.clip(maxima * 1.6, 0, 1) + 0.02 * rng.random((120, 120))
    maxima += 0.01 * rng.random((120, 120))
    kw = {"radius": 2, "maxima_threshold": 0.075, "interior_threshold": 0.2,
          "maxima_smooth": 0, "interior_smooth": 2, "small_objects_threshold": 15}
    ours = deep_watershed(maxima, interior, fill_holes_threshold=0, **kw)
    ref = _reference_deep_watershed(maxima, interior, **kw)
    assert ours.dtype == np.uint32 and ours.max() > 5
    np.testing.assert_array_equal(ours, ref)


def test_compiled_h_maxima_equals_scikit_image() -> None:
    """The compiled reconstruction gives scikit-image's h-maxima bit for bit (plateaus too)."""
    from scipy import ndimage as ndi
    from skimage.morphology import footprint_rectangle

    from tiledseg.segment._dl_watershed import _reconstruct_kernel, h_maxima_float

    pytest.importorskip("numba")
    assert _reconstruct_kernel() is not None
    rng = np.random.default_rng(11)
    for case in range(120):
        shape = (int(rng.integers(1, 48)), int(rng.integers(1, 48)))
        img = rng.random(shape)
        if case % 3 == 0:
            img = ndi.gaussian_filter(img, rng.uniform(0.5, 3.0))
        if case % 4 == 0:
            img = np.round(img * int(rng.integers(2, 12))) / 10.0  # plateaus and ties
        if case % 7 == 0:
            img = img * 1e6
        h = float(rng.choice([0.001, 0.01, 0.075, 0.1, 0.3]))
        fp = disk(int(rng.integers(0, 4))) if case % 5 else footprint_rectangle((3, 3))
        before = img.copy()
        got = h_maxima_float(img, h, footprint=fp)
        np.testing.assert_array_equal(img, before)
        expected = h_maxima(img, h, footprint=fp)
        assert got.dtype == expected.dtype == np.uint8
        np.testing.assert_array_equal(got, expected, err_msg=f"case {case}: {shape}, h={h}")
    # what the kernel does not cover goes to scikit-image: same answers
    odd = ndi.gaussian_filter(rng.random((30, 30)), 1.5)
    lopsided = np.array([[0, 0, 0], [1, 1, 1], [0, 0, 1]], dtype=bool)
    np.testing.assert_array_equal(h_maxima_float(odd, 0.01, footprint=lopsided),
                                  h_maxima(odd, 0.01, footprint=lopsided))
    # NaN is an error (scikit-image's reconstruction crashes the process on it)
    odd[3, 4] = np.nan
    with pytest.raises(ValueError, match="finite"):
        h_maxima_float(odd, 0.1, footprint=disk(1))


def test_deep_watershed_fills_small_holes() -> None:
    interior = np.zeros((40, 40))
    interior[5:35, 5:35] = 1.0
    interior[18:21, 18:21] = 0.0  # a 9-pixel hole
    maxima = np.zeros((40, 40))
    maxima[10, 10] = 1.0
    labels = deep_watershed(maxima, interior, interior_smooth=0, fill_holes_threshold=15)
    assert labels[19, 19] == 1 and labels.max() == 1
    kept = deep_watershed(maxima, interior, interior_smooth=0, fill_holes_threshold=5)
    assert kept[19, 19] == 0


@pytest.mark.parametrize("shape", [(50, 70), (256, 256), (300, 520)])
def test_patches_blend_back_exactly(shape: tuple[int, int]) -> None:
    x = np.random.default_rng(0).random(shape + (2,)).astype(np.float32)
    patches, layout = cut_patches(x, patch=256)
    assert patches.shape[1:] == (256, 256, 2)
    np.testing.assert_allclose(assemble_patches(patches, layout), x, rtol=1e-6)


def test_resize_labels_is_nearest() -> None:
    labels = np.arange(12, dtype=np.uint32).reshape(3, 4)
    up = resize_labels(labels, (6, 8))
    np.testing.assert_array_equal(up, np.repeat(np.repeat(labels, 2, 0), 2, 1))
    assert set(np.unique(resize_labels(up, (5, 7)))) <= set(labels.ravel())


# --------------------------------------------------------------------------------------------
# GPU and real weights
# --------------------------------------------------------------------------------------------


def _tf_gpu() -> bool:
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


@pytest.mark.gpu
def test_gpu_matches_cpu(model_dir: Path) -> None:
    if not _tf_gpu():
        pytest.skip("no GPU visible to TensorFlow")
    image, _ = synthetic_cells((96, 96))
    gpu = _backend(model_dir, allow_cpu=False)  # device=None picks the GPU
    cpu = _backend(model_dir, device="cpu")
    prepared, fitted = _run(gpu, image)
    a = gpu.segment(prepared, pixel_size_um=1.0, fitted=fitted)
    b = cpu.segment(prepared, pixel_size_um=1.0, fitted=fitted)
    assert model_load_count(("mesmer", gpu.model_path, "cuda")) == 1
    assert a.max() == b.max()
    assert (a == b).mean() > 0.99


@pytest.mark.realdata
def test_real_mesmer_agrees_with_steinbock_masks() -> None:
    model = os.environ.get(MODEL_ENV_VAR)
    steinbock = SHARED_DATA / "imc_bodenmiller_testdata" / "steinbock"
    if not model or not steinbock.is_dir():
        pytest.skip(f"needs {MODEL_ENV_VAR} and ../shared/data/imc_bodenmiller_testdata")
    import pandas as pd
    import tifffile

    from tiledseg.segment._prepare import statistics_from_array

    panel = pd.read_csv(steinbock / "panel.csv")
    kept = panel[panel["keep"] == 1]
    name = "20210305_NE_mockData1_001.tiff"
    image = tifffile.imread(steinbock / "img" / name).astype(np.float32)
    reference = tifffile.imread(steinbock / "masks_deepcell" / name)
    names = tuple(kept["name"].astype(str))
    backend = MesmerBackend(model_path=model, panel=kept, allow_cpu=True)
    inputs = backend.channels(names)
    sub = image[[names.index(n) for n in inputs]]
    stats = statistics_from_array(sub, inputs)
    prepared = backend.prepare(sub, pixel_size_um=1.0, stats=stats)
    fitted = backend.fit(*prepared_histograms(prepared))
    labels = backend.segment(prepared, pixel_size_um=1.0, fitted=fitted)
    assert labels.shape == reference.shape
    # cell count within 15 % of the reference Mesmer masks
    n_ref = len(np.unique(reference)) - 1
    assert abs(int(labels.max()) - n_ref) <= 0.15 * n_ref


# --------------------------------------------------------------------------------------------
# the pipeline: CPU work overlapped with the model, results unchanged
# --------------------------------------------------------------------------------------------


class _Timeline:
    """Start/end times of pipeline stages, and rendezvous between them.

    ``meet(kind, k, other)`` marks stage ``(kind, k)`` as started and waits (at most
    ``timeout`` seconds) until ``other`` has started too. Two stages that meet each other can
    only both return promptly when they run at the same time; a serial pipeline times out, and
    the recorded intervals then do not overlap.
    """

    def __init__(self, timeout: float = 5.0) -> None:
        self.timeout = timeout
        self.lock = threading.Lock()
        self.events: dict[tuple[str, int], threading.Event] = {}
        self.spans: dict[tuple[str, int], list[float]] = {}
        self.counts: dict[str, int] = {}

    def _event(self, key: tuple[str, int]) -> threading.Event:
        with self.lock:
            return self.events.setdefault(key, threading.Event())

    def begin(self, kind: str) -> int:
        with self.lock:
            k = self.counts.get(kind, 0)
            self.counts[kind] = k + 1
            self.spans[(kind, k)] = [time.perf_counter(), math.inf]
        self._event((kind, k)).set()
        return k

    def wait(self, key: tuple[str, int]) -> None:
        self._event(key).wait(self.timeout)

    def end(self, kind: str, k: int) -> None:
        self.spans[(kind, k)][1] = time.perf_counter()

    def overlap(self, a: tuple[str, int], b: tuple[str, int]) -> bool:
        (s1, e1), (s2, e2) = self.spans[a], self.spans[b]
        return s1 < e2 and s2 < e1


def _serial_mesmer(backend: MesmerBackend, windows: list[NDArray[np.float32]], *,
                   pixel_size_um: float, fitted: dict[str, float]) -> list[NDArray[np.uint32]]:
    """What ``segment_batch`` computes, one step after the other (no threads)."""
    model = backend._model()
    clips = backend._clips(fitted)
    out = [np.zeros(w.shape[1:], np.uint32) for w in windows]
    todo = [i for i, w in enumerate(windows) if np.ptp(w[0]) > 0 or np.ptp(w[1]) > 0]
    cuts = {i: cut_patches(backend._preprocess(windows[i], pixel_size_um=pixel_size_um, clips=clips),
                           patch=model.patch) for i in todo}
    stacked = np.concatenate([cuts[i][0] for i in todo])
    b = backend.model_batch_size
    maps = np.concatenate([backend._select(model(stacked[s : s + b]))
                           for s in range(0, stacked.shape[0], b)])
    start = 0
    for i in todo:
        n = cuts[i][1].n_patches
        out[i] = backend._finish(maps[start : start + n], cuts[i][1], windows[i].shape[1:])
        start += n
    return out


def test_pipeline_equals_serial_computation(model_dir: Path) -> None:
    """Prefetch and post-processing threads change nothing: labels equal a serial run's."""
    image, _ = synthetic_cells((176, 176), seed=6)
    backend = _backend(model_dir, model_batch_size=3)
    prepared, fitted = _run(backend, image)
    # 4, 1, 0 (blank), 4 and 1 model patches at 0.7 µm/px: batches of 3 straddle windows
    windows = [prepared[:, :176, :170].copy(), prepared[:, 10:74, 20:100].copy(),
               np.zeros((2, 40, 40), np.float32), prepared[:, 3:176, 6:160].copy(),
               prepared[:, 100:150, 90:176].copy()]
    before = [w.copy() for w in windows]
    expected = _serial_mesmer(backend, windows, pixel_size_um=0.7, fitted=fitted)
    # any iterable of windows is accepted (the engine may hand over a generator)
    got = backend.segment_batch((w for w in windows), pixel_size_um=0.7, fitted=fitted)
    assert len(got) == 5 and got[2].max() == 0 and min(g.max() for g in got[:2]) > 0
    for g, e, w, b in zip(got, expected, windows, before):
        assert g.dtype == np.uint32
        np.testing.assert_array_equal(g, e)
        np.testing.assert_array_equal(w, b)  # inputs untouched


def test_pipeline_overlaps_cpu_work_with_the_model(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Window k+1 is read and prepared, and window k-1 post-processed, while window k is in the model."""
    clear_model_cache()
    backend = _backend(model_dir, model_batch_size=1)
    image, _ = synthetic_cells((64, 64), seed=1)
    prepared, fitted = _run(backend, image)
    n = 4  # windows of one 256^2 patch each at 0.5 µm/px
    real = load_mesmer_model(model_dir, device="cpu")
    line = _Timeline()

    class GatedModel:
        patch = real.patch

        def __call__(self, batch: NDArray[np.float32]) -> list[NDArray[np.float32]]:
            k = line.begin("model")
            if k + 1 < n:
                line.wait(("read", k + 1))
                line.wait(("prepare", k + 1))
            if k >= 1:
                line.wait(("post", k - 1))
            try:
                return real(batch)
            finally:
                line.end("model", k)

    def reads() -> Iterator[NDArray[np.float32]]:
        """A lazy source, as the engine's reader could hand over: read k+1 while k is inferred."""
        for _ in range(n):
            k = line.begin("read")
            if k >= 1:
                line.wait(("model", k - 1))
            window = prepared.copy()
            line.end("read", k)
            yield window

    preprocess, finish = MesmerBackend._preprocess, MesmerBackend._finish

    def gated_preprocess(self: MesmerBackend, *args: Any, **kwargs: Any) -> Any:
        k = line.begin("prepare")
        if k >= 1:
            line.wait(("model", k - 1))
        try:
            return preprocess(self, *args, **kwargs)
        finally:
            line.end("prepare", k)

    def gated_finish(self: MesmerBackend, *args: Any) -> Any:
        k = line.begin("post")
        if k + 1 < n:
            line.wait(("model", k + 1))
        try:
            return finish(self, *args)
        finally:
            line.end("post", k)

    monkeypatch.setattr(MesmerBackend, "_preprocess", gated_preprocess)
    monkeypatch.setattr(MesmerBackend, "_finish", gated_finish)
    cached_model(("mesmer", backend.model_path, "cpu"), GatedModel)
    try:
        start = time.perf_counter()
        got = backend.segment_batch(reads(), pixel_size_um=1.0, fitted=fitted)
        elapsed = time.perf_counter() - start
    finally:
        clear_model_cache()
    monkeypatch.undo()
    expected = backend.segment(prepared, pixel_size_um=1.0, fitted=fitted)
    assert len(got) == n
    for g in got:
        np.testing.assert_array_equal(g, expected)
    for k in range(n - 1):
        assert line.overlap(("model", k), ("read", k + 1)), line.spans
        assert line.overlap(("model", k), ("prepare", k + 1)), line.spans
        assert line.overlap(("model", k + 1), ("post", k)), line.spans
    assert elapsed < line.timeout  # no stage waited for a partner that never came
