"""``python -m engines.infer IMAGE...``: classify image files with an engine or an exported ONNX.

Images are preprocessed as the model was evaluated (timm's eval preprocessing, done with Pillow
and NumPy, from the mean, std, crop_pct and interpolation the model records), run through
TensorRT when given an engine and it can run here, else through ONNX Runtime on the graph the
engine was built from once both match the engine's sidecar (a note says which and why), and the
top-5 classes printed. No PyTorch is needed.

Examples::

    python -m engines.infer cat.jpg dog.png                      # the ONNX export.onnx wrote last
    python -m engines.infer --engine model_fp16.engine *.jpg --labels imagenet_classes.txt
    python -m engines.infer --onnx idlevit_deit_small.onnx photo.jpg --top 3
"""

from __future__ import annotations

import argparse
import os

from idlevit.cli import add_deprecated_alias, add_model_argument, cli_parser, run_cli
from idlevit.errors import EXIT_BAD_INPUT, EXIT_MISSING_DEPENDENCY, EXIT_OK, ToolkitError
from idlevit.state import last_export

from .labels import read_labels


def build_parser() -> argparse.ArgumentParser:
    parser = cli_parser(
        "python -m engines.infer",
        __doc__,
        f"exit codes: {EXIT_OK} classified; {EXIT_BAD_INPUT} missing or unreadable image, model or labels; "
        f"{EXIT_MISSING_DEPENDENCY} an engine that cannot run here and without the graph it was built from.",
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files (JPEG, PNG, ...)")
    model = parser.add_mutually_exclusive_group()
    add_model_argument(model, "--onnx", "run in ONNX Runtime (default: the ONNX `python -m export.onnx` wrote last)")
    add_model_argument(
        model, "--engine", "run in TensorRT, or its ONNX in ONNX Runtime where it cannot run (default: --onnx)"
    )
    add_deprecated_alias(model, "--model", "--onnx or --engine", dest="model", model_file=True)
    parser.add_argument("--labels", default=None, help="class names, one per line (default: class indices)")
    parser.add_argument("--top", type=int, default=5, help="classes printed per image (default 5)")
    parser.add_argument("--batch-size", type=int, default=8, metavar="B", help="images per inference call (default 8)")
    add_deprecated_alias(parser, "--batch", "--batch-size", type=int)
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime CPU threads (default: all cores)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.top < 1 or args.batch_size < 1:
        raise ToolkitError("--top and --batch-size must be >= 1")
    model = args.engine or args.onnx or args.model or last_export()
    if model is None:
        raise ToolkitError(
            "no --onnx or --engine given and no ONNX exported here yet; run `python -m export.onnx` or pass --onnx"
        )
    labels = read_labels(args.labels)
    from .classify import classify, format_predictions, load_images, open_backend  # lazy: onnx, onnxruntime load late

    runner, meta, backend, fallback = open_backend(model, args.threads)
    if labels is not None and len(labels) != meta.num_classes:
        raise ToolkitError(f"--labels has {len(labels)} names but the model has {meta.num_classes} classes")
    images = load_images(args.images, meta)
    if fallback:
        print(f"note: {fallback}")
    print(f"{backend}: {meta.arch} IdleViT, {meta.img_size} px, keep tokens {meta.keep_tokens}")
    with runner:
        predictions = classify(runner, images, [os.fspath(p) for p in args.images], args.top, args.batch_size)
    print(format_predictions(predictions, labels))
    return EXIT_OK


if __name__ == "__main__":
    run_cli(main)
