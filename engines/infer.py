"""``python -m engines.infer IMAGE...``: classify image files with an engine or an exported ONNX.

Images are preprocessed as the model was evaluated (timm's eval transform from the mean, std,
crop_pct and interpolation the model records), run through TensorRT when given an engine and
TensorRT is usable here, else through ONNX Runtime on the ONNX, and the top-5 classes printed.

Examples::

    python -m engines.infer cat.jpg dog.png                      # the ONNX export.onnx wrote last
    python -m engines.infer --model model_fp16.engine *.jpg --labels imagenet_classes.txt
    python -m engines.infer --model idlevit_deit_small.onnx photo.jpg --top 3
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from polygraphy.backend.base import BaseRunner

from export.metadata import ExportMetadata, read_metadata
from export.state import last_export
from idlevit.errors import (
    EXIT_BAD_INPUT,
    EXIT_MISSING_DEPENDENCY,
    EXIT_OK,
    MissingDependencyError,
    ToolkitError,
    cli_parser,
    run_cli,
)
from idlevit.model import IMAGES, LOGITS

from .package import read_labels
from .sidecar import EngineSidecar, sidecar_path


@dataclass
class Prediction:
    """Top classes of one image: (class index, probability), best first."""

    image: str
    top: list[tuple[int, float]]


def eval_transform(meta: ExportMetadata):
    """timm's eval transform (resize by crop_pct, center crop, normalise) for the model's data config."""
    from timm.data import create_transform, resolve_data_config

    return create_transform(**resolve_data_config(pretrained_cfg=meta.data_config), is_training=False)


def load_images(paths: Sequence[str | os.PathLike[str]], meta: ExportMetadata) -> np.ndarray:
    """Decode, convert to RGB and preprocess image files into a float32 (B, 3, H, W) batch."""
    from PIL import Image, UnidentifiedImageError

    transform = eval_transform(meta)
    tensors = []
    for path in paths:
        try:
            with Image.open(path) as image:
                tensors.append(transform(image.convert("RGB")))
        except FileNotFoundError:
            raise ToolkitError(f"image {os.fspath(path)!r} does not exist") from None
        except (UnidentifiedImageError, OSError) as err:
            raise ToolkitError(
                f"cannot read image {os.fspath(path)!r} ({err}); pass JPEG, PNG or another PIL format"
            ) from None
    return torch.stack(tensors).numpy().astype(np.float32)


def open_backend(model: str | os.PathLike[str], threads: int = 0) -> tuple[BaseRunner, ExportMetadata, str]:
    """A runner for an engine (TensorRT) or an ONNX (ONNX Runtime), the model's metadata, and a note.

    An engine falls back to the ONNX it was built from when TensorRT cannot run here; the note
    says so.
    """
    from validate.ort import ort_runner

    path = Path(model)
    if not path.is_file():
        raise ToolkitError(f"model {os.fspath(path)!r} does not exist; pass --model an .onnx or .engine")
    if path.suffix != ".engine":
        return ort_runner(path, "cpu", threads), read_metadata(path), f"ONNX Runtime (CPU) on {path.name}"
    sidecar = EngineSidecar.read(sidecar_path(path))
    meta = ExportMetadata(**sidecar.idlevit)
    try:
        from validate.runners import tensorrt_runner

        if not torch.cuda.is_available():
            raise MissingDependencyError("TensorRT engines need a CUDA GPU and none is visible")
        return tensorrt_runner(path), meta, f"TensorRT ({sidecar.runtime} {sidecar.runtime_version}) on {path.name}"
    except MissingDependencyError as err:
        source = Path(sidecar.source_onnx)
        source = source if source.is_file() else path.parent / source.name
        if not source.is_file():
            raise MissingDependencyError(f"{err}; and the ONNX it was built from ({sidecar.source_onnx}) is not here")
        return ort_runner(source, "cpu", threads), meta, f"ONNX Runtime (CPU) on {source.name}: {err}"


def classify(runner: BaseRunner, images: np.ndarray, names: Sequence[str], top: int = 5, batch: int = 8) -> list:
    """Softmax probabilities of the top classes of each image, batch by batch."""
    results = []
    for start in range(0, len(images), batch):
        logits = runner.infer({IMAGES: images[start : start + batch]})[LOGITS]
        probs = torch.softmax(torch.from_numpy(np.asarray(logits, dtype=np.float32)), dim=-1)
        values, indices = probs.topk(min(top, probs.shape[-1]), dim=-1)
        for name, v, i in zip(names[start : start + batch], values.tolist(), indices.tolist(), strict=True):
            results.append(Prediction(name, list(zip(i, v, strict=True))))
    return results


def format_predictions(predictions: list[Prediction], labels: Sequence[str] | None) -> str:
    lines = []
    for pred in predictions:
        lines.append(pred.image)
        for rank, (index, prob) in enumerate(pred.top, 1):
            label = labels[index] if labels else f"class {index}"
            lines.append(f"  {rank}. {label:<30} {prob:7.2%}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = cli_parser(
        "python -m engines.infer",
        __doc__,
        f"exit codes: {EXIT_OK} classified; {EXIT_BAD_INPUT} missing or unreadable image, model or labels; "
        f"{EXIT_MISSING_DEPENDENCY} an engine without TensorRT and without its ONNX beside it.",
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files (JPEG, PNG, ...)")
    parser.add_argument(
        "--model",
        default=None,
        help="an .engine (TensorRT, with its sidecar) or an exported .onnx (ONNX Runtime); "
        "default: the ONNX `python -m export.onnx` wrote last",
    )
    parser.add_argument("--labels", default=None, help="class names, one per line (default: class indices)")
    parser.add_argument("--top", type=int, default=5, help="classes printed per image (default 5)")
    parser.add_argument("--batch", type=int, default=8, help="images per inference call (default 8)")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime CPU threads (default: all cores)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.top < 1 or args.batch < 1:
        raise ToolkitError("--top and --batch must be >= 1")
    model = args.model or last_export()
    if model is None:
        raise ToolkitError(
            "no --model given and no ONNX exported here yet; run `python -m export.onnx` or pass --model"
        )
    labels = read_labels(args.labels)
    runner, meta, note = open_backend(model, args.threads)
    if labels is not None and len(labels) != meta.num_classes:
        raise ToolkitError(f"--labels has {len(labels)} names but the model has {meta.num_classes} classes")
    images = load_images(args.images, meta)
    print(f"{note}: {meta.arch} IdleViT, {meta.img_size} px, keep tokens {meta.keep_tokens}")
    with runner:
        predictions = classify(runner, images, [os.fspath(p) for p in args.images], args.top, args.batch)
    print(format_predictions(predictions, labels))
    return EXIT_OK


if __name__ == "__main__":
    run_cli(main)
