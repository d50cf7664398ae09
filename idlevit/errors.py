"""Errors the toolkit reports to users, and the exit code each one ends a command with.

Every command line of the toolkit (:func:`idlevit.cli.run_cli`) turns a :class:`ToolkitError`
into one line on stderr (``error: <what is wrong>; <how to fix it>``) and its exit code,
instead of a traceback.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_CHECK_FAILED = 1  # the command ran, and a check it was asked for did not hold
EXIT_BAD_INPUT = 2  # bad checkpoint, arch, schedule, file or flag
EXIT_MISSING_DEPENDENCY = 3  # an optional package (TensorRT, onnxruntime-gpu, ...) is absent
EXIT_BUILD_FAILED = 4  # TensorRT parsed or built nothing
EXIT_INTERNAL = 70  # an unexpected exception: a bug to report (EX_SOFTWARE)
EXIT_SIGINT = 130  # interrupted by Ctrl-C (128 + SIGINT)
EXIT_SIGTERM = 143  # terminated (128 + SIGTERM)


def shown(value: object, limit: int = 60) -> str:
    """``value`` as an error message quotes it: its repr (an exception's own text), cut to ``limit`` characters."""
    text = str(value) if isinstance(value, BaseException) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class ToolkitError(Exception):
    """A problem the user can fix; its message names the problem and the fix."""

    exit_code = EXIT_BAD_INPUT


class CheckpointError(ToolkitError):
    """The checkpoint file cannot be read or does not fit the requested architecture."""


class UnsafeCheckpointError(CheckpointError):
    """The checkpoint pickle asks to run code that is not on the allow-list."""


class ScheduleError(ToolkitError):
    """The idle-layer schedule (layers, keep ratios) is invalid for the model."""


class MissingDependencyError(ToolkitError):
    """An optional runtime (TensorRT, onnxruntime-gpu, ...) is not installed."""

    exit_code = EXIT_MISSING_DEPENDENCY


class BuildError(ToolkitError):
    """A TensorRT parse or build failed."""

    exit_code = EXIT_BUILD_FAILED


class CheckFailed(ToolkitError):
    """A verification ran and its thresholds did not hold."""

    exit_code = EXIT_CHECK_FAILED


#: The packages of the PyTorch side (the model, the exporter, training, the PyTorch reference).
TORCH_PACKAGES = ("torch", "torchvision", "timm")
#: How to add them to an install made with the device line (``pip install -e .``).
TORCH_INSTALL = "pip install -e '.[torch]' (torch, torchvision and timm; the device install leaves them out)"


def missing_torch_package() -> str | None:
    """The first of :data:`TORCH_PACKAGES` that is not installed here (found without importing it), else None."""
    import importlib.util  # lazy: only asked where the PyTorch side is needed

    for name in TORCH_PACKAGES:
        try:
            if importlib.util.find_spec(name) is None:
                return name
        except (ImportError, ValueError):
            return name
    return None


def require_torch(what: str) -> None:
    """Exit 3 in one line naming ``what`` needs PyTorch when torch, torchvision or timm is missing."""
    missing = missing_torch_package()
    if missing:
        raise torch_missing(what, missing)


def torch_missing(what: str, package: str) -> MissingDependencyError:
    return MissingDependencyError(f"{what} needs PyTorch, and {package} is not installed here; {TORCH_INSTALL}")


def as_missing_dependency(err: BaseException) -> MissingDependencyError | None:
    """A ``ModuleNotFoundError`` of the PyTorch side as the one-line exit-3 error (None for any other error)."""
    name = getattr(err, "name", None) or ""
    if isinstance(err, ModuleNotFoundError) and name.split(".")[0] in TORCH_PACKAGES:
        return torch_missing("this command", name.split(".")[0])
    return None
