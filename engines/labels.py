"""Class names for a deployed model: one per line, as Triton and ``engines.infer`` read them."""

from __future__ import annotations

import os

from idlevit.errors import ToolkitError
from idlevit.fileio import read_text


def read_labels(path: str | os.PathLike[str] | None) -> list[str] | None:
    """Class names, one per line (blank lines skipped, spaces around a name dropped); ``None`` when no
    file is given. A missing, unreadable, non-UTF-8 or empty file is one line naming it."""
    if not path:
        return None
    where = os.fspath(path)
    try:
        text = read_text(path)
    except IsADirectoryError:
        raise ToolkitError(f"--labels {where} is a folder; pass a text file with one class name per line") from None
    except OSError as err:
        raise ToolkitError(
            f"cannot read --labels {where}: {err.strerror or err}; pass a readable text file, one class name a line"
        ) from None
    except UnicodeDecodeError as err:
        raise ToolkitError(
            f"--labels {where} is not UTF-8 text (byte {err.start}); pass a text file with one class name per line"
        ) from None
    except ValueError as err:
        raise ToolkitError(f"--labels {where} is {err}; pass a text file with one class name per line") from None
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise ToolkitError(f"--labels {where} holds no class names; write one class name per line")
    return names


def check_labels(labels: list[str] | None, num_classes: int, where: str = "--labels") -> None:
    """The file names exactly one class per model output (one line each)."""
    if labels is not None and len(labels) != num_classes:
        raise ToolkitError(
            f"{where} has {len(labels)} names but the model has {num_classes} classes; write one name per class"
        )
