"""``python -m benchmarks.latency``: IdleViT vs dense ViT latency, side by side, per backend and graph.

For one architecture and several keep rates (plus the dense model: keep rate 1.0, same
weights, no idle layers) it times every backend usable here at several batch sizes,
interleaved (every round runs every configuration once, in an order shuffled each round, and
every 5 rounds every session is made anew in a shuffled order), so machine noise and where a
session's memory landed hit all configurations alike. ONNX Runtime times each graph asked for with
``--graphs``, dense and idle alike: the default export (dynamo), the TorchScript exporter's, and
the default export optimised for ONNX Runtime (``export.onnx --optimize``). Per configuration it
reports the time ratio IdleViT / dense of the same graph and against the fastest dense graph of
the backend, the speed-up over PyTorch eager, each as the median [min..max] of per-round ratios,
next to the FLOPs ratio counted with ``torch.utils.flop_counter`` (the ceiling of the speed-up).

With ``--onnx`` / ``--engine`` it times given files instead (no PyTorch needed): each graph on
ONNX Runtime, each engine on TensorRT, a dense graph among them as the baseline.

Examples::

    python -m benchmarks.latency                              # deit_small, 0.5..0.9 + dense, batch 1 and 8
    python -m benchmarks.latency --keep-rates 0.7 --graphs dynamo,torchscript,optimized --repeats 9
    python -m benchmarks.latency --ckpt my.pth --keep-rates 0.7            # the checkpoint's arch and weights
    python -m benchmarks.latency --onnx my.onnx,my_dense.onnx --batch-sizes 1,8
    python -m benchmarks.latency --engine my_fp16.engine
    python -m benchmarks.latency --keep-rates 0.7 --backends onnxruntime-cpu --precisions fp32,int8
"""

from __future__ import annotations

import argparse
from pathlib import Path

from engines.plan import DEFAULT_QUANT_PLAN, FP8, FP32, INT8, QUANT_PLANS
from idlevit.cli import add_list_argument, add_model_argument, cli_parser, run_cli, warn
from idlevit.configs import list_archs
from idlevit.errors import EXIT_BAD_INPUT, EXIT_MISSING_DEPENDENCY, EXIT_OK, ToolkitError

from .options import (
    BACKEND_NAMES,
    DEFAULT_GRAPHS,
    DEFAULT_KEEP_RATES,
    GRAPH_NAMES,
)

EPILOG = f"""
Lists are comma-separated (--batch-sizes 1,8); the old space-separated form still works, with a warning.
Backends that cannot run here (no CUDA GPU, no onnxruntime-gpu, no TensorRT, no PyTorch) are skipped
with a note. Every runtime keeps its default threading (worker threads spin while they wait); a pause
before each run (--settle-ms) and ONNX Runtime's session.force_spinning_stop keep a finished run's
spinning threads off the cores of the next one. A loaded machine (load average above the core count)
or ratios that spread over 10% between rounds are reported as warnings.
--precisions fp32,int8 (or fp8) also times, on every ONNX Runtime backend, the Q/DQ graph of each
keep rate (python -m export.trt's quantization, plan --int8-plan, calibrated on 32 digits images),
and reports it against that backend's FP32 dense model and FP32 IdleViT, measured in the same rounds.
Exit codes: {EXIT_OK} done; {EXIT_BAD_INPUT} bad flag, checkpoint or file; {EXIT_MISSING_DEPENDENCY} nothing can run
here (no PyTorch to export the toolkit's own models, no TensorRT for an engine) or ModelOpt missing (int8/fp8).
"""
#: Flags that shape the toolkit's own models, meaningless for given files.
OWN_MODEL_FLAGS = ("ckpt", "arch", "keep_rates", "graphs", "img_size", "keep_onnx")


def build_parser() -> argparse.ArgumentParser:
    parser = cli_parser("python -m benchmarks.latency", __doc__, EPILOG)
    given = parser.add_argument_group("given files (no PyTorch needed)")
    add_model_argument(given, "--onnx", "graphs to time on ONNX Runtime", many=True)
    add_model_argument(given, "--engine", "engines to time on TensorRT", many=True)
    own = parser.add_argument_group("the toolkit's own models (exported here with PyTorch)")
    add_model_argument(
        own,
        "--ckpt",
        "to time, with its arch (default: --arch with random weights: timing does not depend on them)",
    )
    own.add_argument(
        "--arch", default=None, choices=list_archs(), help="architecture (default deit_small; with --ckpt: its own)"
    )
    add_list_argument(
        own,
        "--keep-rates",
        "R,...",
        float,
        "0.5,0.7",
        default=list(DEFAULT_KEEP_RATES),
        help="base keep rates r (published r, r², r³ schedule); the dense model is always added (default 0.5..0.9)",
    )
    add_list_argument(
        own,
        "--graphs",
        "NAME,...",
        example="dynamo,optimized",
        choices=GRAPH_NAMES,
        default=list(DEFAULT_GRAPHS),
        help=f"graphs ONNX Runtime times, dense and IdleViT alike: {', '.join(GRAPH_NAMES)} (default "
        f"{','.join(DEFAULT_GRAPHS)}; optimized = export.onnx --optimize of the default export)",
    )
    own.add_argument(
        "--img-size", type=int, default=None, help="input size for random weights (default: the arch's, 224)"
    )
    own.add_argument("--keep-onnx", action="store_true", help="keep the exported ONNX files in --out-dir")
    add_list_argument(
        own,
        "--precisions",
        "P,...",
        example="fp32,int8",
        choices=(FP32, INT8, FP8),
        default=[FP32],
        help=f"precisions to time: {FP32}, plus {INT8} / {FP8} Q/DQ graphs on ONNX Runtime (default {FP32})",
    )
    own.add_argument(
        "--int8-plan",
        choices=list(QUANT_PLANS),
        default=DEFAULT_QUANT_PLAN,
        metavar="NAME",
        help=f"quantization plan of the Q/DQ graphs ({', '.join(QUANT_PLANS)}; default {DEFAULT_QUANT_PLAN})",
    )
    add_list_argument(parser, "--batch-sizes", "B,...", int, "1,8", default=[1, 8], help="batch sizes (default 1,8)")
    add_list_argument(
        parser,
        "--backends",
        "NAME,...",
        example="onnxruntime-cpu,pytorch",
        choices=BACKEND_NAMES,
        default=list(BACKEND_NAMES),
        help=f"backends to time: {', '.join(BACKEND_NAMES)} (default all; unusable ones are skipped with a note)",
    )
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs per configuration (default 2)")
    parser.add_argument("--repeats", type=int, default=5, help="timed interleaved rounds per batch size (default 5)")
    parser.add_argument(
        "--settle-ms",
        type=float,
        default=20.0,
        help="pause before every run, so the previous runtime's spinning threads are idle (default 20)",
    )
    parser.add_argument(
        "--threads", type=int, default=0, help="CPU threads for PyTorch and ONNX Runtime (default: all usable cores)"
    )
    parser.add_argument(
        "--out-dir", default="benchmark_results", help="folder for latency.json and latency.png (./benchmark_results)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    batch_sizes, backends = args.batch_sizes, args.backends
    onnx_files = [Path(p) for p in args.onnx or []]
    engine_files = [Path(p) for p in args.engine or []]
    given = bool(onnx_files or engine_files)
    if given:
        clashing = [f"--{name.replace('_', '-')}" for name in OWN_MODEL_FLAGS if _given_flag(args, parser, name)]
        if args.precisions != [FP32]:
            clashing.append("--precisions")
        if clashing:
            raise ToolkitError(
                f"{', '.join(clashing)} shape the toolkit's own models; with --onnx/--engine the given files are "
                "timed as they are (drop one or the other)"
            )
    out_dir = Path(args.out_dir)
    from .harness import format_table, plot, run_benchmark, time_given, write_json  # lazy: runtimes load after parsing

    if given:
        result = time_given(
            onnx_files,
            engine_files,
            batch_sizes,
            backends,
            args.warmup,
            args.repeats,
            args.threads,
            not args.quiet,
            args.settle_ms,
        )
    else:
        result = run_benchmark(
            args.arch,
            args.keep_rates,
            batch_sizes,
            backends,
            args.warmup,
            args.repeats,
            args.threads,
            args.ckpt,
            out_dir if args.keep_onnx else None,
            not args.quiet,
            args.img_size,
            args.settle_ms,
            with_fp32(args.precisions),
            args.int8_plan,
            args.graphs,
        )
    print(format_table(result))
    for line in result.warnings:
        warn(line)
    write_json(result, out_dir / "latency.json")
    try:
        plot(result, out_dir / "latency.png")
    except ImportError:
        print(f"wrote {out_dir / 'latency.json'} (no plot: matplotlib is not installed)")
        return EXIT_OK
    print(f"wrote {out_dir / 'latency.json'} and {out_dir / 'latency.png'}")
    return EXIT_OK


def _given_flag(args: argparse.Namespace, parser: argparse.ArgumentParser, name: str) -> bool:
    """Whether ``--name`` was set to something other than its default."""
    return getattr(args, name) != parser.get_default(name)


def with_fp32(precisions: list[str]) -> list[str]:
    """The precisions timed: those asked for, FP32 first (every ratio is against FP32)."""
    return precisions if FP32 in precisions else [FP32, *precisions]


if __name__ == "__main__":
    run_cli(main)
