"""Protobuf text format (what Triton's ``config.pbtxt`` is) written from nested dicts and lists.

A message is a dict whose keys are field names, in the order they are written. A value is a
scalar (``str``, ``int``, ``float``, ``bool``), an :class:`Enum` (written bare), a dict (a
nested message), or a list of scalars or of dicts (a repeated field). ``None`` leaves the field
out. Nothing here knows Triton's schema: the tests parse the text with Triton's own
``ModelConfig`` message.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_INDENT = "  "
#: Escapes of protobuf's text format (C style); every other control byte is written in octal.
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


@dataclass(frozen=True)
class Enum:
    """An enum value, written without quotes (``data_type: TYPE_FP32``)."""

    name: str

    def __post_init__(self) -> None:
        if not _IDENTIFIER.match(self.name):
            raise ValueError(f"enum value {self.name!r} is not an identifier")


def quote(text: str) -> str:
    """A string literal of the text format: UTF-8, C escapes, other control characters in octal."""
    out = []
    for char in text:
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\{ord(char):03o}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _scalar(value: Any, field: str) -> str:
    if isinstance(value, Enum):
        return value.name
    if isinstance(value, bool):  # before int: bool is an int
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"field {field}: {value} is not a finite number")
        return repr(value)
    if isinstance(value, str):
        return quote(value)
    raise TypeError(f"field {field}: cannot write a {type(value).__name__} in protobuf text format")


def _message_lines(message: Mapping[str, Any], depth: int) -> list[str]:
    pad = _INDENT * depth
    lines: list[str] = []
    for field, value in message.items():
        if not _IDENTIFIER.match(field):
            raise ValueError(f"{field!r} is not a protobuf field name")
        if value is None:
            continue
        if isinstance(value, Mapping):
            lines += [f"{pad}{field} {{", *_message_lines(value, depth + 1), f"{pad}}}"]
        elif isinstance(value, Sequence) and not isinstance(value, str):
            if not value:
                lines.append(f"{pad}{field}: []")
            elif all(isinstance(item, Mapping) for item in value):
                lines.append(f"{pad}{field} [")
                for i, item in enumerate(value):
                    close = "}," if i < len(value) - 1 else "}"
                    lines += [f"{pad}{_INDENT}{{", *_message_lines(item, depth + 2), f"{pad}{_INDENT}{close}"]
                lines.append(f"{pad}]")
            elif any(isinstance(item, Mapping) for item in value):
                raise TypeError(f"field {field}: a list mixes messages and scalars")
            else:
                lines.append(f"{pad}{field}: [{', '.join(_scalar(item, field) for item in value)}]")
        else:
            lines.append(f"{pad}{field}: {_scalar(value, field)}")
    return lines


def to_pbtxt(message: Mapping[str, Any]) -> str:
    """The message in protobuf text format, one field per line, nested messages indented."""
    return "\n".join(_message_lines(message, 0)) + "\n"
