"""Class names for a deployed model: one per line, as Triton and ``engines.infer`` read them."""

from __future__ import annotations

import os
from pathlib import Path

from idlevit.errors import ToolkitError


def read_labels(path: str | os.PathLike[str] | None) -> list[str] | None:
    """Class names, one per line (blank lines skipped); ``None`` when no file is given."""
    if not path:
        return None
    try:
        return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    except OSError as err:
        raise ToolkitError(f"cannot read --labels {path}: {err.strerror}") from None
