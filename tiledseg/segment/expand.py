"""``expand``: whole cells by growing nuclear labels a fixed distance (nuclear expansion).

The simplest whole-cell model, used where there is no usable membrane marker (steinbock's and
squidpy's "expansion" masks, MCMICRO's ring-based cytoplasm): every nucleus is grown by
``distance_um`` and each background pixel goes to the *nearest* nucleus, never to two cells --
exactly :func:`skimage.segmentation.expand_labels` (which resolves the nearest label with one
Euclidean feature transform, Maurer et al. 2003, as implemented by
:func:`scipy.ndimage.distance_transform_edt`). The number of cells never changes and every
nucleus stays inside its cell.

The nuclei come either from an existing label image of the slide (input ``labels:<name>``, read
as ``uint32``) or from another backend run in nucleus mode (by default ``watershed`` with
``compartment="nucleus"``).

Locality: a pixel's label depends on the nuclei within ``distance_um``; with the halo covering a
nucleus plus twice the distance, tiled and whole-image results agree exactly.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray
from skimage.segmentation import expand_labels

from tiledseg.errors import ParameterError, SlideFormatError
from tiledseg.segment._checks import check_nonnegative, check_positive
from tiledseg.segment._protocol import BaseBackend, ChannelStatistics

__all__ = ["ExpandBackend", "expand_nuclei"]

logger = logging.getLogger(__name__)

LABELS_PREFIX = "labels:"


def expand_nuclei(nuclei: NDArray[np.integer[Any]], *, distance_px: float) -> NDArray[np.uint32]:
    """Grow labels by ``distance_px`` pixels, each pixel to its nearest label (exclusive).

    Parameters
    ----------
    nuclei : (Y, X) ndarray of int
        Labels, 0 = background, not modified.
    distance_px : float
        Growth distance in pixels (Euclidean).

    Returns
    -------
    (Y, X) ndarray of uint32
        Same labels, grown; label count unchanged.

    Examples
    --------
    >>> import numpy as np
    >>> nuclei = np.zeros((1, 7), dtype=np.uint32); nuclei[0, 1] = 1; nuclei[0, 5] = 2
    >>> expand_nuclei(nuclei, distance_px=1.0)
    array([[1, 1, 1, 0, 2, 2, 2]], dtype=uint32)
    """
    labels = np.asarray(nuclei)
    if labels.ndim != 2:
        raise SlideFormatError(f"`nuclei` must be a (Y, X) label image, got shape {labels.shape}")
    if labels.dtype.kind not in "iub":
        raise SlideFormatError(f"`nuclei` must hold integer labels, got dtype {labels.dtype}")
    if labels.dtype.kind == "i" and labels.size and labels.min() < 0:
        raise SlideFormatError(f"`nuclei` must not hold negative labels (min {labels.min()})")
    if not labels.any() or distance_px <= 0:
        return labels.astype(np.uint32, copy=True)
    grown = expand_labels(labels.astype(np.uint32, copy=False), distance=float(distance_px))  # type: ignore[no-untyped-call]
    return np.asarray(grown, dtype=np.uint32)


class ExpandBackend(BaseBackend):
    """Nuclei grown by a fixed distance into cells, each pixel to its nearest nucleus.

    Parameters
    ----------
    distance_um : float
        Growth distance in µm (steinbock/squidpy use about 2--5 µm for IMC).
    labels : str, optional
        Name of an existing label image of the slide holding the nuclei (input
        ``labels:<name>``). When None, nuclei come from ``nuclear_backend``.
    nuclear_backend : str
        Backend that finds nuclei when ``labels`` is None (``"watershed"`` is run with
        ``compartment="nucleus"``).
    nuclear_params : mapping, optional
        Parameters of ``nuclear_backend`` (e.g. ``{"nuclear": ["DNA1"]}``).
    max_nucleus_diameter_um : float
        Largest nucleus expected; with ``distance_um`` it sets the halo.
    nuclear, membrane : sequence of str or str, optional
        Channel roles handed to ``nuclear_backend`` (ignored with ``labels``).

    Examples
    --------
    >>> backend = ExpandBackend(distance_um=3.0, labels="nuclei")
    >>> backend.channels(["DNA1", "CD45"])
    ('labels:nuclei',)
    """

    name: ClassVar[str] = "expand"
    requires_gpu: ClassVar[bool] = False
    default_tile_size: ClassVar[int] = 1024

    def __init__(
        self,
        *,
        distance_um: float = 4.0,
        labels: str | None = None,
        nuclear_backend: str = "watershed",
        nuclear_params: Mapping[str, Any] | None = None,
        max_nucleus_diameter_um: float = 15.0,
        nuclear: Sequence[str] | str | None = None,
        membrane: Sequence[str] | str | None = None,
    ) -> None:
        self.distance_um = check_nonnegative("distance_um", distance_um)
        self.max_nucleus_diameter_um = check_positive("max_nucleus_diameter_um", max_nucleus_diameter_um)
        if labels is not None:
            labels = str(labels)
            labels = labels.removeprefix(LABELS_PREFIX)
            if not labels:
                raise ParameterError("`labels` must name a label image of the slide, got ''")
            if nuclear_params:
                raise ParameterError(
                    "`labels` reads existing nuclei; `nuclear_params` "
                    f"{sorted(nuclear_params)} do not apply"
                )
        self.labels = labels
        self.nuclear_backend = str(nuclear_backend)
        # `nuclear` / `membrane` (which the engine fills from the panel) go to the nuclear
        # backend, so `get_backend("expand", nuclear=["DNA1"])` works like the other backends;
        # with `labels` they are not needed and ignored.
        params = dict(nuclear_params or {})
        for key, value in (("nuclear", nuclear), ("membrane", membrane)):
            if value is not None:
                params.setdefault(key, value)
        self.nuclear_params: dict[str, Any] = params
        self._inner: Any = None
        if self.labels is None:
            from tiledseg.segment._registry import get_backend

            inner_params = dict(params)
            if self.nuclear_backend == "watershed":
                inner_params.setdefault("compartment", "nucleus")
                inner_params.setdefault("max_cell_diameter_um", self.max_nucleus_diameter_um)
            try:
                self._inner = get_backend(self.nuclear_backend, **inner_params)
            except TypeError as exc:
                raise ParameterError(
                    f"bad parameters for the nuclear backend {self.nuclear_backend!r}: {exc}"
                ) from exc

    # -- protocol ------------------------------------------------------------------------------

    def params(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "distance_um": self.distance_um,
            "labels": self.labels,
            "nuclear_backend": self.nuclear_backend,
            "nuclear_params": dict(self.nuclear_params),
            "max_nucleus_diameter_um": self.max_nucleus_diameter_um,
        }
        if self._inner is not None:
            out["nuclear_params"] = self._inner.params()
        return out

    def channels(self, available: Sequence[str]) -> tuple[str, ...]:
        if self.labels is not None:
            return (LABELS_PREFIX + self.labels,)
        return tuple(self._inner.channels(available))

    def halo_um(self) -> float:
        nuclei_halo = self.max_nucleus_diameter_um if self._inner is None else float(self._inner.halo_um())
        return max(nuclei_halo, self.max_nucleus_diameter_um) + 2.0 * self.distance_um

    def prepare(
        self,
        image: NDArray[Any],
        *,
        pixel_size_um: float,
        stats: ChannelStatistics,
    ) -> NDArray[Any]:
        """Label input: the ``(1, Y, X)`` labels as ``uint32`` (exact); else the nuclear backend's."""
        if self._inner is not None:
            return self._inner.prepare(image, pixel_size_um=pixel_size_um, stats=stats)  # type: ignore[no-any-return]
        return _as_label_plane(image, name=LABELS_PREFIX + str(self.labels))

    def fit(self, histograms: NDArray[np.int64], edges: NDArray[np.float64]) -> dict[str, float]:
        if self._inner is not None:
            return dict(self._inner.fit(histograms, edges))
        return {}

    def segment(
        self,
        prepared: NDArray[Any],
        *,
        pixel_size_um: float,
        fitted: Mapping[str, float],
    ) -> NDArray[np.uint32]:
        pixel = check_positive("pixel_size_um", pixel_size_um)
        if self._inner is not None:
            nuclei = self._inner.segment(prepared, pixel_size_um=pixel, fitted=fitted)
        else:
            nuclei = _as_label_plane(prepared, name=LABELS_PREFIX + str(self.labels))[0]
        return expand_nuclei(nuclei, distance_px=self.distance_um / pixel)


def _as_label_plane(image: NDArray[Any], *, name: str) -> NDArray[np.uint32]:
    """``(1, Y, X)`` uint32 copy of a label input; integral, non-negative values only."""
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[0] != 1:
        raise SlideFormatError(f"input {name!r} must be one (Y, X) label plane, got shape {arr.shape}")
    if arr.dtype.kind == "f":
        finite = np.isfinite(arr)
        if not finite.all() or (arr < 0).any() or (arr != np.floor(arr)).any() or (arr > 2**32 - 1).any():
            raise SlideFormatError(
                f"input {name!r} must hold non-negative integer labels, got non-integral values "
                f"(dtype {arr.dtype})"
            )
    elif arr.dtype.kind == "i":
        if arr.size and arr.min() < 0:
            raise SlideFormatError(f"input {name!r} must hold non-negative labels (min {arr.min()})")
    elif arr.dtype.kind not in "ub":
        raise SlideFormatError(f"input {name!r} must hold integer labels, got dtype {arr.dtype}")
    return arr.astype(np.uint32, copy=True)
