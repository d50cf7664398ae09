"""The one way every command of the toolkit runs: parse, work, and end with a documented exit code.

:func:`run_cli` wraps a command's ``main``: a :class:`~idlevit.errors.ToolkitError` becomes one
line on stderr (``error: <what is wrong>; <how to fix it>``) and its exit code, Ctrl-C exits
130 and SIGTERM 143 (temporary files are removed on the way out, see
:func:`idlevit.fileio.atomic_write`), and anything unexpected exits 70 with one line that asks
for a report (``IDLEVIT_DEBUG=1`` prints the traceback too). :func:`cli_parser` makes every
command's parser, whose usage errors are one line as well, and :func:`progress` its progress
bars, which stay off when stderr is not a terminal.

This module imports nothing heavy: a command parses its arguments (and answers ``--help``)
before torch, onnx or TensorRT load.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import traceback
from collections.abc import Callable, Iterable
from typing import Any, NoReturn

from .errors import (
    EXIT_BAD_INPUT,
    EXIT_INTERNAL,
    EXIT_OK,
    EXIT_SIGINT,
    EXIT_SIGTERM,
    ToolkitError,
    as_missing_dependency,
)

#: Set to 1 to see the traceback of an unexpected error.
DEBUG_ENV = "IDLEVIT_DEBUG"


class Terminated(BaseException):
    """SIGTERM arrived; raised in the main thread so that ``finally`` blocks clean up."""


def _raise_terminated(signum: int, _frame: object) -> None:
    raise Terminated(signum)


#: Longest error line printed; a longer message (a runaway list, a quoted file) is cut in the middle.
MAX_LINE = 600


def _one_line(text: str, limit: int = MAX_LINE) -> str:
    """``text`` on one line, at most ``limit`` characters (the start and the end kept: the fix comes last)."""
    line = " ".join(part.strip() for part in str(text).splitlines() if part.strip())
    if len(line) <= limit:
        return line
    head = limit * 2 // 3
    return f"{line[:head]} [...] {line[len(line) - (limit - head - 7) :]}"


def _close_progress_bars() -> None:
    """End any progress bar so that the message that follows starts on a line of its own."""
    tqdm_module = sys.modules.get("tqdm")
    if tqdm_module is None:
        return
    for bar in list(getattr(tqdm_module.tqdm, "_instances", ())):
        bar.close()


def _message(err: ToolkitError) -> str:
    """The error's own words; one re-raised from a worker process (torch's DataLoader wraps it in the
    worker's traceback, ``Caught ToolkitError in DataLoader worker process 0. Original Traceback ...``)
    is reduced to its last line, the original message."""
    text = str(err)
    if "Original Traceback" not in text:
        return text
    last = text.strip().splitlines()[-1]
    return re.sub(r"^[\w.]+: ", "", last, count=1)


def fail(message: str, code: int) -> NoReturn:
    """Print ``error: message`` as one line on stderr and exit with ``code``."""
    _close_progress_bars()
    sys.stdout.flush()
    print(f"error: {_one_line(message)}", file=sys.stderr, flush=True)
    sys.exit(code)


def warn(message: str) -> None:
    """Print ``warning: message`` as one line on stderr: something the user should know, not a failure."""
    _close_progress_bars()
    sys.stdout.flush()
    print(f"warning: {_one_line(message)}", file=sys.stderr, flush=True)


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> NoReturn:
    """Run a command's ``main`` and exit with the code the README documents for what happened."""
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        code = main(argv)
    except ToolkitError as err:
        fail(_message(err), err.exit_code)
    except KeyboardInterrupt:
        fail("interrupted (Ctrl-C)", EXIT_SIGINT)
    except Terminated:
        fail("terminated (SIGTERM)", EXIT_SIGTERM)
    except Exception as err:  # noqa: BLE001 - the one place that turns a bug into a report line
        missing = as_missing_dependency(err)  # torch, torchvision or timm absent (a device install): exit 3
        if missing is not None:
            fail(str(missing), missing.exit_code)
        if os.environ.get(DEBUG_ENV) == "1":
            _close_progress_bars()
            traceback.print_exc()
        fail(
            f"internal error: {type(err).__name__}: {_one_line(str(err), 400)}; please report it, "
            f"{DEBUG_ENV}=1 shows the traceback",
            EXIT_INTERNAL,
        )
    finally:
        signal.signal(signal.SIGTERM, previous)
    sys.stdout.flush()
    sys.exit(code or EXIT_OK)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (``error: ...; see <prog> --help``), exit 2."""

    def error(self, message: str) -> NoReturn:
        fail(f"{message}; see `{self.prog} --help`", EXIT_BAD_INPUT)


def cli_parser(prog: str, doc: str | None, epilog: str) -> argparse.ArgumentParser:
    """The toolkit's argument parser: the module docstring's first paragraph, an epilog kept as written."""
    return _Parser(
        prog=prog,
        description=(doc or "").split("\n\n")[0],
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def progress(iterable: Iterable[Any] | None = None, enabled: bool = True, **kwargs: Any) -> Any:
    """A tqdm bar on stderr, shown only when stderr is a terminal (no carriage returns in logs)."""
    from tqdm.auto import tqdm  # lazy: tqdm is needed only once work starts

    show = enabled and sys.stderr.isatty()
    return tqdm(iterable, disable=not show, **kwargs)
