"""``probabilities``: cells from a 3-class pixel probability map (ilastik + CellProfiler recipe).

The classical IMC pipeline of the Bodenmiller lab (ImcSegmentationPipeline; steinbock's
``classify ilastik`` + ``segment cellprofiler``, Windhager et al. 2023, Nat. Protoc.) trains an
ilastik random-forest pixel classifier with three classes -- nucleus, cytoplasm/membrane,
background -- and hands the probability map to CellProfiler: ``IdentifyPrimaryObjects`` finds
nuclei on the nucleus probability, ``IdentifySecondaryObjects`` grows them by propagation over
the cytoplasm and stops at background. This backend runs the same recipe on a probability map
stored beside the slide.

Input. Three input names, in the order nucleus, cytoplasm/membrane, background (by default
``probabilities:0``, ``probabilities:1``, ``probabilities:2``: channels 0--2 of the extra image
the engine is given under the key ``probabilities``; slide channels by name work too). Accepted
scales, decided once per slide from the slide-level maximum (``scale="auto"``) or given:

* ``1`` -- float probabilities in ``[0, 1]``;
* ``255`` -- ilastik's 8-bit export (0--255);
* ``65535`` -- ilastik's / steinbock's 16-bit export (0--65535).

The three planes of every pixel must sum to about one after scaling (within ``sum_tolerance``,
judged on the median over the tile's finite, non-zero pixels); otherwise the input is not a
3-class probability map and a :class:`~tiledseg.errors.SlideFormatError` says so. Pixels that are
NaN in any plane, or zero in all three (no classifier output), count as background.

Steps.

1. Nuclei: the nucleus probability, smoothed by ``smooth_um``, above ``nucleus_threshold``
   (default: Otsu on the slide histogram of the nucleus probability, Otsu 1979, or 0.5 when the
   slide has a single level), split by seeds of the blob response exactly like the ``watershed``
   backend (:func:`tiledseg.segment.watershed.segment_nuclei`).
2. Cells: propagation from each nucleus (:func:`tiledseg.segment._classical.propagate`) over the
   background probability (growth is cheap through cytoplasm, expensive towards background),
   restricted to pixels whose background probability is below ``background_threshold`` and to
   ``max_growth_um`` from the nearest nucleus.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from tiledseg.errors import ChannelNotFoundError, ParameterError, SlideFormatError
from tiledseg.segment._checks import check_nonnegative, check_positive, check_unit_interval
from tiledseg.segment._classical import (
    check_prepared,
    propagate,
)
from tiledseg.segment._prepare import GAUSSIAN_TRUNCATE, smooth_plane, threshold_otsu_histogram
from tiledseg.segment._protocol import BaseBackend, ChannelStatistics
from tiledseg.segment.watershed import segment_nuclei

__all__ = ["ProbabilitiesBackend", "probability_scale"]

logger = logging.getLogger(__name__)

DEFAULT_INPUTS = ("probabilities:0", "probabilities:1", "probabilities:2")
SCALES = (1.0, 255.0, 65535.0)


def probability_scale(maximum: float) -> float:
    """The scale (1, 255 or 65535) of a probability map from its largest value.

    Parameters
    ----------
    maximum : float
        Largest finite value of the map over the slide.

    Returns
    -------
    float

    Raises
    ------
    SlideFormatError
        Larger than 65535 or negative: not a probability map.
    """
    if not math.isfinite(maximum):
        return 1.0
    if maximum < 0:
        raise SlideFormatError(f"probability map has negative values (max {maximum})")
    for scale in SCALES:
        if maximum <= scale * 1.001:
            return scale
    raise SlideFormatError(
        f"probability map values reach {maximum}; expected probabilities in [0, 1] or ilastik's "
        "8-bit (0-255) or 16-bit (0-65535) export"
    )


class ProbabilitiesBackend(BaseBackend):
    """Nuclei and cells from a 3-class (nucleus, cytoplasm, background) probability map.

    Parameters
    ----------
    inputs : sequence of 3 str
        Input names of the nucleus, cytoplasm/membrane and background probabilities (see the
        module docstring); default ``probabilities:0..2``.
    scale : {"auto", 1, 255, 65535}
        Value that means probability 1; ``"auto"`` picks it from the slide's maximum.
    sum_tolerance : float
        Largest accepted deviation of the median per-pixel sum of the three planes from 1.
    smooth_um : float
        Gaussian sigma in µm applied to the probabilities.
    nucleus_diameter_um : float
        Typical nucleus diameter (seed scale).
    min_nucleus_diameter_um : float, optional
        Smaller nuclei are dropped; default ``0.4 * nucleus_diameter_um``.
    seed_h : float
        Seed quantisation step (see the ``watershed`` backend).
    nucleus_threshold : float, optional
        Threshold of the nucleus probability; default Otsu on the slide histogram.
    background_threshold : float
        Cells stop where the background probability reaches this.
    max_growth_um : float
        Furthest a cell extends beyond its nucleus.
    distance_weight : float
        Weight of the distance from the nucleus during growth.
    max_cell_diameter_um : float
        Largest expected cell; sets the halo.
    compartment : {"cell", "nucleus"}
        Which labels :meth:`segment` returns.
    """

    name: ClassVar[str] = "probabilities"
    requires_gpu: ClassVar[bool] = False
    default_tile_size: ClassVar[int] = 1024

    def __init__(
        self,
        *,
        inputs: Sequence[str] = DEFAULT_INPUTS,
        scale: str | float = "auto",
        sum_tolerance: float = 0.1,
        smooth_um: float = 1.0,
        nucleus_diameter_um: float = 8.0,
        min_nucleus_diameter_um: float | None = None,
        seed_h: float = 0.025,
        nucleus_threshold: float | None = None,
        background_threshold: float = 0.5,
        max_growth_um: float = 4.0,
        distance_weight: float = 0.5,
        max_cell_diameter_um: float = 25.0,
        compartment: str = "cell",
    ) -> None:
        if isinstance(inputs, str):
            inputs = [v.strip() for v in inputs.split(",")]
        inputs = tuple(str(v) for v in inputs)
        if len(inputs) != 3:
            raise ParameterError(
                f"`inputs` must name 3 probability planes (nucleus, cytoplasm, background), got {list(inputs)}"
            )
        self.inputs = inputs
        if scale != "auto":
            value = check_positive("scale", scale)
            if value not in SCALES:
                raise ParameterError(f"`scale` must be 'auto', 1, 255 or 65535, got {scale!r}")
            self.scale: str | float = value
        else:
            self.scale = "auto"
        self.sum_tolerance = check_positive("sum_tolerance", sum_tolerance)
        self.smooth_um = check_nonnegative("smooth_um", smooth_um)
        self.nucleus_diameter_um = check_positive("nucleus_diameter_um", nucleus_diameter_um)
        self.min_nucleus_diameter_um = (
            0.4 * self.nucleus_diameter_um if min_nucleus_diameter_um is None
            else check_nonnegative("min_nucleus_diameter_um", min_nucleus_diameter_um)
        )
        self.seed_h = check_positive("seed_h", seed_h)
        self.nucleus_threshold = check_unit_interval("nucleus_threshold", nucleus_threshold)
        self.background_threshold = float(background_threshold)
        if not 0.0 < self.background_threshold <= 1.0:
            raise ParameterError(f"`background_threshold` must lie in (0, 1], got {background_threshold!r}")
        self.max_growth_um = check_nonnegative("max_growth_um", max_growth_um)
        self.distance_weight = check_nonnegative("distance_weight", distance_weight)
        self.max_cell_diameter_um = check_positive("max_cell_diameter_um", max_cell_diameter_um)
        if compartment not in ("cell", "nucleus"):
            raise ParameterError(f"`compartment` must be 'cell' or 'nucleus', got {compartment!r}")
        self.compartment = compartment

    def params(self) -> dict[str, Any]:
        return {
            "inputs": list(self.inputs),
            "scale": self.scale,
            "sum_tolerance": self.sum_tolerance,
            "smooth_um": self.smooth_um,
            "nucleus_diameter_um": self.nucleus_diameter_um,
            "min_nucleus_diameter_um": self.min_nucleus_diameter_um,
            "seed_h": self.seed_h,
            "nucleus_threshold": self.nucleus_threshold,
            "background_threshold": self.background_threshold,
            "max_growth_um": self.max_growth_um,
            "distance_weight": self.distance_weight,
            "max_cell_diameter_um": self.max_cell_diameter_um,
            "compartment": self.compartment,
        }

    def channels(self, available: Sequence[str]) -> tuple[str, ...]:
        missing = [n for n in self.inputs if ":" not in n and n not in available]
        if missing:
            raise ChannelNotFoundError(
                f"probability channel(s) {missing} not found; available channels: {list(available)} "
                "(or name planes of an extra image as 'probabilities:0')"
            )
        return self.inputs

    @property
    def seed_sigma_um(self) -> float:
        return self.nucleus_diameter_um / 4.0

    def halo_um(self) -> float:
        return self.max_cell_diameter_um + GAUSSIAN_TRUNCATE * (self.smooth_um + self.seed_sigma_um)

    def _scale(self, stats: ChannelStatistics) -> float:
        if self.scale != "auto":
            return float(self.scale)
        maxima = []
        for name in self.inputs:
            try:
                maxima.append(float(stats.maximum[stats.index(name)]))
            except KeyError:
                raise ChannelNotFoundError(
                    f"no slide statistics for probability input {name!r}; statistics hold {list(stats.names)}"
                ) from None
        finite = [m for m in maxima if math.isfinite(m)]
        return probability_scale(max(finite) if finite else math.nan)

    def prepare(
        self,
        image: NDArray[Any],
        *,
        pixel_size_um: float,
        stats: ChannelStatistics,
    ) -> NDArray[np.float32]:
        arr = np.asarray(image)
        if arr.ndim != 3 or arr.shape[0] != 3:
            raise SlideFormatError(
                f"probability map must be (3, Y, X) -- nucleus, cytoplasm, background -- got shape {arr.shape}"
            )
        scale = self._scale(stats)
        probs = arr.astype(np.float32, copy=True)
        probs *= np.float32(1.0 / scale)
        # Pixels with a NaN, or all-zero pixels (no classifier output, e.g. padding), carry no
        # evidence: they become background and are left out of the sum check.
        finite = np.isfinite(probs).all(axis=0)
        finite &= probs.sum(axis=0, where=np.isfinite(probs)) > 0
        if finite.any():
            total = probs[:, finite].sum(axis=0)
            median = float(np.median(total))
            if abs(median - 1.0) > self.sum_tolerance:
                raise SlideFormatError(
                    f"the 3 probability planes {list(self.inputs)} must sum to ~1 per pixel (scale "
                    f"{scale:g}), but their median sum is {median:.3f}; expected a 3-class ilastik map "
                    "(nucleus, cytoplasm, background) -- check the channel order and `scale`"
                )
        if not finite.all():
            # No evidence: background.
            probs[:, ~finite] = 0.0
            probs[2, ~finite] = 1.0
        np.clip(probs, 0.0, 1.0, out=probs)
        if self.smooth_um > 0:
            for k in range(3):
                probs[k] = smooth_plane(probs[k], sigma_um=self.smooth_um, pixel_size_um=pixel_size_um)
        return probs

    def fit(self, histograms: NDArray[np.int64], edges: NDArray[np.float64]) -> dict[str, float]:
        histograms = np.asarray(histograms)
        if histograms.ndim != 2 or histograms.shape[0] != 3:
            raise ParameterError(
                f"`fit` expects histograms of the 3 prepared planes, got shape {histograms.shape}"
            )
        if self.nucleus_threshold is not None:
            t = self.nucleus_threshold
        else:
            otsu = threshold_otsu_histogram(histograms[0], np.asarray(edges)[0])
            t = 0.5 if math.isnan(otsu) else otsu
        return {"nucleus_threshold": float(t)}

    def segment(
        self,
        prepared: NDArray[np.float32],
        *,
        pixel_size_um: float,
        fitted: Mapping[str, float],
    ) -> NDArray[np.uint32]:
        planes = check_prepared(prepared, planes=3, backend=self.name)
        pixel = check_positive("pixel_size_um", pixel_size_um)
        value = fitted.get("nucleus_threshold", 0.5)
        threshold = 0.5 if value is None or math.isnan(float(value)) else float(value)
        nuclei = segment_nuclei(
            planes[0],
            threshold=threshold,
            seed_sigma_px=self.seed_sigma_um / pixel,
            smooth_sigma_px=self.smooth_um / pixel,
            seed_h=self.seed_h,
            min_area_px=math.pi * (self.min_nucleus_diameter_um / pixel / 2.0) ** 2,
        )
        if self.compartment == "nucleus" or not nuclei.any() or self.max_growth_um == 0:
            return nuclei
        foreground = planes[2] < np.float32(self.background_threshold)
        return propagate(
            nuclei, planes[2], foreground=foreground, max_distance_px=self.max_growth_um / pixel,
            distance_weight=self.distance_weight,
        )
