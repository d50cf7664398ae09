"""Data for finetuning, as PyTorch datasets: a thin layer over :mod:`idlevit.images`.

The digits, ImageFolders and image files are read, sized and normalised by
:mod:`idlevit.images` (Pillow and NumPy, the one implementation every feeder uses); this module
hands them to training as tensors and ``Dataset`` objects, and adds timm's augmenting train
transform for folders. Images come back *un-normalised* in [0, 1] from :func:`digits_split` so
that each consumer applies the mean/std recorded with its model (:func:`normalize`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset, TensorDataset

from . import images
from .configs import check_data_config, data_config
from .images import (  # noqa: F401 - the names training and tests use
    DIGITS_CLASSES,
    DIGITS_MEAN,
    DIGITS_SPLIT_SEED,
    DIGITS_STD,
    DIGITS_TEST_FRACTION,
    READABLE,
    SPLITS,
    read_image,
    split_folder,
)
from .names import DIGITS


def digits_split(split: str, img_size: int = 32) -> tuple[Tensor, Tensor]:
    """One split of the digits (:func:`idlevit.images.digits_split`) as tensors: images (N, 3, H, W), labels."""
    pixels, labels = images.digits_split(split, img_size)
    return torch.from_numpy(pixels), torch.from_numpy(labels)


def normalize(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """``(images - mean) / std`` per channel, for (N, 3, H, W) or (3, H, W) images in [0, 1]."""
    shape = (-1, 1, 1)
    mean_t = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(shape)
    std_t = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(shape)
    return (images - mean_t) / std_t


def digits_data_config(img_size: int = 32) -> dict[str, Any]:
    """Preprocessing of a digits model in timm's data-config keys (what checkpoints record)."""
    return data_config(img_size, DIGITS_MEAN, DIGITS_STD, 1.0, "bilinear")


class FolderDataset(Dataset):
    """An :class:`idlevit.images.FolderImages` as a PyTorch dataset: (image tensor, label), and its ``classes``."""

    def __init__(self, folder: images.FolderImages) -> None:
        self.folder = folder
        self.classes = folder.classes

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        image, label = self.folder[index]
        return (image if isinstance(image, Tensor) else torch.from_numpy(image)), label


def image_folder(root: str | os.PathLike[str], data_config: Mapping[str, Any], training: bool = False) -> Dataset:
    """An ImageFolder with the eval preprocessing for ``data_config`` (or timm's train transform).

    ``data_config`` is a model's :attr:`~idlevit.model.IdleViT.data_config`; evaluation images
    go through :class:`idlevit.images.EvalTransform` (timm's eval transform, without torch), and
    training images through timm's augmenting train transform.
    """
    check_data_config(data_config, "the model's data config")
    if not training:
        return FolderDataset(images.FolderImages(root, images.EvalTransform(data_config)))
    from timm.data import create_transform, resolve_data_config  # lazy: timm's augmentation for training only

    config = resolve_data_config(pretrained_cfg=dict(data_config))
    return FolderDataset(images.FolderImages(root, create_transform(**config, is_training=True)))


def load_dataset(
    source: str | os.PathLike[str], split: str, data_config: Mapping[str, Any], training: bool = False
) -> Dataset:
    """Normalised (image, label) pairs of ``split`` from ``"digits"`` or an ImageFolder root.

    Digits are sized and normalised by ``data_config``'s input size and mean/std; a folder
    goes through :func:`image_folder` (ROOT/train and ROOT/val are used when present).
    """
    check_data_config(data_config, "the model's data config")
    if str(source) == DIGITS:
        img_size = int(data_config["input_size"][-1])
        pixels, labels = digits_split(split, img_size)
        return TensorDataset(normalize(pixels, data_config["mean"], data_config["std"]), labels)
    return image_folder(split_folder(source, split), data_config, training)


def num_classes(dataset: Dataset) -> int:
    """Class count of a dataset built by :func:`load_dataset`."""
    if isinstance(dataset, TensorDataset):
        return int(dataset.tensors[1].max()) + 1
    return len(dataset.classes)  # type: ignore[attr-defined]
