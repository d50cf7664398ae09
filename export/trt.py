"""``python -m export.trt``: an exported IdleViT ONNX to a TensorRT engine that keeps its token selection.

Examples::

    python -m export.trt                              # the ONNX export.onnx wrote last, FP32
    python -m export.trt --fp16                       # mixed precision, scoring path kept FP32
    python -m export.trt --onnx model.onnx --fp16 --runtime tensorrt-rtx --max-batch 64
    python -m export.trt --fp16 --runtime tensorrt --trt-version 10.3   # plan for JetPack 6, no TensorRT here
"""

from __future__ import annotations

import argparse

from engines.plan import FP16, FP32
from engines.target import PLAN_VERSIONS, RUNTIMES, TENSORRT, TENSORRT_RTX
from idlevit.cli import cli_parser, run_cli
from idlevit.errors import (
    EXIT_BAD_INPUT,
    EXIT_BUILD_FAILED,
    EXIT_CHECK_FAILED,
    EXIT_MISSING_DEPENDENCY,
    EXIT_OK,
)
from idlevit.state import state_file

EPILOG = f"""
which ONNX: --onnx, else the file `python -m export.onnx` wrote last, as recorded in
{state_file()} (relative to the working directory; set IDLEVIT_STATE_DIR to move it): run both
commands from the same folder.

precision: --fp32 builds FP32 everywhere (TF32 off). --fp16 keeps every idle layer's scoring
path (norm1 -> CLS query folded into the keys -> scores -> TopK) in FP32 so FP16 rounding cannot
reorder the kept tokens. Strongly typed targets (TensorRT 10.12+, 11.x, TensorRT-RTX) get a
mixed-precision ONNX, always written (<onnx>_fp16_mixed.onnx beside the input, or beside --out)
and checked in ONNX Runtime (CPU) against the FP32 graph: as ONNX Runtime's kernels run it, and
with FP16 storage rounding emulated (those kernels compute many FP16 ops in FP32 and skip the
rounding, the scores before TopK among them). Top-1 and kept-token flips are counted apart when
the FP32 graph's own logits / scores are within 1% of a tie, and kept-token flips after an
earlier flip of the same sample as cascades. TensorRT < 10.12 gets the FP32 ONNX with the FP16
builder flag and per-layer FP32 constraints.

outputs: the engine (default <onnx stem>_<precision>.engine, _rtx for TensorRT-RTX, beside the
ONNX) and its JSON sidecar <engine>.json (runtime and version, GPU or compute capabilities,
precision plan, profiles, IdleViT schedule, ONNX sha256). The equivalent trtexec /
tensorrt_rtx command line is printed. Without TensorRT the static checks and the mixed ONNX
still run, the command is printed, and no engine is written.

exit codes: {EXIT_OK} engine built; {EXIT_CHECK_FAILED} a static check or the mixed-precision check failed;
{EXIT_BAD_INPUT} bad file or flag (a plugin graph for TensorRT-RTX included); {EXIT_MISSING_DEPENDENCY} TensorRT
(or ModelOpt for --fp16) is not installed; {EXIT_BUILD_FAILED} TensorRT's parser or builder failed.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = cli_parser("python -m export.trt", __doc__, EPILOG)
    parser.add_argument(
        "--onnx", default=None, help="exported ONNX (default: the one export.onnx wrote last, see below)"
    )
    parser.add_argument(
        "--out", default=None, help="engine file to write (default: beside the ONNX); the mixed ONNX goes beside it"
    )
    prec = parser.add_argument_group("precision").add_mutually_exclusive_group()
    prec.add_argument("--fp32", dest="precision", action="store_const", const=FP32, help="FP32 everywhere (default)")
    prec.add_argument(
        "--fp16", dest="precision", action="store_const", const=FP16, help="FP16 with the scoring path kept FP32"
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
    target.add_argument(
        "--compute-capabilities",
        default=None,
        metavar="CC,...",
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
    build.add_argument(
        "--plugins", action="append", default=[], metavar="LIB.so", help="plugin library to load (repeatable)"
    )
    check = parser.add_argument_group("mixed-precision check (ONNX Runtime, CPU, against the FP32 graph)")
    check.add_argument(
        "--check-data", default=None, help="real images too: 'digits' or an ImageFolder root (default: random only)"
    )
    check.add_argument("--check-images", type=int, default=16, help="real images to check (16)")
    check.add_argument("--check-batches", type=int, default=2, help="seeded random batches of 8 to check (2)")
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
    from engines.builder import BuildOptions  # lazy: onnx, torch and TensorRT load after the arguments parse
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
        [cc.strip() for cc in args.compute_capabilities.split(",")] if args.compute_capabilities else [],
    )
    check = InputSpec(
        data=args.check_data,
        num_images=args.check_images,
        random_batches=args.check_batches,
        batch_sizes=(8,),
    )
    export_engine(
        args.onnx,
        precision=args.precision or FP32,
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
