"""``python -m benchmarks.latency``: IdleViT vs dense ViT latency, side by side, per backend.

For one architecture and several keep rates (plus the dense model: keep rate 1.0, same
weights, no idle layers) it times every backend usable here at several batch sizes,
interleaved round-robin (every repeat runs every configuration once, in a rotating order), so
machine noise hits all configurations alike. Per keep rate it reports the measured time ratio
IdleViT / dense (the median of per-repeat ratios) next to the FLOPs ratio counted with
``torch.utils.flop_counter``, which is the ceiling of the speed-up, and each backend's
speed-up over PyTorch eager.

Examples::

    python -m benchmarks.latency                              # deit_small, 0.5..0.9 + dense, batch 1 and 8
    python -m benchmarks.latency --batch-sizes 1 8 32 --repeats 20 --out-dir runs/
    python -m benchmarks.latency --arch deit_tiny --keep-rates 0.7 --backends onnxruntime-cpu
    python -m benchmarks.latency --keep-rates 0.7 --backends onnxruntime-cpu --precisions fp32,int8
"""

from __future__ import annotations

import argparse
from pathlib import Path

from engines.plan import DEFAULT_QUANT_PLAN, FP8, FP32, INT8, QUANT_PLANS
from idlevit.cli import cli_parser, run_cli
from idlevit.configs import list_archs
from idlevit.errors import EXIT_BAD_INPUT, EXIT_MISSING_DEPENDENCY, EXIT_OK, ToolkitError

from .options import BACKEND_NAMES, DEFAULT_KEEP_RATES

EPILOG = f"""
Backends that cannot run here (no CUDA GPU, no onnxruntime-gpu, no TensorRT) are skipped with
a note. Every runtime keeps its default threading (worker threads spin while they wait); a
pause before each run (--settle-ms) and ONNX Runtime's session.force_spinning_stop keep a
finished run's spinning threads off the cores of the next one.
--precisions fp32,int8 (or fp8) also times, on every ONNX Runtime backend, the Q/DQ graph of each
keep rate (python -m export.trt's quantization, plan --int8-plan, calibrated on 32 digits images),
and reports it against that backend's FP32 dense model and FP32 IdleViT, measured in the same rounds.
Exit codes: {EXIT_OK} done; {EXIT_BAD_INPUT} bad flag or checkpoint; {EXIT_MISSING_DEPENDENCY} ModelOpt missing
(for --precisions int8/fp8).
"""


def build_parser() -> argparse.ArgumentParser:
    parser = cli_parser("python -m benchmarks.latency", __doc__, EPILOG)
    parser.add_argument("--arch", default="deit_small", choices=list_archs(), help="architecture")
    parser.add_argument(
        "--ckpt", default=None, help="checkpoint to time (default: random weights; timing does not depend on them)"
    )
    parser.add_argument(
        "--keep-rates",
        type=float,
        nargs="+",
        default=list(DEFAULT_KEEP_RATES),
        metavar="R",
        help="base keep rates r (published r, r², r³ schedule); the dense model is always added (default 0.5..0.9)",
    )
    parser.add_argument(
        "--batch-sizes", type=int, nargs="+", default=[1, 8], metavar="B", help="batch sizes (default 1 8)"
    )
    parser.add_argument(
        "--backends",
        nargs="+",
        default=list(BACKEND_NAMES),
        choices=list(BACKEND_NAMES),
        metavar="NAME",
        help=f"backends to time: {', '.join(BACKEND_NAMES)} (default all; unusable ones are skipped with a note)",
    )
    parser.add_argument(
        "--precisions",
        default=FP32,
        metavar="P,...",
        help=f"precisions to time: {FP32}, plus {INT8} / {FP8} Q/DQ graphs on ONNX Runtime (default {FP32})",
    )
    parser.add_argument(
        "--int8-plan",
        choices=list(QUANT_PLANS),
        default=DEFAULT_QUANT_PLAN,
        metavar="NAME",
        help=f"quantization plan of the Q/DQ graphs ({', '.join(QUANT_PLANS)}; default {DEFAULT_QUANT_PLAN})",
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
    parser.add_argument(
        "--img-size", type=int, default=None, help="input size for random weights (default: the arch's, 224)"
    )
    parser.add_argument("--keep-onnx", action="store_true", help="keep the exported ONNX files in --out-dir")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    precisions = parse_precisions(args.precisions)
    from .harness import format_table, plot, run_benchmark, write_json  # lazy: torch loads after the arguments parse

    out_dir = Path(args.out_dir)
    result = run_benchmark(
        args.arch,
        args.keep_rates,
        args.batch_sizes,
        args.backends,
        args.warmup,
        args.repeats,
        args.threads,
        args.ckpt,
        out_dir if args.keep_onnx else None,
        not args.quiet,
        args.img_size,
        args.settle_ms,
        precisions,
        args.int8_plan,
    )
    print(format_table(result))
    write_json(result, out_dir / "latency.json")
    plot(result, out_dir / "latency.png")
    print(f"wrote {out_dir / 'latency.json'} and {out_dir / 'latency.png'}")
    return EXIT_OK


def parse_precisions(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in (FP32, INT8, FP8)]
    if not names or unknown:
        raise ToolkitError(f"--precisions {text!r}: choose from {FP32}, {INT8}, {FP8}, e.g. fp32,int8")
    return names if FP32 in names else [FP32, *names]


if __name__ == "__main__":
    run_cli(main)
