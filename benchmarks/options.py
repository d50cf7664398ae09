"""Choices and list flags of the benchmark commands (plain Python: ``--help`` answers before torch loads)."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import TypeVar

from idlevit.cli import check_flag_value, warn
from idlevit.errors import ToolkitError

T = TypeVar("T")

#: Base keep rates timed by default (the published r, r², r³ schedules); the dense model is always added.
DEFAULT_KEEP_RATES = (0.5, 0.6, 0.7, 0.8, 0.9)
#: Backends in the order they are timed; ``benchmarks.backends.BACKENDS`` defines each one.
BACKEND_NAMES = ("pytorch", "onnxruntime-cpu", "onnxruntime-cuda", "tensorrt")
#: Graphs ONNX Runtime times, each for every keep rate and the dense model: the default export
#: (dynamo exporter), the TorchScript exporter's, and the default export optimised for ONNX Runtime.
DYNAMO_GRAPH, TORCHSCRIPT_GRAPH, OPTIMIZED_GRAPH = "dynamo", "torchscript", "optimized"
GRAPH_NAMES = (DYNAMO_GRAPH, TORCHSCRIPT_GRAPH, OPTIMIZED_GRAPH)
DEFAULT_GRAPHS = (DYNAMO_GRAPH, OPTIMIZED_GRAPH)


def add_list_argument(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup, flag: str, metavar: str, **kwargs: object
) -> None:
    """A list flag written comma-separated (``--batch-sizes 1,8``); the old space-separated form still parses.

    The values stay text here (``nargs="+"``); :func:`parse_list` converts them and warns about
    the old form, so ``--help`` and usage errors need nothing else.
    """
    parser.add_argument(flag, nargs="+", metavar=metavar, **kwargs)


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
    check_flag_value(flag, converted)
    return converted
