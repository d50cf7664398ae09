"""Remembers the ONNX file that ``export.onnx`` wrote last, so ``export.trt`` can default to it.

The record is ``.idlevit/last_export.json`` in the working directory (override the folder with
``IDLEVIT_STATE_DIR``; set but empty counts as not set): run both commands from the same folder
and the second finds the first's output. The record is a convenience: failing to write it is a
warning (the export itself succeeded), and a record that cannot be read, or that names something
no file system path can be, is named, not followed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .cli import warn
from .errors import ToolkitError, shown
from .fileio import atomic_write

STATE_DIR_ENV = "IDLEVIT_STATE_DIR"
DEFAULT_STATE_DIR = ".idlevit"
#: A record is one short JSON object; anything much larger is not one this toolkit wrote.
MAX_RECORD_BYTES = 64 * 1024
#: Longest path a record may name (Linux's PATH_MAX).
MAX_PATH_CHARS = 4096


def state_file() -> Path:
    """Where the record lives: ``$IDLEVIT_STATE_DIR/last_export.json``, or ``.idlevit/`` when unset or empty."""
    return Path(os.environ.get(STATE_DIR_ENV) or DEFAULT_STATE_DIR) / "last_export.json"


def check_recorded_path(recorded: object) -> str:
    """The path a record names, when it can be one: non-empty text, no NUL, at most :data:`MAX_PATH_CHARS`
    characters; a one-line :class:`ToolkitError` otherwise."""
    if not isinstance(recorded, str) or not recorded or "\0" in recorded or len(recorded) > MAX_PATH_CHARS:
        raise ToolkitError(
            f"the last-export record {os.fspath(state_file())!r} is corrupt: it names {shown(recorded)}, not a "
            "path this system can open; pass the file explicitly (--onnx / --model), or export again to rewrite it"
        )
    return recorded


def record_last_export(onnx_path: str | os.PathLike[str]) -> bool:
    """Record ``onnx_path`` as the last export; on failure warn in one line and return False."""
    try:
        with atomic_write(state_file(), "w") as handle:
            json.dump({"onnx": str(Path(onnx_path).resolve())}, handle)
    except ToolkitError as err:
        warn(
            f"{os.fspath(onnx_path)} was written, but it could not be recorded as the last export ({err}); "
            "pass it explicitly to later commands (--onnx / --model), or set IDLEVIT_STATE_DIR to a writable folder"
        )
        return False
    return True


def last_export() -> Path | None:
    """The ONNX path last recorded here, if the record and the file still exist.

    No record (or a recorded file that is gone) is None; a record that is not what
    :func:`record_last_export` writes raises a one-line :class:`ToolkitError` naming it.
    """
    path = state_file()
    corrupt = (
        f'the last-export record {os.fspath(path)!r} is corrupt (expected {{"onnx": path}}); '
        "pass the file explicitly (--onnx / --model), or export again to rewrite it"
    )
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_RECORD_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as err:
        raise ToolkitError(
            f"cannot read the last-export record {os.fspath(path)!r} ({err.strerror or err}); "
            "pass the file explicitly (--onnx / --model) or delete the record"
        ) from None
    if len(raw) > MAX_RECORD_BYTES:
        raise ToolkitError(corrupt)
    try:
        recorded = json.loads(raw.decode("utf-8"))["onnx"]
    except (ValueError, KeyError, TypeError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise ToolkitError(corrupt) from None
    recorded = check_recorded_path(recorded)
    found = Path(recorded)
    try:
        return found if found.is_file() else None
    except OSError:  # a component too long for this file system, a loop of links: no file there
        return None


def given_or_last_export(path: str | os.PathLike[str] | None, flag: str) -> Path:
    """``path`` when given, else the last export recorded here; ``flag`` names the argument in the fix."""
    if path:
        return Path(path)
    found = last_export()
    if found is None:
        raise ToolkitError(
            f"no {flag} given and no export recorded in {state_file()}; run `python -m export.onnx` here first "
            f"or pass {flag}"
        )
    return found
