"""Classify image files with an engine or an exported ONNX, preprocessed as the model was evaluated.

Images go through timm's eval transform for the input config the model records (resize by
crop_pct, center crop, normalise with its mean/std, or RGB pixels 0..255 for a graph with folded
normalisation); an engine runs in TensorRT when it can run here, else the graph it was built from
runs in ONNX Runtime, and the caller is told which and why.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from polygraphy.backend.base import BaseRunner
from timm.data import create_transform, resolve_data_config

from idlevit.data import read_image
from idlevit.errors import MissingDependencyError, ToolkitError
from idlevit.metadata import ExportMetadata, read_metadata
from idlevit.names import IMAGES, LOGITS
from idlevit.sidecar import EngineSidecar, sidecar_path

from .compatibility import EngineMismatchError
from .ort import ort_runner
from .runtime import check_runnable, tensorrt_runner


@dataclass
class Prediction:
    """Top classes of one image: (class index, probability), best first."""

    image: str
    top: list[tuple[int, float]]


def eval_transform(meta: ExportMetadata):
    """timm's eval transform (resize by crop_pct, center crop, normalise) for what the graph takes.

    :attr:`~idlevit.metadata.ExportMetadata.input_config`: normalised images, or pixels 0..255
    when the graph folds the normalisation into its first layer.
    """
    return create_transform(**resolve_data_config(pretrained_cfg=meta.input_config), is_training=False)


def load_images(paths: Sequence[str | os.PathLike[str]], meta: ExportMetadata) -> np.ndarray:
    """Decode image files by their real range (:func:`idlevit.data.read_image`, as ImageFolders are read)
    and preprocess them into a float32 (B, 3, H, W) batch."""
    transform = eval_transform(meta)
    return torch.stack([transform(read_image(path)) for path in paths]).numpy().astype(np.float32)


def open_backend(model: str | os.PathLike[str], threads: int = 0) -> tuple[BaseRunner, ExportMetadata, str, str | None]:
    """A runner for an engine (TensorRT) or an ONNX (ONNX Runtime), the model's metadata, what runs, a fallback note.

    An engine that cannot run here (no CUDA GPU, its TensorRT not installed, built for another
    TensorRT or GPU) falls back to the graph it was built from, the sidecar's ``onnx`` (for FP16
    the mixed-precision graph, not the FP32 source), in ONNX Runtime; the note says which graph
    and why (None when nothing fell back).
    """
    path = Path(model)
    if not path.is_file():
        raise ToolkitError(f"model {os.fspath(path)!r} does not exist; pass --model an .onnx or .engine")
    if path.suffix != ".engine":
        return ort_runner(path, "cpu", threads), read_metadata(path), f"ONNX Runtime (CPU) on {path.name}", None
    sidecar = EngineSidecar.read(sidecar_path(path))
    meta = ExportMetadata(**sidecar.idlevit)
    try:
        check_runnable(path)
    except (MissingDependencyError, EngineMismatchError) as err:
        why = str(err).split("; ")[0]
        graph = Path(sidecar.onnx)
        graph = graph if graph.is_file() else path.parent / graph.name
        if not graph.is_file():
            raise MissingDependencyError(f"{why}; and the graph it was built from ({sidecar.onnx}) is not here")
        note = f"{why}; running the graph it was built from instead, {graph}, in ONNX Runtime (CPU)"
        return ort_runner(graph, "cpu", threads), meta, f"ONNX Runtime (CPU) on {graph.name}", note
    return tensorrt_runner(path), meta, f"TensorRT ({sidecar.runtime} {sidecar.runtime_version}) on {path.name}", None


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
