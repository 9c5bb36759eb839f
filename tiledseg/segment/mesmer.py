"""``mesmer``: DeepCell's Mesmer whole-cell / nuclear segmentation, tile by tile.

Mesmer (Greenwald et al., "Whole-cell segmentation of tissue images with human-level performance
using large-scale data annotation and deep learning", *Nat. Biotechnol.* 40, 2022) is a
PanopticNet (ResNet50 + FPN) that maps a two-channel image (nuclear, membrane) at 0.5 µm/px to
four semantic heads: ``semantic_0`` whole-cell inner distance, ``semantic_1`` whole-cell
pixelwise classes (channel 1 = interior), ``semantic_2`` nuclear inner distance, ``semantic_3``
nuclear pixelwise classes (DeepCell's ``format_output_mesmer``).

Per window the backend does what ``deepcell.applications.Mesmer.predict`` does on a whole image,
in the same order, with the image-wide steps replaced by slide-level ones:

1. ``prepare``: nuclear and membrane channel groups (panel ``deepcell`` column 1 / 2, or names)
   normalised with slide percentiles and combined (:mod:`tiledseg.segment._prepare`);
2. ``fit``: the 99.9th percentile of the non-zero pixels of each prepared plane over the slide
   (Mesmer's ``percentile_threshold``, once per slide instead of once per image);
3. ``segment``: resample the window from the slide's pixel size (``image_mpp``) to 0.5 µm/px,
   clip and rescale with the slide values, CLAHE on slide-fixed grey levels
   (:mod:`tiledseg.segment._dl_watershed`), cut into the model's 256 x 256 patches with a 0.75
   stride, run the SavedModel in batches, blend the patches back, run the deep watershed with
   Mesmer's defaults, and resample the labels to the slide grid by nearest neighbour. Patches of
   all windows handed to ``segment_batch`` share forward passes. The CPU work is pipelined
   around the model: a helper thread takes (and, from a lazy iterable, reads) window ``k + 1``
   and resamples, clips and CLAHE-normalises it while window ``k`` is in the model, and each
   window is blended and deep-watershedded in a small thread pool as soon as its last patch is
   through the model, while the next ones run.

The model is DeepCell's ``MultiplexSegmentation`` SavedModel, loaded with a current TensorFlow
(``tf.saved_model.load(path).signatures["serving_default"]``, input ``input_0``), from
``model_path=`` or the ``TILEDSEG_MESMER_MODEL`` environment variable; ``docs/models.md`` says how
to obtain it. TensorFlow is imported only when a tile is segmented, and each worker process loads
the model once (:mod:`tiledseg.segment._dl_cache`).
"""

from __future__ import annotations

import logging
import math
import os
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from tiledseg.errors import (
    BackendError,
    MissingDependencyError,
    ModelNotFoundError,
    ParameterError,
)
from tiledseg.segment._dl_cache import (
    cached_model,
    postprocess_threads,
    resolve_device,
    validate_device,
)
from tiledseg.segment._dl_panel import panel_records
from tiledseg.segment._dl_patches import (
    PatchLayout,
    assemble_patches,
    cut_patches,
    resize_image,
    resize_labels,
)
from tiledseg.segment._dl_watershed import (
    compartment_kwargs,
    deep_watershed,
    histogram_normalization,
    percentile_nonzero_from_histogram,
)
from tiledseg.segment._prepare import DEFAULT_CLIP, prepare_groups, resolve_channel_roles
from tiledseg.segment._protocol import BaseBackend, ChannelStatistics

__all__ = ["MODEL_ENV_VAR", "MesmerBackend", "load_mesmer_model"]

logger = logging.getLogger(__name__)

#: Environment variable naming the ``MultiplexSegmentation`` SavedModel directory.
MODEL_ENV_VAR = "TILEDSEG_MESMER_MODEL"

#: Pixel size Mesmer was trained at (``Mesmer.model_mpp``).
MODEL_MPP = 0.5

#: Windows resampled, normalised and cut ahead of the model (bounds the memory they hold).
PREFETCH_WINDOWS = 2

#: Threads that blend and deep-watershed finished windows while the model runs the next ones
#: (half the process's cores, 2 to 8: the deep watershed costs about 0.5 CPU-second per model
#: megapixel, far more than the forward pass on a GPU).
POSTPROCESS_THREADS = postprocess_threads()

#: A window handed to the model stage: index, ``(Y, X)`` on the slide grid, and its model-ready
#: ``(Y', X', 2)`` planes at ``model_mpp`` (``None`` for a blank window).
_Window = tuple[int, tuple[int, int], "NDArray[np.float32] | None"]

_OUTPUTS = ("semantic_0", "semantic_1", "semantic_2", "semantic_3")
_COMPARTMENTS = ("whole-cell", "nuclear")
_HOW_TO_GET = (
    "download DeepCell's MultiplexSegmentation model (an access token from "
    "https://users.deepcell.org is needed; see docs/models.md), unpack it and set "
    f"{MODEL_ENV_VAR} to its directory or pass `model_path=` (CLI: `model_path` under [backend] "
    "in a --config file); the backend also needs TensorFlow: pip install 'tiledseg[mesmer]'"
)


def _import_tensorflow() -> Any:
    try:
        import tensorflow as tf
    except ImportError as exc:
        raise MissingDependencyError(
            "the 'mesmer' backend needs TensorFlow: pip install 'tiledseg[mesmer]' "
            f"({exc})"
        ) from exc
    return tf


def _tf_device(device: str) -> str:
    if device == "cpu":
        return "/CPU:0"
    index = device.split(":", 1)[1] if ":" in device else "0"
    return f"/GPU:{index}"


@dataclass
class _LoadedMesmer:
    """A loaded serving signature and what tiledseg needs to know about it."""

    module: Any  # keeps the loaded SavedModel (and its variables) alive
    function: Any
    input_name: str
    output_names: tuple[str, str, str, str]
    patch: int
    device: str

    def __call__(self, batch: NDArray[np.float32]) -> list[NDArray[np.float32]]:
        import tensorflow as tf

        with tf.device(_tf_device(self.device)):
            result = self.function(**{self.input_name: tf.constant(batch, dtype=tf.float32)})
        return [np.asarray(result[name].numpy(), dtype=np.float32) for name in self.output_names]


def _spec_of(function: Any) -> tuple[str, tuple[int | None, ...]]:
    args, kwargs = function.structured_input_signature
    specs = dict(kwargs)
    if not specs and args:
        specs = {getattr(a, "name", f"input_{i}"): a for i, a in enumerate(args)}
    if "input_0" in specs:
        name = "input_0"
    elif len(specs) == 1:
        name = next(iter(specs))
    else:
        raise BackendError(
            f"Mesmer SavedModel's serving_default takes inputs {sorted(specs)}; expected 'input_0'"
        )
    shape = tuple(specs[name].shape.as_list())
    return name, shape


def _output_names(function: Any) -> tuple[str, str, str, str]:
    keys = sorted(function.structured_outputs)
    if all(k in keys for k in _OUTPUTS):
        return _OUTPUTS
    # Keras exports sometimes suffix the layer names ("semantic_0_1"); match by prefix.
    found: list[str] = []
    for want in _OUTPUTS:
        match = [k for k in keys if k == want or k.startswith(want + "_") or k.endswith("/" + want)]
        if len(match) != 1:
            raise BackendError(
                f"Mesmer SavedModel's serving_default returns {keys}; expected outputs "
                f"{list(_OUTPUTS)} (whole-cell inner distance, whole-cell pixelwise, nuclear "
                "inner distance, nuclear pixelwise)"
            )
        found.append(match[0])
    return (found[0], found[1], found[2], found[3])


def load_mesmer_model(path: str | os.PathLike[str], *, device: str) -> _LoadedMesmer:
    """Load a Mesmer SavedModel's ``serving_default`` signature (no caching).

    Parameters
    ----------
    path : path-like
        The SavedModel directory (holding ``saved_model.pb``).
    device : str
        ``"cpu"`` or ``"cuda[:N]"``.

    Returns
    -------
    callable
        Maps a ``(N, P, P, 2)`` float32 batch to the four heads, each ``(N, P, P, C)``.

    Raises
    ------
    ModelNotFoundError
        The path does not exist or is not a SavedModel; the message says how to get the weights.
    BackendError
        The signature is not Mesmer's.
    """
    tf = _import_tensorflow()
    p = Path(path)
    if not (p / "saved_model.pb").is_file():
        raise ParameterError(
            f"Mesmer model path {str(p)!r} is not a TensorFlow SavedModel directory "
            f"(no saved_model.pb); {_HOW_TO_GET}"
        )
    with tf.device(_tf_device(device)):
        module = tf.saved_model.load(str(p))
    try:
        function = module.signatures["serving_default"]
    except KeyError:
        raise BackendError(
            f"SavedModel {str(p)!r} has no 'serving_default' signature "
            f"(signatures: {list(module.signatures)})"
        ) from None
    name, shape = _spec_of(function)
    if len(shape) != 4 or shape[-1] not in (None, 2):
        raise BackendError(
            f"Mesmer model input {name!r} has shape {shape}; expected (N, H, W, 2)"
        )
    patch = shape[1] if shape[1] is not None and shape[1] == shape[2] else 256
    logger.info("loaded Mesmer SavedModel %s on %s (patch %d)", p, device, patch)
    if device == "cpu":
        logger.warning("Mesmer runs on the CPU of this worker (allow_cpu): expect slow tiles")
    return _LoadedMesmer(
        module=module,
        function=function,
        input_name=name,
        output_names=_output_names(function),
        patch=int(patch),
        device=device,
    )


class MesmerBackend(BaseBackend):
    """Mesmer (DeepCell ``MultiplexSegmentation``) on GPU workers, batched over tiles.

    Parameters
    ----------
    model_path : str, optional
        SavedModel directory; default: the ``TILEDSEG_MESMER_MODEL`` environment variable.
    compartment : {"whole-cell", "nuclear"}
        Which labels to return.
    nuclear, membrane : sequence of str, optional
        Channel names of the two inputs; default: the panel's ``deepcell`` column (1 / 2), else
        a nuclear channel guessed by name and no membrane.
    panel : DataFrame or sequence of mapping, optional
        steinbock panel rows to take ``deepcell`` roles from.
    combine : {"mean", "sum"}
        How the channels of a group are combined after slide-level normalisation. Mesmer sums
        its membrane channels; its percentile clip and CLAHE are insensitive to the scale, so the
        mean gives the same input without saturating when many channels are bright.
    clip : (2,) sequence of float
        Slide-level percentiles for per-channel normalisation (default 1--99.9).
    hot_pixel_threshold : float, optional
        steinbock's hot-pixel filter margin (raw units).
    percentile : float
        Mesmer's ``percentile_threshold`` of the non-zero pixels, over the slide (99.9).
    threshold, normalize : bool
        Mesmer's pre-processing switches (percentile clip; CLAHE).
    kernel_size : int
        CLAHE kernel at the model's 0.5 µm/px (128).
    postprocess : mapping, optional
        Overrides of the deep-watershed parameters of the chosen compartment (Mesmer defaults:
        whole-cell ``maxima_threshold=0.075``, nuclear ``0.1``; ``interior_threshold=0.2``,
        ``interior_smooth=2``, ``radius=2``, ``small_objects_threshold=15``,
        ``fill_holes_threshold=15``).
    model_batch_size : int
        Model patches (256 x 256) per forward pass (named apart from the engine's
        ``batch_size``, which counts tile windows per task).
    max_cell_diameter_um, context_um : float
        The halo is their sum: the largest cell plus one CLAHE kernel (64 µm) of context.
    device : str, optional
        ``None`` (first GPU), ``"cuda"``, ``"cuda:N"`` or ``"cpu"``.
    allow_cpu : bool, optional
        When no GPU is visible in the worker: ``False`` is a clear error, ``True`` runs on the
        CPU; ``None`` (default) defers to the tile engine, which only schedules a GPU backend on
        CPU workers when the user passed ``allow_cpu=True`` (``--allow-cpu``); it then runs on
        the CPU with a warning in the worker's log.
    model_mpp : float
        The model's pixel size (0.5 µm for Mesmer).

    Examples
    --------
    >>> backend = MesmerBackend(model_path="~/.deepcell/models/MultiplexSegmentation",
    ...                         nuclear=["DNA1", "DNA2"], membrane=["CD45", "E-cadherin"])
    ... # doctest: +SKIP
    """

    name: ClassVar[str] = "mesmer"
    requires_gpu: ClassVar[bool] = True
    default_tile_size: ClassVar[int] = 2048
    streams_batches: ClassVar[bool] = True

    def __init__(
        self,
        *,
        model_path: str | os.PathLike[str] | None = None,
        compartment: str = "whole-cell",
        nuclear: Sequence[str] | str | None = None,
        membrane: Sequence[str] | str | None = None,
        panel: Any = None,
        combine: str = "mean",
        clip: Sequence[float] = DEFAULT_CLIP,
        hot_pixel_threshold: float | None = None,
        percentile: float = 99.9,
        threshold: bool = True,
        normalize: bool = True,
        kernel_size: int = 128,
        postprocess: Mapping[str, Any] | None = None,
        model_batch_size: int = 16,
        max_cell_diameter_um: float = 30.0,
        context_um: float = 64.0,
        device: str | None = None,
        allow_cpu: bool | None = None,
        model_mpp: float = MODEL_MPP,
    ) -> None:
        if compartment not in _COMPARTMENTS:
            raise ParameterError(
                f"`compartment` must be one of {list(_COMPARTMENTS)}, got {compartment!r}"
            )
        if combine not in ("mean", "sum"):
            raise ParameterError(f"`combine` must be 'mean' or 'sum', got {combine!r}")
        if not 0.0 < percentile <= 100.0:
            raise ParameterError(f"`percentile` must lie in (0, 100], got {percentile}")
        if int(kernel_size) < 2:
            raise ParameterError(f"`kernel_size` must be >= 2 pixels, got {kernel_size}")
        if int(model_batch_size) < 1:
            raise ParameterError(f"`model_batch_size` must be >= 1, got {model_batch_size}")
        if not (max_cell_diameter_um > 0 and context_um >= 0 and model_mpp > 0):
            raise ParameterError(
                "`max_cell_diameter_um` and `model_mpp` must be > 0 and `context_um` >= 0, got "
                f"{max_cell_diameter_um}, {context_um}, {model_mpp}"
            )
        try:
            self.postprocess = compartment_kwargs(compartment, postprocess)
        except KeyError as exc:
            raise ParameterError(
                f"unknown Mesmer post-processing parameter {exc.args[0]!r}; known: "
                f"{sorted(compartment_kwargs(compartment, None))} + label_erosion, pixel_expansion"
            ) from None
        validate_device(device, allow_cpu=allow_cpu, backend=self.name)
        self.model_path = self._resolve_model_path(model_path)
        self.compartment = compartment
        self.nuclear = None if nuclear is None else ((nuclear,) if isinstance(nuclear, str) else tuple(nuclear))
        self.membrane = None if membrane is None else ((membrane,) if isinstance(membrane, str) else tuple(membrane))
        self.panel = None if panel is None else panel_records(panel, "deepcell")
        self.combine = combine
        self.clip = (float(clip[0]), float(clip[1]))
        self.hot_pixel_threshold = None if hot_pixel_threshold is None else float(hot_pixel_threshold)
        self.percentile = float(percentile)
        self.threshold = bool(threshold)
        self.normalize = bool(normalize)
        self.kernel_size = int(kernel_size)
        self.model_batch_size = int(model_batch_size)
        self.max_cell_diameter_um = float(max_cell_diameter_um)
        self.context_um = float(context_um)
        self.device = device
        self.allow_cpu = None if allow_cpu is None else bool(allow_cpu)
        self.model_mpp = float(model_mpp)

    # -- parameters -----------------------------------------------------------------------

    @staticmethod
    def _resolve_model_path(model_path: str | os.PathLike[str] | None) -> str:
        raw = model_path if model_path is not None else os.environ.get(MODEL_ENV_VAR)
        if raw is None or str(raw).strip() == "":
            raise ModelNotFoundError(f"the 'mesmer' backend needs its model weights: {_HOW_TO_GET}")
        p = Path(os.path.expanduser(str(raw))).resolve()
        if not p.exists():
            source = "`model_path`" if model_path is not None else MODEL_ENV_VAR
            raise ModelNotFoundError(f"{source} {str(p)!r} does not exist; {_HOW_TO_GET}")
        if not (p / "saved_model.pb").is_file():
            raise ModelNotFoundError(
                f"{str(p)!r} is not a TensorFlow SavedModel directory (no saved_model.pb); "
                f"{_HOW_TO_GET}"
            )
        return str(p)

    def params(self) -> dict[str, Any]:
        return {
            "model_path": self.model_path,
            "compartment": self.compartment,
            "nuclear": None if self.nuclear is None else list(self.nuclear),
            "membrane": None if self.membrane is None else list(self.membrane),
            "panel": self.panel,
            "combine": self.combine,
            "clip": list(self.clip),
            "hot_pixel_threshold": self.hot_pixel_threshold,
            "percentile": self.percentile,
            "threshold": self.threshold,
            "normalize": self.normalize,
            "kernel_size": self.kernel_size,
            "postprocess": dict(self.postprocess),
            "model_batch_size": self.model_batch_size,
            "max_cell_diameter_um": self.max_cell_diameter_um,
            "context_um": self.context_um,
            "device": self.device,
            "allow_cpu": self.allow_cpu,
            "model_mpp": self.model_mpp,
        }

    def _roles(self, available: Sequence[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
        roles = resolve_channel_roles(
            available,
            nuclear=self.nuclear,
            membrane=self.membrane,
            panel=self.panel,
            column="deepcell",
        )
        return roles.nuclear, roles.membrane

    def channels(self, available: Sequence[str]) -> tuple[str, ...]:
        nuc, mem = self._roles(available)
        return tuple(dict.fromkeys(nuc + mem))

    def halo_um(self) -> float:
        return self.max_cell_diameter_um + self.context_um

    # -- the three steps -------------------------------------------------------------------

    def prepare(
        self,
        image: NDArray[Any],
        *,
        pixel_size_um: float,
        stats: ChannelStatistics,
    ) -> NDArray[np.float32]:
        """``(C, Y, X)`` raw inputs -> ``(2, Y, X)`` (nuclear, membrane) planes in ``[0, 1]``."""
        nuc, mem = self._roles(stats.names)
        return prepare_groups(
            image,
            self.channels(stats.names),
            [nuc, mem],
            stats=stats,
            pixel_size_um=pixel_size_um,
            clip=self.clip,
            combine=self.combine,
            hot_pixel_threshold=self.hot_pixel_threshold,
        )

    def fit(self, histograms: NDArray[np.int64], edges: NDArray[np.float64]) -> dict[str, float]:
        """Mesmer's percentile clip of each prepared plane, over the whole slide.

        Returns ``{"clip_nuclear": v, "clip_membrane": v}``; ``0.0`` marks a blank plane.
        """
        hist = np.asarray(histograms)
        edg = np.asarray(edges, dtype=np.float64)
        if hist.ndim != 2 or hist.shape[0] != 2:
            raise ParameterError(
                f"`histograms` must be (2, B) for the (nuclear, membrane) planes, got {hist.shape}"
            )
        out: dict[str, float] = {}
        for k, role in enumerate(("nuclear", "membrane")):
            e = edg[k] if edg.ndim == 2 else edg
            value = percentile_nonzero_from_histogram(hist[k], e, self.percentile)
            out[f"clip_{role}"] = 0.0 if math.isnan(value) else float(value)
        return out

    def segment(
        self,
        prepared: NDArray[np.float32],
        *,
        pixel_size_um: float,
        fitted: Mapping[str, float],
    ) -> NDArray[np.uint32]:
        """``(2, Y, X)`` prepared planes -> ``(Y, X)`` ``uint32`` labels, ``0`` = background."""
        return self.segment_batch([prepared], pixel_size_um=pixel_size_um, fitted=fitted)[0]

    def segment_batch(
        self,
        prepared: Iterable[NDArray[np.float32]],
        *,
        pixel_size_um: float,
        fitted: Mapping[str, float],
    ) -> list[NDArray[np.uint32]]:
        """Several windows at once: their model patches share forward passes.

        The windows go through a three-stage pipeline so that the model is not kept waiting
        for the CPU: a helper thread takes window ``k + 1`` from ``prepared`` (so a lazy
        iterable is read there) and resamples and normalises it (CLAHE) while the patches of
        window ``k`` are in the model, keeping at most :data:`PREFETCH_WINDOWS` windows ready;
        each window is blended and deep-watershedded in a pool of
        :data:`POSTPROCESS_THREADS` threads as soon as its last patch has left the model. The
        forward passes see exactly the batches a serial run would (consecutive
        ``model_batch_size`` patches of all non-blank windows in order), so the labels do not
        depend on the pipelining. The model is loaded (once per process) only when a window is
        not blank.

        Parameters
        ----------
        prepared : iterable of (2, Y, X) ndarray of float32
            Prepared windows (sizes may differ); a generator is consumed in the helper thread,
            one window ahead of the model.
        pixel_size_um : float
            The slide's pixel size (Mesmer's ``image_mpp``).
        fitted : mapping
            The result of :meth:`fit` (``clip_nuclear``, ``clip_membrane``).

        Returns
        -------
        list of (Y, X) ndarray of uint32
        """
        if not (isinstance(pixel_size_um, (int, float, np.floating)) and pixel_size_um > 0):
            raise ParameterError(f"`pixel_size_um` must be a positive number, got {pixel_size_um!r}")
        clips = self._clips(fitted)
        source = iter(enumerate(prepared))
        results: dict[int, NDArray[np.uint32]] = {}
        batch = self.model_batch_size
        model: _LoadedMesmer | None = None
        with (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="mesmer-prepare") as prep,
            ThreadPoolExecutor(max_workers=POSTPROCESS_THREADS, thread_name_prefix="mesmer-post") as post,
        ):
            # The helper thread takes the windows from ``prepared`` one by one (a lazy iterable
            # is read there too) and keeps up to PREFETCH_WINDOWS of them ready.
            ahead: deque[Future[_Window | None]] = deque()
            exhausted = False

            def prefetch() -> None:
                while not exhausted and len(ahead) < PREFETCH_WINDOWS:
                    ahead.append(prep.submit(self._next_window, source, pixel_size_um, clips))

            # Patches waiting for the model: (window, first patch, patches); per window the
            # kept maps (inner distance, interior), its layout and how many patches are still out.
            queue: deque[tuple[int, int, NDArray[np.float32]]] = deque()
            queued = 0
            kept: dict[int, NDArray[np.float32]] = {}
            layouts: dict[int, PatchLayout] = {}
            shapes: dict[int, tuple[int, int]] = {}
            missing: dict[int, int] = {}
            finished: dict[int, Future[NDArray[np.uint32]]] = {}
            prefetch()
            while True:
                while queued < batch and not exhausted:
                    window = ahead.popleft().result()
                    if window is None:
                        exhausted = True
                        break
                    prefetch()  # the next window is prepared while this one is in the model
                    i, shape, x = window
                    if x is None:
                        # A blank or constant window (slide background) holds no cells.
                        results[i] = np.zeros(shape, dtype=np.uint32)
                        continue
                    if model is None:
                        model = self._model()
                    patches, layout = cut_patches(x, patch=model.patch)
                    queue.append((i, 0, patches))
                    queued += patches.shape[0]
                    kept[i] = np.empty(patches.shape[:3] + (2,), dtype=np.float32)
                    layouts[i], shapes[i], missing[i] = layout, shape, patches.shape[0]
                if queued == 0:
                    break
                assert model is not None
                pieces: list[tuple[int, int, NDArray[np.float32]]] = []
                want = min(batch, queued)
                while want:
                    i, first, patches = queue.popleft()
                    take = min(want, patches.shape[0])
                    pieces.append((i, first, patches[:take]))
                    if take < patches.shape[0]:
                        queue.appendleft((i, first + take, patches[take:]))
                    want -= take
                    queued -= take
                heads = model(np.concatenate([p for _, _, p in pieces], axis=0))
                if len(heads) != 4:
                    raise BackendError(f"Mesmer model returned {len(heads)} heads, expected 4")
                maps = self._select(heads)
                row = 0
                for i, first, p in pieces:
                    n = p.shape[0]
                    kept[i][first : first + n] = maps[row : row + n]
                    row += n
                    missing[i] -= n
                    if missing[i] == 0:
                        finished[i] = post.submit(self._finish, kept.pop(i), layouts.pop(i), shapes[i])
            for i, done in finished.items():
                results[i] = done.result()
        return [results[i] for i in range(len(results))]

    def _select(self, heads: list[NDArray[np.float32]]) -> NDArray[np.float32]:
        """``(N, P, P, 2)``: inner distance and interior probability of the compartment."""
        if self.compartment == "whole-cell":
            inner, pixelwise = heads[0], heads[1]
        else:
            inner, pixelwise = heads[2], heads[3]
        # DeepCell's format_output_mesmer: channel 1 of the pixelwise head is the interior.
        interior = pixelwise[..., 1] if pixelwise.shape[-1] > 1 else pixelwise[..., 0]
        return np.stack([inner[..., 0], interior], axis=-1)

    def _finish(
        self, patches: NDArray[np.float32], layout: PatchLayout, shape: tuple[int, int]
    ) -> NDArray[np.uint32]:
        """Blend one window's patch predictions, deep-watershed them, resample to the slide."""
        maps = assemble_patches(patches, layout)
        labels = deep_watershed(maps[..., 0], maps[..., 1], **self.postprocess)
        return resize_labels(labels, shape)

    # -- internals -------------------------------------------------------------------------

    def _clips(self, fitted: Mapping[str, float]) -> tuple[float, float]:
        if not self.threshold:
            return (1.0, 1.0)
        try:
            return float(fitted["clip_nuclear"]), float(fitted["clip_membrane"])
        except KeyError as exc:
            raise ParameterError(
                f"`fitted` lacks {exc.args[0]!r}: the engine must pass the result of "
                "MesmerBackend.fit on the slide histograms of the prepared planes"
            ) from None

    def _checked(self, prepared: NDArray[np.float32], *, index: int) -> NDArray[np.float32]:
        arr = np.asarray(prepared)
        if arr.ndim != 3 or arr.shape[0] != 2:
            raise ParameterError(
                f"prepared window {index} must be (2, Y, X) (nuclear, membrane), got {arr.shape}"
            )
        return arr

    def _next_window(
        self,
        source: Iterator[tuple[int, NDArray[np.float32]]],
        pixel_size_um: float,
        clips: tuple[float, float],
    ) -> _Window | None:
        """The next window of ``source``, model-ready; ``None`` when there is none left."""
        item = next(source, None)
        if item is None:
            return None
        index, prepared = item
        arr = self._checked(prepared, index=index)
        shape = (int(arr.shape[1]), int(arr.shape[2]))
        if _is_blank(arr):
            return index, shape, None
        return index, shape, self._preprocess(arr, pixel_size_um=pixel_size_um, clips=clips)

    def _preprocess(
        self,
        prepared: NDArray[np.float32],
        *,
        pixel_size_um: float,
        clips: tuple[float, float],
    ) -> NDArray[np.float32]:
        """Model-ready ``(Y', X', 2)`` window at ``model_mpp`` from a ``(2, Y, X)`` window."""
        arr = np.asarray(prepared)
        scale = pixel_size_um / self.model_mpp
        shape = (max(1, int(arr.shape[1] * scale)), max(1, int(arr.shape[2] * scale)))
        x = resize_image(np.moveaxis(arr.astype(np.float32, copy=False), 0, -1), shape)
        x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
        for k in range(2):
            c = clips[k]
            if c <= 0:
                x[..., k] = 0.0  # a blank slide channel stays blank (the reference's rule)
                continue
            plane = np.minimum(x[..., k], np.float32(c)) / np.float32(c)
            if np.ptp(plane) == 0:
                # DeepCell's histogram_normalization zeroes a constant channel.
                x[..., k] = 0.0
                continue
            if self.normalize:
                plane = histogram_normalization(plane, kernel_size=self.kernel_size)
            x[..., k] = plane
        return x

    def _model(self) -> _LoadedMesmer:
        tf = _import_tensorflow()
        gpu = bool(tf.config.list_physical_devices("GPU"))
        device = resolve_device(self.device, gpu_available=gpu, allow_cpu=self.allow_cpu,
                                backend=self.name)
        path = self.model_path
        if not Path(path).exists():
            raise ModelNotFoundError(
                f"Mesmer model {path!r} does not exist on this worker; {_HOW_TO_GET}"
            )
        return cached_model(("mesmer", path, device), lambda: load_mesmer_model(path, device=device))


def _is_blank(window: NDArray[np.float32]) -> bool:
    """Whether a ``(2, Y, X)`` window is empty or constant in both planes (no cells)."""
    finite = np.nan_to_num(window, nan=0.0, posinf=0.0, neginf=0.0)
    return finite.size == 0 or all(np.ptp(finite[k]) == 0 for k in range(finite.shape[0]))
