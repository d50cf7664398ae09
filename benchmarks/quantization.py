"""``python -m benchmarks.quantization``: every INT8/FP8 plan's selection fidelity and speed, in one table.

Selection and top-1 on the bundled demo (digits test split, each plan's Q/DQ graph judged
against the FP32 graph); ONNX Runtime CPU time on a deit_small IdleViT (keep rate 0.7) against
FP32 dense and FP32 IdleViT at batch 1 and 8, all configurations interleaved in one run. The
default plan is picked by the rule printed under the table.

Examples::

    python -m benchmarks.quantization                                  # every plan, INT8
    python -m benchmarks.quantization --plans gemms,mlp --repeats 11
    python -m benchmarks.quantization --precision fp8 --no-speed       # FP8: selection only (the CPU emulates it)
"""

from __future__ import annotations

import argparse
from pathlib import Path

from engines.plan import CALIBRATION_METHODS, DEFAULT_CALIBRATION_METHOD, FP8, INT8, QUANT_PLANS
from idlevit.cli import add_list_argument, add_model_argument, cli_parser, run_cli
from idlevit.configs import list_archs
from idlevit.errors import EXIT_BAD_INPUT, EXIT_MISSING_DEPENDENCY, EXIT_OK

EPILOG = f"""
The rule: among the plans that meet every target (the int8/fp8 check passes, top-1 within 0.5 points
of FP32, kept-token agreement >= 97% in every idle layer, time <= 0.60x FP32 dense at batch 1 and
<= 0.50x at batch 8),
the one with the highest worst-layer kept-token agreement; if none meets them all, the fastest at
batch 8 of those that keep the selection and top-1; if none does, the best selection.
Timing on a shared machine is noisy: the ratios are medians of per-round ratios, measured in the
same interleaved rounds; rerun with more --repeats to tighten them.
Plans: {", ".join(QUANT_PLANS)}.
Exit codes: {EXIT_OK} done; {EXIT_BAD_INPUT} bad flag or checkpoint; {EXIT_MISSING_DEPENDENCY} ModelOpt missing.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = cli_parser("python -m benchmarks.quantization", __doc__, EPILOG)
    add_list_argument(
        parser,
        "--plans",
        "NAME,...",
        example="gemms,mlp",
        choices=tuple(QUANT_PLANS),
        default=list(QUANT_PLANS),
        help="plans to measure (default: all)",
    )
    parser.add_argument("--precision", choices=(INT8, FP8), default=INT8, help="quantized precision (default int8)")
    parser.add_argument(
        "--calib-method",
        choices=CALIBRATION_METHODS,
        default=DEFAULT_CALIBRATION_METHOD,
        help=f"calibration (default {DEFAULT_CALIBRATION_METHOD})",
    )
    sel = parser.add_argument_group("selection and top-1 (digits)")
    add_model_argument(sel, "--ckpt", "whose selection is measured (default: the bundled demo)")
    sel.add_argument(
        "--calib-images", type=int, default=None, help="calibration images (default: the digits train split)"
    )
    sel.add_argument("--test-images", type=int, default=None, help="test images (default: the whole test split)")
    sel.add_argument("--no-selection", action="store_true", help="time only")
    speed = parser.add_argument_group("speed (ONNX Runtime CPU, random weights)")
    speed.add_argument("--arch", default="deit_small", choices=list_archs(), help="architecture timed (deit_small)")
    speed.add_argument("--keep-rate", type=float, default=0.7, help="keep rate of the timed IdleViT (0.7)")
    speed.add_argument("--img-size", type=int, default=None, help="input size of the timed model (the arch's)")
    add_list_argument(speed, "--batch-sizes", "B,...", int, "1,8", default=[1, 8], help="batch sizes (default 1,8)")
    speed.add_argument("--warmup", type=int, default=2, help="untimed runs per configuration (2)")
    speed.add_argument("--repeats", type=int, default=7, help="interleaved timed rounds per batch size (7)")
    speed.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (default: all usable cores)")
    speed.add_argument("--settle-ms", type=float, default=20.0, help="pause before every run (20 ms)")
    speed.add_argument("--speed-calib-images", type=int, default=32, help="calibration images of the timed graphs (32)")
    speed.add_argument("--no-speed", action="store_true", help="selection only")
    parser.add_argument("--out-dir", default="benchmark_results", help="folder for quantization.json and .md")
    parser.add_argument("--keep-onnx", action="store_true", help="keep the ONNX files in --out-dir/onnx")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    plans, batch_sizes = args.plans, args.batch_sizes
    from .sweep import markdown, run_sweep, write  # lazy: torch, onnx and ModelOpt load after the arguments parse

    out_dir = Path(args.out_dir)
    result = run_sweep(
        plans,
        args.precision,
        ckpt=args.ckpt,
        arch=args.arch,
        keep_rate=args.keep_rate,
        method=args.calib_method,
        calib_images=args.calib_images,
        speed_calib_images=args.speed_calib_images,
        test_images=args.test_images,
        batch_sizes=batch_sizes,
        warmup=args.warmup,
        repeats=args.repeats,
        threads=args.threads,
        settle_ms=args.settle_ms,
        img_size=args.img_size,
        selection=not args.no_selection,
        speed=not args.no_speed,
        workdir=out_dir / "onnx" if args.keep_onnx else None,
        progress=not args.quiet,
    )
    print(markdown(result), end="")
    json_path, md_path = write(result, out_dir)
    print(f"wrote {json_path} and {md_path} in {result.seconds:.0f} s")
    return EXIT_OK


if __name__ == "__main__":
    run_cli(main)
