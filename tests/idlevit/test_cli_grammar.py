"""One flag grammar for every command: walk each command's parser and check the shared flags.

Lists are comma-separated (the old space-separated form parses, with one warning line); the model is
``--onnx`` / ``--engine`` / ``--ckpt``, with the same words in every ``--help``; no command shows
``--model`` or ``--batch`` (their old meanings live on as hidden aliases that warn).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from idlevit.cli import MODEL_FLAGS, ListAction
from idlevit.errors import ToolkitError

from ..commands import ROOT, command_modules, command_parser, positional_stand_ins
from ..test_commands import COMMANDS

MODULES = command_modules()
#: Files that exist, to stand in for a model in a list.
FILES = (str(ROOT / "README.md"), str(ROOT / "pyproject.toml"))


def visible_options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {
        option: action
        for action in parser._actions
        if action.help != argparse.SUPPRESS
        for option in action.option_strings
    }


def two_items(action: ListAction) -> list[str]:
    """Two valid items for a list flag."""
    if getattr(action, "model_flag", None):
        return list(FILES)
    if action.item_choices:
        return list(action.item_choices[:2])
    return {int: ["1", "8"], float: ["0.5", "0.7"]}.get(action.convert, ["8.6", "8.9"])


def test_every_command_is_found() -> None:
    assert set(COMMANDS) <= set(MODULES), sorted(set(COMMANDS) - set(MODULES))


@pytest.mark.parametrize("module", MODULES)
def test_no_command_shows_the_old_names(module: str) -> None:
    parser = command_parser(module)
    shown = visible_options(parser)
    assert "--model" not in shown and "--batch" not in shown, module
    for option, action in shown.items():
        # a list is a ListAction (comma-separated); no other flag takes several words or repeats to add up
        assert action.nargs not in ("+", "*") or isinstance(action, ListAction), (module, option)
        assert not isinstance(action, argparse._AppendAction), (module, option)
        if action.metavar and ",..." in str(action.metavar):
            assert isinstance(action, ListAction), (module, option)


@pytest.mark.parametrize("module", MODULES)
def test_model_flags_say_the_same_thing(module: str, tmp_path: Path) -> None:
    parser = command_parser(module)
    for option, action in visible_options(parser).items():
        if option in MODEL_FLAGS:
            assert action.help.startswith(MODEL_FLAGS[option] + ";"), (module, option, action.help)
            assert getattr(action, "model_flag", None) == option, (module, option)
            with pytest.raises(ToolkitError, match="does not exist"):
                parser.parse_args([option, str(tmp_path / "missing"), *positional_stand_ins(parser)])


@pytest.mark.parametrize("module", MODULES)
def test_every_list_flag_takes_commas_and_warns_about_spaces(module: str, capsys: pytest.CaptureFixture[str]) -> None:
    parser = command_parser(module)
    lists = {option: action for option, action in visible_options(parser).items() if isinstance(action, ListAction)}
    for option, action in lists.items():
        items = two_items(action)
        rest = positional_stand_ins(parser)
        comma = getattr(parser.parse_args([option, ",".join(items), *rest]), action.dest)
        assert len(comma) == 2 and capsys.readouterr().err == "", (module, option)
        spaced = getattr(parser.parse_args([option, *items, *rest]), action.dest)
        err = capsys.readouterr().err
        assert spaced == comma and err.count("\n") == 1 and "deprecated" in err, (module, option, err)


def test_the_shared_list_flags_are_lists() -> None:
    """The flags the issue found space-separated or comma-separated by command: lists everywhere now."""
    expected = {
        "benchmarks.latency": ("--batch-sizes", "--keep-rates", "--graphs", "--backends", "--precisions"),
        "benchmarks.quantization": ("--batch-sizes", "--plans"),
        "validate.parity": ("--batch-sizes",),
        "export.trt": ("--compute-capabilities", "--plugins"),
    }
    for module, options in expected.items():
        shown = visible_options(command_parser(module))
        for option in options:
            assert isinstance(shown[option], ListAction), (module, option)


@pytest.mark.parametrize(
    ("module", "old", "new", "value"),
    [
        ("export.onnx", "--batch", "static_batch", "4"),
        ("engines.infer", "--batch", "batch_size", "4"),
        ("benchmarks.profile", "--batch", "batch_size", "4"),
    ],
)
def test_old_batch_flags_warn_and_still_work(
    module: str, old: str, new: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = command_parser(module)
    args = parser.parse_args([old, value, *positional_stand_ins(parser)])
    err = capsys.readouterr().err
    assert getattr(args, new) == int(value) and err.count("\n") == 1 and f"{old} is deprecated" in err


def test_infer_model_alias_warns(capsys: pytest.CaptureFixture[str]) -> None:
    args = command_parser("engines.infer").parse_args(["--model", FILES[0], "x.png"])
    err = capsys.readouterr().err
    assert args.model == FILES[0] and "--model is deprecated" in err and "--onnx or --engine" in err
