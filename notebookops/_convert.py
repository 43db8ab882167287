"""Shared cattrs building blocks: one converter per vendor is built from :func:`make_converter`.

Models carry no serialization rules; everything about wire formats lives in converters.
Never use the global ``cattrs.structure`` (ruff bans it): its hooks are process-wide state.

cattrs itself is imported by the functions that need it, not by this module: importing a
backend should not pay for it (and for building converters) before the first payload that
needs a converter.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import attrs

if TYPE_CHECKING:
    import cattrs

__all__ = [
    "MAX_JSON_DEPTH",
    "make_converter",
    "parse_datetime",
    "register_camel_case",
    "to_camel",
]

T = TypeVar("T")

#: The deepest nesting (objects and arrays) a converter accepts in a free-form value (a field
#: typed ``Any``, such as a cell output's MIME data): deeper is refused when decoded, so that
#: whatever was decoded can be serialised again (``Run.to_json``) without deep recursion.
#: Real outputs (plots, widget state) nest a few dozen levels at most.
MAX_JSON_DEPTH = 100
#: Serialising allows twice as deep: a free-form value that passed the decoder may sit inside
#: a payload that is itself kept whole (``Run.raw``).
_MAX_SERIALISED_DEPTH = 2 * MAX_JSON_DEPTH

_FRACTION = re.compile(r"\.(\d+)")
#: The shape nearly every timestamp comes in: UTC with a ``Z`` and 0, 3 or 6 fraction
#: digits, which ``fromisoformat`` reads exactly as the general path below would.
_COMMON = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{3}|\.\d{6})?Z", re.ASCII)


def parse_datetime(value: object) -> datetime:
    """Parse an ISO-8601 timestamp as vendors send them (``Z``, offsets, 1-9 fraction digits).

    Naive timestamps are taken as UTC: every vendor we talk to documents UTC.
    """
    if type(value) is str and _COMMON.fullmatch(value):
        # Read on every status poll: skip the normalisation, which changes nothing here.
        try:
            return datetime.fromisoformat(value[:-1] + "+00:00")
        except ValueError:
            pass  # a day or month that does not exist: the general path words the error
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        # fromisoformat in 3.11 takes up to 6 fraction digits; some servers send 9.
        text = _FRACTION.sub(lambda m: "." + m.group(1)[:6].ljust(6, "0"), text, count=1)
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError as exc:
            raise ValueError(f"not an ISO-8601 timestamp: {value!r}") from exc
    else:
        raise TypeError(f"expected an ISO-8601 string, got {type(value).__name__}")
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


def format_datetime(value: datetime) -> str:
    """Format a timestamp as ISO-8601 in UTC with a ``Z`` suffix."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def make_converter() -> cattrs.Converter:
    """A fresh converter with the hooks every vendor shares (timestamps).

    Extra keys in vendor JSON are ignored (``forbid_extra_keys`` stays off): vendors add fields
    without notice and that must never break a wait.
    """
    import cattrs

    converter = cattrs.Converter()
    converter.register_structure_hook(datetime, lambda value, _: parse_datetime(value))
    converter.register_unstructure_hook(datetime, format_datetime)
    converter.register_structure_hook_func(_is_any, _structure_free_form)
    converter.register_unstructure_hook_func(
        _is_any, lambda value: _copy_free_form(value, converter, _MAX_SERIALISED_DEPTH)
    )
    return converter


def _is_any(type_: object) -> bool:
    return type_ is Any


def _structure_free_form(value: Any, _: object) -> Any:
    """Free-form JSON is taken as it is, if it nests no deeper than :data:`MAX_JSON_DEPTH`."""
    if isinstance(value, dict | list) and _too_deep(value, MAX_JSON_DEPTH):
        # A ValueError, so that cattrs reports it with the field's path like any other.
        raise ValueError(f"a value nested deeper than {MAX_JSON_DEPTH} levels")
    return value


def _too_deep(value: Any, allowed: int) -> bool:
    """True if ``value`` nests more than ``allowed`` levels (the recursion stops there)."""
    if allowed <= 0:
        return True
    children = value.values() if isinstance(value, dict) else value
    for child in children:
        if isinstance(child, dict | list | tuple) and _too_deep(child, allowed - 1):
            return True
    return False


def _copy_free_form(value: Any, converter: cattrs.Converter, allowed: int) -> Any:
    """A JSON-ready copy of a free-form value; deeper than ``allowed`` levels is refused
    with ResponseDecodeError (never RecursionError: the recursion stops at ``allowed``)."""
    if value is None or isinstance(value, str | int | float):
        return value
    if isinstance(value, dict | list | tuple):
        if allowed <= 0:
            from .errors import ResponseDecodeError

            raise ResponseDecodeError(
                f"an output or payload is nested deeper than {_MAX_SERIALISED_DEPTH} levels "
                "and cannot be serialised"
            )
        if isinstance(value, dict):
            copy: dict[Any, Any] = {}
            for key, child in value.items():
                copy[key] = _copy_free_form(child, converter, allowed - 1)
            return copy
        items = []
        for child in value:
            items.append(_copy_free_form(child, converter, allowed - 1))
        return items
    # Anything else (a timestamp, an attrs object): the converter's own hooks.
    return converter.unstructure(value)


def to_camel(name: str) -> str:
    """``snapshot_delivery`` -> ``snapshotDelivery`` (a leading underscore is kept out)."""
    head, *rest = name.lstrip("_").split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def register_camel_case(
    converter: cattrs.Converter, *classes: type[Any], omit_none: bool = False
) -> None:
    """Make ``classes`` (attrs) read and write camelCase keys on ``converter``."""
    from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

    for cls in classes:
        overrides = {
            field.name: override(rename=to_camel(field.name)) for field in attrs.fields(cls)
        }
        converter.register_structure_hook(
            cls,
            make_dict_structure_fn(cls, converter, **overrides),  # type: ignore[arg-type]
        )
        unstructure: Callable[[Any], dict[str, Any]] = make_dict_unstructure_fn(
            cls,
            converter,
            _cattrs_omit_if_default=False,
            **overrides,  # type: ignore[arg-type]
        )
        if omit_none:
            inner = unstructure

            def unstructure(obj: Any, _inner: Callable[[Any], dict[str, Any]] = inner) -> Any:
                return {k: v for k, v in _inner(obj).items() if v is not None}

        converter.register_unstructure_hook(cls, unstructure)
