"""The one way every command of the toolkit runs: parse, work, and end with a documented exit code.

:func:`run_cli` wraps a command's ``main``: a :class:`~idlevit.errors.ToolkitError` becomes one
line on stderr (``error: <what is wrong>; <how to fix it>``) and its exit code, Ctrl-C exits
130 and SIGTERM 143 (temporary files are removed on the way out, see
:func:`idlevit.fileio.atomic_write`), a known failure of a library or of the machine (not enough
memory, a full disk, see :mod:`idlevit.failures`) exits 2 with its fix, and anything unexpected
exits 70 with one line that asks for a report (``IDLEVIT_DEBUG=1`` prints the traceback too).
A signal that arrives while a command is still being imported (before :func:`run_cli` runs)
ends it the same way: importing this module in a command's process installs handlers that say
so in one line and exit 130 / 143. :func:`cli_parser` makes every
command's parser, whose usage errors are one line as well, and :func:`progress` its progress
bars, which stay off when stderr is not a terminal.

One flag grammar for every command: lists are comma-separated (:func:`add_list_argument`; the old
space-separated form still parses, with a one-line warning), the model is always ``--onnx``,
``--engine`` or ``--ckpt`` (:func:`add_model_argument`, the same words in every ``--help``), and a
renamed flag lives on as a hidden alias that warns (:func:`add_deprecated_alias`). A model file
that does not exist is refused while the arguments parse, before anything heavy loads.

This module imports nothing heavy: a command parses its arguments (and answers ``--help``)
before torch, onnx or TensorRT load.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from .configs import check_batch, check_threads
from .errors import EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_OK, EXIT_SIGINT, EXIT_SIGTERM, ToolkitError
from .failures import known_failure

#: Set to 1 to see the traceback of an unexpected error.
DEBUG_ENV = "IDLEVIT_DEBUG"


class Terminated(BaseException):
    """SIGTERM arrived; raised in the main thread so that ``finally`` blocks clean up."""


def _raise_terminated(signum: int, _frame: object) -> None:
    raise Terminated(signum)


#: The toolkit's packages: a process whose ``__main__`` is one of their modules is a command.
COMMAND_PACKAGES = ("idlevit", "plugins", "engines", "validate", "export", "benchmarks")
#: What a signal ends a command with: its one line and exit code.
SIGNAL_ENDINGS: dict[int, tuple[str, int]] = {
    signal.SIGINT: ("interrupted (Ctrl-C)", EXIT_SIGINT),
    signal.SIGTERM: ("terminated (SIGTERM)", EXIT_SIGTERM),
}
#: Handlers in place before :func:`_install_early_handlers` replaced them (restored once a command is done).
_BEFORE_EARLY: dict[int, Any] = {}


def _exit_early(signum: int, _frame: object) -> None:
    """A signal before :func:`run_cli` runs (the command is still importing; nothing is written yet): its line, its
    code, at once (``os._exit``: an exception here would be a traceback from the middle of an import)."""
    message, code = SIGNAL_ENDINGS[signum]
    os.write(2, f"error: {message}\n".encode())
    os._exit(code)


def _running_a_command() -> bool:
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return spec is not None and spec.name.split(".")[0] in COMMAND_PACKAGES


def _install_early_handlers() -> None:
    """In a command's process, end SIGINT and SIGTERM in one line from now on, imports included. Handlers the
    parent set (SIG_IGN under nohup) are left alone, and so is every process that is not a command."""
    if not _running_a_command() or threading.current_thread() is not threading.main_thread():
        return
    for signum in SIGNAL_ENDINGS:
        current = signal.getsignal(signum)
        if current in (signal.SIG_DFL, signal.default_int_handler):
            _BEFORE_EARLY[signum] = current
            signal.signal(signum, _exit_early)


_install_early_handlers()


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
    previous = {
        signal.SIGTERM: signal.signal(signal.SIGTERM, _raise_terminated),
        signal.SIGINT: signal.getsignal(signal.SIGINT),
    }
    if previous[signal.SIGINT] is _exit_early:  # Ctrl-C is KeyboardInterrupt while the command works
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        code = main(argv)
    except ToolkitError as err:
        fail(_message(err), err.exit_code)
    except KeyboardInterrupt:
        fail("interrupted (Ctrl-C)", EXIT_SIGINT)
    except Terminated:
        fail("terminated (SIGTERM)", EXIT_SIGTERM)
    except Exception as err:  # noqa: BLE001 - the one place that turns a bug into a report line
        known = known_failure(err)
        if known is not None:
            if os.environ.get(DEBUG_ENV) == "1":
                _close_progress_bars()
                traceback.print_exc()
            fail(str(known), known.exit_code)
        if os.environ.get(DEBUG_ENV) == "1":
            _close_progress_bars()
            traceback.print_exc()
        fail(
            f"internal error: {type(err).__name__}: {_one_line(str(err), 400)}; please report it, "
            f"{DEBUG_ENV}=1 shows the traceback",
            EXIT_INTERNAL,
        )
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, _BEFORE_EARLY.get(signum, handler) if handler is _exit_early else handler)
    sys.stdout.flush()
    sys.exit(code or EXIT_OK)


#: Largest whole number any flag takes (a count, a size, a seed, a layer): anything above is a typo, refused before
#: it overflows a C integer or sizes an allocation; flags with a tighter range check it where they are read.
MAX_FLAG_INT = 2**31 - 1


def check_flag_value(flag: str, value: Any) -> None:
    """The range every number a flag gives takes, lists included: whole numbers in 0..:data:`MAX_FLAG_INT`,
    other numbers finite (a NaN makes every comparison false: a check that silently never fails)."""
    items = value if isinstance(value, (list, tuple)) else [value]
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (int, float)):
            continue
        if isinstance(item, int) and not 0 <= item <= MAX_FLAG_INT:
            raise ToolkitError(f"{flag} {item} is not a whole number from 0 to {MAX_FLAG_INT}")
        if isinstance(item, float) and not math.isfinite(item):
            raise ToolkitError(f"{flag} {item} is not a finite number")


#: Flags that hold one kind of value in every command, checked by that kind's one validator as the arguments parse
#: (a new command's ``--threads`` is checked without a line of its own): thread and worker counts, the batch size
#: of a run (profile bounds are checked with the profile: engines.builder, engines.deploy).
KIND_CHECKS: dict[str, Callable[[str, int], int]] = {
    **dict.fromkeys(("threads", "workers"), check_threads),
    **dict.fromkeys(("batch", "batch_size", "batch_sizes"), check_batch),
}


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (``error: ...; see <prog> --help``), exit 2, that refuses a missing
    model file (a flag of :func:`add_model_argument`) as soon as the arguments parse."""

    def error(self, message: str) -> NoReturn:
        fail(f"{message}; see `{self.prog} --help`", EXIT_BAD_INPUT)

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> tuple[argparse.Namespace, list[str]]:
        """Parsed as argparse does; then every model file present, and every number a flag gave in range
        (:func:`check_flag_value`, and :data:`KIND_CHECKS` by the flag's kind): a bad one is a usage error naming
        the flag. (``parse_args`` comes through here too.)"""
        parsed, extras = super().parse_known_args(args, namespace)
        for action in self._actions:
            flag = getattr(action, "model_flag", None)
            if flag is not None:
                check_model_file(flag, getattr(parsed, action.dest, None))
        for action in self._actions:
            value = getattr(parsed, action.dest, None)
            if not action.option_strings or value is None or value is action.default:
                continue
            flag = action.option_strings[0]
            one_text = isinstance(action, argparse._StoreAction) and action.nargs is None and action.type is None
            if one_text and isinstance(value, list):  # argparse's `--flag=--`: an empty list, not the text
                self.error(f"argument {flag}: expected one argument")
            try:
                check_flag_value(flag, value)
                check = KIND_CHECKS.get(action.dest)
                for item in value if isinstance(value, (list, tuple)) else [value]:
                    if check is not None and isinstance(item, int):
                        check(flag, item)
            except ToolkitError as err:
                self.error(str(err))
        return parsed, extras


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


T = TypeVar("T")


def parse_list(
    values: Sequence[str] | str | None,
    flag: str,
    convert: Callable[[str], T],
    example: str,
    choices: Sequence[str] | None = None,
) -> list[T] | None:
    """``["1,8"]`` -> ``[1, 8]``; ``["1", "8"]`` too, with a one-line deprecation warning; a bad item is named."""
    if values is None:
        return None
    tokens = [values] if isinstance(values, str) else list(values)
    if len(tokens) > 1:
        warn(
            f"{flag} {' '.join(tokens)}: space-separated lists are deprecated and will be refused in a later "
            f"release; write {flag} {','.join(tokens)}"
        )
    items = [item.strip() for token in tokens for item in token.split(",") if item.strip()]
    if not items:
        raise ToolkitError(f"{flag} is empty; write e.g. {flag} {example}")
    if choices is not None:
        unknown = [item for item in items if item not in choices]
        if unknown:
            raise ToolkitError(f"{flag}: unknown {', '.join(unknown)}; choose from {', '.join(choices)}")
    converted = []
    for item in items:
        try:
            converted.append(convert(item))
        except ValueError:
            raise ToolkitError(f"{flag}: cannot read {item!r}; write e.g. {flag} {example}") from None
    return converted


class ListAction(argparse.Action):
    """A comma-separated list flag, converted by :func:`parse_list` as it parses; given twice, the lists join."""

    def __init__(
        self,
        option_strings: list[str],
        dest: str,
        convert: Callable[[str], Any] = str,
        example: str = "a,b",
        **kwargs: Any,
    ) -> None:
        self.convert, self.example = convert, example
        self.item_choices = kwargs.pop("choices", None)
        super().__init__(option_strings, dest, nargs="+", **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option: Any = None):
        items = parse_list(values, option or self.option_strings[0], self.convert, self.example, self.item_choices)
        current = getattr(namespace, self.dest, None)
        given_before = current is not None and current is not self.default
        setattr(namespace, self.dest, [*current, *items] if given_before else items)


def add_list_argument(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    flag: str,
    metavar: str,
    convert: Callable[[str], Any] = str,
    example: str = "a,b",
    **kwargs: Any,
) -> None:
    """A list flag written comma-separated (``--batch-sizes 1,8``), its items converted with ``convert`` (and
    checked against ``choices``); the old space-separated form still parses, with a one-line warning."""
    parser.add_argument(flag, action=ListAction, metavar=metavar, convert=convert, example=example, **kwargs)


#: The model flags: the same meaning in every command (a command's help adds its default and its use).
MODEL_FLAGS = {
    "--onnx": "an ONNX file written by `python -m export.onnx`",
    "--engine": "a TensorRT engine written by `python -m export.trt` (its .json sidecar beside it)",
    "--ckpt": "an IdleViT checkpoint (.pth; 'demo': the bundled demo model)",
}
#: What to do about a missing model file, per flag.
_MISSING = {
    "--onnx": ("ONNX file", "export one with `python -m export.onnx`"),
    "--engine": ("engine", "build one with `python -m export.trt`"),
    "--ckpt": ("checkpoint", "pass a .pth file (or 'demo')"),
}


def check_model_file(flag: str, value: str | list[str] | None) -> None:
    """A given ``--onnx`` / ``--engine`` / ``--ckpt`` (or each of a list) must be a file (``--ckpt demo`` is one);
    any other ``flag`` (an old name for either) is judged by the file's suffix, ``.engine`` or an ONNX."""
    for path in value if isinstance(value, list) else [value]:
        if path is None or (flag == "--ckpt" and path == "demo"):
            continue
        if not Path(path).is_file():
            what, fix = _MISSING[flag if flag in _MISSING else "--engine" if path.endswith(".engine") else "--onnx"]
            state = "is a folder" if Path(path).is_dir() else "does not exist"
            raise ToolkitError(f"{what} {os.fspath(path)!r} {state}; {fix}")


def add_model_argument(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup, flag: str, extra: str, many: bool = False
) -> None:
    """``--onnx`` / ``--engine`` / ``--ckpt`` with their one meaning (:data:`MODEL_FLAGS`), then ``extra`` (the
    command's default and use); ``many``: a comma-separated list of them. A missing file is refused as it parses."""
    meaning = MODEL_FLAGS[flag]
    if many:
        help_text = f"{meaning}; several, comma-separated; {extra}"
        action = parser.add_argument(flag, action=ListAction, metavar=f"{flag[2:].upper()},...", help=help_text)
    else:
        action = parser.add_argument(flag, default=None, metavar=flag[2:].upper(), help=f"{meaning}; {extra}")
    action.model_flag = flag  # type: ignore[attr-defined]


class _DeprecatedAlias(argparse.Action):
    """An old flag name: stores like the new one and says, in one line, to write the new one."""

    def __init__(self, option_strings: list[str], dest: str, new: str = "", **kwargs: Any) -> None:
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option: Any = None):
        warn(f"{option} is deprecated and will be refused in a later release; write {self.new}")
        setattr(namespace, self.dest, values)


def add_deprecated_alias(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup, old: str, new: str, **kwargs: Any
) -> None:
    """``old`` parses as ``new`` did (same ``dest``, ``type``), hidden from ``--help``, with a one-line warning;
    ``model_file=True``: a model file, refused while parsing when it does not exist (as :func:`add_model_argument`)."""
    kwargs.setdefault("dest", new.lstrip("-").replace("-", "_"))
    model_file = kwargs.pop("model_file", False)
    action = parser.add_argument(old, action=_DeprecatedAlias, new=new, help=argparse.SUPPRESS, **kwargs)
    if model_file:
        action.model_flag = old  # type: ignore[attr-defined]


def positional_alias(old: str | None, new: str | None, flag: str) -> str | None:
    """A model given the old way, as a positional argument: warned, and refused beside ``flag``."""
    if old is None:
        return new
    if new is not None:
        raise ToolkitError(f"two models given ({old} and {flag} {new}); pass one with {flag}")
    warn(f"a positional model path is deprecated and will be refused in a later release; write {flag} {old}")
    check_model_file(flag, old)
    return old
