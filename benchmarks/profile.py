"""``python -m benchmarks.profile --onnx MODEL.onnx``: where ONNX Runtime spends its time, per op type.

Runs the graph with ONNX Runtime's profiler on and sums kernel time per op type (after ONNX
Runtime's own fusions, so e.g. ``FusedMatMul`` and ``BiasGelu`` appear as such), to find what
an exported graph wastes: gathers and scatters, layout ops, shape arithmetic.

Needs no PyTorch. Example::

    python -m benchmarks.profile --onnx idlevit_deit_small_random.onnx --batch-size 8 --runs 5
"""

from __future__ import annotations

import argparse

from idlevit.cli import add_deprecated_alias, add_model_argument, cli_parser, positional_alias, run_cli
from idlevit.errors import EXIT_BAD_INPUT, EXIT_OK, ToolkitError
from idlevit.state import given_or_last_export


def build_parser() -> argparse.ArgumentParser:
    parser = cli_parser(
        "python -m benchmarks.profile",
        __doc__,
        f"exit codes: {EXIT_OK} done; {EXIT_BAD_INPUT} missing or foreign ONNX file.",
    )
    add_model_argument(parser, "--onnx", "to profile (default: the last export here)")
    parser.add_argument("path", nargs="?", default=None, help=argparse.SUPPRESS)  # the old positional form
    parser.add_argument("--batch-size", type=int, default=8, metavar="B", help="batch size (default 8)")
    add_deprecated_alias(parser, "--batch", "--batch-size", type=int)
    parser.add_argument("--runs", type=int, default=5, help="profiled runs, after one untimed run (default 5)")
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (default: all usable cores)")
    parser.add_argument("--top", type=int, default=20, help="op types listed, most expensive first (default 20)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.batch_size < 1 or args.runs < 1:
        raise ToolkitError("--batch-size and --runs must be >= 1")
    source = given_or_last_export(positional_alias(args.path, args.onnx, "--onnx"), "--onnx")
    if not source.is_file():
        raise ToolkitError(f"ONNX file {str(source)!r} does not exist; export one with `python -m export.onnx`")
    from .op_profile import profile_onnx  # lazy: onnx and ONNX Runtime load after the arguments parse

    print(profile_onnx(source, args.batch_size, args.runs, args.threads).format(args.top))
    return EXIT_OK


if __name__ == "__main__":
    run_cli(main)
