"""``python -m export.trt``: an exported IdleViT ONNX to a TensorRT engine that keeps its token selection.

Examples::

    python -m export.trt                              # the ONNX export.onnx wrote last, FP32
    python -m export.trt --fp16                       # mixed precision, scoring path kept FP32
    python -m export.trt --int8                       # INT8 Q/DQ graph calibrated on the digits, checked, built
    python -m export.trt --int8 --int8-plan mlp --calib-data ~/data/imagenet --calib-images 1024
    python -m export.trt --fp8 --runtime tensorrt-rtx --compute-capabilities 8.9,12.0
    python -m export.trt --onnx model.onnx --fp16 --runtime tensorrt-rtx --max-batch 64
    python -m export.trt --fp16 --runtime tensorrt --trt-version 10.3   # plan for JetPack 6, no TensorRT here
"""

from __future__ import annotations

import argparse

from engines.plan import (
    CALIBRATION_METHODS,
    DEFAULT_CALIBRATION_METHOD,
    DEFAULT_QUANT_PLAN,
    FP8,
    FP16,
    FP32,
    INT8,
    QUANT_PLANS,
    QUANTIZED,
    QuantOptions,
)
from engines.target import PLAN_VERSIONS, RUNTIMES, TENSORRT, TENSORRT_RTX
from idlevit.cli import add_list_argument, add_model_argument, cli_parser, run_cli
from idlevit.errors import (
    EXIT_BAD_INPUT,
    EXIT_BUILD_FAILED,
    EXIT_CHECK_FAILED,
    EXIT_MISSING_DEPENDENCY,
    EXIT_OK,
)
from idlevit.state import state_file

PLAN_LINES = "\n".join(f"  {plan.name:21s} {plan.summary}" for plan in QUANT_PLANS.values())
EPILOG = f"""
which ONNX: --onnx, else the file `python -m export.onnx` wrote last, as recorded in
{state_file()} (relative to the working directory; set IDLEVIT_STATE_DIR to move it): run both
commands from the same folder.

precision: --fp32 builds FP32 everywhere (TF32 off). --fp16 keeps every idle layer's scoring path
(norm1 -> CLS query folded into the keys -> scores -> TopK) in FP32 so FP16 rounding cannot reorder
the kept tokens. Strongly typed targets (TensorRT 10.12+, 11.x, TensorRT-RTX) get a mixed-precision
ONNX (ONNX Runtime's FP16 converter, no PyTorch needed), always written (<onnx>_fp16_mixed.onnx
beside the input, or beside --out) and checked in ONNX Runtime (CPU) against the FP32 graph: as
ONNX Runtime's kernels run it, and with FP16 storage rounding emulated (those kernels compute many
FP16 ops in FP32 and skip the rounding, the scores before TopK among them). Top-1 and kept-token
flips are counted apart when the FP32 graph's own logits / scores are within 1% of a tie, and kept-
token flips after an earlier flip of the same sample as cascades. TensorRT < 10.12 gets the FP32
ONNX with the FP16 builder flag and per-layer FP32 constraints.

--int8 / --fp8 write a Q/DQ graph (<onnx>_int8.onnx / <onnx>_fp8.onnx beside the input, or
beside --out) with ModelOpt, calibrated on ONNX Runtime's CPU with --calib-data read by the
model's recorded preprocessing, and build it as a strongly typed network on every target (INT8
for Jetson Orin: --runtime tensorrt --trt-version 10.3). The scoring path of every idle layer
gets no Q/DQ and stays FP32 whatever the plan, and so does every layer the plan leaves out.
Before any build the Q/DQ graph is checked against the FP32 graph in ONNX Runtime (CPU) on the
digits test split (or --check-data): top-1 agreement, kept tokens per idle layer with near-tie
and cascade accounting, logit cosine, by the int8 / fp8 presets; a failed check exits
{EXIT_CHECK_FAILED} and builds nothing. FP8 needs compute capability 8.9+: TensorRT-RTX only with
--compute-capabilities 8.9 and/or 12.0 (anything else is refused up front); full TensorRT on an
Ada, Hopper, Blackwell or Thor GPU. ModelOpt needs PyTorch: on a host without it, write the Q/DQ
graph where ModelOpt is installed and build that file here (--onnx model_int8.onnx).

a reduced graph given with --onnx (<onnx>_fp16_mixed.onnx, <onnx>_int8.onnx, <onnx>_fp8.onnx) is
built as it is in its own precision (no precision flag, or the same one), after the same check
against the FP32 graph its metadata records (by sha256, where it was or beside it; --no-check
builds without it). Plans (--int8-plan, also for --fp8; default {DEFAULT_QUANT_PLAN},
measured by `python -m benchmarks.quantization`):
{PLAN_LINES}

builder flags named as trtexec's: --workspace is trtexec's --memPoolSize=workspace:<MiB>, --timing-cache
its --timingCacheFile, --opt-level its --builderOptimizationLevel.

outputs: the engine (default <onnx stem>_<precision>.engine for every runtime, beside the
ONNX; a reduced graph gives its FP32 source's name: my_int8.onnx -> my_int8.engine) and its
JSON sidecar <engine>.json (runtime and version, GPU or compute capabilities, precision plan,
profiles, IdleViT schedule, ONNX sha256). The equivalent trtexec /
tensorrt_rtx command line is printed. Without TensorRT the static checks and the mixed ONNX
still run, the command is printed, and no engine is written.

exit codes: {EXIT_OK} engine built; {EXIT_CHECK_FAILED} a static check or the reduced-precision check failed;
{EXIT_BAD_INPUT} bad file or flag (a plugin graph for TensorRT-RTX, --fp8 for a GPU without FP8 included);
{EXIT_MISSING_DEPENDENCY} TensorRT (or ModelOpt for --int8/--fp8 of an FP32 graph) is not installed; {EXIT_BUILD_FAILED}
TensorRT's parser or builder failed.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = cli_parser("python -m export.trt", __doc__, EPILOG)
    add_model_argument(parser, "--onnx", "to build (default: the one export.onnx wrote last, see below)")
    parser.add_argument(
        "--out", default=None, help="engine file to write (default: beside the ONNX); the mixed ONNX goes beside it"
    )
    prec = parser.add_argument_group("precision").add_mutually_exclusive_group()
    prec.add_argument("--fp32", dest="precision", action="store_const", const=FP32, help="FP32 everywhere (default)")
    prec.add_argument(
        "--fp16", dest="precision", action="store_const", const=FP16, help="FP16 with the scoring path kept FP32"
    )
    prec.add_argument(
        "--int8", dest="precision", action="store_const", const=INT8, help="INT8 Q/DQ graph, scoring path FP32"
    )
    prec.add_argument(
        "--fp8",
        dest="precision",
        action="store_const",
        const=FP8,
        help="FP8 (E4M3) Q/DQ graph, scoring path FP32; compute capability 8.9+ only",
    )
    quant = parser.add_argument_group("quantization (--int8, --fp8)")
    quant.add_argument(
        "--int8-plan",
        "--quant-plan",
        dest="quant_plan",
        choices=list(QUANT_PLANS),
        default=DEFAULT_QUANT_PLAN,
        metavar="NAME",
        help=f"which GEMMs get Q/DQ (listed below; default {DEFAULT_QUANT_PLAN})",
    )
    quant.add_argument(
        "--calib-data",
        default="digits",
        metavar="digits|DIR",
        help="calibration images: the digits train split, or an ImageFolder (DIR/train when present) (default digits)",
    )
    quant.add_argument(
        "--calib-images",
        type=int,
        default=None,
        metavar="N",
        help="calibration images, drawn with a fixed seed (default: the whole digits train split, or 512)",
    )
    quant.add_argument(
        "--calib-method",
        choices=CALIBRATION_METHODS,
        default=DEFAULT_CALIBRATION_METHOD,
        help=f"activation ranges: absolute max or entropy (KL) (default {DEFAULT_CALIBRATION_METHOD})",
    )
    target = parser.add_argument_group("target")
    target.add_argument(
        "--runtime",
        choices=RUNTIMES,
        default=None,
        help="TensorRT flavour (default: whichever is installed, tensorrt first; tensorrt when none is)",
    )
    target.add_argument(
        "--trt-version",
        default=None,
        metavar="X.Y",
        help="version to plan and check for when that runtime is not installed here "
        f"(default: {PLAN_VERSIONS[TENSORRT]} for tensorrt, {PLAN_VERSIONS[TENSORRT_RTX]} for tensorrt-rtx); "
        "an installed runtime always uses its own",
    )
    add_list_argument(
        target,
        "--compute-capabilities",
        "CC,...",
        example="8.6,8.9",
        default=None,
        help="TensorRT-RTX: GPUs to build for, e.g. 8.6,8.9 (default: TensorRT-RTX's own, 8.0/8.6/8.9/12.0; "
        "7.5 must be named)",
    )
    build = parser.add_argument_group("builder")
    build.add_argument("--min-batch", type=int, default=1, help="smallest batch of the optimization profile (1)")
    build.add_argument("--opt-batch", type=int, default=8, help="batch TensorRT tunes for (8)")
    build.add_argument("--max-batch", type=int, default=32, help="largest batch of the optimization profile (32)")
    build.add_argument("--workspace", type=int, default=None, metavar="MiB", help="workspace memory limit in MiB")
    build.add_argument(
        "--opt-level", type=int, default=None, metavar="0-5", help="builder optimization level (TensorRT's default: 3)"
    )
    build.add_argument(
        "--timing-cache", default=None, help="timing cache file, read and updated (TensorRT; TensorRT-RTX has none)"
    )
    add_list_argument(
        build,
        "--plugins",
        "LIB.so,...",
        example="libidle_scatter.so",
        default=[],
        help="plugin libraries to load (comma-separated; the flag may also be repeated)",
    )
    check = parser.add_argument_group("reduced-precision check (ONNX Runtime, CPU, against the FP32 graph)")
    check.add_argument(
        "--check-data",
        default=None,
        help="real images: 'digits' (test split) or an ImageFolder root (default: random only for --fp16, "
        "digits for --int8/--fp8)",
    )
    check.add_argument(
        "--check-images", type=int, default=None, help="real images to check (16 for --fp16, 512 for --int8/--fp8)"
    )
    check.add_argument(
        "--check-batches",
        type=int,
        default=None,
        help="seeded random batches of 8 to check (2 for --fp16; 0 for --int8/--fp8, calibrated to real images)",
    )
    check.add_argument(
        "--check-device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="ONNX Runtime device: cpu, or cuda (onnxruntime-gpu and a GPU: real FP16 kernels)",
    )
    check.add_argument("--no-check", action="store_true", help="skip the check")
    parser.add_argument("--no-trtcheck", action="store_true", help="skip trtcheck (the toolkit's own lint still runs)")
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="show info findings, and Polygraphy's and TensorRT's messages as they come",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from engines.builder import BuildOptions  # lazy: onnx and TensorRT load after the arguments parse
    from idlevit.metadata import read_metadata  # lazy: as above
    from idlevit.state import given_or_last_export  # lazy: as above
    from validate.inputs import InputSpec  # lazy: as above

    from .engine import export_engine  # lazy: as above

    options = BuildOptions(
        args.min_batch,
        args.opt_batch,
        args.max_batch,
        args.workspace,
        args.opt_level,
        args.timing_cache,
        list(args.plugins),
        list(args.compute_capabilities or []),
    )
    # a Q/DQ graph given as it is (made where ModelOpt is installed) is checked like --int8 / --fp8
    quantized = (args.precision or read_metadata(given_or_last_export(args.onnx, "--onnx")).precision) in QUANTIZED
    check = InputSpec(
        data=args.check_data or ("digits" if quantized else None),
        num_images=args.check_images if args.check_images is not None else (512 if quantized else 16),
        random_batches=args.check_batches if args.check_batches is not None else (0 if quantized else 2),
        batch_sizes=(8,),
    )
    export_engine(
        args.onnx,
        precision=args.precision,
        quantization=QuantOptions(args.quant_plan, args.calib_data, args.calib_images, args.calib_method),
        runtime=args.runtime,
        trt_version=args.trt_version,
        options=options,
        out=args.out,
        check_inputs=None if args.no_check else check,
        check_device=args.check_device,
        trtcheck=not args.no_trtcheck,
        verbose=args.verbose,
    )
    return EXIT_OK


if __name__ == "__main__":
    run_cli(main)
