"""``cellpose``: Cellpose 3 (``cyto3``, ``nuclei``, custom models) and Cellpose 4 (``cpsam``).

Cellpose (Stringer et al., *Nat. Methods* 18, 2021; Pachitariu & Stringer, *Nat. Methods* 19,
2022; Cellpose 3: Stringer & Pachitariu, *Nat. Methods* 22, 2025; Cellpose-SAM, 2025) predicts,
per pixel, a cell probability and the spatial gradient of a diffusion ("flow") field whose sinks
are cell centres; pixels are moved along the flows and grouped by where they end up, and masks
whose flows disagree with the re-computed ones (``flow_threshold``) are dropped.

Per window the backend

1. ``prepare``: builds two planes from the panel's ``cellpose`` column (or names):
   ``(cytoplasm/membrane, nuclear)``, each channel normalised with *slide-level* percentiles and
   the group combined (:mod:`tiledseg.segment._prepare`);
2. ``fit``: takes the slide's 1st and 99th percentiles of each prepared plane (Cellpose's own
   per-image normalisation, computed once for the slide);
3. ``segment``: rescales the planes with those slide values and calls
   ``CellposeModel.eval(..., channels=[1, 2], normalize=False, diameter=d_px)``: channel 1 (the
   first plane) is what Cellpose segments, channel 2 the optional nuclear channel, exactly the
   order Cellpose documents for a stacked image. The diameter is given in µm and converted with
   the slide's pixel size. ``normalize=False`` is essential: Cellpose would otherwise normalise
   every tile by its own percentiles and tiles would disagree.

For a nuclear model (``model="nuclei"`` or ``compartment="nuclear"``) the nuclear plane alone is
segmented (``channels=[1, 0]``). With Cellpose 4 (``cpsam``), which takes up to three channels
in any order, the same two planes are passed channels-last without a ``channels`` argument.

Models: a built-in name (Cellpose downloads it into its own cache when the machine is online) or
a local model file, whose existence is checked *before* Cellpose sees it -- Cellpose itself only
warns about a missing file and silently downloads its default model instead. The environment
variable ``TILEDSEG_CELLPOSE_MODEL`` sets the default model. torch and cellpose are imported only
when a tile is segmented; each worker process loads the model once
(:mod:`tiledseg.segment._dl_cache`).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
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
from tiledseg.segment._prepare import DEFAULT_CLIP, prepare_groups, resolve_channel_roles
from tiledseg.segment._protocol import BaseBackend, ChannelStatistics, histogram_percentile

__all__ = ["BUILTIN_MODELS", "MODEL_ENV_VAR", "CellposeBackend", "load_cellpose_model"]

logger = logging.getLogger(__name__)

#: Environment variable naming the default Cellpose model (a built-in name or a file).
MODEL_ENV_VAR = "TILEDSEG_CELLPOSE_MODEL"

#: Built-in model names tiledseg accepts without a file (Cellpose downloads them itself).
BUILTIN_MODELS = (
    "cyto3", "cyto2", "cyto", "nuclei", "tissuenet_cp3", "livecell_cp3", "cyto2_cp3", "cpsam",
)

_COMPARTMENTS = ("whole-cell", "nuclear")

#: Threads computing Cellpose 3 mask dynamics while the network runs the next windows.
POSTPROCESS_THREADS = postprocess_threads()


def _import_cellpose() -> tuple[Any, Any, int]:
    try:
        import torch
        from cellpose import models
    except ImportError as exc:
        raise MissingDependencyError(
            "the 'cellpose' backend needs Cellpose and PyTorch: pip install 'tiledseg[cellpose]' "
            f"({exc})"
        ) from exc
    from importlib.metadata import PackageNotFoundError, version

    try:
        major = int(version("cellpose").split(".")[0])
    except (PackageNotFoundError, ValueError):
        major = 3
    return torch, models, major


def _is_path_like(spec: str) -> bool:
    return (
        os.sep in spec
        or (os.altsep is not None and os.altsep in spec)
        or spec.startswith(("~", "."))
        or Path(spec).suffix != ""
    )


@dataclass
class _LoadedCellpose:
    """A ``CellposeModel`` and the facts ``segment`` needs about it."""

    model: Any
    major: int
    device: str
    diam_mean: float


def load_cellpose_model(spec: str, *, device: str) -> _LoadedCellpose:
    """Build a ``cellpose.models.CellposeModel`` for ``spec`` on ``device`` (no caching).

    Parameters
    ----------
    spec : str
        Built-in model name (``cyto3``, ``nuclei``, ``cpsam``, ...) or the path of a model file.
    device : str
        ``"cpu"`` or ``"cuda[:N]"``.

    Returns
    -------
    _LoadedCellpose

    Raises
    ------
    ModelNotFoundError
        A model file that does not exist (checked before Cellpose sees it).
    BackendError
        A built-in model that Cellpose cannot download (offline machine).
    """
    torch, models, major = _import_cellpose()
    is_file = spec not in BUILTIN_MODELS
    if is_file and not Path(spec).is_file():
        raise ModelNotFoundError(
            f"Cellpose model file {spec!r} does not exist on this worker; pass an existing file "
            f"or a built-in model name {list(BUILTIN_MODELS)} (see docs/models.md)"
        )
    if major >= 4 and not is_file and spec != "cpsam":
        # Cellpose 4 knows only 'cpsam': given another name it logs a warning and silently
        # segments with cpsam instead.
        raise ParameterError(
            f"model {spec!r} is a Cellpose 3 model, but Cellpose {major} is installed, which "
            "ships only 'cpsam' (and would silently use it instead): pass model='cpsam', or "
            "install Cellpose 3 (pip install 'cellpose>=3.1,<4') for this model"
        )
    dev = torch.device(device)
    gpu = device != "cpu"
    try:
        if major >= 4 or is_file:
            model = models.CellposeModel(gpu=gpu, pretrained_model=spec, device=dev)
        else:
            if spec == "cpsam":
                raise ParameterError(
                    "model 'cpsam' needs Cellpose >= 4 (installed: 3); pip install 'cellpose>=4'"
                )
            model = models.CellposeModel(gpu=gpu, model_type=spec, device=dev)
    except OSError as exc:  # the download of a built-in model failed (offline)
        raise BackendError(
            f"Cellpose could not load its built-in model {spec!r} ({exc}); on a machine without "
            "internet access download it elsewhere and pass the file as `model=` (docs/models.md)"
        ) from exc
    diam = float(np.asarray(getattr(model, "diam_mean", 30.0)).ravel()[0])
    logger.info("loaded Cellpose %d model %s on %s (diam_mean %.1f px)", major, spec, device, diam)
    if device == "cpu":
        logger.warning("Cellpose runs on the CPU of this worker (allow_cpu): expect slow tiles")
    return _LoadedCellpose(model=model, major=major, device=device, diam_mean=diam)


class CellposeBackend(BaseBackend):
    """Cellpose on GPU workers, one model per worker, batched over tiles of equal shape.

    Parameters
    ----------
    model : str, optional
        Built-in model name (``"cyto3"``, ``"nuclei"``, ``"cpsam"`` with Cellpose 4, ...) or a
        local model file; default: ``TILEDSEG_CELLPOSE_MODEL``, else ``"cyto3"``.
    diameter_um : float
        Typical cell diameter in µm (converted to pixels with the slide's pixel size).
    compartment : {"whole-cell", "nuclear"}
        ``"nuclear"`` segments the nuclear plane alone (implied by ``model="nuclei"``).
    nuclear, membrane : sequence of str, optional
        Channel names; default: the panel's ``cellpose`` column (1 = nuclear, 2 = membrane /
        cytoplasm), else a nuclear channel guessed by name.
    panel : DataFrame or sequence of mapping, optional
        steinbock panel rows.
    combine : {"mean", "sum"}
        How a group's normalised channels are combined.
    clip : (2,) sequence of float
        Slide-level percentiles for per-channel normalisation.
    hot_pixel_threshold : float, optional
        steinbock's hot-pixel filter margin (raw units).
    normalize_percentiles : (2,) sequence of float
        Slide-level percentiles of the prepared planes mapped to 0 and 1 before Cellpose
        (Cellpose's own default, 1 and 99, applied to the slide instead of each tile).
    flow_threshold, cellprob_threshold : float
        Cellpose's mask-quality thresholds (0.4, 0.0).
    min_area_um2 : float, optional
        Masks smaller than this are dropped (default: Cellpose's 15 pixels).
    model_batch_size : int
        Network tiles (224 x 224) per forward pass (Cellpose's ``batch_size``; named apart
        from the engine's ``batch_size``, which counts tile windows per task).
    halo_diameters : float
        Halo as a multiple of ``diameter_um`` (3: a cell twice the typical size plus one
        diameter of network context).
    device : str, optional
        ``None`` (first GPU), ``"cuda"``, ``"cuda:N"`` or ``"cpu"``.
    allow_cpu : bool, optional
        When no GPU is visible in the worker: ``False`` is a clear error, ``True`` runs on the
        CPU; ``None`` (default) defers to the tile engine, which only schedules a GPU backend on
        CPU workers when the user passed ``allow_cpu=True`` (``--allow-cpu``); it then runs on
        the CPU with a warning in the worker's log.
    """

    name: ClassVar[str] = "cellpose"
    requires_gpu: ClassVar[bool] = True
    default_tile_size: ClassVar[int] = 1024

    def __init__(
        self,
        *,
        model: str | os.PathLike[str] | None = None,
        diameter_um: float = 10.0,
        compartment: str = "whole-cell",
        nuclear: Sequence[str] | str | None = None,
        membrane: Sequence[str] | str | None = None,
        panel: Any = None,
        combine: str = "mean",
        clip: Sequence[float] = DEFAULT_CLIP,
        hot_pixel_threshold: float | None = None,
        normalize_percentiles: Sequence[float] = (1.0, 99.0),
        flow_threshold: float = 0.4,
        cellprob_threshold: float = 0.0,
        min_area_um2: float | None = None,
        model_batch_size: int = 8,
        halo_diameters: float = 3.0,
        device: str | None = None,
        allow_cpu: bool | None = None,
    ) -> None:
        if compartment not in _COMPARTMENTS:
            raise ParameterError(
                f"`compartment` must be one of {list(_COMPARTMENTS)}, got {compartment!r}"
            )
        if combine not in ("mean", "sum"):
            raise ParameterError(f"`combine` must be 'mean' or 'sum', got {combine!r}")
        if not (np.isfinite(diameter_um) and diameter_um > 0):
            raise ParameterError(f"`diameter_um` must be a positive number of µm, got {diameter_um!r}")
        lo, hi = (float(v) for v in normalize_percentiles)
        if not 0.0 <= lo < hi <= 100.0:
            raise ParameterError(
                f"`normalize_percentiles` must satisfy 0 <= low < high <= 100, got {normalize_percentiles!r}"
            )
        if min_area_um2 is not None and min_area_um2 < 0:
            raise ParameterError(f"`min_area_um2` must be >= 0, got {min_area_um2}")
        if int(model_batch_size) < 1:
            raise ParameterError(f"`model_batch_size` must be >= 1, got {model_batch_size}")
        if not halo_diameters > 0:
            raise ParameterError(f"`halo_diameters` must be > 0, got {halo_diameters}")
        validate_device(device, allow_cpu=allow_cpu, backend=self.name)
        self.model = self._resolve_model(model)
        if self.model == "nuclei":
            compartment = "nuclear"
        self.diameter_um = float(diameter_um)
        self.compartment = compartment
        self.nuclear = None if nuclear is None else ((nuclear,) if isinstance(nuclear, str) else tuple(nuclear))
        self.membrane = None if membrane is None else ((membrane,) if isinstance(membrane, str) else tuple(membrane))
        self.panel = None if panel is None else panel_records(panel, "cellpose")
        self.combine = combine
        self.clip = (float(clip[0]), float(clip[1]))
        self.hot_pixel_threshold = None if hot_pixel_threshold is None else float(hot_pixel_threshold)
        self.normalize_percentiles = (lo, hi)
        self.flow_threshold = float(flow_threshold)
        self.cellprob_threshold = float(cellprob_threshold)
        self.min_area_um2 = None if min_area_um2 is None else float(min_area_um2)
        self.model_batch_size = int(model_batch_size)
        self.halo_diameters = float(halo_diameters)
        self.device = device
        self.allow_cpu = None if allow_cpu is None else bool(allow_cpu)

    @staticmethod
    def _resolve_model(model: str | os.PathLike[str] | None) -> str:
        raw = model if model is not None else os.environ.get(MODEL_ENV_VAR, "cyto3")
        spec = str(raw).strip()
        if spec in BUILTIN_MODELS:
            return spec
        if not spec:
            raise ParameterError("`model` is empty; give a built-in name or a model file")
        p = Path(os.path.expanduser(spec))
        if p.is_file():
            return str(p.resolve())
        source = "`model`" if model is not None else MODEL_ENV_VAR
        if p.exists():
            raise ParameterError(f"{source} {spec!r} is a directory, not a Cellpose model file")
        kind = "file" if _is_path_like(spec) else "name"
        raise ParameterError(
            f"{source} {spec!r}: no such model {kind}. Give an existing Cellpose model file or a "
            f"built-in name {list(BUILTIN_MODELS)} (Cellpose downloads built-in models itself "
            "when online; see docs/models.md)"
        )

    def params(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "diameter_um": self.diameter_um,
            "compartment": self.compartment,
            "nuclear": None if self.nuclear is None else list(self.nuclear),
            "membrane": None if self.membrane is None else list(self.membrane),
            "panel": self.panel,
            "combine": self.combine,
            "clip": list(self.clip),
            "hot_pixel_threshold": self.hot_pixel_threshold,
            "normalize_percentiles": list(self.normalize_percentiles),
            "flow_threshold": self.flow_threshold,
            "cellprob_threshold": self.cellprob_threshold,
            "min_area_um2": self.min_area_um2,
            "model_batch_size": self.model_batch_size,
            "halo_diameters": self.halo_diameters,
            "device": self.device,
            "allow_cpu": self.allow_cpu,
        }

    def _roles(self, available: Sequence[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
        roles = resolve_channel_roles(
            available,
            nuclear=self.nuclear,
            membrane=() if self.compartment == "nuclear" else self.membrane,
            panel=self.panel,
            column="cellpose",
        )
        return roles.nuclear, roles.membrane

    def channels(self, available: Sequence[str]) -> tuple[str, ...]:
        nuc, mem = self._roles(available)
        return tuple(dict.fromkeys(mem + nuc))

    def halo_um(self) -> float:
        return self.halo_diameters * self.diameter_um

    def prepare(
        self,
        image: NDArray[Any],
        *,
        pixel_size_um: float,
        stats: ChannelStatistics,
    ) -> NDArray[np.float32]:
        """``(C, Y, X)`` raw inputs -> ``(2, Y, X)`` planes ``(membrane, nuclear)`` in ``[0, 1]``.

        The membrane plane is all zeros when no membrane channel is set (or for a nuclear model).
        """
        nuc, mem = self._roles(stats.names)
        return prepare_groups(
            image,
            self.channels(stats.names),
            [mem, nuc],
            stats=stats,
            pixel_size_um=pixel_size_um,
            clip=self.clip,
            combine=self.combine,
            hot_pixel_threshold=self.hot_pixel_threshold,
        )

    def fit(self, histograms: NDArray[np.int64], edges: NDArray[np.float64]) -> dict[str, float]:
        """Slide-level low/high values of each prepared plane (Cellpose's normalisation)."""
        hist = np.asarray(histograms, dtype=np.float64)
        edg = np.asarray(edges, dtype=np.float64)
        if hist.ndim != 2 or hist.shape[0] != 2:
            raise ParameterError(
                f"`histograms` must be (2, B) for the (membrane, nuclear) planes, got {hist.shape}"
            )
        out: dict[str, float] = {}
        for k, role in enumerate(("membrane", "nuclear")):
            e = edg[k] if edg.ndim == 2 else edg
            lo = _histogram_percentile(hist[k], e, self.normalize_percentiles[0])
            hi = _histogram_percentile(hist[k], e, self.normalize_percentiles[1])
            out[f"low_{role}"] = lo
            out[f"high_{role}"] = hi
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
        """Several windows; windows of equal shape share Cellpose's forward passes.

        With Cellpose 3 the network runs on the calling thread and the mask dynamics (flow
        following, the CPU half of Cellpose) of each window run in a small thread pool as soon as
        its flows are out, overlapping the network pass of the next windows. Same-shape windows
        are stacked exactly as Cellpose batches a stack's planes, so the masks do not depend on
        the pipelining. Cellpose 4 runs one ``eval`` per window.

        Parameters
        ----------
        prepared : iterable of (2, Y, X) ndarray of float32
            Prepared windows ``(membrane, nuclear)``.
        pixel_size_um : float
            The slide's pixel size; converts ``diameter_um`` to pixels.
        fitted : mapping
            The result of :meth:`fit`.

        Returns
        -------
        list of (Y, X) ndarray of uint32
        """
        if not (isinstance(pixel_size_um, (int, float, np.floating)) and pixel_size_um > 0):
            raise ParameterError(f"`pixel_size_um` must be a positive number, got {pixel_size_um!r}")
        inputs = [self._cellpose_input(p, fitted, index=i) for i, p in enumerate(prepared)]
        results: list[NDArray[np.uint32] | None] = [None] * len(inputs)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, x in enumerate(inputs):
            if x.size == 0 or all(np.ptp(x[..., k]) == 0 for k in range(x.shape[-1])):
                # A blank or constant window (slide background) holds no cells: no model call.
                results[i] = np.zeros(x.shape[:2], dtype=np.uint32)
            else:
                groups.setdefault(x.shape, []).append(i)
        if not groups:
            return [r for r in results if r is not None]
        loaded = self._model()
        kwargs = self._eval_kwargs(loaded, pixel_size_um)
        if loaded.major >= 4:
            # Cellpose 4: one call per window (its eval batches the tiles of one image).
            for members in groups.values():
                for i in members:
                    masks = loaded.model.eval(inputs[i], channel_axis=2, **kwargs)[0]
                    results[i] = _as_labels(masks, inputs[i].shape[:2])
            return [r for r in results if r is not None]
        # Cellpose 3: the network runs on the calling thread; the mask dynamics of each window
        # run in a small thread pool while the network runs the next windows.
        with ThreadPoolExecutor(max_workers=POSTPROCESS_THREADS, thread_name_prefix="cellpose-masks") as pool:
            futures: dict[int, Future[NDArray[np.uint32]]] = {}
            for shape, members in groups.items():
                step = _images_per_pass(loaded, shape[:2], kwargs)
                for s in range(0, len(members), step):
                    chunk = members[s : s + step]
                    if len(chunk) == 1:
                        x, axes = inputs[chunk[0]], {"channel_axis": 2}
                    else:
                        # Same-shape windows as one stack: they share forward passes exactly as
                        # Cellpose batches the planes of a stack (``batch_size // tiles`` planes).
                        x, axes = np.stack([inputs[i] for i in chunk]), {"channel_axis": 3, "z_axis": 0}
                    flows = loaded.model.eval(x, compute_masks=False, **axes, **kwargs)[1]
                    flow = np.asarray(flows[1], dtype=np.float32).reshape((2, len(chunk)) + shape[:2])
                    prob = np.asarray(flows[2], dtype=np.float32).reshape((len(chunk),) + shape[:2])
                    for j, i in enumerate(chunk):
                        futures[i] = pool.submit(self._masks, loaded, flow[:, j], prob[j], kwargs)
            for i, future in futures.items():
                results[i] = future.result()
        return [r for r in results if r is not None]

    def _masks(
        self,
        loaded: _LoadedCellpose,
        flow: NDArray[np.float32],
        prob: NDArray[np.float32],
        kwargs: Mapping[str, Any],
    ) -> NDArray[np.uint32]:
        """One window's masks from its ``(2, Y, X)`` flows and ``(Y, X)`` cell probability.

        The same call, with the same arguments, as Cellpose 3's ``CellposeModel.eval`` makes
        per image after its network pass (``resample=True``: flows at the input's size).
        """
        from cellpose import dynamics

        rescale = loaded.model.diam_mean / kwargs["diameter"]
        masks = dynamics.resize_and_compute_masks(
            flow,
            prob,
            niter=1 / rescale * 200,
            cellprob_threshold=kwargs["cellprob_threshold"],
            flow_threshold=kwargs["flow_threshold"],
            interp=True,
            min_size=kwargs.get("min_size", 15),
            max_size_fraction=0.4,
            resize=None,
            device=loaded.model.device,
        )
        return _as_labels(masks, prob.shape)

    # -- internals -------------------------------------------------------------------------

    def _cellpose_input(
        self, prepared: NDArray[np.float32], fitted: Mapping[str, float], *, index: int
    ) -> NDArray[np.float32]:
        arr = np.asarray(prepared)
        if arr.ndim != 3 or arr.shape[0] != 2:
            raise ParameterError(
                f"prepared window {index} must be (2, Y, X) (membrane, nuclear), got {arr.shape}"
            )
        try:
            bounds = [
                (float(fitted[f"low_{r}"]), float(fitted[f"high_{r}"])) for r in ("membrane", "nuclear")
            ]
        except KeyError as exc:
            raise ParameterError(
                f"`fitted` lacks {exc.args[0]!r}: the engine must pass the result of "
                "CellposeBackend.fit on the slide histograms of the prepared planes"
            ) from None
        planes = []
        for k, (lo, hi) in enumerate(bounds):
            plane = np.nan_to_num(arr[k].astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
            if hi > lo:
                plane = (plane - np.float32(lo)) / np.float32(hi - lo)
            else:
                plane = np.zeros_like(plane)
            planes.append(plane)
        if self.compartment == "nuclear":
            # Nuclear model: the nuclear plane is what gets segmented (Cellpose channel 1).
            planes = [planes[1], np.zeros_like(planes[1])]
        out: NDArray[np.float32] = np.stack(planes, axis=-1).astype(np.float32)
        return out

    def _eval_kwargs(self, loaded: _LoadedCellpose, pixel_size_um: float) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "batch_size": self.model_batch_size,
            # A dict leaves Cellpose's module-level defaults untouched (a bool would mutate them).
            "normalize": {"normalize": False, "norm3D": False},
            "diameter": self.diameter_um / pixel_size_um,
            "flow_threshold": self.flow_threshold,
            "cellprob_threshold": self.cellprob_threshold,
        }
        if self.min_area_um2 is not None:
            kwargs["min_size"] = round(self.min_area_um2 / (pixel_size_um * pixel_size_um))
        if loaded.major < 4:
            kwargs["channels"] = [1, 0] if self.compartment == "nuclear" else [1, 2]
        return kwargs

    def _model(self) -> _LoadedCellpose:
        torch, _, _ = _import_cellpose()
        device = resolve_device(
            self.device,
            gpu_available=bool(torch.cuda.is_available()),
            allow_cpu=self.allow_cpu,
            backend=self.name,
        )
        spec = self.model
        if spec not in BUILTIN_MODELS and not Path(spec).is_file():
            raise ModelNotFoundError(
                f"Cellpose model file {spec!r} does not exist on this worker (see docs/models.md)"
            )
        return cached_model(("cellpose", spec, device), lambda: load_cellpose_model(spec, device=device))


def _images_per_pass(loaded: _LoadedCellpose, shape: tuple[int, ...], kwargs: Mapping[str, Any]) -> int:
    """Planes of a ``shape`` stack Cellpose 3 puts through the network together.

    ``cellpose.core.run_net`` cuts each plane (rescaled to the model's diameter and padded) into
    ``ny * nx`` tiles of 224 x 224 and runs ``max(1, batch_size // (ny * nx))`` planes per pass;
    stacks of that many windows reproduce its forward batches exactly.
    """
    try:
        from cellpose.transforms import get_pad_yx
    except ImportError:  # pragma: no cover - a Cellpose 3 without it: one window per call
        return 1
    rescale = loaded.model.diam_mean / kwargs["diameter"]
    ly, lx = int(shape[0]), int(shape[1])
    if rescale != 1.0:
        ly, lx = int(ly * rescale), int(lx * rescale)
    ypad1, ypad2, xpad1, xpad2 = get_pad_yx(ly, lx)
    ly, lx = ly + ypad1 + ypad2, lx + xpad1 + xpad2
    bsize, overlap = 224, 0.1
    ny = 1 if ly <= bsize else int(np.ceil((1.0 + 2 * overlap) * ly / bsize))
    nx = 1 if lx <= bsize else int(np.ceil((1.0 + 2 * overlap) * lx / bsize))
    return max(1, int(kwargs["batch_size"]) // (ny * nx))


def _as_labels(masks: Any, shape: tuple[int, ...]) -> NDArray[np.uint32]:
    out = np.asarray(masks)
    if out.shape != tuple(shape):
        raise BackendError(f"Cellpose returned masks of shape {out.shape}, expected {tuple(shape)}")
    return out.astype(np.uint32)


def _histogram_percentile(counts: NDArray[np.float64], edges: NDArray[np.float64], q: float) -> float:
    value = histogram_percentile(counts, edges, q)
    return 0.0 if math.isnan(value) else value



