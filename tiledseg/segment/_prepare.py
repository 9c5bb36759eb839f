"""Channel preparation shared by every backend: roles, normalisation, combination, filters.

Multiplexed images carry 10--60 channels; a segmentation backend wants one or two planes
(nuclear, membrane). This module turns raw channels into those planes the way steinbock and ark
do, with one deliberate difference: every normalisation uses *slide-level* percentiles from
:class:`~tiledseg.segment.ChannelStatistics`, never the tile's own, so that a cell is prepared
identically whichever tile it falls in.

The steps, in order, per channel of a group:

1. **Non-finite pixels.** NaN and ±inf carry no signal: they are set to the channel's lower clip
   value before any filter runs (so they cannot spread through a filter) and therefore end up as
   ``0`` in the prepared plane. A tile made only of NaN prepares to all zeros and yields no cells.
2. **Hot-pixel filter** (optional, steinbock's ``preprocess imc images --hpf``): a pixel larger than
   the maximum of its 3 x 3 neighbourhood *excluding itself* by more than ``hot_pixel_threshold``
   (raw units) is replaced by that maximum.
3. **Percentile normalisation**: clip to the slide's ``[clip[0], clip[1]]`` percentiles (default
   1st--99.9th) and rescale to ``[0, 1]``. A channel with no spread (constant slide) becomes 0.
4. **Group combination** by ``"mean"`` (steinbock's default aggregation) or ``"sum"`` (ark sums its
   membrane channels); a sum is clipped back to ``[0, 1]`` so prepared planes stay in range.
5. **Gaussian smoothing** (optional) with ``sigma`` in µm, converted with the pixel size.

Channel roles come from a steinbock panel (``deepcell`` or ``cellpose`` column: 1 = nuclear,
2 = membrane), from explicit names, or, for the nuclear channel only, from a guess on channel
names (DNA, Ir191/Ir193, histone H3, DAPI, Hoechst).

All functions are pure numpy/scipy: arrays in, new ``float32`` arrays out, inputs untouched.
Every step is local (at most ``4 * sigma`` pixels of context for the smoothing, one pixel for the
hot-pixel filter), which keeps tiled preparation seamless when the halo covers it.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu

from tiledseg.errors import ChannelNotFoundError, PanelError, ParameterError
from tiledseg.segment._gaussian import gaussian_filter
from tiledseg.segment._protocol import ChannelStatistics

__all__ = [
    "DEFAULT_CLIP",
    "GAUSSIAN_TRUNCATE",
    "NUCLEAR_NAME_PATTERNS",
    "ChannelRoles",
    "channel_roles_from_panel",
    "clip_bounds",
    "combine_planes",
    "guess_nuclear_channels",
    "normalize_plane",
    "prepare_groups",
    "remove_hot_pixels",
    "resolve_channel_roles",
    "smooth_plane",
    "smoothing_context_um",
    "statistics_from_array",
    "threshold_otsu_histogram",
]

logger = logging.getLogger(__name__)

#: Default slide-level percentile clip (steinbock / Mesmer use 1st--99.9th).
DEFAULT_CLIP: tuple[float, float] = (1.0, 99.9)

#: Gaussian kernel half-width in sigmas (scipy's default); sets the smoothing's halo.
GAUSSIAN_TRUNCATE = 4.0

#: Case-insensitive regular expressions that mark a nuclear (DNA) channel by its name, in order of
#: preference: DNA intercalators first, then histones, then dyes.
NUCLEAR_NAME_PATTERNS: tuple[str, ...] = (
    r"\bdna\d*\b|^dna",
    r"ir\s*-?\s*19[13]|19[13]\s*-?\s*ir",
    r"intercalator",
    r"\bh3\b|^h3|histone",
    r"dapi",
    r"hoechst",
)

CombineMethod = Literal["mean", "sum"]
_ROLE_CODES = {1: "nuclear", 2: "membrane"}


@dataclass(frozen=True)
class ChannelRoles:
    """Which channels a backend treats as nuclear and which as membrane.

    Parameters
    ----------
    nuclear : tuple of str
        Nuclear channel names (combined into one nuclear plane).
    membrane : tuple of str
        Membrane / cytoplasm channel names (combined into one membrane plane); may be empty.
    """

    nuclear: tuple[str, ...]
    membrane: tuple[str, ...] = ()


# --------------------------------------------------------------------------------------------
# channel roles
# --------------------------------------------------------------------------------------------


def _records(panel_rows: Any) -> list[Mapping[str, Any]]:
    """Accept a DataFrame (has ``to_dict``) or an iterable of mappings; return row dicts."""
    if hasattr(panel_rows, "to_dict") and hasattr(panel_rows, "columns"):
        return list(panel_rows.to_dict("records"))
    rows = list(panel_rows)
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise PanelError(f"panel row {i} must be a mapping of column -> value, got {type(row).__name__}")
    return rows


def _role_code(value: Any, *, column: str, row: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        if text == "" or text.lower() in {"nan", "na", "none"}:
            return None
        try:
            value = float(text)
        except ValueError:
            raise PanelError(
                f"panel column {column!r}, row {row}: expected 1 (nuclear), 2 (membrane) or empty, "
                f"got {value!r}"
            ) from None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise PanelError(
            f"panel column {column!r}, row {row}: expected 1 (nuclear), 2 (membrane) or empty, "
            f"got {value!r}"
        ) from None
    if math.isnan(number):
        return None
    if number not in (1.0, 2.0):
        raise PanelError(
            f"panel column {column!r}, row {row}: expected 1 (nuclear), 2 (membrane) or empty, "
            f"got {value!r}"
        )
    return int(number)


def channel_roles_from_panel(
    panel_rows: Iterable[Mapping[str, Any]] | Any,
    *,
    column: str = "deepcell",
    name_column: str = "name",
) -> ChannelRoles:
    """Nuclear and membrane channels from a steinbock panel column.

    Parameters
    ----------
    panel_rows : DataFrame or iterable of mapping
        Panel rows (``pandas.DataFrame`` or its ``to_dict("records")``). Rows with ``keep == 0``
        are ignored.
    column : str
        Role column: ``"deepcell"`` or ``"cellpose"`` (steinbock: 1 = nuclear, 2 = membrane /
        cytoplasm, empty = unused).
    name_column : str
        Column holding the channel names the slide uses (steinbock: ``"name"``).

    Returns
    -------
    ChannelRoles
        Channels in panel order. ``nuclear`` is empty when the column marks none.

    Raises
    ------
    PanelError
        The column is missing or holds a value other than 1, 2 or empty.

    Examples
    --------
    >>> rows = [{"name": "DNA1", "deepcell": 1}, {"name": "CD45", "deepcell": 2},
    ...         {"name": "CD3", "deepcell": None}]
    >>> channel_roles_from_panel(rows)
    ChannelRoles(nuclear=('DNA1',), membrane=('CD45',))
    """
    rows = _records(panel_rows)
    if rows and not any(column in row for row in rows):
        columns = sorted({str(k) for row in rows for k in row})
        raise PanelError(f"panel has no column {column!r} (columns: {columns})")
    roles: dict[str, list[str]] = {"nuclear": [], "membrane": []}
    for i, row in enumerate(rows):
        keep = row.get("keep", 1)
        try:
            if keep is not None and not (isinstance(keep, float) and math.isnan(keep)) and int(keep) == 0:
                continue
        except (TypeError, ValueError):
            pass
        code = _role_code(row.get(column), column=column, row=i)
        if code is None:
            continue
        if name_column not in row:
            raise PanelError(f"panel row {i} has no {name_column!r} column")
        roles[_ROLE_CODES[code]].append(str(row[name_column]))
    return ChannelRoles(nuclear=tuple(roles["nuclear"]), membrane=tuple(roles["membrane"]))


def guess_nuclear_channels(available: Sequence[str]) -> tuple[str, ...]:
    """Guess the nuclear channel(s) from channel names.

    The first pattern of :data:`NUCLEAR_NAME_PATTERNS` that matches any name wins, and every
    name it matches is returned (so ``DNA1`` and ``DNA2``, or ``Ir191`` and ``Ir193``, are both
    used and combined).

    Parameters
    ----------
    available : sequence of str
        The slide's channel names.

    Returns
    -------
    tuple of str
        Matching names in slide order.

    Raises
    ------
    ParameterError
        No name looks nuclear; the message lists the available channels and how to name one.
    """
    for pattern in NUCLEAR_NAME_PATTERNS:
        regex = re.compile(pattern, re.IGNORECASE)
        found = tuple(name for name in available if regex.search(name))
        if found:
            logger.info("guessed nuclear channel(s) %s from their names", found)
            return found
    raise ParameterError(
        "no nuclear channel given and none recognised by name (DNA, Ir191/Ir193, H3/histone, DAPI, "
        f"Hoechst) among the available channels {list(available)}; pass `nuclear=[...]` "
        "(CLI: --nuclear NAME) or set the panel's `deepcell` column to 1 for the nuclear channel"
    )


def _check_names(names: Sequence[str], available: Sequence[str], *, parameter: str) -> tuple[str, ...]:
    if isinstance(names, str):
        names = [names]
    out = tuple(str(n) for n in names)
    missing = [n for n in out if n not in available]
    if missing:
        raise ChannelNotFoundError(
            f"`{parameter}` channel(s) {missing} not found; available channels: {list(available)}"
        )
    return out


def resolve_channel_roles(
    available: Sequence[str],
    *,
    nuclear: Sequence[str] | str | None = None,
    membrane: Sequence[str] | str | None = None,
    panel: Iterable[Mapping[str, Any]] | Any | None = None,
    column: str = "deepcell",
) -> ChannelRoles:
    """Decide the nuclear and membrane channels of a slide.

    Explicit names win; otherwise the panel's ``column``; otherwise (nuclear only) a guess on the
    channel names. Membrane channels are never guessed: without them the membrane group is empty.

    Parameters
    ----------
    available : sequence of str
        The slide's channel names.
    nuclear, membrane : sequence of str or str, optional
        Explicit channel names.
    panel : DataFrame or iterable of mapping, optional
        Steinbock panel rows.
    column : str
        Panel role column (``"deepcell"`` or ``"cellpose"``).

    Returns
    -------
    ChannelRoles

    Raises
    ------
    ChannelNotFoundError
        A named channel is not among ``available`` (the message lists them).
    ParameterError
        No nuclear channel is named, in the panel or recognisable by name.
    """
    from_panel = ChannelRoles(nuclear=())
    if panel is not None and (nuclear is None or membrane is None):
        try:
            from_panel = channel_roles_from_panel(panel, column=column)
        except PanelError:
            if nuclear is None:
                raise
    if nuclear is None:
        if from_panel.nuclear:
            nuc = _check_names(from_panel.nuclear, available, parameter=f"panel {column}=1")
        else:
            nuc = guess_nuclear_channels(available)
    else:
        nuc = _check_names(nuclear, available, parameter="nuclear")
    if not nuc:
        raise ParameterError("`nuclear` must name at least one channel, got an empty list")
    if membrane is None:
        mem = _check_names(from_panel.membrane, available, parameter=f"panel {column}=2")
    else:
        mem = _check_names(membrane, available, parameter="membrane")
    return ChannelRoles(nuclear=nuc, membrane=mem)


# --------------------------------------------------------------------------------------------
# per-plane operations
# --------------------------------------------------------------------------------------------


def _check_clip(clip: Sequence[float]) -> tuple[float, float]:
    if len(clip) != 2:
        raise ParameterError(f"`clip` must be two percentiles (low, high), got {clip!r}")
    low, high = float(clip[0]), float(clip[1])
    if not 0.0 <= low < high <= 100.0:
        raise ParameterError(f"`clip` percentiles must satisfy 0 <= low < high <= 100, got {clip!r}")
    return low, high


def clip_bounds(
    stats: ChannelStatistics, name: str, *, clip: Sequence[float] = DEFAULT_CLIP
) -> tuple[float, float]:
    """Slide-level ``(low, high)`` intensity bounds of channel ``name``.

    Parameters
    ----------
    stats : ChannelStatistics
        Slide-level histograms.
    name : str
        Input name (a row of ``stats``).
    clip : (2,) sequence of float
        Percentiles, default ``(1, 99.9)``.

    Returns
    -------
    (float, float)
        ``low <= high``; both ``0.0`` when the channel holds no finite pixel.

    Raises
    ------
    ChannelNotFoundError
        ``stats`` has no row for ``name``.
    """
    low_q, high_q = _check_clip(clip)
    try:
        low = stats.percentile(name, low_q)
        high = stats.percentile(name, high_q)
    except KeyError as exc:
        raise ChannelNotFoundError(
            f"no slide statistics for channel {name!r}; statistics hold {list(stats.names)}"
        ) from exc
    if not (math.isfinite(low) and math.isfinite(high)):
        return 0.0, 0.0
    return low, max(low, high)


def normalize_plane(plane: NDArray[Any], *, low: float, high: float) -> NDArray[np.float32]:
    """Clip ``plane`` to ``[low, high]`` and rescale to ``[0, 1]``.

    Parameters
    ----------
    plane : (Y, X) ndarray
        Raw intensities, any real dtype.
    low, high : float
        Bounds (slide-level percentiles). ``high <= low`` maps everything to 0.

    Returns
    -------
    (Y, X) ndarray of float32
        In ``[0, 1]``; non-finite input pixels become 0.
    """
    data = np.asarray(plane)
    if high <= low:
        return np.zeros(data.shape, dtype=np.float32)
    out = np.subtract(data, np.float32(low), dtype=np.float32)
    out *= np.float32(1.0 / (high - low))
    np.clip(out, 0.0, 1.0, out=out)
    if data.dtype.kind == "f":
        # np.clip keeps NaN; +inf was clipped to 1 but carries no signal either.
        bad = ~np.isfinite(data)
        if bad.any():
            out[bad] = 0.0
    return out


def remove_hot_pixels(plane: NDArray[Any], *, threshold: float) -> NDArray[np.float32]:
    """steinbock's hot-pixel filter: clamp pixels far above all their 3 x 3 neighbours.

    A pixel whose value exceeds the maximum of its eight neighbours by more than ``threshold`` is
    replaced by that maximum (steinbock ``preprocess imc images --hpf``; ImcSegmentationPipeline's
    ``filter_hot_pixels``). Borders use the nearest-pixel rule, so a pixel depends only on its
    direct neighbours.

    Parameters
    ----------
    plane : (Y, X) ndarray
        Raw intensities. Non-finite pixels must already be replaced.
    threshold : float
        Raw-intensity margin, ``>= 0`` (steinbock uses 50 for IMC counts).

    Returns
    -------
    (Y, X) ndarray of float32
    """
    if not threshold >= 0:
        raise ParameterError(f"`hot_pixel_threshold` must be >= 0, got {threshold!r}")
    data = np.asarray(plane, dtype=np.float32)
    footprint = np.ones((3, 3), dtype=bool)
    footprint[1, 1] = False
    neighbour_max = ndi.maximum_filter(data, footprint=footprint, mode="nearest")
    hot = data - neighbour_max > np.float32(threshold)
    return np.where(hot, neighbour_max, data).astype(np.float32, copy=False)


def smooth_plane(
    plane: NDArray[Any], *, sigma_um: float, pixel_size_um: float
) -> NDArray[np.float32]:
    """Gaussian smoothing with ``sigma`` given in µm.

    Parameters
    ----------
    plane : (Y, X) ndarray
    sigma_um : float
        Standard deviation in µm; ``0`` returns a float32 copy.
    pixel_size_um : float
        Pixel edge in µm.

    Returns
    -------
    (Y, X) ndarray of float32
        Bit for bit ``scipy.ndimage.gaussian_filter(plane, sigma_um / pixel_size_um,
        mode="nearest", truncate=GAUSSIAN_TRUNCATE)`` on the float32 plane, computed by the
        compiled :func:`tiledseg.segment._gaussian.gaussian_filter` (SciPy without numba).
    """
    _check_pixel_size(pixel_size_um)
    if not sigma_um >= 0:
        raise ParameterError(f"`smooth_um` must be >= 0 µm, got {sigma_um!r}")
    data = np.asarray(plane, dtype=np.float32)
    if sigma_um == 0:
        return data.copy()
    sigma_px = sigma_um / pixel_size_um
    if data.ndim != 2:
        smoothed: NDArray[np.float32] = ndi.gaussian_filter(
            data, sigma_px, mode="nearest", truncate=GAUSSIAN_TRUNCATE
        ).astype(np.float32, copy=False)
        return smoothed
    return gaussian_filter(data, sigma_px, truncate=GAUSSIAN_TRUNCATE)


def smoothing_context_um(sigma_um: float) -> float:
    """Context in µm a Gaussian of ``sigma_um`` reads around each pixel."""
    return GAUSSIAN_TRUNCATE * float(sigma_um)


def combine_planes(planes: Sequence[NDArray[np.float32]], *, method: str = "mean") -> NDArray[np.float32]:
    """Combine normalised planes of a channel group.

    Parameters
    ----------
    planes : sequence of (Y, X) ndarray of float32
        Normalised planes in ``[0, 1]``, at least one.
    method : {"mean", "sum"}
        ``"mean"`` (steinbock) or ``"sum"`` (ark); the sum is clipped to ``[0, 1]``.

    Returns
    -------
    (Y, X) ndarray of float32
    """
    if method not in ("mean", "sum"):
        raise ParameterError(f"`combine` must be 'mean' or 'sum', got {method!r}")
    if len(planes) == 0:
        raise ParameterError("cannot combine an empty channel group")
    out = np.array(planes[0], dtype=np.float32, copy=True)
    for p in planes[1:]:
        out += p
    if method == "mean" and len(planes) > 1:
        out *= np.float32(1.0 / len(planes))
    elif method == "sum":
        np.clip(out, 0.0, 1.0, out=out)
    return out


def _check_pixel_size(pixel_size_um: float) -> None:
    if not (isinstance(pixel_size_um, (int, float, np.floating)) and math.isfinite(pixel_size_um)
            and pixel_size_um > 0):
        raise ParameterError(f"`pixel_size_um` must be a positive number, got {pixel_size_um!r}")


# --------------------------------------------------------------------------------------------
# the whole preparation
# --------------------------------------------------------------------------------------------


def prepare_groups(
    image: NDArray[Any],
    names: Sequence[str],
    groups: Sequence[Sequence[str]],
    *,
    stats: ChannelStatistics,
    pixel_size_um: float,
    clip: Sequence[float] = DEFAULT_CLIP,
    combine: str = "mean",
    hot_pixel_threshold: float | None = None,
    smooth_um: float | Sequence[float] = 0.0,
) -> NDArray[np.float32]:
    """Raw channels of one window -> one prepared plane per channel group.

    Parameters
    ----------
    image : (C, Y, X) ndarray
        Raw inputs in the order of ``names`` (any real dtype). Not modified.
    names : sequence of str
        Input name of each of the ``C`` rows of ``image`` (also rows of ``stats``).
    groups : sequence of sequence of str
        ``K`` groups of input names; each becomes one prepared plane. An empty group gives an
        all-zero plane (e.g. no membrane channel).
    stats : ChannelStatistics
        Slide-level statistics of the raw inputs.
    pixel_size_um : float
        Pixel edge in µm.
    clip : (2,) sequence of float
        Slide-level percentile clip, default ``(1, 99.9)``.
    combine : {"mean", "sum"}
        How channels of a group are combined after normalisation.
    hot_pixel_threshold : float, optional
        Apply steinbock's hot-pixel filter with this raw-intensity margin.
    smooth_um : float or sequence of float
        Gaussian sigma in µm, one for all groups or one per group; 0 = none.

    Returns
    -------
    (K, Y, X) ndarray of float32
        Prepared planes in ``[0, 1]``; non-finite input pixels become 0.

    Raises
    ------
    SlideFormatError
        ``image`` is not 3-D or its channel count differs from ``names``.
    ChannelNotFoundError
        A group names an input that is not in ``names`` or ``stats``.
    ParameterError
        Bad ``clip``, ``combine``, ``pixel_size_um``, threshold or sigma.
    """
    from tiledseg.errors import SlideFormatError

    arr = np.asarray(image)
    if arr.ndim != 3:
        raise SlideFormatError(f"`image` must be (C, Y, X), got shape {arr.shape}")
    if arr.shape[0] != len(names):
        raise SlideFormatError(
            f"`image` has {arr.shape[0]} channels but {len(names)} input names were given: {list(names)}"
        )
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool) or np.iscomplexobj(arr):
        raise SlideFormatError(f"`image` must hold real numbers, got dtype {arr.dtype}")
    _check_pixel_size(pixel_size_um)
    clip = _check_clip(clip)
    if combine not in ("mean", "sum"):
        raise ParameterError(f"`combine` must be 'mean' or 'sum', got {combine!r}")
    if isinstance(smooth_um, (int, float, np.floating)):
        sigmas = [float(smooth_um)] * len(groups)
    else:
        sigmas = [float(s) for s in smooth_um]
        if len(sigmas) != len(groups):
            raise ParameterError(
                f"`smooth_um` has {len(sigmas)} values for {len(groups)} channel groups"
            )
    index = {n: i for i, n in enumerate(names)}
    out = np.zeros((len(groups), arr.shape[1], arr.shape[2]), dtype=np.float32)
    normalised: dict[str, NDArray[np.float32]] = {}
    kernel = _group_kernel() if hot_pixel_threshold is None and arr.dtype in _KERNEL_DTYPES else None
    for k, group in enumerate(groups):
        if kernel is not None and group:
            missing = [name for name in group if name not in index]
            if missing:
                raise ChannelNotFoundError(f"channel {missing[0]!r} is not among the inputs {list(names)}")
            bounds = [clip_bounds(stats, name, clip=clip) for name in group]
            plane = np.empty(arr.shape[1:], dtype=np.float32)
            kernel(
                arr, np.asarray([index[name] for name in group], dtype=np.intp),
                np.asarray([lo for lo, _ in bounds], dtype=np.float32),
                np.asarray([1.0 / (hi - lo) if hi > lo else 0.0 for lo, hi in bounds], dtype=np.float32),
                np.asarray([hi > lo for lo, hi in bounds], dtype=np.bool_),
                np.float32(1.0 / len(group)), combine == "sum", plane,
            )
            if sigmas[k] > 0:
                plane = smooth_plane(plane, sigma_um=sigmas[k], pixel_size_um=pixel_size_um)
            out[k] = plane
            continue
        planes = []
        for name in group:
            if name not in index:
                raise ChannelNotFoundError(f"channel {name!r} is not among the inputs {list(names)}")
            if name not in normalised:
                normalised[name] = _prepare_one(
                    arr[index[name]], stats=stats, name=name, clip=clip,
                    hot_pixel_threshold=hot_pixel_threshold,
                )
            planes.append(normalised[name])
        if not planes:
            continue
        plane = combine_planes(planes, method=combine)
        if sigmas[k] > 0:
            plane = smooth_plane(plane, sigma_um=sigmas[k], pixel_size_um=pixel_size_um)
        out[k] = plane
    return out


_GROUP_KERNEL: dict[str, Any] = {}
#: Input dtypes the compiled group pass takes (others, e.g. float16 or bool, take the NumPy steps).
_KERNEL_DTYPES = frozenset(
    np.dtype(t) for t in ("float32", "float64", "uint8", "uint16", "uint32", "int8", "int16", "int32")
)


def _group_kernel() -> Any:
    """Steps 1, 3 and 4 of one channel group in a single compiled pass (numba), or None.

    ``kernel(image, rows, lows, scales, spread, mean_scale, is_sum, out)`` writes into ``out``
    exactly what :func:`_prepare_one` (without the hot-pixel filter) and :func:`combine_planes`
    give, with the same float32 operations in the same order: a non-finite pixel contributes
    0, else ``clip((float32(v) - low) * scale, 0, 1)`` with NumPy's ``clip`` rule
    (``x > 0 ? x : 0``, then ``x < 1 ? x : 1``, as ``max(0, x)`` and ``min(1, x)`` do); a channel with no spread contributes 0; planes
    are summed from the first, then scaled by ``1 / n`` (mean of several) or clipped (sum).
    One pass instead of about eight NumPy passes and four temporary planes per channel.
    """
    if "fn" not in _GROUP_KERNEL:
        try:
            import numba

            @numba.njit(cache=True, nogil=True)  # type: ignore[misc,unused-ignore]
            def group(
                image: Any, rows: Any, lows: Any, scales: Any, spread: Any, mean_scale: Any,
                is_sum: bool, out: Any,
            ) -> None:
                n = rows.size
                zero = np.float32(0.0)
                one = np.float32(1.0)
                height, width = out.shape
                # Plane by plane, row by row: the inner loop is branch-free and vectorises.
                for j in range(n):
                    plane = image[rows[j]]
                    low = lows[j]
                    scale = scales[j]
                    has = spread[j]
                    for y in range(height):
                        for x in range(width):
                            raw = plane[y, x]
                            value = (np.float32(raw) - low) * scale
                            value = max(zero, value)
                            value = min(one, value)
                            if not (has and np.isfinite(raw)):
                                value = zero
                            if j == 0:
                                out[y, x] = value
                            else:
                                out[y, x] += value
                if is_sum:
                    for y in range(height):
                        for x in range(width):
                            out[y, x] = min(one, max(zero, out[y, x]))
                elif n > 1:
                    for y in range(height):
                        for x in range(width):
                            out[y, x] *= mean_scale

            _GROUP_KERNEL["fn"] = group
        except Exception:  # noqa: BLE001  numba missing or failing: NumPy steps
            _GROUP_KERNEL["fn"] = None
    return _GROUP_KERNEL["fn"]


def _prepare_one(
    plane: NDArray[Any],
    *,
    stats: ChannelStatistics,
    name: str,
    clip: tuple[float, float],
    hot_pixel_threshold: float | None,
) -> NDArray[np.float32]:
    low, high = clip_bounds(stats, name, clip=clip)
    data = np.asarray(plane)
    if data.dtype.kind == "f":
        finite = np.isfinite(data)
        if not finite.all():
            data = np.where(finite, data, np.float32(low)).astype(np.float32, copy=False)
    if hot_pixel_threshold is not None:
        data = remove_hot_pixels(data, threshold=hot_pixel_threshold)
    return normalize_plane(data, low=low, high=high)


# --------------------------------------------------------------------------------------------
# slide-level thresholds
# --------------------------------------------------------------------------------------------


def threshold_otsu_histogram(counts: NDArray[Any], edges: NDArray[Any]) -> float:
    """Otsu's threshold from a histogram (slide-level, so every tile shares it).

    Parameters
    ----------
    counts : (B,) ndarray of int
        Pixel counts per bin.
    edges : (B + 1,) ndarray of float
        Bin edges.

    Returns
    -------
    float
        The threshold, or ``nan`` when the histogram is empty or has a single occupied bin.
    """
    counts = np.asarray(counts, dtype=np.float64)
    edges = np.asarray(edges, dtype=np.float64)
    if counts.ndim != 1 or edges.shape != (counts.size + 1,):
        raise ParameterError(
            f"histogram needs B counts and B + 1 edges, got {counts.shape} and {edges.shape}"
        )
    nonzero = np.flatnonzero(counts)
    if nonzero.size < 2:
        return float("nan")
    centers = 0.5 * (edges[:-1] + edges[1:])
    # scikit-image's Otsu on the histogram returns the centre of the last bin of the lower class;
    # report that bin's upper edge instead, so "pixels > t are foreground" holds for every pixel
    # of the bin.
    lower_center = float(threshold_otsu(hist=(counts, centers)))  # type: ignore[no-untyped-call]
    i = int(np.searchsorted(centers, lower_center))
    return float(edges[min(i, counts.size - 1) + 1])


def statistics_from_array(
    image: NDArray[Any], names: Sequence[str], *, bins: int = 4096
) -> ChannelStatistics:
    """Slide-level statistics of an in-memory ``(C, Y, X)`` image (whole-image reference runs).

    The tile engine computes the same numbers as a chunked reduction over the slide; this
    function is for images that fit in memory (tests, notebooks, the whole-image reference).

    Parameters
    ----------
    image : (C, Y, X) ndarray
        Raw inputs; NaN and ±inf pixels are left out of the histograms.
    names : sequence of str
        One input name per channel.
    bins : int
        Histogram bins per channel between the channel's finite minimum and maximum.

    Returns
    -------
    ChannelStatistics
    """
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[0] != len(names):
        raise ParameterError(
            f"`image` must be (C, Y, X) with C = {len(names)} names, got shape {arr.shape}"
        )
    c = arr.shape[0]
    edges = np.zeros((c, bins + 1), dtype=np.float64)
    counts = np.zeros((c, bins), dtype=np.int64)
    minimum = np.full(c, np.nan)
    maximum = np.full(c, np.nan)
    for i in range(c):
        data = np.asarray(arr[i], dtype=np.float64).ravel()
        data = data[np.isfinite(data)]
        if data.size == 0:
            edges[i] = np.linspace(0.0, 1.0, bins + 1)
            continue
        lo, hi = float(data.min()), float(data.max())
        minimum[i], maximum[i] = lo, hi
        if hi <= lo:
            hi = lo + 1.0
        counts[i], edges[i] = np.histogram(data, bins=bins, range=(lo, hi))
    return ChannelStatistics(
        names=tuple(str(n) for n in names),
        edges=edges,
        counts=counts,
        minimum=minimum,
        maximum=maximum,
        n_pixels=int(arr.shape[1] * arr.shape[2]),
    )
