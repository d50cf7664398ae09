"""Inputs of a parity run: real images and seeded random batches, at several batch sizes.

Real images come from the bundled digits split or an ImageFolder (timm's eval preprocessing for
what the ONNX records, via :func:`idlevit.images.load_dataset`, without PyTorch); random batches come from
Polygraphy's seeded ``DataLoader`` over the range that pixels in [0, 1] take once normalised.
Both follow :attr:`~idlevit.metadata.ExportMetadata.input_config`: normalised images, or RGB
pixels 0..255 for a graph with folded normalisation.
Each group holds feed dicts for one (kind, batch size): bugs that appear only at batch > 1 exist.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from polygraphy.common import TensorMetadata
from polygraphy.comparator import DataLoader
from polygraphy.datatype import DataType

from idlevit.errors import ToolkitError
from idlevit.images import load_dataset
from idlevit.metadata import ExportMetadata
from idlevit.names import DIGITS, IMAGES

REAL, RANDOM = "real", "random"


@dataclass
class InputGroup:
    """Feed dicts of one kind of input at one batch size."""

    kind: str  # REAL or RANDOM
    source: str  # where the images come from, for the report
    batch: int
    feeds: list[dict[str, np.ndarray]] = field(default_factory=list)

    @property
    def images(self) -> int:
        return sum(int(feed[IMAGES].shape[0]) for feed in self.feeds)

    @property
    def label(self) -> str:
        return f"{self.kind} inputs ({self.source}) at batch size {self.batch}"


def sample_images(data: str | os.PathLike[str], split: str, meta: ExportMetadata, count: int) -> np.ndarray:
    """``count`` images spread evenly over a split (ImageFolders are sorted by class), as the graph takes them."""
    dataset = load_dataset(data, split, meta.input_config)
    if len(dataset) == 0:
        raise ToolkitError(f"dataset {os.fspath(data)!r} ({split}) holds no images; point --data at an ImageFolder")
    picks = np.unique(np.linspace(0, len(dataset) - 1, num=min(count, len(dataset))).round().astype(int))
    images = np.stack([dataset[int(i)][0] for i in picks]).astype(np.float32)
    if images.shape[1:] != (3, meta.img_size, meta.img_size):
        raise ToolkitError(
            f"images from {os.fspath(data)!r} have shape {images.shape[1:]} but the graph takes "
            f"(3, {meta.img_size}, {meta.img_size})"
        )
    return images


def real_groups(images: np.ndarray, source: str, batch_sizes: Sequence[int]) -> list[InputGroup]:
    """The same real images, batched at every size (the last batch may be short)."""
    groups = []
    for batch in batch_sizes:
        feeds = [{IMAGES: images[i : i + batch]} for i in range(0, len(images), batch)]
        groups.append(InputGroup(REAL, source, batch, feeds))
    return groups


def random_range(meta: ExportMetadata) -> tuple[float, float]:
    """Range of the graph's input values that pixels in [0, 1] can take (0..255 for folded normalisation)."""
    config = meta.input_config
    low = min((0.0 - m) / s for m, s in zip(config["mean"], config["std"]))
    high = max((1.0 - m) / s for m, s in zip(config["mean"], config["std"]))
    return low, high


def random_groups(meta: ExportMetadata, batch_sizes: Sequence[int], batches: int, seed: int) -> list[InputGroup]:
    """``batches`` seeded uniform batches per size, from Polygraphy's ``DataLoader``."""
    low, high = random_range(meta)
    groups = []
    for batch in batch_sizes:
        shape = (batch, 3, meta.img_size, meta.img_size)
        loader = DataLoader(
            seed=seed + 1000 * batch,
            iterations=batches,
            input_metadata=TensorMetadata().add(IMAGES, DataType.FLOAT32, shape),
            val_range=(low, high),
        )
        source = f"uniform [{low:.2f}, {high:.2f}], seed {loader.seed}"
        groups.append(InputGroup(RANDOM, source, batch, [dict(feed) for feed in loader]))
    return groups


@dataclass(frozen=True)
class InputSpec:
    """Which inputs a parity run uses."""

    data: str | os.PathLike[str] | None = DIGITS  # "digits", an ImageFolder root, or None: random only
    split: str = "test"
    num_images: int = 16  # real images, spread evenly over the split
    random_batches: int = 2  # per batch size
    batch_sizes: tuple[int, ...] = (1, 8)
    seed: int = 0


def parity_inputs(meta: ExportMetadata, spec: InputSpec = InputSpec()) -> list[InputGroup]:
    """Real groups (unless ``spec.data`` is None or ``num_images`` is 0), then random groups."""
    sizes = spec.batch_sizes
    if not sizes or any(b < 1 for b in sizes):
        raise ToolkitError(f"batch sizes {list(sizes)} must be >= 1, e.g. --batch-sizes 1,8")
    if spec.num_images < 0 or spec.random_batches < 0:
        raise ToolkitError("--num-images and --random-batches must be >= 0")
    if meta.batch and any(b != meta.batch for b in sizes):
        raise ToolkitError(
            f"the graph has a static batch of {meta.batch}; pass --batch-sizes {meta.batch} "
            "or export with a dynamic batch"
        )
    groups: list[InputGroup] = []
    if spec.data is not None and spec.num_images > 0:
        # at least one full batch of the largest size, so every batch size is really exercised
        images = sample_images(spec.data, spec.split, meta, max(spec.num_images, max(sizes)))
        root = DIGITS if str(spec.data) == DIGITS else os.fspath(spec.data)
        groups += real_groups(images, f"{root}:{spec.split}", sizes)
    if spec.random_batches > 0:
        groups += random_groups(meta, sizes, spec.random_batches, spec.seed)
    if not groups:
        raise ToolkitError("no inputs: give --num-images > 0 with --data, or --random-batches > 0")
    return groups
