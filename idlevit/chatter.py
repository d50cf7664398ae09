"""Third-party chatter kept off the terminal: what libraries write while a step runs, shown only when asked or when
the step fails.

TensorRT, Polygraphy, ModelOpt, ONNX Runtime and onnx-graphsurgeon print notes, warnings and
progress bars of their own, from Python and from C++, straight to the process's stdout and stderr.
:func:`captured` points file descriptors 1 and 2 at a temporary file for the length of a step, so
every one of those writes lands there whatever wrote it; ``show=True`` (a command's ``--verbose``)
lets it through as it comes. When the step fails, what it wrote is replayed on stdout before the
error travels on, so a failure still shows the library's own words (stderr keeps the command's
one-line error; an interrupted step replays nothing).

Plain Python, nothing heavy: every package may use it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import tempfile
from collections.abc import Iterator


def _flush() -> None:
    """Python's and C's buffers out to the descriptors they belong to, before the descriptors move."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).fflush(None)


@contextlib.contextmanager
def captured(show: bool = False, step: str = "the step") -> Iterator[None]:
    """Capture everything written to stdout and stderr (file descriptors 1 and 2) inside the block.

    ``show``: capture nothing (``--verbose``). On an error, the captured text is written to stdout,
    headed by ``step``, and the error goes on; on success (or Ctrl-C, SIGTERM) it is dropped.
    """
    if show:
        yield
        return
    try:
        saved = (os.dup(1), os.dup(2))
    except OSError:  # no descriptors to move (closed by the caller): nothing to capture
        yield
        return
    _flush()
    with tempfile.TemporaryFile() as sink:
        try:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            try:
                yield
            finally:
                _flush()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
        except Exception:
            sink.seek(0)
            text = sink.read().decode("utf-8", "replace").strip()
            if text:
                sys.stdout.write(f"--- what {step} printed before it failed ---\n{text}\n---\n")
                sys.stdout.flush()
            raise
        finally:
            for fd in saved:
                os.close(fd)
