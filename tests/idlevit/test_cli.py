"""The command runner: messages start on a line of their own, even over a running progress bar."""

from __future__ import annotations

import io
import sys

import pytest

from idlevit.cli import fail, progress, warn


class Terminal(io.StringIO):
    """stderr as a terminal: progress bars draw on it."""

    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("say", ["warn", "fail"])
def test_a_message_never_shares_a_line_with_a_progress_bar(say: str, monkeypatch: pytest.MonkeyPatch) -> None:
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    bar = progress(range(22), desc="checking", unit="batch", file=terminal)
    next(iter(bar))
    assert "checking" in terminal.getvalue()  # the bar is drawn, mid-line
    if say == "warn":
        warn("something to know")
    else:
        with pytest.raises(SystemExit):
            fail("needs a CUDA GPU; run it on one", 3)
    text = terminal.getvalue()
    word = "warning: something to know" if say == "warn" else "error: needs a CUDA GPU; run it on one"
    before = text[: text.index(word)]
    assert before.endswith("\n"), repr(text)  # the message begins a line


def test_no_bar_when_stderr_is_a_log(monkeypatch: pytest.MonkeyPatch) -> None:
    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)
    for _ in progress(range(5), desc="checking", file=log):
        pass
    assert log.getvalue() == ""
