"""Remembers the ONNX file that ``export.onnx`` wrote last, so ``export.trt`` can default to it.

The record is ``.idlevit/last_export.json`` in the working directory (override the folder with
``IDLEVIT_STATE_DIR``): run both commands from the same folder and the second finds the first's
output. The record is a convenience: failing to write it is a warning (the export itself
succeeded), and a record that cannot be read is named, not followed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .cli import warn
from .errors import ToolkitError
from .fileio import atomic_write


def state_file() -> Path:
    return Path(os.environ.get("IDLEVIT_STATE_DIR", ".idlevit")) / "last_export.json"


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
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as err:
        raise ToolkitError(
            f"cannot read the last-export record {os.fspath(path)!r} ({getattr(err, 'strerror', None) or err}); "
            "pass the file explicitly (--onnx / --model) or delete the record"
        ) from None
    try:
        recorded = json.loads(text)["onnx"]
        if not isinstance(recorded, str) or not recorded:
            raise TypeError(recorded)
    except (ValueError, KeyError, TypeError):
        raise ToolkitError(
            f'the last-export record {os.fspath(path)!r} is corrupt (expected {{"onnx": path}}); '
            "pass the file explicitly (--onnx / --model), or export again to rewrite it"
        ) from None
    found = Path(recorded)
    return found if found.is_file() else None


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
