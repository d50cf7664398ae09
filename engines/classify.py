"""Classify image files with an engine or an exported ONNX, preprocessed as the model was evaluated.

Images go through timm's eval preprocessing for the input config the model records (resize by
crop_pct, center crop, normalise with its mean/std, or RGB pixels 0..255 for a graph with folded
normalisation; :mod:`idlevit.images`, Pillow and NumPy only); an engine runs in TensorRT when it
can run here, else the graph it was built from runs in ONNX Runtime, and the caller is told which
and why. Nothing here needs PyTorch.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from polygraphy.backend.base import BaseRunner

from idlevit import images as image_files
from idlevit.errors import MissingDependencyError, ToolkitError
from idlevit.fileio import sha256_file
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


def load_images(paths: Sequence[str | os.PathLike[str]], meta: ExportMetadata) -> np.ndarray:
    """Decode image files by their real range and preprocess them for what the graph takes: float32 (B, 3, H, W).

    :attr:`~idlevit.metadata.ExportMetadata.input_config`: normalised images, or pixels 0..255
    when the graph folds the normalisation into its first layer.
    """
    return image_files.load_images(paths, meta.input_config)


def open_backend(model: str | os.PathLike[str], threads: int = 0) -> tuple[BaseRunner, ExportMetadata, str, str | None]:
    """A runner for an engine (TensorRT) or an ONNX (ONNX Runtime), the model's metadata, what runs, a fallback note.

    An engine that cannot run here (no CUDA GPU, its TensorRT not installed, built for another
    TensorRT or GPU) falls back to the graph it was built from, the sidecar's ``onnx`` (for FP16
    the mixed-precision graph, not the FP32 source), in ONNX Runtime; the note says which graph
    and why (None when nothing fell back).
    """
    path = Path(model)
    if not path.is_file():
        raise ToolkitError(f"model {os.fspath(path)!r} does not exist; pass --onnx an .onnx or --engine an .engine")
    if path.suffix != ".engine":
        return ort_runner(path, "cpu", threads), read_metadata(path), f"ONNX Runtime (CPU) on {path.name}", None
    sidecar = EngineSidecar.read(sidecar_path(path))
    meta = ExportMetadata(**sidecar.idlevit)
    try:
        check_runnable(path)
    except (MissingDependencyError, EngineMismatchError) as err:
        why = str(err).split("; ")[0]
        graph = built_from_graph(path, sidecar, why)
        note = f"{why}; running the graph it was built from instead, {graph}, in ONNX Runtime (CPU)"
        return ort_runner(graph, "cpu", threads), meta, f"ONNX Runtime (CPU) on {graph.name}", note
    return tensorrt_runner(path), meta, f"TensorRT ({sidecar.runtime} {sidecar.runtime_version}) on {path.name}", None


def built_from_graph(engine: Path, sidecar: EngineSidecar, why: str) -> Path:
    """The graph ``engine`` was built from (the sidecar's ``onnx``, else the file of that name beside the
    engine), once both files are the ones the sidecar describes: nothing else is run in its place.

    Missing: exit 3 (``why`` the engine cannot run, and nothing to fall back to). The engine or the
    graph not matching the sidecar's sha256 (replaced after the build): exit 2.
    """
    if sha256_file(engine) != sidecar.engine_sha256:
        raise ToolkitError(
            f"{engine.name} does not match the sha256 its sidecar records (replaced after the build?), so the "
            f"graph it was built from cannot stand in for it; rebuild it with `python -m export.trt`"
        )
    recorded = Path(sidecar.onnx)
    graph = recorded if recorded.is_file() else engine.parent / recorded.name
    if not graph.is_file():
        raise MissingDependencyError(f"{why}; and the graph it was built from ({sidecar.onnx}) is not here")
    digest = sha256_file(graph)
    if digest != sidecar.onnx_sha256:
        raise ToolkitError(
            f"{graph} is not the graph {engine.name} was built from: sha256 {digest[:12]}... here, "
            f"{sidecar.onnx_sha256[:12] or 'none'}... in the sidecar; put the built-from graph back, or rebuild "
            "the engine from this one with `python -m export.trt`"
        )
    return graph


def top_classes(logits: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities and indices of the ``top`` classes of each row, best first (ties: lower index first)."""
    logits = np.asarray(logits, dtype=np.float64)
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probs = shifted / shifted.sum(axis=-1, keepdims=True)
    order = np.argsort(-probs, axis=-1, kind="stable")[:, : min(top, probs.shape[-1])]
    return np.take_along_axis(probs, order, axis=-1), order


def classify(runner: BaseRunner, images: np.ndarray, names: Sequence[str], top: int = 5, batch: int = 8) -> list:
    """Softmax probabilities of the top classes of each image, batch by batch."""
    results = []
    for start in range(0, len(images), batch):
        logits = runner.infer({IMAGES: images[start : start + batch]})[LOGITS]
        values, indices = top_classes(logits, top)
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
