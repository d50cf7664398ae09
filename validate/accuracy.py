"""``python -m validate.accuracy``: top-1/top-5 of every backend on a dataset, side by side.

The same batches go through the PyTorch reference (``--ckpt``; default: the checkpoint the ONNX
metadata records, when PyTorch is installed), ONNX Runtime (``--onnx``; default: the last export
here) and TensorRT (``--engine``) in one streamed Polygraphy run, so the figures are measured
together. Images are the bundled digits split or an ImageFolder with one class folder per model
class (timm's eval preprocessing with the mean/std the ONNX records, done without PyTorch).
images/s counts backend inference time only, not data loading.

Examples::

    python -m validate.accuracy                   # the last export and the checkpoint it records
    python -m validate.accuracy --ckpt demo --onnx idlevit_deit_micro_digits_ratio0.7.onnx
    python -m validate.accuracy --onnx model.onnx --engine model_fp16.engine --data /data/imagenet --batch-size 64
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from idlevit.cli import add_model_argument, cli_parser, run_cli
from idlevit.errors import (
    EXIT_BAD_INPUT,
    EXIT_MISSING_DEPENDENCY,
    EXIT_OK,
    TORCH_INSTALL,
    CheckpointError,
    ToolkitError,
    missing_torch_package,
    torch_missing,
)
from idlevit.fileio import atomic_write, refuse_overwriting_inputs
from idlevit.state import given_or_last_export

from .options import add_backend_arguments, add_data_arguments, report_paths

EPILOG = f"""
images/s counts backend inference time only (no data loading), leaving out the first batch (warm-up).

exit codes: {EXIT_OK} measured; {EXIT_BAD_INPUT} bad file, checkpoint, dataset or flag;
{EXIT_MISSING_DEPENDENCY} TensorRT, onnxruntime-gpu or (for a PyTorch reference) PyTorch missing.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = cli_parser("python -m validate.accuracy", __doc__, EPILOG)
    src = parser.add_argument_group("backends")
    add_model_argument(src, "--onnx", "its metadata gives the schedule and mean/std (default: the last export here)")
    add_model_argument(
        src,
        "--ckpt",
        "for the PyTorch row (default: the one the ONNX metadata records, if it is still there unchanged, else no "
        "PyTorch row)",
    )
    src.add_argument("--no-pytorch", action="store_true", help="leave out the PyTorch row")
    add_backend_arguments(src)
    data = parser.add_argument_group("dataset")
    add_data_arguments(data, "split: 'test' or 'train' (digits); folders use ROOT/val or ROOT/test (default test)")
    data.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    data.add_argument("--batch-size", type=int, default=32, help="images per batch (default 32)")
    data.add_argument(
        "--workers", type=int, default=0, help="threads that decode and preprocess images (default 0: none)"
    )
    out = parser.add_argument_group("output")
    out.add_argument("--report", default=None, help="also write the figures as JSON here (Markdown beside it)")
    out.add_argument("--quiet", action="store_true", help="no progress bar")
    out.add_argument("--verbose", action="store_true", help="show Polygraphy's log")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.ckpt and args.no_pytorch:
        raise ToolkitError("--ckpt and --no-pytorch contradict each other; pass one")
    onnx_path = given_or_last_export(args.onnx, "--onnx")
    from idlevit.images import dataset_label  # lazy: numpy and Pillow load after the arguments parse

    from .evaluate import markdown, measure_accuracy  # lazy: onnx and Polygraphy load after the arguments parse
    from .sources import reference_checkpoint  # lazy: as above

    ckpt = None
    missing = None if args.no_pytorch else missing_torch_package()
    if missing and args.ckpt:
        raise torch_missing("the PyTorch row (--ckpt)", missing)
    if missing:
        print(f"note: no PyTorch row: {missing} is not installed here ({TORCH_INSTALL})")
    elif not args.no_pytorch:
        try:
            ckpt = reference_checkpoint(onnx_path, args.ckpt)
        except CheckpointError as err:
            if args.ckpt:
                raise
            print(f"note: no PyTorch row: {err}")
    if args.report:
        json_path, md_path = report_paths(Path(args.report))
        engine_sidecar = Path(args.engine).with_name(Path(args.engine).name + ".json") if args.engine else None
        refuse_overwriting_inputs([json_path, md_path], [onnx_path, ckpt, args.engine, engine_sidecar])

    rows, meta, images = measure_accuracy(
        onnx_path,
        ckpt,
        args.engine,
        data=args.data,
        split=args.split,
        limit=args.limit,
        batch_size=args.batch_size,
        workers=args.workers,
        ort=args.ort,
        threads=args.threads,
        progress=not args.quiet,
        verbose=args.verbose,
    )
    table = markdown(rows, args.batch_size)
    print(f"accuracy on {dataset_label(args.data, args.split)} ({meta.arch}, {images} images)")
    print(table, end="")
    if args.report:
        setup = {
            "onnx": str(onnx_path),
            "checkpoint": str(ckpt) if ckpt else None,
            "engine": args.engine,
            "data": str(args.data),
        }
        payload = setup | {"split": args.split, "batch_size": args.batch_size, "rows": [r.to_dict() for r in rows]}
        with atomic_write(json_path, "w") as handle:
            json.dump(payload, handle, indent=2)
            handle.write("\n")
        with atomic_write(md_path, "w") as handle:
            handle.write(table)
        print(f"report: {args.report}")
    return EXIT_OK


if __name__ == "__main__":
    run_cli(main)
