"""The toolkit's commands, found as they are written: every module with a ``build_parser()`` that runs as
``python -m``. Read from the source text, so finding them imports nothing."""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

from idlevit.cli import COMMAND_PACKAGES

ROOT = Path(__file__).resolve().parents[1]


def command_modules() -> list[str]:
    """``export.trt``, ``validate.parity``, ...: each module of a toolkit package with a parser and a ``__main__``."""
    found = []
    for package in COMMAND_PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            text = path.read_text()
            if "def build_parser(" in text and 'if __name__ == "__main__":' in text:
                found.append(".".join(path.relative_to(ROOT).with_suffix("").parts))
    return found


def command_parser(module: str) -> argparse.ArgumentParser:
    return importlib.import_module(module).build_parser()


def positional_stand_ins(parser: argparse.ArgumentParser) -> list[str]:
    """A value for each required positional argument (the images of engines.infer)."""
    return ["x.png" for action in parser._actions if not action.option_strings and action.nargs in ("+", None)]
