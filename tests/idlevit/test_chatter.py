"""idlevit.chatter: what libraries write to the terminal, from Python or C, is kept off it unless asked or failing."""

from __future__ import annotations

import ctypes
import os
import sys

import pytest

from idlevit.chatter import captured

LIBC = ctypes.CDLL(None)


def chatter(text: str) -> None:
    """Write as a C library does (the descriptor, and C's own buffered stdout) and as Python does."""
    os.write(2, f"{text} (fd 2)\n".encode())
    LIBC.printf(f"{text} (C stdout)\n".encode())
    print(f"{text} (python)", file=sys.__stdout__, flush=True)


def test_chatter_is_kept_off_the_terminal(capfd: pytest.CaptureFixture[str]) -> None:
    print("before", flush=True)
    with captured():
        chatter("noise")
    print("after", flush=True)
    out, err = capfd.readouterr()
    assert out == "before\nafter\n" and err == ""


def test_verbose_lets_it_through(capfd: pytest.CaptureFixture[str]) -> None:
    with captured(show=True):
        chatter("asked for")
    out, err = capfd.readouterr()
    assert "asked for (fd 2)" in err and "asked for (C stdout)" in out and "asked for (python)" in out


def test_a_failing_step_replays_what_it_wrote_on_stdout(capfd: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(RuntimeError, match="broke"):
        with captured(step="the build"):
            chatter("the library's own words")
            raise RuntimeError("broke")
    out, err = capfd.readouterr()
    assert out.startswith("--- what the build printed before it failed ---\n")
    for where in ("fd 2", "C stdout", "python"):
        assert f"the library's own words ({where})" in out
    assert err == ""  # stderr stays the command's one-line error
    with captured():  # the descriptors are back where they were
        pass
    os.write(1, b"still here\n")
    assert capfd.readouterr().out == "still here\n"
