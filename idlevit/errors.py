"""Errors the toolkit reports to users, each with the exit code its CLI ends with.

Every command line of the toolkit turns a :class:`ToolkitError` into one line on stderr
(``error: <what is wrong>; <how to fix it>``) and its exit code, instead of a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import NoReturn

EXIT_OK = 0
EXIT_CHECK_FAILED = 1  # the command ran, and a check it was asked for did not hold
EXIT_BAD_INPUT = 2  # bad checkpoint, arch, schedule, file or flag
EXIT_MISSING_DEPENDENCY = 3  # an optional package (TensorRT, onnxruntime-gpu, ...) is absent
EXIT_BUILD_FAILED = 4  # TensorRT parsed or built nothing


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


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> NoReturn:
    """Run a CLI entry point, mapping :class:`ToolkitError` to one stderr line and its exit code."""
    try:
        code = main(argv)
    except ToolkitError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or EXIT_OK)


def cli_parser(prog: str, doc: str | None, epilog: str) -> argparse.ArgumentParser:
    """The toolkit's argument parser: the module docstring's first paragraph, an epilog kept as written."""
    return argparse.ArgumentParser(
        prog=prog,
        description=(doc or "").split("\n\n")[0],
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
