"""``python -m validate.accuracy``: top-1/top-5 of every backend on a dataset, side by side.

The same batches go through the PyTorch reference (``--ckpt``), ONNX Runtime (``--onnx``) and
TensorRT (``--engine``) in one streamed Polygraphy run, so the figures are measured together.
Images are the bundled digits split or an ImageFolder (timm's eval transform with the mean/std
the ONNX records). images/s counts backend inference time only, not data loading.

Examples::

    python -m validate.accuracy --ckpt demo --onnx idlevit_deit_micro_digits_ratio0.7.onnx
    python -m validate.accuracy --onnx model.onnx --engine model.engine --data /data/imagenet --batch-size 64
"""

from __future__ import annotations

import argparse
import collections
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from polygraphy.backend.base import BaseRunner
from polygraphy.comparator import Comparator
from polygraphy.exception import PolygraphyException
from tqdm import tqdm

from export.metadata import read_metadata
from idlevit.data import load_dataset, num_classes
from idlevit.errors import EXIT_BAD_INPUT, EXIT_MISSING_DEPENDENCY, EXIT_OK, ToolkitError, cli_parser, run_cli
from idlevit.fileio import atomic_write
from idlevit.model import IMAGES, LOGITS

from .inputs import add_data_arguments
from .metrics import topk_correct
from .parity import polygraphy_quiet
from .reference import TorchRunner, load_reference
from .runners import add_backend_arguments, backend_runners


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

    def __init__(self, loader: torch.utils.data.DataLoader) -> None:
        self.loader = loader
        self.labels: collections.deque[np.ndarray] = collections.deque()

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        for images, labels in self.loader:
            self.labels.append(labels.numpy())
            yield {IMAGES: images.numpy().astype(np.float32)}


def evaluate_accuracy(
    runners: list[BaseRunner],
    dataset: torch.utils.data.Dataset,
    batch_size: int = 32,
    workers: int = 0,
    progress: bool = True,
) -> list[AccuracyRow]:
    """Stream ``dataset`` through every runner at once; count top-1/top-5 hits and inference time.

    images/s leaves out the first batch, whose time includes each backend's warm-up (lazy
    initialisation, first-call allocations); a one-batch run has no rate.
    """
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)
    feeds = _LabelledFeeds(loader)
    rows = {runner.name: AccuracyRow(runner.name) for runner in runners}
    bar = tqdm(total=len(dataset), desc="accuracy", unit="img", disable=not progress)
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


def markdown(rows: list[AccuracyRow], batch_size: int) -> str:
    lines = [
        f"| backend | images | top-1 | top-5 | images/s (batch {batch_size}) |",
        "|---|---:|---:|---:|---:|",
        *(f"| {r.backend} | {r.images} | {r.top1:.2%} | {r.top5:.2%} | {r.images_per_s:.1f} |" for r in rows),
    ]
    return "\n".join(lines) + "\n"


EPILOG = f"""
images/s counts backend inference time only (no data loading), leaving out the first batch (warm-up).

exit codes: {EXIT_OK} measured; {EXIT_BAD_INPUT} bad file, checkpoint, dataset or flag;
{EXIT_MISSING_DEPENDENCY} TensorRT or onnxruntime-gpu missing.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = cli_parser("python -m validate.accuracy", __doc__, EPILOG)
    src = parser.add_argument_group("backends")
    src.add_argument("--onnx", required=True, help="exported ONNX file (its metadata gives the schedule and mean/std)")
    src.add_argument(
        "--ckpt", default=None, help="checkpoint for the PyTorch row ('demo': the bundled demo); omit to skip it"
    )
    add_backend_arguments(src)
    data = parser.add_argument_group("dataset")
    add_data_arguments(data, "split: 'test' or 'train' (digits); folders use ROOT/val or ROOT/test (default test)")
    data.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    data.add_argument("--batch-size", type=int, default=32, help="images per batch (default 32)")
    data.add_argument("--workers", type=int, default=0, help="data-loading worker processes (default 0)")
    out = parser.add_argument_group("output")
    out.add_argument("--report", default=None, help="also write the figures as JSON here (Markdown beside it)")
    out.add_argument("--quiet", action="store_true", help="no progress bar")
    out.add_argument("--verbose", action="store_true", help="show Polygraphy's log")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.batch_size < 1 or (args.limit is not None and args.limit < 1) or args.workers < 0:
        raise ToolkitError("--batch-size and --limit must be >= 1 and --workers >= 0")
    meta = read_metadata(args.onnx)
    if meta.batch and args.batch_size != meta.batch:
        raise ToolkitError(f"the graph has a static batch of {meta.batch}; pass --batch-size {meta.batch}")
    dataset = load_dataset(args.data, args.split, meta.data_config)
    if num_classes(dataset) > meta.num_classes:
        raise ToolkitError(
            f"the dataset has {num_classes(dataset)} classes but the model {meta.num_classes}; "
            "point --data at data of the model's classes"
        )
    if args.limit is not None:
        dataset = torch.utils.data.Subset(dataset, range(min(args.limit, len(dataset))))
    runners: list[BaseRunner] = []
    if args.ckpt is not None:
        runners.append(TorchRunner(load_reference(args.ckpt, meta), with_indices=False, threads=args.threads))
    runners += backend_runners(args.onnx, args.engine, args.ort, args.threads)
    with polygraphy_quiet(args.verbose):
        rows = evaluate_accuracy(runners, dataset, args.batch_size, args.workers, progress=not args.quiet)
    table = markdown(rows, args.batch_size)
    print(f"accuracy on {args.data}:{args.split} ({meta.arch}, {len(dataset)} images)")
    print(table, end="")
    if args.report:
        setup = {"onnx": args.onnx, "checkpoint": args.ckpt, "engine": args.engine, "data": str(args.data)}
        payload = setup | {"split": args.split, "batch_size": args.batch_size, "rows": [r.to_dict() for r in rows]}
        with atomic_write(args.report, "w") as handle:
            json.dump(payload, handle, indent=2)
            handle.write("\n")
        with atomic_write(Path(args.report).with_suffix(".md"), "w") as handle:
            handle.write(table)
        print(f"report: {args.report}")
    return EXIT_OK


if __name__ == "__main__":
    run_cli(main)
