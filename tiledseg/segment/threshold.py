"""``threshold``: a small classical backend, local by construction (the engine's test backend).

The nuclear channel(s) are normalised with slide-level percentiles and combined
(:func:`tiledseg.segment._prepare.prepare_groups`), optionally smoothed, thresholded at a
slide-level value (Otsu's method on the slide's histogram of the prepared plane, Otsu 1979, unless
a fixed ``threshold`` is given) and split into connected components; components smaller than
``min_area_um2`` are dropped.

Every step is local: the answer at a pixel depends on data within ``4 sigma`` plus the extent of
its own component. With the halo covering the largest cell plus that context, tiled results equal
the whole-image result, which is what the tile engine's seamlessness tests rely on. It is no
substitute for the ``watershed`` backend on touching cells.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage as ndi

from tiledseg.errors import ParameterError
from tiledseg.segment._checks import check_unit_interval
from tiledseg.segment._prepare import (
    prepare_groups,
    resolve_channel_roles,
    smoothing_context_um,
    threshold_otsu_histogram,
)
from tiledseg.segment._protocol import BaseBackend, ChannelStatistics

__all__ = ["ThresholdBackend"]


class ThresholdBackend(BaseBackend):
    """Slide-level threshold + connected components of the nuclear signal.

    Parameters
    ----------
    nuclear : sequence of str, optional
        Channels to segment (combined by their mean after normalisation); default: from the
        panel, else guessed from the channel names (DNA, Ir191, ...).
    threshold : float, optional
        Fixed threshold on the prepared plane in ``[0, 1]``; default: Otsu on the slide histogram.
    smooth_um : float
        Gaussian sigma in µm applied before thresholding (0 = none).
    min_area_um2 : float
        Components smaller than this are removed.
    max_cell_diameter_um : float
        Largest expected cell; sets the halo.
    """

    name: ClassVar[str] = "threshold"
    requires_gpu: ClassVar[bool] = False
    default_tile_size: ClassVar[int] = 1024

    def __init__(
        self,
        *,
        nuclear: Sequence[str] | str | None = None,
        threshold: float | None = None,
        smooth_um: float = 0.0,
        min_area_um2: float = 0.0,
        max_cell_diameter_um: float = 20.0,
    ) -> None:
        threshold = check_unit_interval("threshold", threshold)
        if smooth_um < 0 or min_area_um2 < 0 or not max_cell_diameter_um > 0:
            raise ParameterError(
                "`smooth_um` and `min_area_um2` must be >= 0 and `max_cell_diameter_um` > 0, got "
                f"{smooth_um}, {min_area_um2}, {max_cell_diameter_um}"
            )
        self.nuclear = None if nuclear is None else ((nuclear,) if isinstance(nuclear, str) else tuple(nuclear))
        self.threshold = threshold
        self.smooth_um = float(smooth_um)
        self.min_area_um2 = float(min_area_um2)
        self.max_cell_diameter_um = float(max_cell_diameter_um)

    def params(self) -> dict[str, Any]:
        return {
            "nuclear": None if self.nuclear is None else list(self.nuclear),
            "threshold": self.threshold,
            "smooth_um": self.smooth_um,
            "min_area_um2": self.min_area_um2,
            "max_cell_diameter_um": self.max_cell_diameter_um,
        }

    def channels(self, available: Sequence[str]) -> tuple[str, ...]:
        return resolve_channel_roles(available, nuclear=self.nuclear, membrane=()).nuclear

    def halo_um(self) -> float:
        return self.max_cell_diameter_um + smoothing_context_um(self.smooth_um)

    def prepare(
        self,
        image: NDArray[Any],
        *,
        pixel_size_um: float,
        stats: ChannelStatistics,
    ) -> NDArray[np.float32]:
        names = self.channels(stats.names)
        return prepare_groups(
            image,
            names,
            [names],
            stats=stats,
            pixel_size_um=pixel_size_um,
            smooth_um=self.smooth_um,
        )

    def fit(self, histograms: NDArray[np.int64], edges: NDArray[np.float64]) -> dict[str, float]:
        if self.threshold is not None:
            return {"threshold": float(self.threshold)}
        t = threshold_otsu_histogram(histograms[0], edges[0])
        return {"threshold": 0.5 if math.isnan(t) else t}

    def segment(
        self,
        prepared: NDArray[np.float32],
        *,
        pixel_size_um: float,
        fitted: Mapping[str, float],
    ) -> NDArray[np.uint32]:
        if prepared.ndim != 3 or prepared.shape[0] < 1:
            raise ParameterError(f"`prepared` must be (K, Y, X) with K >= 1, got {prepared.shape}")
        t = float(fitted.get("threshold", 0.5) if self.threshold is None else self.threshold)
        mask = prepared[0] > t
        labels, n = ndi.label(mask)
        min_px = self.min_area_um2 / (pixel_size_um * pixel_size_um)
        if n and min_px > 0:
            area = np.bincount(labels.ravel(), minlength=n + 1)
            small = area < min_px
            small[0] = True
            labels[small[labels]] = 0
        out: NDArray[np.uint32] = labels.astype(np.uint32)
        return out
