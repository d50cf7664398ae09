"""``python -m benchmarks.profile --onnx MODEL.onnx``: where ONNX Runtime spends its time, per op type.

Runs the graph with ONNX Runtime's profiler on and sums kernel time per op type (after ONNX
Runtime's own fusions, so e.g. ``FusedMatMul`` and ``BiasGelu`` appear as such), to find what
an exported graph wastes: gathers and scatters, layout ops, shape arithmetic.

Needs no PyTorch. Example::

    python -m benchmarks.profile --onnx idlevit_deit_small_random.onnx --batch 8 --runs 5
"""

from __future__ import annotations

import argparse

from idlevit.cli import cli_parser, run_cli, warn
from idlevit.errors import EXIT_BAD_INPUT, EXIT_OK, ToolkitError
from idlevit.state import given_or_last_export


def build_parser() -> argparse.ArgumentParser:
    parser = cli_parser(
        "python -m benchmarks.profile",
        __doc__,
        f"exit codes: {EXIT_OK} done; {EXIT_BAD_INPUT} missing or foreign ONNX file.",
    )
    parser.add_argument(
        "--onnx", default=None, help="an ONNX file written by `python -m export.onnx` (default: the last export here)"
    )
    parser.add_argument("path", nargs="?", default=None, help=argparse.SUPPRESS)  # the old positional form
    parser.add_argument("--batch", type=int, default=8, help="batch size (default 8)")
    parser.add_argument("--runs", type=int, default=5, help="profiled runs, after one untimed run (default 5)")
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (default: all usable cores)")
    parser.add_argument("--top", type=int, default=20, help="op types listed, most expensive first (default 20)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.batch < 1 or args.runs < 1:
        raise ToolkitError("--batch and --runs must be >= 1")
    if args.path and args.onnx:
        raise ToolkitError(f"two graphs given ({args.path} and --onnx {args.onnx}); pass one with --onnx")
    if args.path:
        warn(f"a positional ONNX path is deprecated and will be refused in a later release; write --onnx {args.path}")
    source = given_or_last_export(args.onnx or args.path, "--onnx")
    if not source.is_file():
        raise ToolkitError(f"ONNX file {str(source)!r} does not exist; export one with `python -m export.onnx`")
    from .op_profile import profile_onnx  # lazy: onnx and ONNX Runtime load after the arguments parse

    print(profile_onnx(source, args.batch, args.runs, args.threads).format(args.top))
    return EXIT_OK


if __name__ == "__main__":
    run_cli(main)
