"""Typed records read back from JSON (ONNX metadata, engine sidecars): each field checked against its type.

A record written by this toolkit and edited by hand, truncated or written by another tool
must fail with one line that names the field, not with a TypeError three modules later.
"""

from __future__ import annotations

import math
import typing
from dataclasses import MISSING, fields
from typing import Any, TypeVar

from .errors import ToolkitError, shown

R = TypeVar("R")


def _matches(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        return any(_matches(value, arg) for arg in args)
    if hint is type(None):
        return value is None
    if origin is list:
        return isinstance(value, list) and all(_matches(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(isinstance(k, str) and _matches(v, args[1]) for k, v in value.items())
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return isinstance(value, hint)


def record_from_dict(cls: type[R], values: dict[str, Any], where: str, fix: str) -> R:
    """``cls(**values)`` for a dataclass ``cls``, after checking that every required field is there and
    every field has its declared type; unknown keys are ignored. Errors name the field, ``where``
    it was read and the ``fix``."""
    if not isinstance(values, dict):
        raise ToolkitError(f"{where} is {_json_kind(values)}, not an object; {fix}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    missing = [
        f.name
        for f in fields(cls)  # type: ignore[arg-type]
        if f.default is MISSING and f.default_factory is MISSING and f.name not in values
    ]
    if missing:
        raise ToolkitError(f"{where} lacks the field(s) {', '.join(missing)}; {fix}")
    for name in (f.name for f in fields(cls) if f.name in values):  # type: ignore[arg-type]
        if not _matches(values[name], hints[name]):
            raise ToolkitError(f"{where}: field {name} is {shown(values[name])}, not {_describe(hints[name])}; {fix}")
    return cls(**{k: v for k, v in values.items() if k in known})


def _json_kind(value: Any) -> str:
    kinds = ((bool, "true/false"), (str, "text"), (int, "a number"), (float, "a number"), (list, "a list"))
    return "null" if value is None else next((k for t, k in kinds if isinstance(value, t)), type(value).__name__)


def _describe(hint: Any, plural: bool = False) -> str:
    """``hint`` in words: "an integer", "a list of finite numbers", "an object or null"."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is list:
        return ("lists" if plural else "a list") + f" of {_describe(args[0], plural=True)}"
    if origin is dict:
        return "objects" if plural else "an object"
    if args:
        return " or ".join(_describe(a, plural) for a in args)
    names = {str: "text", int: "an integer", float: "a finite number", bool: "true/false", type(None): "null"}
    plurals = {str: "texts", int: "integers", float: "finite numbers", bool: "true/false values", type(None): "nulls"}
    return (plurals if plural else names).get(hint, getattr(hint, "__name__", str(hint)))
