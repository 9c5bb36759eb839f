"""Parameter checks shared by the segmentation backends and kernels (named errors, no imports)."""

from __future__ import annotations

import math
from typing import Any

from tiledseg.errors import ParameterError

__all__ = ["check_nonnegative", "check_positive", "check_unit_interval"]


def check_positive(name: str, value: Any) -> float:
    """``float(value)`` when finite and ``> 0``, else a :class:`ParameterError` naming ``name``."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ParameterError(f"`{name}` must be a positive number, got {value!r}") from None
    if not (math.isfinite(out) and out > 0):
        raise ParameterError(f"`{name}` must be a positive number, got {value!r}")
    return out


def check_nonnegative(name: str, value: Any, *, unit: str = "") -> float:
    """``float(value)`` when finite and ``>= 0``, else a :class:`ParameterError` naming ``name``.

    ``unit`` is added to the message (e.g. ``" (pixels)"``).
    """
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ParameterError(f"`{name}` must be a number >= 0{unit}, got {value!r}") from None
    if not (math.isfinite(out) and out >= 0):
        raise ParameterError(f"`{name}` must be a number >= 0{unit}, got {value!r}")
    return out


def check_unit_interval(name: str, value: Any, *, unit: str = "") -> float | None:
    """``None``, or ``float(value)`` when it lies in ``[0, 1]``; else a :class:`ParameterError`.

    ``unit`` is added to the message (e.g. ``" (prepared units)"``).
    """
    if value is None:
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ParameterError(f"`{name}` must lie in [0, 1]{unit}, got {value!r}") from None
    if not 0.0 <= out <= 1.0:
        raise ParameterError(f"`{name}` must lie in [0, 1]{unit}, got {value!r}")
    return out
