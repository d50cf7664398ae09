"""``python -m export.onnx``: an IdleViT checkpoint to a checked, batch-dynamic ONNX file.

Examples::

    python -m export.onnx                                   # the bundled demo model
    python -m export.onnx --ckpt idlevit_deit_small_ratio0.7.pth
    python -m export.onnx --ckpt ckpt.pth --keep-rate 0.5 --with-indices
    python -m export.onnx --arch deit_small --random-init   # try the pipeline without weights
"""

from __future__ import annotations

import argparse
import time

import idlevit
from idlevit.errors import EXIT_BAD_INPUT, EXIT_MISSING_DEPENDENCY, EXIT_OK, ToolkitError, cli_parser, run_cli
from idlevit.fileio import sha256_file
from idlevit.schedule import add_schedule_arguments, schedule_arguments

from .exporter import DEFAULT_OPSET, SUPPORTED_OPSETS, default_output_path, export_onnx
from .state import record_last_export

EPILOG = f"""
exit codes: {EXIT_OK} exported (and checked); {EXIT_BAD_INPUT} bad checkpoint, arch, schedule or flag;
{EXIT_MISSING_DEPENDENCY} a needed optional package is missing.
The output records arch, schedule, k per idle layer, image size, mean/std, opset, toolkit
version and checkpoint sha256 in its metadata_props; `python -m export.trt` finds it next.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = cli_parser("python -m export.onnx", __doc__, EPILOG)
    src = parser.add_argument_group("model")
    src.add_argument(
        "--ckpt",
        default=None,
        help="checkpoint (.pth, official {'model': ...} layout or bare "
        "state dict); 'demo' or omitted: the bundled digits demo",
    )
    src.add_argument(
        "--arch", choices=idlevit.list_archs(), help="architecture; default: read from the checkpoint (its shapes)"
    )
    src.add_argument(
        "--random-init", action="store_true", help="no checkpoint: random weights of --arch (to try the pipeline)"
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
        "--opset",
        type=int,
        default=DEFAULT_OPSET,
        choices=list(SUPPORTED_OPSETS),
        metavar="N",
        help=f"ONNX opset {SUPPORTED_OPSETS.start}..{SUPPORTED_OPSETS.stop - 1} (default {DEFAULT_OPSET})",
    )
    graph.add_argument("--batch", type=int, default=None, help="static batch size (default: dynamic batch)")
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
    parser.add_argument("--out", default=None, help="output .onnx (default: next to the checkpoint, same name)")
    parser.add_argument("--no-verify", action="store_true", help="skip the ONNX Runtime vs PyTorch check")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.batch is not None and args.batch < 1:
        raise ToolkitError(f"--batch {args.batch} must be >= 1 (omit it for a dynamic batch)")
    if args.random_init and args.ckpt:
        raise ToolkitError("give either --ckpt or --random-init, not both")
    schedule = schedule_arguments(args)
    started = time.perf_counter()
    if args.random_init:
        if not args.arch:
            raise ToolkitError("--random-init needs --arch (one of: " + ", ".join(idlevit.list_archs()) + ")")
        overrides = {"img_size": args.img_size} if args.img_size else {}
        model = idlevit.create_model(args.arch, **schedule, **overrides).eval()
        ckpt_name, ckpt_sha = "random-init", ""
    else:
        ckpt_path = idlevit.resolve_checkpoint_path(args.ckpt)
        model = idlevit.load_checkpoint(ckpt_path, arch=args.arch, **schedule)
        if args.img_size and args.img_size != model.cfg.img_size:
            raise ToolkitError(
                f"--img-size {args.img_size} differs from the checkpoint's {model.cfg.img_size} px "
                "(its position embedding fixes it); omit --img-size"
            )
        ckpt_name, ckpt_sha = ("demo" if args.ckpt in (None, "demo") else ckpt_path.name), sha256_file(ckpt_path)
    out = args.out or default_output_path(None if args.random_init else (args.ckpt or "demo"), model.cfg.name)
    summary = export_onnx(
        model,
        out,
        opset=args.opset,
        batch=args.batch,
        with_indices=args.with_indices,
        plugin=args.plugin,
        checkpoint=ckpt_name,
        checkpoint_sha256=ckpt_sha,
        verify_batch=0 if args.no_verify else 3,
        progress=not args.quiet,
    )
    record_last_export(out)
    plan = model.idle_plan
    print(
        f"wrote {out} ({model.cfg.name}, {model.cfg.img_size} px, opset {args.opset}, "
        f"{'batch ' + str(args.batch) if args.batch else 'dynamic batch'}) in {time.perf_counter() - started:.1f} s"
    )
    print(
        "idle layers -> kept image tokens: "
        + ", ".join(f"{k}:{v}" for k, v in plan.items())
        + f" (of {model.cfg.num_tokens})"
    )
    if summary is not None:
        print(summary)
    return EXIT_OK


if __name__ == "__main__":
    run_cli(main)
