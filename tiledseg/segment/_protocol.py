"""The segmentation backend protocol: one tile in, labels out.

A backend is a small object, built from its parameters, that the tile engine calls in three
steps. Splitting the work this way is what lets every tile see the same slide-level numbers:

1. ``prepare(image, ...)`` turns the raw channels of one window into the planes the algorithm
   works on (normalised with *slide-level* percentiles, combined, filtered, smoothed). Prepared
   planes are ``float32`` and, for intensity planes, lie in ``[0, 1]``.
2. ``fit(histograms, edges)`` is called once per slide with the histogram of every prepared plane
   over the whole slide and returns slide-level parameters (thresholds and the like).
3. ``segment(prepared, ...)`` labels one window with those parameters: ``uint32``, ``0`` =
   background, labels need not be consecutive.

Backends never see dask or zarr; the engine in :mod:`tiledseg.cluster` reads windows, computes
statistics, batches tiles and stitches.

Input naming. :meth:`Backend.channels` returns the names of the inputs to read, in the order
``prepare`` receives them:

* ``"DNA1"`` -- a channel of the slide, by its name;
* ``"labels:nuclei"`` -- an existing label image of the slide (``labels/nuclei``), read as ``uint32``;
* ``"probabilities:0"`` -- channel ``0`` (a name or an index) of an extra image handed to the engine
  under the key ``probabilities``.

The array handed to ``prepare`` has the common dtype of the requested inputs
(``numpy.result_type``), so label planes stay exact.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

__all__ = ["PREPARED_BINS", "Backend", "BaseBackend", "ChannelStatistics", "histogram_percentile"]

#: Number of histogram bins the engine uses for prepared planes over ``[0, 1]`` (see ``fit``).
PREPARED_BINS = 1024


def histogram_percentile(counts: NDArray[Any], edges: NDArray[Any], q: float) -> float:
    """The ``q``-th percentile (0--100) of a histogram, values taken as uniform inside a bin.

    Parameters
    ----------
    counts : (B,) ndarray
        Counts per bin.
    edges : (B + 1,) ndarray
        Increasing bin edges.
    q : float
        Percentile in ``[0, 100]``.

    Returns
    -------
    float
        The interpolated percentile; ``nan`` for an empty histogram.
    """
    counts = np.asarray(counts, dtype=np.float64)
    total = float(counts.sum())
    if total <= 0:
        return float("nan")
    cum = np.cumsum(counts)
    target = q / 100.0 * total
    b = min(int(np.searchsorted(cum, target, side="left")), counts.size - 1)
    before = float(cum[b - 1]) if b > 0 else 0.0
    inside = float(counts[b])
    frac = 0.0 if inside == 0 else (target - before) / inside
    return float(edges[b] + frac * (edges[b + 1] - edges[b]))


@dataclass(frozen=True)
class ChannelStatistics:
    """Slide-level histograms of the raw input channels, computed once before any tile runs.

    Parameters
    ----------
    names : tuple of str
        Input names (see the module docstring), one per row of ``counts``.
    edges : (C, B + 1) ndarray of float64
        Bin edges per channel, increasing.
    counts : (C, B) ndarray of int64
        Pixel counts per bin, NaN pixels excluded.
    minimum, maximum : (C,) ndarray of float64
        Exact extremes of each channel.
    n_pixels : int
        Pixels per channel that entered the histograms.
    """

    names: tuple[str, ...]
    edges: NDArray[np.float64]
    counts: NDArray[np.int64]
    minimum: NDArray[np.float64]
    maximum: NDArray[np.float64]
    n_pixels: int
    extra: Mapping[str, Any] = field(default_factory=dict)

    def index(self, name: str) -> int:
        """Row of ``name``; raises ``KeyError`` naming the known inputs."""
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(f"no statistics for input {name!r}; known: {list(self.names)}") from None

    def percentile(self, name: str, q: float) -> float:
        """The ``q``-th percentile (0--100) of input ``name``, interpolated inside its bin."""
        if not 0.0 <= q <= 100.0:
            raise ValueError(f"`q` must lie in [0, 100], got {q}")
        i = self.index(name)
        if int(self.counts[i].sum()) == 0:
            return float("nan")
        if q <= 0.0:
            return float(self.minimum[i])
        if q >= 100.0:
            return float(self.maximum[i])
        value = histogram_percentile(self.counts[i], self.edges[i], q)
        return float(np.clip(value, self.minimum[i], self.maximum[i]))

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form, stored in the output metadata so a run can be reproduced.

        Evenly spaced edges (``numpy.linspace``, as every histogram of the engine has) are stored
        as ``{"first": [...], "last": [...], "bins": B}``, which :meth:`from_dict` turns back
        into the same float64 values; other edges are stored in full.
        """
        return {
            "names": list(self.names),
            "edges": _edges_to_json(self.edges),
            "counts": self.counts.tolist(),
            "minimum": self.minimum.tolist(),
            "maximum": self.maximum.tolist(),
            "n_pixels": int(self.n_pixels),
            "extra": dict(self.extra),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ChannelStatistics:
        """Inverse of :meth:`to_dict`."""
        return cls(
            names=tuple(data["names"]),
            edges=_edges_from_json(data["edges"]),
            counts=np.asarray(data["counts"], dtype=np.int64),
            minimum=np.asarray(data["minimum"], dtype=np.float64),
            maximum=np.asarray(data["maximum"], dtype=np.float64),
            n_pixels=int(data["n_pixels"]),
            extra=dict(data.get("extra", {})),
        )


def _edges_to_json(edges: NDArray[np.float64]) -> Any:
    """``(C, B + 1)`` edges as JSON: three numbers per channel when they are a ``linspace``."""
    edges = np.asarray(edges, dtype=np.float64)
    if edges.ndim == 2 and edges.shape[1] >= 2:
        first, last = edges[:, 0], edges[:, -1]
        even = np.linspace(first, last, edges.shape[1], axis=1)
        if np.array_equal(even, edges):
            return {"first": first.tolist(), "last": last.tolist(), "bins": edges.shape[1] - 1}
    return edges.tolist()


def _edges_from_json(value: Any) -> NDArray[np.float64]:
    """Inverse of :func:`_edges_to_json` (also reads edges stored in full)."""
    if isinstance(value, Mapping):
        first = np.asarray(value["first"], dtype=np.float64)
        last = np.asarray(value["last"], dtype=np.float64)
        even: NDArray[np.float64] = np.linspace(first, last, int(value["bins"]) + 1, axis=1)
        return even.reshape(first.size, int(value["bins"]) + 1)
    return np.asarray(value, dtype=np.float64)


@runtime_checkable
class Backend(Protocol):
    """What the tile engine needs from a segmentation backend.

    Attributes
    ----------
    name : str
        Registry name; equals the module name and the entry-point name.
    requires_gpu : bool
        True for deep-learning backends: their tiles run only on workers with a ``GPU`` resource.
    default_tile_size : int
        Core tile edge in pixels that suits the backend (cache-sized on CPU, batch-sized on GPU).
    """

    name: ClassVar[str]
    requires_gpu: ClassVar[bool]
    default_tile_size: ClassVar[int]

    def params(self) -> dict[str, Any]:
        """The backend's parameters, JSON-serialisable (stored with the result)."""
        ...

    def channels(self, available: Sequence[str]) -> tuple[str, ...]:
        """Names of the inputs to read, in the order :meth:`prepare` expects them.

        ``available`` lists the slide's channel names. Raise
        :class:`~tiledseg.errors.ChannelNotFoundError` naming a missing channel.
        """
        ...

    def halo_um(self) -> float:
        """Context in µm each side of a tile: largest cell diameter plus algorithmic context."""
        ...

    def prepare(
        self,
        image: NDArray[Any],
        *,
        pixel_size_um: float,
        stats: ChannelStatistics,
    ) -> NDArray[np.float32]:
        """``(C, Y, X)`` raw inputs (order of :meth:`channels`) -> ``(K, Y, X)`` prepared planes."""
        ...

    def fit(
        self, histograms: NDArray[np.int64], edges: NDArray[np.float64]
    ) -> dict[str, float]:
        """Slide-level parameters from ``(K, B)`` histograms of the prepared planes (``B + 1`` edges)."""
        ...

    def segment(
        self,
        prepared: NDArray[np.float32],
        *,
        pixel_size_um: float,
        fitted: Mapping[str, float],
    ) -> NDArray[np.uint32]:
        """``(K, Y, X)`` prepared planes -> ``(Y, X)`` ``uint32`` labels, ``0`` = background."""
        ...

    def segment_batch(
        self,
        prepared: Sequence[NDArray[np.float32]],
        *,
        pixel_size_um: float,
        fitted: Mapping[str, float],
    ) -> list[NDArray[np.uint32]]:
        """Several windows at once (GPU backends batch them); same result as one by one."""
        ...


class BaseBackend:
    """Convenience base: defaults for everything but ``channels``, ``halo_um`` and ``segment``.

    The default :meth:`prepare` clips every input to its slide-level ``[1, 99.9]`` percentiles and
    rescales it to ``[0, 1]``; the default :meth:`fit` needs no slide-level parameters; the default
    :meth:`segment_batch` loops over :meth:`segment`.
    """

    name: ClassVar[str] = ""
    requires_gpu: ClassVar[bool] = False
    default_tile_size: ClassVar[int] = 1024
    #: ``segment_batch`` accepts a lazy iterable of prepared windows (the engine then hands it a
    #: generator that reads and prepares each window only when the backend asks for it).
    streams_batches: ClassVar[bool] = False

    def params(self) -> dict[str, Any]:
        return {}

    def channels(self, available: Sequence[str]) -> tuple[str, ...]:
        raise NotImplementedError(f"{type(self).__name__} must define `channels()`")

    def halo_um(self) -> float:
        raise NotImplementedError(f"{type(self).__name__} must define `halo_um()`")

    def segment(
        self,
        prepared: NDArray[np.float32],
        *,
        pixel_size_um: float,
        fitted: Mapping[str, float],
    ) -> NDArray[np.uint32]:
        raise NotImplementedError(f"{type(self).__name__} must define `segment()`")

    def prepare(
        self,
        image: NDArray[Any],
        *,
        pixel_size_um: float,
        stats: ChannelStatistics,
    ) -> NDArray[np.float32]:
        names = self.channels(stats.names)
        out = np.empty(image.shape, dtype=np.float32)
        for k, name in enumerate(names):
            lo = stats.percentile(name, 1.0)
            hi = stats.percentile(name, 99.9)
            scale = 1.0 / (hi - lo) if hi > lo else 0.0
            np.clip((image[k].astype(np.float32) - lo) * scale, 0.0, 1.0, out=out[k])
        return out

    def fit(
        self, histograms: NDArray[np.int64], edges: NDArray[np.float64]
    ) -> dict[str, float]:
        return {}

    def segment_batch(
        self,
        prepared: Sequence[NDArray[np.float32]],
        *,
        pixel_size_um: float,
        fitted: Mapping[str, float],
    ) -> list[NDArray[np.uint32]]:
        return [
            self.segment(p, pixel_size_um=pixel_size_um, fitted=fitted)
            for p in prepared
        ]
