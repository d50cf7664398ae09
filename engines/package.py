"""``python -m engines.package --onnx X.onnx | --engine X.engine``: what a deployment needs, in one folder.

The model is an exported ONNX (``--onnx``; the default is the one ``python -m export.onnx``
wrote last here) or an engine with its sidecar (``--engine``, from ``python -m export.trt``;
``--onnx`` beside it names the graph it was built from). The package (``<model>_deploy/``
beside it unless --out) holds, per kind of model:

* ONNX: a Triton model repository entry for ONNX Runtime (``triton/<name>/``), a DeepStream
  nvinfer config (``deepstream/``) and DEPLOY.md with the trtexec line that builds the engine
  on a Jetson;
* TensorRT engine: a Triton ``tensorrt_plan`` entry with the engine, a DeepStream config whose
  ``model-engine-file`` is that engine, the ONNX it was built from and DEPLOY.md (rebuilding it
  on another device);
* TensorRT-RTX engine: the engine, its sidecar, the ONNX and DEPLOY.md: it runs in the
  TensorRT-RTX runtime (``python -m engines.infer``); Triton, DeepStream and Jetson need a
  TensorRT engine built from the ONNX on the device, and DEPLOY.md gives the line.

A package folder remembers what it wrote (``.idlevit-package.json``): a non-empty folder is
refused without --force, and --force replaces only files an earlier package wrote and nobody
edited since.

Examples::

    python -m engines.package                                   # the ONNX export.onnx wrote last
    python -m engines.package --onnx idlevit_deit_small_ratio0.7.onnx --labels imagenet_classes.txt
    python -m engines.package --engine model_fp16.engine --max-batch 16 --out deploy --force
"""

from __future__ import annotations

import argparse

from idlevit.cli import add_deprecated_alias, add_model_argument, cli_parser, positional_alias, run_cli
from idlevit.errors import EXIT_BAD_INPUT, EXIT_OK

from .plan import PRECISIONS

EPILOG = f"""
exit codes: {EXIT_OK} written (files kept because they were edited or foreign are listed);
{EXIT_BAD_INPUT} missing, foreign or unsuitable model, sidecar, labels, flag, or a package folder that is
not empty (without --force) or not writable.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = cli_parser("python -m engines.package", __doc__, EPILOG)
    add_model_argument(
        parser,
        "--onnx",
        "to package (default: the one `python -m export.onnx` wrote last here); with --engine: the graph the "
        "engine was built from (default: its sidecar's, or that name beside the engine)",
    )
    add_model_argument(parser, "--engine", "to package, instead of an ONNX")
    parser.add_argument("model", nargs="?", default=None, help=argparse.SUPPRESS)  # the old positional form
    add_deprecated_alias(parser, "--source-onnx", "--onnx (beside --engine)", dest="onnx", model_file=True)
    parser.add_argument("--out", default=None, help="package folder (default: <model>_deploy beside the model)")
    parser.add_argument(
        "--force",
        action="store_true",
        help="write into a non-empty package folder: replace only the files an earlier package wrote there and "
        "nobody edited since (listed in its .idlevit-package.json); keep every other file",
    )
    parser.add_argument(
        "--name",
        default=None,
        help="Triton model name: letters, digits, '-', '_', '.' (default: from the file name)",
    )
    parser.add_argument(
        "--labels", default=None, help="class names, one per line (default: placeholders class_0, class_1, ...)"
    )
    parser.add_argument(
        "--max-batch",
        type=int,
        default=32,
        help="for an ONNX: Triton's max_batch_size and the device engine's largest batch (default 32); an engine "
        "keeps its profile's",
    )
    parser.add_argument(
        "--precision",
        choices=list(PRECISIONS),
        default=None,
        help="for an ONNX: precision of the engine built on the device (DeepStream network-mode, trtexec flags; "
        "default: the ONNX's own); an engine keeps its own",
    )
    parser.add_argument("--ds-batch-size", type=int, default=1, help="DeepStream batch-size (default 1)")
    parser.add_argument(
        "--plugin-lib",
        default=None,
        help="for a graph with the IdleScatter plugin: DeepStream's custom-lib-path (default: the library "
        "DEPLOY.md builds in the package)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.model is not None:  # the old positional form: an engine or an ONNX, by its suffix
        if args.model.endswith(".engine"):
            args.engine = positional_alias(args.model, args.engine, "--engine")
        else:
            args.onnx = positional_alias(args.model, args.onnx, "--onnx")
    from .deploy.writer import make_package  # lazy: onnx loads after the arguments parse

    report = make_package(
        args.engine or args.onnx,
        source_onnx=args.onnx if args.engine else None,
        out=args.out,
        name=args.name,
        labels_file=args.labels,
        max_batch=args.max_batch,
        precision=args.precision,
        plugin_lib=args.plugin_lib,
        ds_batch_size=args.ds_batch_size,
        force=args.force,
    )
    print(report.summary())
    return EXIT_OK


if __name__ == "__main__":
    run_cli(main)
