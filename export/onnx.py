"""``python -m export.onnx``: an IdleViT checkpoint to a checked, batch-dynamic ONNX file.

Examples::

    python -m export.onnx                                   # the bundled demo model
    python -m export.onnx --ckpt idlevit_deit_small_ratio0.7.pth
    python -m export.onnx --ckpt ckpt.pth --keep-rate 0.5 --with-indices
    python -m export.onnx --ckpt ckpt.pth --fold-normalization   # takes RGB pixels 0..255 (DeepStream)
    python -m export.onnx --ckpt ckpt.pth --exporter torchscript --opset 17
    python -m export.onnx --ckpt ckpt.pth --optimize              # for ONNX Runtime only: ckpt_ort.onnx
    python -m export.onnx --arch deit_small --random-init   # try the pipeline without weights
"""

from __future__ import annotations

import argparse

from idlevit.cli import add_deprecated_alias, add_model_argument, cli_parser, run_cli
from idlevit.configs import check_batch, check_size_flag, list_archs
from idlevit.errors import EXIT_BAD_INPUT, EXIT_CHECK_FAILED, EXIT_MISSING_DEPENDENCY, EXIT_OK, require_torch
from idlevit.schedule import add_schedule_arguments, schedule_arguments
from idlevit.state import record_last_export

from .contract import (
    DEFAULT_EXPORTER,
    DEFAULT_OPSET,
    DYNAMO,
    EXPORTERS,
    SUPPORTED_OPSETS,
    TORCHSCRIPT,
    opset_range,
)

EPILOG = f"""
exit codes: {EXIT_OK} exported (and checked); {EXIT_CHECK_FAILED} the written graph disagrees with PyTorch
(FP32 thresholds; the file is kept for inspection); {EXIT_BAD_INPUT} bad checkpoint, arch, schedule or flag;
{EXIT_MISSING_DEPENDENCY} a needed optional package is missing.
The output records arch, schedule, k per idle layer, image size, mean/std (and whether they are
folded into the graph), opset, exporter, toolkit version and checkpoint sha256 in its
metadata_props; `python -m export.trt` finds it next.
Opsets: TensorRT 10.0-10.7 (JetPack 6: 10.3) parse up to 20, TensorRT 10.8+ and TensorRT-RTX up
to 22, TensorRT 8.6 up to 17 (--exporter torchscript).
"""


def build_parser() -> argparse.ArgumentParser:
    parser = cli_parser("python -m export.onnx", __doc__, EPILOG)
    src = parser.add_argument_group("model")
    add_model_argument(
        src, "--ckpt", "official {'model': ...} layout or a bare state dict (default: the bundled digits demo)"
    )
    src.add_argument(
        "--arch", choices=list_archs(), help="architecture; default: read from the checkpoint (its shapes)"
    )
    src.add_argument(
        "--random-init",
        action="store_true",
        help="no checkpoint: random weights of --arch, the same on every run (to try the pipeline)",
    )
    sched = parser.add_argument_group("idle schedule (checkpoints store none)")
    add_schedule_arguments(sched)
    graph = parser.add_argument_group("graph")
    graph.add_argument(
        "--img-size",
        type=int,
        default=None,
        help="input size in pixels (default: the checkpoint's, from its position embedding)",
    )
    graph.add_argument(
        "--exporter",
        choices=EXPORTERS,
        default=DEFAULT_EXPORTER,
        help=f"how the model is traced (default {DEFAULT_EXPORTER}): {DYNAMO} = torch.onnx.export(dynamo=True), "
        f"built on torch.export; {TORCHSCRIPT} = the TorchScript tracer (deprecated by PyTorch, kept while "
        "torch ships it); the clean-up gives both the same op contract",
    )
    graph.add_argument(
        "--opset",
        type=int,
        default=DEFAULT_OPSET,
        choices=list(SUPPORTED_OPSETS),
        metavar="N",
        help=f"ONNX opset (default {DEFAULT_OPSET}): {opset_range(DYNAMO)} with --exporter {DYNAMO}, "
        f"{opset_range(TORCHSCRIPT)} with --exporter {TORCHSCRIPT}",
    )
    graph.add_argument(
        "--static-batch", type=int, default=None, metavar="B", help="a fixed batch size (default: dynamic batch)"
    )
    add_deprecated_alias(graph, "--batch", "--static-batch", type=int)
    graph.add_argument(
        "--with-indices",
        action="store_true",
        help="also output the kept token positions "
        "(B, k+1) of every idle layer, as kept_indices_<layer>, for selection checks",
    )
    graph.add_argument(
        "--plugin",
        action="store_true",
        help="fuse each idle layer's scatter into the idlevit::IdleScatter TensorRT plugin op (see plugins/README.md)",
    )
    graph.add_argument(
        "--fold-normalization",
        action="store_true",
        help="fold the mean/std into the first layer: the graph takes RGB pixels 0..255 (DeepStream nvinfer with "
        "net-scale-factor=1 and zero offsets) instead of normalised images; recorded in the metadata",
    )
    graph.add_argument(
        "--optimize",
        action="store_true",
        help="write the graph for ONNX Runtime only: its fused Attention and transformer fusions (BiasGelu), each "
        "idle layer's scoring path untouched, checked like any export and recorded in the metadata; TensorRT "
        "cannot parse it (export.trt refuses it), so build engines from the plain export. Adds _ort to the name",
    )
    parser.add_argument(
        "--out",
        default=None,
        help="output .onnx; default: the checkpoint's path with .onnx (foo.pth -> foo.onnx beside it), or "
        "idlevit_deit_micro_digits_ratio0.7.onnx (the bundled demo) / idlevit_<arch>_random.onnx (--random-init) "
        "in the working directory; --with-indices, --plugin, --fold-normalization and --optimize add _indices, "
        "_plugin, _pixels, _ort to the name. Never the checkpoint itself",
    )
    parser.add_argument("--no-verify", action="store_true", help="skip the ONNX Runtime vs PyTorch check")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def check_flags(args: argparse.Namespace) -> None:
    """The values the parser cannot judge alone, before anything loads: sizes in range."""
    if args.img_size is not None:
        check_size_flag("--img-size", args.img_size)
    if args.static_batch is not None:
        check_batch("--static-batch", args.static_batch)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_flags(args)
    require_torch("export.onnx (it traces the PyTorch model)")
    from .exporter import export_checkpoint, verdict_line  # lazy: torch and onnx load after the arguments parse

    result = export_checkpoint(
        args.ckpt,
        arch=args.arch,
        random_init=args.random_init,
        img_size=args.img_size,
        out=args.out,
        opset=args.opset,
        batch=args.static_batch,
        with_indices=args.with_indices,
        plugin=args.plugin,
        fold_normalization=args.fold_normalization,
        exporter=args.exporter,
        optimize=args.optimize,
        verify=not args.no_verify,
        progress=not args.quiet,
        **schedule_arguments(args),
    )
    record_last_export(result.path)
    model = result.model
    print(
        f"wrote {result.path} ({model.cfg.name}, {model.cfg.img_size} px, opset {args.opset}, "
        f"{'batch ' + str(args.static_batch) if args.static_batch else 'dynamic batch'}, {args.exporter} exporter) "
        f"in {result.seconds:.1f} s"
    )
    print(f"graph: {result.kind}")
    print(
        "idle layers -> kept image tokens: "
        + ", ".join(f"{k}:{v}" for k, v in model.idle_plan.items())
        + f" (of {model.cfg.num_tokens})"
    )
    if result.report is not None:
        print(verdict_line(result.report))
    return EXIT_OK


if __name__ == "__main__":
    run_cli(main)
