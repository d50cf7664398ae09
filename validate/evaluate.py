"""Top-1/top-5 and images/s of every backend on a dataset, streamed through all of them at once.

The same batches go through the PyTorch reference (when torch is installed and a checkpoint is
given), ONNX Runtime and TensorRT in one streamed Polygraphy run, so the figures are measured
together; ``python -m validate.accuracy`` prints them. The images are read and batched without
PyTorch (:mod:`idlevit.images`), so everything but the PyTorch row runs on a deployment host.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np
from polygraphy.backend.base import BaseRunner
from polygraphy.comparator import Comparator
from polygraphy.exception import PolygraphyException

from idlevit.cli import progress as progress_bar
from idlevit.errors import ToolkitError
from idlevit.images import Head, ImageSet, batches, check_classes, load_dataset
from idlevit.metadata import ExportMetadata, read_metadata
from idlevit.names import IMAGES, LOGITS

from .metrics import topk_correct
from .runners import backend_runners, polygraphy_quiet


@dataclass
class AccuracyRow:
    """One backend's figures over the whole run."""

    backend: str
    images: int = 0
    top1_correct: int = 0
    top5_correct: int = 0
    timed_images: int = 0  # images after the first batch (which pays the backend's warm-up)
    seconds: float = 0.0  # backend inference time of those

    @property
    def top1(self) -> float:
        return self.top1_correct / self.images if self.images else 0.0

    @property
    def top5(self) -> float:
        return self.top5_correct / self.images if self.images else 0.0

    @property
    def images_per_s(self) -> float:
        return self.timed_images / self.seconds if self.seconds else 0.0

    def to_dict(self) -> dict[str, object]:
        return asdict(self) | {"top1": self.top1, "top5": self.top5, "images_per_s": self.images_per_s}


class _LabelledFeeds:
    """Feed dicts for Polygraphy, keeping each batch's labels for the consumer of the stream."""

    def __init__(self, dataset: ImageSet, batch_size: int, workers: int) -> None:
        self.dataset, self.batch_size, self.workers = dataset, batch_size, workers
        self.labels: collections.deque[np.ndarray] = collections.deque()

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        for images, labels in batches(self.dataset, self.batch_size, self.workers):
            self.labels.append(labels)
            yield {IMAGES: images}


def evaluate_accuracy(
    runners: list[BaseRunner],
    dataset: ImageSet,
    batch_size: int = 32,
    workers: int = 0,
    progress: bool = True,
) -> list[AccuracyRow]:
    """Stream ``dataset`` through every runner at once; count top-1/top-5 hits and inference time.

    images/s leaves out the first batch, whose time includes each backend's warm-up (lazy
    initialisation, first-call allocations); a one-batch run has no rate.
    """
    feeds = _LabelledFeeds(dataset, batch_size, workers)
    rows = {runner.name: AccuracyRow(runner.name) for runner in runners}
    bar = progress_bar(total=len(dataset), enabled=progress, desc="accuracy", unit="img")
    try:
        for index, single in enumerate(Comparator.run(runners, data_loader=feeds, streaming=True)):
            labels = feeds.labels.popleft()
            for name, (result,) in single:
                logits = np.asarray(result[LOGITS])
                row = rows[name]
                row.images += len(labels)
                row.top1_correct += topk_correct(logits, labels, 1)
                row.top5_correct += topk_correct(logits, labels, 5)
                if index:
                    row.timed_images += len(labels)
                    row.seconds += result.runtime or 0.0
            bar.update(len(labels))
            bar.set_postfix_str(" ".join(f"{r.backend} {r.top1:.1%}" for r in rows.values()))
    except PolygraphyException as err:
        raise ToolkitError(f"a backend failed to run ({str(err).strip()[:300]}); rerun with --verbose") from None
    finally:
        bar.close()
    return list(rows.values())


def _speed(row: AccuracyRow) -> str:
    """images/s, or why there is none: the first batch is warm-up, so data that fits in one batch times nothing."""
    return f"{row.images_per_s:.1f}" if row.seconds else "n/a (one batch: warm-up only)"


def markdown(rows: list[AccuracyRow], batch_size: int) -> str:
    lines = [
        f"| backend | images | top-1 | top-5 | images/s (batch {batch_size}) |",
        "|---|---:|---:|---:|---:|",
        *(f"| {r.backend} | {r.images} | {r.top1:.2%} | {r.top5:.2%} | {_speed(r)} |" for r in rows),
    ]
    return "\n".join(lines) + "\n"


def measure_accuracy(
    onnx_path: str | os.PathLike[str],
    ckpt: str | os.PathLike[str] | None = None,
    engine: str | os.PathLike[str] | None = None,
    *,
    data: str | os.PathLike[str] = "digits",
    split: str = "test",
    limit: int | None = None,
    batch_size: int = 32,
    workers: int = 0,
    ort: str = "auto",
    threads: int = 0,
    progress: bool = True,
    verbose: bool = False,
) -> tuple[list[AccuracyRow], ExportMetadata, int]:
    """Accuracy of PyTorch (when ``ckpt`` is given), ONNX Runtime and TensorRT; also the metadata and image count."""
    if batch_size < 1 or (limit is not None and limit < 1) or workers < 0:
        raise ToolkitError("--batch-size and --limit must be >= 1 and --workers >= 0")
    meta = read_metadata(onnx_path)
    if meta.batch and batch_size != meta.batch:
        raise ToolkitError(f"the graph has a static batch of {meta.batch}; pass --batch-size {meta.batch}")
    dataset: ImageSet = load_dataset(data, split, meta.input_config)  # pixels 0..255 for a folded graph
    check_classes(dataset, meta.num_classes, data)
    if limit is not None:
        dataset = Head(dataset, limit)
    runners: list[BaseRunner] = []
    if ckpt is not None:
        from .reference import TorchRunner, load_reference, reference_normalization  # lazy: torch for this row only

        model = load_reference(ckpt, meta)
        runners.append(TorchRunner(model, with_indices=False, threads=threads, normalize=reference_normalization(meta)))
    runners += backend_runners(onnx_path, engine, ort, threads)
    with polygraphy_quiet(verbose):
        rows = evaluate_accuracy(runners, dataset, batch_size, workers, progress=progress)
    return rows, meta, len(dataset)
