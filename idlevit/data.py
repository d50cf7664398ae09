"""Data for finetuning and accuracy checks: scikit-learn's digits, or any ImageFolder directory.

The digits set (1,797 real 8x8 grayscale scans shipped inside scikit-learn, 10 classes) is the
toolkit's own data: no download, a fixed seeded train/test split, upscaled to a ViT-friendly
size so that every original pixel becomes one or more patches. Images come back
*un-normalised* in [0, 1] so that each consumer applies the mean/std recorded with its model
(:func:`normalize`). User data in torchvision's ImageFolder layout goes through timm's
transforms, resolved from the model's ``data_config``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset, TensorDataset

from .configs import data_config
from .errors import ToolkitError
from .names import DIGITS

DIGITS_CLASSES = 10
#: Fraction of each class held out as the test split, and the seed that picks it.
DIGITS_TEST_FRACTION = 0.25
DIGITS_SPLIT_SEED = 0
#: Pixel statistics of the digits train split (8x8 values / 16), replicated over RGB.
DIGITS_MEAN = (0.3062, 0.3062, 0.3062)
DIGITS_STD = (0.3768, 0.3768, 0.3768)
SPLITS = ("train", "test")


def _digits_indices(targets: np.ndarray, split: str) -> np.ndarray:
    """Per-class seeded permutation (numpy's legacy RandomState: stable across versions)."""
    rng = np.random.RandomState(DIGITS_SPLIT_SEED)
    chosen = []
    for label in range(DIGITS_CLASSES):
        members = np.flatnonzero(targets == label)
        members = members[rng.permutation(len(members))]
        n_test = int(round(len(members) * DIGITS_TEST_FRACTION))
        chosen.append(members[:n_test] if split == "test" else members[n_test:])
    return np.sort(np.concatenate(chosen))


def digits_split(split: str, img_size: int = 32) -> tuple[Tensor, Tensor]:
    """One split of the digits: images (N, 3, img_size, img_size) float32 in [0, 1], labels int64.

    The same call always returns the same images in the same order (train 1,347, test 450).
    Upscaling is bilinear (no overshoot, so values stay in [0, 1]); gray is copied to RGB.
    """
    if split not in SPLITS:
        raise ToolkitError(f"unknown digits split {split!r}; choose one of: {', '.join(SPLITS)}")
    if img_size < 8:
        raise ToolkitError(f"image size {img_size} is below the digits' 8 px; use 32 or 64")
    from sklearn.datasets import load_digits  # lazy: scikit-learn loads only when the digits are asked for

    digits = load_digits()
    index = _digits_indices(digits.target, split)
    pixels = torch.from_numpy(digits.images[index].astype(np.float32) / 16.0)[:, None]
    images = F.interpolate(pixels, size=(img_size, img_size), mode="bilinear", align_corners=False)
    return images.expand(-1, 3, -1, -1).contiguous(), torch.from_numpy(digits.target[index].astype(np.int64))


def normalize(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """``(images - mean) / std`` per channel, for (N, 3, H, W) or (3, H, W) images in [0, 1]."""
    shape = (-1, 1, 1)
    mean_t = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(shape)
    std_t = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(shape)
    return (images - mean_t) / std_t


def digits_data_config(img_size: int = 32) -> dict[str, Any]:
    """Preprocessing of a digits model in timm's data-config keys (what checkpoints record)."""
    return data_config(img_size, DIGITS_MEAN, DIGITS_STD, 1.0, "bilinear")


def image_folder(root: str | os.PathLike[str], data_config: Mapping[str, Any], training: bool = False) -> Dataset:
    """A torchvision ImageFolder with timm's eval (or train) transform for ``data_config``.

    ``data_config`` is a model's :attr:`~idlevit.model.IdleViT.data_config`; timm resolves it
    (resize by ``crop_pct``, center crop, normalise with its mean/std).
    """
    from timm.data import create_transform, resolve_data_config  # lazy: timm's transforms for user folders only
    from torchvision.datasets import ImageFolder  # lazy: torchvision for user folders only

    root = Path(root)
    if not root.is_dir():
        raise ToolkitError(f"dataset folder {str(root)!r} does not exist; pass an ImageFolder root (class subfolders)")
    config = resolve_data_config(pretrained_cfg=dict(data_config))
    transform = create_transform(**config, is_training=training)
    try:
        return ImageFolder(str(root), transform=transform)
    except (FileNotFoundError, RuntimeError) as err:
        raise ToolkitError(f"{root} is not an ImageFolder ({err}); lay it out as ROOT/<class>/<image>.png") from None


def split_folder(root: str | os.PathLike[str], split: str) -> Path:
    """The folder of ``split`` under an ImageFolder root: ROOT/train, ROOT/val (or test), else ROOT."""
    root = Path(root)
    names = ("train",) if split == "train" else ("val", "test")
    for name in names:
        if (root / name).is_dir():
            return root / name
    return root


def load_dataset(
    source: str | os.PathLike[str], split: str, data_config: Mapping[str, Any], training: bool = False
) -> Dataset:
    """Normalised (image, label) pairs of ``split`` from ``"digits"`` or an ImageFolder root.

    Digits are sized and normalised by ``data_config``'s input size and mean/std; a folder
    goes through :func:`image_folder` (ROOT/train and ROOT/val are used when present).
    """
    if str(source) == DIGITS:
        img_size = int(data_config["input_size"][-1])
        images, labels = digits_split(split, img_size)
        return TensorDataset(normalize(images, data_config["mean"], data_config["std"]), labels)
    return image_folder(split_folder(source, split), data_config, training)


def num_classes(dataset: Dataset) -> int:
    """Class count of a dataset built by :func:`load_dataset`."""
    if isinstance(dataset, TensorDataset):
        return int(dataset.tensors[1].max()) + 1
    return len(dataset.classes)  # type: ignore[attr-defined]
