"""Remembers the ONNX file that ``export.onnx`` wrote last, so ``export.trt`` can default to it.

The record is ``.idlevit/last_export.json`` in the working directory (override the folder with
``IDLEVIT_STATE_DIR``): run both commands from the same folder and the second finds the first's
output.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .fileio import atomic_write


def state_file() -> Path:
    return Path(os.environ.get("IDLEVIT_STATE_DIR", ".idlevit")) / "last_export.json"


def record_last_export(onnx_path: str | os.PathLike[str]) -> None:
    with atomic_write(state_file(), "w") as handle:
        json.dump({"onnx": str(Path(onnx_path).resolve())}, handle)


def last_export() -> Path | None:
    """The ONNX path last recorded here, if the record and the file still exist."""
    try:
        path = Path(json.loads(state_file().read_text())["onnx"])
    except (OSError, ValueError, KeyError):
        return None
    return path if path.is_file() else None
