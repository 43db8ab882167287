"""Small checks and helpers every layer shares (one copy of each, not one per adapter)."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import attrs

from .errors import ConfigurationError

__all__ = ["count", "seconds", "seconds_option", "utc_now"]


def seconds(
    name: str, value: object, *, allow_zero: bool = False, allow_none: bool = False
) -> float | None:
    """``value`` as float seconds, or ConfigurationError naming ``name``.

    Refuses booleans, non-numbers, NaN and infinities, negatives, and zero unless
    ``allow_zero``; ``None`` passes through only with ``allow_none``.
    """
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigurationError(f"{name} must be a finite number of seconds, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        limit = ">= 0" if allow_zero else "> 0"
        raise ConfigurationError(f"{name} must be {limit} seconds, got {value!r}")
    return float(value)


def count(name: str, value: object, *, minimum: int = 0, maximum: int | None = None) -> int:
    """``value`` as a whole number from ``minimum`` (to ``maximum``, when given): a size, a
    number of things. ConfigurationError naming ``name`` otherwise; booleans and
    non-integers are refused."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigurationError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if maximum is not None and value > maximum:
        raise ConfigurationError(f"{name} must be an integer <= {maximum}, got {value!r}")
    return value


def seconds_option(instance: Any, attribute: attrs.Attribute[Any], value: object) -> None:
    """An attrs validator: an optional number of seconds > 0 (``None``: no limit)."""
    seconds(f"{type(instance).__name__}.{attribute.name}", value, allow_none=True)


def utc_now() -> datetime:
    """The current time, timezone-aware in UTC (what every model timestamp uses)."""
    return datetime.now(UTC)
